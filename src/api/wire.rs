//! The exact bytes the vendor's Python SDK sends: `json.dumps` with default separators
//! (`", "`, `": "`) and `ensure_ascii=True`, fields in the model's declared order, `None`s
//! omitted. The signature covers these bytes, so they are built here once and sent as they are.

use crate::api::rules::ParamType;

/// One runtime parameter as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireParam<'a> {
    /// Param key.
    pub key: &'a str,
    /// Resolved value (may be a secret: the caller keeps it out of logs).
    pub value: &'a str,
    /// Param type; always sent.
    pub ty: ParamType,
}

/// The `EnvExecutionBody` of `StartDeployTask`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartBody<'a> {
    /// Runtime params; an empty list is omitted.
    pub params: Vec<WireParam<'a>>,
    /// Earlier record to redeploy.
    pub record_id: Option<&'a str>,
    /// `"0"` or `"1"`, always a string on the wire.
    pub trigger_source: Option<&'a str>,
}

impl StartBody<'_> {
    /// Serializes exactly as the SDK does. A body with no fields set is `{}`.
    pub fn to_sdk_json(&self) -> String {
        let mut fields: Vec<String> = Vec::with_capacity(3);
        if !self.params.is_empty() {
            let params: Vec<String> = self
                .params
                .iter()
                .map(|p| {
                    format!(
                        "{{\"key\": {}, \"value\": {}, \"type\": {}}}",
                        json_string(p.key),
                        json_string(p.value),
                        json_string(p.ty.as_str())
                    )
                })
                .collect();
            fields.push(format!("\"params\": [{}]", params.join(", ")));
        }
        if let Some(record_id) = self.record_id {
            fields.push(format!("\"record_id\": {}", json_string(record_id)));
        }
        if let Some(source) = self.trigger_source {
            fields.push(format!("\"trigger_source\": {}", json_string(source)));
        }
        format!("{{{}}}", fields.join(", "))
    }
}

/// A JSON string literal as Python's `json.dumps(..., ensure_ascii=True)` writes it: `"` and `\`
/// escaped, `\n \r \t \b \f` short forms, every other byte outside `' '..='~'` as `\uXXXX`
/// (lowercase hex, UTF-16 surrogate pairs above the BMP).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sdk_example_bytes() {
        let body = StartBody {
            params: vec![
                WireParam {
                    key: "version",
                    value: "1.2.3",
                    ty: ParamType::Text,
                },
                WireParam {
                    key: "note",
                    value: "h\u{e9}llo",
                    ty: ParamType::Text,
                },
            ],
            record_id: None,
            trigger_source: Some("0"),
        };
        assert_eq!(
            body.to_sdk_json(),
            r#"{"params": [{"key": "version", "value": "1.2.3", "type": "text"}, {"key": "note", "value": "h\u00e9llo", "type": "text"}], "trigger_source": "0"}"#
        );
    }

    #[test]
    fn empty_body_is_braces_and_nothing_is_null() {
        assert_eq!(StartBody::default().to_sdk_json(), "{}");
        let body = StartBody {
            record_id: Some("r"),
            ..Default::default()
        };
        assert_eq!(body.to_sdk_json(), r#"{"record_id": "r"}"#);
    }

    #[test]
    fn escapes_like_python() {
        assert_eq!(
            json_string("a\"b\\c\n\t\u{1}\u{7f}"),
            r#""a\"b\\c\n\t\u0001\u007f""#
        );
        assert_eq!(json_string("😀"), r#""\ud83d\ude00""#);
        // Whatever we write must be JSON that decodes back to the same text.
        let s = "x\u{0}y\u{2028}z😀é\"";
        let back: String = serde_json::from_str(&json_string(s)).expect("valid JSON");
        assert_eq!(back, s);
    }
}
