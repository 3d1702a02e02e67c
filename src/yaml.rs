//! YAML as users write it (plans, the config file): parser budgets against hostile input,
//! parse errors turned into an [`Issue`] at their line and column with the field path found by
//! walking the parser's events, and the place of a field (`retry.base`) in a file. Pure.

use std::path::Path;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::{self, Event};
use serde_saphyr::{
    DuplicateKeyPolicy, Error as YamlError, MessageFormatter, NonFiniteFloatPolicy,
};

use crate::issue::Issue;

/// What a YAML file is, for its budget and for messages.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// How messages name it: `a plan file`, `the config file`.
    pub noun: &'static str,
    /// Largest file accepted, in bytes.
    pub max_bytes: usize,
    /// The message for a file larger than `max_bytes`.
    pub too_large: fn() -> String,
}

fn capitalized(noun: &str) -> String {
    let mut chars = noun.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The 1-based (line, column) of the key that names `path` (`retry.base`, `keep_results`):
/// the first such key in document order. `None` when the file has no such key.
pub fn key_position(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut found = None;
    walk_nodes(text, |start, segments| {
        if render_path(segments) == path {
            found = Some(start);
            return false;
        }
        true
    });
    found
}

/// Deepest YAML nesting accepted (a valid plan needs 6 levels).
pub const MAX_DEPTH: usize = 16;
/// Most alias references (`*name`) in one YAML file.
pub const MAX_ALIASES: usize = 10_000;
/// Most YAML events that aliases may replay in one YAML file (against alias bombs).
pub const MAX_REPLAYED_EVENTS: usize = 500_000;
/// Most YAML nodes in one YAML file.
pub const MAX_NODES: usize = 1_000_000;

/// 1-based (line, column) just after `prefix`.
pub fn position_after(prefix: &str) -> (usize, usize) {
    let line = prefix.matches('\n').count() + 1;
    let last = prefix.rsplit('\n').next().unwrap_or(prefix);
    (line, last.chars().count() + 1)
}

/// A path segment while walking the YAML.
#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// One open collection while walking the YAML.
enum Frame {
    Seq {
        path: Vec<Segment>,
        next: usize,
    },
    Map {
        path: Vec<Segment>,
        key: Option<String>,
    },
}

/// The field path of the last YAML node starting at or before `line`:`column` (1-based), e.g.
/// `tasks[1].params[0].key`. Best effort: empty when nothing matches.
pub fn path_at(text: &str, line: usize, column: usize) -> String {
    let mut best = String::new();
    walk_nodes(text, |start, path| {
        if start > (line, column) {
            return false;
        }
        best = render_path(path);
        true
    });
    best
}

/// Where the top-level node starts (1:1 when there is none).
pub fn first_node_position(text: &str) -> (usize, usize) {
    let mut found = (1, 1);
    walk_nodes(text, |start, _| {
        found = start;
        false
    });
    found
}

/// Calls `visit(start, path)` for every node (keys included) in document order until it
/// returns false. Stops at the first parse error.
fn walk_nodes(text: &str, mut visit: impl FnMut((usize, usize), &[Segment]) -> bool) {
    let options = granit_parser::options! { flow_nesting_limit: MAX_DEPTH + 1 };
    let parser = granit_parser::Parser::new_from_str_with_options(text, options);
    let mut frames: Vec<Frame> = Vec::new();
    for item in parser.take(4 * MAX_NODES) {
        let Ok((event, span)) = item else {
            return;
        };
        let start = (span.start.line(), span.start.col() + 1);
        let (is_node, opens_map, opens_seq, key_text) = match &event {
            Event::Scalar(value, ..) => (true, false, false, Some(value.to_string())),
            Event::Alias(_) => (true, false, false, None),
            Event::SequenceStart(..) => (true, false, true, None),
            Event::MappingStart(..) => (true, true, false, None),
            Event::SequenceEnd | Event::MappingEnd => {
                frames.pop();
                continue;
            }
            _ => continue,
        };
        if !is_node {
            continue;
        }
        let path: Vec<Segment> = match frames.last_mut() {
            None => Vec::new(),
            Some(Frame::Seq { path, next }) => {
                let mut p = path.clone();
                p.push(Segment::Index(*next));
                *next += 1;
                p
            }
            Some(Frame::Map { path, key }) => match key.take() {
                // This node is a key: it names itself.
                None => {
                    let name = key_text.clone().unwrap_or_else(|| "?".into());
                    let mut p = path.clone();
                    p.push(Segment::Key(name.clone()));
                    *key = Some(name);
                    // A complex key is not followed into.
                    if opens_map || opens_seq {
                        return;
                    }
                    if !visit(start, &p) {
                        return;
                    }
                    continue;
                }
                Some(name) => {
                    let mut p = path.clone();
                    p.push(Segment::Key(name));
                    p
                }
            },
        };
        if !visit(start, &path) {
            return;
        }
        if opens_map {
            frames.push(Frame::Map { path, key: None });
        } else if opens_seq {
            frames.push(Frame::Seq { path, next: 0 });
        }
    }
}

/// Parser options for `kind`: the budgets above, one document, duplicate keys refused.
pub fn options(kind: &Kind) -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(kind.max_bytes + 1),
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_documents: 1,
            max_aliases: MAX_ALIASES,
            max_nodes: MAX_NODES,
            // Reusing one anchor in many tasks is legitimate; the absolute alias count and
            // the replay limit below bound expansion instead of a ratio heuristic.
            enforce_alias_anchor_ratio: false,
        },
        duplicate_keys: DuplicateKeyPolicy::Error,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_EVENTS,
            max_replay_stack_depth: MAX_DEPTH,
        },
        // Bare task ids that read as numbers reach `RawTask` as numbers; their text is then
        // taken from the source. Never let an overflowing number become a canonical string.
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
        with_snippet: false,
    }
}

