//! The command side: a tower [`Service`] pipeline from a [`Command`] to
//! [`Repository::execute`].
//!
//! Each step is a layer you may stack yourself (`tower::ServiceBuilder`):
//!
//! | Layer | Service | Does |
//! |---|---|---|
//! | [`CommandTraceLayer`] | [`CommandTrace`] | a `command` span with id, aggregate and outcome |
//! | [`ValidateLayer`] | [`Validated`] | [`Validate`] → [`Error::Validation`] (a 422) |
//! | [`AuthorizeLayer`] | [`Authorized`] | your [`Authorize`] hook with the caller's [`Identity`] → [`Error::Forbidden`] |
//! | [`IdempotencyLayer`] | [`Idempotent`] | a repeated key returns the first result; another command under it → [`Error::IdempotencyMismatch`] (422); a key in flight → [`Error::InFlight`] (409) |
//! | — | [`RepositoryService`] | [`Repository::execute_with_metadata`] |
//!
//! [`CommandPipeline::new`] builds that stack in that order with an in-memory
//! idempotency store and an allow-all hook; idempotency sits after
//! authorization so a caller cannot read someone else's cached result.
//!
//! The services box their futures: a command costs a store round trip, which
//! dwarfs one allocation per layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;
use trellis_eventsourcing::{Aggregate, EventStore, Metadata, Repository, SnapshotStore};
use uuid::Uuid;

use crate::error::{Error, Result};

pub mod idempotency;
pub mod validate;

use idempotency::{Claim, IdempotencyStore, MemoryIdempotencyStore};
use validate::Validate;

/// The boxed future every command service returns.
pub type CommandFuture = Pin<Box<dyn Future<Output = Result<CommandResult>> + Send>>;

/// Who sends a command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The caller's id (user id, service name).
    pub subject: String,
    /// Roles or scopes the caller holds (a JWT's `scope` claim, split).
    pub roles: Vec<String>,
}

impl Identity {
    /// An identity with no roles.
    pub fn new(subject: impl Into<String>) -> Self {
        Identity {
            subject: subject.into(),
            roles: Vec::new(),
        }
    }

    /// Adds a role.
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A command addressed to one aggregate, with its id and caller.
#[derive(Debug, Clone)]
pub struct Command<C> {
    /// Unique per intent: a retry of the same request reuses it.
    pub id: Uuid,
    /// The aggregate's id (not its stream id).
    pub aggregate_id: String,
    /// The command itself.
    pub payload: C,
    /// The caller, if authenticated.
    pub identity: Option<Identity>,
}

impl<C> Command<C> {
    /// A command with a fresh UUID v7 id and no identity.
    pub fn new(aggregate_id: impl Into<String>, payload: C) -> Self {
        Command {
            id: Uuid::now_v7(),
            aggregate_id: aggregate_id.into(),
            payload,
            identity: None,
        }
    }

    /// Replaces the id (use the client's idempotency key).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the caller.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The stream version after the command.
    pub version: u64,
    /// Global positions of the events written (empty if none).
    pub positions: Vec<u64>,
}

impl CommandResult {
    /// The highest position written: pass it to
    /// [`wait_for`](crate::wait_for) for read-your-writes (0 if none).
    pub fn last_position(&self) -> u64 {
        self.positions.last().copied().unwrap_or(0)
    }
}

/// The innermost service: runs the command through a [`Repository`].
pub struct RepositoryService<A: Aggregate, S> {
    repository: Arc<Repository<A, S>>,
}

impl<A: Aggregate, S> Clone for RepositoryService<A, S> {
    fn clone(&self) -> Self {
        RepositoryService {
            repository: self.repository.clone(),
        }
    }
}

impl<A: Aggregate, S: std::fmt::Debug> std::fmt::Debug for RepositoryService<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryService")
            .field("repository", &self.repository)
            .finish()
    }
}

impl<A, S> RepositoryService<A, S>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
{
    /// Wraps `repository`.
    pub fn new(repository: Repository<A, S>) -> Self {
        RepositoryService {
            repository: Arc::new(repository),
        }
    }
}

