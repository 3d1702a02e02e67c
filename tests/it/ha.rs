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

mod store {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;
    use deployd::ha::lease::{self, LeaseTiming};
    use deployd::ha::schema;
    use deployd::ha::store::{Connection, Fence, PgStore};
    use deployd::journal::{Entry, RunHeader};
    use deployd::results::{RunId, RunReport, TaskReport, TaskStatus, Trigger};
    use deployd::store::{Claim, LearnedZone, Store, StoreError};
    use tokio::time::Instant;

    use super::TestDb;
    use crate::helpers::wait_for;

    const TIMING: LeaseTiming = LeaseTiming {
        lease: Duration::from_secs(2),
    };

    /// A node over the test database: its store and its fence, leading when `lead`.
    async fn node(db: &TestDb, name: &str, lead: bool) -> (PgStore, Arc<Fence>) {
        let conn = Arc::new(Connection::new(db.database.clone(), None, name));
        let fence = Arc::new(Fence::new(name));
        if lead {
            let client = conn.client().await.expect("connect");
            let mut held = None;
            wait_for(10, "the lead", async || {
                held = lease::try_acquire(&*client, name, TIMING, Instant::now())
                    .await
                    .expect("sql");
                held.is_some()
            })
            .await;
            let held = held.expect("held");
            fence.lead(held.epoch, held.calls_until);
        }
        let store = PgStore::open(conn, fence.clone()).await.expect("open");
        (store, fence)
    }

    async fn migrated() -> Option<TestDb> {
        let db = TestDb::create().await?;
        schema::migrate(&mut db.client().await)
            .await
            .expect("migrate");
        Some(db)
    }

    fn header(run_id: &RunId) -> RunHeader {
        RunHeader {
            run_id: run_id.clone(),
            plan: "web".into(),
            plan_file: "web.yaml".into(),
            plan_sha256: "ab".into(),
            trigger: Trigger::Schedule,
            scheduled_for: None,
            started_at: Utc::now(),
            tasks: vec![TaskReport::new("a", TaskStatus::Skipped, vec![])],
            params: Vec::new(),
            task_params: Vec::new(),
        }
    }

    fn report(run_id: &RunId, status: &str) -> RunReport {
        serde_json::from_value(serde_json::json!({
            "plan": "web", "plan_file": "web.yaml", "plan_sha256": "ab",
            "run_id": run_id.as_str(), "trigger": "schedule", "scheduled_for": null,
            "started_at": "2026-11-28T01:30:00.012Z", "finished_at": "2026-11-28T01:30:02.480Z",
            "status": status,
            "summary": {"total": 1, "started": 1, "failed": 0, "skipped": 0},
            "tasks": []
        }))
        .expect("a report")
    }

