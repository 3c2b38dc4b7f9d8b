//! Checkpointed projections: a [`Projection`] handles events inside a
//! transaction of its read-model database, and a [`ProjectionRunner`] saves
//! the projection's checkpoint **in that same transaction**.
//!
//! # Why the checkpoint shares the transaction
//!
//! A runner that commits the read model and then writes its checkpoint
//! separately applies an event twice when it crashes between the two; one
//! that saves the checkpoint first skips an event. Committing both at once
//! (table `cqrs_checkpoints(name, position)` in the read-model database) makes
//! every batch all-or-nothing: after a crash the runner resumes from the last
//! committed position and the read model holds each event exactly once.
//!
//! # Poison events
//!
//! When a handler fails, the batch is rolled back. The events before the
//! failing one are committed on their own; the failing event is retried with
//! the runner's [`Backoff`] schedule, and after `max_retries` the projection is
//! **parked**: it stops, [`ProjectionHandle::status`] reports
//! [`ProjectionState::Parked`] with the position and error, and an `error!` is
//! traced. It never skips the event.
//!
//! # Rebuilds
//!
//! A rebuild is a second projection with a new name (its own checkpoint row,
//! starting at 0) writing into a new table. The old one keeps serving until the
//! new one has [`wait_for`](ProjectionHandle::wait_for) the head; then the
//! application swaps the table it reads and stops the old runner.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_eventsourcing::lease::{DEFAULT_LEASE_TTL, Leadership, LeaseStore, default_owner};
use trellis_eventsourcing::{EventFilter, EventStore, StoredEvent};

pub use trellis_eventsourcing::lease::Role;
use trellis_resilience::retry::Backoff;

use crate::error::{BoxError, Error, Result};

#[cfg(feature = "any")]
mod any;
#[cfg(feature = "nats")]
pub(crate) mod jetstream;
#[cfg(feature = "postgres")]
mod postgres;
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

mod private {
    pub trait Sealed {}
}

