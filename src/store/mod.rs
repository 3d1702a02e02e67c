//! The daemon's durable state, behind one seam: the run-once memory, the used fire times, the
//! run journals (and crash recovery's reading of them), learned facts (the service's time zone)
//! and the index of results that `deployd status` reads. [`Store`] is the contract; the state
//! folder ([`folder::FolderStore`]) is its only implementation for now. Nothing else knows how
//! the state is laid out. The journal's entry model ([`crate::journal`]) stays pure types;
//! this module must not use the executor, the daemon or the API client.
//!
//! # Why `Arc<dyn Store>` with `async-trait`
//!
//! The daemon, the executor, crash recovery and `status` hold a [`SharedStore`] (one pointer
//! to clone), and a second implementation (PostgreSQL, see below; or a fault-injecting fake in
//! a test) plugs in without touching them. An enum over implementations would save one boxed
//! future per call, but a call to the store is a file write with an fsync or a database round
//! trip: the box is noise. The one hot path, the journal append before every start call, does
//! not box at all: [`RunJournal::append`] serialises the entry and hands the bytes to the
//! implementation's group-commit writer ([`JournalWriter::submit`]), then awaits its
//! acknowledgement, as the journal always did.
//!
//! # How a PostgreSQL implementation maps (`/work/shared/docs/HA.md`)
//!
//! | method | state folder | PostgreSQL |
//! |---|---|---|
//! | [`Store::ran_once`], [`Store::claim_once`] | `once/<plan>/<sha256>` holds the run id | `deployd_claims (plan, slot = 'sha256:<hex>')`; the claim is `insert ... on conflict do nothing`, zero rows = [`Claim::Taken`] |
//! | [`Store::fired`], [`Store::claim_fire`] | `fires/<plan>.json`, the newest [`FIRES_KEPT`] | `deployd_claims (plan, slot = <fire time, RFC 3339>)`, same claim |
//! | [`Store::create_journal`], [`RunJournal`] | `runs/<run id>.jsonl`, `flock`ed while alive, `fdatasync` per batch | `deployd_journal (run_id, seq, epoch, fact)`: each batch of entries is one transaction whose insert is fenced on the lease (`where exists (select 1 from deployd_lease where holder = $me and epoch = $e and expires_at > now())`); zero rows = [`StoreError::Fenced`] for every entry of the batch, and no call is made |
//! | [`RunJournal::finish`] | removes the journal (the result file is the index) | inserts the `deployd_runs` row with the result and closes the journal, in one transaction |
//! | [`RunJournal::keep_result`] | `runs/<run id>.result.json` | the `deployd_runs` row, without the journal |
//! | [`Store::unfinished`], [`Store::close_unfinished`] | journals not locked by a live process | runs of an epoch older than the lease's with no `deployd_runs` row, replayed in `seq` order through [`crate::journal::Replay`] |
//! | [`Store::learned_zone`], [`Store::keep_learned_zone`] | `service-zone.json` | `deployd_facts ('service_zone')`, read when connecting, written behind (see the methods) |
//! | [`Store::plans_with_results`], [`Store::plan_runs`] | the results folder's `<plan>/<run id>.json` | `deployd_runs` |
//!
//! The daemon's lock on the state folder ([`folder::FolderStore::lock_for_daemon`]) is not in
//! the trait: on a database, who may act is the lease's business, not the store's.

pub mod folder;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::journal::{Entry, RunHeader, Unfinished};
use crate::results::{RunId, RunReport};

/// The store as the daemon, the executor, recovery and `status` hold it.
pub type SharedStore = Arc<dyn Store>;

/// Used fire times kept per plan (a clock set back further than this many fires may repeat
/// the oldest).
pub const FIRES_KEPT: usize = 64;

/// What a claim got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Recorded now, for the caller: it may run.
    Won,
    /// Recorded already (by this run id, when known): it must not run again.
    Taken(Option<RunId>),
}

/// Why the store could not answer or record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A folder or file could not be created or used.
    #[error("state folder {path}: {source}")]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something could not be read (`what` names it: a path, "the results folder ...").
    #[error("cannot read {what}: {source}")]
    Read {
        /// What could not be read.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Write(#[from] crate::results::WriteError),
    /// A record that cannot be read as what it should hold. The folder keeps the file aside.
    #[error("{what} is damaged ({why})")]
    Corrupt {
        /// Where it is (a path for the folder).
        what: String,
        /// What is wrong.
        why: String,
        /// When it was last written (every fire time it held is at or before this).
        modified: Option<DateTime<Utc>>,
    },
    /// Another daemon holds the state folder.
    #[error(
        "the state folder {path} belongs to another running deployd ({holder}); one state folder serves one daemon: stop the other one, or give this one its own --state-dir"
    )]
    Locked {
        /// The state folder.
        path: std::path::PathBuf,
        /// Who holds it, as its lock file says.
        holder: String,
    },
    /// A run journal could not be created, written or removed.
    #[error("run journal {location}: {source}")]
    Journal {
        /// Where the journal is (its file for the folder).
        location: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be used (a database store only).
    #[error("database: {0}")]
    Database(String),
    /// The journal refused an entry because this process no longer holds the lead (a database
    /// store's fencing): the call it announced must not be made, and the process steps down.
    /// The state folder never answers this (one daemon per folder, by its lock).
    #[error("run journal {location}: fenced: not the leader any more (another node took over)")]
    Fenced {
        /// The journal.
        location: String,
    },
}