    fn intent(attempt: u32) -> Entry {
        Entry::Intent {
            task_id: "a".into(),
            attempt,
            sent_at: Utc::now(),
            skew_lo_ms: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn claims_hold_once_across_nodes_and_need_the_lead() {
        let Some(db) = migrated().await else {
            return;
        };
        let (leader, _) = node(&db, "a", true).await;
        let (follower, _) = node(&db, "b", false).await;
        let id = RunId::new(Utc::now());
        assert_eq!(
            leader.claim_once("web", "ab", &id).await.expect("claim"),
            Claim::Won
        );
        assert_eq!(
            leader
                .claim_once("web", "ab", &RunId::new(Utc::now()))
                .await
                .expect("claim"),
            Claim::Taken(Some(id.clone()))
        );
        assert_eq!(
            follower.ran_once("web", "ab").await.expect("read"),
            Some(id),
            "every node reads the cluster's memory"
        );
        let at = Utc::now();
        assert_eq!(
            leader.claim_fire("tick", at).await.expect("claim"),
            Claim::Won
        );
        assert_eq!(
            leader.claim_fire("tick", at).await.expect("claim"),
            Claim::Taken(None)
        );
        let fired = follower.fired("tick").await.expect("fired");
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].timestamp(), at.timestamp());
        // A node that does not lead claims nothing.
        let e = follower
            .claim_fire("tick", at + chrono::TimeDelta::seconds(2))
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lost_lead_fences_the_journal_and_the_next_leader_recovers_the_run() {
        let Some(db) = migrated().await else {
            return;
        };
        let (old, old_fence) = node(&db, "a", true).await;
        let id = RunId::new(Utc::now());
        let journal = old.create_journal(&header(&id)).await.expect("journal");
        // Entries sent together are written together, and all are durable.
        let entries: Vec<Entry> = (1..=20).map(intent).collect();
        let appends: Vec<_> = entries.iter().map(|e| journal.append(e)).collect();
        for done in futures_join(appends).await {
            done.expect("appended");
        }
        // "a" falls silent past its lease; "b" takes over with a higher epoch.
        let (new, new_fence) = node(&db, "b", true).await;
        assert!(new_fence.epoch() > old_fence.epoch());
        // "a" still believes it leads (a SIGSTOP): the database refuses its entry.
        old_fence.lead(
            old_fence.epoch().expect("epoch"),
            Instant::now() + TIMING.lease,
        );
        let e = journal.append(&intent(21)).await.expect_err("fenced");
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
        assert_eq!(old_fence.current(), None, "the fenced node steps down");
        let e = old
            .create_journal(&header(&RunId::new(Utc::now())))
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");

        // The new leader finds the old lead's run with every call it announced.
        let (runs, problems) = new.unfinished().await;
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(runs.len(), 1);
        let run = &runs[0];
        assert_eq!(run.header.run_id, id);
        assert_eq!(
            run.trails["a"].calls.len(),
            20,
            "the fenced 21st is not there"
        );
        let result = report(&id, "interrupted");
        new.close_unfinished(run, &result).await.expect("close");
        assert!(new.unfinished().await.0.is_empty());
        // The old leader's late result does not overwrite the recovery's: it is refused.
        let e = journal
            .finish(&report(&id, "succeeded"))
            .await
            .expect_err("fenced");
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
        let runs = new.plan_runs("web").await.expect("index");
        assert_eq!(runs.count, 1);
        let last = runs.last.expect("a last run").expect("readable");
        assert_eq!(
            (last.run_id.as_str(), last.status.as_str()),
            (id.as_str(), "interrupted")
        );
        assert_eq!(new.plans_with_results().await.expect("plans"), ["web"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_learned_zone_is_shared_by_the_nodes() {
        let Some(db) = migrated().await else {
            return;
        };
        let (a, _) = node(&db, "a", false).await;
        assert_eq!(a.learned_zone().expect("zone"), None);
        let zone = LearnedZone {
            utc_offset_secs: 8 * 3600,
            learned_at: Utc::now(),
            record_id: "r".into(),
        };
        a.keep_learned_zone(&zone).expect("kept");
        let mut seen = None;
        wait_for(10, "the zone written behind", async || {
            let (b, _) = node(&db, "b", false).await;
            seen = b.learned_zone().expect("zone");
            seen.is_some()
        })
        .await;
        assert_eq!(seen.map(|z| z.utc_offset_secs), Some(8 * 3600));
    }

    async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let mut set = Vec::new();
        for f in futures {
            set.push(Box::pin(f));
        }
        // Polled together, so that their entries queue at once.
        let mut pending: Vec<_> = set.into_iter().map(Some).collect();
        let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut all = true;
            for (i, slot) in pending.iter_mut().enumerate() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            results[i] = Some(v);
                            *slot = None;
                        }
                        std::task::Poll::Pending => all = false,
                    }
                }
            }
            if all {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        out.extend(results.into_iter().flatten());
        out
    }
}

/// Several real `deployd run` processes over one database and one emulator.
mod nodes {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use deployd::emulator::{Emulator, EmulatorConfig};
    use deployd::ha::config::Database;

    use super::TestDb;
    use crate::helpers::*;

    /// A node's folders and process.
    struct Node {
        name: String,
        root: PathBuf,
        child: Option<Child>,
        log: Arc<Mutex<String>>,
    }

    impl Node {
        /// Starts `deployd run` as node `name` over `db`, with the plans in `plans`.
        fn start(
            base: &Path,
            name: &str,
            database: &Database,
            emulator: &Emulator,
            plans: &[(&str, String)],
        ) -> Self {
            let root = base.join(name);
            std::fs::create_dir_all(root.join("plans")).expect("plans");
            for (file, text) in plans {
                write(&root.join("plans").join(file), text);
            }
            write(
                &root.join("config.yaml"),
                &format!(
                    "settle: 1s\nha:\n  postgres: \"{database}\"\n  node: {name}\n  lease: 5s\n"
                ),
            );
            let mut node = Self {
                name: name.to_string(),
                root,
                child: None,
                log: Arc::new(Mutex::new(String::new())),
            };
            node.spawn(emulator);
            node
        }

