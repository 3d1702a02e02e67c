//! Leadership and presence: the task that takes, renews and gives up this node's lead, and
//! publishes its heartbeat and its catalog of plans, every lease/3. Every database call is
//! bounded by that period, so a hung connection (a cut cable) costs one period and a new
//! connection, never the lead's safety: the fence ([`Fence`]) stops calls at lease*2/3 after the
//! last renewal sent, on the monotonic clock, whatever the database or this task does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lease::{self, Held, LeaseTiming};
use super::store::{Connection, Fence};

/// How long after the lead's expiry (database clock) a follower asks for it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(50);

/// What this node is in the cluster now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another node leads, or none: load and check plans, publish them, wait.
    Follower,
    /// This node leads with `epoch`.
    Leader {
        /// The fencing token.
        epoch: i64,
        /// When the previous lead expired (database clock), if there was one: the start of
        /// the takeover's catch-up window.
        previous_expiry: Option<DateTime<Utc>>,
        /// How far this host's clock is ahead of the database's (negative: behind), measured
        /// when the lead was taken, and how uncertain that is (half the round trip).
        clock_skew: Option<(chrono::TimeDelta, chrono::TimeDelta)>,
    },
}

/// A node's plans as it publishes them: name → content SHA-256.
pub type PlanCatalog = BTreeMap<String, String>;

/// What the leadership task needs.
pub struct Presence {
    /// The database.
    pub conn: Arc<Connection>,
    /// This node's fence, shared with the journal writer.
    pub fence: Arc<Fence>,
    /// The lease.
    pub timing: LeaseTiming,
    /// deployd's version, published with the heartbeat.
    pub version: String,
    /// The node's plans, as the daemon last loaded them.
    pub catalog: watch::Receiver<PlanCatalog>,
}

