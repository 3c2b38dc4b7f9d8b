//! Feeding a [`Projection`] from a NATS JetStream stream (feature
//! `nats`): the read side of a service that does not share the writer's
//! database, fed by the events an outbox relay
//! (`trellis_eventsourcing::outbox::nats::NatsPublisher`) published.
//!
//! # Exactly once into the read model
//!
//! JetStream delivers at least once: a message whose ack is lost (crash
//! after commit, network) comes again. Each message carries a
//! [`StoredEvent`] with its global position in the writer's store, so the
//! runner keeps the highest applied position as its checkpoint **in the
//! read-model transaction**, as [`ProjectionRunner`](super::ProjectionRunner)
//! does. A batch of messages is applied in one transaction together with
//! the new checkpoint; only after the commit are the messages acked. A
//! redelivered message at or below the checkpoint is acked without being
//! applied. So a crash anywhere (before commit: nothing applied, all
//! redelivered; after commit, before ack: redelivered and skipped) applies
//! each event once.
//!
//! This relies on the publisher sending events in global order to one
//! stream (the outbox relay guarantees it) and on **one active runner per
//! projection**: replicas elect one through a lease in the read-model
//! database (table `cqrs_leases`, as the store-fed runner does); the others
//! do not consume.
//!
//! # Ordered per leadership term
//!
//! The active runner reads through an **ordered consumer** (ephemeral, no
//! acks, strictly in stream order) that it creates when it takes the lease,
//! starting right after the stream sequence of the last message it applied.
//! That sequence is a second checkpoint (`<name>#stream-sequence`) written
//! in the same read-model transaction. So a runner that dies mid-batch
//! leaves nothing "in flight" at the broker: its successor starts from the
//! committed sequence and sees every later message in order. (A durable
//! consumer with explicit acks does not give that: the messages a dead
//! runner had fetched come back only after their ack wait, by which time
//! its successor may have applied later ones and moved the checkpoint past
//! them, so they would be skipped as duplicates.) A checkpoint that fails
//! its compare-and-set, fenced by the lease epoch, rolls the batch back: a
//! runner that lost its lease applies nothing.

//! # Tracing
//!
//! Each event the projection handles runs in a `process` span
//! (OpenTelemetry messaging conventions: `otel.kind = "consumer"`,
//! `messaging.system = "nats"`, `messaging.destination.name` = the subject,
//! `messaging.operation.type = "process"`, `messaging.message.id` = the
//! event id, `messaging.consumer.group.name` = the projection) whose parent
//! is the W3C `traceparent`/`tracestate` in the message headers (the
//! publisher's span, see `NatsPublisher`), or, for a message without those
//! headers, the context in the event's metadata. So a read model's update
//! belongs to the trace of the request that wrote the event.
//!
//! # Failures
//!
//! A message whose body is not a `StoredEvent`, or a handler error, rolls
//! the batch back; the batch is retried with the runner's backoff and, after
//! `max_retries`, the projection is parked (the messages stay in the stream
//! after its checkpoint), as with the store-fed runner.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::sync::watch;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use trellis_eventsourcing::StoredEvent;

use trellis_eventsourcing::lease::Leadership;

use super::{
    LeaseRelease, Projection, ProjectionHandle, ProjectionState, ProjectionStatus, ReadModelDb,
    ReadModelLeases, Role, RunnerOptions, lead, leadership, lock, stop_requested,
};
use crate::error::{Error, Result};

/// Feeds a [`Projection`] from a JetStream stream through an ordered
/// consumer per leadership term, with the checkpoints (global position and
/// stream sequence) in the read-model transaction: the read model gets each
/// event once and in order (a republished event at or below the position
/// checkpoint is skipped; see the crate README). Replicas elect one active
/// runner per projection name through a lease in the read-model database,
/// and the checkpoint write is compare-and-set, fenced by the lease epoch
/// (see the crate README, *Guarantees across replicas and restarts*).
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn demo(projection: impl trellis_cqrs::Projection<sqlx::Sqlite>) -> Result<(), Box<dyn std::error::Error>> {
/// use trellis_cqrs::JetStreamRunner;
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client);
/// let stream = js.get_stream("ECOMMERCE_ORDERS").await?;
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let handle = JetStreamRunner::new(stream, pool, projection).spawn().await?;
/// // ... handle.wait_for(position, timeout), handle.status(), handle.stop()
/// # drop(handle); Ok(()) }
/// ```
pub struct JetStreamRunner<DB: ReadModelDb, P> {
    stream: Stream,
    pool: sqlx::Pool<DB>,
    projection: P,
    filter_subject: String,
    options: RunnerOptions,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::ProjectionMetrics>,
}

