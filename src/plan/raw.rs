//! The serde mirror of a plan file: what the YAML says, with the source location of every
//! value, before any rule is checked.
//!
//! These types accept more than a valid plan (scalars stay text, lists may be empty, both
//! `value` and `value_from` may be present) so that [`super::validate`] can report every
//! problem of a file at once, each at its line and column. Only what serde must refuse is
//! refused here: unknown fields, duplicate keys and values of the wrong shape. No I/O.
//!
//! The same types describe the format as a JSON Schema ([`plan_json_schema`]) for editors.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Most tasks one plan may list (the schema says so too; validation enforces it).
pub const MAX_TASKS: usize = 10_000;

/// A whole plan file, as serde reads its single YAML document.
#[derive(Debug)]
pub enum RawDocument {
    /// No content at all: an empty file, only comments, `---` alone or `~`.
    Empty,
    /// A mapping: the plan's fields.
    Plan(Box<RawPlan>),
    /// Something else at the top level (the kind found, e.g. "a list").
    NotMapping(&'static str),
}

impl<'de> Deserialize<'de> for RawDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DocVisitor;

        impl<'de> Visitor<'de> for DocVisitor {
            type Value = RawDocument;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of plan fields")
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawDocument, E> {
                Ok(RawDocument::Empty)
            }

