//! `deployd check PATH...`: the daemon's own loader over files and folders, every problem as
//! `FILE:LINE:COL: field.path: message`.

use super::Exit;
use crate::cli::CheckArgs;
use crate::plan::load::check_paths;

/// Runs `deployd check`.
pub fn check(args: &CheckArgs) -> Exit {
    let report = check_paths(&args.paths);
    for issue in &report.issues {
        println!("{issue}");
    }
    let mut warnings = 0;
    for loaded in &report.plans {
        for w in &loaded.warnings {
            warnings += 1;
            println!("{w} (warning)");
        }
    }
    let valid = report.plans.len();
    eprintln!(
        "{valid} valid plan{}, {} error{}, {warnings} warning{}",
        if valid == 1 { "" } else { "s" },
        report.issues.len(),
        if report.issues.len() == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    if !report.issues.is_empty() || (args.deny_warnings && warnings > 0) {
        Exit::Failed
    } else {
        Exit::Ok
    }
}