/// A sqlx database that can hold read models and their checkpoints:
/// `Sqlite` (feature `sqlite`), `Postgres` (feature `postgres`) and
/// `sqlx::Any` (feature `any`).
///
/// # Choosing the backend at run time
///
/// Write the projection once as `Projection<sqlx::Any>` and open an
/// `AnyPool` from the configured URL (`sqlite:...` or `postgres://...`,
/// after `sqlx::any::install_default_drivers()`): the runner reads the
/// dialect of every statement from the connection's backend name, and the
/// handler writes with `$N` placeholders, which both dialects accept.
/// Any other backend behind `Any` fails with a configuration error.
///
/// The trait is sealed: its lease and compare-and-set checkpoint statements
/// carry the runner's exactly-once guarantee, and each implementation is
/// proven by the crate's conformance suite.
///
/// # Errors
///
/// Every method fails with the database's error ([`Error::Database`], or
/// the lease methods' `trellis_eventsourcing::Error`); through `Any`, a
/// backend other than SQLite and PostgreSQL is a configuration error.
pub trait ReadModelDb: sqlx::Database + private::Sealed {
    /// Creates `cqrs_checkpoints` if it is missing.
    fn ensure_checkpoints(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<()>> + Send;
    /// The committed position of `name` (0 = none).
    fn load_checkpoint(
        pool: &sqlx::Pool<Self>,
        name: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Upserts the position of `name` inside `tx`.
    fn save_checkpoint(
        tx: &mut sqlx::Transaction<'static, Self>,
        name: &str,
        position: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Makes sure the checkpoint row of `name` exists (at 0 when new).
    fn init_checkpoint(
        pool: &sqlx::Pool<Self>,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Inside `tx`: moves the checkpoint of `name` from `expected` to `new`
    /// if it is at `expected` and lease `name` still carries `epoch`;
    /// `false` (nothing written) otherwise.
    fn save_checkpoint_fenced(
        tx: &mut sqlx::Transaction<'static, Self>,
        name: &str,
        epoch: u64,
        expected: u64,
        new: u64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Takes lease `name` (table `cqrs_leases`) for `owner` if free, expired
    /// or already its own; the new epoch, or `None`.
    fn try_acquire_lease(
        pool: &sqlx::Pool<Self>,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = trellis_eventsourcing::Result<Option<u64>>> + Send;
    /// Extends lease `name` if `owner` still holds it with `epoch`.
    fn renew_lease(
        pool: &sqlx::Pool<Self>,
        name: &str,
        owner: &str,
        epoch: u64,
        ttl: Duration,
    ) -> impl Future<Output = trellis_eventsourcing::Result<bool>> + Send;
    /// The holder (owner, epoch) of lease `name`.
    fn lease_holder(
        pool: &sqlx::Pool<Self>,
        name: &str,
    ) -> impl Future<Output = trellis_eventsourcing::Result<Option<(String, u64)>>> + Send;
    /// Takes lease `name` for `owner` from `dead_owner` if it still holds it
    /// with `dead_epoch`, whatever its expiry.
    fn take_over_lease(
        pool: &sqlx::Pool<Self>,
        name: &str,
        owner: &str,
        dead_owner: &str,
        dead_epoch: u64,
        ttl: Duration,
    ) -> impl Future<Output = trellis_eventsourcing::Result<Option<u64>>> + Send;
    /// The live version of versioned projection `name` and its position
    /// (table `cqrs_live_versions`), `None` before one went live.
    fn live_version(
        pool: &sqlx::Pool<Self>,
        name: &str,
    ) -> impl Future<Output = Result<Option<LiveVersion>>> + Send;
    /// [`live_version`](Self::live_version) inside `tx`.
    fn live_version_in(
        tx: &mut sqlx::Transaction<'static, Self>,
        name: &str,
    ) -> impl Future<Output = Result<Option<LiveVersion>>> + Send;
    /// Inside `tx`: makes `version` the live version of `name` at
    /// `position` if none is; whether it did.
    fn claim_live(
        tx: &mut sqlx::Transaction<'static, Self>,
        name: &str,
        version: u32,
        position: u64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Inside `tx`: moves the live position of `name` to `position` if
    /// `version` is still live (a write: it serializes with a switch);
    /// whether it did.
    fn advance_live(
        tx: &mut sqlx::Transaction<'static, Self>,
        name: &str,
        version: u32,
        position: u64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Inside `tx`: hands `name` from `from` (still live at `from_position`)
    /// to `version` at `position`; whether it did.
    fn switch_live(
        tx: &mut sqlx::Transaction<'static, Self>,
        name: &str,
        from: LiveVersion,
        version: u32,
        position: u64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Lets lease `name` expire now if `owner` still holds it with `epoch`.
    fn release_lease(
        pool: &sqlx::Pool<Self>,
        name: &str,
        owner: &str,
        epoch: u64,
    ) -> impl Future<Output = trellis_eventsourcing::Result<()>> + Send;
}

/// The checkpoint table of the read-model database.
pub(crate) const CHECKPOINTS: &str = "cqrs_checkpoints";
/// The lease table of the read-model database: one active runner per name.
pub(crate) const LEASES: &str = "cqrs_leases";
/// Which version of each versioned projection queries read.
pub(crate) const LIVE_VERSIONS: &str = "cqrs_live_versions";

/// The version of a versioned projection that queries read, and the
/// position it has applied up to (see [`live_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveVersion {
    /// The live [`Projection::version`].
    pub version: u32,
    /// Its committed checkpoint.
    pub position: u64,
}

impl LiveVersion {
    /// `{base}_v{version}`: the table of this version, for projections that
    /// name their tables so (as [`versioned_table`] does).
    pub fn table(&self, base: &str) -> String {
        versioned_table(base, self.version)
    }
}

/// `{base}_v{version}`: a naming convention for the tables of one version
/// of a projection, so versions build side by side.
pub fn versioned_table(base: &str, version: u32) -> String {
    format!("{base}_v{version}")
}

/// The checkpoint and lease name of `version` of projection `name`.
fn versioned_name(name: &str, version: Option<u32>) -> String {
    match version {
        Some(v) => format!("{name}@v{v}"),
        None => name.to_owned(),
    }
}

/// Which version of the versioned projection `name` queries should read:
/// `None` until a first version has caught up with the store.
///
/// Read it per query (or cache it briefly): after a new version took over,
/// the old one's tables stop moving but stay complete, so a reader that
/// still uses them sees an older, never a half-built, model.
///
/// # Errors
///
/// The read-model database failed.
///
/// # Examples
///
/// One versioned projection, written once for `sqlx::Any` (feature `any`),
/// on the backend the URL names:
///
/// ```
/// # #[cfg(all(feature = "any", feature = "sqlite"))]
/// # mod demo {
/// use std::time::Duration;
/// use trellis_cqrs::{BoxError, Projection, ProjectionRunner, live_version, versioned_table};
/// use trellis_eventsourcing::{EventStore, ExpectedVersion, MemoryStore, NewEvent, StoredEvent};
///
/// struct Totals;
///
/// impl Projection<sqlx::Any> for Totals {
///     fn name(&self) -> &str { "totals" }
///     fn version(&self) -> Option<u32> { Some(2) }
///     async fn setup(&self, pool: &sqlx::AnyPool) -> Result<(), BoxError> {
///         let ddl = format!("CREATE TABLE IF NOT EXISTS {} (position BIGINT NOT NULL)", versioned_table("totals", 2));
///         sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(pool).await?;
///         Ok(())
///     }
///     async fn handle(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, e: &StoredEvent) -> Result<(), BoxError> {
///         let insert = format!("INSERT INTO {} (position) VALUES ($1)", versioned_table("totals", 2));
///         sqlx::query(sqlx::AssertSqlSafe(insert)).bind(e.global_position as i64).execute(&mut **tx).await?;
///         Ok(())
///     }
/// }
///
/// pub async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
///     sqlx::any::install_default_drivers();
///     let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).idle_timeout(None).connect(url).await?;
///     let store = MemoryStore::new();
///     store.append("order-1", ExpectedVersion::Any, vec![NewEvent::new("Placed", serde_json::json!({}))]).await?;
///     let runner = ProjectionRunner::new(store, pool.clone(), Totals).spawn().await?;
///     runner.wait_for(1, Duration::from_secs(5)).await?;
///     // The first version goes live once it caught up.
///     let live = loop {
///         if let Some(live) = live_version(&pool, "totals").await? { break live; }
///         tokio::time::sleep(Duration::from_millis(10)).await;
///     };
///     assert_eq!((live.version, live.table("totals")), (2, "totals_v2".to_owned()));
///     let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {}", live.table("totals"))))
///         .fetch_one(&pool).await?;
///     assert_eq!(rows, 1);
///     Ok(())
/// }
/// # }
/// # fn main() {
/// # #[cfg(all(feature = "any", feature = "sqlite"))]
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
/// #     .block_on(demo::run("sqlite::memory:")).unwrap();
/// # }
/// ```
pub async fn live_version<DB: ReadModelDb>(
    pool: &sqlx::Pool<DB>,
    name: &str,
) -> Result<Option<LiveVersion>> {
    DB::live_version(pool, name).await
}

/// The leases of a read-model database, for [`Leadership`], and the epoch
/// the runner holds (0 = none) for its handle.
struct ReadModelLeases<DB: ReadModelDb>(sqlx::Pool<DB>, Arc<AtomicU64>);

impl<DB: ReadModelDb> LeaseStore for ReadModelLeases<DB> {
    fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = trellis_eventsourcing::Result<Option<u64>>> + Send {
        DB::try_acquire_lease(&self.0, name, owner, ttl)
    }

    fn renew(
        &self,
        name: &str,
        owner: &str,
        epoch: u64,
        ttl: Duration,
    ) -> impl Future<Output = trellis_eventsourcing::Result<bool>> + Send {
        DB::renew_lease(&self.0, name, owner, epoch, ttl)
    }

    fn release(
        &self,
        name: &str,
        owner: &str,
        epoch: u64,
    ) -> impl Future<Output = trellis_eventsourcing::Result<()>> + Send {
        DB::release_lease(&self.0, name, owner, epoch)
    }

    fn holder(
        &self,
        name: &str,
    ) -> impl Future<Output = trellis_eventsourcing::Result<Option<(String, u64)>>> + Send {
        DB::lease_holder(&self.0, name)
    }

    fn take_over(
        &self,
        name: &str,
        owner: &str,
        dead_owner: &str,
        dead_epoch: u64,
        ttl: Duration,
    ) -> impl Future<Output = trellis_eventsourcing::Result<Option<u64>>> + Send {
        DB::take_over_lease(&self.0, name, owner, dead_owner, dead_epoch, ttl)
    }

    async fn save_checkpoint_fenced(
        &self,
        name: &str,
        epoch: u64,
        expected: u64,
        new: u64,
    ) -> trellis_eventsourcing::Result<bool> {
        // Not used by the runners (they fence inside their read-model
        // transaction); here for the contract's sake.
        let mut tx = self.0.begin().await?;
        let moved = DB::save_checkpoint_fenced(&mut tx, name, epoch, expected, new)
            .await
            .map_err(|e| trellis_eventsourcing::Error::Corrupt(e.to_string()))?;
        if moved {
            tx.commit().await?;
        }
        Ok(moved)
    }
}

/// A read model fed by events, written inside the runner's transaction.
///
/// For SQLite this is `Projection<sqlx::Sqlite>` (the handler gets a
/// `&mut sqlx::Transaction<Sqlite>`), for PostgreSQL `Projection<sqlx::Postgres>`.
/// Write with `.execute(&mut **tx)`; never commit the transaction yourself.
pub trait Projection<DB: ReadModelDb>: Send + Sync + 'static {
    /// The checkpoint name: unique per projection *and version* (a rebuild
    /// uses a new name).
    fn name(&self) -> &str;

    /// The version of this projection's code and tables (default `None`:
    /// unversioned, checkpointed as [`name`](Self::name)).
    ///
    /// A versioned projection is checkpointed as `{name}@v{version}` and
    /// deployed blue/green: a new version builds beside the live one from
    /// position 0 (into its own tables, e.g. [`versioned_table`]), queries
    /// keep reading the live version ([`live_version`]), and once the new
    /// version's batch covers the live version's position it takes over in
    /// that batch's transaction; the old version's runner then stops
    /// ([`ProjectionState::Retired`]). The first version goes live when it
    /// first catches up with the store.
    fn version(&self) -> Option<u32> {
        None
    }

    /// Which events to read (default: every event).
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Creates the read-model tables; runs once when the runner starts.
    fn setup(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> impl Future<Output = std::result::Result<(), BoxError>> + Send {
        let _ = pool;
        async { Ok(()) }
    }

    /// Applies one event inside `tx`. An error rolls the batch back.
    fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        event: &StoredEvent,
    ) -> impl Future<Output = std::result::Result<(), BoxError>> + Send;

    /// The side effect of one event (default: none), called after the
    /// batch's [`handle`](Self::handle) calls, in order, in the same
    /// transaction, **only while this
    /// version is live**: a version rebuilding beside the live one holds
    /// its side effects, and takes them over from the event after the live
    /// version's last position, so each event's effect is written once.
    /// Write it as a row (an outbox) inside `tx`; an error rolls the
    /// batch back like a handler's.
    fn side_effect(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        event: &StoredEvent,
    ) -> impl Future<Output = std::result::Result<(), BoxError>> + Send {
        let _ = (tx, event);
        async { Ok(()) }
    }
}

/// Where a projection is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectionState {
    /// Reading and applying events (or waiting for new ones).
    Running,
    /// Stopped on a poison event after its retries ran out.
    Parked {
        /// Global position of the failing event.
        position: u64,
        /// The handler's last error.
        error: String,
    },
    /// Shut down or dropped.
    Stopped,
    /// A newer version of this versioned projection went live; this one
    /// stopped (its tables stay, complete up to its last position).
    Retired {
        /// The version that is live now.
        live_version: u32,
    },
}

/// A snapshot of a projection's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Running, parked or stopped.
    pub state: ProjectionState,
    /// Whether this runner holds the projection's lease and applies events
    /// ([`Role::Active`]) or waits for it ([`Role::Standby`]) while another
    /// replica applies them. A standby runner follows the committed
    /// checkpoint, so `position` and `wait_for` still work on it.
    pub role: Role,
    /// The committed checkpoint.
    pub position: u64,
    /// The store's head when last read.
    pub head: u64,
    /// Events between `position` and `head` as of the last committed batch
    /// ([`EventStore::events_behind`]: counted, because positions need not
    /// be contiguous; PostgreSQL's are sparse).
    pub behind: u64,
    /// When the last applied event was recorded (for "seconds behind").
    pub last_recorded_at: Option<SystemTime>,
}

impl ProjectionStatus {
    /// Events behind the head: 0 when the checkpoint is at the head, else
    /// [`behind`](Self::behind) (at least 1: a head newer than the last
    /// count is counted after the next batch).
    pub fn lag(&self) -> u64 {
        if self.position >= self.head {
            0
        } else {
            self.behind.max(1)
        }
    }

    /// Seconds behind, approximately: zero when caught up, else the age of
    /// the last applied event (`None` if none was applied since the start).
    ///
    /// # Examples
    ///
    /// ```
    /// # use trellis_cqrs::{ProjectionState, ProjectionStatus};
    /// let status = ProjectionStatus {
    ///     name: "orders".into(),
    ///     state: ProjectionState::Running,
    ///     role: trellis_cqrs::Role::Active,
    ///     position: 10,
    ///     head: 10,
    ///     behind: 0,
    ///     last_recorded_at: None,
    /// };
    /// assert_eq!((status.lag(), status.time_behind()), (0, Some(std::time::Duration::ZERO)));
    /// ```
    pub fn time_behind(&self) -> Option<Duration> {
        if self.lag() == 0 {
            return Some(Duration::ZERO);
        }
        self.last_recorded_at
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }
}

/// How a runner reads and retries.
///
/// `#[non_exhaustive]`: start from [`RunnerOptions::default`] and set fields,
/// or use the runner's `with_*` setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunnerOptions {
    /// Events per transaction.
    pub batch_size: usize,
    /// Longest wait between polls when no append is signalled.
    pub poll_interval: Duration,
    /// Delay schedule between attempts at a failing event.
    pub backoff: Backoff,
    /// Retries of a failing event before the projection is parked.
    pub max_retries: u32,
    /// How long the active runner's lease lasts without a renewal (renewed
    /// every third of it): a standby replica takes over at most about this
    /// long after the active one died. Keep it above the longest batch.
    pub lease_ttl: Duration,
    /// This runner's lease owner id (`None`: host, process id and a random
    /// part, unique per start). A stable id (a pod name) lets a restarted
    /// runner take its own lease back at once instead of after `lease_ttl`.
    pub owner: Option<String>,
}

impl Default for RunnerOptions {
    /// 256 events per batch, 100 ms polls, trellis-resilience's default
    /// backoff, 5 retries, a 10 s lease with a per-start owner id.
    fn default() -> Self {
        RunnerOptions {
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
            backoff: Backoff::default(),
            max_retries: 5,
            lease_ttl: DEFAULT_LEASE_TTL,
            owner: None,
        }
    }
}

/// Feeds a [`Projection`] from an [`EventStore`] in checkpointed batches.
///
/// # Examples
///
/// See the crate README.
pub struct ProjectionRunner<DB: ReadModelDb, P, S> {
    store: S,
    pool: sqlx::Pool<DB>,
    projection: P,
    options: RunnerOptions,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::ProjectionMetrics>,
}

impl<DB: ReadModelDb, P, S> std::fmt::Debug for ProjectionRunner<DB, P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<DB, P, S> ProjectionRunner<DB, P, S>
where
    DB: ReadModelDb,
    P: Projection<DB>,
    S: EventStore,
{
    /// A runner of `projection` over `store`, writing into `pool`.
    pub fn new(store: S, pool: sqlx::Pool<DB>, projection: P) -> Self {
        ProjectionRunner {
            store,
            pool,
            projection,
            options: RunnerOptions::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the events per transaction (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.options.batch_size = batch_size.max(1);
        self
    }

    /// Sets the retry schedule for a failing event and how many retries park it.
    pub fn with_retry(mut self, backoff: Backoff, max_retries: u32) -> Self {
        self.options.backoff = backoff;
        self.options.max_retries = max_retries;
        self
    }

    /// Sets the poll interval.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.options.poll_interval = interval;
        self
    }

    /// Sets the lease TTL (see [`RunnerOptions::lease_ttl`]).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.options.lease_ttl = ttl;
        self
    }

    /// Sets the lease owner id (see [`RunnerOptions::owner`]).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.options.owner = Some(owner.into());
        self
    }

    /// Records lag and handled events in `metrics`.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::ProjectionMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Creates the checkpoint and lease tables and the projection's tables,
    /// loads the checkpoint and spawns the runner on the current tokio
    /// runtime. The runner starts as a standby and applies events once it
    /// holds the projection's lease.
    ///
    /// # Errors
    ///
    /// The read-model database failed, or the projection's `setup` did.
    pub async fn spawn(self) -> Result<ProjectionHandle> {
        DB::ensure_checkpoints(&self.pool).await?;
        self.projection
            .setup(&self.pool)
            .await
            .map_err(Error::Handler)?;
        let base = self.projection.name().to_owned();
        let version = self.projection.version();
        let name = versioned_name(&base, version);
        DB::init_checkpoint(&self.pool, &name).await?;
        let position = DB::load_checkpoint(&self.pool, &name).await?;
        let leadership = leadership(&name, &self.options);
        let held = Arc::new(AtomicU64::new(0));
        let leases = ReadModelLeases(self.pool.clone(), held.clone());
        let lease = LeaseRelease::new(self.pool.clone(), &name, leadership.owner(), held);
        let (position_tx, position_rx) = watch::channel(position);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(ProjectionStatus {
            name: name.clone(),
            state: ProjectionState::Running,
            role: Role::Standby,
            position,
            head: position,
            behind: 0,
            last_recorded_at: None,
        }));
        let worker = Worker {
            leadership,
            leases,
            runner: self,
            base,
            version,
            live: false,
            name: name.clone(),
            position,
            position_tx,
            shutdown: shutdown_rx,
            status: status.clone(),
        };
        let task = tokio::spawn(worker.run());
        Ok(ProjectionHandle {
            name,
            position: position_rx,
            status,
            shutdown: shutdown_tx,
            task: Some(task),
            lease: Some(lease),
        })
    }
}

/// A running projection. Dropping it aborts the runner (an open transaction
/// rolls back, as in a crash) and then releases its lease;
/// [`stop`](Self::stop) ends it between batches; [`abort`](Self::abort)
/// ends it as a SIGKILL would, lease held until it expires.
#[derive(Debug)]
pub struct ProjectionHandle {
    name: String,
    position: watch::Receiver<u64>,
    status: Arc<Mutex<ProjectionStatus>>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    lease: Option<LeaseRelease>,
}

/// Lets a dropped handle release the lease its runner held.
pub(crate) struct LeaseRelease {
    /// The epoch the runner holds now (0 = none), kept up to date by it.
    held: Arc<AtomicU64>,
    release: Releaser,
}

/// Releases the lease at the given epoch.
type Releaser = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

impl std::fmt::Debug for LeaseRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRelease")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl LeaseRelease {
    /// Releases through `pool` the lease `name` of `owner` at the epoch the
    /// runner publishes in `held`.
    pub(crate) fn new<DB: ReadModelDb>(
        pool: sqlx::Pool<DB>,
        name: &str,
        owner: &str,
        held: Arc<AtomicU64>,
    ) -> Self {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        LeaseRelease {
            held,
            release: Arc::new(move |epoch| {
                let (pool, name, owner) = (pool.clone(), name.clone(), owner.clone());
                Box::pin(async move {
                    if let Err(err) = DB::release_lease(&pool, &name, &owner, epoch).await {
                        tracing::debug!(projection = %name, %err, "releasing the lease of a dropped runner failed");
                    }
                })
            }),
        }
    }
}

impl ProjectionHandle {
    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current status (state, checkpoint, head, lag).
    pub fn status(&self) -> ProjectionStatus {
        lock(&self.status).clone()
    }

