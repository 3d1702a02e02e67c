//! Hostile input for the plan loader (`parse_plan`): arbitrary bytes, YAML-ish text, mutated
//! valid plans, alias bombs and deep nesting. The loader must never panic, must answer within a
//! bounded time, and whatever it accepts must satisfy the plan's own limits.
//!
//! Cases per property: `PROPTEST_CASES` (default 256).

use std::path::Path;
use std::time::{Duration, Instant};

use deployd::issue::Issues;
use deployd::plan::Plan;
use deployd::plan::load::{MAX_PLAN_BYTES, parse_plan};
use proptest::prelude::*;

/// Valid plans the mutations start from.
const CORPUS: [&str; 5] = [
    include_str!("fixtures/plans/valid-full.yaml"),
    include_str!("fixtures/plans/valid-minimal.yaml"),
    include_str!("fixtures/plans/valid-scalars.yml"),
    include_str!("../plans/hello.yaml"),
    include_str!("../plans/nightly-web.yaml"),
];

/// YAML syntax worth inserting: anchors, aliases, flow collections, tags, block markers.
const TOKENS: [&str; 24] = [
    "&a ",
    "*a",
    "[",
    "]",
    "{",
    "}",
    "- ",
    ": ",
    ":",
    "? ",
    "!!str ",
    "!!binary ",
    "!tag ",
    "|",
    ">-",
    "'",
    "\"",
    "#",
    "\n",
    "\t",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "<<: *a\n",
];

/// One parse may take at most this long (the slowest legitimate input is a 1 MiB plan).
const BUDGET: Duration = Duration::from_secs(3);

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Parses with a time check, and checks what an accepted plan must satisfy.
fn parse_checked(bytes: &[u8]) -> Result<Result<Plan, Issues>, TestCaseError> {
    let path = Path::new("/plans/fuzz.yaml");
    let t = Instant::now();
    let outcome = parse_plan(path, bytes);
    let took = t.elapsed();
    prop_assert!(
        took < BUDGET,
        "parse took {took:?} for {} bytes",
        bytes.len()
    );
    match outcome {
        Ok(loaded) => {
            let plan = loaded.plan;
            prop_assert!(!plan.tasks.is_empty(), "a plan without tasks was accepted");
            prop_assert!(plan.tasks.len() <= 10_000);
            prop_assert!(
                !plan.name.is_empty()
                    && !plan.name.starts_with('.')
                    && !plan.name.contains('/')
                    && plan.name.len() <= 64,
                "unsafe plan name {:?}",
                plan.name
            );
            for task in &plan.tasks {
                prop_assert_eq!(task.task_id.len(), 32);
                prop_assert!(task.task_id.chars().all(|c| c.is_ascii_alphanumeric()));
            }
            Ok(Ok(plan))
        }
        Err(issues) => {
            prop_assert!(!issues.0.is_empty(), "an error without any issue");
            for issue in &issues.0 {
                prop_assert!(issue.line >= 1 && issue.column >= 1);
                prop_assert!(!issue.message.is_empty());
            }
            Ok(Err(issues))
        }
    }
}

