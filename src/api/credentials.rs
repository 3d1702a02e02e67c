//! How requests are authenticated: an IAM token in `X-Auth-Token` (fixed, or obtained and
//! refreshed by password), or AK/SK signing. This module finds the credentials at start-up and
//! turns a request about to be sent into its auth headers and final query string; the secrets
//! stay inside it.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::api::iam::{IamConfig, IamTokenSource};
use crate::auth::signer::{AkSk, SignRequest, query_string, sign};
use crate::secret::Secret;

/// Validated `auth:` settings (built by [`crate::settings`]): secret file paths and the IAM
/// user, never a secret itself. The input of [`credentials_from`], so it lives here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// File holding an IAM token.
    pub token_file: Option<std::path::PathBuf>,
    /// File holding the access key id.
    pub ak_file: Option<std::path::PathBuf>,
    /// File holding the secret key.
    pub sk_file: Option<std::path::PathBuf>,
    /// File holding an STS security token.
    pub security_token_file: Option<std::path::PathBuf>,
    /// IAM password authentication.
    pub iam: Option<IamConfig>,
}

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
    /// The query string to send: the signer's canonical query of the pairs (for AK/SK, taken
    /// from the signed request itself), so what is sent is what the gateway verifies.
    pub query_string: String,
    /// The IAM token sent, when it came from an [`IamTokenSource`] (to invalidate it if the
    /// API refuses it).
    pub token_used: Option<Secret>,
}

/// Why auth headers could not be produced (no call is made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    /// What went wrong; never holds a secret.
    pub message: String,
    /// Whether trying again later may help (IAM unreachable), as opposed to refused
    /// credentials.
    pub retryable: bool,
}

/// The credentials of a client.
#[derive(Clone)]
pub enum Credentials {
    /// A fixed IAM token sent as `X-Auth-Token`.
    Token(Secret),
    /// AK/SK signing (`SDK-HMAC-SHA256`).
    AkSk(Box<AkSk>),
    /// IAM tokens obtained by password and refreshed before they expire.
    Iam(Arc<IamTokenSource>),
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
            Self::Iam(_) => "iam",
        }
    }

    /// Whether `other` is the same credential (same method, same secrets; for IAM the same
    /// endpoint, user, scope and password): a reload keeps what was learned about it.
    pub fn same_as(&self, other: &Credentials) -> bool {
        match (self, other) {
            (Self::Token(a), Self::Token(b)) => a == b,
            (Self::AkSk(a), Self::AkSk(b)) => {
                a.ak == b.ak
                    && a.sk == b.sk
                    && a.security_token == b.security_token
                    && a.project_id == b.project_id
            }
            (Self::Iam(a), Self::Iam(b)) => Arc::ptr_eq(a, b) || a.same_as(b),
            _ => false,
        }
    }

    /// The secrets of these credentials that can travel on the wire, for scrubbing answers
    /// (an IAM source's token is in [`Prepared::token_used`]).
    pub fn wire_secrets(&self) -> Vec<&Secret> {
        match self {
            Self::Token(token) => vec![token],
            Self::AkSk(creds) => std::iter::once(&creds.sk)
                .chain(creds.security_token.as_ref())
                .collect(),
            Self::Iam(_) => Vec::new(),
        }
    }

    /// Makes the requests these credentials send themselves (IAM tokens) go through `pacer`,
    /// the account's limits; a no-op for fixed tokens and AK/SK, which send nothing.
    pub fn pace_with(&self, pacer: Arc<dyn crate::api::pace::Pacer>) {
        if let Self::Iam(source) = self {
            source.pace_with(pacer);
        }
    }

    /// Adds the auth headers to `req.headers` and returns the query string to send.
    pub async fn prepare(&self, req: RequestToSign<'_>) -> Result<Prepared, AuthError> {
        match self {
            Self::Token(token) => {
                req.headers
                    .push(("X-Auth-Token".into(), token.expose().to_string()));
                Ok(Prepared {
                    query_string: query_string(req.query),
                    token_used: None,
                })
            }
            Self::Iam(source) => {
                let token = source.token().await.map_err(|e| AuthError {
                    retryable: e.retryable(),
                    message: e.to_string(),
                })?;
                req.headers
                    .push(("X-Auth-Token".into(), token.expose().to_string()));
                Ok(Prepared {
                    query_string: query_string(req.query),
                    token_used: Some(token),
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
                Ok(Prepared {
                    query_string,
                    token_used: None,
                })
            }
        }
    }
}

/// Why no credentials could be set up (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

/// The credential sources, in precedence order: the first one set wins.
pub const SOURCES: [&str; 6] = [
    "DEPLOYD_TOKEN",
    "DEPLOYD_TOKEN_FILE",
    "CLOUD_SDK_AK/CLOUD_SDK_SK",
    "auth.ak_file/auth.sk_file",
    "auth.token_file",
    "auth.iam",
];

/// Which of [`SOURCES`] are set (even half-set AK/SK pairs, which are errors).
fn present_sources(env: &dyn Fn(&str) -> Option<String>, auth: &AuthSettings) -> Vec<&'static str> {
    let set = [
        env("DEPLOYD_TOKEN").is_some(),
        env("DEPLOYD_TOKEN_FILE").is_some(),
        env("CLOUD_SDK_AK").is_some() || env("CLOUD_SDK_SK").is_some(),
        auth.ak_file.is_some() || auth.sk_file.is_some(),
        auth.token_file.is_some(),
        auth.iam.is_some(),
    ];
    SOURCES
        .iter()
        .zip(set)
        .filter_map(|(name, set)| set.then_some(*name))
        .collect()
}

