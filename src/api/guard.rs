//! The credential guard: one per credential, shared by every call of the process (every run,
//! every plan, start calls and history/status queries alike), and carried over a reload that
//! keeps the same credential.
//!
//! Why: the gateway locks an AK for 5 minutes after more than 5 bad signatures in a row, and a
//! scheduled plan keeps it locked. So a credential the API refused (HTTP 401: bad signature,
//! refused token) is not used again, except for one probe after a backoff; and a credential
//! not yet known to work (just loaded, or refused before) has at most one call in flight, so
//! that 8 calls started at once cannot all go out badly signed.
//!
//! The rules:
//! - **Unproven** (no answer yet, other than 401): one call at a time (the probe); the others
//!   wait for its verdict. Any answer but 401 and 429 proves the credential; a transport
//!   failure proves nothing (the next waiter probes).
//! - **Proven**: calls go freely.
//! - **Refused** (a 401): no new call. After [`GuardPolicy::first_backoff`] (30 s) one probe
//!   may go; a probe that ends without a verdict waits twice as long for the next one (up to
//!   [`GuardPolicy::max_backoff`], 10 min). After [`GuardPolicy::max_refusals`] (2) refusals
//!   in a row, no call at all until the credential changes (a reload with another one) or the
//!   daemon restarts. Calls already in flight when the first 401 comes back may still be
//!   refused (they count in the row); no new call starts.
//!
//! The guard holds no secret: the reason it keeps is the answer's code and status.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Backoffs and limits of a [`CredentialGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Wait after a refusal before the one probe.
    pub first_backoff: Duration,
    /// Longest wait between probes (a probe without a verdict doubles the wait).
    pub max_backoff: Duration,
    /// Refused calls in a row after which nothing is sent until the credential changes.
    pub max_refusals: u32,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(600),
            max_refusals: 2,
        }
    }
}

/// Why no call may be made with the credential now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// What the API answered (status and code, never a secret).
    pub reason: String,
    /// Refused calls in a row.
    pub refusals: u32,
    /// When the next probe may go; `None`: not before the credential changes.
    pub probe_in: Option<Duration>,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not called: the API refused this daemon's credentials ({}; {} refused call{} in a row)",
            self.reason,
            self.refusals,
            if self.refusals == 1 { "" } else { "s" }
        )?;
        match self.probe_in {
            Some(wait) => write!(
                f,
                "; no call is made with them until one test call in {}s",
                wait.as_secs().max(1)
            )?,
            None => f.write_str("; no call is made with them until they change")?,
        }
        f.write_str(
            ". Fix the credentials (AK/SK, token or IAM password) and reload (SIGHUP, `systemctl reload deployd`); the gateway locks an AK after more than 5 bad signatures in a row",
        )
    }
}

#[derive(Debug, Default)]
struct State {
    /// An answer other than 401 came back since the last refusal.
    proven: bool,
    /// A probe (the one call of an unproven credential) is in flight.
    probing: bool,
    /// Refused calls in a row.
    refusals: u32,
    /// After a refusal: when the next probe may go.
    next_probe: Option<Instant>,
    /// The wait before the next probe.
    backoff: Duration,
    /// The last refusal, for messages.
    reason: String,
    /// Bumped by every refusal: an answer to a call admitted before it proves nothing.
    epoch: u64,
}

/// The guard of one credential. See the module documentation.
#[derive(Debug)]
pub struct CredentialGuard {
    policy: GuardPolicy,
    state: Mutex<State>,
    /// Bumped whenever a probe ends, to wake the calls waiting for its verdict.
    changed: watch::Sender<u64>,
}

impl Default for CredentialGuard {
    fn default() -> Self {
        Self::new(GuardPolicy::default())
    }
}

/// The right to make one call. Report its answer with [`Pass::answered`]; dropped without a
/// report (transport failure, cancelled), it proves nothing.
#[derive(Debug)]
pub struct Pass<'g> {
    guard: &'g CredentialGuard,
    probe: bool,
    epoch: u64,
    reported: bool,
}

