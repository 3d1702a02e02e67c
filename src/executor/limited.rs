//! The one way deployd calls the API: [`LimitedClient`], the [`DeployClient`] behind the
//! account's [`Limits`]. Every call (start, history page, record status, record params, and
//! the IAM token requests its credentials make) takes its turn, is made, and then tells the
//! limits how it was answered: a 429 slows every caller down and its `Retry-After` pauses
//! them, a success gives a little pace back. A query answered 429 is throttling like a start
//! answered 429: the quota is the account's, whichever endpoint spent it.
//!
//! It decides nothing else: no retries, no lookups (the executor's), no classification (the
//! client's).

use std::sync::Arc;

use chrono::NaiveDate;
use tokio::sync::Semaphore;

use super::limits::{CallPermit, Limits};
use crate::api::client::{DeployClient, GetFailure};
use crate::api::guard::{Blocked, CredentialGuard, Pass};
use crate::api::service_clock::ServiceClock;
use crate::api::types::{HistoryPage, RecordParam, RecordStatus, StartOutcome};

/// A [`DeployClient`] whose every call goes through the shared [`Limits`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LimitedClient {
    client: DeployClient,
    limits: Arc<Limits>,
}

/// The right to make one start call now: a slot in flight (the plan's and the account's), a
/// turn at the account's pace, and the credential guard's pass. Obtained before the call's
/// intent is journaled, so that the call leaves right after it.
pub struct StartTurn<'a> {
    calls: &'a LimitedClient,
    permit: CallPermit,
    pass: Pass<'a>,
}

impl LimitedClient {
    /// `client` behind `limits`; the IAM token requests of its credentials go through them too.
    pub fn new(client: DeployClient, limits: Arc<Limits>) -> Self {
        client.credentials().pace_with(limits.clone());
        Self { client, limits }
    }

    /// The client (its clock, guard and endpoint; calls go through `self`).
    pub fn client(&self) -> &DeployClient {
        &self.client
    }

    /// The shared limits.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// What the answers told of the service's clock.
    pub fn clock(&self) -> &Arc<ServiceClock> {
        self.client.clock()
    }

    /// Whether the API accepts the credentials.
    pub fn guard(&self) -> &CredentialGuard {
        self.client.guard()
    }

    /// Waits for the right to make one start call: a slot in flight (`plan`'s first, then the
    /// account's) and a turn at the pace, then the credential guard's pass (at once when the
    /// credentials are known to work; while they are not, one call at a time).
    pub async fn start_turn(
        &self,
        plan: Option<&Arc<Semaphore>>,
    ) -> Result<StartTurn<'_>, Blocked> {
        let permit = self.limits.acquire(plan).await;
        let pass = self.client.admit().await?;
        Ok(StartTurn {
            calls: self,
            permit,
            pass,
        })
    }

    /// One page of the task's history (see [`DeployClient::history_page`]).
    pub async fn history_page(
        &self,
        project_id: &str,
        task_id: &str,
        page: u32,
        size: u32,
        start_date: NaiveDate,
        end_date: NaiveDate,
    ) -> Result<HistoryPage, GetFailure> {
        self.query(|| {
            self.client
                .history_page(project_id, task_id, page, size, start_date, end_date)
        })
        .await
    }

    /// A record's state (see [`DeployClient::record_status`]).
    pub async fn record_status(
        &self,
        task_id: &str,
        record_id: &str,
    ) -> Result<RecordStatus, GetFailure> {
        self.query(|| self.client.record_status(task_id, record_id))
            .await
    }

    /// The params a record was started with (see [`DeployClient::record_params`]).
    pub async fn record_params(
        &self,
        task_id: &str,
        record_id: &str,
    ) -> Result<Vec<RecordParam>, GetFailure> {
        self.query(|| self.client.record_params(task_id, record_id))
            .await
    }

    /// A query: a slot in flight and a turn, the call, then its answer told to the limits.
    /// The call is made only once the permit is held (`call` builds it then).
    async fn query<T, F>(&self, call: impl FnOnce() -> F) -> Result<T, GetFailure>
    where
        F: Future<Output = Result<T, GetFailure>>,
    {
        let permit = self.limits.acquire(None).await;
        let answer = call().await;
        match &answer {
            Ok(_) => self.limits.relieved(),
            Err(failure) => self
                .limits
                .answered(failure.info.http_status, failure.info.retry_after),
        }
        // Told before the slot is freed: the next caller waiting for it already sees a pause.
        drop(permit);
        answer
    }
}

impl StartTurn<'_> {
    /// Whether the credential guard's pass still holds (another call may have had the
    /// credentials refused while this one waited).
    pub fn still_valid(&self) -> bool {
        self.pass.still_valid()
    }

    /// `POST /v2/tasks/{task_id}/start` with `body` (exact bytes), its answer told to the
    /// limits before the slot in flight is freed.
    pub async fn start(self, task_id: &str, body: &str) -> StartOutcome {
        let outcome = self
            .calls
            .client
            .start_task_with(self.pass, task_id, body)
            .await;
        let info = outcome.info();
        self.calls
            .limits
            .answered(info.http_status, info.retry_after);
        // The client told the credential guard of a 401 before returning, and the limits now
        // know of a 429: the next call waiting for this slot already sees both.
        drop(self.permit);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::client::{ClientOptions, Endpoint};
    use crate::api::credentials::Credentials;
    use crate::emulator::{
        DEFAULT_PROJECT_ID, DEFAULT_TOKEN, Emulator, EmulatorConfig, ScriptedFault,
    };
    use crate::secret::Secret;
    use std::time::Duration;

    /// A query answered 429 is throttling like a start answered 429: the pace halves for
    /// every caller and the next start call waits out its `Retry-After`.
    #[tokio::test]
    async fn a_query_answered_429_slows_and_pauses_the_next_start() {
        let task = "a".repeat(32);
        let emulator = Emulator::start(
            EmulatorConfig {
                query_script: vec![(task.clone(), ScriptedFault::Throttled(2))],
                ..EmulatorConfig::default()
            },
            "127.0.0.1:0".parse().expect("address"),
        )
        .await
        .expect("emulator");
        let client = DeployClient::new(
            Endpoint::parse(&emulator.base_url()).expect("endpoint"),
            Credentials::Token(Secret::new(DEFAULT_TOKEN)),
            ClientOptions::default(),
        )
        .expect("client");
        let calls = LimitedClient::new(client, Arc::new(Limits::new(100.0, 1, 4).expect("limits")));
        let today = chrono::Utc::now().date_naive();
        let err = calls
            .history_page(DEFAULT_PROJECT_ID, &task, 1, 10, today, today)
            .await
            .expect_err("throttled");
        assert_eq!(err.info.http_status, Some(429));
        assert_eq!(err.info.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(calls.limits().pace(), 0.5);

        let waited = std::time::Instant::now();
        let turn = calls.start_turn(None).await.expect("credentials work");
        assert!(
            waited.elapsed() >= Duration::from_millis(1900),
            "the start waited out Retry-After: {:?}",
            waited.elapsed()
        );
        assert!(matches!(
            turn.start(&task, "{}").await,
            StartOutcome::Started { .. }
        ));
        // A success gives a little of the pace back.
        assert!(calls.limits().pace() > 0.5);
    }
}
