//! More attacks on high availability with real `deployd run` processes, the emulator and a
//! real PostgreSQL: answers lost at chosen statements, nodes that share a name, secrets in
//! what `status` prints. Each test creates its own database and drops it (skipped loudly
//! without a server, as in `ha.rs`). The harness is `ha_attacks.rs`'s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ha_attacks::{Node, Proxy, TestDb, assert_each_tick_once_none_lost, by_fire, tick_plan};
use crate::helpers::*;

/// A TCP proxy in front of the database that loses one answer on purpose: once armed, the
/// first client statement whose SQL holds `sql` (its Parse message) and whose parameters then
/// hold `param` (its Bind message, on the same connection) is forwarded to the server, and
/// the connection is cut `after` it, before the server's answer can reach the client: the
/// statement commits, its answer is lost (a database restart mid-statement, a failover).
struct Cutter {
    port: u16,
    armed: Arc<Mutex<Option<(String, String, Duration)>>>,
    cuts: Arc<AtomicUsize>,
}

impl Cutter {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let armed: Arc<Mutex<Option<(String, String, Duration)>>> = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (armed, cuts) = (armed2.clone(), cuts2.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let (cut_tx, mut cut_rx) = tokio::sync::watch::channel(false);
                    let up = async move {
                        let mut buf = vec![0u8; 65536];
                        let mut seen_sql = false;
                        while let Ok(n) = ri.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let chunk = &buf[..n];
                            let text = String::from_utf8_lossy(chunk).to_string();
                            let plan = armed.lock().expect("lock").clone();
                            let mut cut_after = None;
                            if let Some((sql, param, after)) = plan {
                                if text.contains(&sql) {
                                    seen_sql = true;
                                }
                                if seen_sql && text.contains(&param) {
                                    cut_after = Some(after);
                                }
                            }
                            if wo.write_all(chunk).await.is_err() {
                                break;
                            }
                            if let Some(after) = cut_after {
                                *armed.lock().expect("lock") = None;
                                // The answer is held from now on, then the flow is cut.
                                let _ = cut_tx.send(true);
                                tokio::time::sleep(after).await;
                                cuts.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let read = tokio::select! {
                                r = ro.read(&mut buf) => r,
                                _ = cut_rx.changed() => {
                                    // Cut: nothing more reaches the client.
                                    std::future::pending().await
                                }
                            };
                            let Ok(n) = read else { break };
                            if n == 0 || *cut_rx.borrow() {
                                break;
                            }
                            if wi.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // The first to end ends both: dropping the halves closes the flows.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        Self { port, armed, cuts }
    }

    /// Loses the answer of the next statement whose SQL holds `sql` and parameters `param`.
    fn arm(&self, sql: &str, param: &str, after: Duration) {
        *self.armed.lock().expect("lock") = Some((sql.into(), param.into(), after));
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn once_plan(name: &str, ids: &[String]) -> String {
    plan_of(
        name,
        ids,
        "retry: {max_attempts: 3, base: 10ms, cap: 50ms, deadline: 1m}\n",
    )
}

/// The answer to a run-once plan's content claim is lost (the database restarts right after
/// the claim commits). The contract ("a claim whose answer was lost is asked again, and the
/// node finds its own claim: the fire is neither run twice nor dropped") holds for schedule
/// fires, and must hold for a run-once plan's content too: the plan runs, once.
///
/// Seen: the claim commits, its answer is lost ("the run could not begin: the run cannot be
/// recorded in the state folder (database: connection closed); trying again in 1s"); the next
/// attempt, under a new run id, finds the claim taken by the first run id and logs "this
/// content already ran (run <first id>); not running it again": no call is ever made, no
/// result is written, and `status` reports the content as run. The plan is silently lost.
/// The cause: `Controller::launch` in src/daemon.rs claims a run-once plan with
/// `Store::claim_once` and never asks again as `claim_fire_again` does; `PgStore::claim`
/// (src/ha/store.rs) is called with `again = false` for it, and the retry comes with a new
/// run id. The claim of a run whose journal is discarded (`finish_run(None)`) should be given
/// back (it only resets fire slots, `slot not like 'sha256:%'`), or a claim found held by this
/// node and lead for a run that never began should count as won.
/// Fixed: `PgStore` keeps the run ids whose beginning is in doubt (a lost answer to a claim or
/// a journal creation) and undoes them (row, journal, fire claim reset, run-once claim given back)
/// before the run-once memory is read or the next run begins.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_a_run_once_claim_does_not_drop_the_plan() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let cutter = Cutter::start(format!("{}:{}", db.database.host, db.database.port)).await;
    let mut through = db.database.clone();
    through.port = cutter.port;
    let mut a = Node::start(base.path(), "a", &through, &emulator, &[], None);
    wait_for(30, "a leads", async || a.leads()).await;
    cutter.arm(
        "insert into deployd_claims",
        "sha256:",
        Duration::from_millis(300),
    );
    let ids = task_ids(3, 0x51);
    write(
        &a.root.join("plans").join("deploy.yaml"),
        &once_plan("deploy", &ids),
    );
    wait_for(30, "the claim's answer is lost", async || {
        cutter.cuts() == 1
    })
    .await;
    // Given time to claim again, begin and finish (a few begin attempts, a few calls).
    wait_for(60, "the plan runs, or is said to have run", async || {
        (emulator.stats().accepted >= 3 && !a.results("deploy").is_empty())
            || logged(&a.log, "this content already ran")
    })
    .await;
    a.stop().await;
    let records = records_by_task(&emulator.log());
    assert!(
        records.values().all(|r| r.len() == 1),
        "a task started twice: {records:?}"
    );
    assert_eq!(
        records.len(),
        3,
        "the run-once plan never ran: {records:?}; results {:#?}\n--- a:\n{}",
        a.results("deploy"),
        a.log()
    );
}

/// The answer to a scheduled run's journal creation is lost (the database restarts right
/// after the statement that writes the run's row and header commits). The leader tries the
/// run again under a new run id, and it runs, once. But the first run id's row stays in
/// `deployd_runs` with no result: at the next change of leader, the new leader "recovers"
/// it and writes a second, `interrupted` result for the same fire time, a run that never
/// was.
///
/// Seen (b's log): "finished a run interrupted by a crash: result written to
/// .../tick/<first run id>.json ... started=0 failed=0 skipped=1" for the fire time that a
/// ran under its second run id: two results for one fire time (one `succeeded` on a, one
/// `interrupted` on b, the latter also in `deployd_runs`), and `status` may show the
/// phantom `interrupted` run. The cause: when `PgStore::create_journal` (src/ha/store.rs) fails
/// with a database error, the run row it may have written stays (`result is null`, this
/// epoch) and its claim keeps the first run id; the retry in `Controller::launch`
/// (src/daemon.rs) should reuse the run id (and find its own row), or the failed creation
/// should be undone, or `PgStore::unfinished` should drop a header-only run whose fire claim
/// names another run.
/// Fixed: the same list of runs in doubt in `PgStore` (src/ha/store.rs): the half-written run
/// is undone before the retry begins.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_a_journal_creation_gives_no_second_result_at_the_next_takeover() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let cutter = Cutter::start(format!("{}:{}", db.database.host, db.database.port)).await;
    let mut through = db.database.clone();
    through.port = cutter.port;
    let plans = tick_plan();
    let mut a = Node::start(base.path(), "a", &through, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    let mut b = Node::start(base.path(), "b", &db.database, &emulator, &plans, None);
    wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
    wait_for(30, "a fires", async || !a.results("tick").is_empty()).await;
    cutter.arm(
        "insert into deployd_runs",
        "tick",
        Duration::from_millis(300),
    );
    wait_for(30, "the journal's answer is lost", async || {
        cutter.cuts() == 1
    })
    .await;
    let settled = emulator.stats().accepted;
    wait_for(30, "a fires again", async || {
        emulator.stats().accepted >= settled + 2
    })
    .await;
    a.stop().await;
    wait_for(30, "b leads", async || b.leads()).await;
    let settled = emulator.stats().accepted;
    wait_for(30, "b fires", async || {
        emulator.stats().accepted >= settled + 2
    })
    .await;
    b.stop().await;
    let fires = by_fire(&[&a, &b], "tick");
    let twice: Vec<_> = fires.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "fire times with two results: {twice:#?}\n--- a:\n{}\n--- b:\n{}",
        a.log(),
        b.log()
    );
    let started = fires
        .values()
        .filter(|r| r[0]["summary"]["started"] == 1)
        .count();
    assert_eq!(emulator.stats().accepted as usize, started);
}

/// SIGTERM of a leader whose database flow was black-holed a moment before, in the middle of
/// a long run: no database call may hold the shutdown (the contract: "a shutdown is never held
/// by it"); the daemon exits well within a lease plus the runs' grace.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_a_leader_with_a_black_holed_database_exits_promptly() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(deployd::emulator::EmulatorConfig {
        latency: Duration::from_millis(300),
        ..emulator_config()
    })
    .await;
    let base = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(
        format!("{}:{}", db.database.host, db.database.port),
        Duration::ZERO,
    )
    .await;
    let mut through = db.database.clone();
    through.port = proxy.port;
    let ids = task_ids(20, 0x52);
    let plans = [("deploy.yaml", once_plan("deploy", &ids))];
    let mut a = Node::start(base.path(), "a", &through, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    wait_for(30, "a's run is under way", async || {
        emulator.stats().accepted >= 3
    })
    .await;
    proxy.freeze();
    let mut child = a.child.take().expect("running");
    kill(&child, "-TERM");
    let asked = std::time::Instant::now();
    exit_within(&mut child, 60, "a").await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the shutdown took {took:?}\n--- a:\n{}",
        a.log()
    );
    let records = records_by_task(&emulator.log());
    assert!(records.values().all(|r| r.len() == 1), "{records:?}");
}