impl CredentialGuard {
    /// A guard with `policy`.
    pub fn new(policy: GuardPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why no call may go now, without waiting (`None`: a call may go, or wait for a probe).
    pub fn blocked(&self) -> Option<Blocked> {
        let state = self.state();
        self.blocked_in(&state, Instant::now())
    }

    fn blocked_in(&self, state: &State, now: Instant) -> Option<Blocked> {
        if state.refusals == 0 || state.proven {
            return None;
        }
        let refused = |probe_in| Blocked {
            reason: state.reason.clone(),
            refusals: state.refusals,
            probe_in,
        };
        if state.refusals >= self.policy.max_refusals {
            return Some(refused(None));
        }
        match state.next_probe {
            Some(at) if now < at => Some(refused(Some(at - now))),
            // Probe time; someone is probing: its verdict decides.
            _ if state.probing => Some(refused(Some(self.policy.first_backoff))),
            _ => None,
        }
    }

    /// Waits for the right to make one call: at once when the credential is proven; when it
    /// is not, the caller either becomes the probe or waits for the probe's verdict. Refused
    /// credentials give [`Blocked`] at once.
    pub async fn admit(&self) -> Result<Pass<'_>, Blocked> {
        loop {
            let mut changed = self.changed.subscribe();
            {
                let mut state = self.state();
                if let Some(blocked) = self.blocked_in(&state, Instant::now()) {
                    return Err(blocked);
                }
                if state.proven {
                    return Ok(self.pass(false, state.epoch));
                }
                if !state.probing {
                    state.probing = true;
                    return Ok(self.pass(true, state.epoch));
                }
            }
            // A probe is in flight: wait for its verdict, then decide again.
            let _ = changed.changed().await;
        }
    }

