//! AK/SK request signing, `SDK-HMAC-SHA256` (API doc section E2), as the official SDK signer does
//! it, plus the gateway-side check the emulator needs.
//!
//! Pure functions only: the current time comes in as an argument, and nothing here reads the
//! environment, the clock or the network. The secret key is only ever used as an HMAC key; it never
//! appears in a returned value, an error or `Debug` output.

use std::fmt::{self, Write as _};

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The algorithm name that opens the string to sign and the `Authorization` header.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";

/// `hex(sha256(""))`: the payload hash of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The payload hash the SDK declares for bodies that are not JSON or BSON.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Format of `X-Sdk-Date` (`20240315T081500Z`, UTC).
pub const SDK_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The largest accepted distance between `X-Sdk-Date` and the gateway's clock.
pub const MAX_SKEW: TimeDelta = TimeDelta::minutes(15);

const HEADER_SDK_DATE: &str = "X-Sdk-Date";
const HEADER_PROJECT_ID: &str = "X-Project-Id";
const HEADER_SECURITY_TOKEN: &str = "X-Security-Token";
const HEADER_CONTENT_SHA256: &str = "X-Sdk-Content-Sha256";
const HEADER_HOST: &str = "Host";
const HEADER_AUTHORIZATION: &str = "Authorization";

type HmacSha256 = Hmac<Sha256>;

/// Permanent or temporary (STS) AK/SK credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkSk {
    /// Access key id; public, it is sent in the `Authorization` header.
    pub ak: String,
    /// Secret key; only used as the HMAC key.
    pub sk: Secret,
    /// Sent as `X-Project-Id` (and signed) when present.
    pub project_id: Option<String>,
    /// STS security token, sent and signed as `X-Security-Token` when present.
    pub security_token: Option<Secret>,
}

/// A request about to be sent, as the client builds it.
#[derive(Debug, Clone, Copy)]
pub struct SignRequest<'a> {
    /// HTTP method, any case.
    pub method: &'a str,
    /// `host[:port]`, used for the `Host` header unless `headers` already has one.
    pub host: &'a str,
    /// The path as it will be sent (may hold percent-escapes), without the query.
    pub path: &'a str,
    /// Query pairs in any order; repeated keys are separate pairs. Values are raw (not encoded).
    pub query: &'a [(String, String)],
    /// Headers the caller sets itself (e.g. `Content-Type`), in sending order.
    pub headers: &'a [(String, String)],
    /// The body bytes exactly as sent.
    pub body: &'a [u8],
}

/// The outcome of [`sign`]: what to send, plus the intermediate strings for tests and debugging.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    /// The six-line canonical request that was hashed.
    pub canonical_request: String,
    /// `SDK-HMAC-SHA256\n<date>\n<hex sha256 of canonical_request>`.
    pub string_to_sign: String,
    /// Lower-case signed header names joined with `;`.
    pub signed_headers: String,
    /// The `Authorization` header value.
    pub authorization: String,
    /// The URI to put on the wire: path as given, then `?` and the canonical query if any.
    pub request_uri: String,
    /// Every header to send, in order, `Authorization` last.
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for Signed {
    /// Leaves out the canonical strings and redacts the security token header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), redact_header(k, v)))
            .collect();
        f.debug_struct("Signed")
            .field("request_uri", &self.request_uri)
            .field("signed_headers", &self.signed_headers)
            .field("authorization", &self.authorization)
            .field("headers", &headers)
            .finish_non_exhaustive()
    }
}

/// A request as the gateway received it, for [`verify`].
#[derive(Debug, Clone, Copy)]
pub struct ReceivedRequest<'a> {
    /// HTTP method, any case.
    pub method: &'a str,
    /// The raw path as received (percent-escapes kept), without the query.
    pub path: &'a str,
    /// The raw query string as received, without the `?`; empty when there is none.
    pub query: &'a str,
    /// Every received header; only those named in `SignedHeaders` are used.
    pub headers: &'a [(String, String)],
    /// The received body.
    pub body: &'a [u8],
}

