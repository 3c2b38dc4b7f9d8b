//! The registry: [`Health`], its [`HealthBuilder`], result caching with
//! single-flight, the startup latch and the shutdown switch.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared, join_all};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::{Check, Group};
use crate::error::{Error, Result};
use crate::report::{CheckResult, HealthReport, Status};

/// How long a group's result is reused unless [`HealthBuilder::cache_ttl`]
/// says otherwise.
///
/// One second: Kubernetes probes every 10 s by default, so one pod's own
/// probes never hit the cache, but a burst (several probers, a load balancer
/// and a monitoring system polling at once) costs one run of the checks.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);

/// Decides from the request head whether a caller may see check details.
type AuthorizeFn = dyn Fn(&http::request::Parts) -> bool + Send + Sync;

/// Whether the JSON body lists each check (name, status, duration, error) or
/// only the group's status.
///
/// Check details name the dependencies of a service and carry their error
/// messages, which can leak host names and versions, so, like Actuator's
/// `show-details: never`, they are hidden by default.
///
/// `#[non_exhaustive]`: more ways to decide may come; build it from the
/// variants or [`when_authorized`](Self::when_authorized).
///
/// # Examples
///
/// ```
/// use trellis_health::ShowDetails;
///
/// // Show details to callers an auth layer in front has marked as operators,
/// // here through a request extension it inserted.
/// #[derive(Clone)]
/// struct Operator;
/// let details = ShowDetails::when_authorized(|parts| parts.extensions.get::<Operator>().is_some());
///
/// let (mut parts, ()) = http::Request::new(()).into_parts();
/// assert!(!details.allows(&parts));
/// parts.extensions.insert(Operator);
/// assert!(details.allows(&parts));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ShowDetails {
    /// Never list the checks: the body is `{"status":"..."}` (the default).
    #[default]
    Never,
    /// Always list the checks.
    Always,
    /// List the checks when the predicate accepts the request head: a header,
    /// a peer address, or an extension an auth layer in front has set.
    WhenAuthorized(Arc<AuthorizeFn>),
}

impl ShowDetails {
    /// [`ShowDetails::WhenAuthorized`] from a closure.
    pub fn when_authorized<F>(authorize: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        ShowDetails::WhenAuthorized(Arc::new(authorize))
    }

    /// Whether a request with this head may see the details.
    pub fn allows(&self, parts: &http::request::Parts) -> bool {
        match self {
            ShowDetails::Never => false,
            ShowDetails::Always => true,
            ShowDetails::WhenAuthorized(authorize) => authorize(parts),
        }
    }
}

impl fmt::Debug for ShowDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShowDetails::Never => f.write_str("Never"),
            ShowDetails::Always => f.write_str("Always"),
            ShowDetails::WhenAuthorized(_) => f.write_str("WhenAuthorized(..)"),
        }
    }
}

/// Builds a [`Health`] registry.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_health::{Check, Group, Health, ShowDetails};
///
/// # fn main() -> Result<(), trellis_health::Error> {
/// let health = Health::builder()
///     .check(Check::new("db", || async { Ok::<_, std::io::Error>(()) }).groups([Group::Readiness, Group::Startup]))
///     .cache_ttl(Duration::from_secs(2))
///     .show_details(ShowDetails::Always)
///     .build()?;
/// # let _ = health;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthBuilder {
    checks: Vec<Check>,
    cache_ttl: Duration,
    show_details: ShowDetails,
}

impl Default for HealthBuilder {
    fn default() -> Self {
        Self {
            checks: Vec::new(),
            cache_ttl: DEFAULT_CACHE_TTL,
            show_details: ShowDetails::Never,
        }
    }
}

impl HealthBuilder {
    /// Register a check.
    pub fn check(&mut self, check: Check) -> &mut Self {
        self.checks.push(check);
        self
    }

    /// How long a group's result is reused before its checks run again
    /// (default [`DEFAULT_CACHE_TTL`]). Zero disables the cache, but probes
    /// arriving while a run is in flight still share that run.
    pub fn cache_ttl(&mut self, ttl: Duration) -> &mut Self {
        self.cache_ttl = ttl;
        self
    }