impl<DB: ReadModelDb, P> std::fmt::Debug for JetStreamRunner<DB, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamRunner")
            .field("filter_subject", &self.filter_subject)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<DB, P> JetStreamRunner<DB, P>
where
    DB: ReadModelDb,
    P: Projection<DB>,
{
    /// A runner of `projection` over every message of `stream`, writing into
    /// `pool`. Its checkpoints are named after the projection (and
    /// `<name>#stream-sequence`).
    pub fn new(stream: Stream, pool: sqlx::Pool<DB>, projection: P) -> Self {
        JetStreamRunner {
            stream,
            pool,
            projection,
            filter_subject: String::new(),
            options: RunnerOptions::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Counts the messages it applies in `metrics`
    /// (`trellis_projection_events_handled_total`; the stream's head is not
    /// known here, so no lag gauges).
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::ProjectionMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Only messages on `subject` (wildcards allowed).
    pub fn with_filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = subject.into();
        self
    }

    /// Replaces the options (`poll_interval` is the longest wait for a batch).
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
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

    /// Creates the checkpoint and lease tables and the projection's tables,
    /// loads the checkpoint and spawns the runner,
    /// which applies messages once it holds the projection's lease.
    ///
    /// # Errors
    ///
    /// The read-model database, the projection's `setup` or JetStream failed.
    pub async fn spawn(self) -> Result<ProjectionHandle> {
        DB::ensure_checkpoints(&self.pool).await?;
        self.projection
            .setup(&self.pool)
            .await
            .map_err(Error::Handler)?;
        if self.projection.version().is_some() {
            tracing::warn!(
                projection = self.projection.name(),
                "JetStreamRunner does not deploy versions blue/green: the version is ignored"
            );
        }
        let name = self.projection.name().to_owned();
        let batch = self.options.batch_size.clamp(1, 10_000);
        DB::init_checkpoint(&self.pool, &name).await?;
        let sequence_name = format!("{name}#stream-sequence");
        DB::init_checkpoint(&self.pool, &sequence_name).await?;
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
            pool: self.pool,
            projection: self.projection,
            options: self.options,
            stream: self.stream,
            filter_subject: self.filter_subject,
            ordered: None,
            sequence_name,
            sequence: 0,
            batch,
            name: name.clone(),
            position,
            position_tx,
            shutdown: shutdown_rx,
            status: status.clone(),
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
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

struct Worker<DB: ReadModelDb, P> {
    leadership: Leadership,
    leases: ReadModelLeases<DB>,
    pool: sqlx::Pool<DB>,
    projection: P,
    options: RunnerOptions,
    stream: Stream,
    filter_subject: String,
    /// The ordered consumer of the current leadership term (in a mutex only
    /// to be `Sync`: it is taken out while a fetch polls it).
    ordered: Option<Mutex<pull::Ordered>>,
    /// Checkpoint row of the last applied message's stream sequence.
    sequence_name: String,
    /// That sequence, as of the last commit of this term.
    sequence: u64,
    batch: usize,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::ProjectionMetrics>,
    name: String,
    position: u64,
    position_tx: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
    status: Arc<Mutex<ProjectionStatus>>,
}

impl<DB, P> Worker<DB, P>
where
    DB: ReadModelDb,
    P: Projection<DB>,
{
    async fn run(mut self) {
        let mut attempts: u32 = 0;
        let mut previous_delay = None;
        // Messages fetched but not yet committed: kept across a failed
        // attempt so the retry applies the very same batch.
        let mut pending: Vec<Message> = Vec::new();
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
                // Not ours to apply: forget what was read; the next term
                // starts again from the committed sequence.
                pending.clear();
                self.ordered = None;
                attempts = 0;
                previous_delay = None;
                tokio::select! {
                    () = tokio::time::sleep(self.leadership.standby_interval()) => {}
                    () = stop_requested(&mut self.shutdown) => break,
                }
                continue;
            };
            if pending.is_empty() {
                let mut stop = self.shutdown.clone();
                tokio::select! {
                    fetched = self.fetch() => match fetched {
                        Ok(messages) => pending = messages,
                        Err(error) => {
                            tracing::warn!(projection = %self.name, %error, "fetching from JetStream failed");
                            tokio::select! {
                                () = tokio::time::sleep(self.options.poll_interval) => {}
                                () = stop_requested(&mut stop) => break,
                            }
                            continue;
                        }
                    },
                    () = stop_requested(&mut stop) => break,
                }
                if pending.is_empty() {
                    continue;
                }
            }
            match self.apply(&pending, epoch).await {
                Ok(None) => {
                    tracing::warn!(
                        projection = %self.name,
                        position = self.position,
                        "checkpoint fenced: another runner holds the lease; batch rolled back, standing by"
                    );
                    self.leadership.lose();
                    self.leases.1.store(0, std::sync::atomic::Ordering::SeqCst);
                    lock(&self.status).role = Role::Standby;
                    pending.clear();
                    self.ordered = None;
                }
                Ok(Some((target, sequence))) => {
                    #[cfg(feature = "metrics")]
                    if let Some(m) = &self.metrics {
                        m.handled(&self.name, pending.len() as u64);
                    }
                    pending.clear();
                    self.sequence = sequence;
                    self.position = target;
                    lock(&self.status).position = target;
                    self.position_tx.send_replace(target);
                    attempts = 0;
                    previous_delay = None;
                }
                Err(error) => {
                    if attempts >= self.options.max_retries {
                        tracing::error!(event = "projection.parked", projection = %self.name, position = self.position, %error, "projection parked");
                        lock(&self.status).state = ProjectionState::Parked {
                            position: self.position + 1,
                            error,
                        };
                        // The messages stay in the stream after the
                        // checkpoint; whoever applies next reads them again.
                        pending.clear();
                        self.ordered = None;
                        self.leadership.release(&self.leases).await;
                        lock(&self.status).role = Role::Standby;
                        return;
                    }
                    let delay = self.options.backoff.next_delay(attempts, previous_delay);
                    attempts += 1;
                    previous_delay = Some(delay);
                    tracing::warn!(projection = %self.name, attempt = attempts, %error, ?delay, "batch failed, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop_requested(&mut self.shutdown) => break,
                    }
                }
            }
        }
        drop(pending);
        self.leadership.release(&self.leases).await;
        let mut status = lock(&self.status);
        status.state = ProjectionState::Stopped;
        status.role = Role::Standby;
    }

    /// Up to `batch` messages in stream order, waiting at most the poll
    /// interval for the first. The first call of a leadership term creates
    /// the term's ordered consumer after the committed stream sequence.
    async fn fetch(&mut self) -> std::result::Result<Vec<Message>, String> {
        if self.ordered.is_none() {
            let committed = DB::load_checkpoint(&self.pool, &self.sequence_name)
                .await
                .map_err(|e| e.to_string())?;
            self.sequence = committed;
            let deliver_policy = if committed == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: committed + 1,
                }
            };
            let consumer = self
                .stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: self.filter_subject.clone(),
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let ordered = consumer.messages().await.map_err(|e| e.to_string())?;
            self.ordered = Some(Mutex::new(ordered));
        }
        let Some(mut ordered) = self
            .ordered
            .take()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        else {
            return Ok(Vec::new());
        };
        let (out, keep) = self.read_batch(&mut ordered).await;
        if keep {
            self.ordered = Some(Mutex::new(ordered));
        }
        out
    }

    /// Reads up to `batch` messages from `ordered`; `false` when the
    /// consumer ended or failed and the next fetch must create a new one.
    async fn read_batch(
        &self,
        ordered: &mut pull::Ordered,
    ) -> (std::result::Result<Vec<Message>, String>, bool) {
        let wait = self.options.poll_interval.max(Duration::from_millis(100));
        let first = match tokio::time::timeout(wait, ordered.next()).await {
            Err(_) => return (Ok(Vec::new()), true),
            Ok(None) => return (Ok(Vec::new()), false),
            Ok(Some(Err(error))) => return (Err(error.to_string()), false),
            Ok(Some(Ok(message))) => message,
        };
        let mut out = vec![first];
        // Whatever the consumer has already buffered joins the batch.
        while out.len() < self.batch {
            match futures_util::FutureExt::now_or_never(ordered.next()) {
                Some(Some(Ok(message))) => out.push(message),
                Some(Some(Err(error))) => {
                    // Apply what came in order; the next fetch starts again
                    // from the committed sequence.
                    tracing::debug!(projection = %self.name, %error, "ordered consumer error");
                    return (Ok(out), false);
                }
                Some(None) => return (Ok(out), false),
                None => break,
            }
        }
        (Ok(out), true)
    }

    /// Applies the events above the checkpoint and saves the new checkpoint,
    /// in one transaction, with the stream sequence of the last message;
    /// returns both, or `None` when the fenced checkpoint write failed (lease
    /// lost; nothing applied).
    async fn apply(
        &self,
        messages: &[Message],
        epoch: u64,
    ) -> std::result::Result<Option<(u64, u64)>, String> {
        let mut target = self.position;
        let mut sequence = self.sequence;
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        let filter = self.projection.filter();
        let mut last_recorded = None;
        for message in messages {
            let event: StoredEvent = serde_json::from_slice(&message.payload)
                .map_err(|e| format!("message on {} is not a StoredEvent: {e}", message.subject))?;
            if let Ok(info) = message.info() {
                sequence = sequence.max(info.stream_sequence);
            }
            if event.global_position <= target {
                continue; // a redelivery: already applied
            }
            if filter.matches(&event) {
                let span = process_span(&self.name, message, &event);
                let handled = async {
                    self.projection
                        .handle(&mut tx, &event)
                        .await
                        .map_err(|e| format!("position {}: {e}", event.global_position))?;
                    // Unversioned here, so always live.
                    self.projection
                        .side_effect(&mut tx, &event)
                        .await
                        .map_err(|e| {
                            format!("position {}: side effect: {e}", event.global_position)
                        })
                };
                in_span(span, handled).await?;
            }
            target = event.global_position;
            last_recorded = Some(event.recorded_at);
        }
        if target > self.position
            && !DB::save_checkpoint_fenced(&mut tx, &self.name, epoch, self.position, target)
                .await
                .map_err(|e| e.to_string())?
        {
            return Ok(None); // dropping `tx` rolls the batch back
        }
        // The sequence moves only with a fenced checkpoint: a batch of
        // duplicates alone is read again after a restart, harmlessly.
        if target > self.position {
            DB::save_checkpoint(&mut tx, &self.sequence_name, sequence)
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        if let Some(at) = last_recorded {
            let mut status = lock(&self.status);
            status.last_recorded_at = Some(at);
            status.head = status.head.max(target);
        }
        Ok(Some((target, sequence)))
    }
}

