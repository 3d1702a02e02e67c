//! Error answers of the emulator, rendered in the three body forms the real services use: the
//! flat API Gateway form, CodeArts Deploy's double form and Keystone's IAM form (API doc D1, E1).
//!
//! Owns the error codes the emulator sends. It knows nothing about routing or state.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::http::response;

/// APIG: no API matches the method and path.
pub const APIGW_NOT_FOUND: &str = "APIGW.0101";
/// APIG: bad request, body too large (413), URI or headers too large.
pub const APIGW_BAD_REQUEST: &str = "APIGW.0201";
/// APIG: IAM authentication failed (missing, unknown or undecryptable token).
pub const APIGW_AUTH_FAILED: &str = "APIGW.0301";
/// APIG: the AK/SK signature's `X-Sdk-Date` is more than 15 minutes from the gateway's clock.
pub const APIGW_SIGNATURE_EXPIRED: &str = "APIGW.0303";
/// APIG: the token expired and must be refreshed.
pub const APIGW_TOKEN_EXPIRED: &str = "APIGW.0307";
/// APIG: throttled (HTTP 429).
pub const APIGW_THROTTLED: &str = "APIGW.0308";
/// APIG: backend unavailable (503) or timed out (504). The exact APIGW number is unconfirmed
/// (API doc D4), so the emulator uses the APIC analogue.
pub const APIG_BACKEND: &str = "APIG.0202";
/// CodeArts Deploy: a request field is invalid. The real code for this case is not documented;
/// this is the emulator's choice (`Deploy.00011001` is taken: "name already used").
pub const DEPLOY_INVALID: &str = "Deploy.00011002";
/// CodeArts Deploy: the application (deployment task) does not exist.
pub const DEPLOY_TASK_NOT_FOUND: &str = "Deploy.00011020";
/// CodeArts Deploy: no such execution record.
pub const DEPLOY_NO_RECORD: &str = "Deploy.00011303";
/// CodeArts Deploy: the project does not exist (third-party evidence only).
pub const DEPLOY_PROJECT_NOT_FOUND: &str = "Deploy.00016902";
/// CodeArts Deploy: internal error. The emulator's choice, used for injected 500s.
pub const DEPLOY_INTERNAL: &str = "Deploy.00010500";
/// The nested code CodeArts Deploy's error page shows under `error.code`.
pub const DEPLOY_NESTED_CODE: &str = "DEV.CH.10001";

/// Which body form an error answer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorForm {
    /// `{"error_code","error_msg","request_id"}`: API Gateway errors.
    Apig,
    /// `{"error_code","error_msg","status":"error","error":{"code","message"}}`: CodeArts Deploy.
    Deploy,
    /// `{"error":{"code":<http status>,"message","title"}}`: IAM (Keystone).
    Iam,
}

/// An error answer: status, body form, code, message and a few header quirks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body form.
    pub form: ErrorForm,
    /// `error_code` (ignored by the IAM form, which carries the HTTP status instead).
    pub code: &'static str,
    /// Human-readable message. Never holds a secret or a param value.
    pub message: String,
    /// Serve the JSON body as `content-type: text/html`, as the real service sometimes does.
    pub html: bool,
    /// `Retry-After` seconds, if any.
    pub retry_after: Option<u32>,
}

impl ErrorAnswer {
    fn new(status: StatusCode, form: ErrorForm, code: &'static str, message: String) -> Self {
        Self {
            status,
            form,
            code,
            message,
            html: false,
            retry_after: None,
        }
    }

