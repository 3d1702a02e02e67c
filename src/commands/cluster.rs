//! `deployd run` as a cluster node (`ha:`): reach the database (trying again while it is
//! down; a refused password or a database too new or too old is a configuration error),
//! bring its schema up to date, open the database store, and start the leadership task. The
//! daemon then runs with the [`Cluster`] this returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::daemon::Cluster;
use crate::ha::config::HaSettings;
use crate::ha::connect::connect;
use crate::ha::leader::{self, PlanCatalog, Presence, Role};
use crate::ha::lease::LeaseTiming;
use crate::ha::schema;
use crate::ha::store::{Connection, Fence, PgStore};
use crate::store::SharedStore;

/// How long to wait before trying an unreachable database again.
const RETRY: Duration = Duration::from_secs(5);

/// A node that joined its cluster.
pub struct Joined {
    /// What the daemon is given.
    pub cluster: Cluster,
    /// The database store, for the executor's journals too.
    pub store: SharedStore,
    /// The leadership task; it releases the lead when `stop` (given to [`join`]) is cancelled.
    pub leadership: JoinHandle<()>,
}

/// Why a node cannot join: what to fix, for exit 78.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinError(String);

/// Joins the cluster `ha` describes. `Ok(None)`: `shutdown` came while the database was
/// still unreachable. The leadership task runs until `stop`.
pub async fn join(
    ha: &HaSettings,
    shutdown: &CancellationToken,
    stop: CancellationToken,
) -> Result<Option<Joined>, JoinError> {
    let password = match &ha.password_file {
        Some(file) => Some(
            crate::api::credentials::read_secret_file(file)
                .map_err(|e| JoinError(format!("ha.password_file: {e}")))?,
        ),
        None => None,
    };
    let application = format!("deployd {}", ha.node);
    // Never a fallback to single-host mode: that could run a fire twice.
    loop {
        match connect(&ha.database, password.as_ref(), &application).await {
            Ok(mut client) => match schema::migrate(&mut client).await {
                Ok(found) if found < schema::known_version() => {
                    info!(
                        from = found,
                        to = schema::known_version(),
                        "the cluster's schema is brought up to date"
                    );
                    break;
                }
                Ok(_) => break,
                Err(e) if e.is_config() => return Err(JoinError(e.to_string())),
                Err(e) => warn!("{e}; trying again in {} s", RETRY.as_secs()),
            },
            Err(e) if e.is_config() => return Err(JoinError(e.to_string())),
            Err(e) => warn!(
                "cannot reach the cluster's database ({e}); trying again in {} s (deployd does not run as a single host meanwhile)",
                RETRY.as_secs()
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(RETRY) => {}
        }
    }
    // No store call waits longer than a lease for the database: past it, the fence has fallen.
    let conn = Arc::new(
        Connection::new(ha.database.clone(), password, &application).with_call_limit(ha.lease),
    );
    let fence = Arc::new(Fence::new(&ha.node));
    let store = loop {
        match PgStore::open(conn.clone(), fence.clone()).await {
            Ok(store) => break store,
            Err(e) => warn!("{e}; trying again in {} s", RETRY.as_secs()),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(RETRY) => {}
        }
    };
    let store: SharedStore = Arc::new(store);
    let (role_tx, role_rx) = watch::channel(Role::Follower);
    let (catalog_tx, catalog_rx) = watch::channel(PlanCatalog::new());
    let presence = Presence {
        conn,
        fence,
        timing: LeaseTiming { lease: ha.lease },
        version: env!("CARGO_PKG_VERSION").to_string(),
        catalog: catalog_rx,
    };
    let leadership = tokio::spawn(leader::run(presence, role_tx, stop));
    info!(
        node = %ha.node,
        database = %ha.database,
        lease_secs = ha.lease.as_secs_f64(),
        "joined the cluster: following until this node takes the lead"
    );
    Ok(Some(Joined {
        cluster: Cluster {
            store: store.clone(),
            role: role_rx,
            catalog: catalog_tx,
            lease: ha.lease,
            catch_up: ha.catch_up,
        },
        store,
        leadership,
    }))
}
