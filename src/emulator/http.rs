//! The emulator's HTTP answers: one builder that stamps every response with its request id.
//! A leaf: the error renderer and the request pipeline both build their answers here.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

/// The body type of every emulator answer.
pub type Body = Full<Bytes>;

/// Builds a response with `X-Request-Id` and the given headers.
pub fn response(
    status: StatusCode,
    request_id: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let map = resp.headers_mut();
    let all =
        std::iter::once(("x-request-id", request_id.to_owned())).chain(headers.iter().cloned());
    for (name, value) in all {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            map.insert(name, value);
        }
    }
    resp
}