/// The learned zone of the service's record times, as kept among the learned facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedZone {
    /// Seconds east of UTC.
    pub utc_offset_secs: i32,
    /// When it was learned.
    pub learned_at: DateTime<Utc>,
    /// The record that proved it.
    pub record_id: String,
}

/// The fields of a run's result that `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRun {
    /// Run id.
    pub run_id: String,
    /// `succeeded`, `partial`, `failed` or `interrupted`.
    pub status: String,
    /// `schedule`, `arrival` or `manual`.
    pub trigger: String,
    /// Start (RFC 3339 UTC).
    pub started_at: DateTime<Utc>,
    /// End (RFC 3339 UTC).
    pub finished_at: DateTime<Utc>,
    /// Task counts.
    pub summary: Counts,
}

/// Task counts of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Counts {
    /// Tasks in the plan.
    pub total: usize,
    /// Tasks started.
    pub started: usize,
    /// Tasks failed.
    pub failed: usize,
    /// Tasks skipped.
    pub skipped: usize,
}

/// One plan's entry in the index of results.
#[derive(Debug, Clone, Default)]
pub struct PlanRuns {
    /// Results kept for the plan.
    pub count: usize,
    /// The newest result, or why it cannot be read (naming where it is).
    pub last: Option<Result<LastRun, String>>,
}