        fn spawn(&mut self, emulator: &Emulator) {
            let mut child = daemon_command(&self.root, emulator, "100", "2")
                .arg("--config")
                .arg(self.root.join("config.yaml"))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            self.log = capture_stderr(&mut child);
            self.child = Some(child);
        }

        fn leads(&self) -> bool {
            count_logged(&self.log, "this node leads now") > count_logged(&self.log, "steps down")
        }

        fn signal(&self, sig: &str) {
            kill(self.child.as_ref().expect("running"), sig);
        }

        async fn kill9(&mut self) {
            let mut child = self.child.take().expect("running");
            kill(&child, "-KILL");
            exit_within(&mut child, 10, &self.name).await;
        }

        async fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                kill(&child, "-TERM");
                exit_within(&mut child, 30, &self.name).await;
            }
        }

        fn results(&self, plan: &str) -> Vec<serde_json::Value> {
            results(&self.root.join("results"), plan)
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn once_plan(name: &str, ids: &[String]) -> String {
        plan_of(
            name,
            ids,
            "retry: {max_attempts: 3, base: 10ms, cap: 50ms, deadline: 1m}\n",
        )
    }

    /// kill -9 of the leader in the middle of a run: the follower takes the lead within the
    /// lease and a second, finishes the run from the database's journal (its unstarted tasks
    /// skipped, `interrupted`), and no task is started twice: the run-once content is not run
    /// again by the new leader.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_killed_leader_is_taken_over_and_its_run_finished_nothing_twice() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let emulator = start_emulator(EmulatorConfig {
            latency: Duration::from_millis(400),
            ..emulator_config()
        })
        .await;
        let base = tempfile::tempdir().expect("tempdir");
        let ids = task_ids(12, 0x4a);
        let plans = [("deploy.yaml", once_plan("deploy", &ids))];
        let mut a = Node::start(base.path(), "a", &db.database, &emulator, &plans);
        wait_for(30, "a leads", async || a.leads()).await;
        let mut b = Node::start(base.path(), "b", &db.database, &emulator, &plans);
        wait_for(20, "b follows and publishes", async || {
            logged(&b.log, "joined the cluster")
        })
        .await;
        // a's run is under way: some calls answered, others not sent yet.
        wait_for(30, "a few calls of a's run", async || {
            emulator.stats().accepted >= 3
        })
        .await;
        a.kill9().await;
        let killed_at = std::time::Instant::now();
        wait_for(30, "b takes over", async || b.leads()).await;
        let takeover = killed_at.elapsed();
        assert!(
            takeover < Duration::from_secs(5 + 1 + 2),
            "took over after {takeover:?}"
        );
        wait_for(30, "b finishes a's run", async || {
            b.results("deploy").len() == 1
        })
        .await;
        let result = &b.results("deploy")[0];
        assert_eq!(result["status"], "interrupted", "{result:#}");
        // Nothing twice, and nothing more: b found the content already run.
        wait_for(20, "b sees the content ran", async || {
            logged(&b.log, "this content already ran")
        })
        .await;
        let records = records_by_task(&emulator.log());
        assert!(records.values().all(|r| r.len() == 1), "{records:?}");
        let started = result["summary"]["started"].as_u64().expect("started");
        assert_eq!(started as usize, records.len(), "{result:#}");
        assert!(started < 12, "the kill came mid-run: {started}");
        b.stop().await;
    }

    /// SIGSTOP of the leader past its lease: a follower takes over; on SIGCONT the old leader
    /// sends not one more call (the emulator's log proves it) and steps down.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_paused_leader_makes_no_call_once_another_took_over() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let emulator = start_emulator(EmulatorConfig {
            latency: Duration::from_millis(300),
            ..emulator_config()
        })
        .await;
        let base = tempfile::tempdir().expect("tempdir");
        let ids = task_ids(40, 0x5b);
        let plans = [("deploy.yaml", once_plan("deploy", &ids))];
        let mut a = Node::start(base.path(), "a", &db.database, &emulator, &plans);
        wait_for(30, "a leads", async || a.leads()).await;
        let mut b = Node::start(base.path(), "b", &db.database, &emulator, &plans);
        wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
        wait_for(30, "a few calls of a's run", async || {
            emulator.stats().accepted >= 3
        })
        .await;
        a.signal("-STOP");
        let paused_at = std::time::Instant::now();
        wait_for(30, "b takes over", async || b.leads()).await;
        assert!(paused_at.elapsed() < Duration::from_secs(5 + 1 + 2));
        // Every call a sent before the pause has landed by now (a lease later).
        let before = emulator.stats().accepted;
        a.signal("-CONT");
        wait_for(30, "a steps down", async || logged(&a.log, "steps down")).await;
        wait_for(60, "a's run ends on a", async || {
            a.results("deploy").len() == 1
        })
        .await;
        wait_for(60, "b finishes a's run", async || {
            b.results("deploy").len() == 1
        })
        .await;
        assert_eq!(
            emulator.stats().accepted,
            before,
            "the paused leader called after the takeover"
        );
        let records = records_by_task(&emulator.log());
        assert!(records.values().all(|r| r.len() == 1), "{records:?}");
        a.stop().await;
        b.stop().await;
    }

    /// A TCP proxy the test controls, in front of the database: `cut` drops every
    /// connection and refuses new ones.
    struct Proxy {
        port: u16,
        cut: tokio_util::sync::CancellationToken,
    }

    impl Proxy {
        async fn start(target: String) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let cut = tokio_util::sync::CancellationToken::new();
            let stop = cut.clone();
            tokio::spawn(async move {
                loop {
                    let (mut inbound, _) = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let target = target.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            () = stop.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    });
                }
            });
            Self { port, cut }
        }
    }

    /// The leader's database connection cut (by a proxy): it steps down within the lease,
    /// and a follower leads.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_leader_cut_from_the_database_steps_down_within_the_lease() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let emulator = start_emulator(emulator_config()).await;
        let base = tempfile::tempdir().expect("tempdir");
        let proxy = Proxy::start(format!("{}:{}", db.database.host, db.database.port)).await;
        let mut through_proxy = db.database.clone();
        through_proxy.port = proxy.port;
        let plans = [(
            "tick.yaml",
            format!("schedule: \"*/2 * * * * *\"\ntasks:\n  - {T1}\n"),
        )];
        let mut a = Node::start(base.path(), "a", &through_proxy, &emulator, &plans);
        wait_for(30, "a leads", async || a.leads()).await;
        let mut b = Node::start(base.path(), "b", &db.database, &emulator, &plans);
        wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
        proxy.cut.cancel();
        let cut_at = std::time::Instant::now();
        wait_for(30, "a steps down", async || logged(&a.log, "steps down")).await;
        let stepped_down = cut_at.elapsed();
        assert!(
            stepped_down <= Duration::from_secs(5),
            "stepped down after {stepped_down:?}"
        );
        wait_for(30, "b leads", async || b.leads()).await;
        assert!(cut_at.elapsed() < Duration::from_secs(5 + 1 + 2));
        // Each fire time ran once, across the two nodes.
        wait_for(30, "b fires", async || b.results("tick").len() >= 2).await;
        let mut fires: Vec<String> = a
            .results("tick")
            .iter()
            .chain(b.results("tick").iter())
            .filter(|r| r["summary"]["started"] == 1)
            .map(|r| r["scheduled_for"].as_str().unwrap_or_default().to_string())
            .collect();
        let all = fires.len();
        fires.sort();
        fires.dedup();
        assert_eq!(fires.len(), all, "a fire time ran twice");
        a.stop().await;
        b.stop().await;
    }

    /// Three nodes, a `*/2 * * * * *` schedule and 20 random kills -9 and restarts: each fire
    /// time ran once across the cluster (one call per fire at most, one result per fire), and
    /// no fire time between the first and the last was lost (each has a result on some node).
    #[tokio::test(flavor = "multi_thread")]
    async fn random_kills_run_each_fire_once_and_lose_none() {
        use rand::Rng;
        let Some(db) = TestDb::create().await else {
            return;
        };
        let emulator = start_emulator(emulator_config()).await;
        let base = tempfile::tempdir().expect("tempdir");
        let plans = [(
            "tick.yaml",
            format!("schedule: \"*/2 * * * * *\"\noverlap: allow\ntasks:\n  - {T1}\n"),
        )];
        let mut nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .map(|n| Node::start(base.path(), n, &db.database, &emulator, &plans))
            .collect();
        wait_for(30, "a leader", async || nodes.iter().any(Node::leads)).await;
        wait_for(30, "the first fires", async || {
            nodes.iter().map(|n| n.results("tick").len()).sum::<usize>() >= 2
        })
        .await;
        let mut rng = rand::rng();
        let mut leaders_killed = 0;
        for round in 0..20 {
            // Every third kill is the leader's (if one leads now); the others fall anywhere.
            let leader = nodes.iter().position(Node::leads);
            let i = match leader {
                Some(l) if round % 3 == 0 => l,
                _ => rng.random_range(0..nodes.len()),
            };
            if nodes[i].leads() {
                leaders_killed += 1;
            }
            nodes[i].kill9().await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
            nodes[i].spawn(&emulator);
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        }
        // Let the last takeover settle and fire a few times, then stop everyone.
        wait_for(60, "a leader after the kills", async || {
            nodes.iter().any(Node::leads)
        })
        .await;
        let settled = emulator.stats().accepted;
        wait_for(30, "fires after the kills", async || {
            emulator.stats().accepted >= settled + 3
        })
        .await;
        for n in &mut nodes {
            n.stop().await;
        }

        let mut by_fire: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            std::collections::BTreeMap::new();
        for n in &nodes {
            for r in n.results("tick") {
                let at = r["scheduled_for"].as_str().expect("a fire").to_string();
                by_fire.entry(at).or_default().push(r);
            }
        }
        let twice: Vec<_> = by_fire.iter().filter(|(_, r)| r.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "fire times with more than one run: {twice:#?}"
        );
        let started = by_fire
            .values()
            .filter(|r| r[0]["summary"]["started"] == 1)
            .count();
        assert_eq!(
            emulator.stats().accepted as usize,
            started,
            "one call per fire time that started, none more"
        );
        let times: Vec<chrono::DateTime<chrono::Utc>> = by_fire
            .keys()
            .map(|t| t.parse().expect("RFC 3339"))
            .collect();
        let gaps: Vec<_> = times
            .windows(2)
            .filter(|w| w[1] - w[0] != chrono::TimeDelta::seconds(2))
            .collect();
        assert!(gaps.is_empty(), "fire times lost between: {gaps:?}");
        eprintln!(
            "{} fire times, {started} started, {leaders_killed} of 20 kills hit the leader",
            times.len()
        );
        assert!(leaders_killed >= 1, "no kill hit the leader: run again");
    }

    /// `deployd status` of a cluster: the leader, the nodes, and a plan whose content differs
    /// between them (the leader warns about it too).
    #[tokio::test(flavor = "multi_thread")]
    async fn status_shows_the_leader_the_nodes_and_plans_that_differ() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let emulator = start_emulator(emulator_config()).await;
        let base = tempfile::tempdir().expect("tempdir");
        let nightly = |hour: u32| format!("schedule: \"0 0 {hour} * * *\"\ntasks:\n  - {T1}\n");
        let mut a = Node::start(
            base.path(),
            "a",
            &db.database,
            &emulator,
            &[("nightly.yaml", nightly(2))],
        );
        wait_for(30, "a leads", async || a.leads()).await;
        let mut b = Node::start(
            base.path(),
            "b",
            &db.database,
            &emulator,
            &[("nightly.yaml", nightly(3))],
        );
        wait_for(30, "the leader warns", async || {
            logged(&a.log, "the plan's content differs between nodes")
        })
        .await;
        let (code, out, err) = run_to_end({
            let mut cmd = deployd();
            cmd.args(["status", "--config"])
                .arg(b.root.join("config.yaml"))
                .arg("--plans-dir")
                .arg(b.root.join("plans"))
                .arg("--results-dir")
                .arg(b.root.join("results"))
                .arg("--state-dir")
                .arg(b.root.join("state"));
            cmd
        });
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("leader a (epoch 1"), "{out}");
        assert!(
            out.contains("node a: deployd") && out.contains("node b: deployd"),
            "{out}"
        );
        assert!(out.contains("plan nightly differs between nodes"), "{out}");
        assert!(!out.contains("postgres://postgres:"), "no password: {out}");
        a.stop().await;
        b.stop().await;
    }
}
