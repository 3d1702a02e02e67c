//! The emulator's request parsing, as a hostile client would drive it: the StartDeployTask
//! body, the history and status queries, `Content-Type`, the `Authorization` header and the
//! whole AK/SK signature check over any request, plus a sign-then-verify round trip between
//! the client's signer and the emulator's verifier.
//!
//! Input: the first byte picks the part (mod 5), the rest is its input.
//!
//! Oracles besides "no panic": an accepted start body obeys the API's param rules and reads
//! back the same after the client's own serialisation; an accepted history query is within
//! the API's ranges; a query is only accepted with well-formed `%XX` escapes; a request signed
//! by the client (any query, body, project id, security token, path segment) verifies.
#![no_main]

use chrono::{DateTime, Utc};
use deployd::api::client::encode_segment;
use deployd::api::rules::{self, ParamType};
use deployd::api::wire;
use deployd::auth::signer::{
    AkSk, ReceivedRequest, SignRequest, parse_authorization, sign, verify,
};
use deployd::emulator::validate::{
    HISTORY_SPAN_MAX_DAYS, check_content_type, parse_history_query, parse_start_body,
    parse_state_query, query_pairs,
};
use deployd::secret::Secret;
use libfuzzer_sys::fuzz_target;

const SK: &str = "emulator-secret-key";

fn now() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_780_000_000, 0).expect("valid instant")
}

/// Whether every `%` starts a `%XX` escape with two hex digits.
fn escapes_well_formed(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fn start_body(data: &[u8]) {
    let Ok(body) = parse_start_body(data) else {
        return;
    };
    let mut keys = std::collections::HashSet::new();
    for p in &body.params {
        assert!(rules::check_param_key(&p.key).is_ok(), "{p:?}");
        assert!(rules::check_param_value(&p.value).is_ok(), "{p:?}");
        assert!(keys.insert(p.key.clone()), "duplicate key {:?}", p.key);
    }
    assert!(body.params.len() <= rules::PARAMS_MAX);
    // What the emulator accepted, written by the client's serializer, reads back the same.
    let params: Vec<wire::WireParam<'_>> = body
        .params
        .iter()
        .map(|p| wire::WireParam {
            key: &p.key,
            value: &p.value,
            ty: p
                .param_type
                .as_deref()
                .and_then(ParamType::from_wire)
                .unwrap_or_default(),
        })
        .collect();
    let json = wire::StartBody {
        params,
        record_id: body.record_id.as_deref(),
        trigger_source: body.trigger_source.as_deref(),
    }
    .to_sdk_json();
    let again = parse_start_body(json.as_bytes()).expect("the client's bytes are accepted");
    assert_eq!(again.record_id, body.record_id);
    assert_eq!(again.trigger_source, body.trigger_source);
    let pairs = |b: &deployd::emulator::validate::StartBody| -> Vec<(String, String)> {
        b.params
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect()
    };
    assert_eq!(pairs(&again), pairs(&body));
}

fn queries(text: &str) {
    let pairs = query_pairs(Some(text));
    if pairs.is_ok() {
        assert!(escapes_well_formed(text), "bad escape accepted in {text:?}");
    }
    if let Ok(q) = parse_history_query(Some(text)) {
        assert!(
            (1..=99_999).contains(&q.page) && (1..=100).contains(&q.size),
            "{q:?}"
        );
        assert!(q.start_date <= q.end_date, "{q:?}");
        assert!(
            (q.end_date - q.start_date).num_days() <= HISTORY_SPAN_MAX_DAYS,
            "{q:?}"
        );
    }
    if let Ok(q) = parse_state_query(Some(text))
        && let Some(id) = &q.record_id
    {
        assert!(rules::check_id(id).is_ok(), "{id:?}");
    }
}

fn headers(text: &str) {
    let _ = check_content_type(Some(text));
    if let Ok(parsed) = parse_authorization(text) {
        assert!(!parsed.access.is_empty() && !parsed.signature.is_empty());
        assert!(!parsed.signed_headers.is_empty());
    }
}

/// Any request: `METHOD\nPATH\nQUERY\n(NAME: VALUE\n)*\nBODY`.
fn any_request(data: &[u8]) {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let mut lines = head.split('\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let query = lines.next().unwrap_or_default();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            (k.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let received = ReceivedRequest {
        method,
        path,
        query,
        headers: &headers,
        body,
    };
    let _ = verify(&received, SK, now());
}

/// The client signs, the emulator verifies: `SEGMENT\nPROJECT\nTOKEN\n(KEY=VALUE\n)*\nBODY`.
fn round_trip(data: &[u8]) {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let mut lines = head.split('\n');
    let segment = lines.next().unwrap_or_default();
    // Dot segments are removed by URL normalisation before sending; ids never are dots.
    if segment == "." || segment == ".." {
        return;
    }
    let visible = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
    let project_id = lines.next().filter(|p| !p.is_empty() && visible(p));
    let token = lines.next().filter(|t| !t.is_empty() && visible(t));
    let query: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let creds = AkSk {
        ak: "EMULATORACCESSKEY0001".into(),
        sk: Secret::new(SK),
        project_id: project_id.map(str::to_string),
        security_token: token.map(Secret::new),
    };
    let path = format!("/v2/tasks/{}/start", encode_segment(segment));
    let own = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("User-Agent".to_string(), "deployd/fuzz".to_string()),
    ];
    let signed = sign(
        &creds,
        &SignRequest {
            method: "POST",
            host: "127.0.0.1:8080",
            path: &path,
            query: &query,
            headers: &own,
            body,
        },
        now(),
    );
    let (sent_path, sent_query) = signed
        .request_uri
        .split_once('?')
        .unwrap_or((&signed.request_uri, ""));
    // As hyper hands them to the emulator: lower-case names, the values as sent.
    let received_headers: Vec<(String, String)> = signed
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let received = ReceivedRequest {
        method: "POST",
        path: sent_path,
        query: sent_query,
        headers: &received_headers,
        body,
    };
    if let Err(e) = verify(&received, SK, now()) {
        panic!("a request the client signed is refused: {e:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => start_body(rest),
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                queries(text);
            }
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                headers(text);
            }
        }
        3 => any_request(rest),
        _ => round_trip(rest),
    }
});
