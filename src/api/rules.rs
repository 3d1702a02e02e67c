//! The field rules of the CodeArts Deploy API contract (section A), shared by the plan validator
//! and the emulator so that both sides enforce exactly the same limits.

use std::fmt;

/// Length of task ids, record ids and project ids.
pub const ID_LEN: usize = 32;
/// Longest param key the API accepts.
pub const PARAM_KEY_MAX: usize = 128;
/// Longest param value the API accepts, in characters.
pub const PARAM_VALUE_MAX: usize = 8192;
/// Most params one start call may carry (an older doc revision's array bound).
pub const PARAMS_MAX: usize = 500;
/// Sequences the API refuses inside a param value (template syntax).
pub const FORBIDDEN_VALUE_SEQUENCES: [&str; 3] = ["{{", "{%", "{#"];

/// Checks a task id, record id or project id: exactly 32 ASCII letters and digits.
pub fn check_id(id: &str) -> Result<(), String> {
    let len = id.chars().count();
    if len != ID_LEN {
        return Err(format!(
            "must be {ID_LEN} letters and digits, got {len} characters"
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_alphanumeric()) {
        return Err(format!("must be letters and digits only, found {c:?}"));
    }
    Ok(())
}

/// Checks a param key: 1..=128 characters from `[A-Za-z0-9._-]`.
pub fn check_param_key(key: &str) -> Result<(), String> {
    let len = key.chars().count();
    if len == 0 {
        return Err("must not be empty".into());
    }
    if len > PARAM_KEY_MAX {
        return Err(format!(
            "is {len} characters long, at most {PARAM_KEY_MAX} allowed"
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may only hold letters, digits, '.', '_' and '-', found {c:?}"
        ));
    }
    Ok(())
}

/// Checks a param value: at most 8192 characters, no `{{`, `{%` or `{#`.
///
/// The message never quotes the value, because it may be a secret.
pub fn check_param_value(value: &str) -> Result<(), String> {
    let len = value.chars().count();
    if len > PARAM_VALUE_MAX {
        return Err(format!(
            "is {len} characters long, at most {PARAM_VALUE_MAX} allowed"
        ));
    }
    if let Some(seq) = FORBIDDEN_VALUE_SEQUENCES
        .iter()
        .find(|s| value.contains(**s))
    {
        return Err(format!(
            "must not contain {seq:?} (template syntax the API refuses)"
        ));
    }
    Ok(())
}

/// Checks `trigger_source` as sent on the wire: `"0"` or `"1"`.
pub fn check_trigger_source(value: &str) -> Result<(), String> {
    match value {
        "0" | "1" => Ok(()),
        other => Err(format!("must be \"0\" or \"1\", got {other:?}")),
    }
}

/// The type of a runtime parameter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Plain text (the default).
    #[default]
    Text,
    /// An environment (host group) id.
    HostGroup,
    /// A secret: its value is never logged nor written to a result file.
    Encrypt,
    /// One of a set of values defined on the task.
    Enum,
}

impl ParamType {
    /// Every type, in the order the docs list them.
    pub const ALL: [ParamType; 4] = [Self::Text, Self::HostGroup, Self::Encrypt, Self::Enum];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::HostGroup => "host_group",
            Self::Encrypt => "encrypt",
            Self::Enum => "enum",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_need_exactly_32_alphanumerics() {
        assert!(check_id(&"a".repeat(32)).is_ok());
        assert!(check_id(&"a".repeat(31)).is_err());
        assert!(check_id(&"a".repeat(33)).is_err());
        assert!(check_id(&format!("{}-", "a".repeat(31))).is_err());
        assert!(check_id(&format!("{}é", "a".repeat(31))).is_err());
    }

    #[test]
    fn key_bounds() {
        assert!(check_param_key(&"k".repeat(128)).is_ok());
        assert!(check_param_key(&"k".repeat(129)).is_err());
        assert!(check_param_key("").is_err());
        assert!(check_param_key("a.b_c-D9").is_ok());
        assert!(check_param_key("a b").is_err());
    }

    #[test]
    fn value_bounds_and_template_sequences() {
        assert!(check_param_value(&"v".repeat(8192)).is_ok());
        assert!(check_param_value(&"v".repeat(8193)).is_err());
        assert!(check_param_value("").is_ok());
        for bad in ["{{x", "a{%b", "end{#"] {
            let err = check_param_value(bad).expect_err("template syntax is refused");
            assert!(!err.contains(bad), "message must not quote the value");
        }
        assert!(check_param_value("{ {").is_ok());
    }

    #[test]
    fn param_types_round_trip() {
        for t in ParamType::ALL {
            assert_eq!(ParamType::from_wire(t.as_str()), Some(t));
        }
        assert_eq!(ParamType::from_wire("TEXT"), None);
    }
}