    /// A watch of the committed checkpoint.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// Read-your-writes: returns the checkpoint once it is at least
    /// `position`.
    ///
    /// # Errors
    ///
    /// [`Error::WaitTimeout`] after `timeout`, [`Error::Parked`] if the
    /// projection parks first, [`Error::Stopped`] if it stops (or retires).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64> {
        wait_for(self, position, timeout).await
    }

    /// Ends the runner as a crash would (SIGKILL): aborted, its open
    /// transaction rolled back, its lease **not** released, so another
    /// replica takes over only once the lease expired. Dropping the handle
    /// aborts the runner too, but releases its lease.
    pub fn abort(mut self) {
        self.lease = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Stops the runner between batches, releases its lease and waits for it.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProjectionHandle {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        // Once the runner is gone, let another replica take over at once.
        if let (Some(lease), Ok(runtime)) =
            (self.lease.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = task.await;
                let epoch = lease.held.load(Ordering::SeqCst);
                if epoch > 0 {
                    (lease.release)(epoch).await;
                }
            });
        }
    }
}

/// Waits until `projection`'s checkpoint reaches `position` (see
/// [`ProjectionHandle::wait_for`]).
///
/// # Errors
///
/// [`Error::WaitTimeout`], [`Error::Parked`] or [`Error::Stopped`], as
/// [`ProjectionHandle::wait_for`].
pub async fn wait_for(
    projection: &ProjectionHandle,
    position: u64,
    timeout: Duration,
) -> Result<u64> {
    let mut rx = projection.position.clone();
    let waited = tokio::time::timeout(timeout, async {
        loop {
            let reached = *rx.borrow_and_update();
            if reached >= position {
                return Ok(reached);
            }
            if rx.changed().await.is_err() {
                let reached = *rx.borrow();
                if reached >= position {
                    return Ok(reached);
                }
                return Err(match projection.status().state {
                    ProjectionState::Parked { position, error } => Error::Parked {
                        projection: projection.name.clone(),
                        position,
                        error,
                    },
                    _ => Error::Stopped(projection.name.clone()),
                });
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        Err(Error::WaitTimeout {
            projection: projection.name.clone(),
            wanted: position,
            reached: *projection.position.borrow(),
            timeout,
        })
    })
}

/// Returns once [`ProjectionHandle::stop`] asked the runner to stop. A
/// dropped handle (the sender gone) is no request: the runner is being
/// aborted, and must not take the clean-shutdown path (which releases the
/// lease) on its way out.
pub(crate) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn lock(m: &Mutex<ProjectionStatus>) -> std::sync::MutexGuard<'_, ProjectionStatus> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lease of projection `name` as `options` say.
fn leadership(name: &str, options: &RunnerOptions) -> Leadership {
    let owner = options.owner.clone().unwrap_or_else(default_owner);
    Leadership::new(name, owner, options.lease_ttl)
}

/// What a runner does about its lease before each round: `Some(epoch)` to
/// apply under, or `None` after following the committed checkpoint as a
/// standby. Updates the status when the role changes; a runner that becomes
/// active reloads the checkpoint (another replica may have moved it).
async fn lead<DB: ReadModelDb>(
    leadership: &mut Leadership,
    leases: &ReadModelLeases<DB>,
    name: &str,
    position: &mut u64,
    position_tx: &watch::Sender<u64>,
    status: &Mutex<ProjectionStatus>,
) -> Option<u64> {
    let was = leadership.role();
    let epoch = leadership.ensure(leases).await;
    leases.1.store(epoch.unwrap_or(0), Ordering::SeqCst);
    let now = leadership.role();
    if was != now {
        lock(status).role = now;
    }
    if epoch.is_none() || was != now {
        // Standby, or just became active: the committed checkpoint is the truth.
        match DB::load_checkpoint(&leases.0, name).await {
            Ok(committed) => {
                *position = committed;
                lock(status).position = committed;
                position_tx.send_if_modified(|p| {
                    let moved = *p != committed;
                    *p = committed;
                    moved
                });
            }
            Err(err) => {
                tracing::warn!(projection = %name, %err, "reading the checkpoint failed");
                return None;
            }
        }
    }
    epoch
}

struct Worker<DB: ReadModelDb, P, S> {
    leadership: Leadership,
    leases: ReadModelLeases<DB>,
    runner: ProjectionRunner<DB, P, S>,
    /// The projection's own name: the key of its live-version row.
    base: String,
    /// Its version, if versioned.
    version: Option<u32>,
    /// Whether this version was live at its last commit (versioned only).
    live: bool,
    /// The checkpoint and lease name (`base`, or `{base}@v{version}`).
    name: String,
    position: u64,
    position_tx: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
    status: Arc<Mutex<ProjectionStatus>>,
}

/// Why an idle runner woke up.
enum Wake {
    /// An append in this process signalled a new head.
    Signal,
    /// The poll interval passed (another process may have appended).
    Poll,
    /// Shut down.
    Shutdown,
}

/// Why a batch did not commit.
struct BatchFailure {
    /// Index of the failing event in the batch (0 when the database failed).
    index: usize,
    error: String,
    /// The fenced checkpoint write found another position or epoch: this
    /// runner lost its lease; the batch was rolled back.
    fenced: bool,
    /// The live-version row changed under the batch (a switch raced it):
    /// rolled back, to be retried at once.
    live_moved: bool,
    /// A newer version is live: this one retires.
    retired: Option<u32>,
}

impl BatchFailure {
    fn handler(index: usize, error: String) -> Self {
        BatchFailure {
            index,
            error,
            fenced: false,
            live_moved: false,
            retired: None,
        }
    }
}

/// What a batch of a versioned projection does about the live version.
#[derive(Debug, Clone, Copy)]
enum LiveStep {
    /// Unversioned, or rebuilding and not yet at the live position.
    Nothing,
    /// Live: advance the live position with the checkpoint.
    Advance,
    /// No version is live and this one caught up: become live.
    Claim,
    /// Take over from the live (older) version at its position.
    Switch(LiveVersion),
}

impl<DB, P, S> Worker<DB, P, S>
where
    DB: ReadModelDb,
    P: Projection<DB>,
    S: EventStore,
{
    async fn run(mut self) {
        let filter = self.runner.projection.filter();
        let mut head_rx = self.runner.store.watch_head();
        let batch_size = self.runner.options.batch_size.max(1);
        // Set after a failure: the next read is shortened so a poison event is
        // isolated and the good events before it are committed on their own.
        let mut limit: Option<usize> = None;
        let mut attempts: u32 = 0;
        let mut previous_delay = None;
        // Set when a read on the append signal alone found nothing: the
        // next round asks the store for its head.
        let mut ask_store = true;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let Some(epoch) = lead(
                &mut self.leadership,
                &self.leases,
                &self.name,
                &mut self.position,
                &self.position_tx,
                &self.status,
            )
            .await
            else {
                limit = None;
                attempts = 0;
                previous_delay = None;
                ask_store = true;
                tokio::select! {
                    () = tokio::time::sleep(self.leadership.standby_interval()) => {}
                    () = stop_requested(&mut self.shutdown) => break,
                }
                continue;
            };
            // An append in this process signals its committed position: read
            // on from there without asking the store for its head (a query
            // per batch). The signal is only a hint (another process may
            // write without it), so the store's head is asked when the
            // signal shows nothing new or found nothing to read.
            let signalled = *head_rx.borrow_and_update();
            let from_store = ask_store || signalled <= self.position;
            let head = if from_store {
                match self.runner.store.head_position().await {
                    Ok(h) => h,
                    Err(err) => {
                        tracing::warn!(projection = %self.name, %err, "reading head failed");
                        if let Wake::Shutdown = self.idle(&mut head_rx).await {
                            break;
                        }
                        ask_store = true;
                        continue;
                    }
                }
            } else {
                signalled
            };
            ask_store = false;
            self.observe_head(head);
            if head <= self.position {
                // Caught up: a versioned projection may go live (or learn
                // that a newer version did) without a new event.
                if let Some(version) = self.version.filter(|_| self.live) {
                    // Live: only learn whether a newer version took over.
                    match DB::live_version(&self.runner.pool, &self.base).await {
                        Ok(Some(live)) if live.version > version => {
                            self.retire(live.version).await;
                            return;
                        }
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(projection = %self.name, %err, "reading the live version failed");
                        }
                    }
                } else if self.version.is_some() {
                    match self.apply(&[], self.position, epoch, true).await {
                        Ok(()) => {}
                        Err(failure) if failure.retired.is_some() => {
                            self.retire(failure.retired.unwrap_or_default()).await;
                            return;
                        }
                        Err(failure) if failure.fenced => {
                            self.leadership.lose();
                            self.leases.1.store(0, Ordering::SeqCst);
                            lock(&self.status).role = Role::Standby;
                            continue;
                        }
                        Err(failure) if failure.live_moved => continue,
                        Err(failure) => {
                            tracing::warn!(projection = %self.name, error = %failure.error, "checking the live version failed");
                        }
                    }
                }
                match self.idle(&mut head_rx).await {
                    Wake::Shutdown => break,
                    Wake::Signal => {}
                    Wake::Poll => ask_store = true,
                }
                continue;
            }
            let n = limit.unwrap_or(batch_size);
            let batch = match self.runner.store.read_all(self.position, &filter, n).await {
                Ok(b) => b,
                Err(err) => {
                    tracing::warn!(projection = %self.name, %err, "reading events failed");
                    if let Wake::Shutdown = self.idle(&mut head_rx).await {
                        break;
                    }
                    ask_store = true;
                    continue;
                }
            };
            let last = batch.last().map_or(self.position, |e| e.global_position);
            // A short batch has seen every matching event up to the store's
            // `head`, so the checkpoint may move past filtered-out events to
            // it (not to a signalled head: the store is the authority).
            let target = if batch.len() < n && from_store {
                last.max(head)
            } else {
                last
            };
            if batch.is_empty() && !from_store {
                ask_store = true;
                continue;
            }
            let caught_up = batch.len() < n && from_store;
            match self.apply(&batch, target, epoch, caught_up).await {
                Ok(()) => {
                    let behind = self.events_behind(target, head).await;
                    self.committed(target, &batch, head, behind);
                    limit = None;
                    attempts = 0;
                    previous_delay = None;
                }
                Err(failure) if failure.retired.is_some() => {
                    self.retire(failure.retired.unwrap_or_default()).await;
                    return;
                }
                Err(failure) if failure.live_moved => {
                    tracing::debug!(projection = %self.name, "the live version moved under the batch; retrying");
                }
                Err(failure) if failure.fenced => {
                    tracing::warn!(
                        projection = %self.name,
                        position = self.position,
                        "checkpoint fenced: another runner holds the lease; batch rolled back, standing by"
                    );
                    self.leadership.lose();
                    self.leases.1.store(0, Ordering::SeqCst);
                    lock(&self.status).role = Role::Standby;
                }
                Err(failure) if failure.index > 0 => {
                    // The events before the failing one are fine: commit them alone.
                    limit = Some(failure.index);
                }
                Err(failure) => {
                    limit = Some(1);
                    let failing = batch.first().map_or(target, |e| e.global_position);
                    if attempts >= self.runner.options.max_retries {
                        tracing::error!(
                            event = "projection.parked",
                            projection = %self.name,
                            position = failing,
                            error = %failure.error,
                            "projection parked on a poison event"
                        );
                        self.leadership.release(&self.leases).await;
                        let mut status = lock(&self.status);
                        status.state = ProjectionState::Parked {
                            position: failing,
                            error: failure.error,
                        };
                        status.role = Role::Standby;
                        return;
                    }
                    let delay = self
                        .runner
                        .options
                        .backoff
                        .next_delay(attempts, previous_delay);
                    attempts += 1;
                    previous_delay = Some(delay);
                    tracing::warn!(
                        projection = %self.name,
                        position = failing,
                        attempt = attempts,
                        error = %failure.error,
                        ?delay,
                        "projection handler failed, retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop_requested(&mut self.shutdown) => break,
                    }
                }
            }
        }
        self.leadership.release(&self.leases).await;
        let mut status = lock(&self.status);
        status.state = ProjectionState::Stopped;
        status.role = Role::Standby;
    }

    /// Waits for an append signal, the poll interval or shutdown.
    async fn idle(&mut self, head_rx: &mut watch::Receiver<u64>) -> Wake {
        let poll = self.runner.options.poll_interval;
        tokio::select! {
            changed = head_rx.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(poll).await;
                    return Wake::Poll;
                }
                Wake::Signal
            }
            () = tokio::time::sleep(poll) => Wake::Poll,
            () = stop_requested(&mut self.shutdown) => Wake::Shutdown,
        }
    }

    /// Records the head. Caught up, the lag is 0; behind, it is counted
    /// after the batch that follows (`events_behind`), not here: one count
    /// per batch.
    fn observe_head(&self, head: u64) {
        tracing::trace!(projection = %self.name, head, position = self.position, "projection head");
        let mut status = lock(&self.status);
        status.head = head;
        if head <= self.position {
            status.behind = 0;
            #[cfg(feature = "metrics")]
            if let Some(m) = &self.runner.metrics {
                m.set_lag(&self.name, 0);
            }
        }
    }

    /// Events between `target` and `head`, asked of the store only when
    /// the checkpoint is below the head; on an error, the last count.
    async fn events_behind(&self, target: u64, head: u64) -> u64 {
        if target >= head {
            return 0;
        }
        match self.runner.store.events_behind(target, head).await {
            Ok(n) => n,
            Err(err) => {
                tracing::debug!(projection = %self.name, %err, "counting the lag failed");
                lock(&self.status).behind.max(1)
            }
        }
    }

    fn committed(&mut self, target: u64, batch: &[StoredEvent], head: u64, lag: u64) {
        self.position = target;
        {
            let mut status = lock(&self.status);
            status.position = target;
            status.behind = lag;
            status.head = status.head.max(head);
            if let Some(e) = batch.last() {
                status.last_recorded_at = Some(e.recorded_at);
            }
        }
        if !batch.is_empty() {
            tracing::debug!(projection = %self.name, position = target, events = batch.len(), lag, "batch committed");
        }
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.runner.metrics {
            m.handled(&self.name, batch.len() as u64);
            m.set_lag(&self.name, lag);
            if let Some(behind) = lock(&self.status).time_behind() {
                m.set_seconds_behind(&self.name, behind);
            }
        }
        self.position_tx.send_replace(target);
    }

    /// Stops for good: a newer version is live.
    async fn retire(&mut self, live_version: u32) {
        tracing::info!(projection = %self.name, live_version, "a newer version is live; retiring");
        self.leadership.release(&self.leases).await;
        let mut status = lock(&self.status);
        status.state = ProjectionState::Retired { live_version };
        status.role = Role::Standby;
    }

    /// Applies `batch` and moves the checkpoint to `target` in one
    /// transaction, with the batch's side effects and, for a versioned
    /// projection, its step on the live-version row. `caught_up`: the batch
    /// read everything up to the store's head.
    async fn apply(
        &mut self,
        batch: &[StoredEvent],
        target: u64,
        epoch: u64,
        caught_up: bool,
    ) -> Result<(), BatchFailure> {
        let db = |e: &dyn std::fmt::Display| {
            BatchFailure::handler(0, format!("read-model database: {e}"))
        };
        let mut tx = self.runner.pool.begin().await.map_err(|e| db(&e))?;
        for (index, event) in batch.iter().enumerate() {
            if let Err(err) = self.runner.projection.handle(&mut tx, event).await {
                // Dropping `tx` rolls back every write of this batch.
                return Err(BatchFailure::handler(index, err.to_string()));
            }
        }
        // The live-version row is read after the handlers wrote: on SQLite
        // the transaction then holds the write lock, so the row cannot
        // change under it (a read first would pin an older snapshot, and
        // the first write would fail with SQLITE_BUSY).
        // Which events fire side effects: those after this position.
        let (step, fire_after) = match self.version {
            None => (LiveStep::Nothing, Some(0)),
            Some(version) => {
                let live = DB::live_version_in(&mut tx, &self.base)
                    .await
                    .map_err(|e| db(&e))?;
                match live {
                    None if caught_up => (LiveStep::Claim, None),
                    None => (LiveStep::Nothing, None),
                    Some(live) if live.version == version => (LiveStep::Advance, Some(0)),
                    Some(live) if live.version > version => {
                        return Err(BatchFailure {
                            retired: Some(live.version),
                            ..BatchFailure::handler(0, "retired".into())
                        });
                    }
                    // An older version is live: take over once this batch
                    // covers its position; the events after it fire here.
                    Some(live) if live.position >= self.position && live.position <= target => {
                        (LiveStep::Switch(live), Some(live.position))
                    }
                    Some(_) => (LiveStep::Nothing, None),
                }
            }
        };
        if let Some(after) = fire_after {
            for (index, event) in batch.iter().enumerate() {
                if event.global_position > after
                    && let Err(err) = self.runner.projection.side_effect(&mut tx, event).await
                {
                    return Err(BatchFailure::handler(index, format!("side effect: {err}")));
                }
            }
        }
        // Whether the live-version step held, and whether this version is
        // live after it.
        let (moved_live, live) = match (step, self.version) {
            (_, None) => (true, true),
            (LiveStep::Nothing, Some(_)) => (true, false),
            (LiveStep::Advance, Some(v)) => {
                let held = DB::advance_live(&mut tx, &self.base, v, target)
                    .await
                    .map_err(|e| db(&e))?;
                (held, held)
            }
            // Another version may have claimed first: then this one stays
            // a rebuild, and its batch commits all the same.
            (LiveStep::Claim, Some(v)) => {
                let claimed = DB::claim_live(&mut tx, &self.base, v, target)
                    .await
                    .map_err(|e| db(&e))?;
                (true, claimed)
            }
            (LiveStep::Switch(from), Some(v)) => {
                let switched = DB::switch_live(&mut tx, &self.base, from, v, target)
                    .await
                    .map_err(|e| db(&e))?;
                (switched, switched)
            }
        };
        if !moved_live {
            // Retired under us, or the live version moved: roll back (the
            // side effects too) and look again.
            return Err(BatchFailure {
                live_moved: true,
                ..BatchFailure::handler(0, "live version moved".into())
            });
        }
        // Compare-and-set, fenced by the lease epoch: a runner that lost its
        // lease, or whose checkpoint another runner moved, writes nothing.
        let moved = DB::save_checkpoint_fenced(&mut tx, &self.name, epoch, self.position, target)
            .await
            .map_err(|e| db(&e))?;
        if !moved {
            // Dropping `tx` rolls the batch back.
            return Err(BatchFailure {
                fenced: true,
                ..BatchFailure::handler(0, "checkpoint fenced".into())
            });
        }
        tx.commit().await.map_err(|e| db(&e))?;
        if live && !self.live && self.version.is_some() {
            tracing::info!(projection = %self.name, position = target, "version is live");
        }
        self.live = live;
        Ok(())
    }
}

/// Clamps `u64` into SQL `BIGINT`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
