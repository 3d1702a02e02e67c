//! `deployd run`: the daemon under systemd (or in a terminal): settings, the API target,
//! signals, sd-notify, then `daemon::run` until SIGTERM/SIGINT.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Exit, Target, connect, load_settings};
use crate::cli::RunArgs;
use crate::daemon::{self, Control, DaemonParts};

/// How long the exit waits for the leadership task once the daemon is done: a lead not
/// released by then expires on its own (a follower takes it a lease later; nothing is lost).
const LEAVE_LIMIT: Duration = Duration::from_secs(5);

/// Runs the daemon.
pub async fn run(args: RunArgs) -> Exit {
    let RunArgs {
        common,
        metrics_listen,
    } = args;
    // Registered first: a signal that comes during start-up is kept for the loop below.
    let signal_handlers = crate::signals::Signals::new();
    let mut settings = match load_settings(&common) {
        Ok(s) => s,
        Err(e) => {
            error!("bad configuration:\n{e}");
            eprintln!("deployd: bad configuration:\n{e}");
            return Exit::Config;
        }
    };
    let Target { executor, emulator } = match connect(&mut settings, common.emulator).await {
        Ok(t) => t,
        Err(e) => {
            error!("{e:#}");
            eprintln!("deployd: {e:#}");
            return Exit::Config;
        }
    };
    if let Err(e) = std::fs::metadata(&settings.plans_dir).and_then(|m| {
        if m.is_dir() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a folder"))
        }
    }) {
        eprintln!(
            "deployd: plans folder {}: {e}",
            settings.plans_dir.display()
        );
        return Exit::Config;
    }

    raise_open_files_limit();
    let shutdown = CancellationToken::new();
    if let Some(addr) = metrics_listen {
        match crate::metrics::serve(addr, shutdown.clone()).await {
            Ok(bound) => info!("metrics at http://{bound}/metrics"),
            Err(e) => {
                eprintln!("deployd: cannot serve metrics on {addr}: {e}");
                return Exit::Config;
            }
        }
    }
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let signals = tokio::spawn(forward_signals(
        signal_handlers,
        shutdown.clone(),
        reload_tx,
    ));

    // A cluster node: the database first. The lead is released only once the daemon has
    // finished its runs (`leave`), so that no run of this node is recovered by another.
    let leave = CancellationToken::new();
    let joined = match &settings.ha {
        None => None,
        Some(ha) => match super::cluster::join(ha, &shutdown, leave.clone()).await {
            Ok(Some(joined)) => Some(joined),
            Ok(None) => {
                signals.abort();
                return Exit::Ok;
            }
            Err(e) => {
                error!("{e}");
                eprintln!("deployd: {e}");
                signals.abort();
                return Exit::Config;
            }
        },
    };
    let cluster_store = joined.as_ref().map(|j| j.store.clone());
    let executor = match &cluster_store {
        Some(store) => executor.with_store(Some(store.clone())),
        None => executor,
    };

    // SIGHUP rebuilds settings and the executor from the same config file and flags. With
    // --emulator the embedded emulator stays the target.
    let reload_common = common.clone();
    // With --emulator the embedded emulator stays the target (its client and project id).
    let emulator_target = emulator
        .as_ref()
        .map(|e| (executor.client().clone(), e.config().project_id.clone()));
    let reload_store = cluster_store.clone();
    let reloader: daemon::Reloader = Box::new(move || {
        let mut settings = load_settings(&reload_common)?;
        if settings.ha.is_some() != reload_store.is_some() {
            anyhow::bail!(
                "ha: cannot be turned on or off by a reload; restart deployd to join or leave a cluster"
            );
        }
        let executor = match &emulator_target {
            Some((client, project_id)) => {
                settings
                    .executor
                    .project_id
                    .get_or_insert_with(|| project_id.clone());
                settings.executor(client.clone())
            }
            None => {
                let handle = tokio::runtime::Handle::current();
                let mut s = settings.clone();
                let target =
                    tokio::task::block_in_place(|| handle.block_on(connect(&mut s, false)))?;
                target.executor
            }
        };
        // A cluster node journals in the database whatever the reload says of folders.
        let executor = match &reload_store {
            Some(store) => executor.with_store(Some(store.clone())),
            None => executor,
        };
        Ok(DaemonParts { settings, executor })
    });

    let watchdog = watchdog_interval().map(|every| {
        let ping: Box<dyn FnMut() + Send> =
            Box::new(|| notify(&[sd_notify::NotifyState::Watchdog]));
        (every, ping)
    });
    let control = Control {
        shutdown: shutdown.clone(),
        reload: reload_rx,
        on_ready: Box::new(|| notify(&[sd_notify::NotifyState::Ready])),
        on_status: Box::new(|s| notify(&[sd_notify::NotifyState::Status(s)])),
        watchdog,
        cluster: None,
    };
    let (control, leadership) = match joined {
        Some(j) => (
            Control {
                cluster: Some(j.cluster),
                ..control
            },
            Some(j.leadership),
        ),
        None => (control, None),
    };
    let result = daemon::run(DaemonParts { settings, executor }, control, Some(reloader)).await;
    leave.cancel();
    if let Some(task) = leadership {
        // It only has the lead to release (bounded to 2 s) and a round of calls to finish
        // (each bounded to a third of the lease): never a reason to hold the exit longer.
        if tokio::time::timeout(LEAVE_LIMIT, task).await.is_err() {
            tracing::warn!("the cluster's leadership task did not end in time; exiting anyway");
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    signals.abort();
    drop(emulator);
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            error!("{e:#}");
            eprintln!("deployd: {e:#}");
            Exit::Config
        }
    }
}

/// SIGTERM/SIGINT cancel `shutdown` (and win over a SIGHUP that came with them); SIGHUP
/// sends a reload request (one pending request stands for any number of SIGHUPs).
async fn forward_signals(
    mut signals: crate::signals::Signals,
    shutdown: CancellationToken,
    reload: mpsc::Sender<()>,
) {
    loop {
        match signals.next().await {
            crate::signals::Arrived::Terminate(name) => {
                info!("{name} received: shutting down");
                notify(&[sd_notify::NotifyState::Stopping]);
                shutdown.cancel();
                return;
            }
            crate::signals::Arrived::Reload => {
                let _ = reload.try_send(());
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one (systemd's default soft limit, 1024, is
/// low for a daemon that keeps a journal open per run); `max_runs` is sized from the result.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(open_files = limit, "open-files limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
}

/// Half the systemd watchdog period, when `WatchdogSec=` is set for this process.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Tells systemd (a no-op outside a `Type=notify` unit).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(false, state);
}
