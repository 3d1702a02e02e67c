//! The plan loader: any bytes as a plan file (`parse_plan`).
//!
//! Oracles besides "no panic, no hang": an accepted plan satisfies the plan's own limits, and
//! the start body built from each task (literal params, record id, trigger source) is accepted
//! by the emulator's strict request parser (the API contract, seen from the other side); a
//! refusal names at least one issue at a real line and column.
#![no_main]

use std::path::Path;

use deployd::api::wire::{StartBody, WireParam};
use deployd::emulator::validate::parse_start_body;
use deployd::plan::ParamValue;
use deployd::plan::load::parse_plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_plan(Path::new("/plans/fuzz.yaml"), data) {
        Ok(loaded) => {
            let plan = loaded.plan;
            assert!(!plan.tasks.is_empty(), "a plan without tasks was accepted");
            assert!(
                !plan.name.is_empty()
                    && plan.name.len() <= 64
                    && !plan.name.starts_with('.')
                    && !plan.name.contains('/'),
                "unsafe plan name {:?}",
                plan.name
            );
            for task in &plan.tasks {
                assert_eq!(task.task_id.len(), 32, "task id {:?}", task.task_id);
                let params: Vec<WireParam<'_>> = task
                    .params
                    .iter()
                    .filter_map(|p| match &p.value {
                        ParamValue::Literal(v) => Some(WireParam {
                            key: &p.key,
                            value: v.expose(),
                            ty: p.ty,
                        }),
                        _ => None,
                    })
                    .collect();
                let body = StartBody {
                    params,
                    record_id: task.record_id.as_deref(),
                    trigger_source: plan.trigger_source.as_deref(),
                };
                let json = body.to_sdk_json();
                if let Err(e) = parse_start_body(json.as_bytes()) {
                    panic!("an accepted plan gives a start body the API refuses: {e}");
                }
            }
        }
        Err(issues) => {
            assert!(!issues.0.is_empty(), "an error without any issue");
            for issue in &issues.0 {
                assert!(issue.line >= 1 && issue.column >= 1, "{issue:?}");
                assert!(!issue.message.is_empty(), "{issue:?}");
            }
        }
    }
});