impl<A, S> Service<Command<A::Command>> for RepositoryService<A, S>
where
    A: Aggregate + Send + Sync + 'static,
    A::Command: Clone + Send + 'static,
    A::Event: Send,
    S: EventStore + SnapshotStore,
{
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, command: Command<A::Command>) -> Self::Future {
        let repository = self.repository.clone();
        Box::pin(async move {
            let metadata = Metadata {
                correlation_id: Some(command.id),
                causation_id: Some(command.id),
                actor: command.identity.map(|i| i.subject),
                ..Metadata::default()
            };
            // Event ids derived from the command id: a retry anywhere
            // (another replica, after a crash or a timeout) is an idempotent
            // repeat at the store, never a second write.
            let outcome = repository
                .execute_once(&command.aggregate_id, command.payload, command.id, metadata)
                .await?;
            Ok(CommandResult {
                version: outcome.version,
                positions: outcome.positions,
            })
        })
    }
}

/// Rejects commands whose [`Validate::validate`] fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateLayer;

impl ValidateLayer {
    /// The layer.
    pub const fn new() -> Self {
        ValidateLayer
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validated<S>;
    fn layer(&self, inner: S) -> Validated<S> {
        Validated { inner }
    }
}

/// See [`ValidateLayer`].
#[derive(Debug, Clone)]
pub struct Validated<S> {
    inner: S,
}

impl<S> Validated<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C> Service<Command<C>> for Validated<S>
where
    S: Service<Command<C>, Response = CommandResult, Error = Error, Future = CommandFuture>,
    C: Validate,
{
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, command: Command<C>) -> CommandFuture {
        match command.payload.validate() {
            Ok(()) => self.inner.call(command),
            Err(errors) => Box::pin(std::future::ready(Err(Error::Validation(errors)))),
        }
    }
}

/// Decides whether a caller may send a command.
///
/// Closures `Fn(Option<&Identity>, &C) -> Result<(), String>` implement it;
/// the `String` is the reason in [`Error::Forbidden`].
pub trait Authorize<C>: Send + Sync + 'static {
    /// `Ok(())` to let the command through, `Err(reason)` to refuse it.
    fn authorize(&self, identity: Option<&Identity>, command: &C) -> Result<(), String>;
}

impl<C, F> Authorize<C> for F
where
    F: Fn(Option<&Identity>, &C) -> Result<(), String> + Send + Sync + 'static,
{
    fn authorize(&self, identity: Option<&Identity>, command: &C) -> Result<(), String> {
        self(identity, command)
    }
}

/// The default hook: every caller, authenticated or not, may send anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl<C> Authorize<C> for AllowAll {
    fn authorize(&self, _: Option<&Identity>, _: &C) -> Result<(), String> {
        Ok(())
    }
}

/// A hook that lets through only authenticated callers holding every one of
/// its roles (or scopes): a missing identity or role is [`Error::Forbidden`]
/// (403) with the missing role as the reason.
///
/// # Examples
///
/// ```
/// use trellis_cqrs::{Authorize, Identity, RequireRoles};
/// let hook = RequireRoles::new(["orders:write"]);
/// let writer = Identity::new("ann").with_role("orders:write");
/// assert!(Authorize::<()>::authorize(&hook, Some(&writer), &()).is_ok());
/// let reader = Identity::new("bob").with_role("orders:read");
/// assert_eq!(
///     Authorize::<()>::authorize(&hook, Some(&reader), &()),
///     Err("missing role orders:write".to_owned())
/// );
/// assert!(Authorize::<()>::authorize(&hook, None, &()).is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequireRoles {
    roles: Vec<String>,
}

impl RequireRoles {
    /// Requires every one of `roles`.
    pub fn new<R: Into<String>>(roles: impl IntoIterator<Item = R>) -> Self {
        RequireRoles {
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }
}

impl<C> Authorize<C> for RequireRoles {
    fn authorize(&self, identity: Option<&Identity>, _: &C) -> Result<(), String> {
        let Some(identity) = identity else {
            return Err("not authenticated".to_owned());
        };
        match self.roles.iter().find(|r| !identity.has_role(r)) {
            Some(missing) => Err(format!("missing role {missing}")),
            None => Ok(()),
        }
    }
}

/// Runs an [`Authorize`] hook before the inner service.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer<Z> {
    hook: Arc<Z>,
}

