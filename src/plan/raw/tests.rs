//! Tests of the JSON Schema: it describes every field and accepts every valid sample.
//!
//! No JSON Schema crate is a dependency, so a small validator for the keywords the schema
//! uses lives here; samples are read the way an editor's YAML language server reads them
//! (`1.10` is a number), through serde-saphyr into `serde_json::Value`.

use std::path::Path;

use serde_json::{Map, Value};

use super::plan_json_schema;

/// Keywords `check` understands; the schema must use no other validation keyword.
const KNOWN: &[&str] = &[
    "$schema",
    "$defs",
    "$ref",
    "title",
    "description",
    "format",
    "pattern",
    "type",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "oneOf",
    "anyOf",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
];

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local ref");
            resolve(root, &root["$defs"][name])
        }
        None => schema,
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("unknown type {other}"),
    }
}

/// Whether `v` is valid against `schema` (patterns and formats are not checked).
fn check(root: &Value, schema: &Value, v: &Value) -> bool {
    let s = resolve(root, schema);
    let Some(obj) = s.as_object() else {
        return s.as_bool().unwrap_or(false);
    };
    for key in obj.keys() {
        assert!(KNOWN.contains(&key.as_str()), "unhandled keyword {key}");
    }
    let num = |k: &str| obj.get(k).and_then(Value::as_f64);
    let below = |k: &str, n: f64| num(k).is_some_and(|m| n < m);
    let above = |k: &str, n: f64| num(k).is_some_and(|m| n > m);
    let type_ok = match obj.get("type") {
        None => true,
        Some(Value::String(t)) => type_matches(t, v),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .any(|t| type_matches(t, v)),
        Some(_) => false,
    };
    let enum_ok = match obj.get("enum") {
        Some(Value::Array(options)) => options.contains(v),
        _ => true,
    };
    let one_of_ok = match obj.get("oneOf") {
        Some(Value::Array(alts)) => alts.iter().filter(|a| check(root, a, v)).count() == 1,
        _ => true,
    };
    let any_of_ok = match obj.get("anyOf") {
        Some(Value::Array(alts)) => alts.iter().any(|a| check(root, a, v)),
        _ => true,
    };
    let string_ok = v.as_str().is_none_or(|s| {
        let n = s.chars().count() as f64;
        !below("minLength", n) && !above("maxLength", n)
    });
    let number_ok = v
        .as_f64()
        .is_none_or(|n| !below("minimum", n) && !above("maximum", n));
    let array_ok = v.as_array().is_none_or(|items| {
        let n = items.len() as f64;
        !below("minItems", n)
            && !above("maxItems", n)
            && obj
                .get("items")
                .is_none_or(|item| items.iter().all(|i| check(root, item, i)))
    });
    let object_ok = v.as_object().is_none_or(|map| {
        let empty = Map::new();
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let closed = obj.get("additionalProperties") == Some(&Value::Bool(false));
        let required_ok = match obj.get("required") {
            Some(Value::Array(req)) => req
                .iter()
                .filter_map(Value::as_str)
                .all(|k| map.contains_key(k)),
            _ => true,
        };
        required_ok
            && map.iter().all(|(k, val)| match props.get(k) {
                Some(p) => check(root, p, val),
                None => !closed,
            })
    });
    type_ok && enum_ok && one_of_ok && any_of_ok && string_ok && number_ok && array_ok && object_ok
}

fn yaml_value(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("YAML")
}

fn valid(text: &str) -> bool {
    let schema = plan_json_schema();
    check(&schema, &schema, &yaml_value(text))
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plans")
        .join(name);
    std::fs::read_to_string(path).expect("fixture")
}

#[test]
fn schema_has_a_title_and_describes_every_field() {
    let schema = plan_json_schema();
    assert_eq!(schema["title"], "deployd plan");
    assert_eq!(schema["required"], serde_json::json!(["tasks"]));
    let mut objects = vec![&schema];
    objects.extend(schema["$defs"].as_object().expect("defs").values());
    let mut fields = 0;
    for object in objects {
        for (name, prop) in object["properties"].as_object().expect("properties") {
            let d = prop["description"].as_str().unwrap_or_default();
            assert!(d.len() > 10 && !d.contains('\n'), "{name}: {d:?}");
            assert!(prop.get("default").is_none(), "{name}");
            fields += 1;
        }
    }
    // 12 plan fields, 3 task fields, 4 param fields, 2 value_from fields, 4 retry fields.
    assert_eq!(fields, 25);
}

#[test]
fn a_task_is_one_of_a_bare_id_or_a_mapping() {
    let schema = plan_json_schema();
    let alts = schema["properties"]["tasks"]["items"]["oneOf"]
        .as_array()
        .expect("oneOf");
    assert_eq!(alts.len(), 2);
    assert_eq!(alts[0]["type"], "string");
    assert_eq!(alts[1]["$ref"], "#/$defs/RawTaskEntry");
}

#[test]
fn the_schema_accepts_every_valid_sample() {
    for name in ["valid-full.yaml", "valid-minimal.yaml", "valid-scalars.yml"] {
        assert!(valid(&fixture(name)), "{name}");
    }
    // The sample plans the README and the quick start use.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut samples = 0;
    for dir in ["plans", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("folder") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name() != Some("config.yaml".as_ref())
            {
                let text = std::fs::read_to_string(&path).expect("read");
                assert!(valid(&text), "{}", path.display());
                samples += 1;
            }
        }
    }
    assert!(samples >= 2, "the sample plans were found");
}

#[test]
fn the_committed_schema_file_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed: Value = serde_json::from_slice(
        &std::fs::read(root.join("deployd.schema.json")).expect("deployd.schema.json"),
    )
    .expect("JSON");
    assert_eq!(
        committed,
        plan_json_schema(),
        "regenerate with: cargo run -- schema > deployd.schema.json"
    );
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let id = "d2dc947ec2424d8789bb3984bb3adf45";
    let bad = [
        "name: x".to_string(),
        "tasks: []".to_string(),
        format!("tasks: [{id}]\nbogus: 1"),
        format!("tasks: [{id}]\noverlap: sometimes"),
        format!("tasks: [{id}]\ntrigger_source: 2"),
        format!("tasks: [{id}]\nconcurrency: 0"),
        format!("tasks: [{id}]\nretry: {{max_attempts: 21}}"),
        format!("tasks:\n  - task_id: {id}\n    params: [{{key: k}}]"),
        format!(
            "tasks:\n  - task_id: {id}\n    params: [{{key: k, value: v, value_from: {{env: X}}}}]"
        ),
        format!(
            "tasks:\n  - task_id: {id}\n    params: [{{key: k, value_from: {{env: X, file: y}}}}]"
        ),
        format!("tasks:\n  - task_id: {id}\n    params: [{{key: k, value: v, type: secret}}]"),
        format!("tasks:\n  - task_id: {id}\n    oops: 1"),
    ];
    for text in bad {
        assert!(!valid(&text), "{text}");
    }
    assert!(valid(&format!("tasks: [{id}]\ntrigger_source: 1")));
}
