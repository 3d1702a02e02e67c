//! Attacks on high availability with real `deployd run` processes, the emulator and a real
//! PostgreSQL: skewed clocks, takeovers at bad moments, a database that misbehaves. Each test
//! creates its own database and drops it (skipped loudly without a server, as in `ha.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployd::emulator::Emulator;
use deployd::ha::config::Database;
use deployd::ha::connect::connect;

use crate::helpers::*;

pub(crate) fn server_url() -> String {
    std::env::var("DEPLOYD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

/// A database of its own for one test, dropped (with its connections) when it goes.
pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) database: Database,
}

impl TestDb {
    pub(crate) async fn create() -> Option<Self> {
        let admin = Database::parse(&server_url()).expect("DEPLOYD_TEST_POSTGRES is a URL");
        let client = match connect(&admin, None, "deployd-tests").await {
            Ok(c) => c,
            Err(e) if std::env::var("DEPLOYD_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("PostgreSQL is required (DEPLOYD_REQUIRE_POSTGRES=1) but {e}")
            }
            Err(e) => {
                eprintln!("\n*** SKIPPED: the high-availability attacks need PostgreSQL ({e}).\n");
                return None;
            }
        };
        let name = format!("deployd_attack_{:016x}", rand::random::<u64>());
        client
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        let mut database = admin;
        database.dbname = name.clone();
        Some(Self { name, database })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
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

/// A node's folders and process; its wall clock optionally faked (libfaketime file).
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) root: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) log: Arc<Mutex<String>>,
    pub(crate) clock: Option<PathBuf>,
}

impl Node {
    pub(crate) fn config(database: &Database, name: &str, extra: &str) -> String {
        format!("settle: 1s\nha:\n  postgres: \"{database}\"\n  node: {name}\n  lease: 5s\n{extra}")
    }

    /// Starts `deployd run` as node `name` over `database`, with `plans`; `clock` (a
    /// libfaketime offset such as `-40s`) fakes its wall clock.
    pub(crate) fn start(
        base: &Path,
        name: &str,
        database: &Database,
        emulator: &Emulator,
        plans: &[(&str, String)],
        clock: Option<&str>,
    ) -> Self {
        let root = base.join(name);
        std::fs::create_dir_all(root.join("plans")).expect("plans");
        for (file, text) in plans {
            write(&root.join("plans").join(file), text);
        }
        write(&root.join("config.yaml"), &Self::config(database, name, ""));
        let clock = clock.map(|offset| {
            let file = root.join("faketime");
            write(&file, offset);
            file
        });
        let mut node = Self {
            name: name.to_string(),
            root,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            clock,
        };
        node.spawn(emulator);
        node
    }

    pub(crate) fn spawn(&mut self, emulator: &Emulator) {
        let mut cmd = daemon_command(&self.root, emulator, "100", "2");
        if let Some(clock) = &self.clock {
            with_faked_clock(&mut cmd, clock);
        }
        let mut child = cmd
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

    pub(crate) fn leads(&self) -> bool {
        count_logged(&self.log, "this node leads now") > count_logged(&self.log, "steps down")
    }

    pub(crate) async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        kill(&child, "-KILL");
        exit_within(&mut child, 10, &self.name).await;
    }

    pub(crate) async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        kill(&child, "-TERM");
        exit_within(&mut child, 60, &self.name).await.code()
    }

    pub(crate) fn results(&self, plan: &str) -> Vec<serde_json::Value> {
        results(&self.root.join("results"), plan)
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().map(|t| t.clone()).unwrap_or_default()
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

/// Every result of `plan` on `nodes`, by fire time.
pub(crate) fn by_fire(
    nodes: &[&Node],
    plan: &str,
) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_fire = std::collections::BTreeMap::<String, Vec<serde_json::Value>>::new();
    for n in nodes {
        for r in n.results(plan) {
            let at = r["scheduled_for"].as_str().expect("a fire").to_string();
            by_fire.entry(at).or_default().push(r);
        }
    }
    by_fire
}

/// Fire times `step` seconds apart: pairs of consecutive fire times with a gap between them.
pub(crate) fn gaps(fires: &[String], step: i64) -> Vec<(String, String)> {
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        fires.iter().map(|t| t.parse().expect("RFC 3339")).collect();
    times
        .windows(2)
        .filter(|w| w[1] - w[0] != chrono::TimeDelta::seconds(step))
        .map(|w| (w[0].to_rfc3339(), w[1].to_rfc3339()))
        .collect()
}

