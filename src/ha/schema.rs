//! The cluster's tables, as numbered migrations embedded in the binary. Whichever node starts
//! first applies the missing ones, all in one transaction under an advisory lock, so nodes
//! starting together apply each migration once; a node finding a newer schema than it knows
//! refuses to start instead of writing to tables it does not understand.

use tokio_postgres::Client;

use super::connect::describe;

/// Oldest PostgreSQL accepted (the contract: 13 or newer).
pub const MIN_SERVER_VERSION: i32 = 130_000;

/// The advisory lock key migrations are applied under ("deployd" in ASCII).
const MIGRATION_LOCK: i64 = 0x0064_6570_6c6f_7964;

/// The migrations, in order: migration `i` (0-based) brings the schema to version `i + 1`.
/// Never edit one that has shipped; add the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: the lease, the nodes, claims, the journal, runs and learned facts (HA.md).
    r"
    create table deployd_lease (
        id boolean primary key default true check (id),
        holder text not null,
        epoch bigint not null,
        expires_at timestamptz not null
    );
    create table deployd_nodes (
        node text primary key,
        version text not null,
        started_at timestamptz not null,
        heartbeat_at timestamptz not null,
        plans jsonb not null default '{}'
    );
    create table deployd_claims (
        plan text not null,
        slot text not null,
        run_id text not null,
        claimed_by text not null,
        epoch bigint not null,
        claimed_at timestamptz not null default now(),
        primary key (plan, slot)
    );
    create table deployd_journal (
        run_id text not null,
        seq bigint not null,
        epoch bigint not null,
        fact jsonb not null,
        written_at timestamptz not null default now(),
        primary key (run_id, seq)
    );
    create table deployd_runs (
        run_id text primary key,
        plan text not null,
        node text not null,
        epoch bigint not null,
        status text,
        started_at timestamptz not null,
        finished_at timestamptz,
        result jsonb
    );
    create index deployd_runs_plan on deployd_runs (plan, started_at desc);
    create table deployd_facts (
        key text primary key,
        value jsonb not null,
        learned_at timestamptz not null default now()
    );
    ",
];

/// The schema version this binary writes.
pub fn known_version() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database holds a newer schema than this binary knows (a newer deployd wrote it).
    #[error(
        "the database's deployd schema is version {found}, newer than this deployd knows ({known}): upgrade deployd on this host; nothing was written"
    )]
    Newer {
        /// The version in the database.
        found: i32,
        /// The newest version this binary knows.
        known: i32,
    },
    /// PostgreSQL is older than 13.
    #[error("PostgreSQL {found} is too old: deployd needs 13 or newer")]
    ServerTooOld {
        /// `server_version` as the server says it.
        found: String,
    },
    /// A statement failed.
    #[error("schema migration: {0}")]
    Sql(String),
}

impl SchemaError {
    /// Whether this is a configuration problem (exit 78) rather than a passing failure.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Newer { .. } | Self::ServerTooOld { .. })
    }
}

fn sql(e: tokio_postgres::Error) -> SchemaError {
    SchemaError::Sql(describe(&e))
}

/// Brings the schema to [`known_version`], applying the missing migrations in one
/// transaction; returns the version found before. Safe to call from several nodes at once.
pub async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(sql)?;
    let (number, text): (i32, String) = (row.get(0), row.get(1));
    if number < MIN_SERVER_VERSION {
        return Err(SchemaError::ServerTooOld { found: text });
    }
    let tx = client.transaction().await.map_err(sql)?;
    // Nodes starting together queue here; the second finds the work done.
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(sql)?;
    tx.batch_execute("create table if not exists deployd_schema (version int not null)")
        .await
        .map_err(sql)?;
    let found: i32 = tx
        .query_opt("select version from deployd_schema", &[])
        .await
        .map_err(sql)?
        .map_or(0, |r| r.get(0));
    let known = known_version();
    if found > known {
        // Dropping the transaction rolls it back: nothing is written.
        return Err(SchemaError::Newer { found, known });
    }
    for (i, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(migration)
            .await
            .map_err(|e| SchemaError::Sql(format!("migration {}: {}", i + 1, describe(&e))))?;
    }
    if found == 0 {
        tx.execute(
            "insert into deployd_schema (version) values ($1)",
            &[&known],
        )
        .await
        .map_err(sql)?;
    } else if found < known {
        tx.execute("update deployd_schema set version = $1", &[&known])
            .await
            .map_err(sql)?;
    }
    tx.commit().await.map_err(sql)?;
    Ok(found)
}