    /// Whether responses list each check (default [`ShowDetails::Never`]).
    pub fn show_details(&mut self, show_details: ShowDetails) -> &mut Self {
        self.show_details = show_details;
        self
    }

    /// Validate the checks and build the registry.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyName`], [`Error::DuplicateName`], [`Error::ZeroTimeout`]
    /// or [`Error::NoGroup`] for a check that could never report sensibly.
    pub fn build(&self) -> Result<Health> {
        let mut names = HashSet::new();
        for check in &self.checks {
            if check.name.is_empty() {
                return Err(Error::EmptyName);
            }
            if !names.insert(&*check.name) {
                return Err(Error::DuplicateName {
                    name: check.name.to_string(),
                });
            }
            if check.timeout.is_zero() {
                return Err(Error::ZeroTimeout {
                    name: check.name.to_string(),
                });
            }
            if !check.groups.iter().any(|in_group| *in_group) {
                return Err(Error::NoGroup {
                    name: check.name.to_string(),
                });
            }
        }
        let groups = Group::ALL.map(|group| GroupState {
            group,
            members: self
                .checks
                .iter()
                .enumerate()
                .filter(|(_, check)| check.is_in(group))
                .map(|(index, _)| index)
                .collect(),
            slot: Mutex::new(Slot::default()),
        });
        Ok(Health {
            inner: Arc::new(Inner {
                checks: self.checks.clone(),
                groups,
                cache_ttl: self.cache_ttl,
                show_details: self.show_details.clone(),
                shutting_down: AtomicBool::new(false),
            }),
        })
    }
}

/// A run shared by every probe that arrives while it is in flight.
type SharedRun = Shared<BoxFuture<'static, Arc<HealthReport>>>;

struct Inner {
    checks: Vec<Check>,
    groups: [GroupState; 3],
    cache_ttl: Duration,
    show_details: ShowDetails,
    shutting_down: AtomicBool,
}

struct GroupState {
    group: Group,
    /// Indexes into `Inner::checks`.
    members: Vec<usize>,
    /// Held only to read or swap the cache, never across an await.
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// The last finished run and when it finished.
    cached: Option<(Instant, Arc<HealthReport>)>,
    /// The run in flight, with its id so a failed run only clears itself.
    in_flight: Option<(u64, SharedRun)>,
    next_run: u64,
    /// The startup group's first passing report: Kubernetes stops asking once
    /// startup has succeeded, so it never goes back down.
    passed: Option<Arc<HealthReport>>,
}