/// The parts of an `SDK-HMAC-SHA256` `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    /// The access key id (`Access=`).
    pub access: String,
    /// Signed header names as listed (`SignedHeaders=`), lower-cased.
    pub signed_headers: Vec<String>,
    /// Lower-case hex signature (`Signature=`).
    pub signature: String,
}

/// Why a received request's signature was refused.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Missing or unparsable `Authorization` or `X-Sdk-Date`, or a signed header that is absent
    /// (the gateway answers APIGW.0301).
    #[error("malformed AK/SK signature: {0}")]
    Malformed(String),
    /// `X-Sdk-Date` is more than [`MAX_SKEW`] away from the gateway's clock (APIGW.0303).
    #[error(
        "signature expired: X-Sdk-Date {sdk_date} is {skew_seconds} s from the server time (limit 900 s)"
    )]
    Expired {
        /// The received `X-Sdk-Date` value.
        sdk_date: String,
        /// Absolute distance to the server clock, in seconds.
        skew_seconds: i64,
    },
    /// The recomputed signature differs (APIGW.0301 "verify aksk signature fail").
    #[error("AK/SK signature does not match the request")]
    Mismatch {
        /// The canonical request the server computed, for comparing with the client's.
        canonical_request: String,
    },
}

impl fmt::Debug for SignatureError {
    /// Like a derived `Debug`, but a signed `x-security-token` line is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(reason) => f.debug_tuple("Malformed").field(reason).finish(),
            Self::Expired {
                sdk_date,
                skew_seconds,
            } => f
                .debug_struct("Expired")
                .field("sdk_date", sdk_date)
                .field("skew_seconds", skew_seconds)
                .finish(),
            Self::Mismatch { canonical_request } => f
                .debug_struct("Mismatch")
                .field(
                    "canonical_request",
                    &redact_canonical_request(canonical_request, "\n"),
                )
                .finish(),
        }
    }
}

