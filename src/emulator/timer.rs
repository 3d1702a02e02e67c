//! Waits that end on time: the emulator's injected latency within a fraction of a millisecond
//! of what was asked.
//!
//! tokio's timer counts whole milliseconds and rounds up twice (the deadline to its next tick,
//! then the wait for it to the next millisecond), so `sleep(50 ms)` lasted 51.3-51.6 ms on this
//! machine: every call to an emulator with `--latency-ms 50` took 3% longer than the service it
//! stands for, and a benchmark charged that to the client. Here the bulk of a wait is still a
//! tokio sleep (cheap, dropped when the request is), and its last milliseconds are kept by one
//! thread that sleeps to the nearest deadline with the kernel's high-resolution timer (a futex
//! wait with a timeout, about 50 µs of slack) and then wakes the waiting request.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The end of a wait left to the precise thread: tokio's timer wakes up to about 2 ms late.
const TAIL: Duration = Duration::from_millis(3);

type Request = (Instant, oneshot::Sender<()>);

/// Waits for `d`, ending no earlier and, unless the machine is overloaded, well under a
/// millisecond later.
pub async fn sleep(d: Duration) {
    let Some(deadline) = Instant::now().checked_add(d) else {
        // Beyond what an `Instant` holds: as good as forever.
        return std::future::pending().await;
    };
    sleep_until(deadline).await;
}

/// Waits until `deadline` (see [`sleep`]).
pub async fn sleep_until(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(TAIL)
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    if deadline <= Instant::now() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    match timer() {
        Some(timer) if timer.send((deadline, tx)).is_ok() => {
            let _ = rx.await;
        }
        // No thread (it could not be started): tokio's timer, late by a millisecond or so.
        _ => tokio::time::sleep_until(deadline.into()).await,
    }
}

/// The precise thread's queue, started on first use.
fn timer() -> Option<&'static mpsc::Sender<Request>> {
    static TIMER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    TIMER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("emulator-timer".into())
                .spawn(move || keep_time(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// One wait in the precise thread's heap, soonest first (ties in arrival order).
struct Due {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` pops the greatest, the soonest here.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Wakes each wait at its deadline; sleeps until the nearest one or a new wait.
fn keep_time(requests: &mpsc::Receiver<Request>) {
    let mut due: BinaryHeap<Due> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|d| d.at <= now) {
            if let Some(d) = due.pop() {
                // A request dropped meanwhile (its connection closed) no longer listens.
                let _ = d.wake.send(());
            }
        }
        let next = match due.peek() {
            Some(d) => requests.recv_timeout(d.at.saturating_duration_since(now)),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, wake)) => {
                due.push(Due { at, seq, wake });
                seq += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never early, whatever the length (all tail, some bulk, none); a wait given up does not
    /// hold the others.
    #[tokio::test]
    async fn waits_end_no_earlier_than_asked_and_in_order() {
        let start = Instant::now();
        let lengths = [7u64, 1, 0, 2, 5, 3];
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for ms in lengths {
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let deadline = start + Duration::from_millis(ms);
                sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "{ms} ms: ended early");
                let _ = done_tx.send(ms);
            });
        }
        // Given up before its deadline: dropped, never woken.
        let abandoned = tokio::spawn(sleep(Duration::from_millis(4)));
        abandoned.abort();
        drop(done_tx);
        let mut ended = Vec::new();
        while let Some(ms) = done_rx.recv().await {
            ended.push(ms);
        }
        ended.sort_unstable();
        let mut all = lengths.to_vec();
        all.sort_unstable();
        assert_eq!(ended, all, "every wait ended");
        let t = Instant::now();
        sleep(Duration::from_millis(1)).await;
        assert!(t.elapsed() >= Duration::from_millis(1));
    }
}
