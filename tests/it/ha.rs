//! High availability against a real PostgreSQL: migrations and the lease. Each test creates
//! its own database and drops it. Without a reachable server the tests say loudly that they
//! were skipped (and fail instead when `DEPLOYD_REQUIRE_POSTGRES=1`, as `.ci/run` sets).

use std::time::Duration;

use deployd::ha::config::Database;
use deployd::ha::connect::connect;
use deployd::ha::lease::{self, LeaseTiming};
use deployd::ha::schema::{self, SchemaError};
use tokio::time::Instant;

use crate::helpers::wait_for;

/// The server the tests use: `DEPLOYD_TEST_POSTGRES`, else the machine's local one.
fn server_url() -> String {
    std::env::var("DEPLOYD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

/// A database of its own for one test, dropped (with its connections) when it goes.
struct TestDb {
    name: String,
    database: Database,
}

impl TestDb {
    /// `None` (after saying so on stderr) when there is no server and none is required.
    async fn create() -> Option<Self> {
        let admin = Database::parse(&server_url()).expect("DEPLOYD_TEST_POSTGRES is a URL");
        let client = match connect(&admin, None, "deployd-tests").await {
            Ok(c) => c,
            Err(e) if std::env::var("DEPLOYD_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!(
                    "PostgreSQL is required (DEPLOYD_REQUIRE_POSTGRES=1) but {e}; start one \
                     (e.g. `pg_ctlcluster 15 main start`) or point DEPLOYD_TEST_POSTGRES at one"
                )
            }
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED: the high-availability tests need PostgreSQL ({e}).\n\
                     *** Start one on 127.0.0.1:5432 (trust auth, user postgres) or set\n\
                     *** DEPLOYD_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres; .ci/run fails instead.\n"
                );
                return None;
            }
        };
        let name = format!("deployd_test_{:016x}", rand::random::<u64>());
        client
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        let mut database = admin;
        database.dbname = name.clone();
        Some(Self { name, database })
    }

    async fn client(&self) -> tokio_postgres::Client {
        connect(&self.database, None, "deployd-tests")
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: a thread with its own does the async work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = Database::parse(&server_url()).expect("url");
                if let Ok(c) = connect(&admin, None, "deployd-tests").await {
                    let _ = c
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn version(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("select version from deployd_schema", &[])
        .await
        .expect("version")
        .get(0)
}

#[tokio::test]
async fn migrations_on_an_empty_an_up_to_date_and_a_newer_database() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut client = db.client().await;
    assert_eq!(schema::migrate(&mut client).await.expect("empty"), 0);
    assert_eq!(version(&client).await, schema::known_version());
    assert_eq!(
        schema::migrate(&mut client).await.expect("up to date"),
        schema::known_version()
    );
    // A newer deployd moved the schema on: this one refuses, and writes nothing.
    client
        .batch_execute("update deployd_schema set version = 99; drop table deployd_facts")
        .await
        .expect("newer");
    let e = schema::migrate(&mut client).await.expect_err("newer");
    assert!(matches!(e, SchemaError::Newer { found: 99, .. }), "{e}");
    assert!(e.is_config());
    assert!(e.to_string().contains("version 99"), "{e}");
    assert_eq!(version(&client).await, 99);
    let facts = client
        .query_opt(
            "select 1 from pg_tables where tablename = 'deployd_facts'",
            &[],
        )
        .await
        .expect("query");
    assert!(facts.is_none(), "a refused migration wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_starting_together_apply_each_migration_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut starts = Vec::new();
    for _ in 0..6 {
        let mut client = db.client().await;
        starts.push(tokio::spawn(async move {
            schema::migrate(&mut client).await.expect("migrate")
        }));
    }
    let mut found = Vec::new();
    for s in starts {
        found.push(s.await.expect("join"));
    }
    found.sort();
    assert_eq!(found[0], 0, "one node migrated");
    assert!(
        found[1..].iter().all(|v| *v == schema::known_version()),
        "the others found it done: {found:?}"
    );
}

#[tokio::test]
async fn one_holder_at_a_time_and_the_epoch_grows_at_each_change() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut client = db.client().await;
    schema::migrate(&mut client).await.expect("migrate");
    let timing = LeaseTiming {
        lease: Duration::from_millis(600),
    };
    let a = lease::try_acquire(&client, "a", timing, Instant::now())
        .await
        .expect("sql")
        .expect("a free lead is taken");
    assert_eq!(a.epoch, 1);
    assert!(
        lease::try_acquire(&client, "b", timing, Instant::now())
            .await
            .expect("sql")
            .is_none(),
        "a held lead is not taken"
    );
    assert!(
        lease::renew(&client, "a", a.epoch, timing, Instant::now())
            .await
            .expect("sql")
            .is_some()
    );
    // a falls silent; once the lead expired on the database's clock, b takes it.
    let mut b = None;
    wait_for(10, "b taking the expired lead", async || {
        b = lease::try_acquire(&client, "b", timing, Instant::now())
            .await
            .expect("sql");
        b.is_some()
    })
    .await;
    let b = b.expect("b leads");
    assert_eq!(b.epoch, 2);
    assert!(
        lease::renew(&client, "a", a.epoch, timing, Instant::now())
            .await
            .expect("sql")
            .is_none(),
        "the old holder cannot renew a lead that was taken"
    );
    // A clean shutdown hands the lead over at once.
    lease::release(&client, "b", b.epoch)
        .await
        .expect("release");
    let again = lease::try_acquire(&client, "a", timing, Instant::now())
        .await
        .expect("sql")
        .expect("a released lead is free at once");
    assert_eq!(again.epoch, 3);
    let (holder, epoch, left) = lease::current(&client).await.expect("sql").expect("row");
    assert_eq!((holder.as_str(), epoch), ("a", 3));
    assert!(left > 0.0 && left <= 0.6, "{left}");
}
