//! Following a started deployment (`follow: true`): poll its record's state
//! (`ShowDeployStatus`) with backoff, through the [`LimitedClient`], until it succeeds or fails or
//! the plan's `follow_timeout` passes. Unknown states count as still running.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::limited::LimitedClient;
use crate::api::types::DeployState;
use crate::results::FollowOutcome;

/// First pause between two polls.
const FIRST_POLL: Duration = Duration::from_secs(2);
/// Longest pause between two polls.
const MAX_POLL: Duration = Duration::from_secs(30);

/// The pause before poll number `n` (0-based): 2 s growing by half each time, at most 30 s.
pub fn poll_pause(n: u32) -> Duration {
    FIRST_POLL
        .mul_f64(1.5f64.powi(n.min(20) as i32))
        .min(MAX_POLL)
}

/// Polls until the deployment ends, the timeout passes, or `stop` is cancelled. Returns the
/// last state seen (running if it never ended) and the time followed.
pub async fn follow(
    calls: &LimitedClient,
    task_id: &str,
    record_id: &str,
    timeout: Duration,
    stop: &CancellationToken,
) -> FollowOutcome {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut state = DeployState::Running;
    let mut n = 0;
    loop {
        let query = calls.record_status(task_id, record_id);
        let answer = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            answer = query => answer,
        };
        match answer {
            Ok(status) => {
                state = DeployState::from_service(&status.status);
                debug!(record_id, state = ?state, "deployment state");
                if state != DeployState::Running {
                    break;
                }
            }
            Err(e) if calls.guard().blocked().is_some() => {
                warn!(record_id, "stopped following: {e}");
                break;
            }
            Err(e) => debug!(record_id, "state query failed: {e}"),
        }
        let pause = poll_pause(n);
        n += 1;
        if tokio::time::Instant::now() + pause > deadline {
            warn!(
                record_id,
                "stopped following after {timeout:?}: the deployment is still running"
            );
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let duration_secs = started.elapsed().as_secs_f64();
    info!(record_id, final_state = ?state, duration_secs, "deployment followed");
    FollowOutcome {
        final_state: state,
        duration_secs: (duration_secs * 1000.0).round() / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_cap() {
        assert_eq!(poll_pause(0), Duration::from_secs(2));
        assert_eq!(poll_pause(1), Duration::from_secs(3));
        assert_eq!(poll_pause(2), Duration::from_millis(4500));
        assert_eq!(poll_pause(30), MAX_POLL);
    }
}
