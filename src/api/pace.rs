//! The hook through which a call made inside the client, where the executor's limits are out
//! of reach, takes its turn in the account's pace and reports how it was answered: the IAM
//! token request, which credentials make while preparing another call. The limits
//! (`crate::executor::limits`) implement it; this layer only knows the trait, so the arrows
//! keep pointing down.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The account's pace, as seen from below the limited client.
pub trait Pacer: Send + Sync {
    /// Waits until the call may go (at least: until a `Retry-After` pause in force is over).
    fn turn(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// How the call was answered: its HTTP status (`None`: no answer) and its `Retry-After`.
    fn answered(&self, status: Option<u16>, retry_after: Option<Duration>);
}
