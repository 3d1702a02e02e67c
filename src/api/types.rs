//! Response types of the CodeArts Deploy API and the outcome of one call, classified the way
//! the executor needs: started, retryable, final, or unknown outcome.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The 200 body of `StartDeployTask`. Unknown fields are ignored, missing ones default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StartResponse {
    /// The deployment record id.
    pub id: String,
    /// The task id echoed back.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Job name, `job_<task>_<millis>`.
    #[serde(default)]
    pub job_name: Option<String>,
    /// AOM component bindings (every field a string); kept as JSON.
    #[serde(default)]
    pub app_component_list: Vec<serde_json::Value>,
}

/// What is known about one HTTP exchange, success or not. Goes into result files as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallInfo {
    /// HTTP status, when a response arrived.
    pub http_status: Option<u16>,
    /// `X-Request-Id` response header (or `request_id` of an APIG error body).
    pub request_id: Option<String>,
    /// Error code from the body (`error_code`, `errorCode`, `code`, or nested `error.code`),
    /// or the HTTP status when the body had none, or a transport error class.
    pub error_code: Option<String>,
    /// Error message from the body, or the transport error.
    pub error_msg: Option<String>,
    /// `Retry-After`, as sent (not yet clamped).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// The outcome of one `StartDeployTask` call.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// 200 with a record id: the deployment started.
    Started {
        /// The parsed body.
        response: StartResponse,
        /// Status and request id.
        info: CallInfo,
    },
    /// Certainly not processed (429, 502, 503, or a failure before the request was sent):
    /// safe to send again after a backoff.
    Retryable(CallInfo),
    /// Refused for good (400, 401, 403, 404, other 4xx): sending again cannot help.
    Final(CallInfo),
    /// Sent, but whether a deployment started is unknown (timeout or connection lost after
    /// sending, 500, 504, or a 2xx without a readable record id). Never re-sent blindly.
    Unknown(CallInfo),
}

/// What a start call's outcome means, without its details: the one classification the
/// journal, the metrics and the executor's decision share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeClass {
    /// A record id came back.
    Started,
    /// Certainly not processed: may be sent again.
    Retryable,
    /// Refused: sending again cannot help.
    Final,
    /// Sent, answer lost or unreadable: may have created a record.
    Unknown,
}

impl OutcomeClass {
    /// The class as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Retryable => "retryable",
            Self::Final => "final",
            Self::Unknown => "unknown",
        }
    }
}

impl StartOutcome {
    /// The outcome's class.
    pub fn class(&self) -> OutcomeClass {
        match self {
            Self::Started { .. } => OutcomeClass::Started,
            Self::Retryable(_) => OutcomeClass::Retryable,
            Self::Final(_) => OutcomeClass::Final,
            Self::Unknown(_) => OutcomeClass::Unknown,
        }
    }

    /// The exchange details, whatever the outcome.
    pub fn info(&self) -> &CallInfo {
        match self {
            Self::Started { info, .. }
            | Self::Retryable(info)
            | Self::Final(info)
            | Self::Unknown(info) => info,
        }
    }
}

/// One record of `ListDeployTaskHistoryByDate`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HistoryRecord {
    /// The record id (equal to the `id` StartDeployTask returned).
    #[serde(default)]
    pub execution_id: String,
    /// Record state (`running`, `succeeded`, ...).
    #[serde(default)]
    pub state: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss` in the service's zone (undocumented: learned, see
    /// [`crate::api::service_clock`]).
    #[serde(default)]
    pub start_time: Option<String>,
    /// User who started it.
    #[serde(default)]
    pub operator: Option<String>,
}

/// One param of a record (`ShowExecutionParams` answers an array of them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecordParam {
    /// The key.
    #[serde(default)]
    pub name: String,
    /// The type, when given.
    #[serde(rename = "type", default)]
    pub ty: Option<String>,
    /// The value (`encrypt` values are not shown by the service).
    #[serde(default)]
    pub value: Option<String>,
}

/// One page of history.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HistoryPage {
    /// Records on this page.
    #[serde(default)]
    pub result: Vec<HistoryRecord>,
    /// Records in the whole window.
    #[serde(default)]
    pub total_num: u64,
}

/// The `result` of `ShowDeployStatus`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RecordStatus {
    /// `running`, `succeeded`, `failed` (anything else counts as running).
    #[serde(default)]
    pub status: String,
    /// `yyyy-MM-dd HH:mm:ss`.
    #[serde(default)]
    pub start_time: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss`.
    #[serde(default)]
    pub end_time: Option<String>,
}

/// The deployment states a record can end in, matched case-insensitively (API doc C1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    /// Still going (or a state we do not know).
    Running,
    /// Finished well.
    Succeeded,
    /// Finished badly.
    Failed,
    /// Stopped by someone.
    Cancelled,
}

impl DeployState {
    /// Maps a service state string; unknown values count as running.
    pub fn from_service(state: &str) -> Self {
        match state.trim().to_ascii_lowercase().as_str() {
            "succeeded" | "success" => Self::Succeeded,
            "failed" | "error" => Self::Failed,
            "canceled" | "cancelled" | "stopped" | "aborted" => Self::Cancelled,
            _ => Self::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_case_insensitively_and_unknown_is_running() {
        assert_eq!(
            DeployState::from_service("SUCCEEDED"),
            DeployState::Succeeded
        );
        assert_eq!(DeployState::from_service("success"), DeployState::Succeeded);
        assert_eq!(DeployState::from_service("Error"), DeployState::Failed);
        assert_eq!(
            DeployState::from_service("canceled"),
            DeployState::Cancelled
        );
        assert_eq!(DeployState::from_service("waiting"), DeployState::Running);
        assert_eq!(
            DeployState::from_service("something-new"),
            DeployState::Running
        );
    }

    #[test]
    fn start_response_ignores_unknown_fields() {
        let r: StartResponse =
            serde_json::from_str(r#"{"id":"abc","job_name":"j","extra":1}"#).expect("parses");
        assert_eq!(r.id, "abc");
        assert_eq!(r.task_id, None);
        assert!(r.app_component_list.is_empty());
    }
}
