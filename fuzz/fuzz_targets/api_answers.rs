//! The client's reading of API answers, the pure part: any bytes as an answer body (error-body
//! parsing, request id, the JSON decoding of StartResponse / HistoryPage / RecordStatus /
//! RecordParam as the client does it), and any text as a `Retry-After` or `Date` header,
//! followed through to what the executor and the history lookup do with the values (retry
//! delay, skew, the learned zone, the history window). A hostile or broken gateway controls
//! all of it.
//!
//! Oracles besides "no panic": a kept error message is at most 512 characters plus the marker,
//! and a retry delay never exceeds the policy's cap.
#![no_main]

use chrono::{DateTime, TimeDelta, Utc};
use deployd::api::errors::{body_request_id, classify_status, parse_error_body, parse_retry_after};
use deployd::api::rules::ParamType;
use deployd::api::service_clock::{ServiceClock, date_window, may_follow, parse_http_date};
use deployd::api::types::{DeployState, HistoryPage, RecordParam, RecordStatus, StartResponse};
use deployd::executor::reconcile::{params_match, parse_service_time};
use deployd::executor::retry::RetryPolicy;
use deployd::results::ReportParam;
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
struct Envelope {
    result: RecordStatus,
}

fuzz_target!(|data: &[u8]| {
    // A fixed "now" keeps runs reproducible.
    let now = DateTime::<Utc>::from_timestamp(1_780_000_000, 0).expect("valid instant");

    // Error bodies, whatever the status said.
    let (code, msg) = parse_error_body(data);
    if let Some(m) = &msg {
        assert!(
            m.chars().count() <= 512 + " (truncated)".len() + 1,
            "message not cut"
        );
    }
    let _ = (code, body_request_id(data));
    if data.len() >= 2 {
        let _ = classify_status(u16::from_le_bytes([data[0], data[1]]));
    }

    // 2xx bodies, decoded exactly as the client decodes them.
    if let Ok(r) = serde_json::from_slice::<StartResponse>(data) {
        let _ = r.id.is_empty();
    }
    if let Ok(page) = serde_json::from_slice::<HistoryPage>(data) {
        let clock = ServiceClock::new();
        clock.witness("task", "rec", now, now + TimeDelta::seconds(1));
        for record in &page.result {
            let _ = record.state.as_deref().map(DeployState::from_service);
            if let Some(start) = record.start_time.as_deref().and_then(parse_service_time) {
                let _ = clock.learn_from(&record.execution_id, start);
                let _ = may_follow(start, now, now, clock.skew(), clock.zone());
            }
        }
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        let _ = DeployState::from_service(&env.result.status);
        let _ = env
            .result
            .start_time
            .as_deref()
            .and_then(parse_service_time);
        let _ = env.result.end_time.as_deref().and_then(parse_service_time);
    }
    if let Ok(params) = serde_json::from_slice::<Vec<RecordParam>>(data) {
        let sent = [ReportParam {
            key: "version".into(),
            ty: ParamType::Text,
            value: Some("1.2.3".into()),
        }];
        let _ = params_match(&sent, &params);
    }

    // Header values: HeaderValue::to_str() gives visible ASCII (and spaces/tabs) only, but a
    // broken gateway's bytes are tried as any UTF-8 text too.
    if let Ok(text) = std::str::from_utf8(data) {
        let policy = RetryPolicy::default();
        if let Some(hint) = parse_retry_after(text, now) {
            for attempt in [1, 5, u32::MAX] {
                let d = policy.delay(attempt, 0.5, Some(hint));
                assert!(d <= policy.cap(), "delay {d:?} over the cap");
            }
        }
        if let Some(date) = parse_http_date(text) {
            let _ = date.timestamp();
        }
        let clock = ServiceClock::new();
        clock.observe(now, now + TimeDelta::milliseconds(250), Some(text));
        clock.observe(now, now, Some(text));
        let skew = clock.skew();
        let _ = skew.mid();
        let _ = date_window(now, now, skew, clock.zone());
        clock.witness("task", "rec", now, now);
        let _ = clock.recent_witness();
    }
});