impl<Z> AuthorizeLayer<Z> {
    /// A layer running `hook`.
    pub fn new(hook: Z) -> Self {
        AuthorizeLayer {
            hook: Arc::new(hook),
        }
    }
}

impl<S, Z> Layer<S> for AuthorizeLayer<Z> {
    type Service = Authorized<S, Z>;
    fn layer(&self, inner: S) -> Authorized<S, Z> {
        Authorized {
            inner,
            hook: self.hook.clone(),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug)]
pub struct Authorized<S, Z> {
    inner: S,
    hook: Arc<Z>,
}

impl<S: Clone, Z> Clone for Authorized<S, Z> {
    fn clone(&self) -> Self {
        Authorized {
            inner: self.inner.clone(),
            hook: self.hook.clone(),
        }
    }
}

impl<S, Z, C> Service<Command<C>> for Authorized<S, Z>
where
    S: Service<Command<C>, Response = CommandResult, Error = Error, Future = CommandFuture>,
    Z: Authorize<C>,
{
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, command: Command<C>) -> CommandFuture {
        match self
            .hook
            .authorize(command.identity.as_ref(), &command.payload)
        {
            Ok(()) => self.inner.call(command),
            Err(reason) => {
                tracing::info!(command_id = %command.id, %reason, "command forbidden");
                Box::pin(std::future::ready(Err(Error::Forbidden { reason })))
            }
        }
    }
}

/// Deduplicates commands by idempotency key ([`Command::id`]) through an
/// [`IdempotencyStore`], as the IETF `Idempotency-Key` draft asks of an
/// HTTP API:
///
/// - a repeated key with the same command (aggregate id and payload, compared
///   by a SHA-256 fingerprint of their JSON) returns the first result;
/// - a repeated key with a different command is [`Error::IdempotencyMismatch`] (422);
/// - a key whose first command is still running, here or on another
///   replica, is [`Error::InFlight`] (409): retry later.
///
/// Only successful results are kept: a command that fails releases its key,
/// so a rejected command may be retried. A command whose future is dropped
/// (a client gone) releases its key too; one whose process died holds it
/// until the claim TTL passes ([`with_claim_ttl`](Self::with_claim_ttl),
/// default 60 s), then a retry re-runs it under the same key, and
/// [`RepositoryService`] derives the event ids from the key, so the event
/// store writes its events once.
///
/// The payload must serialize deterministically (structs, `BTreeMap`, not
/// `HashMap`) for its fingerprint to be stable.
///
/// # Waiting for a key in flight
///
/// By default a key in flight answers [`Error::InFlight`] at once (the
/// draft's 409). An API whose clients expect a retry racing its first
/// attempt to get that attempt's answer (as Stripe's does for a request it
/// still holds) sets [`wait_in_flight`](Self::wait_in_flight): the repeat
/// then polls the store until the first run finishes (its result), fails
/// or dies (the repeat claims the key and runs), and answers
/// [`Error::InFlight`] only when the wait runs out.
#[derive(Debug, Clone)]
pub struct IdempotencyLayer<I> {
    store: Arc<I>,
    ttl: Duration,
    wait: Duration,
}

/// How long a claim lasts by default: longer than any command should run.
const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(60);

impl<I> IdempotencyLayer<I> {
    /// A layer over `store` with a 60 s claim TTL.
    pub fn new(store: I) -> Self {
        IdempotencyLayer {
            store: Arc::new(store),
            ttl: DEFAULT_CLAIM_TTL,
            wait: Duration::ZERO,
        }
    }