/// Finds credentials, in this order: `DEPLOYD_TOKEN`, `DEPLOYD_TOKEN_FILE`, `CLOUD_SDK_AK` +
/// `CLOUD_SDK_SK` (+ `CLOUD_SDK_SECURITY_TOKEN`), the config's `auth.ak_file` + `auth.sk_file`
/// (+ `auth.security_token_file`), the config's `auth.token_file`, the config's `auth.iam`
/// (password from `auth.iam.password_file`). `env` looks up environment variables.
/// `project_id` goes into AK/SK requests as `X-Project-Id`.
///
/// Logs the method chosen and the sources ignored because one before them is set; never a
/// secret. Secret files are read now, so a missing file is a start-up error; no request is
/// made (an IAM token is obtained on the first call).
pub fn credentials_from(
    env: &dyn Fn(&str) -> Option<String>,
    auth: &AuthSettings,
    project_id: Option<&str>,
) -> Result<Credentials, CredentialsError> {
    let env = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let present = present_sources(&env, auth);
    let (credentials, source) = choose(&env, auth, project_id)?;
    let ignored: Vec<&str> = present.into_iter().filter(|s| *s != source).collect();
    let what = match &credentials {
        Credentials::Token(_) => "a fixed IAM token (X-Auth-Token)".to_string(),
        Credentials::AkSk(c) => format!(
            "AK/SK signing (SDK-HMAC-SHA256){}{}",
            if c.project_id.is_some() {
                ", with X-Project-Id"
            } else {
                ""
            },
            if c.security_token.is_some() {
                ", temporary credentials (X-Security-Token)"
            } else {
                ""
            }
        ),
        Credentials::Iam(source) => format!(
            "IAM tokens for {} from {}, refreshed before they expire",
            source.who(),
            source.url()
        ),
    };
    tracing::info!(
        auth = credentials.method_name(),
        source,
        "authentication: {what}"
    );
    if !ignored.is_empty() {
        tracing::warn!(
            "credentials from {} are ignored: {source} comes first",
            ignored.join(", ")
        );
    }
    Ok(credentials)
}