/// Turns a serde-saphyr error into an issue at its location, with a field path found by
/// walking the YAML up to that location.
pub fn issue(file: &Path, text: &str, err: &YamlError, kind: &Kind) -> Issue {
    let inner = innermost(err);
    let location = err
        .location()
        .or_else(|| inner.location())
        .filter(|l| l.line() > 0);
    let message = message(inner, kind);
    match location {
        Some(at) => {
            let line = usize::try_from(at.line()).unwrap_or(usize::MAX);
            let column = usize::try_from(at.column()).unwrap_or(usize::MAX);
            Issue::new(file, line, column, path_at(text, line, column), message)
        }
        None => Issue::new(file, 1, 1, "", message),
    }
}

fn innermost(mut err: &YamlError) -> &YamlError {
    loop {
        match err {
            YamlError::WithSnippet { error, .. } | YamlError::AliasError { error, .. } => {
                err = error;
            }
            other => return other,
        }
    }
}

/// A message for a YAML-level error, naming the limit when one was hit. Never quotes a
/// scalar's value.
fn message(err: &YamlError, kind: &Kind) -> String {
    match err {
        YamlError::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("duplicate key `{key}`: each key may appear once in a mapping"),
            None => "duplicate key: each key may appear once in a mapping".into(),
        },
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => format!(
            "unknown field `{field}`; expected one of: {}",
            expected.join(", ")
        ),
        YamlError::SerdeMissingField { field, .. } => format!("missing field `{field}`"),
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | YamlError::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {}", kind_only(unexpected)),
        YamlError::NullIntoString { .. } => "is empty (null); a text is needed here".into(),
        YamlError::InvalidScalar { ty, .. } => format!("is not {}", type_name(ty)),
        YamlError::Unexpected { expected, .. } => format!("expected {}", shape_name(expected)),
        YamlError::MultipleDocuments { .. }
        | YamlError::Budget {
            breach: BudgetBreach::Documents { .. },
            ..
        } => {
            format!(
                "{} holds a single YAML document; a second one starts here (remove the `---`)",
                capitalized(kind.noun)
            )
        }
        YamlError::Budget { breach, .. } => budget_message(breach, kind),
        YamlError::AliasReplayLimitExceeded {
            max_total_replayed_events,
            ..
        } => format!(
            "YAML aliases expand to more than {max_total_replayed_events} events, the limit for {} (an alias bomb?)",
            kind.noun
        ),
        YamlError::AliasExpansionLimitExceeded {
            max_expansions_per_anchor,
            ..
        } => format!(
            "an anchor is expanded more than {max_expansions_per_anchor} times, the limit for {}",
            kind.noun
        ),
        YamlError::AliasReplayStackDepthExceeded { max_depth, .. } => {
            format!(
                "YAML aliases nest deeper than {max_depth} levels, the limit for {}",
                kind.noun
            )
        }
        YamlError::InvalidUtf8Input => "is not UTF-8 text".into(),
        other => {
            let text = serde_saphyr::UserMessageFormatter.format_message(other);
            if text.contains("recursion limit exceeded") {
                format!(
                    "YAML nesting is deeper than {MAX_DEPTH} levels, the limit for {}",
                    kind.noun
                )
            } else {
                text.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            }
        }
    }
}

