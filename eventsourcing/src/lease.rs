//! Named leases with a fencing epoch: one active holder per name across
//! replicas.
//!
//! # Why
//!
//! A background worker that runs in every replica of a service (an outbox
//! relay, a projection runner) must have **one** active instance per name:
//! two relays publishing the same positions at once interleave them at the
//! broker, and two runners applying the same events at once apply them
//! twice. A lease row per name, `(name, owner, epoch, until_ms)`, elects one
//! holder; the others stand by and take the lease once it has expired, so a
//! holder that dies without a word (SIGKILL, a lost node) is replaced within
//! its TTL.
//!
//! # Fencing
//!
//! Every take of a lease increments its **epoch**. The holder writes its
//! checkpoint compare-and-set *and* only while the lease row still carries its
//! epoch ([`LeaseStore::save_checkpoint_fenced`]), so a holder that was paused
//! past its TTL and replaced (a long GC, a frozen VM) cannot write a
//! checkpoint when it wakes up: its write finds another epoch and fails.
//!
//! # Time
//!
//! Expiry is judged by the database's clock (or, for the memory store, the
//! tokio clock), never by the replicas' clocks, so replicas whose clocks
//! disagree still agree on who holds a lease. A holder also keeps a local
//! deadline of `ttl` after the *start* of its last successful renewal and
//! stops acting once it passes, before any other replica can take over.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;

/// A store of named leases and the checkpoints they fence.
///
/// Implemented by [`MemoryStore`](crate::MemoryStore) (one process),
/// `SqliteEventStore` and `PgEventStore` (table `es_leases` beside
/// `es_checkpoints`).
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes lease `name` for `owner` for `ttl` if it is free, expired or
    /// already `owner`'s, with a new epoch; `None` if another owner holds it.
    ///
    /// # Errors
    ///
    /// The store's error if it cannot be reached.
    fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Extends the lease for `ttl` from now if `owner` still holds it with
    /// `epoch`; `false` if it was taken meanwhile.
    ///
    /// # Errors
    ///
    /// The store's error if it cannot be reached.
    fn renew(
        &self,
        name: &str,
        owner: &str,
        epoch: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Lets the lease expire now if `owner` still holds it with `epoch`, so a
    /// standby takes over at once (a clean shutdown).
    ///
    /// # Errors
    ///
    /// The store's error if it cannot be reached.
    fn release(
        &self,
        name: &str,
        owner: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The current holder of lease `name` (owner and epoch), expired or not.
    ///
    /// # Errors
    ///
    /// The store's error if it cannot be reached.
    fn holder(&self, name: &str) -> impl Future<Output = Result<Option<(String, u64)>>> + Send;

    /// Takes lease `name` for `owner` from `dead_owner`, whatever its expiry,
    /// if it still holds it with `dead_epoch`; the new epoch, or `None`.
    /// For a holder known to be dead (see [`Leadership`]).
    ///
    /// # Errors
    ///
    /// The store's error if it cannot be reached.
    fn take_over(
        &self,
        name: &str,
        owner: &str,
        dead_owner: &str,
        dead_epoch: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Moves checkpoint `name` from `expected` to `new` if it is at
    /// `expected` **and** lease `name` still carries `epoch`; `false` (and
    /// nothing written) otherwise. A checkpoint that does not exist yet
    /// counts as 0.
    ///
    /// # Errors
    ///
    /// The store's error if it cannot be reached.
    fn save_checkpoint_fenced(
        &self,
        name: &str,
        epoch: u64,
        expected: u64,
        new: u64,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// Whether a worker holds its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease and does the work.
    Active,
    /// Waits for the lease; does nothing else.
    Standby,
}

/// The default lease TTL: 10 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// A unique owner id: `host/pid/process-start-id/worker-id`, so a restarted
/// or rescheduled replica is a new owner. Two workers of one process get
/// different ids with the same first three parts.
pub fn default_owner() -> String {
    format!(
        "{}/{}/{}/{}",
        host(),
        std::process::id(),
        process_token(),
        uuid::Uuid::now_v7().simple()
    )
}

/// A random id of this process start.
fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| uuid::Uuid::now_v7().simple().to_string())
}

/// Whether `owner` (a [`default_owner`] id) is a process on this host that is
/// certainly gone: an earlier start of this very process id (another start
/// id), or a process id that no longer runs here (Linux `/proc`). Anything
/// else (another host, a live process, a foreign owner format) is treated as
/// alive and waited for until its lease expires.
fn dead_on_this_host(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(h), Some(pid), Some(token), Some(_), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if h != host() {
        return false;
    }
    if pid == std::process::id() {
        return token != process_token();
    }
    std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "host".to_owned())
        .replace('/', "_")
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: u64,
    renew_at: Instant,
    expires_at: Instant,
}

