//! The [`HealthCheck`] trait, the probe [`Group`]s and the [`Check`] registration.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// The error a check fails with: any error type, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The timeout a [`Check`] gets unless [`Check::timeout`] says otherwise.
///
/// One second: Kubernetes' default probe `timeoutSeconds` is 1, and a probe
/// must answer before the kubelet gives up on it, so keep every check's
/// timeout under the probe timeout you configure.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// One health check: `Ok(())` when the dependency is usable, an error saying
/// why when it is not.
///
/// The registry runs every check of a group at once, each in its own task and
/// under its own timeout, so an implementation does not need a timeout of its
/// own and may simply await its dependency.
///
/// Closures `Fn() -> impl Future<Output = Result<(), E>>` implement the trait
/// too, for one-off checks.
///
/// # Examples
///
/// ```
/// use trellis_health::{async_trait, BoxError, HealthCheck};
///
/// struct DiskSpace {
///     min_free_bytes: u64,
/// }
///
/// #[async_trait]
/// impl HealthCheck for DiskSpace {
///     async fn check(&self) -> Result<(), BoxError> {
///         let free = 10 * 1024 * 1024 * 1024_u64; // measured in a real check
///         if free < self.min_free_bytes {
///             return Err(format!("only {free} bytes free").into());
///         }
///         Ok(())
///     }
/// }
///
/// // A closure is a check too.
/// let cache_warm = || async { Ok::<_, std::io::Error>(()) };
/// # fn is_check<C: HealthCheck>(_: &C) {}
/// # is_check(&DiskSpace { min_free_bytes: 1 });
/// # is_check(&cache_warm);
/// ```
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// Probe the dependency once.
    ///
    /// # Errors
    ///
    /// Any error means the dependency is down: the registry reports the
    /// check as down with the error's message (one that outlives its
    /// timeout is cancelled and reported down as "timed out after N ms").
    ///
    /// # Cancel safety
    ///
    /// The registry drops the future when the check's timeout elapses, so the
    /// check must tolerate being cancelled at any await point.
    async fn check(&self) -> Result<(), BoxError>;
}

#[async_trait]
impl<F, Fut, E> HealthCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    async fn check(&self) -> Result<(), BoxError> {
        (self)().await.map_err(Into::into)
    }
}

/// A probe group, as Kubernetes and Spring Boot Actuator define them.
///
/// - **Liveness** (`/live`): is the process itself healthy, or should it be
///   restarted? By default it holds no check at all. Actuator's guidance: a
///   liveness probe must not depend on anything external, because a database
///   outage would then fail the liveness probe of every pod at once and the
///   kubelet would restart them all, turning an outage of one dependency into
///   an outage of the whole service (and a restart storm on the database when
///   it comes back). Put only checks of in-process state here (a deadlocked
///   worker, a poisoned cache).
/// - **Readiness** (`/ready`): can the process take traffic now? Failing it
///   takes the pod out of the load balancer, without a restart. Dependencies
///   belong here. It also goes down first on shutdown, see
///   [`Health::begin_shutdown`](crate::Health::begin_shutdown).
/// - **Startup** (`/startup`): has the process finished starting (migrations
///   run, caches warmed)? Kubernetes holds the other probes back until it
///   succeeds and never asks again afterwards, so once it has passed it stays
///   up for the life of the process.
///
/// Not `#[non_exhaustive]` on purpose: the groups are Kubernetes' three
/// probe kinds, a closed set, and callers match on them to mount routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `/live`: restart the process when this fails.
    Liveness,
    /// `/ready`: stop sending traffic while this fails.
    Readiness,
    /// `/startup`: the process has finished starting; sticky once passed.
    Startup,
}

impl Group {
    /// Every group, in index order.
    pub const ALL: [Group; 3] = [Group::Liveness, Group::Readiness, Group::Startup];

    pub(crate) const fn index(self) -> usize {
        match self {
            Group::Liveness => 0,
            Group::Readiness => 1,
            Group::Startup => 2,
        }
    }

    /// The path the handlers serve this group on: `/live`, `/ready` or `/startup`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(trellis_health::Group::Readiness.path(), "/ready");
    /// ```
    pub const fn path(self) -> &'static str {
        match self {
            Group::Liveness => "/live",
            Group::Readiness => "/ready",
            Group::Startup => "/startup",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Group::Liveness => "liveness",
            Group::Readiness => "readiness",
            Group::Startup => "startup",
        })
    }
}

/// A check registered under a name, with its timeout, criticality and groups.
///
/// Defaults: critical, a timeout of [`DEFAULT_CHECK_TIMEOUT`], in the
/// [`Group::Readiness`] group only.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_health::{Check, Group};
///
/// let check = Check::new("search-index", || async { Ok::<_, std::io::Error>(()) })
///     .timeout(Duration::from_millis(500))
///     .non_critical()
///     .groups([Group::Readiness, Group::Startup]);
/// assert_eq!(check.name(), "search-index");
/// assert!(!check.is_critical());
/// assert!(check.is_in(Group::Startup));
/// assert!(!check.is_in(Group::Liveness));
/// ```
#[derive(Clone)]
pub struct Check {
    pub(crate) name: Arc<str>,
    pub(crate) check: Arc<dyn HealthCheck>,
    pub(crate) timeout: Duration,
    pub(crate) critical: bool,
    pub(crate) groups: [bool; 3],
}

impl Check {
    /// Register `check` under `name`: critical, default timeout, readiness group.
    pub fn new(name: impl Into<String>, check: impl HealthCheck) -> Self {
        Self::from_arc(name, Arc::new(check))
    }

    /// Like [`Check::new`] for a check already shared behind an `Arc`.
    pub fn from_arc(name: impl Into<String>, check: Arc<dyn HealthCheck>) -> Self {
        let mut groups = [false; 3];
        groups[Group::Readiness.index()] = true;
        Self {
            name: Arc::from(name.into()),
            check,
            timeout: DEFAULT_CHECK_TIMEOUT,
            critical: true,
            groups,
        }
    }

    /// How long one run of the check may take before it counts as down.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether a failure takes the whole group down (503, `down`) or only
    /// degrades it (200, `degraded`).
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// Shorthand for `critical(false)`: a failure reports the group `degraded`
    /// but keeps answering 200, e.g. for a recommendation service the shop can
    /// live without.
    pub fn non_critical(self) -> Self {
        self.critical(false)
    }

    /// The groups the check runs in, replacing the default (readiness only).
    /// A check may be in several groups.
    pub fn groups(mut self, groups: impl IntoIterator<Item = Group>) -> Self {
        self.groups = [false; 3];
        for group in groups {
            self.groups[group.index()] = true;
        }
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The check's timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a failure takes its groups down.
    pub fn is_critical(&self) -> bool {
        self.critical
    }

    /// Whether the check runs in `group`.
    pub fn is_in(&self, group: Group) -> bool {
        self.groups[group.index()]
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<Group> = Group::ALL.into_iter().filter(|g| self.is_in(*g)).collect();
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("critical", &self.critical)
            .field("groups", &groups)
            .finish_non_exhaustive()
    }
}