/// A canonical request with the value of a signed `x-security-token` masked (it is a
/// credential), its lines joined with `separator` (APIG shows them joined with `|`).
pub fn redact_canonical_request(canonical_request: &str, separator: &str) -> String {
    canonical_request
        .split('\n')
        .map(|line| {
            if line.starts_with("x-security-token:") {
                "x-security-token:***"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join(separator)
}

/// Signs `req` with `creds` as the SDK's `BasicCredentials.sign_request` does.
///
/// Headers are added in this order after the caller's own: `X-Sdk-Date` (from `now`, unless a
/// header of that name exists in any case; then its value is used as is), `X-Project-Id`,
/// `X-Security-Token`, `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` (for a `Content-Type` that is not
/// JSON or BSON), `Host` (unless present in any case), and finally `Authorization`. A header that
/// already exists under the same name (any case) is overwritten in place instead.
pub fn sign(creds: &AkSk, req: &SignRequest<'_>, now: DateTime<Utc>) -> Signed {
    let mut headers: Vec<(String, String)> = req.headers.to_vec();

    let sdk_date = match find_header(&headers, HEADER_SDK_DATE) {
        Some(existing) => existing.trim().to_string(),
        None => {
            let date = now.format(SDK_DATE_FORMAT).to_string();
            headers.push((HEADER_SDK_DATE.to_string(), date.clone()));
            date
        }
    };
    if let Some(project_id) = &creds.project_id {
        set_header(&mut headers, HEADER_PROJECT_ID, project_id);
    }
    if let Some(token) = &creds.security_token {
        set_header(&mut headers, HEADER_SECURITY_TOKEN, token.expose());
    }
    if find_header(&headers, "Content-Type").is_some_and(|ct| !is_signed_content_type(ct)) {
        set_header(&mut headers, HEADER_CONTENT_SHA256, UNSIGNED_PAYLOAD);
    }
    if find_header(&headers, HEADER_HOST).is_none() {
        headers.push((HEADER_HOST.to_string(), req.host.to_string()));
    }

    // The SDK writes the trimmed value of every signed header back into the request.
    for (name, value) in &mut headers {
        if is_signable(name) {
            let trimmed = value.trim();
            if trimmed.len() != value.len() {
                *value = trimmed.to_string();
            }
        }
    }

    let query = query_string(req.query);
    let (canonical_headers, signed_headers) = canonical_headers(
        headers
            .iter()
            .filter(|(name, _)| is_signable(name))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.as_str())),
    );
    let payload = payload_hash(req.body, find_header(&headers, HEADER_CONTENT_SHA256));
    let canonical_request = join_canonical(
        req.method,
        &canonical_uri(req.path),
        &query,
        &canonical_headers,
        &signed_headers,
        &payload,
    );
    let string_to_sign = string_to_sign(&sdk_date, &canonical_request);
    let signature = hex::encode(
        hmac(creds.sk.expose(), &string_to_sign)
            .finalize()
            .into_bytes(),
    );
    let authorization = format!(
        "{ALGORITHM} Access={}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.ak
    );
    set_header(&mut headers, HEADER_AUTHORIZATION, &authorization);

    let request_uri = if query.is_empty() {
        req.path.to_string()
    } else {
        format!("{}?{query}", req.path)
    };
    Signed {
        canonical_request,
        string_to_sign,
        signed_headers,
        authorization,
        request_uri,
        headers,
    }
}

/// Parses `SDK-HMAC-SHA256 Access=<ak>, SignedHeaders=<a;b>, Signature=<hex>`.
///
/// The three parts may come in any order, separated by commas with optional spaces.
pub fn parse_authorization(value: &str) -> Result<ParsedAuthorization, SignatureError> {
    let malformed = |why: &str| SignatureError::Malformed(format!("Authorization header: {why}"));
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| malformed("does not start with \"SDK-HMAC-SHA256 \""))?;

    let (mut access, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, val) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("expected key=value parts"))?;
        let slot = match key {
            "Access" => &mut access,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(
                    "unknown part (expected Access, SignedHeaders, Signature)",
                ));
            }
        };
        if slot.replace(val.trim()).is_some() {
            return Err(malformed("a part is repeated"));
        }
    }
    let access = access
        .filter(|a| !a.is_empty())
        .ok_or_else(|| malformed("Access is missing"))?;
    let signed_headers: Vec<String> = signed_headers
        .ok_or_else(|| malformed("SignedHeaders is missing"))?
        .split(';')
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if signed_headers.is_empty() {
        return Err(malformed("SignedHeaders is empty"));
    }
    let signature = signature
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed("Signature is missing"))?;
    Ok(ParsedAuthorization {
        access: access.to_string(),
        signed_headers,
        signature: signature.to_string(),
    })
}

/// Checks a received request's signature as the gateway does, with the secret key `sk` that
/// belongs to the `Access` key of its `Authorization` header.
///
/// Only headers named in `SignedHeaders` enter the canonical request. The checks run in this
/// order: parse (`Malformed`), `X-Sdk-Date` skew against `now` (`Expired`), then the signature
/// itself, compared in constant time (`Mismatch`).
pub fn verify(
    received: &ReceivedRequest<'_>,
    sk: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let authorization = find_header(received.headers, HEADER_AUTHORIZATION)
        .ok_or_else(|| SignatureError::Malformed("no Authorization header".to_string()))?;
    let parsed = parse_authorization(authorization)?;

    let sdk_date = find_header(received.headers, HEADER_SDK_DATE)
        .map(str::trim)
        .ok_or_else(|| SignatureError::Malformed("no X-Sdk-Date header".to_string()))?;
    if !parsed.signed_headers.iter().any(|h| h == "x-sdk-date") {
        return Err(SignatureError::Malformed(
            "X-Sdk-Date is not among the signed headers".to_string(),
        ));
    }
    let date = NaiveDateTime::parse_from_str(sdk_date, SDK_DATE_FORMAT)
        .map_err(|_| {
            SignatureError::Malformed(format!(
                "X-Sdk-Date {sdk_date:?} is not in the form YYYYMMDDTHHMMSSZ"
            ))
        })?
        .and_utc();
    let skew = (now - date).abs();
    if skew > MAX_SKEW {
        return Err(SignatureError::Expired {
            sdk_date: sdk_date.to_string(),
            skew_seconds: skew.num_seconds(),
        });
    }

    let mut signed = Vec::with_capacity(parsed.signed_headers.len());
    for name in &parsed.signed_headers {
        let value = find_header(received.headers, name).ok_or_else(|| {
            SignatureError::Malformed(format!("signed header {name:?} is not in the request"))
        })?;
        signed.push((name.clone(), value));
    }
    let (canonical_headers, signed_headers) = canonical_headers(signed.into_iter());
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = received
        .query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let query = canonical_query(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    let payload = payload_hash(
        received.body,
        find_header(received.headers, HEADER_CONTENT_SHA256),
    );
    let canonical_request = join_canonical(
        received.method,
        &canonical_uri(received.path),
        &query,
        &canonical_headers,
        &signed_headers,
        &payload,
    );

    let mismatch = || SignatureError::Mismatch {
        canonical_request: canonical_request.clone(),
    };
    let claimed = hex::decode(&parsed.signature).map_err(|_| mismatch())?;
    hmac(sk, &string_to_sign(sdk_date, &canonical_request))
        .verify_slice(&claimed)
        .map_err(|_| mismatch())
}

/// A keyed HMAC-SHA256 over `message`.
fn hmac(key: &str, message: &str) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    mac
}