    /// Lets a repeat whose key is in flight wait up to `wait` for the first
    /// run instead of failing with [`Error::InFlight`] at once (see
    /// [Waiting for a key in flight](Self#waiting-for-a-key-in-flight)).
    /// Zero, the default, does not wait.
    pub fn wait_in_flight(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets how long a key stays claimed by a run that neither finished nor
    /// failed (its process died): keep it above the slowest command.
    pub fn with_claim_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

impl<S, I> Layer<S> for IdempotencyLayer<I> {
    type Service = Idempotent<S, I>;
    fn layer(&self, inner: S) -> Idempotent<S, I> {
        Idempotent {
            inner,
            store: self.store.clone(),
            ttl: self.ttl,
            wait: self.wait,
        }
    }
}

/// See [`IdempotencyLayer`].
#[derive(Debug)]
pub struct Idempotent<S, I> {
    inner: S,
    store: Arc<I>,
    ttl: Duration,
    wait: Duration,
}

impl<S: Clone, I> Clone for Idempotent<S, I> {
    fn clone(&self) -> Self {
        Idempotent {
            inner: self.inner.clone(),
            store: self.store.clone(),
            ttl: self.ttl,
            wait: self.wait,
        }
    }
}

/// Claims `key`, polling while it is in flight for at most `wait`: from
/// 10 ms, doubling to 250 ms between looks.
async fn claim_waiting<I: IdempotencyStore>(
    store: &I,
    key: Uuid,
    fingerprint: &str,
    token: Uuid,
    ttl: Duration,
    wait: Duration,
) -> Result<Claim> {
    let until = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(10);
    loop {
        let claim = store.claim(key, fingerprint, token, ttl).await?;
        let now = tokio::time::Instant::now();
        if claim != Claim::InFlight || now >= until {
            return Ok(claim);
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The fingerprint of a command: SHA-256 of the JSON of its aggregate id
/// and payload, in hex.
///
/// # Errors
///
/// The payload does not serialize.
///
/// # Examples
///
/// ```
/// use trellis_cqrs::{Command, command::fingerprint};
/// let first = Command::new("order-1", 5u32);
/// // A retry: a new id does not matter, the aggregate and payload do.
/// assert_eq!(fingerprint(&first)?, fingerprint(&Command::new("order-1", 5u32))?);
/// assert_ne!(fingerprint(&first)?, fingerprint(&Command::new("order-2", 5u32))?);
/// assert_ne!(fingerprint(&first)?, fingerprint(&Command::new("order-1", 6u32))?);
/// # Ok::<_, trellis_cqrs::Error>(())
/// ```
pub fn fingerprint<C: Serialize>(command: &Command<C>) -> Result<String> {
    use sha2::Digest;
    let json = serde_json::to_vec(&(&command.aggregate_id, &command.payload))?;
    let digest = sha2::Sha256::digest(&json);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Releases a claim whose command neither finished nor failed (its future
/// was dropped), so the key does not wait for the claim TTL.
struct ClaimGuard<I: IdempotencyStore> {
    store: Arc<I>,
    key: Uuid,
    token: Uuid,
    armed: bool,
}

impl<I: IdempotencyStore> Drop for ClaimGuard<I> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, key, token) = (self.store.clone(), self.key, self.token);
            runtime.spawn(async move {
                if let Err(err) = store.release(key, token).await {
                    tracing::debug!(%key, %err, "releasing the claim of a dropped command failed");
                }
            });
        }
    }
}

impl<S, I, C> Service<Command<C>> for Idempotent<S, I>
where
    S: Service<Command<C>, Response = CommandResult, Error = Error, Future = CommandFuture>
        + Clone
        + Send
        + 'static,
    I: IdempotencyStore,
    C: Serialize + Send + 'static,
{
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, command: Command<C>) -> CommandFuture {
        // The ready service goes into the future; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        let (ttl, wait) = (self.ttl, self.wait);
        Box::pin(async move {
            let key = command.id;
            let fingerprint = fingerprint(&command)?;
            let token = Uuid::now_v7();
            match claim_waiting(store.as_ref(), key, &fingerprint, token, ttl, wait).await? {
                Claim::Acquired => {}
                Claim::Done(first) => {
                    tracing::debug!(%key, "repeated idempotency key, returning the first result");
                    return Ok(first);
                }
                Claim::InFlight => return Err(Error::InFlight { key }),
                Claim::Mismatch => return Err(Error::IdempotencyMismatch { key }),
            }
            let mut guard = ClaimGuard {
                store: store.clone(),
                key,
                token,
                armed: true,
            };
            let outcome = inner.call(command).await;
            guard.armed = false;
            match outcome {
                Ok(result) => store.complete(key, &fingerprint, &result).await,
                Err(err) => {
                    if let Err(release) = store.release(key, token).await {
                        tracing::warn!(%key, %release, "releasing the key of a failed command failed; it frees when its claim expires");
                    }
                    Err(err)
                }
            }
        })
    }
}

/// Wraps each command in a `command` span and logs its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandTraceLayer;

impl CommandTraceLayer {
    /// The layer.
    pub const fn new() -> Self {
        CommandTraceLayer
    }
}

impl<S> Layer<S> for CommandTraceLayer {
    type Service = CommandTrace<S>;
    fn layer(&self, inner: S) -> CommandTrace<S> {
        CommandTrace { inner }
    }
}

/// See [`CommandTraceLayer`].
#[derive(Debug, Clone)]
pub struct CommandTrace<S> {
    inner: S,
}

impl<S, C> Service<Command<C>> for CommandTrace<S>
where
    S: Service<Command<C>, Response = CommandResult, Error = Error, Future = CommandFuture>,
{
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, command: Command<C>) -> CommandFuture {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "command",
            command_id = %command.id,
            aggregate_id = %command.aggregate_id,
            command = std::any::type_name::<C>(),
            actor = command.identity.as_ref().map(|i| i.subject.as_str()),
        );
        let future = span.in_scope(|| self.inner.call(command));
        Box::pin(
            async move {
                let result = future.await;
                match &result {
                    Ok(r) => tracing::info!(
                        version = r.version,
                        events = r.positions.len(),
                        "command done"
                    ),
                    Err(err) => tracing::info!(%err, "command failed"),
                }
                result
            }
            .instrument(span),
        )
    }
}

