//! What `deployd status` shows of a cluster, read from its database: the nodes with their
//! heartbeat and version, the lead and its lease, and the plans whose content differs
//! between nodes. Read-only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::connect::describe;

/// A node, as its last heartbeat says.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Its name.
    pub node: String,
    /// deployd's version on it.
    pub version: String,
    /// When it started (its own clock).
    pub started_at: DateTime<Utc>,
    /// Seconds since its last heartbeat, on the database's clock.
    pub heartbeat_age_secs: f64,
    /// How many plans it loaded.
    pub plans: usize,
}

/// The lead.
#[derive(Debug, Clone, Serialize)]
pub struct LeadStatus {
    /// The node holding it.
    pub holder: String,
    /// Its epoch.
    pub epoch: i64,
    /// Seconds until it expires unless renewed (negative: expired, no node leads).
    pub expires_in_secs: f64,
}

/// A plan whose content is not the same on every node that loaded it.
#[derive(Debug, Clone, Serialize)]
pub struct Divergent {
    /// The plan.
    pub plan: String,
    /// Node → content SHA-256 (nodes without the plan are left out).
    pub content: BTreeMap<String, String>,
}

/// The cluster's state.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The database, as a URL without password.
    pub database: String,
    /// Every node that ever joined, by name.
    pub nodes: Vec<NodeStatus>,
    /// The lead, if any node ever took it.
    pub lead: Option<LeadStatus>,
    /// Plans that differ between nodes.
    pub divergent: Vec<Divergent>,
}

/// Reads the cluster's state.
pub async fn read(client: &Client, database: String) -> Result<ClusterStatus, String> {
    let rows = client
        .query(
            "select node, version, started_at,
                    extract(epoch from now() - heartbeat_at)::float8, plans
             from deployd_nodes order by node",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let mut nodes = Vec::new();
    let mut by_plan: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in rows {
        let node: String = row.get(0);
        let plans: BTreeMap<String, String> =
            serde_json::from_value(row.get(4)).unwrap_or_default();
        for (plan, sha) in &plans {
            by_plan
                .entry(plan.clone())
                .or_default()
                .insert(node.clone(), sha.clone());
        }
        nodes.push(NodeStatus {
            node,
            version: row.get(1),
            started_at: row.get(2),
            heartbeat_age_secs: row.get(3),
            plans: plans.len(),
        });
    }
    let lead = super::lease::current(client)
        .await?
        .map(|(holder, epoch, expires_in_secs)| LeadStatus {
            holder,
            epoch,
            expires_in_secs,
        });
    let divergent = by_plan
        .into_iter()
        .filter(|(_, content)| {
            let mut shas = content.values();
            let first = shas.next();
            shas.any(|s| Some(s) != first)
        })
        .map(|(plan, content)| Divergent { plan, content })
        .collect();
    Ok(ClusterStatus {
        database,
        nodes,
        lead,
        divergent,
    })
}