/// One worker's view of its lease: takes it when free, renews it every
/// TTL / 3, and drops it at once when a renewal fails or its local deadline
/// passes.
///
/// A lease held by a process of this host that is certainly gone (killed,
/// then restarted: see [`default_owner`]) is taken over at once rather than
/// after its TTL, so a process restarted on the same machine resumes
/// without waiting. Owners from other hosts are always waited for.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_eventsourcing::MemoryStore;
/// use trellis_eventsourcing::lease::{Leadership, Role};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let mut a = Leadership::new("relay", "a", Duration::from_secs(10));
/// let mut b = Leadership::new("relay", "b", Duration::from_secs(10));
/// assert!(a.ensure(&store).await.is_some());
/// assert!(b.ensure(&store).await.is_none());
/// assert_eq!((a.role(), b.role()), (Role::Active, Role::Standby));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Leadership {
    name: String,
    owner: String,
    ttl: Duration,
    held: Option<Held>,
}

impl Leadership {
    /// Leadership of lease `name` for `owner`, held for `ttl` per renewal.
    pub fn new(name: impl Into<String>, owner: impl Into<String>, ttl: Duration) -> Self {
        Leadership {
            name: name.into(),
            owner: owner.into(),
            ttl: ttl.max(Duration::from_millis(30)),
            held: None,
        }
    }

    /// The lease name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Active or standby, as of the last [`ensure`](Self::ensure).
    pub fn role(&self) -> Role {
        if self.held.is_some() {
            Role::Active
        } else {
            Role::Standby
        }
    }

    /// The epoch held, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.held.map(|h| h.epoch)
    }

    /// How long a standby waits between attempts to take the lease:
    /// TTL / 4, at most 1 s.
    pub fn standby_interval(&self) -> Duration {
        (self.ttl / 4).min(Duration::from_secs(1))
    }

    /// Keeps the lease (renewing it when due) or tries to take it; returns
    /// the epoch when this worker may act, `None` when it must stand by. A
    /// store error while holding keeps the lease until its local deadline;
    /// while standing by it means standby.
    pub async fn ensure<L: LeaseStore>(&mut self, store: &L) -> Option<u64> {
        let now = Instant::now();
        if let Some(held) = self.held {
            if now >= held.expires_at {
                tracing::warn!(lease = %self.name, owner = %self.owner, "lease expired before it could be renewed; standing by");
                self.held = None;
                return None;
            }
            if now < held.renew_at {
                return Some(held.epoch);
            }
            match store
                .renew(&self.name, &self.owner, held.epoch, self.ttl)
                .await
            {
                Ok(true) => {
                    self.held = Some(Held {
                        epoch: held.epoch,
                        renew_at: now + self.ttl / 3,
                        expires_at: now + self.ttl,
                    });
                    Some(held.epoch)
                }
                Ok(false) => {
                    tracing::warn!(lease = %self.name, owner = %self.owner, "lease taken by another owner; standing by");
                    self.held = None;
                    None
                }
                Err(err) => {
                    tracing::warn!(lease = %self.name, %err, "lease renewal failed; retrying until it expires");
                    Some(held.epoch)
                }
            }
        } else {
            match store.try_acquire(&self.name, &self.owner, self.ttl).await {
                Ok(Some(epoch)) => {
                    tracing::info!(lease = %self.name, owner = %self.owner, epoch, "lease taken; active");
                    self.held = Some(Held {
                        epoch,
                        renew_at: now + self.ttl / 3,
                        expires_at: now + self.ttl,
                    });
                    Some(epoch)
                }
                Ok(None) => self.take_over_dead(store, now).await,
                Err(err) => {
                    tracing::warn!(lease = %self.name, %err, "taking the lease failed");
                    None
                }
            }
        }
    }

    /// Takes the lease from a holder of this host that is certainly gone.
    async fn take_over_dead<L: LeaseStore>(&mut self, store: &L, now: Instant) -> Option<u64> {
        let (dead, epoch) = match store.holder(&self.name).await {
            Ok(Some((holder, epoch))) if holder != self.owner && dead_on_this_host(&holder) => {
                (holder, epoch)
            }
            _ => return None,
        };
        match store
            .take_over(&self.name, &self.owner, &dead, epoch, self.ttl)
            .await
        {
            Ok(Some(new)) => {
                tracing::info!(lease = %self.name, owner = %self.owner, dead = %dead, epoch = new, "lease taken over from a dead process of this host; active");
                self.held = Some(Held {
                    epoch: new,
                    renew_at: now + self.ttl / 3,
                    expires_at: now + self.ttl,
                });
                Some(new)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(lease = %self.name, %err, "taking the lease over failed");
                None
            }
        }
    }

    /// Forgets the lease without a word to the store (after a fenced write
    /// failed: someone else holds it).
    pub fn lose(&mut self) {
        self.held = None;
    }

    /// Releases the lease if held (clean shutdown).
    pub async fn release<L: LeaseStore>(&mut self, store: &L) {
        if let Some(held) = self.held.take()
            && let Err(err) = store.release(&self.name, &self.owner, held.epoch).await
        {
            tracing::warn!(lease = %self.name, %err, "releasing the lease failed; it expires on its own");
        }
    }
}

