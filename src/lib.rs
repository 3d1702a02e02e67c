//! deployd: declarative batch deploys on Huawei Cloud CodeArts Deploy.
//!
//! # Theory of operation
//!
//! Ops teams drop YAML plans into a folder. A plan file becomes a trusted [`plan::Plan`] in one
//! place ([`plan::load`] → [`plan::raw`] → [`plan::validate`]): every rule of the API contract is
//! checked there, before any call; a problem is an [`issue::Issue`] at its line and field, as
//! for the config file ([`settings`], [`yaml`]). The daemon ([`daemon`], the wiring) keeps a
//! [`plan::catalog::Catalog`] of the loaded plans, fed by [`scan`] (what is in the folder, and
//! is it finished being written?) on hints from [`watcher`], a periodic timer and SIGHUP. The
//! [`scheduler`] (pure: events and the time in, actions out) decides when each plan runs: at
//! the fire times [`schedule`] computes, or once on arrival for a plan without a schedule.
//!
//! A run is the [`executor`]: it resolves params, starts the tasks concurrently through one
//! limited client ([`executor::limited`]: the account-wide [`executor::limits`], GCRA rate
//! ([`executor::gcra`], slots booked when asked),
//! calls in flight, 429 slow lane and `Retry-After`, for every call), retries what
//! [`executor::retry`] allows, looks unknown outcomes up in the task's history
//! ([`executor::reconcile`]) instead of re-sending blindly, and journals each call's intent
//! before sending it ([`journal`], kept by the [`store`]), so that [`recovery`] can finish a
//! run a crash interrupted. Calls go through the [`api`] client (exact SDK wire bytes signed
//! by [`auth`], error classification, answers read up to a cap, IAM tokens, a daemon-wide guard
//! on refused credentials). Every run ends in one [`results`] file, written atomically by
//! [`finish`]; [`retention`] prunes old ones.
//!
//! [`emulator`] is a strict local CodeArts Deploy server for the quick start and the tests.
//! [`commands`] holds one module per CLI command ([`cli`]); `main.rs` only dispatches. [`ha`]
//! is the high-availability groundwork on PostgreSQL (not in use by `deployd run` yet).
//!
//! # Words
//!
//! A *run-once plan* is a plan without `schedule`: it runs once per content, when it arrives or
//! changes; the run's trigger is then `arrival` ([`results::Trigger::Arrival`], the result
//! file's word). A *fire* is one fire time of a scheduled plan (trigger `schedule`). A *claim*
//! records a fire time or a run-once content as used, at most once ([`store::Claim`]).
//!
//! # Module map
//!
//! | module | owns |
//! |---|---|
//! | [`plan`] | the plan format: raw serde types, validation, loader, catalog diff |
//! | [`issue`], [`yaml`] | problems in files users write; YAML budgets and field positions |
//! | [`value_files`] | opening `value_from.file` files safely (no `/proc`, FIFOs, secrets) |
//! | [`schedule`] | cron parsing and DST-correct fire times (pure) |
//! | [`zone`] | IANA time zones from the bundled database: offsets, local times (pure) |
//! | [`api`] | API field rules, wire bytes, the HTTP client, credentials and IAM tokens, error parsing, bounded answer reads, the credential guard, the service's clock |
//! | [`auth`] | AK/SK signing (pure): the one RFC 3986 encoder and canonical query |
//! | [`executor`] | one run of one plan: the limited client, limits, retries, history lookups, following |
//! | [`journal`], [`recovery`] | crash safety: the per-run intent journal's entries (pure), finishing interrupted runs |
//! | [`results`], [`retention`] | result files: model, atomic write, pruning |
//! | [`store`] | the durable state behind one seam: run-once memory, used fires, run journals, learned facts, result index; the state folder implements it |
//! | [`scan`], [`watcher`] | the plans folder: settledness, content hashes, notify hints |
//! | [`scheduler`] | when plans run (pure): fires, overlap, admission, begin retries, used fire times |
//! | [`finish`] | the one way a run ends: result file, journal, metrics, retention |
//! | [`daemon`] | the wiring: catalog, watcher, signals, spawning runs, applying the scheduler's actions, shutdown |
//! | [`settings`] | the config file and flags, validated; the one place an executor is built |
//! | [`ha`] | high availability: settings, connection, schema, lease, the PostgreSQL store |
//! | [`metrics`], [`telemetry`], [`signals`] | Prometheus, logging, signal handlers |
//! | [`wall_clock`] | jumps of the host's clock: detected, logged, distrusted for a while |
//! | [`emulator`] | the local CodeArts Deploy server |
//! | [`cli`], [`commands`] | the command line |
//!
//! Small shared pieces: [`secret`] (a string that never prints itself), [`duration`]
//! (`30s`, `10m`).
//!
//! # Layers
//!
//! Imports only point down this list, or within a line without a cycle (`scripts/imports.py`
//! checks it, in CI):
//!
//! 1. `main.rs`, [`cli`], [`commands`]
//! 2. [`daemon`], [`recovery`]
//! 3. [`settings`] (turns the config into values of the layers below, and builds the executor)
//! 4. [`ha`]
//! 5. [`scheduler`], [`finish`], [`executor`] (every call through [`executor::limited`])
//! 6. [`scan`], [`watcher`], [`plan::catalog`]
//! 7. [`api::client`] → [`api::credentials`] → [`api::iam`]; [`api::service_clock`]
//! 8. [`store`], [`journal`], [`retention`]
//! 9. [`plan`], [`value_files`], [`results`], [`schedule`]
//! 10. [`emulator`] (uses only API rules, wire bytes and the signer, below)
//! 11. leaves: the rest of [`api`] (rules, wire, types, endpoint, pace, body, errors, guard),
//!     [`auth`], [`issue`], [`yaml`], [`secret`], [`duration`], [`wall_clock`], [`signals`],
//!     [`telemetry`], [`metrics`], [`zone`]

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod duration;
pub mod emulator;
pub mod executor;
pub mod finish;
pub mod ha;
pub mod issue;
pub mod journal;
pub mod metrics;
pub mod plan;
pub mod recovery;
pub mod results;
pub mod retention;
pub mod scan;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod settings;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod value_files;
pub mod wall_clock;
pub mod watcher;
pub mod yaml;
pub mod zone;