            fn visit_none<E: de::Error>(self) -> Result<RawDocument, E> {
                Ok(RawDocument::Empty)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDocument, A::Error> {
                RawPlan::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|plan| RawDocument::Plan(Box::new(plan)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawDocument, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawDocument::NotMapping("a list"))
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawDocument, E> {
                Ok(RawDocument::NotMapping("a text"))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawDocument, E> {
                Ok(RawDocument::NotMapping("a boolean"))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawDocument, E> {
                Ok(RawDocument::NotMapping("a number"))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawDocument, E> {
                Ok(RawDocument::NotMapping("a number"))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawDocument, E> {
                Ok(RawDocument::NotMapping("a number"))
            }
        }

        deserializer.deserialize_any(DocVisitor)
    }
}

/// A deploy plan: which CodeArts Deploy tasks to start, when, and with which parameters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "deployd plan")]
pub struct RawPlan {
    /// Unique name of the plan in its folder: 1-64 characters of `[A-Za-z0-9._-]`, not starting
    /// with a dot. Default: the file name without its extension.
    #[serde(default)]
    #[schemars(with = "Option<String>", length(min = 1, max = 64))]
    #[schemars(pattern(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"))]
    pub name: Option<Spanned<String>>,

    /// When to run, as a cron expression: 5 fields, 6 fields with seconds first, or a macro such
    /// as `@daily`. Absent: the plan runs once when it appears, and again when its content
    /// changes.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub schedule: Option<Spanned<String>>,

    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`. Default: `UTC`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Spanned<String>>,

    /// `false`: the plan is loaded and checked but never fired. Default: `true`.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub enabled: Option<Spanned<bool>>,

    /// What a fire does when the previous run of this plan is still going: `skip` (default),
    /// `queue` (run after it, at most one waiting) or `allow` (run alongside).
    #[serde(default)]
    #[schemars(schema_with = "overlap_schema")]
    pub overlap: Option<Spanned<String>>,

    /// Sent as `trigger_source` with every start call: `"0"` or `"1"` (0 and 1 as numbers are
    /// accepted too).
    #[serde(default)]
    #[schemars(schema_with = "trigger_source_schema")]
    pub trigger_source: Option<Spanned<String>>,

    /// This plan's start calls in flight at once, within the daemon's global limit: 1-10000.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 10000))]
    pub concurrency: Option<Spanned<u64>>,

    /// Parameters given to every task; a task's own param with the same key wins. Once merged
    /// into every task, a plan's params may take at most 64 MiB (keys and values as JSON, plus
    /// 96 bytes per param, a `value_from` counted as 8192).
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawParam>>")]
    pub params: Option<Spanned<Vec<Spanned<RawParam>>>>,

    /// The deployment tasks to start, in order: at least one, at most 10,000, no task id twice.
    /// Each is a bare task id or a mapping with `task_id`, `params` and `record_id`.
    #[serde(default)]
    #[schemars(schema_with = "tasks_schema", required)]
    pub tasks: Option<Spanned<Vec<Spanned<RawTask>>>>,

    /// Retry settings for this plan's start calls, overriding the daemon's.
    #[serde(default)]
    #[schemars(with = "Option<RawRetry>")]
    pub retry: Option<Spanned<RawRetry>>,

    /// `true`: after a task starts, poll its deployment record until it succeeds or fails (or
    /// `follow_timeout` passes) and write `final_state` and `duration_secs` into the result.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub follow: Option<Spanned<bool>>,

    /// How long to follow one deployment, e.g. `30m`. Default `1h`, at most `24h`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub follow_timeout: Option<Spanned<String>>,
}

/// One entry of `tasks`.
#[derive(Debug)]
pub enum RawTask {
    /// A bare task id written as a text scalar.
    Id(String),
    /// A bare scalar that YAML reads as a number or boolean (`- 1234...`); its text is taken
    /// from the source by location, so that it is judged as written.
    NonText,
    /// A bare null (`- ` or `- ~`).
    Null,
    /// A task mapping.
    Entry(Box<RawTaskEntry>),
}

impl<'de> Deserialize<'de> for RawTask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TaskVisitor;

        impl<'de> Visitor<'de> for TaskVisitor {
            type Value = RawTask;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task id or a mapping with task_id")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTask, E> {
                Ok(RawTask::Id(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<RawTask, E> {
                Ok(RawTask::Id(v))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawTask, E> {
                Ok(RawTask::NonText)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawTask, E> {
                Ok(RawTask::NonText)
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawTask, E> {
                Ok(RawTask::NonText)
            }

            fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawTask, E> {
                Ok(RawTask::NonText)
            }

            fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawTask, E> {
                Ok(RawTask::NonText)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawTask, E> {
                Ok(RawTask::NonText)
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawTask, E> {
                Ok(RawTask::Null)
            }

            fn visit_none<E: de::Error>(self) -> Result<RawTask, E> {
                Ok(RawTask::Null)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTask, A::Error> {
                RawTaskEntry::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|entry| RawTask::Entry(Box::new(entry)))
            }
        }

        deserializer.deserialize_any(TaskVisitor)
    }
}

/// A task written as a mapping.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTaskEntry {
    /// The deployment task id: 32 letters and digits.
    #[schemars(
        with = "String",
        length(min = 32, max = 32),
        pattern("^[A-Za-z0-9]{32}$")
    )]
    pub task_id: Spanned<String>,

    /// This task's parameters, added to the plan's (this task's key wins).
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawParam>>")]
    pub params: Option<Spanned<Vec<Spanned<RawParam>>>>,

    /// An earlier deployment record (32 letters and digits) to redeploy instead of a new one.
    #[serde(default)]
    #[schemars(with = "Option<String>", length(min = 32, max = 32))]
    #[schemars(pattern("^[A-Za-z0-9]{32}$"))]
    pub record_id: Option<Spanned<String>>,
}

/// A runtime parameter: a key and exactly one of `value` or `value_from`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = exactly_one_value)]
pub struct RawParam {
    /// 1-128 characters of `[A-Za-z0-9._-]`.
    #[schemars(
        with = "String",
        length(min = 1, max = 128),
        pattern("^[A-Za-z0-9._-]{1,128}$")
    )]
    pub key: Spanned<String>,

    /// The value, taken as the text written (`1.10` is "1.10", `no` is "no"): at most 8192
    /// characters, without `{{`, `{%` or `{#`. For secrets prefer `value_from`.
    #[serde(default, deserialize_with = "present")]
    #[schemars(schema_with = "scalar_text_schema")]
    pub value: Option<Spanned<Option<String>>>,

    /// Where to read the value when a run starts: `{env: NAME}` or `{file: PATH}` (a relative
    /// path is relative to the plan file's folder). Each variable and file is read once per
    /// run, so every task of a run gets the same value.
    #[serde(default)]
    #[schemars(with = "Option<RawValueFrom>")]
    pub value_from: Option<Spanned<RawValueFrom>>,

    /// `text` (default), `host_group`, `encrypt` (never logged) or `enum`.
    #[serde(default, rename = "type")]
    #[schemars(schema_with = "param_type_schema")]
    pub ty: Option<Spanned<String>>,
}

/// Where a param's value comes from at run time: exactly one of `env` and `file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = exactly_one_source)]
pub struct RawValueFrom {
    /// Name of an environment variable of the daemon.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub env: Option<Spanned<String>>,

    /// Path of a regular file whose content (one trailing newline removed) is the value: at
    /// most 8192 characters; never under `/proc`, `/sys` or `/dev`, nor a FIFO, socket or
    /// device.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub file: Option<Spanned<String>>,
}

/// Retry settings for this plan; absent fields keep the daemon's settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts per task, the first call included: 1-20.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 20))]
    pub max_attempts: Option<Spanned<u64>>,

    /// First backoff delay, e.g. `500ms`, `1s` (units: ms, s, m, h).
    #[serde(default)]
    #[schemars(schema_with = "duration_schema")]
    pub base: Option<Spanned<String>>,

    /// Largest backoff delay, e.g. `60s`; not below `base`.
    #[serde(default)]
    #[schemars(schema_with = "duration_schema")]
    pub cap: Option<Spanned<String>>,

    /// Time budget per task from its first attempt, e.g. `10m`.
    #[serde(default)]
    #[schemars(schema_with = "duration_schema")]
    pub deadline: Option<Spanned<String>>,
}

/// Deserializes a field that is present, keeping an explicit null as `Some(.. None ..)` so that
/// `value:` (null) can be told apart from no `value` at all.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

fn overlap_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["skip", "queue", "allow"] })
}

fn trigger_source_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "enum": ["0", "1", 0, 1] })
}

fn param_type_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["text", "host_group", "encrypt", "enum"] })
}

