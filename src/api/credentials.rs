//! How requests are authenticated: an IAM token in `X-Auth-Token`, or AK/SK signing. This
//! module turns a request about to be sent into its auth headers and final query string; the
//! secrets stay inside it.

use chrono::{DateTime, Utc};

use crate::auth::signer::{AkSk, SignRequest, sign};
use crate::secret::Secret;

/// The request as it will be sent, for signing.
pub struct RequestToSign<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// `host[:port]`.
    pub host: &'a str,
    /// Path as sent.
    pub path: &'a str,
    /// Query pairs, in any order.
    pub query: &'a [(String, String)],
    /// Headers to send; auth headers are appended here.
    pub headers: &'a mut Vec<(String, String)>,
    /// The exact body bytes.
    pub body: &'a [u8],
    /// The time used for `X-Sdk-Date`.
    pub now: DateTime<Utc>,
}

/// What authentication adds besides headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The query string to send (sorted and encoded the way the signer canonicalises it).
    pub query_string: String,
}

/// Why auth headers could not be produced (no call is made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// The credentials of a client.
#[derive(Clone)]
pub enum Credentials {
    /// A fixed IAM token sent as `X-Auth-Token`.
    Token(Secret),
    /// AK/SK signing (`SDK-HMAC-SHA256`).
    AkSk(Box<AkSk>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method_name())
    }
}

impl Credentials {
    /// A name for logs: which method, never the secret.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::AkSk(_) => "aksk",
        }
    }

    /// Adds the auth headers to `req.headers` and returns the query string to send.
    pub async fn prepare(&self, req: RequestToSign<'_>) -> Result<Prepared, AuthError> {
        match self {
            Self::Token(token) => {
                req.headers
                    .push(("X-Auth-Token".into(), token.expose().to_string()));
                Ok(Prepared {
                    query_string: canonical_query(req.query),
                })
            }
            Self::AkSk(creds) => {
                let signed = sign(
                    creds,
                    &SignRequest {
                        method: req.method,
                        host: req.host,
                        path: req.path,
                        query: req.query,
                        headers: req.headers,
                        body: req.body,
                    },
                    req.now,
                );
                *req.headers = signed.headers;
                let query_string = signed
                    .request_uri
                    .split_once('?')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default();
                Ok(Prepared { query_string })
            }
        }
    }
}

/// Query pairs sorted by raw key then raw value, each part RFC 3986 encoded with upper-case hex,
/// joined as `k=v&...` (the SDK sends the query in exactly its signed form).
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    sorted
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::api::client::encode_segment(k),
                crate::api::client::encode_segment(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Why no credentials could be set up (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

/// Finds credentials, in this order: `DEPLOYD_TOKEN`, `DEPLOYD_TOKEN_FILE`, `CLOUD_SDK_AK` +
/// `CLOUD_SDK_SK` (+ `CLOUD_SDK_SECURITY_TOKEN`), the config's `auth.ak_file` + `auth.sk_file`
/// (+ `auth.security_token_file`), the config's `auth.token_file`. `env` looks up environment
/// variables. `project_id` goes into AK/SK requests as `X-Project-Id`.
pub fn credentials_from(
    env: &dyn Fn(&str) -> Option<String>,
    auth: &crate::settings::RawAuth,
    project_id: Option<&str>,
) -> Result<Credentials, CredentialsError> {
    let env = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(token) = env("DEPLOYD_TOKEN") {
        return Ok(Credentials::Token(Secret::new(token)));
    }
    if let Some(path) = env("DEPLOYD_TOKEN_FILE") {
        return Ok(Credentials::Token(read_secret_file(std::path::Path::new(
            &path,
        ))?));
    }
    let aksk = |ak: String, sk: Secret, security_token: Option<Secret>| {
        Credentials::AkSk(Box::new(AkSk {
            ak,
            sk,
            project_id: project_id.map(str::to_string),
            security_token,
        }))
    };
    match (env("CLOUD_SDK_AK"), env("CLOUD_SDK_SK")) {
        (Some(ak), Some(sk)) => {
            return Ok(aksk(
                ak,
                Secret::new(sk),
                env("CLOUD_SDK_SECURITY_TOKEN").map(Secret::new),
            ));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(CredentialsError(
                "CLOUD_SDK_AK and CLOUD_SDK_SK must be set together".into(),
            ));
        }
        (None, None) => {}
    }
    match (&auth.ak_file, &auth.sk_file) {
        (Some(ak), Some(sk)) => {
            let security_token = auth
                .security_token_file
                .as_deref()
                .map(read_secret_file)
                .transpose()?;
            let ak = read_secret_file(ak)?.expose().to_string();
            return Ok(aksk(ak, read_secret_file(sk)?, security_token));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(CredentialsError(
                "auth.ak_file and auth.sk_file must be set together".into(),
            ));
        }
        (None, None) => {}
    }
    if let Some(path) = &auth.token_file {
        return Ok(Credentials::Token(read_secret_file(path)?));
    }
    Err(CredentialsError(
        "no credentials: set DEPLOYD_TOKEN or DEPLOYD_TOKEN_FILE (an IAM token), or CLOUD_SDK_AK and CLOUD_SDK_SK, or auth.* files in the config; for a local try, pass --emulator".into(),
    ))
}

/// Reads a secret from a file (one trailing newline dropped, must not be empty). A relative
/// path is looked up in `$CREDENTIALS_DIRECTORY` first (systemd `LoadCredential=`).
pub fn read_secret_file(path: &std::path::Path) -> Result<Secret, CredentialsError> {
    let full = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => std::path::Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    };
    let text = std::fs::read_to_string(&full).map_err(|e| {
        CredentialsError(format!("cannot read secret file {}: {e}", full.display()))
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(CredentialsError(format!(
            "secret file {} is empty",
            full.display()
        )));
    }
    warn_if_shared(&full);
    Ok(Secret::new(value))
}

/// Logs a warning when a secret file can be read by group or others.
fn warn_if_shared(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "secret file {} has mode {mode:o}: readable by group or others; chmod 600 it",
                path.display()
            );
        }
    }
}