/// The durable state. Every method is safe to call from concurrent tasks.
///
/// Claims are "record unless already recorded, and say whether we got it": the shape a unique
/// key gives a database, and what a run needs before its first call.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The run that already ran this content of a run-once plan, if any.
    async fn ran_once(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, StoreError>;

    /// Records, durably, that `run_id` runs this content of a run-once plan, unless a run
    /// already did ([`Claim::Taken`]). Called after the run's journal is created and before
    /// its first call.
    async fn claim_once(
        &self,
        plan: &str,
        sha256: &str,
        run_id: &RunId,
    ) -> Result<Claim, StoreError>;

    /// The fire times of a scheduled plan already used (run or skipped), oldest first: a fire
    /// time in it never runs again, across disable/enable and restarts, whatever the clock
    /// does. A damaged memory is [`StoreError::Corrupt`], reported once (the folder keeps the
    /// file aside) and empty afterwards.
    async fn fired(&self, plan: &str) -> Result<Vec<DateTime<Utc>>, StoreError>;

    /// Records, durably, a fire time of a plan as used, unless it already is
    /// ([`Claim::Taken`]). The newest [`FIRES_KEPT`] are kept. A fire time that could not be
    /// made durable (`Err`) still counts as used in this process.
    async fn claim_fire(&self, plan: &str, at: DateTime<Utc>) -> Result<Claim, StoreError>;

    /// [`Store::claim_fire`] again, after its answer was lost (an error): a claim this very
    /// holder made and kept, and that no run began yet, is [`Claim::Won`] this time. Only
    /// for that retry: a second claim of a fire time otherwise stays [`Claim::Taken`].
    async fn claim_fire_again(&self, plan: &str, at: DateTime<Utc>) -> Result<Claim, StoreError> {
        self.claim_fire(plan, at).await
    }

    /// Records a fire time claimed with [`Store::claim_fire`] as skipped (overlap, missed): a
    /// takeover must not give it back to run. The state folder keeps no such difference.
    async fn fire_skipped(&self, _plan: &str, _at: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(())
    }

    /// At a takeover: gives back the fire times an earlier leader claimed to run and never
    /// began (killed between the claim and the run's journal), so that the catch-up runs them;
    /// how many. The state folder has no earlier leader.
    async fn release_unbegun_fires(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Creates the journal of a new run, with its header durable, marked alive (recovery
    /// leaves it alone while this process holds it).
    async fn create_journal(&self, header: &RunHeader) -> Result<RunJournal, StoreError>;

    /// Every journal whose run is not alive, read back (a torn last entry is ignored), and
    /// the journals that cannot be read (one line each, naming them), left as they are. A
    /// journal that holds no call is removed.
    async fn unfinished(&self) -> (Vec<Unfinished>, Vec<String>);

    /// Closes an unfinished run whose result (`result`) is now written: its journal (and any
    /// result kept beside it) goes; a store that indexes results keeps `result`.
    async fn close_unfinished(
        &self,
        run: &Unfinished,
        result: &RunReport,
    ) -> Result<(), StoreError>;

    /// The zone of the service's record times an earlier process learned, if any.
    ///
    /// Learned facts are synchronous on purpose: they are hints (a learned zone is trusted only
    /// once this process's own record confirms it), read when the service clock is attached
    /// and written from its lock, where no await can be. A database implementation answers
    /// them from the facts it loaded when it connected, and writes them behind, on its own
    /// task: a write lost in a crash costs one status query to learn the zone again.
    fn learned_zone(&self) -> Result<Option<LearnedZone>, StoreError>;

    /// Keeps the learned zone for later processes.
    fn keep_learned_zone(&self, zone: &LearnedZone) -> Result<(), StoreError>;

    /// Whether a call may be sent now. Checked right after each call's intent is durable and
    /// right before it is sent: a database store answers no once this node's lead is past its
    /// deadline (a node paused between the two, by SIGSTOP or a suspend, sends nothing when it
    /// wakes). The state folder always may.
    fn may_call(&self) -> bool {
        true
    }

    /// The names of the plans with results in the index (none when nothing ran yet).
    async fn plans_with_results(&self) -> Result<Vec<String>, StoreError>;

    /// One plan's results: how many are kept and the newest (read only as far as `status`
    /// needs, so a huge result costs neither time nor memory).
    async fn plan_runs(&self, plan: &str) -> Result<PlanRuns, StoreError>;
}

/// The acknowledgement of one journal entry: `Ok` once it is durable.
pub type JournalAck = oneshot::Receiver<Result<(), StoreError>>;

/// What an implementation provides for a live run's journal. Entries arrive already
/// serialised (one JSON object each, the [`Entry`] model), so the hot path is the same for
/// every store: submit, then await the acknowledgement. Implementations group-commit: one
/// `fdatasync` (or one fenced transaction) covers every entry queued meanwhile.
#[async_trait::async_trait]
pub trait JournalWriter: Send + Sync {
    /// Where the journal is, for messages.
    fn location(&self) -> &str;

    /// Queues one entry (its JSON, without a line end) that a call waits for (an intent): it
    /// is made durable as soon as the writer can. After one failed write every later entry is
    /// refused: nothing is appended after a possibly torn one, so no call is made that the
    /// journal could not record.
    fn submit(&self, json: Vec<u8>) -> Result<JournalAck, StoreError>;

    /// Queues one entry that no call waits for (an answer, a task's end, the run's result):
    /// it may wait a little (the folder: at most [`folder::journal::LINGER`]) for an entry that a call
    /// waits for, to share its `fdatasync`. It is acknowledged, like any entry, only once it
    /// is durable; entries stay in the order they were queued.
    fn submit_unhurried(&self, json: Vec<u8>) -> Result<JournalAck, StoreError> {
        self.submit(json)
    }

    /// Keeps the run's result with the journal when the journal itself takes no more entries
    /// (the folder: a file beside it).
    async fn keep_result(&self, report: &RunReport) -> Result<(), StoreError>;

    /// Ends the journal: the run's result is written (`Some`), or the run never began and
    /// made no call (`None`). The journal goes, with any result kept beside it.
    async fn close(self: Box<Self>, result: Option<&RunReport>) -> Result<(), StoreError>;
}

/// The journal of one live run. Dropping it without [`RunJournal::finish`] or
/// [`RunJournal::discard`] leaves it for recovery (that is what a crash does too).
pub struct RunJournal {
    writer: Box<dyn JournalWriter>,
}

impl std::fmt::Debug for RunJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunJournal")
            .field("location", &self.writer.location())
            .finish()
    }
}

impl RunJournal {
    /// A journal written by `writer`.
    pub fn new(writer: Box<dyn JournalWriter>) -> Self {
        Self { writer }
    }

    /// Where the journal is (its file for the folder).
    pub fn location(&self) -> &str {
        self.writer.location()
    }

    /// Appends an entry and waits until it is durable. A database store may refuse it with
    /// [`StoreError::Fenced`]. An intent is made durable at once (its call waits for it); any
    /// other entry may wait a little to share the sync of the next intent
    /// ([`JournalWriter::submit_unhurried`]).
    pub async fn append(&self, entry: &Entry) -> Result<(), StoreError> {
        let journal_error = |source| StoreError::Journal {
            location: self.location().to_string(),
            source,
        };
        let json = serde_json::to_vec(entry).map_err(|e| journal_error(e.into()))?;
        let ack = match entry {
            Entry::Intent { .. } => self.writer.submit(json)?,
            _ => self.writer.submit_unhurried(json)?,
        };
        ack.await
            .map_err(|_| journal_error(std::io::Error::other("journal writer stopped")))?
    }

    /// Keeps the run's result with a journal that takes no more entries.
    pub async fn keep_result(&self, report: &RunReport) -> Result<(), StoreError> {
        self.writer.keep_result(report).await
    }

    /// The run's result is written: the journal is no longer needed.
    pub async fn finish(self, report: &RunReport) -> Result<(), StoreError> {
        self.writer.close(Some(report)).await
    }

    /// The run never began (no call was made): its journal goes.
    pub async fn discard(self) -> Result<(), StoreError> {
        self.writer.close(None).await
    }
}
