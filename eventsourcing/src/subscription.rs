//! Catch-up subscriptions that turn live without a gap or a duplicate.
//!
//! A subscription reads "all after its checkpoint" in batches and sends each
//! event into a bounded channel. When a read comes back empty it waits for the
//! store's head watch (in-process appends, PostgreSQL `LISTEN/NOTIFY`) or the
//! poll interval, whichever comes first, and reads again. Catch-up and live
//! are the same read from the same checkpoint, so there is no switch-over at
//! which an event could be skipped or delivered twice; the backend's gap-free
//! global order (see [`store`](crate::store)) does the rest. A slow consumer
//! fills the channel and the reader waits: backpressure, no unbounded buffer.
//! A filtered subscription reads the head position before each read, so a
//! short batch lets it skip past non-matching events instead of rescanning
//! them on every poll.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::event::{EventFilter, StoredEvent};
use crate::store::EventStore;

/// How a [`Subscription`] reads.
///
/// `#[non_exhaustive]`: start from [`SubscriptionOptions::default`] and
/// chain the setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscriptionOptions {
    /// Deliver events after this global position (0 = from the start).
    pub after: u64,
    /// Which events to deliver.
    pub filter: EventFilter,
    /// Channel capacity (backpressure bound), at least 1.
    pub buffer: usize,
    /// Events per read.
    pub batch_size: usize,
    /// Longest wait between polls when no notification arrives.
    pub poll_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            after: 0,
            filter: EventFilter::all(),
            buffer: 256,
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
        }
    }
}

impl SubscriptionOptions {
    /// Starts after `position`.
    pub fn after(mut self, position: u64) -> Self {
        self.after = position;
        self
    }

    /// Uses `filter`.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the channel capacity.
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer;
        self
    }

    /// Sets the events per read.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
}

/// A running catch-up subscription. Dropping it stops the reader task.
///
/// # Examples
///
/// ```
/// use trellis_eventsourcing::{EventStore, ExpectedVersion, MemoryStore, NewEvent, Subscription, SubscriptionOptions};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let mut sub = Subscription::start(store.clone(), SubscriptionOptions::default());
/// store.append("a-1", ExpectedVersion::Any, vec![NewEvent::new("X", serde_json::json!(1))]).await?;
/// let first = sub.recv().await.expect("open")?;
/// assert_eq!(first.global_position, 1);
/// # Ok::<_, trellis_eventsourcing::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<StoredEvent>>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Spawns the reader on the current tokio runtime.
    pub fn start<S: EventStore + Clone>(store: S, options: SubscriptionOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let task = tokio::spawn(run(store, options, tx));
        Subscription { rx, task }
    }

    /// The next event, or a read error (the subscription keeps going after
    /// one and retries after the poll interval). `None` once stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is never lost if this future is dropped.
    ///
    /// # Errors
    ///
    /// `Some(Err)` when a read failed; the subscription keeps going and retries.
    pub async fn recv(&mut self) -> Option<Result<StoredEvent>> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run<S: EventStore>(
    store: S,
    options: SubscriptionOptions,
    tx: mpsc::Sender<Result<StoredEvent>>,
) {
    let mut head = store.watch_head();
    let mut after = options.after;
    let batch_size = options.batch_size.max(1);
    let filtered = options.filter != EventFilter::all();
    loop {
        // Mark the head seen *before* reading, so an append that lands after
        // the read still wakes the wait below.
        head.borrow_and_update();
        // A filtered read that comes back short has seen every match up to
        // the head read before it, so the scan can resume from there instead
        // of rescanning non-matching events on every poll.
        let scanned_to = if filtered {
            store.head_position().await.ok()
        } else {
            None
        };
        match store.read_all(after, &options.filter, batch_size).await {
            Ok(batch) if batch.len() < batch_size && scanned_to.is_some_and(|h| h > after) => {
                for event in batch {
                    after = after.max(event.global_position);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                // Events appended after the head was read may be in the batch:
                // never move back behind them.
                after = after.max(scanned_to.unwrap_or(after));
            }
            Ok(batch) if batch.is_empty() => {
                tokio::select! {
                    changed = head.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(options.poll_interval).await;
                        }
                    }
                    () = tokio::time::sleep(options.poll_interval) => {}
                    () = tx.closed() => return,
                }
            }
            Ok(batch) => {
                for event in batch {
                    after = event.global_position;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "subscription read failed");
                if tx.send(Err(err)).await.is_err() {
                    return;
                }
                tokio::time::sleep(options.poll_interval).await;
            }
        }
    }
}
