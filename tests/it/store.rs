//! The store seam: a store other than the state folder plugs into the executor, and a journal
//! that refuses an intent as fenced (a database store whose node lost the lead) stops the call
//! it announced.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
use deployd::api::credentials::Credentials;
use deployd::executor::limits::Limits;
use deployd::executor::{Executor, ExecutorSettings, NoObserver, RunRequest, StopTokens};
use deployd::journal::{RunHeader, Unfinished};
use deployd::results::{RunId, RunReport, TaskStatus, Trigger};
use deployd::secret::Secret;
use deployd::store::folder::FolderStore;
use deployd::store::{
    Claim, JournalAck, JournalWriter, LearnedZone, PlanRuns, RunJournal, Store, StoreError,
};

use crate::helpers::*;

/// The state folder, except that every journal refuses entries after its header, as a
/// database store does once another node took the lead.
#[derive(Debug)]
struct Deposed(FolderStore);

struct FencedJournal(String);

#[async_trait::async_trait]
impl JournalWriter for FencedJournal {
    fn location(&self) -> &str {
        &self.0
    }
    fn submit(&self, _json: Vec<u8>) -> Result<JournalAck, StoreError> {
        Err(StoreError::Fenced {
            location: self.0.clone(),
        })
    }
    async fn keep_result(&self, _report: &RunReport) -> Result<(), StoreError> {
        Ok(())
    }
    async fn close(self: Box<Self>, _result: Option<&RunReport>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for Deposed {
    async fn ran_once(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, StoreError> {
        self.0.ran_once(plan, sha256).await
    }
    async fn claim_once(&self, plan: &str, sha: &str, id: &RunId) -> Result<Claim, StoreError> {
        self.0.claim_once(plan, sha, id).await
    }
    async fn fired(&self, plan: &str) -> Result<Vec<DateTime<Utc>>, StoreError> {
        self.0.fired(plan).await
    }
    async fn claim_fire(&self, plan: &str, at: DateTime<Utc>) -> Result<Claim, StoreError> {
        self.0.claim_fire(plan, at).await
    }
    async fn create_journal(&self, header: &RunHeader) -> Result<RunJournal, StoreError> {
        Ok(RunJournal::new(Box::new(FencedJournal(format!(
            "run {}",
            header.run_id
        )))))
    }
    async fn unfinished(&self) -> (Vec<Unfinished>, Vec<String>) {
        self.0.unfinished().await
    }
    async fn close_unfinished(
        &self,
        run: &Unfinished,
        result: &deployd::results::RunReport,
    ) -> Result<(), StoreError> {
        self.0.close_unfinished(run, result).await
    }
    fn learned_zone(&self) -> Result<Option<LearnedZone>, StoreError> {
        self.0.learned_zone()
    }
    fn keep_learned_zone(&self, zone: &LearnedZone) -> Result<(), StoreError> {
        self.0.keep_learned_zone(zone)
    }
    async fn plans_with_results(&self) -> Result<Vec<String>, StoreError> {
        self.0.plans_with_results().await
    }
    async fn plan_runs(&self, plan: &str) -> Result<PlanRuns, StoreError> {
        self.0.plan_runs(plan).await
    }
}

/// Promise (high availability, "Fenced"): a node that lost the lead cannot start a call. The
/// journal refuses the intent, and no request reaches the service.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_journal_stops_every_call() {
    let emulator = start_emulator(emulator_config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = DeployClient::new(
        Endpoint::parse(&emulator.base_url()).expect("endpoint"),
        Credentials::Token(Secret::new(TOKEN)),
        ClientOptions::default(),
    )
    .expect("client");
    let limits = Arc::new(Limits::new(100.0, 5, 8).expect("limits"));
    let store = Arc::new(Deposed(FolderStore::at(dir.path())));
    let executor =
        Executor::new(client, limits, ExecutorSettings::default()).with_store(Some(store));
    let plan = deployd::plan::load::parse_plan(
        "fenced.yaml".as_ref(),
        format!("tasks: [{T1}, {T2}]\n").as_bytes(),
    )
    .expect("plan")
    .plan;
    let started_at = Utc::now();
    let req = RunRequest {
        plan: Arc::new(plan),
        plan_dir: dir.path().to_path_buf(),
        trigger: Trigger::Manual,
        scheduled_for: None,
        run_id: RunId::new(started_at),
        started_at,
    };
    let finished = executor
        .run(req, StopTokens::default(), Arc::new(NoObserver))
        .await;
    for task in &finished.report.tasks {
        assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
        assert_eq!(task.error_code.as_deref(), Some("journal_failed"));
        let why = task.error_msg.as_deref().unwrap_or_default();
        assert!(why.contains("not the leader any more"), "{why}");
    }
    assert!(emulator.log().is_empty(), "no call: {:?}", emulator.log());
}