fn string_to_sign(sdk_date: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{sdk_date}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn join_canonical(
    method: &str,
    uri: &str,
    query: &str,
    headers: &str,
    signed_headers: &str,
    payload: &str,
) -> String {
    // `headers` ends with '\n', which leaves the blank line the format requires.
    format!(
        "{}\n{uri}\n{query}\n{headers}\n{signed_headers}\n{payload}",
        method.to_ascii_uppercase()
    )
}

/// Percent-decodes the path, splits it on `/`, encodes each segment, and ends it with `/`.
fn canonical_uri(path: &str) -> String {
    // The SDK decodes to text with replacement characters, so invalid UTF-8 becomes U+FFFD.
    let decoded = String::from_utf8_lossy(&percent_decode(path)).into_owned();
    let mut out = String::with_capacity(decoded.len() + 1);
    for (i, segment) in decoded.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        encode_rfc3986(segment.as_bytes(), &mut out);
    }
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Sorts pairs by raw key then raw value (byte order), encodes both, joins `k=v` with `&`.
fn canonical_query<'b>(pairs: impl Iterator<Item = (&'b [u8], &'b [u8])>) -> String {
    let mut pairs: Vec<(&[u8], &[u8])> = pairs.collect();
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_rfc3986(key, &mut out);
        out.push('=');
        encode_rfc3986(value, &mut out);
    }
    out
}

/// Builds the canonical header block (each line ending in `\n`) and the signed header list from
/// lower-cased names and raw values.
fn canonical_headers<'v>(headers: impl Iterator<Item = (String, &'v str)>) -> (String, String) {
    let mut headers: Vec<(String, &str)> = headers.collect();
    // Stable, so two headers with the same name keep their order.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut block = String::new();
    let mut names = String::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        block.push_str(name);
        block.push(':');
        block.push_str(value.trim());
        block.push('\n');
        if i > 0 {
            names.push(';');
        }
        names.push_str(name);
    }
    (block, names)
}

fn payload_hash(body: &[u8], declared: Option<&str>) -> String {
    if body.is_empty() {
        EMPTY_BODY_SHA256.to_string()
    } else if let Some(declared) = declared {
        declared.to_string()
    } else {
        hex::encode(Sha256::digest(body))
    }
}

/// One path segment (or query key or value) RFC 3986 encoded as the canonical request encodes
/// it. The client encodes what it sends with this, so the path on the wire and the path signed
/// cannot differ (an empty safe set, as the SDK's path parameters).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_rfc3986(s.as_bytes(), &mut out);
    out
}