/// The first source set, and its name.
fn choose(
    env: &dyn Fn(&str) -> Option<String>,
    auth: &AuthSettings,
    project_id: Option<&str>,
) -> Result<(Credentials, &'static str), CredentialsError> {
    if let Some(token) = env("DEPLOYD_TOKEN") {
        return Ok((Credentials::Token(Secret::new(token)), SOURCES[0]));
    }
    if let Some(path) = env("DEPLOYD_TOKEN_FILE") {
        let token = read_secret_file(std::path::Path::new(&path))?;
        return Ok((Credentials::Token(token), SOURCES[1]));
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
            let security_token = env("CLOUD_SDK_SECURITY_TOKEN").map(Secret::new);
            return Ok((aksk(ak, Secret::new(sk), security_token), SOURCES[2]));
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
            return Ok((aksk(ak, read_secret_file(sk)?, security_token), SOURCES[3]));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(CredentialsError(
                "auth.ak_file and auth.sk_file must be set together".into(),
            ));
        }
        (None, None) => {}
    }
    if let Some(path) = &auth.token_file {
        return Ok((Credentials::Token(read_secret_file(path)?), SOURCES[4]));
    }
    if let Some(iam) = &auth.iam {
        let password = read_secret_file(&iam.password_file)?;
        let source =
            IamTokenSource::new(iam, password).map_err(|e| CredentialsError(e.to_string()))?;
        return Ok((Credentials::Iam(Arc::new(source)), SOURCES[5]));
    }
    Err(CredentialsError(
        "no credentials: set DEPLOYD_TOKEN or DEPLOYD_TOKEN_FILE (an IAM token), or CLOUD_SDK_AK and CLOUD_SDK_SK, or auth.* in the config (ak_file/sk_file, token_file, or iam); for a local try, pass --emulator".into(),
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
    // Only the line ending an editor or `echo` adds is dropped: a password may start or end
    // with spaces.
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.trim().is_empty() {
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
    if let Some(mode) = shared_mode(path) {
        tracing::warn!(
            "secret file {} has mode {mode:o}: readable by group or others; chmod 600 it",
            path.display()
        );
    }
}

/// The permission bits of a file that group or others may access, or `None` when only the
/// owner can (or the file cannot be inspected).
fn shared_mode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::endpoint::{ClientOptions, Endpoint};
    use crate::api::iam::ProjectScope;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn iam(password_file: PathBuf) -> IamConfig {
        IamConfig {
            endpoint: Endpoint::parse("http://127.0.0.1:9").expect("valid"),
            domain: "acme".into(),
            user: "bob".into(),
            password_file,
            project: ProjectScope::Name("cn-north-4".into()),
            options: ClientOptions::default(),
        }
    }

    #[test]
    fn sources_are_taken_in_the_documented_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let auth = AuthSettings {
            token_file: Some(secret_file(d, "token", "file-token\n", 0o600)),
            ak_file: Some(secret_file(d, "ak", "FILEAK\n", 0o600)),
            sk_file: Some(secret_file(d, "sk", "file-sk\n", 0o600)),
            security_token_file: None,
            iam: Some(iam(secret_file(d, "pw", "pw\n", 0o600))),
        };
        let token_file = d.join("token").display().to_string();
        let full = |k: &str| match k {
            "DEPLOYD_TOKEN" => Some("env-token".to_string()),
            "DEPLOYD_TOKEN_FILE" => Some(token_file.clone()),
            "CLOUD_SDK_AK" => Some("ENVAK".into()),
            "CLOUD_SDK_SK" => Some("env-sk".into()),
            "CLOUD_SDK_SECURITY_TOKEN" => Some("sts".into()),
            _ => None,
        };
        assert_eq!(present_sources(&full, &auth), SOURCES);
        let pick = |env: &dyn Fn(&str) -> Option<String>, auth: &AuthSettings| {
            credentials_from(env, auth, Some("p")).expect("credentials")
        };
        let Credentials::Token(t) = pick(&full, &auth) else {
            panic!("DEPLOYD_TOKEN first")
        };
        assert_eq!(t.expose(), "env-token");
        let no_token = |k: &str| (k != "DEPLOYD_TOKEN").then(|| full(k)).flatten();
        let Credentials::Token(t) = pick(&no_token, &auth) else {
            panic!("DEPLOYD_TOKEN_FILE second")
        };
        assert_eq!(t.expose(), "file-token");
        let sdk = |k: &str| k.starts_with("CLOUD_SDK").then(|| full(k)).flatten();
        let Credentials::AkSk(c) = pick(&sdk, &auth) else {
            panic!("CLOUD_SDK_AK third")
        };
        assert_eq!((c.ak.as_str(), c.sk.expose()), ("ENVAK", "env-sk"));
        assert_eq!(c.security_token.as_ref().map(Secret::expose), Some("sts"));
        assert_eq!(c.project_id.as_deref(), Some("p"));
        let none = |_: &str| None;
        let Credentials::AkSk(c) = pick(&none, &auth) else {
            panic!("auth.ak_file fourth")
        };
        assert_eq!((c.ak.as_str(), c.sk.expose()), ("FILEAK", "file-sk"));
        let later = AuthSettings {
            ak_file: None,
            sk_file: None,
            ..auth.clone()
        };
        assert_eq!(pick(&none, &later).method_name(), "token");
        let only_iam = AuthSettings {
            token_file: None,
            ..later
        };
        let creds = pick(&none, &only_iam);
        assert_eq!(creds.method_name(), "iam");
        assert_eq!(format!("{creds:?}"), "iam");
        assert!(credentials_from(&none, &AuthSettings::default(), None).is_err());
    }

    #[test]
    fn half_pairs_and_missing_files_are_errors_without_secrets() {
        let half = |k: &str| (k == "CLOUD_SDK_SK").then(|| "half-SECRET".to_string());
        let err = credentials_from(&half, &AuthSettings::default(), None).expect_err("refused");
        assert!(err.0.contains("together") && !err.0.contains("half-SECRET"));
        let missing = AuthSettings {
            iam: Some(iam(PathBuf::from("/nonexistent/deployd-pw"))),
            ..AuthSettings::default()
        };
        let err = credentials_from(&|_| None, &missing, None).expect_err("refused");
        assert!(err.0.contains("/nonexistent/deployd-pw"), "{err}");
    }

    #[test]
    fn shared_secret_files_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let private = secret_file(dir.path(), "private", "x", 0o600);
        let group = secret_file(dir.path(), "group", "x", 0o640);
        let world = secret_file(dir.path(), "world", "x", 0o604);
        assert_eq!(shared_mode(&private), None);
        assert_eq!(shared_mode(&group), Some(0o640));
        assert_eq!(shared_mode(&world), Some(0o604));
        assert_eq!(shared_mode(&dir.path().join("absent")), None);
        // Reading still works; the value is trimmed, an empty file is refused.
        assert_eq!(read_secret_file(&group).expect("reads").expose(), "x");
        let empty = secret_file(dir.path(), "empty", " \n", 0o600);
        assert!(read_secret_file(&empty).is_err());
    }

    #[test]
    fn wire_secrets_cover_what_is_sent() {
        let c = Credentials::AkSk(Box::new(AkSk {
            ak: "AK".into(),
            sk: Secret::new("sk"),
            project_id: None,
            security_token: Some(Secret::new("sts")),
        }));
        let shown: Vec<&str> = c.wire_secrets().into_iter().map(Secret::expose).collect();
        assert_eq!(shown, ["sk", "sts"]);
        assert_eq!(
            Credentials::Token(Secret::new("t")).wire_secrets(),
            [&Secret::new("t")]
        );
    }
}