/// Every `tick` fire time on `nodes` ran once (one result), and none is missing between the
/// first and the last (2 s apart); the nodes' logs in the message. Returns the results.
pub(crate) fn assert_each_tick_once_none_lost(
    nodes: &[&Node],
) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let logs = || {
        nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.name, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let fires = by_fire(nodes, "tick");
    let twice: Vec<_> = fires.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "fire times run twice: {twice:#?}\n{}",
        logs()
    );
    let times: Vec<String> = fires.keys().cloned().collect();
    let lost = gaps(&times, 2);
    assert!(
        lost.is_empty(),
        "fire times lost between: {lost:?}\n{}",
        logs()
    );
    fires
}

/// A plan firing every two seconds, runs allowed to overlap: the attacks' clock of fire times.
pub(crate) fn tick_plan() -> [(&'static str, String); 1] {
    [(
        "tick.yaml",
        format!("schedule: \"*/2 * * * * *\"\noverlap: allow\ntasks:\n  - {T1}\n"),
    )]
}

/// A leader whose wall clock is 40 s behind fires each time 40 s late. When it dies, the fire
/// times it had not reached yet were never claimed; the takeover's catch-up must run them
/// (they are at most `catch_up` late), not start only from the dead leader's last renewal:
/// otherwise 40 s of fire times are silently lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_with_a_slow_clock_dies_and_no_fire_time_is_lost() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let plans = tick_plan();
    let mut a = Node::start(
        base.path(),
        "a",
        &db.database,
        &emulator,
        &plans,
        Some("-40s"),
    );
    wait_for(30, "a leads", async || a.leads()).await;
    let mut b = Node::start(base.path(), "b", &db.database, &emulator, &plans, None);
    wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
    wait_for(30, "a fires", async || a.results("tick").len() >= 3).await;
    a.kill9().await;
    let killed_at = std::time::Instant::now();
    wait_for(30, "b takes over", async || b.leads()).await;
    assert!(killed_at.elapsed() < Duration::from_secs(5 + 1 + 2));
    let settled = emulator.stats().accepted;
    wait_for(60, "b fires", async || {
        emulator.stats().accepted >= settled + 3
    })
    .await;
    b.stop().await;

    let fires = assert_each_tick_once_none_lost(&[&a, &b]);
    let started = fires
        .values()
        .filter(|r| r[0]["summary"]["started"] == 1)
        .count();
    assert_eq!(emulator.stats().accepted as usize, started);
}

