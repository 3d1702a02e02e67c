//! Reading error answers: the body's code and message (every form the service uses, whatever
//! the Content-Type says), `X-Request-Id`, `Retry-After`, and the start-call classification.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Longest error message kept from a body (the rest is cut, with a marker).
const MAX_MSG: usize = 512;

/// Code and message found in an error body, in the SDK's search order: `error_code`+`error_msg`,
/// `errorCode`+`errorMsg`, `code`+`message`, then the same inside nested objects (`error: {code,
/// message|reason}`). The top level wins. A non-JSON body becomes the message verbatim.
pub fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => {
            let (code, msg) = find_code(&value, 0);
            (code, msg.map(|m| truncate(&m)))
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            (None, (!text.is_empty()).then(|| truncate(text)))
        }
    }
}

/// The `request_id` field of an APIG error body, used when the header is missing.
pub fn body_request_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("request_id")?.as_str().map(str::to_string)
}

fn find_code(value: &Value, depth: usize) -> (Option<String>, Option<String>) {
    const PAIRS: [(&str, &[&str]); 3] = [
        ("error_code", &["error_msg"]),
        ("errorCode", &["errorMsg"]),
        ("code", &["message", "reason", "msg"]),
    ];
    let Value::Object(map) = value else {
        return (None, None);
    };
    for (code_key, msg_keys) in PAIRS {
        if let Some(code) = map.get(code_key).and_then(scalar_text) {
            let msg = msg_keys
                .iter()
                .find_map(|k| map.get(*k).and_then(scalar_text));
            return (Some(code), msg);
        }
    }
    if depth < 3 {
        for nested in map.values().filter(|v| v.is_object()) {
            let found = find_code(nested, depth + 1);
            if found.0.is_some() {
                return found;
            }
        }
    }
    (None, None)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_MSG {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX_MSG).collect();
        format!("{cut}… (truncated)")
    }
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`. Dates in the past give zero.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

/// How a start call's HTTP status is treated (the body was not a usable 2xx answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// Rejected before processing: send again after a backoff.
    Retryable,
    /// Refused for good.
    Final,
    /// May have been processed: look in the history before sending again.
    Unknown,
}

/// Classifies a non-2xx status of a start call. 429 (gateway throttling), 502 and 503 (backend
/// unavailable) were not processed. 500 and 504 (backend timed out) may have been, so they are
/// looked up before any re-send. Every other 4xx is final.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        429 | 502 | 503 => StatusClass::Retryable,
        500..=599 => StatusClass::Unknown,
        _ => StatusClass::Final,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_apig_form() {
        let body = br#"{"error_code":"APIGW.0308","error_msg":"over ratelimit","request_id":"r1"}"#;
        assert_eq!(
            parse_error_body(body),
            (Some("APIGW.0308".into()), Some("over ratelimit".into()))
        );
        assert_eq!(body_request_id(body), Some("r1".into()));
    }

    #[test]
    fn nested_form() {
        let body = br#"{"error":{"code":"DEV.CH.10001","message":"bad"},"status":"failed"}"#;
        assert_eq!(
            parse_error_body(body),
            (Some("DEV.CH.10001".into()), Some("bad".into()))
        );
    }

    #[test]
    fn both_forms_top_level_wins() {
        let body = br#"{"error_code":"Deploy.00011303","error_msg":"no record","status":"error","error":{"code":"DEV-12-10303","reason":"x"}}"#;
        assert_eq!(parse_error_body(body).0.as_deref(), Some("Deploy.00011303"));
    }

    #[test]
    fn camel_case_and_plain_text() {
        let body = br#"{"errorCode":"X.1","errorMsg":"m"}"#;
        assert_eq!(
            parse_error_body(body),
            (Some("X.1".into()), Some("m".into()))
        );
        assert_eq!(
            parse_error_body(b"<html>Bad gateway</html>"),
            (None, Some("<html>Bad gateway</html>".into()))
        );
        assert_eq!(parse_error_body(b""), (None, None));
        let long = "x".repeat(2000);
        assert!(
            parse_error_body(long.as_bytes())
                .1
                .expect("msg")
                .ends_with("(truncated)")
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T01:00:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 01:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn status_classes() {
        for s in [429, 502, 503] {
            assert_eq!(classify_status(s), StatusClass::Retryable, "{s}");
        }
        for s in [500, 504] {
            assert_eq!(classify_status(s), StatusClass::Unknown, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413] {
            assert_eq!(classify_status(s), StatusClass::Final, "{s}");
        }
    }
}