fn budget_message(breach: &BudgetBreach, kind: &Kind) -> String {
    match breach {
        BudgetBreach::Depth { .. } => {
            format!(
                "YAML nesting is deeper than {MAX_DEPTH} levels, the limit for {}",
                kind.noun
            )
        }
        BudgetBreach::Aliases { .. } => {
            format!(
                "more than {MAX_ALIASES} YAML aliases, the limit for {}",
                kind.noun
            )
        }
        BudgetBreach::Nodes { .. } => {
            format!(
                "more than {MAX_NODES} YAML nodes, the limit for {}",
                kind.noun
            )
        }
        BudgetBreach::InputBytes { .. } => (kind.too_large)(),
        other => format!(
            "the YAML is too large or too complex for {} ({other:?})",
            kind.noun
        ),
    }
}

/// `string "abc"` -> `a string`: the kind of a value without the value itself.
fn kind_only(unexpected: &str) -> String {
    let kind = unexpected
        .split([' ', '`', '"'])
        .next()
        .unwrap_or(unexpected);
    match kind {
        "string" => "a text".into(),
        "integer" | "floating" => "a number".into(),
        "boolean" => "a boolean".into(),
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit" | "null" => "nothing (null)".into(),
        other => other.to_string(),
    }
}

fn type_name(ty: &str) -> &str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number of 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" | "boolean" => "a boolean (true or false)",
        other => other,
    }
}

fn shape_name(expected: &str) -> &str {
    match expected {
        "sequence start" => "a list",
        "mapping start" => "a mapping",
        "string scalar" => "a text (a scalar)",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "rate: 0\nretry:\n  base: soon\n  cap: 1s\ntimeouts: {connect: 1ms, request: 2s}\nendpoint: x\n";

    #[test]
    fn finds_keys_in_block_and_flow_style() {
        assert_eq!(key_position(TEXT, "rate"), Some((1, 1)));
        assert_eq!(key_position(TEXT, "retry.base"), Some((3, 3)));
        assert_eq!(key_position(TEXT, "retry.cap"), Some((4, 3)));
        assert_eq!(key_position(TEXT, "timeouts.connect"), Some((5, 12)));
        assert_eq!(key_position(TEXT, "timeouts.request"), Some((5, 26)));
        assert_eq!(key_position(TEXT, "retry.deadline"), None);
        assert_eq!(key_position(TEXT, "burst"), None);
        // A key in a value's text is not a key.
        assert_eq!(key_position("endpoint: 'rate: 1'\n", "rate"), None);
    }
}