/// A TCP proxy the test controls in front of the database: each chunk is held `latency`
/// before it is forwarded; `reset` drops every open connection (a database restart, a
/// failover) and keeps accepting new ones; `freeze` stops forwarding while keeping every
/// connection open, the ones open now and the new ones (a black-holed route).
pub(crate) struct Proxy {
    pub(crate) port: u16,
    reset: Arc<tokio::sync::watch::Sender<u64>>,
    freeze: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub(crate) async fn start(target: String, latency: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reset = Arc::new(tokio::sync::watch::channel(0u64).0);
        let freeze = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (resets, freezes) = (reset.clone(), freeze.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *freezes.borrow() > 0 {
                    // Frozen: a new flow is held open and silent too.
                    tokio::spawn(async move {
                        let _held = inbound;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut reset, mut freeze) = (resets.subscribe(), freezes.subscribe());
                reset.mark_unchanged();
                freeze.mark_unchanged();
                tokio::spawn(async move {
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let pipes = async {
                        tokio::join!(
                            pipe(ri, wo, latency, freeze.clone()),
                            pipe(ro, wi, latency, freeze)
                        );
                    };
                    tokio::select! {
                        () = pipes => {}
                        _ = reset.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            reset,
            freeze,
        }
    }

    pub(crate) fn reset(&self) {
        self.reset.send_modify(|n| *n += 1);
    }

    pub(crate) fn freeze(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }
}

/// Forwards bytes, each chunk `latency` late (in order); once `freeze` changes, forwards
/// nothing more but holds both ends open (a black hole: no FIN, no reset).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
    mut freeze: tokio::sync::watch::Receiver<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buf) => read,
                // Held open, silent, until the proxy goes: this future keeps `from` and `tx`
                // (so the writer keeps `to`).
                _ = freeze.changed() => std::future::pending().await,
            };
            let Ok(n) = read else { break };
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + latency, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// The database restarts (every connection dropped) right while the leader claims a fire
/// time: the claim's answer is lost. The leader keeps the lead (the outage is far shorter
/// than its lease), so no takeover gives the fire back: the leader itself must find out
/// whether its claim was kept and run the fire, not drop it with a warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_restart_during_a_fire_claim_loses_no_fire() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(
        format!("{}:{}", db.database.host, db.database.port),
        Duration::from_millis(150),
    )
    .await;
    let mut through_proxy = db.database.clone();
    through_proxy.port = proxy.port;
    let plans = tick_plan();
    let mut a = Node::start(base.path(), "a", &through_proxy, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    wait_for(30, "a fires", async || a.results("tick").len() >= 2).await;
    // Right after a fire time (even seconds), while its claim is on the wire.
    for _ in 0..3 {
        wait_for(5, "a fire time", async || {
            let now = chrono::Utc::now();
            use chrono::Timelike;
            now.second().is_multiple_of(2) && now.timestamp_subsec_millis() >= 120
        })
        .await;
        proxy.reset();
        wait_for(5, "the next second", async || {
            use chrono::Timelike;
            chrono::Utc::now().second() % 2 == 1
        })
        .await;
    }
    let settled = emulator.stats().accepted;
    wait_for(30, "fires after the resets", async || {
        emulator.stats().accepted >= settled + 2
    })
    .await;
    assert!(a.leads(), "a keeps the lead through short outages");
    a.stop().await;
    assert_each_tick_once_none_lost(&[&a]);
}

/// The leader's database flow black-holed (packets dropped, no reset: a firewall, a dead
/// route): its queries hang instead of failing. Its renewal, bounded in time, fails; it must
/// stop calling before its lease can expire and step down, and the follower leads. No fire
/// time runs twice, and the frozen leader makes no call once the follower leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_database_flow_is_black_holed_steps_down_and_calls_no_more() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(
        format!("{}:{}", db.database.host, db.database.port),
        Duration::ZERO,
    )
    .await;
    let mut through_proxy = db.database.clone();
    through_proxy.port = proxy.port;
    let plans = tick_plan();
    let mut a = Node::start(base.path(), "a", &through_proxy, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    let mut b = Node::start(base.path(), "b", &db.database, &emulator, &plans, None);
    wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
    wait_for(30, "a fires", async || !a.results("tick").is_empty()).await;
    proxy.freeze();
    wait_for(30, "a steps down", async || logged(&a.log, "steps down")).await;
    wait_for(30, "b leads", async || b.leads()).await;
    wait_for(30, "b fires", async || b.results("tick").len() >= 2).await;
    a.stop().await;
    b.stop().await;
    // The emulator's records are the truth: each is reported by a result (none unaccounted
    // for) and no fire time has two (a result on each node for one run is allowed: the frozen
    // leader's own account and the takeover's recovery of the same run).
    let records: std::collections::HashSet<String> =
        emulator.log().iter().map(|e| e.record_id.clone()).collect();
    let mut by_time =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (at, results) in by_fire(&[&a, &b], "tick") {
        for r in results {
            for t in r["tasks"].as_array().cloned().unwrap_or_default() {
                if let Some(id) = t["record_id"].as_str() {
                    by_time
                        .entry(at.clone())
                        .or_default()
                        .insert(id.to_string());
                }
            }
        }
    }
    let reported: std::collections::HashSet<String> = by_time.values().flatten().cloned().collect();
    let unreported: Vec<_> = records.difference(&reported).collect();
    assert!(
        unreported.is_empty(),
        "calls no result reports: {unreported:?}\n--- a:\n{}\n--- b:\n{}",
        a.log(),
        b.log()
    );
    let twice: Vec<_> = by_time.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "fire times started twice: {twice:#?}\n--- a:\n{}\n--- b:\n{}",
        a.log(),
        b.log()
    );
}

/// The only node, paused for less than its lease but longer than its fence (2/3 of it): on
/// waking, its fence has lapsed while the lead may still be its own. The fires it finds due
/// are claimed again once the lead is confirmed (or caught up by its next lead), not dropped
/// as "not leading".
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_fence_but_within_its_lease_loses_no_fire() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let plans = tick_plan();
    let mut a = Node::start(base.path(), "a", &db.database, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    wait_for(30, "a fires", async || a.results("tick").len() >= 2).await;
    for pause in [3800, 4200, 4600] {
        kill(a.child.as_ref().expect("running"), "-STOP");
        tokio::time::sleep(Duration::from_millis(pause)).await;
        kill(a.child.as_ref().expect("running"), "-CONT");
        let settled = emulator.stats().accepted;
        wait_for(30, "fires after the pause", async || {
            emulator.stats().accepted >= settled + 3
        })
        .await;
    }
    a.stop().await;
    assert_each_tick_once_none_lost(&[&a]);
}