    fn pass(&self, probe: bool, epoch: u64) -> Pass<'_> {
        Pass {
            guard: self,
            probe,
            epoch,
            reported: false,
        }
    }

    /// Refused calls in a row so far.
    pub fn refusals(&self) -> u32 {
        self.state().refusals
    }

    fn settle(&self, pass: &Pass<'_>, status: Option<u16>) {
        let mut state = self.state();
        let now = Instant::now();
        match status {
            Some(401) => {
                state.refusals += 1;
                state.epoch += 1;
                state.proven = false;
                state.backoff = self.policy.first_backoff;
                state.next_probe = Some(now + state.backoff);
                if state.refusals == 1 || pass.probe {
                    tracing::error!(
                        refusals = state.refusals,
                        "the API refused the credentials ({}): no new call with them{}",
                        state.reason_or_default(),
                        if state.refusals >= self.policy.max_refusals {
                            " until they change (fix them and reload)".to_string()
                        } else {
                            format!(" for {:?}, then one test call", state.backoff)
                        }
                    );
                }
            }
            // 429 may come from the gateway before authentication: no verdict.
            Some(429) | None => {
                if pass.probe && state.refusals > 0 {
                    // No verdict from the probe: the next one waits longer.
                    state.backoff = (state.backoff * 2).min(self.policy.max_backoff);
                    state.next_probe = Some(now + state.backoff);
                }
            }
            Some(_) if pass.epoch == state.epoch => {
                if state.refusals > 0 {
                    tracing::info!("the API accepts the credentials again");
                }
                state.proven = true;
                state.refusals = 0;
                state.next_probe = None;
            }
            // An answer to a call admitted before a refusal proves nothing about now.
            Some(_) => {}
        }
        if pass.probe {
            state.probing = false;
        }
        drop(state);
        if pass.probe {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Records the reason of a refusal about to be reported (status and code).
    fn set_reason(&self, reason: String) {
        self.state().reason = reason;
    }
}

impl State {
    fn reason_or_default(&self) -> &str {
        if self.reason.is_empty() {
            "HTTP 401"
        } else {
            &self.reason
        }
    }
}

impl Pass<'_> {
    /// Reports the call's answer: its HTTP status, and for a 401 the reason (status and
    /// error code, never a secret).
    pub fn answered(mut self, status: u16, reason: impl FnOnce() -> String) {
        if status == 401 {
            self.guard.set_reason(reason());
        }
        self.reported = true;
        self.guard.settle(&self, Some(status));
    }

    /// Whether no refusal came since this pass was given (a call admitted before one must
    /// not start after it).
    pub fn still_valid(&self) -> bool {
        self.guard.state().epoch == self.epoch
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.guard.settle(self, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> GuardPolicy {
        GuardPolicy {
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(800),
            max_refusals: 2,
        }
    }

    #[tokio::test]
    async fn an_unproven_credential_has_one_call_in_flight_and_the_others_wait() {
        let guard = std::sync::Arc::new(CredentialGuard::new(quick()));
        let probe = guard.admit().await.expect("the first call probes");
        let waiting = {
            let guard = guard.clone();
            tokio::spawn(async move { guard.admit().await.map(|p| p.probe) })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the second call waits for the probe"
        );
        probe.answered(200, String::new);
        assert_eq!(
            waiting.await.expect("join"),
            Ok(false),
            "proven: calls go freely"
        );
    }

    #[tokio::test]
    async fn a_refusal_stops_every_waiting_call_then_one_probe_then_nothing() {
        let guard = std::sync::Arc::new(CredentialGuard::new(quick()));
        let probe = guard.admit().await.expect("probe");
        let mut waiters = Vec::new();
        for _ in 0..7 {
            let guard = guard.clone();
            waiters.push(tokio::spawn(async move { guard.admit().await.err() }));
        }
        tokio::task::yield_now().await;
        probe.answered(401, || "HTTP 401 APIGW.0301".into());
        for w in waiters {
            let blocked = w.await.expect("join").expect("blocked");
            assert_eq!(blocked.refusals, 1);
            assert!(blocked.probe_in.is_some());
            let text = blocked.to_string();
            assert!(
                text.contains("APIGW.0301") && text.contains("reload"),
                "{text}"
            );
        }
        // After the backoff, one probe; refused again: nothing more, ever.
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = loop {
            match guard.admit().await {
                Ok(p) => break p,
                Err(_) => {
                    assert!(Instant::now() < deadline, "no probe after the backoff");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert!(guard.blocked().is_some(), "one probe at a time");
        probe.answered(401, || "HTTP 401 APIGW.0301".into());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let blocked = guard.admit().await.expect_err("never again");
        assert_eq!((blocked.refusals, blocked.probe_in), (2, None));
        assert!(blocked.to_string().contains("until they change"));
    }

    #[tokio::test]
    async fn a_probe_without_a_verdict_doubles_the_wait_and_an_accepted_one_clears() {
        let guard = CredentialGuard::new(quick());
        guard
            .admit()
            .await
            .expect("probe")
            .answered(401, || "HTTP 401".into());
        tokio::time::sleep(Duration::from_millis(250)).await;
        drop(guard.admit().await.expect("probe after the backoff"));
        let blocked = guard.blocked().expect("waiting again");
        assert!(
            blocked.probe_in.expect("a probe later") > Duration::from_millis(250),
            "{blocked:?}"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        guard
            .admit()
            .await
            .expect("probe")
            .answered(404, String::new);
        assert_eq!(guard.refusals(), 0);
        assert!(guard.admit().await.is_ok_and(|p| !p.probe));
    }

    #[tokio::test]
    async fn an_answer_to_a_call_sent_before_a_refusal_proves_nothing() {
        let guard = CredentialGuard::new(quick());
        guard
            .admit()
            .await
            .expect("probe")
            .answered(200, String::new);
        let early = guard.admit().await.expect("proven");
        let refused = guard.admit().await.expect("proven");
        refused.answered(401, || "HTTP 401".into());
        assert!(!early.still_valid());
        early.answered(200, String::new);
        assert!(guard.blocked().is_some(), "still refused");
    }
}
