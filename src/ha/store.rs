//! The cluster's state in PostgreSQL: the same [`Store`] as the state folder, over the tables
//! of [`super::schema`]. Claims are unique keys; the journal's entries are written by one
//! group-commit task, each batch one statement fenced on the lease (the writer must hold the
//! lead with its epoch, on the database's clock, and within its own monotonic deadline);
//! results are rows of `deployd_runs`; learned facts are rows of `deployd_facts`, loaded when
//! the store opens and written behind.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::Client;

use super::config::Database;
use super::connect::{connect, describe};
use crate::journal::{Entry, Replay, RunHeader, Unfinished};
use crate::results::{RunId, RunReport};
use crate::secret::Secret;
use crate::store::{
    Claim, Counts, JournalAck, JournalWriter, LastRun, LearnedZone, PlanRuns, RunJournal, Store,
    StoreError,
};

/// Most journal entries one batch writes.
const BATCH_MAX: usize = 1024;

/// The learned fact key of the service's zone.
const ZONE_FACT: &str = "service_zone";

/// This node's hold on the lead, as the journal's fencing sees it: the epoch it leads with
/// and until when (monotonic) it may start calls; nothing while it follows.
#[derive(Debug)]
pub struct Fence {
    node: String,
    held: Mutex<Option<(i64, Instant)>>,
}

impl Fence {
    /// A node that does not lead yet.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            held: Mutex::new(None),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Leads with `epoch`; calls may start until `calls_until`.
    pub fn lead(&self, epoch: i64, calls_until: Instant) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some((epoch, calls_until));
    }

    /// Leads no more.
    pub fn step_down(&self) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The epoch this node may write and call with now: `None` when it follows or its
    /// deadline passed (a renewal did not succeed in time).
    pub fn current(&self) -> Option<i64> {
        let held = *self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.filter(|(_, until)| Instant::now() < *until)
            .map(|(epoch, _)| epoch)
    }

    /// The epoch last led with, deadline or not (recovery's "older than mine").
    pub fn epoch(&self) -> Option<i64> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|(epoch, _)| epoch)
    }
}

/// One connection to the database, opened again when it closes.
#[derive(Debug)]
pub struct Connection {
    database: Database,
    password: Option<Secret>,
    application_name: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// How long one store call may wait for the database (connecting included).
    limit: Duration,
}

/// How long a store call waits for the database when no lease says otherwise.
const CALL_LIMIT: Duration = Duration::from_secs(10);

impl Connection {
    /// A connection to `database`, opened on first use.
    pub fn new(database: Database, password: Option<Secret>, application_name: &str) -> Self {
        Self {
            database,
            password,
            application_name: application_name.to_string(),
            client: tokio::sync::Mutex::new(None),
            limit: CALL_LIMIT,
        }
    }

    /// The same, each store call given up after `limit` (a cluster node: its lease, past
    /// which its fence has fallen anyway).
    #[must_use]
    pub fn with_call_limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// Runs `call`, given up after the call limit: a database that stops answering without
    /// closing the connection (a black-holed route, a stalled server) must not hold a run,
    /// a shutdown or a claim forever. The connection is then dropped, to be opened again:
    /// a call that hung once may hang again on it. `None` when the limit passed.
    pub async fn within<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(v) => Some(v),
            Err(_) => {
                self.reset().await;
                None
            }
        }
    }

    /// [`Connection::within`] for a call that returns a store result.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.within(call)
            .await
            .unwrap_or_else(|| Err(self.no_answer()))
    }

    fn no_answer(&self) -> StoreError {
        StoreError::Database(format!(
            "no answer from the database within {} ms",
            self.limit.as_millis()
        ))
    }

    /// Forgets the client (a call on it hung or failed): the next use connects again.
    pub async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// The open client, connecting (again) if needed.
    pub async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = connect(
            &self.database,
            self.password.as_ref(),
            &self.application_name,
        )
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }
}

fn db(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Database(describe(e))
}