/// The pipeline [`CommandPipeline::build`] returns.
pub type Pipeline<A, S, Z, I> =
    CommandTrace<Validated<Authorized<Idempotent<RepositoryService<A, S>, I>, Z>>>;

/// Builds the standard command pipeline: trace → validate → authorize →
/// idempotency → repository.
///
/// # Examples
///
/// See the crate README.
#[derive(Debug)]
pub struct CommandPipeline<A: Aggregate, S, Z = AllowAll, I = MemoryIdempotencyStore> {
    repository: RepositoryService<A, S>,
    authorize: Z,
    idempotency: I,
    claim_ttl: Duration,
    in_flight_wait: Duration,
}

impl<A, S> CommandPipeline<A, S>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
{
    /// Defaults: allow-all authorization, an in-memory idempotency store of 10,000 ids.
    pub fn new(repository: Repository<A, S>) -> Self {
        CommandPipeline {
            repository: RepositoryService::new(repository),
            authorize: AllowAll,
            idempotency: MemoryIdempotencyStore::default(),
            claim_ttl: DEFAULT_CLAIM_TTL,
            in_flight_wait: Duration::ZERO,
        }
    }
}

impl<A: Aggregate, S, Z, I> CommandPipeline<A, S, Z, I> {
    /// Replaces the authorization hook.
    pub fn authorize<Z2>(self, hook: Z2) -> CommandPipeline<A, S, Z2, I> {
        CommandPipeline {
            repository: self.repository,
            authorize: hook,
            idempotency: self.idempotency,
            claim_ttl: self.claim_ttl,
            in_flight_wait: self.in_flight_wait,
        }
    }

    /// Replaces the idempotency store.
    pub fn idempotency<I2>(self, store: I2) -> CommandPipeline<A, S, Z, I2> {
        CommandPipeline {
            repository: self.repository,
            authorize: self.authorize,
            idempotency: store,
            claim_ttl: self.claim_ttl,
            in_flight_wait: self.in_flight_wait,
        }
    }

    /// Sets the idempotency claim TTL (see [`IdempotencyLayer::with_claim_ttl`]).
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// Lets a repeat of a key in flight wait for the first run (see
    /// [`IdempotencyLayer::wait_in_flight`]).
    pub fn wait_in_flight(mut self, wait: Duration) -> Self {
        self.in_flight_wait = wait;
        self
    }

    /// The composed service.
    pub fn build(self) -> Pipeline<A, S, Z, I> {
        let inner = IdempotencyLayer::new(self.idempotency)
            .with_claim_ttl(self.claim_ttl)
            .wait_in_flight(self.in_flight_wait)
            .layer(self.repository);
        let inner = AuthorizeLayer::new(self.authorize).layer(inner);
        let inner = ValidateLayer.layer(inner);
        CommandTraceLayer.layer(inner)
    }
}