/// The query string to send for `pairs`: the canonical query [`sign`] signs (sorted by raw key
/// then value, both parts encoded), because the gateway recomputes it from what it receives.
pub fn query_string(pairs: &[(String, String)]) -> String {
    canonical_query(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

/// RFC 3986 encoding: `A-Z a-z 0-9 - _ . ~` stay, every other byte becomes `%XX` (upper-case).
fn encode_rfc3986(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Decodes `%XX` escapes (either hex case); a `%` not followed by two hex digits stays as is.
/// `+` is kept literally (RFC 3986, not form encoding).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&c| hex_digit(c)),
                bytes.get(i + 2).and_then(|&c| hex_digit(c)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn hex_digit(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Headers whose name contains `_` are sent but never signed.
fn is_signable(name: &str) -> bool {
    !name.contains('_')
}

fn is_signed_content_type(content_type: &str) -> bool {
    content_type.starts_with("application/json") || content_type.starts_with("application/bson")
}

/// The first header named `name`, compared case-insensitively.
fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Overwrites the value of an existing header (any case) in place, or appends it.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    match headers
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
    {
        Some((_, v)) => *v = value.to_string(),
        None => headers.push((name.to_string(), value.to_string())),
    }
}

fn redact_header<'v>(name: &str, value: &'v str) -> &'v str {
    if name.eq_ignore_ascii_case(HEADER_SECURITY_TOKEN) || name.eq_ignore_ascii_case("X-Auth-Token")
    {
        "***"
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, SDK_DATE_FORMAT)
            .expect("test date")
            .and_utc()
    }

    fn creds() -> AkSk {
        AkSk {
            ak: "AK1".to_string(),
            sk: Secret::new("very-secret-sk"),
            project_id: Some("p1".to_string()),
            security_token: None,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn received<'a>(signed: &'a Signed, method: &'a str, body: &'a [u8]) -> ReceivedRequest<'a> {
        let (path, query) = signed
            .request_uri
            .split_once('?')
            .unwrap_or((&signed.request_uri, ""));
        ReceivedRequest {
            method,
            path,
            query,
            headers: &signed.headers,
            body,
        }
    }

    #[test]
    fn uri_gets_a_trailing_slash_but_the_wire_uri_does_not() {
        assert_eq!(canonical_uri("/v2/tasks/T/start"), "/v2/tasks/T/start/");
        assert_eq!(canonical_uri("/v2/tasks/"), "/v2/tasks/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri(""), "/");
    }

    #[test]
    fn uri_segments_are_decoded_then_reencoded_upper_case() {
        assert_eq!(
            canonical_uri("/a%e4%b8%ad/name:x@y"),
            "/a%E4%B8%AD/name%3Ax%40y/"
        );
        assert_eq!(canonical_uri("/a b/c=d/~x"), "/a%20b/c%3Dd/~x/");
        // A '%' that is not an escape is itself encoded.
        assert_eq!(canonical_uri("/100%/x%zz"), "/100%25/x%25zz/");
        // Invalid UTF-8 becomes U+FFFD, as the SDK's unquote does.
        assert_eq!(canonical_uri("/%ff"), "/%EF%BF%BD/");
    }

    #[test]
    fn query_sorts_by_raw_key_then_value_and_encodes_both() {
        let q = [
            ("b", "2"),
            ("a", "z z"),
            ("a", "y/+"),
            ("c", ""),
            ("t", "~ok"),
        ];
        let out = canonical_query(q.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        assert_eq!(out, "a=y%2F%2B&a=z%20z&b=2&c=&t=~ok");
        assert_eq!(canonical_query(std::iter::empty()), "");
    }

    #[test]
    fn headers_are_lowercased_sorted_trimmed_and_keep_inner_spaces() {
        let (block, names) = canonical_headers(
            [
                ("x-b".to_string(), "  two  spaces  "),
                ("content-type".to_string(), "application/json"),
            ]
            .into_iter(),
        );
        assert_eq!(block, "content-type:application/json\nx-b:two  spaces\n");
        assert_eq!(names, "content-type;x-b");
    }

    #[test]
    fn underscore_headers_are_sent_unsigned_and_untrimmed() {
        let headers = h(&[("X_Trace", "  raw  "), ("X-Ok", "  v ")]);
        let req = SignRequest {
            method: "get",
            host: "h:8443",
            path: "/x",
            query: &[],
            headers: &headers,
            body: b"",
        };
        let s = sign(&creds(), &req, at("20240315T081500Z"));
        assert_eq!(s.signed_headers, "host;x-ok;x-project-id;x-sdk-date");
        assert!(!s.canonical_request.contains("x_trace"));
        assert!(s.canonical_request.starts_with("GET\n/x/\n\n"));
        assert!(
            s.headers
                .contains(&("X_Trace".to_string(), "  raw  ".to_string()))
        );
        assert!(s.headers.contains(&("X-Ok".to_string(), "v".to_string())));
        assert!(
            s.headers
                .contains(&("Host".to_string(), "h:8443".to_string()))
        );
    }

    #[test]
    fn payload_hash_rules() {
        assert_eq!(payload_hash(b"", Some(UNSIGNED_PAYLOAD)), EMPTY_BODY_SHA256);
        assert_eq!(payload_hash(b"x", Some(UNSIGNED_PAYLOAD)), UNSIGNED_PAYLOAD);
        assert_eq!(
            payload_hash(b"{}", None),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn only_non_json_content_types_get_unsigned_payload() {
        for (ct, unsigned) in [
            ("application/json", false),
            ("application/json;charset=UTF-8", false),
            ("application/bson", false),
            ("text/plain", true),
            ("application/octet-stream", true),
        ] {
            let headers = h(&[("Content-Type", ct)]);
            let req = SignRequest {
                method: "POST",
                host: "h",
                path: "/",
                query: &[],
                headers: &headers,
                body: b"body",
            };
            let s = sign(&creds(), &req, at("20240315T081500Z"));
            assert_eq!(
                s.canonical_request.ends_with(UNSIGNED_PAYLOAD),
                unsigned,
                "{ct}"
            );
            assert_eq!(
                s.signed_headers.contains("x-sdk-content-sha256"),
                unsigned,
                "{ct}"
            );
        }
    }

    #[test]
    fn existing_sdk_date_and_host_headers_win_in_any_case() {
        let headers = h(&[("x-sdk-date", "20200101T000000Z"), ("HOST", "other:1")]);
        let req = SignRequest {
            method: "GET",
            host: "h",
            path: "/",
            query: &[],
            headers: &headers,
            body: b"",
        };
        let s = sign(&creds(), &req, at("20240315T081500Z"));
        assert!(
            s.string_to_sign
                .starts_with("SDK-HMAC-SHA256\n20200101T000000Z\n")
        );
        assert!(s.canonical_request.contains("\nhost:other:1\n"));
        let names: Vec<&str> = s.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-sdk-date", "HOST", "X-Project-Id", "Authorization"]
        );
    }

    #[test]
    fn security_token_is_signed_but_never_debug_printed() {
        let mut c = creds();
        c.security_token = Some(Secret::new("tok-SECRET"));
        let req = SignRequest {
            method: "GET",
            host: "h",
            path: "/",
            query: &[],
            headers: &[],
            body: b"",
        };
        let s = sign(&c, &req, at("20240315T081500Z"));
        assert!(
            s.canonical_request
                .contains("\nx-security-token:tok-SECRET\n")
        );
        assert!(s.signed_headers.ends_with("x-sdk-date;x-security-token"));
        let debug = format!("{s:?} {c:?}");
        assert!(!debug.contains("tok-SECRET"), "{debug}");
        assert!(!debug.contains("very-secret-sk"), "{debug}");

        let tampered = [b"x".as_slice()];
        let err = verify(
            &received(&s, "GET", tampered[0]),
            "very-secret-sk",
            at("20240315T081500Z"),
        )
        .expect_err("body changed");
        let shown = format!("{err:?} {err}");
        assert!(matches!(err, SignatureError::Mismatch { .. }));
        assert!(
            !shown.contains("tok-SECRET") && !shown.contains("very-secret-sk"),
            "{shown}"
        );
    }

    #[test]
    fn authorization_header_parses_and_rejects_garbage() {
        let p = parse_authorization(
            "SDK-HMAC-SHA256 Access=AK1, SignedHeaders=Host;x-sdk-date, Signature=abc",
        )
        .expect("valid");
        assert_eq!(p.access, "AK1");
        assert_eq!(p.signed_headers, ["host", "x-sdk-date"]);
        assert_eq!(p.signature, "abc");
        for bad in [
            "",
            "Bearer x",
            "SDK-HMAC-SHA256Access=a, SignedHeaders=h, Signature=s",
            "SDK-HMAC-SHA256 Access=a, SignedHeaders=h",
            "SDK-HMAC-SHA256 Access=, SignedHeaders=h, Signature=s",
            "SDK-HMAC-SHA256 Access=a, SignedHeaders=, Signature=s",
            "SDK-HMAC-SHA256 Access=a, Access=b, SignedHeaders=h, Signature=s",
            "SDK-HMAC-SHA256 Access=a, Foo=b, SignedHeaders=h, Signature=s",
            "SDK-HMAC-SHA256 Access=a SignedHeaders=h Signature=s",
        ] {
            assert!(
                matches!(parse_authorization(bad), Err(SignatureError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn verify_accepts_a_signed_request_within_the_skew() {
        let query = [
            ("b".to_string(), "x y".to_string()),
            ("a".to_string(), "1".to_string()),
        ];
        let headers = h(&[("Content-Type", "application/json")]);
        let req = SignRequest {
            method: "POST",
            host: "127.0.0.1:9",
            path: "/v2/a b/%E4%B8%AD",
            query: &query,
            headers: &headers,
            body: b"{}",
        };
        let t = at("20240315T081500Z");
        let s = sign(&creds(), &req, t);
        let r = received(&s, "POST", b"{}");
        assert_eq!(
            verify(&r, "very-secret-sk", t + TimeDelta::minutes(15)),
            Ok(())
        );
        assert_eq!(
            verify(&r, "very-secret-sk", t - TimeDelta::minutes(15)),
            Ok(())
        );
        assert!(matches!(
            verify(&r, "very-secret-sk", t + TimeDelta::seconds(15 * 60 + 1)),
            Err(SignatureError::Expired {
                skew_seconds: 901,
                ..
            })
        ));
        assert!(matches!(
            verify(&r, "wrong-sk", t),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn verify_ignores_unsigned_headers_and_catches_changed_signed_ones() {
        let req = SignRequest {
            method: "GET",
            host: "h",
            path: "/p",
            query: &[],
            headers: &[],
            body: b"",
        };
        let t = at("20240315T081500Z");
        let s = sign(&creds(), &req, t);
        let mut extra = s.clone();
        extra
            .headers
            .push(("User-Agent".to_string(), "added-by-proxy".to_string()));
        assert_eq!(
            verify(&received(&extra, "GET", b""), "very-secret-sk", t),
            Ok(())
        );

        let mut changed = s.clone();
        set_header(&mut changed.headers, "X-Project-Id", "p2");
        let Err(SignatureError::Mismatch { canonical_request }) =
            verify(&received(&changed, "GET", b""), "very-secret-sk", t)
        else {
            panic!("expected a mismatch");
        };
        assert!(canonical_request.contains("x-project-id:p2"));

        let mut missing = s.clone();
        missing.headers.retain(|(k, _)| k != "X-Project-Id");
        assert!(matches!(
            verify(&received(&missing, "GET", b""), "very-secret-sk", t),
            Err(SignatureError::Malformed(_))
        ));
        // Changing the method is a mismatch too.
        assert!(matches!(
            verify(&received(&s, "POST", b""), "very-secret-sk", t),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn verify_reports_missing_or_bad_date_and_authorization_as_malformed() {
        let req = SignRequest {
            method: "GET",
            host: "h",
            path: "/p",
            query: &[],
            headers: &[],
            body: b"",
        };
        let t = at("20240315T081500Z");
        let s = sign(&creds(), &req, t);
        for (name, value) in [
            ("X-Sdk-Date", None),
            ("X-Sdk-Date", Some("2024-03-15T08:15:00Z")),
            ("Authorization", None),
            ("Authorization", Some("SDK-HMAC-SHA256 nonsense")),
        ] {
            let mut bad = s.clone();
            match value {
                Some(v) => set_header(&mut bad.headers, name, v),
                None => bad.headers.retain(|(k, _)| k != name),
            }
            assert!(
                matches!(
                    verify(&received(&bad, "GET", b""), "very-secret-sk", t),
                    Err(SignatureError::Malformed(_))
                ),
                "{name} {value:?}"
            );
        }
    }
}