/// The state in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Arc<Connection>,
    fence: Arc<Fence>,
    zone: Mutex<Option<LearnedZone>>,
    journal: mpsc::UnboundedSender<Submitted>,
    /// Runs whose beginning may or may not have been written (the database's answer was
    /// lost) and that this node will never run: undone before the next run begins, so that
    /// no takeover finds a run that never was, nor a claim held by it.
    doubtful: Mutex<Vec<String>>,
}

/// One journal entry on its way to the database.
struct Submitted {
    run_id: String,
    seq: i64,
    json: String,
    ack: oneshot::Sender<Result<(), StoreError>>,
}

impl PgStore {
    /// Opens the store over `conn`, fencing journal writes with `fence`; loads the learned
    /// facts. Spawns the journal's writer task (it ends when the store is dropped).
    pub async fn open(conn: Arc<Connection>, fence: Arc<Fence>) -> Result<Self, StoreError> {
        let zone = conn
            .bounded(async {
                let client = conn.client().await?;
                client
                    .query_opt(
                        "select value from deployd_facts where key = $1",
                        &[&ZONE_FACT],
                    )
                    .await
                    .map_err(|e| db(&e))
            })
            .await?
            .and_then(|r| serde_json::from_value::<LearnedZone>(r.get(0)).ok());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_journal(conn.clone(), fence.clone(), rx));
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                fence,
                zone: Mutex::new(zone),
                journal: tx,
                doubtful: Mutex::new(Vec::new()),
            }),
        })
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        self.inner.conn.client().await
    }

    /// Remembers that `run_id`'s beginning may have been written while this node will not
    /// run it (a lost answer).
    fn doubt(&self, run_id: &str) {
        self.inner
            .doubtful
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(run_id.to_string());
    }

    /// Undoes the runs in doubt (their row, journal and claims, if written): an error when
    /// the database does not answer, and the next run does not begin either.
    async fn settle_doubtful(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = std::mem::take(
            &mut *self
                .inner
                .doubtful
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (i, id) in ids.iter().enumerate() {
            let undone = self
                .inner
                .conn
                .bounded(async {
                    let client = self.client().await?;
                    finish_run(&client, id, None).await
                })
                .await;
            if let Err(e) = undone {
                for rest in &ids[i..] {
                    self.doubt(rest);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// A claim of `(plan, slot)`, fenced: `Won`, `Taken` (with the run that has it), or
    /// `Fenced` when this node does not lead with a live lease.
    /// `again`: a retry after a lost answer, which finds this holder's own claim (same node,
    /// same lead, no run begun) won.
    async fn claim(
        &self,
        plan: &str,
        slot: &str,
        run_id: &str,
        again: bool,
    ) -> Result<Claim, StoreError> {
        self.inner.conn.bounded(async {
            let Some(epoch) = self.inner.fence.current() else {
                return Err(fenced(format!("claim {plan} {slot}")));
            };
            let client = self.client().await?;
            let node = self.inner.fence.node();
            let n = client
                .execute(
                    "insert into deployd_claims (plan, slot, run_id, claimed_by, epoch)
                     select $1, $2, $3, $4, $5
                     where exists (select 1 from deployd_lease
                                   where holder = $4 and epoch = $5 and expires_at > now())
                     on conflict do nothing",
                    &[&plan, &slot, &run_id, &node, &epoch],
                )
                .await
                .map_err(|e| db(&e))?;
            if n == 1 {
                return Ok(Claim::Won);
            }
            let taken = client
                .query_opt(
                    "select run_id, claimed_by, epoch from deployd_claims where plan = $1 and slot = $2",
                    &[&plan, &slot],
                )
                .await
                .map_err(|e| db(&e))?;
            match taken {
                // This very claim, made by this node under this lead, its answer lost (the
                // connection dropped after the commit): asking again finds it, and it is won.
                Some(row)
                    if again
                        && row.get::<_, String>(0) == run_id
                        && row.get::<_, Option<String>>(1).as_deref() == Some(node)
                        && row.get::<_, Option<i64>>(2) == Some(epoch) =>
                {
                    Ok(Claim::Won)
                }
                Some(row) => {
                    let id: String = row.get(0);
                    Ok(Claim::Taken(
                        (!id.is_empty()).then(|| RunId::from_string(id)),
                    ))
                }
                None => {
                    self.inner.fence.step_down();
                    Err(fenced(format!("claim {plan} {slot}")))
                }
            }
        })
        .await
    }
}

fn fenced(location: String) -> StoreError {
    StoreError::Fenced { location }
}

/// The slot of a run-once plan's content.
fn once_slot(sha256: &str) -> String {
    format!("sha256:{sha256}")
}

/// The slot of a fire time (RFC 3339 UTC, seconds: they sort as the times do).
fn fire_slot(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ran_once(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, StoreError> {
        // A claim held by a run in doubt is not a run that ran: undone first.
        self.settle_doubtful().await?;
        self.inner
            .conn
            .bounded(async {
                let row = self
                    .client()
                    .await?
                    .query_opt(
                        "select run_id from deployd_claims where plan = $1 and slot = $2",
                        &[&plan, &once_slot(sha256)],
                    )
                    .await
                    .map_err(|e| db(&e))?;
                Ok(row.map(|r| RunId::from_string(r.get(0))))
            })
            .await
    }

    async fn claim_once(
        &self,
        plan: &str,
        sha256: &str,
        run_id: &RunId,
    ) -> Result<Claim, StoreError> {
        self.settle_doubtful().await?;
        let claimed = self
            .claim(plan, &once_slot(sha256), run_id.as_str(), false)
            .await;
        // The claim may have been kept with its answer lost: the run does not begin, and
        // the claim it may hold is given back before the next try.
        if let Err(StoreError::Database(_)) = &claimed {
            self.doubt(run_id.as_str());
        }
        claimed
    }

    async fn fired(&self, plan: &str) -> Result<Vec<DateTime<Utc>>, StoreError> {
        self.inner
            .conn
            .bounded(async {
                let rows = self
                .client()
                .await?
                .query(
                    "select slot from deployd_claims where plan = $1 and slot not like 'sha256:%'
                     order by slot",
                    &[&plan],
                )
                .await
                .map_err(|e| db(&e))?;
                Ok(rows
                    .iter()
                    .filter_map(|r| DateTime::parse_from_rfc3339(r.get(0)).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .collect())
            })
            .await
    }

    async fn claim_fire(&self, plan: &str, at: DateTime<Utc>) -> Result<Claim, StoreError> {
        self.claim(plan, &fire_slot(at), "", false).await
    }

    async fn claim_fire_again(&self, plan: &str, at: DateTime<Utc>) -> Result<Claim, StoreError> {
        self.claim(plan, &fire_slot(at), "", true).await
    }

    async fn fire_skipped(&self, plan: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.conn.bounded(async {
            self.client()
                .await?
                .execute(
                    "update deployd_claims set run_id = '-' where plan = $1 and slot = $2 and run_id = ''",
                    &[&plan, &fire_slot(at)],
                )
                .await
                .map(|_| ())
                .map_err(|e| db(&e))
        })
        .await
    }

    async fn release_unbegun_fires(&self) -> Result<u64, StoreError> {
        self.inner
            .conn
            .bounded(async {
                let Some(epoch) = self.inner.fence.current() else {
                    return Err(fenced("release of unbegun fires".into()));
                };
                self.client()
                    .await?
                    .execute(
                        "delete from deployd_claims
                     where run_id = '' and epoch < $1 and slot not like 'sha256:%'",
                        &[&epoch],
                    )
                    .await
                    .map_err(|e| db(&e))
            })
            .await
    }

    async fn create_journal(&self, header: &RunHeader) -> Result<RunJournal, StoreError> {
        self.settle_doubtful().await?;
        let run_id = header.run_id.as_str();
        let created = self.inner.conn.bounded(async {
            let run_id = header.run_id.as_str().to_string();
            let location = format!("database run {run_id}");
            let Some(epoch) = self.inner.fence.current() else {
                return Err(fenced(location));
            };
            let json = serde_json::to_string(&Entry::Run(Box::new(header.clone())))
                .map_err(|e| StoreError::Database(e.to_string()))?;
            let node = self.inner.fence.node().to_string();
            // The run's row and its header, in one statement, fenced.
            let written = self
                .client()
                .await?
                .execute(
                    "with lead as (select 1 from deployd_lease
                                       where holder = $3 and epoch = $4 and expires_at > now()),
                              run as (insert into deployd_runs (run_id, plan, node, epoch, started_at)
                                      select $1, $2, $3, $4, $5 where exists (select 1 from lead)
                                      returning run_id),
                              begun as (update deployd_claims set run_id = $1
                                        where plan = $2 and slot = $7 and run_id = ''
                                          and exists (select 1 from run))
                         insert into deployd_journal (run_id, seq, epoch, fact)
                         select run_id, 0, $4, $6::text::jsonb from run",
                    &[
                        &run_id,
                        &header.plan,
                        &node,
                        &epoch,
                        &header.started_at,
                        &json,
                        &header.scheduled_for.map(fire_slot).unwrap_or_default(),
                    ],
                )
                .await
                .map_err(|e| db(&e))?;
            if written != 1 {
                self.inner.fence.step_down();
                return Err(fenced(location));
            }
            Ok(RunJournal::new(Box::new(PgJournal {
                store: self.clone(),
                run_id,
                location,
                seq: AtomicI64::new(1),
            })))
        })
        .await;
        if let Err(StoreError::Database(_)) = &created {
            self.doubt(run_id);
        }
        created
    }

    async fn unfinished(&self) -> (Vec<Unfinished>, Vec<String>) {
        let limited = self.inner.conn.within(async {
            let mut found = Vec::new();
            let mut problems = Vec::new();
            // Only a leader recovers, and only the runs of earlier leads.
            let Some(epoch) = self.inner.fence.epoch() else {
                return (found, problems);
            };
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(e.to_string());
                    return (found, problems);
                }
            };
            let runs = match client
                .query(
                    "select run_id from deployd_runs where result is null and epoch < $1
                     order by started_at",
                    &[&epoch],
                )
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    problems.push(describe(&e));
                    return (found, problems);
                }
            };
            for row in runs {
                let run_id: String = row.get(0);
                let location = format!("database run {run_id}");
                let entries = match client
                    .query(
                        "select fact::text from deployd_journal where run_id = $1 order by seq",
                        &[&run_id],
                    )
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        problems.push(format!("{location}: {}", describe(&e)));
                        continue;
                    }
                };
                let mut replay = Replay::new();
                for entry in &entries {
                    let Ok(entry) = serde_json::from_str::<Entry>(entry.get(0)) else {
                        break;
                    };
                    replay.push(entry);
                }
                match replay.finish(run_id.clone(), location.clone()) {
                    Ok(Some(run)) => found.push(run),
                    Ok(None) => {
                        let _ = client
                            .execute("delete from deployd_runs where run_id = $1", &[&run_id])
                            .await;
                    }
                    Err(e) => problems.push(format!("{location}: {e}")),
                }
            }
            (found, problems)
        });
        limited
            .await
            .unwrap_or_else(|| (Vec::new(), vec![self.inner.conn.no_answer().to_string()]))
    }

    async fn close_unfinished(
        &self,
        run: &Unfinished,
        result: &RunReport,
    ) -> Result<(), StoreError> {
        self.inner
            .conn
            .bounded(async {
                let client = self.client().await?;
                finish_run(&client, &run.key, Some(result)).await
            })
            .await
    }

    fn may_call(&self) -> bool {
        self.inner.fence.current().is_some()
    }

    fn learned_zone(&self) -> Result<Option<LearnedZone>, StoreError> {
        Ok(self
            .inner
            .zone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    fn keep_learned_zone(&self, zone: &LearnedZone) -> Result<(), StoreError> {
        *self
            .inner
            .zone
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(zone.clone());
        // Written behind: a fact lost in a crash costs one status query to learn again.
        let conn = self.inner.conn.clone();
        let value = serde_json::to_value(zone).unwrap_or_default();
        tokio::spawn(async move {
            let write = async {
                match conn.client().await {
                Ok(c) => c
                    .execute(
                        "insert into deployd_facts (key, value) values ($1, $2)
                         on conflict (key) do update set value = excluded.value, learned_at = now()",
                        &[&ZONE_FACT, &value],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| describe(&e)),
                Err(e) => Err(e.to_string()),
                }
            };
            let written = conn
                .within(write)
                .await
                .unwrap_or_else(|| Err(conn.no_answer().to_string()));
            if let Err(e) = written {
                tracing::warn!("the learned service zone could not be kept in the database: {e}");
            }
        });
        Ok(())
    }

    async fn plans_with_results(&self) -> Result<Vec<String>, StoreError> {
        self.inner
            .conn
            .bounded(async {
                let rows = self
                .client()
                .await?
                .query(
                    "select distinct plan from deployd_runs where result is not null order by plan",
                    &[],
                )
                .await
                .map_err(|e| db(&e))?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await
    }

    async fn plan_runs(&self, plan: &str) -> Result<PlanRuns, StoreError> {
        self.inner
            .conn
            .bounded(async {
                let client = self.client().await?;
                let count: i64 = client
                    .query_one(
                        "select count(*) from deployd_runs where plan = $1 and result is not null",
                        &[&plan],
                    )
                    .await
                    .map_err(|e| db(&e))?
                    .get(0);
                let last = client
                    .query_opt(
                        "select result from deployd_runs where plan = $1 and result is not null
                     order by started_at desc, run_id desc limit 1",
                        &[&plan],
                    )
                    .await
                    .map_err(|e| db(&e))?
                    .map(|r| {
                        serde_json::from_value::<RunReport>(r.get(0))
                            .map(|report| last_run(&report))
                            .map_err(|e| format!("the last result of {plan} in the database: {e}"))
                    });
                Ok(PlanRuns {
                    count: usize::try_from(count).unwrap_or(0),
                    last,
                })
            })
            .await
    }
}

fn last_run(report: &RunReport) -> LastRun {
    LastRun {
        run_id: report.run_id.as_str().to_string(),
        status: serde_plain(&report.status),
        trigger: serde_plain(&report.trigger),
        started_at: report.started_at,
        finished_at: report.finished_at,
        summary: Counts {
            total: report.summary.total,
            started: report.summary.started,
            failed: report.summary.failed,
            skipped: report.summary.skipped,
        },
    }
}

/// A unit enum's serde name (`succeeded`, `schedule`).
fn serde_plain(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Writes a run's result into its row (first writer wins: a paused old leader's late result
/// does not overwrite the recovery's) and drops its journal; `None`: the run never began.
async fn finish_run(
    client: &Client,
    run_id: &str,
    result: Option<&RunReport>,
) -> Result<(), StoreError> {
    match result {
        Some(report) => {
            let value =
                serde_json::to_value(report).map_err(|e| StoreError::Database(e.to_string()))?;
            let status = serde_plain(&report.status);
            client
                .execute(
                    "with done as (update deployd_runs
                                   set status = $2, finished_at = $3, result = $4
                                   where run_id = $1 and result is null)
                     delete from deployd_journal where run_id = $1",
                    &[&run_id, &status, &report.finished_at, &value],
                )
                .await
                .map_err(|e| db(&e))?;
        }
        None => {
            // The run never began: its fire claim (if any) is unbegun again, its run-once
            // claim (if any) is given back. Only if its row was still without a result: a run
            // a takeover already recovered keeps its claims.
            client
                .execute(
                    "with gone as (delete from deployd_runs where run_id = $1 and result is null
                                   returning run_id),
                          fire as (update deployd_claims set run_id = ''
                                   where run_id in (select run_id from gone)
                                     and slot not like 'sha256:%'),
                          once as (delete from deployd_claims
                                   where run_id in (select run_id from gone)
                                     and slot like 'sha256:%')
                     delete from deployd_journal where run_id in (select run_id from gone)",
                    &[&run_id],
                )
                .await
                .map_err(|e| db(&e))?;
        }
    }
    Ok(())
}

/// A live run's journal in the database.
struct PgJournal {
    store: PgStore,
    run_id: String,
    location: String,
    seq: AtomicI64,
}

#[async_trait::async_trait]
impl JournalWriter for PgJournal {
    fn location(&self) -> &str {
        &self.location
    }

    fn submit(&self, json: Vec<u8>) -> Result<JournalAck, StoreError> {
        let json = String::from_utf8(json).map_err(|e| StoreError::Database(e.to_string()))?;
        let (ack, done) = oneshot::channel();
        let entry = Submitted {
            run_id: self.run_id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            json,
            ack,
        };
        self.store
            .inner
            .journal
            .send(entry)
            .map_err(|_| StoreError::Database("the journal writer stopped".into()))?;
        Ok(done)
    }

    async fn keep_result(&self, report: &RunReport) -> Result<(), StoreError> {
        self.close_if_leading(Some(report)).await
    }

    async fn close(self: Box<Self>, result: Option<&RunReport>) -> Result<(), StoreError> {
        let closed = self.close_if_leading(result).await;
        if result.is_none()
            && let Err(StoreError::Database(_)) = &closed
        {
            self.store.doubt(&self.run_id);
        }
        closed
    }
}

impl PgJournal {
    /// Closes the run in the database, unless this node lost the lead: the run is then the
    /// new leader's to recover (it looks the unanswered calls up in the history), and this
    /// node's view of it stays in its own result file.
    async fn close_if_leading(&self, result: Option<&RunReport>) -> Result<(), StoreError> {
        self.store
            .inner
            .conn
            .bounded(async {
                if self.store.inner.fence.current().is_none() {
                    return Err(fenced(self.location.clone()));
                }
                let client = self.store.client().await?;
                finish_run(&client, &self.run_id, result).await
            })
            .await
    }
}

/// The journal's writer: takes every entry queued, writes them in one fenced statement, and
/// answers each. A batch the lease refuses is refused whole, and no call it announced is made.
async fn write_journal(
    conn: Arc<Connection>,
    fence: Arc<Fence>,
    mut queue: mpsc::UnboundedReceiver<Submitted>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let outcome = conn
            .within(write_batch(&conn, &fence, &batch))
            .await
            .unwrap_or_else(|| Err(Failure::Database(conn.no_answer().to_string())));
        for entry in batch {
            let answer = match &outcome {
                Ok(()) => Ok(()),
                Err(Failure::Fenced) => Err(fenced(format!("database run {}", entry.run_id))),
                Err(Failure::Database(why)) => Err(StoreError::Database(why.clone())),
            };
            let _ = entry.ack.send(answer);
        }
    }
}

enum Failure {
    Fenced,
    Database(String),
}

async fn write_batch(conn: &Connection, fence: &Fence, batch: &[Submitted]) -> Result<(), Failure> {
    // The monotonic deadline first: a node that slept through its lease writes nothing.
    let Some(epoch) = fence.current() else {
        return Err(Failure::Fenced);
    };
    let client = conn
        .client()
        .await
        .map_err(|e| Failure::Database(e.to_string()))?;
    let run_ids: Vec<&str> = batch.iter().map(|e| e.run_id.as_str()).collect();
    let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
    let facts: Vec<&str> = batch.iter().map(|e| e.json.as_str()).collect();
    let node = fence.node();
    let n = client
        .execute(
            "insert into deployd_journal (run_id, seq, epoch, fact)
             select r, s, $4, f::jsonb from unnest($1::text[], $2::int8[], $3::text[]) as t(r, s, f)
             where exists (select 1 from deployd_lease
                           where holder = $5 and epoch = $4 and expires_at > now())",
            &[&run_ids, &seqs, &facts, &epoch, &node],
        )
        .await
        .map_err(|e| Failure::Database(describe(&e)))?;
    if n == 0 {
        fence.step_down();
        return Err(Failure::Fenced);
    }
    Ok(())
}
