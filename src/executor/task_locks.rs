//! One start call per task id in flight in this process: a call holds its task's lock from
//! its intent to its settled outcome (the history lookup of an unknown outcome included), so
//! a lookup can never mistake this process's other call of the same task for its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// The per-task-id locks of one process. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct TaskLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// Held while a call of one task is unsettled.
pub type TaskGuard = OwnedMutexGuard<()>;

impl TaskLocks {
    /// Waits for `task_id`'s lock (callers queue in order).
    pub async fn lock(&self, task_id: &str) -> TaskGuard {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(lock) = map.get(task_id).and_then(Weak::upgrade) {
                lock
            } else {
                // Forget the locks nobody holds any more before the map grows.
                if map.len() >= 64 {
                    map.retain(|_, w| w.strong_count() > 0);
                }
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(task_id.to_string(), Arc::downgrade(&lock));
                lock
            }
        };
        lock.lock_owned().await
    }

    /// Task ids with a live lock (for tests and status).
    pub fn live(&self) -> usize {
        self.locks
            .lock()
            .map(|m| m.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_task_and_others_pass() {
        let locks = Arc::new(TaskLocks::default());
        let held = locks.lock("a").await;
        // Another task is not held up.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.lock("b")).await;
        assert!(other.is_ok());
        // The same task waits until the holder lets go.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.lock("a").await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(got, Ok(Ok(_))));
    }

    #[tokio::test]
    async fn forgotten_locks_are_dropped() {
        let locks = TaskLocks::default();
        for i in 0..200 {
            drop(locks.lock(&format!("t{i}")).await);
        }
        assert_eq!(locks.live(), 0);
        assert!(locks.locks.lock().map(|m| m.len()).unwrap_or(0) <= 64);
    }
}