impl GroupState {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The lock guards plain data swaps that cannot panic half-way, so a
        // poisoned lock still holds a consistent slot.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The health registry: named checks in groups, run in parallel with
/// timeouts, results cached, served by the handlers in [`crate::service`]
/// (and `Health::router` with the `axum` feature).
///
/// Cloning is cheap and every clone shares the checks, the cache and the
/// shutdown switch.
///
/// # Examples
///
/// ```
/// use trellis_health::{Check, Group, Health, Status};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), trellis_health::Error> {
/// let health = Health::builder()
///     .check(Check::new("db", || async { Ok::<_, std::io::Error>(()) }))
///     .check(Check::new("recommendations", || async { Err::<(), _>("connection refused") }).non_critical())
///     .build()?;
///
/// let ready = health.check_group(Group::Readiness).await;
/// assert_eq!(ready.status, Status::Degraded);
/// assert_eq!(ready.checks["recommendations"].error.as_deref(), Some("connection refused"));
///
/// // Liveness holds no check by default: it is up whatever the database does.
/// assert_eq!(health.check_group(Group::Liveness).await.status, Status::Up);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.inner.checks)
            .field("cache_ttl", &self.inner.cache_ttl)
            .field("show_details", &self.inner.show_details)
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl Health {
    /// Start building a registry.
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// Run (or reuse) the checks of `group` and report.
    ///
    /// - A result younger than the cache TTL is returned as is.
    /// - Otherwise, if a run is in flight, this waits for that same run
    ///   (single flight): a thousand concurrent probes cost one run.
    /// - Otherwise it starts a run: every check in its own task, under its own
    ///   timeout, all at once, so the run takes as long as the slowest check
    ///   or its timeout, whichever is shorter.
    /// - The startup group, once it has passed (up or degraded), reports that
    ///   passing result forever without running again.
    /// - Readiness reports down at once after [`Health::begin_shutdown`].
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime: the run and each check are
    /// spawned tasks.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the run is a spawned task that finishes and fills the
    /// cache even if every probe waiting on it is dropped, so impatient
    /// probers cannot make the checks restart over and over.
    pub async fn check_group(&self, group: Group) -> Arc<HealthReport> {
        if group == Group::Readiness && self.is_shutting_down() {
            return Arc::new(shutdown_report());
        }
        let state = &self.inner.groups[group.index()];
        if state.members.is_empty() {
            return Arc::new(HealthReport::from_checks(BTreeMap::new()));
        }
        let run = {
            let mut slot = state.lock();
            if let Some(passed) = &slot.passed {
                return Arc::clone(passed);
            }
            if let Some((finished, report)) = &slot.cached
                && finished.elapsed() < self.inner.cache_ttl
            {
                return Arc::clone(report);
            }
            match &slot.in_flight {
                Some((_, run)) => run.clone(),
                None => {
                    let id = slot.next_run;
                    slot.next_run = slot.next_run.wrapping_add(1);
                    let run = self.start_run(group, id);
                    slot.in_flight = Some((id, run.clone()));
                    run
                }
            }
        };
        run.await
    }

    /// Spawn one run of `group` that stores its own result.
    fn start_run(&self, group: Group, id: u64) -> SharedRun {
        let inner = Arc::clone(&self.inner);
        let task: JoinHandle<Arc<HealthReport>> = tokio::spawn(async move {
            let state = &inner.groups[group.index()];
            let report = Arc::new(run_checks(&inner.checks, &state.members).await);
            tracing::debug!(group = %state.group, status = report.status.as_str(), "health checks ran");
            let mut slot = state.lock();
            slot.cached = Some((Instant::now(), Arc::clone(&report)));
            slot.in_flight = None;
            if group == Group::Startup && report.status != Status::Down {
                slot.passed = Some(Arc::clone(&report));
            }
            report
        });
        let inner = Arc::clone(&self.inner);
        async move {
            match task.await {
                Ok(report) => report,
                Err(err) => {
                    // The run task itself died (the runtime is shutting down):
                    // clear it so the next probe starts afresh.
                    let mut slot = inner.groups[group.index()].lock();
                    if matches!(slot.in_flight, Some((current, _)) if current == id) {
                        slot.in_flight = None;
                    }
                    let mut checks = BTreeMap::new();
                    checks.insert(
                        "health-run".to_owned(),
                        CheckResult::down(
                            Duration::ZERO,
                            true,
                            format!("health run failed: {err}"),
                        ),
                    );
                    Arc::new(HealthReport::from_checks(checks))
                }
            }
        }
        .boxed()
        .shared()
    }

    /// Take readiness down for good: from now on `/ready` answers 503 without
    /// running its checks, while `/live` keeps answering 200.
    ///
    /// Call it first when the process is asked to stop, then keep serving for
    /// a drain period (longer than the readiness probe period times its
    /// failure threshold, plus the load balancer's own delay) so every load
    /// balancer has seen the pod go unready and stopped sending new requests,
    /// and only then stop accepting connections and finish in-flight ones.
    /// [`Health::graceful_shutdown`] does exactly that sequence.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_health::{Group, Health, Status};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), trellis_health::Error> {
    /// let health = Health::builder().build()?;
    /// health.begin_shutdown();
    /// assert!(health.is_shutting_down());
    /// assert_eq!(health.check_group(Group::Readiness).await.status, Status::Down);
    /// assert_eq!(health.check_group(Group::Liveness).await.status, Status::Up);
    /// # Ok(())
    /// # }
    /// ```
    pub fn begin_shutdown(&self) {
        if !self.inner.shutting_down.swap(true, Ordering::SeqCst) {
            tracing::info!("shutdown begun: readiness now reports down");
        }
    }

    /// Whether [`Health::begin_shutdown`] has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// A future for `with_graceful_shutdown` that runs the drain sequence:
    /// wait for `signal`, take readiness down ([`Health::begin_shutdown`]),
    /// keep serving for `drain` so load balancers stop routing here, then
    /// resolve so the server stops accepting and finishes in-flight requests.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_health::{Group, Health, Status};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), trellis_health::Error> {
    /// let health = Health::builder().build()?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let drained = tokio::spawn(health.graceful_shutdown(async { let _ = stopped.await; }, Duration::from_secs(15)));
    ///
    /// stop.send(()).unwrap();
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// // Draining: unready, but still serving.
    /// assert_eq!(health.check_group(Group::Readiness).await.status, Status::Down);
    /// assert!(!drained.is_finished());
    /// tokio::time::sleep(Duration::from_secs(15)).await;
    /// assert!(drained.is_finished());
    /// # Ok(())
    /// # }
    /// ```
    pub fn graceful_shutdown(
        &self,
        signal: impl Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let health = self.clone();
        async move {
            signal.await;
            health.begin_shutdown();
            tracing::info!(drain_secs = drain.as_secs_f64(), "draining before stop");
            tokio::time::sleep(drain).await;
        }
    }

    /// The details policy this registry was built with.
    pub fn show_details(&self) -> &ShowDetails {
        &self.inner.show_details
    }

    /// The registered checks.
    pub fn checks(&self) -> &[Check] {
        &self.inner.checks
    }
}

fn shutdown_report() -> HealthReport {
    let mut checks = BTreeMap::new();
    checks.insert(
        "shutdown".to_owned(),
        CheckResult::down(
            Duration::ZERO,
            true,
            "shutting down: draining before stop".to_owned(),
        ),
    );
    HealthReport::from_checks(checks)
}

/// Run the given checks at once and collect their results.
async fn run_checks(checks: &[Check], members: &[usize]) -> HealthReport {
    let results = join_all(members.iter().map(|&index| run_one(&checks[index]))).await;
    let checks = members
        .iter()
        .zip(results)
        .map(|(&index, result)| (checks[index].name.to_string(), result))
        .collect();
    HealthReport::from_checks(checks)
}

/// Aborts the check's task when dropped, so a timed-out or abandoned check
/// does not keep running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run one check in its own task under its timeout.
///
/// The timeout is applied here, outside the check's task, so even a check
/// that blocks its thread without yielding cannot hold the response past its
/// timeout (on a multi-threaded runtime).
async fn run_one(check: &Check) -> CheckResult {
    let started = Instant::now();
    let probe = Arc::clone(&check.check);
    let mut task = AbortOnDrop(tokio::spawn(async move { probe.check().await }));
    let outcome = tokio::time::timeout(check.timeout, &mut task.0).await;
    let duration = started.elapsed();
    let result = match outcome {
        Ok(Ok(Ok(()))) => CheckResult::up(duration, check.critical),
        Ok(Ok(Err(err))) => CheckResult::down(duration, check.critical, error_chain(&*err)),
        Ok(Err(join)) if join.is_panic() => {
            CheckResult::down(duration, check.critical, "check panicked".to_owned())
        }
        Ok(Err(_)) => CheckResult::down(duration, check.critical, "check cancelled".to_owned()),
        Err(_) => CheckResult::down(
            duration,
            check.critical,
            format!("timed out after {} ms", check.timeout.as_millis()),
        ),
    };
    if let Some(error) = &result.error {
        tracing::warn!(check = %check.name, critical = check.critical, %error, "health check failed");
    }
    result
}

/// The error and its sources, skipping a source whose text the outer message
/// already includes (many errors print their source themselves).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_rejects_bad_registrations() {
        let ok = || async { Ok::<_, std::io::Error>(()) };
        assert!(matches!(
            Health::builder().check(Check::new("", ok)).build(),
            Err(Error::EmptyName)
        ));
        assert!(matches!(
            Health::builder()
                .check(Check::new("a", ok).timeout(Duration::ZERO))
                .build(),
            Err(Error::ZeroTimeout { name }) if name == "a"
        ));
        assert!(matches!(
            Health::builder().check(Check::new("a", ok).groups([])).build(),
            Err(Error::NoGroup { name }) if name == "a"
        ));
        assert!(
            Health::builder()
                .check(Check::new("a", ok))
                .check(Check::new("b", ok))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn error_chain_includes_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] std::io::Error);
        let io = || std::io::Error::other("refused");
        assert_eq!(error_chain(&Outer(io())), "outer: refused");
        assert_eq!(error_chain(&Repeats(io())), "outer: refused");
    }
}