fn scalar_text_schema(_: &mut SchemaGenerator) -> Schema {
    // An editor parses `1.10` as a number and `no` as a boolean; deployd takes the text.
    json_schema!({ "type": ["string", "number", "integer", "boolean"] })
}

fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": "^[0-9]+(ms|s|m|h)$" })
}

fn tasks_schema(generator: &mut SchemaGenerator) -> Schema {
    let entry = generator.subschema_for::<RawTaskEntry>();
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_TASKS,
        "items": {
            "oneOf": [
                {
                    "type": "string",
                    "description": "A bare deployment task id: 32 letters and digits.",
                    "pattern": "^[A-Za-z0-9]{32}$"
                },
                entry
            ]
        }
    })
}

fn exactly_one_value(schema: &mut Schema) {
    schema.insert(
        "oneOf".into(),
        serde_json::json!([{ "required": ["value"] }, { "required": ["value_from"] }]),
    );
}

fn exactly_one_source(schema: &mut Schema) {
    schema.insert(
        "oneOf".into(),
        serde_json::json!([{ "required": ["env"] }, { "required": ["file"] }]),
    );
}

/// The JSON Schema of the plan format (what `deployd schema` prints), for editors' YAML
/// language servers. It describes shapes and limits; `deployd check` remains the authority.
pub fn plan_json_schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<RawPlan>();
    let mut value = schema.to_value();
    tidy(&mut value);
    if let Some(root) = value.as_object_mut() {
        // `tasks` has a serde default so that its absence is reported with the other errors,
        // but it is required.
        root.insert("required".into(), serde_json::json!(["tasks"]));
    }
    value
}

/// Drops the `"default": null` that `#[serde(default)]` adds and unwraps doc-comment lines.
fn tidy(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("default").is_some_and(serde_json::Value::is_null) {
                map.remove("default");
            }
            if let Some(serde_json::Value::String(d)) = map.get_mut("description") {
                *d = d.replace('\n', " ");
            }
            map.values_mut().for_each(tidy);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// A scalar's text exactly as written in `source` at `span`, for plain scalars that YAML read
/// as a number or boolean. `None` when the span carries no byte offsets.
pub fn source_text<'a>(source: &'a str, location: &serde_saphyr::Location) -> Option<&'a str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    source.get(start..start.checked_add(len)?)
}

#[cfg(test)]
mod tests;
