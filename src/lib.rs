//! deployd: declarative batch deploys on Huawei Cloud CodeArts Deploy.
//!
//! # Theory of operation
//!
//! Ops teams drop YAML plans into a folder. A plan file becomes a trusted [`plan::Plan`] in one
//! place ([`plan::load`] → [`plan::raw`] → [`plan::validate`]): every rule of the API contract is
//! checked there, before any call. The daemon ([`daemon`]) keeps a [`plan::catalog::Catalog`]
//! of the loaded plans, fed by [`scan`] (what is in the folder, and is it finished being
//! written?) on hints from [`watcher`], a periodic timer and SIGHUP. It fires scheduled plans at
//! the times [`schedule`] computes and run-once plans on arrival (remembered in the [`store`]).
//!
//! A run is the [`executor`]: it resolves params, starts the tasks concurrently through the
//! account-wide [`executor::limits`] (GCRA rate, calls in flight, 429 slow lane), retries what
//! [`executor::retry`] allows, looks unknown outcomes up in the task's history
//! ([`executor::reconcile`]) instead of re-sending blindly, and journals each call's intent
//! before sending it ([`journal`]), so that [`recovery`] can finish a run a crash interrupted.
//! Calls go through the [`api`] client (exact SDK wire bytes, error classification, answers
//! read up to a cap, a daemon-wide guard on refused credentials) with
//! [`auth`] (AK/SK signing, IAM tokens). Every run ends in one [`results`] file, written
//! atomically; [`retention`] prunes old ones.
//!
//! [`emulator`] is a strict local CodeArts Deploy server for the quick start and the tests.
//! [`commands`] holds one module per CLI command ([`cli`]); `main.rs` only dispatches.
//!
//! # Module map
//!
//! | module | owns |
//! |---|---|
//! | [`plan`] | the plan format: raw serde types, validation, loader, catalog diff |
//! | [`schedule`] | cron parsing and DST-correct fire times (pure) |
//! | [`api`] | API field rules, wire bytes, the HTTP client, error parsing, bounded answer reads, the credential guard |
//! | [`auth`] | AK/SK signing (pure) and IAM token refresh |
//! | [`executor`] | one run of one plan: limits, retries, history lookups, following |
//! | [`journal`], [`recovery`] | crash safety: the per-run intent journal's entries (pure), finishing interrupted runs |
//! | [`results`], [`retention`] | result files: model, atomic write, pruning |
//! | [`store`] | the durable state behind one seam: run-once memory, used fires, run journals, learned facts, result index; the state folder implements it |
//! | [`scan`], [`watcher`] | the plans folder: settledness, content hashes, notify hints |
//! | [`scheduler`] | when plans run (pure): fires, overlap, admission, begin retries, used fire times |
//! | [`finish`] | the one way a run ends: result file, journal, metrics, retention |
//! | [`daemon`] | the wiring: catalog, watcher, signals, spawning runs, applying the scheduler's actions, shutdown |
//! | [`settings`] | the config file and flags, validated |
//! | [`metrics`], [`telemetry`], [`signals`] | Prometheus, logging, signal handlers |
//! | [`wall_clock`] | jumps of the host's clock: detected, logged, distrusted for a while |
//! | [`emulator`] | the local CodeArts Deploy server |
//! | [`cli`], [`commands`] | the command line |
//!
//! Small shared pieces: [`secret`] (a string that never prints itself), [`duration`]
//! (`30s`, `10m`).

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
pub mod wall_clock;
pub mod watcher;
pub mod yaml;