/// The leader's database connections are dropped again and again (a flapping database
/// proxy) while a run-once plan of 20 tasks runs: every task is started at most once, and
/// the content is not run again.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_connection_resets_during_a_run_start_no_task_twice() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(deployd::emulator::EmulatorConfig {
        latency: Duration::from_millis(200),
        ..emulator_config()
    })
    .await;
    let base = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(
        format!("{}:{}", db.database.host, db.database.port),
        Duration::from_millis(20),
    )
    .await;
    let mut through = db.database.clone();
    through.port = proxy.port;
    let mut a = Node::start(base.path(), "a", &through, &emulator, &[], None);
    wait_for(30, "a leads", async || a.leads()).await;
    let mut b = Node::start(base.path(), "b", &db.database, &emulator, &[], None);
    wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
    let ids = task_ids(20, 0x53);
    for n in [&a, &b] {
        write(
            &n.root.join("plans").join("deploy.yaml"),
            &once_plan("deploy", &ids),
        );
    }
    wait_for(30, "a's run begins", async || {
        emulator.stats().accepted >= 1
    })
    .await;
    for i in 0..15u64 {
        proxy.reset();
        let at = emulator.stats().accepted;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300 + 97 * i);
        wait_for(10, "a moment", async || {
            tokio::time::Instant::now() >= deadline || emulator.stats().accepted > at + 1
        })
        .await;
    }
    wait_for(60, "a result of the run", async || {
        !a.results("deploy").is_empty() || !b.results("deploy").is_empty()
    })
    .await;
    // Whoever leads now, nothing more is started.
    wait_for(30, "quiet", async || {
        let n = emulator.stats().accepted;
        tokio::time::sleep(Duration::from_secs(3)).await;
        emulator.stats().accepted == n
    })
    .await;
    a.stop().await;
    b.stop().await;
    let records = records_by_task(&emulator.log());
    let twice: Vec<_> = records.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks started twice: {twice:?}\n--- a:\n{}\n--- b:\n{}",
        a.log(),
        b.log()
    );
}