/// One edit of a plan's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, byte: u8 },
    Truncate { at: usize },
    DuplicateLine { line: usize, times: usize },
    DeleteLine { line: usize },
    SwapLines { a: usize, b: usize },
    Insert { at: usize, token: usize },
    Indent { line: usize, spaces: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>();
    prop_oneof![
        (at.clone(), 0u8..8).prop_map(|(i, bit)| Mutation::FlipBit {
            at: i.index(1 << 20),
            bit
        }),
        (at.clone(), any::<u8>()).prop_map(|(i, byte)| Mutation::SetByte {
            at: i.index(1 << 20),
            byte
        }),
        at.clone().prop_map(|i| Mutation::Truncate {
            at: i.index(1 << 20)
        }),
        (at.clone(), 1usize..50).prop_map(|(i, times)| Mutation::DuplicateLine {
            line: i.index(1 << 20),
            times
        }),
        at.clone().prop_map(|i| Mutation::DeleteLine {
            line: i.index(1 << 20)
        }),
        (at.clone(), at.clone()).prop_map(|(a, b)| Mutation::SwapLines {
            a: a.index(1 << 20),
            b: b.index(1 << 20)
        }),
        (at.clone(), 0..TOKENS.len()).prop_map(|(i, token)| Mutation::Insert {
            at: i.index(1 << 20),
            token
        }),
        (at, 0usize..9).prop_map(|(i, spaces)| Mutation::Indent {
            line: i.index(1 << 20),
            spaces
        }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match *m {
        Mutation::FlipBit { at, bit } if len > 0 => bytes[at % len] ^= 1 << bit,
        Mutation::SetByte { at, byte } if len > 0 => bytes[at % len] = byte,
        Mutation::Truncate { at } => bytes.truncate(at % (len + 1)),
        Mutation::DuplicateLine { line, times } => {
            let l = lines[line % n].clone();
            for _ in 0..times {
                lines.insert(line % n, l.clone());
            }
            *bytes = lines.join(&b'\n');
        }
        Mutation::DeleteLine { line } => {
            lines.remove(line % n);
            *bytes = lines.join(&b'\n');
        }
        Mutation::SwapLines { a, b } => {
            lines.swap(a % n, b % n);
            *bytes = lines.join(&b'\n');
        }
        Mutation::Insert { at, token } => {
            let at = at % (len + 1);
            bytes.splice(at..at, TOKENS[token].bytes());
        }
        Mutation::Indent { line, spaces } => {
            let l = &mut lines[line % n];
            l.splice(0..0, std::iter::repeat_n(b' ', spaces));
            *bytes = lines.join(&b'\n');
        }
        _ => {}
    }
}

/// A billion-laughs document: `levels` anchors, each aliasing the previous `width` times. Flat:
/// the anchors are extra top-level keys and `tasks` aliases the last. Nested: every anchor is
/// defined inside the `tasks` value itself.
fn alias_bomb(levels: usize, width: usize, nested: bool) -> String {
    const ID: &str = "d2dc947ec2424d8789bb3984bb3adf45";
    if nested {
        let mut s = format!("&x0 [{ID}]");
        for l in 1..levels {
            let refs = format!(", *x{}", l - 1).repeat(width - 1);
            s = format!("&x{l} [{s}{refs}]");
        }
        return format!("name: bomb\ntasks: {s}\n");
    }
    let mut yaml = format!("name: bomb\nx0: &x0 [{ID}]\n");
    for l in 1..levels {
        let refs = vec![format!("*x{}", l - 1); width].join(", ");
        yaml.push_str(&format!("x{l}: &x{l} [{refs}]\n"));
    }
    yaml.push_str(&format!("tasks: *x{}\n", levels - 1));
    yaml
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let outcome = parse_checked(&bytes)?;
        // Random bytes are essentially never a plan with a valid 32-hex task id.
        if let Ok(plan) = outcome {
            prop_assert!(bytes.windows(32).any(|w| w.iter().all(u8::is_ascii_alphanumeric)), "accepted {plan:?}");
        }
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z0-9_ :,\\-\\[\\]{}&*!|>'\"#?\n\t.]{0,2000}") {
        let _accepted_or_refused = parse_checked(text.as_bytes())?;
    }

    #[test]
    fn mutated_valid_plans_never_panic(
        base in 0..CORPUS.len(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = CORPUS[base].as_bytes().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let first = parse_checked(&bytes)?.map(|p| p.sha256.clone()).map_err(|e| e.to_string());
        // Deterministic: the same bytes give the same answer.
        let again = parse_checked(&bytes)?.map(|p| p.sha256.clone()).map_err(|e| e.to_string());
        prop_assert_eq!(first, again);
    }

    #[test]
    fn alias_bombs_are_refused_in_bounded_time_and_memory(levels in 2usize..12, width in 2usize..12, nested in any::<bool>()) {
        let yaml = alias_bomb(levels, width, nested);
        let expanded = (width as f64).powi(levels as i32 - 1);
        let outcome = parse_checked(yaml.as_bytes())?;
        if expanded > 10_000.0 {
            // More than 10,000 tasks after expansion can never be a valid plan.
            prop_assert!(outcome.is_err(), "{levels}x{width} accepted");
        }
        prop_assert!(peak_rss_kib() < 1024 * 1024, "peak RSS {} KiB", peak_rss_kib());
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow(depth in 17usize..200_000, flow in any::<bool>()) {
        let yaml = if flow {
            format!("name: deep\ntasks: {}{}\n", "[".repeat(depth), "]".repeat(depth))
        } else {
            let mut s = String::from("name: deep\ntasks:\n");
            for d in 0..depth.min(1000) {
                s.push_str(&" ".repeat(d + 1));
                s.push_str("-\n");
            }
            s
        };
        prop_assume!(yaml.len() <= MAX_PLAN_BYTES);
        prop_assert!(parse_checked(yaml.as_bytes())?.is_err());
    }
}

#[test]
fn the_corpus_is_valid() {
    for (i, text) in CORPUS.iter().enumerate() {
        let outcome = parse_plan(Path::new("/plans/fuzz.yaml"), text.as_bytes());
        assert!(
            outcome.is_ok(),
            "corpus plan {i} must be valid: {outcome:?}"
        );
    }
}
