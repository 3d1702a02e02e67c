//! `deployd next PATH... [--count N]`: upcoming fire times of each scheduled plan, computed by
//! the same code the daemon fires with.

use chrono::Utc;

use super::Exit;
use crate::cli::NextArgs;
use crate::plan::load::check_paths;
use crate::results::ts;

/// Runs `deployd next`.
pub fn next(args: &NextArgs) -> Exit {
    let report = check_paths(&args.paths);
    for issue in &report.issues {
        eprintln!("{issue}");
    }
    let now = Utc::now();
    for loaded in &report.plans {
        let plan = &loaded.plan;
        match &plan.schedule {
            None => println!(
                "{}: no schedule: runs once when it arrives or changes",
                plan.name
            ),
            Some(schedule) => {
                let state = if plan.enabled {
                    ""
                } else {
                    " (disabled: never fires)"
                };
                println!(
                    "{}: {:?} in {}{state}",
                    plan.name,
                    schedule.expr(),
                    schedule.timezone()
                );
                let fires = schedule.upcoming(now, usize::from(args.count));
                if fires.is_empty() {
                    println!("  no further fire time");
                }
                let zone = schedule.timezone();
                for t in fires {
                    let local = t.with_timezone(&zone.offset_at(t));
                    println!(
                        "  {} {} ({})  {}",
                        local.format("%Y-%m-%d %H:%M:%S"),
                        zone.abbreviation_at(t),
                        local.format("%:z"),
                        ts(&t)
                    );
                }
            }
        }
    }
    if report.issues.is_empty() {
        Exit::Ok
    } else {
        Exit::Failed
    }
}
