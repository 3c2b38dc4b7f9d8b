//! Feeding a [`Projection`] from a NATS JetStream durable consumer (feature
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
//! durable**: replicas elect one through a lease in the read-model database
//! (table `cqrs_leases`, as the store-fed runner does); the others do not
//! fetch. The consumer is created with `max_ack_pending` = the batch size,
//! so JetStream never hands out a later event while an earlier one is
//! unacknowledged, and with `ack_wait` = the lease TTL, so the messages a
//! dead runner had fetched come back by the time its lease expires. The
//! checkpoint is written compare-and-set, fenced by the lease epoch: a runner
//! that lost its lease rolls its batch back and hands the messages back.
//!
//! # Failures
//!
//! A message whose body is not a `StoredEvent`, or a handler error, rolls
//! the batch back; the batch is retried with the runner's backoff and, after
//! `max_retries`, the projection is parked (its messages stay
//! unacknowledged in the stream), as with the store-fed runner.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use trellis_eventsourcing::StoredEvent;

use trellis_eventsourcing::lease::Leadership;

use super::{
    LeaseRelease, Projection, ProjectionHandle, ProjectionState, ProjectionStatus, ReadModelDb,
    ReadModelLeases, Role, RunnerOptions, lead, leadership, lock, stop_requested,
};
use crate::error::{Error, Result};

/// Feeds a [`Projection`] from a JetStream durable pull consumer, with the
/// checkpoint in the read-model transaction: JetStream delivers at least
/// once, the read model gets each event once (a redelivery at or below the
/// checkpoint is acked without being applied). Replicas elect one active
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
    /// `pool`. The durable consumer is named after the projection (`.`, `*`,
    /// `>` and spaces become `_`).
    pub fn new(stream: Stream, pool: sqlx::Pool<DB>, projection: P) -> Self {
        JetStreamRunner {
            stream,
            pool,
            projection,
            filter_subject: String::new(),
            options: RunnerOptions::default(),
        }
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

    /// Sets the lease TTL (see [`RunnerOptions::lease_ttl`]); it is also the
    /// consumer's `ack_wait` when this runner creates the consumer.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.options.lease_ttl = ttl;
        self
    }

    /// Sets the lease owner id (see [`RunnerOptions::owner`]).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.options.owner = Some(owner.into());
        self
    }

    /// Creates the checkpoint and lease tables, the projection's tables and
    /// the durable consumer, loads the checkpoint and spawns the runner,
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
        let name = self.projection.name().to_owned();
        let durable: String = name
            .chars()
            .map(|c| match c {
                '.' | '*' | '>' | ' ' | '\t' => '_',
                c => c,
            })
            .collect();
        let batch = self.options.batch_size.clamp(1, 10_000);
        let consumer: PullConsumer = self
            .stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    // A dead runner's messages come back when its lease expires.
                    ack_wait: self.options.lease_ttl.max(Duration::from_secs(1)),
                    max_ack_pending: i64::try_from(batch).unwrap_or(i64::MAX),
                    filter_subject: self.filter_subject.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Bus(e.to_string()))?;
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
            last_recorded_at: None,
        }));
        let worker = Worker {
            leadership,
            leases,
            pool: self.pool,
            projection: self.projection,
            options: self.options,
            consumer,
            batch,
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

struct Worker<DB: ReadModelDb, P> {
    leadership: Leadership,
    leases: ReadModelLeases<DB>,
    pool: sqlx::Pool<DB>,
    projection: P,
    options: RunnerOptions,
    consumer: PullConsumer,
    batch: usize,
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
                // Not ours to apply: hand fetched messages back at once.
                nak_all(&mut pending).await;
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
                    nak_all(&mut pending).await;
                }
                Ok(Some(target)) => {
                    for message in pending.drain(..) {
                        // A lost ack only means a redelivery, which the
                        // checkpoint turns into a no-op.
                        if let Err(error) = message.ack().await {
                            tracing::debug!(projection = %self.name, %error, "ack failed");
                        }
                    }
                    self.position = target;
                    lock(&self.status).position = target;
                    self.position_tx.send_replace(target);
                    attempts = 0;
                    previous_delay = None;
                }
                Err(error) => {
                    if attempts >= self.options.max_retries {
                        tracing::error!(projection = %self.name, position = self.position, %error, "projection parked");
                        lock(&self.status).state = ProjectionState::Parked {
                            position: self.position + 1,
                            error,
                        };
                        // Hand the messages back at once rather than after
                        // ack_wait; nobody applies them while parked.
                        nak_all(&mut pending).await;
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
        nak_all(&mut pending).await;
        self.leadership.release(&self.leases).await;
        let mut status = lock(&self.status);
        status.state = ProjectionState::Stopped;
        status.role = Role::Standby;
    }

    /// Up to `batch` messages, waiting at most the poll interval.
    async fn fetch(&self) -> std::result::Result<Vec<Message>, String> {
        let mut messages = self
            .consumer
            .fetch()
            .max_messages(self.batch)
            .expires(self.options.poll_interval.max(Duration::from_millis(100)))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(message) = messages.next().await {
            out.push(message.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    /// Applies the events above the checkpoint and saves the new checkpoint,
    /// in one transaction; returns the checkpoint, or `None` when the fenced
    /// checkpoint write failed (lease lost; nothing applied).
    async fn apply(
        &self,
        messages: &[Message],
        epoch: u64,
    ) -> std::result::Result<Option<u64>, String> {
        let mut target = self.position;
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        let filter = self.projection.filter();
        let mut last_recorded = None;
        for message in messages {
            let event: StoredEvent = serde_json::from_slice(&message.payload)
                .map_err(|e| format!("message on {} is not a StoredEvent: {e}", message.subject))?;
            if event.global_position <= target {
                continue; // a redelivery: already applied
            }
            if filter.matches(&event) {
                self.projection
                    .handle(&mut tx, &event)
                    .await
                    .map_err(|e| format!("position {}: {e}", event.global_position))?;
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
        tx.commit().await.map_err(|e| e.to_string())?;
        if let Some(at) = last_recorded {
            let mut status = lock(&self.status);
            status.last_recorded_at = Some(at);
            status.head = status.head.max(target);
        }
        Ok(Some(target))
    }
}

/// Hands `messages` back to JetStream for redelivery now.
async fn nak_all(messages: &mut Vec<Message>) {
    for message in messages.drain(..) {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}