    /// 404 APIGW.0101: no route.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorForm::Apig,
            APIGW_NOT_FOUND,
            format!(
                "The API does not exist or has not been published in the environment: {method} {path}"
            ),
        )
    }

    /// 413 APIGW.0201: the body exceeds the gateway's limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorForm::Apig,
            APIGW_BAD_REQUEST,
            format!("Request entity too large: the body limit is {limit} bytes"),
        )
    }

    /// 400 APIGW.0201: the request could not be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorForm::Apig,
            APIGW_BAD_REQUEST,
            message.into(),
        )
    }

    /// 401 APIGW.0301: authentication failed.
    pub fn unauthorized(reason: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorForm::Apig,
            APIGW_AUTH_FAILED,
            format!("Incorrect IAM authentication information: {reason}"),
        )
    }

    /// 401 APIGW.0303: the signature's date is too far from the server clock.
    pub fn signature_expired(reason: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorForm::Apig,
            APIGW_SIGNATURE_EXPIRED,
            format!("Incorrect app authentication information: {reason}"),
        )
    }

    /// 401 APIGW.0307: the token expired.
    pub fn token_expired() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorForm::Apig,
            APIGW_TOKEN_EXPIRED,
            "The token must be updated.".into(),
        )
    }

    /// 429 APIGW.0308 with `Retry-After: 1`.
    pub fn throttled(limit: f64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorForm::Apig,
            APIGW_THROTTLED,
            format!(
                "The throttling threshold has been reached: policy user over ratelimit, limit:{limit}, time:1 second"
            ),
        );
        err.retry_after = Some(1);
        err
    }

    /// 429 APIGW.0308 with `Retry-After: {secs}` (a scripted throttle).
    pub fn throttled_for(secs: u32) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorForm::Apig,
            APIGW_THROTTLED,
            format!(
                "The throttling threshold has been reached: policy user over ratelimit, time:{secs} second"
            ),
        );
        err.retry_after = Some(secs);
        err
    }

    /// An injected 500 (service form) or 503 (gateway form).
    pub fn injected(status: StatusCode) -> Self {
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Self::new(
                status,
                ErrorForm::Apig,
                APIG_BACKEND,
                "Backend unavailable (injected by the emulator)".into(),
            )
        } else {
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorForm::Deploy,
                DEPLOY_INTERNAL,
                "Internal server error (injected by the emulator)".into(),
            )
        }
    }

    /// 504: a hung request gave up, or the emulator is shutting down while it waits.
    pub fn gateway_timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorForm::Apig,
            APIG_BACKEND,
            "Backend timeout".into(),
        )
    }

    /// 400 with the service's validation code.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorForm::Deploy,
            DEPLOY_INVALID,
            message.into(),
        )
    }

    /// 404 Deploy.00011020, served as `text/html` like the real service.
    pub fn unknown_task(task_id: &str) -> Self {
        let mut err = Self::new(
            StatusCode::NOT_FOUND,
            ErrorForm::Deploy,
            DEPLOY_TASK_NOT_FOUND,
            format!("The application does not exist or has been deleted: {task_id}"),
        );
        err.html = true;
        err
    }

    /// 404 Deploy.00016902: the project id in the path is not the emulator's.
    pub fn unknown_project(project_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorForm::Deploy,
            DEPLOY_PROJECT_NOT_FOUND,
            format!("The project does not exist: {project_id}"),
        )
    }

    /// 400 Deploy.00011303: no such execution record (served as `text/html`, as captured).
    pub fn no_record(message: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorForm::Deploy,
            DEPLOY_NO_RECORD,
            message.into(),
        );
        err.html = true;
        err
    }

    /// An IAM (Keystone-form) error.
    pub fn iam(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorForm::Iam, "", message.into())
    }

    /// The JSON body of this error.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        match self.form {
            ErrorForm::Apig => json!({
                "error_code": self.code,
                "error_msg": self.message,
                "request_id": request_id,
            }),
            ErrorForm::Deploy => json!({
                "error_code": self.code,
                "error_msg": self.message,
                "status": "error",
                "error": {"code": DEPLOY_NESTED_CODE, "message": self.message},
            }),
            ErrorForm::Iam => json!({
                "error": {
                    "code": self.status.as_u16(),
                    "message": self.message,
                    "title": self.status.canonical_reason().unwrap_or("Error"),
                },
            }),
        }
    }

    /// The full HTTP answer.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let content_type = if self.html {
            "text/html;charset=UTF-8"
        } else {
            "application/json;charset=UTF-8"
        };
        let mut headers = vec![("content-type", content_type.to_owned())];
        if let Some(secs) = self.retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        let body = self.body(request_id).to_string();
        response(self.status, request_id, &headers, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_form_carries_both_shapes() {
        let body = ErrorAnswer::invalid("params[0].key: bad").body("rid");
        assert_eq!(body["error_code"], DEPLOY_INVALID);
        assert_eq!(body["status"], "error");
        assert_eq!(body["error"]["code"], DEPLOY_NESTED_CODE);
        assert_eq!(body["error"]["message"], "params[0].key: bad");
        assert!(body.get("request_id").is_none());
    }

    #[test]
    fn apig_form_repeats_the_request_id() {
        let body = ErrorAnswer::throttled(5.0).body("abc");
        assert_eq!(body["error_code"], APIGW_THROTTLED);
        assert_eq!(body["request_id"], "abc");
    }

    #[test]
    fn iam_form_uses_the_status_number() {
        let body = ErrorAnswer::iam(StatusCode::UNAUTHORIZED, "nope").body("x");
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["title"], "Unauthorized");
    }

    #[test]
    fn headers_follow_the_quirks() {
        let resp = ErrorAnswer::unknown_task("t").into_response("rid");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let ct = resp.headers()["content-type"].to_str().unwrap_or_default();
        assert!(ct.starts_with("text/html"), "{ct}");
        let resp = ErrorAnswer::throttled(1.0).into_response("rid");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["x-request-id"], "rid");
    }
}
