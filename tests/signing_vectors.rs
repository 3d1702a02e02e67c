//! Reproduces every AK/SK signing vector produced by the official Python SDK signer
//! (`tests/fixtures/aksk-signing.json`, API doc section E3) byte for byte, and checks that the
//! emulator-side `verify` accepts each signed request and refuses tampered or stale ones.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use deployd::auth::{AkSk, ReceivedRequest, SignRequest, SignatureError, Signed, sign, verify};
use deployd::secret::Secret;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    ak: String,
    sk: String,
    project_id: Option<String>,
    security_token: Option<String>,
    method: String,
    host: String,
    path: String,
    query: Vec<(String, String)>,
    #[serde(deserialize_with = "ordered_headers")]
    headers_in: Vec<(String, String)>,
    body: String,
    sdk_date: String,
    canonical_request: String,
    string_to_sign: String,
    signed_headers: String,
    authorization: String,
    request_uri: String,
    #[serde(deserialize_with = "ordered_headers")]
    headers_out: Vec<(String, String)>,
}

/// A JSON object read as a list of pairs in document order (serde_json's map would sort it).
fn ordered_headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of header names to string values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry::<String, String>()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs)
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/aksk-signing.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    let cases: Vec<Case> = serde_json::from_str(&text).expect("fixture parses");
    assert!(cases.len() >= 15, "fixture lost cases: {}", cases.len());
    cases
}

impl Case {
    fn creds(&self) -> AkSk {
        AkSk {
            ak: self.ak.clone(),
            sk: Secret::new(&self.sk),
            project_id: self.project_id.clone(),
            security_token: self.security_token.as_deref().map(Secret::new),
        }
    }

    fn date(&self) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(&self.sdk_date, "%Y%m%dT%H%M%SZ")
            .expect("sdk_date format")
            .and_utc()
    }

    fn sign_with(&self, headers: &[(String, String)], now: DateTime<Utc>) -> Signed {
        let req = SignRequest {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: &self.query,
            headers,
            body: self.body.as_bytes(),
        };
        sign(&self.creds(), &req, now)
    }

    fn assert_matches(&self, s: &Signed, how: &str) {
        let n = format!("{} ({how})", self.name);
        assert_eq!(
            s.canonical_request, self.canonical_request,
            "{n}: canonical_request"
        );
        assert_eq!(s.string_to_sign, self.string_to_sign, "{n}: string_to_sign");
        assert_eq!(s.signed_headers, self.signed_headers, "{n}: signed_headers");
        assert_eq!(s.authorization, self.authorization, "{n}: authorization");
        assert_eq!(s.request_uri, self.request_uri, "{n}: request_uri");
        assert_eq!(s.headers, self.headers_out, "{n}: headers_out");
    }
}

fn received<'a>(s: &'a Signed, method: &'a str, body: &'a [u8]) -> ReceivedRequest<'a> {
    let (path, query) = s
        .request_uri
        .split_once('?')
        .unwrap_or((&s.request_uri, ""));
    ReceivedRequest {
        method,
        path,
        query,
        headers: &s.headers,
        body,
    }
}

#[test]
fn every_vector_is_reproduced_byte_for_byte() {
    for case in cases() {
        let signed = case.sign_with(&case.headers_in, case.date());
        case.assert_matches(&signed, "date from now");
    }
}

#[test]
fn an_existing_sdk_date_header_is_used_instead_of_now() {
    for case in cases() {
        let mut headers = case.headers_in.clone();
        headers.push(("X-Sdk-Date".to_string(), case.sdk_date.clone()));
        let far_away = case.date() + TimeDelta::days(400);
        let signed = case.sign_with(&headers, far_away);
        case.assert_matches(&signed, "X-Sdk-Date header");
    }
}

#[test]
fn every_signed_vector_verifies_on_the_server_side() {
    for case in cases() {
        let signed = case.sign_with(&case.headers_in, case.date());
        let req = received(&signed, &case.method, case.body.as_bytes());
        let later = case.date() + TimeDelta::minutes(14);
        assert_eq!(verify(&req, &case.sk, later), Ok(()), "{}", case.name);
    }
}

#[test]
fn a_tampered_body_is_a_mismatch_unless_the_payload_is_unsigned() {
    for case in cases() {
        let signed = case.sign_with(&case.headers_in, case.date());
        let mut body = case.body.clone().into_bytes();
        body.push(b' ');
        let result = verify(
            &received(&signed, &case.method, &body),
            &case.sk,
            case.date(),
        );
        if case.canonical_request.ends_with("\nUNSIGNED-PAYLOAD") {
            // The SDK declares non-JSON bodies unsigned, so the gateway cannot notice.
            assert_eq!(result, Ok(()), "{}", case.name);
        } else {
            let Err(SignatureError::Mismatch { canonical_request }) = result else {
                panic!("{}: expected a mismatch, got {result:?}", case.name);
            };
            assert_ne!(canonical_request, case.canonical_request, "{}", case.name);
            // Only the payload hash line differs.
            let (head, _) = canonical_request.rsplit_once('\n').expect("six lines");
            let (want, _) = case.canonical_request.rsplit_once('\n').expect("six lines");
            assert_eq!(head, want, "{}", case.name);
        }
    }
}

#[test]
fn a_sixteen_minute_skew_is_expired_in_both_directions() {
    for case in cases() {
        let signed = case.sign_with(&case.headers_in, case.date());
        let req = received(&signed, &case.method, case.body.as_bytes());
        for now in [
            case.date() + TimeDelta::minutes(16),
            case.date() - TimeDelta::minutes(16),
        ] {
            assert_eq!(
                verify(&req, &case.sk, now),
                Err(SignatureError::Expired {
                    sdk_date: case.sdk_date.clone(),
                    skew_seconds: 960
                }),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn the_secret_key_never_shows_in_debug_or_errors() {
    for case in cases() {
        let creds = case.creds();
        let signed = case.sign_with(&case.headers_in, case.date());
        let req = received(&signed, &case.method, b"changed");
        let stale =
            verify(&req, "wrong key", case.date() + TimeDelta::hours(1)).expect_err("stale");
        let wrong = verify(&req, "wrong key", case.date()).expect_err("wrong key");
        assert!(
            matches!(wrong, SignatureError::Mismatch { .. }),
            "{}",
            case.name
        );
        let shown = format!("{creds:?} {signed:?} {stale:?} {stale} {wrong:?} {wrong}");
        assert!(!shown.contains(&case.sk), "{}: {shown}", case.name);
        if let Some(token) = &case.security_token {
            assert!(!shown.contains(token.as_str()), "{}: {shown}", case.name);
        }
    }
}
