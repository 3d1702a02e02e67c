//! The lead: one row in `deployd_lease` (holder, epoch, expiry on the database's clock). A
//! node takes it only once it has expired, which raises the epoch; the holder renews it every
//! lease/3. The holder's own permission to call runs on its monotonic clock, which keeps
//! counting through a SIGSTOP or a suspend: it ends at lease*2/3 after the last renewal was
//! *sent*, well before the row can expire, so a node that cannot renew stops calling before
//! anyone else may start.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::GenericClient;

use super::connect::describe;

/// A lead held: its epoch (the fencing token) and until when this node may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Grows at each change of leader.
    pub epoch: i64,
    /// On the monotonic clock: no call may start at or after this instant.
    pub calls_until: Instant,
    /// When taken: when the previous lead expired (on the database's clock), if there was
    /// one. The fires missed since are the takeover's to catch up.
    pub previous_expiry: Option<chrono::DateTime<chrono::Utc>>,
    /// When taken: the database's clock at that moment (a takeover's catch-up reads the
    /// time from it, not from this host's clock).
    pub database_now: Option<chrono::DateTime<chrono::Utc>>,
}

/// The pure timing of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a silent leader keeps the lead, on the database's clock.
    pub lease: Duration,
}

impl LeaseTiming {
    /// How often the holder renews, and a follower tries to take an expired lead.
    pub fn renew_every(self) -> Duration {
        self.lease / 3
    }

    /// Until when a holder whose renewal was sent at `sent` may start calls: two thirds of
    /// the lease, so that a third is left for the calls already going and for clock rates
    /// that differ between this host and the database.
    pub fn calls_until(self, sent: Instant) -> Instant {
        sent + self.lease * 2 / 3
    }
}

/// Takes the lead if it is free or expired (raising the epoch), as `node`; `None` when
/// another node holds it. Times are the database's.
pub async fn try_acquire(
    client: &impl GenericClient,
    node: &str,
    timing: LeaseTiming,
    sent: Instant,
) -> Result<Option<Held>, String> {
    let secs = timing.lease.as_secs_f64();
    let row = client
        .query_opt(
            "with previous as (select expires_at from deployd_lease where id)
             insert into deployd_lease (id, holder, epoch, expires_at)
                 values (true, $1, 1, now() + make_interval(secs => $2))
             on conflict (id) do update
                 set holder = excluded.holder,
                     epoch = deployd_lease.epoch + 1,
                     expires_at = excluded.expires_at
                 where deployd_lease.expires_at < now()
             returning epoch, (select expires_at from previous), now()",
            &[&node, &secs],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(row.map(|r| Held {
        epoch: r.get(0),
        calls_until: timing.calls_until(sent),
        previous_expiry: r.get(1),
        database_now: Some(r.get(2)),
    }))
}

/// Renews the lead held with `epoch`; `Ok(None)` when it is no longer this node's (expired and
/// taken, or expired at all: an expired lead is never renewed, since another node may already
/// have read it as free).
pub async fn renew(
    client: &impl GenericClient,
    node: &str,
    epoch: i64,
    timing: LeaseTiming,
    sent: Instant,
) -> Result<Option<Held>, String> {
    let secs = timing.lease.as_secs_f64();
    let n = client
        .execute(
            "update deployd_lease set expires_at = now() + make_interval(secs => $3)
             where id and holder = $1 and epoch = $2 and expires_at > now()",
            &[&node, &epoch, &secs],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok((n == 1).then(|| Held {
        epoch,
        calls_until: timing.calls_until(sent),
        previous_expiry: None,
        database_now: None,
    }))
}

/// Gives the lead up at once (a clean shutdown), so that a follower need not wait for it
/// to expire.
pub async fn release(client: &impl GenericClient, node: &str, epoch: i64) -> Result<(), String> {
    client
        .execute(
            "update deployd_lease set expires_at = now()
             where id and holder = $1 and epoch = $2 and expires_at > now()",
            &[&node, &epoch],
        )
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// The lead as the database sees it now: holder, epoch, seconds left (negative: expired).
pub async fn current(client: &impl GenericClient) -> Result<Option<(String, i64, f64)>, String> {
    let row = client
        .query_opt(
            "select holder, epoch, extract(epoch from expires_at - now())::float8 from deployd_lease",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_stop_a_third_of_the_lease_before_it_expires() {
        let timing = LeaseTiming {
            lease: Duration::from_secs(15),
        };
        let sent = Instant::now();
        assert_eq!(timing.renew_every(), Duration::from_secs(5));
        assert_eq!(timing.calls_until(sent), sent + Duration::from_secs(10));
        // One renewal may fail and the holder still calls; when the next one is due, the
        // holder has stopped, a full third of the lease before the row expires.
        assert!(sent + timing.renew_every() < timing.calls_until(sent));
        assert!(sent + timing.renew_every() * 2 >= timing.calls_until(sent));
    }
}