/// The lease statements, written once for SQLite and PostgreSQL (and used by
/// `trellis-cqrs` for the leases in a read-model database): `t` is the lease
/// table `(name TEXT PRIMARY KEY, owner TEXT, epoch BIGINT, until_ms BIGINT)`,
/// `c` the checkpoint table `(name TEXT PRIMARY KEY, position BIGINT)`,
/// `now` the dialect's clock in milliseconds ([`SQLITE_NOW`](sql::SQLITE_NOW),
/// [`POSTGRES_NOW`](sql::POSTGRES_NOW)). `$N` placeholders work on both.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql {
    use std::time::Duration;

    /// Milliseconds of `d`, as SQL `BIGINT`.
    pub fn ttl_ms(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    /// The lease table's `CREATE TABLE IF NOT EXISTS`.
    pub fn create(t: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (name TEXT PRIMARY KEY, owner TEXT NOT NULL, \
             epoch BIGINT NOT NULL, until_ms BIGINT NOT NULL)"
        )
    }

    /// `$1` name, `$2` owner, `$3` ttl ms → `RETURNING epoch`, no row when held by another.
    pub fn acquire(t: &str, now: &str) -> String {
        format!(
            "INSERT INTO {t} (name, owner, epoch, until_ms) VALUES ($1, $2, 1, {now} + $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, epoch = {t}.epoch + 1, until_ms = excluded.until_ms \
             WHERE {t}.until_ms < {now} OR {t}.owner = excluded.owner \
             RETURNING epoch"
        )
    }

    /// `$1` name, `$2` owner, `$3` epoch, `$4` ttl ms.
    pub fn renew(t: &str, now: &str) -> String {
        format!(
            "UPDATE {t} SET until_ms = {now} + $4 WHERE name = $1 AND owner = $2 AND epoch = $3"
        )
    }

    /// `$1` name → `owner, epoch`.
    pub fn holder(t: &str) -> String {
        format!("SELECT owner, epoch FROM {t} WHERE name = $1")
    }

    /// `$1` name, `$2` new owner, `$3` dead owner, `$4` its epoch, `$5` ttl
    /// ms → `RETURNING epoch`.
    pub fn take_over(t: &str, now: &str) -> String {
        format!(
            "UPDATE {t} SET owner = $2, epoch = epoch + 1, until_ms = {now} + $5 \
             WHERE name = $1 AND owner = $3 AND epoch = $4 RETURNING epoch"
        )
    }

    /// `$1` name, `$2` owner, `$3` epoch.
    pub fn release(t: &str) -> String {
        format!("UPDATE {t} SET until_ms = 0 WHERE name = $1 AND owner = $2 AND epoch = $3")
    }

    /// `$1` name: makes sure a checkpoint row exists (at 0).
    pub fn init_checkpoint(c: &str) -> String {
        format!("INSERT INTO {c} (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
    }

    /// `$1` name, `$2` expected, `$3` new, `$4` epoch.
    pub fn fenced_checkpoint(c: &str, t: &str) -> String {
        format!(
            "UPDATE {c} SET position = $3 WHERE name = $1 AND position = $2 \
             AND EXISTS (SELECT 1 FROM {t} WHERE {t}.name = $1 AND {t}.epoch = $4)"
        )
    }

    /// Now in milliseconds since the epoch, by SQLite's clock.
    pub const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
    /// Now in milliseconds since the epoch, by PostgreSQL's clock.
    pub const POSTGRES_NOW: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certainly_gone_processes_of_this_host_count_as_dead() {
        let me = default_owner();
        assert!(!dead_on_this_host(&me), "this process");
        assert!(
            !dead_on_this_host(&default_owner()),
            "another worker of this process"
        );
        let pid = std::process::id();
        assert!(
            dead_on_this_host(&format!("{}/{pid}/earlier-start/w", host())),
            "an earlier start under the same process id"
        );
        assert!(
            !dead_on_this_host(&format!("other-host/{pid}/earlier-start/w")),
            "another host is waited for"
        );
        assert!(!dead_on_this_host("pod-7"), "a foreign owner format");
        assert!(!dead_on_this_host(&format!("{}/notapid/t/w", host())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert_eq!(
            dead_on_this_host(&format!("{}/{gone}/t/w", host())),
            std::path::Path::new("/proc/self").exists(),
            "an exited process (where /proc tells)"
        );
        assert!(
            !dead_on_this_host(&format!("{}/1/t/w", host())),
            "a live process (pid 1)"
        );
    }
}