/// A follower whose wall clock is an hour ahead takes over from a dead leader (its lease
/// ran out ~5 s after the leader's last fire). The takeover missed two or three fire times
/// of a plan firing every 2 s; the catch-up must run those (at most `catch_up` late), not the
/// whole `catch_up` window of this node's future-by-an-hour clock in one burst (150 runs
/// fired at once for fire times nobody missed).
///
/// Seen: "catching up the fires missed during the takeover from=<b's clock - 5 min>", then
/// 151-152 calls within 4 s of b's lead, for fire times 55-60 min in the real future. Fix:
/// `Controller::role_changed` (src/daemon.rs) bounds the catch-up window with this host's
/// `Utc::now()` (`now - catch_up`) and `Scheduler::catch_up` (src/scheduler/mod.rs) runs
/// everything up to this host's now; the span actually missed is the old lead's expiry
/// (database clock) minus the lease up to the database's now, which the takeover should use
/// (and warn that this host's clock differs from the database's).
/// Fixed: the takeover reads the database's clock with the lease; the catch-up runs fire times up
/// to it only, names the span past on this host's clock alone as missed, and warns of the skew.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_an_hour_ahead_takes_over_without_a_burst_of_catch_up_runs() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let plans = tick_plan();
    let mut a = Node::start(base.path(), "a", &db.database, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    let mut b = Node::start(
        base.path(),
        "b",
        &db.database,
        &emulator,
        &plans,
        Some("+1h"),
    );
    wait_for(20, "b joins", async || logged(&b.log, "joined the cluster")).await;
    wait_for(30, "a fires", async || a.results("tick").len() >= 2).await;
    a.kill9().await;
    wait_for(30, "b takes over", async || b.leads()).await;
    let at_takeover = emulator.stats().accepted;
    let led = std::time::Instant::now();
    // Four seconds of b's lead: two fire times, plus the two or three the takeover missed.
    wait_for(30, "four seconds of b's lead", async || {
        led.elapsed() >= Duration::from_secs(4)
    })
    .await;
    let burst = emulator.stats().accepted - at_takeover;
    b.stop().await;
    assert!(
        burst <= 8,
        "{burst} runs in the first 4 s of b's lead\n--- b:\n{}",
        b.log()
    );
}