/// Runs until `shutdown`: takes the lead when it is free, renews it while held, steps down
/// when a renewal fails past the fence's deadline or finds the lead taken; sends each change
/// of role on `role`. On shutdown a held lead is released, so a follower takes over at once.
pub async fn run(presence: Presence, role: watch::Sender<Role>, shutdown: CancellationToken) {
    let Presence {
        conn,
        fence,
        timing,
        version,
        catalog,
    } = presence;
    let period = timing.renew_every();
    let started_at = Utc::now();
    let metrics = crate::metrics::global();
    metrics.ha_leader(false);
    let mut held: Option<Held> = None;
    // A follower's next look: just after the current lead expires, if sooner than a period.
    let mut follower_wake: Option<Instant> = None;
    // Plans that differ between nodes, as last warned about.
    let mut warned: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    loop {
        // A shutdown wins over the next round of calls (each may wait up to a period).
        if shutdown.is_cancelled() {
            break;
        }
        let sent = Instant::now();
        match held {
            None => match bounded(period, &conn, |c| {
                let node = fence.node().to_string();
                async move { lease::try_acquire(&*c, &node, timing, sent).await }
            })
            .await
            {
                Ok(Some(h)) => {
                    // The database's `now()` was read somewhere within the round trip: this
                    // host's clock at its middle is compared with it.
                    let half = chrono::TimeDelta::from_std(sent.elapsed() / 2).unwrap_or_default();
                    let clock_skew = h.database_now.map(|db| (Utc::now() - half - db, half));
                    fence.lead(h.epoch, h.calls_until);
                    held = Some(h);
                    metrics.ha_leader(true);
                    metrics.takeover();
                    info!(node = fence.node(), epoch = h.epoch, "this node leads now");
                    let _ = role.send(Role::Leader {
                        epoch: h.epoch,
                        previous_expiry: h.previous_expiry,
                        clock_skew,
                    });
                }
                Ok(None) => {
                    // Taking over the moment the lead expires, not up to a period later.
                    let left =
                        bounded(period, &conn, |c| async move { lease::current(&*c).await }).await;
                    if let Ok(Some((_, _, secs))) = left {
                        let wait = Duration::from_secs_f64(secs.max(0.0)) + EXPIRY_MARGIN;
                        follower_wake = Some(Instant::now() + wait.min(period));
                    }
                }
                Err(e) => warn!("cannot ask the database for the lead: {e}"),
            },
            Some(h) => {
                let renewed = bounded(period, &conn, |c| {
                    let node = fence.node().to_string();
                    async move { lease::renew(&*c, &node, h.epoch, timing, sent).await }
                })
                .await;
                metrics.lease_renewal(matches!(renewed, Ok(Some(_))));
                match renewed {
                    Ok(Some(next)) if fence.epoch() == Some(h.epoch) => {
                        fence.lead(next.epoch, next.calls_until);
                        held = Some(Held {
                            previous_expiry: h.previous_expiry,
                            database_now: h.database_now,
                            ..next
                        });
                    }
                    // The journal writer was fenced meanwhile: the lead is not ours.
                    Ok(Some(_)) => {
                        step_down(&fence, &role, &mut held, "the database refused a write");
                    }
                    Ok(None) => {
                        step_down(&fence, &role, &mut held, "another node holds the lead");
                    }
                    Err(e) if Instant::now() >= h.calls_until => {
                        let why = format!("the lease could not be renewed in time ({e})");
                        step_down(&fence, &role, &mut held, &why);
                    }
                    Err(e) => warn!("cannot renew the lease yet: {e}"),
                }
            }
        }
        let beat = catalog.borrow().clone();
        if let Err(e) = bounded(period, &conn, |c| {
            let (node, version) = (fence.node().to_string(), version.clone());
            async move { heartbeat(&c, &node, &version, started_at, &beat).await }
        })
        .await
        {
            warn!("cannot publish this node's heartbeat: {e}");
        }
        if held.is_some() {
            warn_divergent(&conn, period, &mut warned).await;
        }
        // Wake for the next renewal, or at the fence's deadline to step down on time.
        let mut wake = sent + period;
        if let Some(h) = held {
            wake = wake.min(h.calls_until.max(Instant::now()));
        } else if let Some(at) = follower_wake.take() {
            wake = wake.min(at);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    if let Some(h) = held.take() {
        fence.step_down();
        metrics.ha_leader(false);
        let _ = role.send(Role::Follower);
        let released = bounded(Duration::from_secs(2), &conn, |c| {
            let node = fence.node().to_string();
            async move { lease::release(&*c, &node, h.epoch).await }
        })
        .await;
        match released {
            Ok(()) => info!("the lead is released for another node to take at once"),
            Err(e) => warn!("cannot release the lead ({e}); another node takes it when it expires"),
        }
    }
}

/// The leader warns once about each plan whose content differs between nodes (and again when
/// the difference changes): it runs its own version.
async fn warn_divergent(
    conn: &Connection,
    period: Duration,
    warned: &mut BTreeMap<String, BTreeMap<String, String>>,
) {
    let Ok(status) = bounded(period, conn, |c| async move {
        super::status::read(&c, String::new()).await
    })
    .await
    else {
        return;
    };
    let now: BTreeMap<String, BTreeMap<String, String>> = status
        .divergent
        .into_iter()
        .map(|d| (d.plan, d.content))
        .collect();
    for (plan, content) in &now {
        if warned.get(plan) != Some(content) {
            let versions: Vec<String> = content
                .iter()
                .map(|(node, sha)| format!("{node}: {}", &sha[..sha.len().min(12)]))
                .collect();
            warn!(
                plan,
                "the plan's content differs between nodes ({}); the leader runs its own version",
                versions.join(", ")
            );
        }
    }
    *warned = now;
}

fn step_down(fence: &Fence, role: &watch::Sender<Role>, held: &mut Option<Held>, why: &str) {
    fence.step_down();
    *held = None;
    crate::metrics::global().ha_leader(false);
    warn!(
        node = fence.node(),
        "this node steps down: {why}; no call starts here any more"
    );
    let _ = role.send(Role::Follower);
}

/// One database call, given up after `limit` (the connection is then dropped, to be opened
/// again: a call that hung once may hang again).
async fn bounded<T, F, Fut>(limit: Duration, conn: &Connection, call: F) -> Result<T, String>
where
    F: FnOnce(Arc<tokio_postgres::Client>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let attempt = async {
        let client = conn.client().await.map_err(|e| e.to_string())?;
        call(client).await
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            conn.reset().await;
            Err(e)
        }
        Err(_) => {
            conn.reset().await;
            Err(format!("no answer within {} ms", limit.as_millis()))
        }
    }
}

/// Publishes this node: version, start, heartbeat (database clock) and its plans.
async fn heartbeat(
    client: &tokio_postgres::Client,
    node: &str,
    version: &str,
    started_at: DateTime<Utc>,
    plans: &PlanCatalog,
) -> Result<(), String> {
    let plans = serde_json::to_value(plans).unwrap_or_default();
    client
        .execute(
            "insert into deployd_nodes (node, version, started_at, heartbeat_at, plans)
             values ($1, $2, $3, now(), $4)
             on conflict (node) do update
                 set version = excluded.version, started_at = excluded.started_at,
                     heartbeat_at = now(), plans = excluded.plans",
            &[&node, &version, &started_at, &plans],
        )
        .await
        .map(|_| ())
        .map_err(|e| super::connect::describe(&e))
}