/// Reads the W3C fields of a message's headers, falling back to those in
/// the event's metadata when the message has no `traceparent` header.
struct MessageExtractor<'a> {
    headers: Option<&'a async_nats::HeaderMap>,
    event: &'a StoredEvent,
}

impl MessageExtractor<'_> {
    fn headers_carry_context(&self) -> bool {
        self.headers.is_some_and(|h| h.get("traceparent").is_some())
    }
}

impl Extractor for MessageExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if self.headers_carry_context() {
            return self.headers?.get(key).map(|v| v.as_str());
        }
        match key {
            "traceparent" => self.event.metadata.traceparent.as_deref(),
            "tracestate" => self.event.metadata.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The `process` span of `event`, delivered in `message`, for projection
/// `name`: the child of the message's trace context when it carries one.
fn process_span(name: &str, message: &Message, event: &StoredEvent) -> tracing::Span {
    let subject = message.subject.as_str();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {subject}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.message.id = %event.event_id,
        messaging.consumer.group.name = %name,
        trellis.projection = %name,
        trellis.position = event.global_position,
    );
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&MessageExtractor {
            headers: message.headers.as_ref(),
            event,
        });
        if parent.span().span_context().is_valid() {
            // Fails only without an OpenTelemetry layer, where there is no
            // trace to continue.
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// Runs `work` in `span`, marking the span as failed on an error.
async fn in_span<T>(
    span: tracing::Span,
    work: impl Future<Output = std::result::Result<T, String>>,
) -> std::result::Result<T, String> {
    let result = work.instrument(span.clone()).await;
    if let Err(error) = &result {
        span.record("otel.status_code", "error");
        span.in_scope(|| tracing::debug!(%error, "projection handler failed"));
    }
    result
}