/// Two processes configured with the same node name (a copied config): the second follows
/// while the first leads (the lead is held by epoch, not by name), takes over when the first
/// is killed, and no fire time runs twice or is lost.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_with_the_same_name_run_each_fire_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let (one, two) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let plans = tick_plan();
    let mut a1 = Node::start(one.path(), "a", &db.database, &emulator, &plans, None);
    wait_for(30, "a1 leads", async || a1.leads()).await;
    let mut a2 = Node::start(two.path(), "a", &db.database, &emulator, &plans, None);
    wait_for(20, "a2 joins", async || {
        logged(&a2.log, "joined the cluster")
    })
    .await;
    wait_for(30, "a1 fires", async || a1.results("tick").len() >= 3).await;
    assert!(!a2.leads(), "a2 follows\n{}", a2.log());
    a1.kill9().await;
    wait_for(30, "a2 takes over", async || a2.leads()).await;
    let settled = emulator.stats().accepted;
    wait_for(30, "a2 fires", async || {
        emulator.stats().accepted >= settled + 3
    })
    .await;
    a2.stop().await;
    let fires = assert_each_tick_once_none_lost(&[&a1, &a2]);
    let started = fires
        .values()
        .filter(|r| r[0]["summary"]["started"] == 1)
        .count();
    assert_eq!(emulator.stats().accepted as usize, started);
}

/// A leader killed and restarted at once under the same name, within its own lease: it
/// waits for the lease to expire (it cannot tell its old self from another process), takes
/// the lead with a new epoch, and loses and repeats no fire time.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_restarted_within_its_own_lease_runs_each_fire_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let emulator = start_emulator(emulator_config()).await;
    let base = tempfile::tempdir().expect("tempdir");
    let plans = tick_plan();
    let mut a = Node::start(base.path(), "a", &db.database, &emulator, &plans, None);
    wait_for(30, "a leads", async || a.leads()).await;
    wait_for(30, "a fires", async || a.results("tick").len() >= 2).await;
    a.kill9().await;
    a.spawn(&emulator);
    wait_for(30, "a leads again", async || a.leads()).await;
    assert!(logged(&a.log, "epoch=2"), "{}", a.log());
    let settled = emulator.stats().accepted;
    wait_for(30, "a fires again", async || {
        emulator.stats().accepted >= settled + 3
    })
    .await;
    a.stop().await;
    assert_each_tick_once_none_lost(&[&a]);
}
