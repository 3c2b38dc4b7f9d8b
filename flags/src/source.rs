//! Where flag sets come from, and hot reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::definition::FlagDefinitions;
use crate::error::{Error, Result};
use crate::store::FlagStore;

/// Anything that can produce a whole flag set: a file ([`FileSource`]), a
/// database table (`DbFlags`, features `sqlite`/`postgres`), a config service. [`FlagStore::watch`] polls
/// it and loads what changed.
///
/// # Examples
///
/// ```
/// use trellis_flags::{FlagDefinitions, FlagSource};
///
/// /// Flags kept in a database row (a stand-in here).
/// struct FromDatabase;
///
/// #[trellis_flags::async_trait]
/// impl FlagSource for FromDatabase {
///     async fn fetch(&self) -> Result<FlagDefinitions, trellis_flags::Error> {
///         let json = r#"{ "flags": {} }"#; // SELECT definitions FROM flags
///         FlagDefinitions::from_json(json)
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait FlagSource: Send + Sync + 'static {
    /// Fetches the whole current set. Called once per poll; the store only
    /// reloads when the result differs from the previous fetch.
    ///
    /// # Errors
    ///
    /// Any [`Error`]; the store keeps serving the last good set and reports
    /// the error through [`FlagStore::status`].
    async fn fetch(&self) -> Result<FlagDefinitions>;

    /// Waits until the next fetch is due. By default this sleeps
    /// `interval`; a source that hears of changes (a PostgreSQL `LISTEN`,
    /// see [`DbFlags`](crate::DbFlags)) may return earlier. Either way the
    /// store fetches and compares, so an early or spurious return only
    /// costs a fetch.
    async fn changed(&self, interval: Duration) {
        tokio::time::sleep(interval).await;
    }
}

/// A shared source (one handle for the watcher and, say, an admin API).
#[async_trait::async_trait]
impl<S: FlagSource + ?Sized> FlagSource for std::sync::Arc<S> {
    async fn fetch(&self) -> Result<FlagDefinitions> {
        (**self).fetch().await
    }

    async fn changed(&self, interval: Duration) {
        (**self).changed(interval).await;
    }
}

/// A flag file: JSON, or YAML (feature `yaml`) when it ends in `.yaml`/`.yml`.
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// A source reading `path` on every fetch.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait::async_trait]
impl FlagSource for FileSource {
    async fn fetch(&self) -> Result<FlagDefinitions> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        #[cfg(feature = "yaml")]
        if matches!(
            self.path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            return FlagDefinitions::from_yaml(&text);
        }
        FlagDefinitions::from_json(&text)
    }
}

/// The background task polling a [`FlagSource`]; polling stops when this is
/// dropped or [`stop`](Self::stop)ped.
#[derive(Debug)]
#[must_use = "dropping the handle stops the reloads"]
pub struct ReloadTask {
    handle: tokio::task::JoinHandle<()>,
}

impl ReloadTask {
    /// Stops polling.
    pub fn stop(self) {}
}

impl Drop for ReloadTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl FlagStore {
    /// Loads `source` now, then polls it every `interval` on a tokio task and
    /// loads each set that differs from the previous fetch. A fetch or a set
    /// that fails keeps the last good set, is logged, and shows in
    /// [`status`](Self::status) until a later poll succeeds.
    ///
    /// Admin changes made through the store stay until the source itself
    /// changes (a poll that fetches the same set as before changes nothing).
    ///
    /// # Errors
    ///
    /// The first load's error: a service usually should not start without
    /// its flags. Nothing is spawned then.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), trellis_flags::Error> {
    /// use std::time::Duration;
    /// use trellis_flags::{FileSource, FlagStore};
    ///
    /// let store = FlagStore::empty();
    /// let _reloads = store.watch(FileSource::new("flags.json"), Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn watch<S: FlagSource>(&self, source: S, interval: Duration) -> Result<ReloadTask> {
        let first = match source.fetch().await {
            Ok(defs) => defs,
            Err(error) => {
                self.record_failure(&error);
                return Err(error);
            }
        };
        self.load(first.clone())?;
        let store = self.clone();
        let handle = tokio::spawn(async move {
            let mut last_fetched = Some(first);
            // The message of the fetch error being reported, so a file that
            // stays broken is logged once, not on every poll.
            let mut failing: Option<String> = None;
            loop {
                source.changed(interval).await;
                match source.fetch().await {
                    Ok(defs) if last_fetched.as_ref() == Some(&defs) => {}
                    Ok(defs) => {
                        // Remember a rejected set too: it is reported once,
                        // not on every poll, and a fix is a new change.
                        // The error, if any, is recorded in the status.
                        let _ = store.load(defs.clone());
                        last_fetched = Some(defs);
                        failing = None;
                    }
                    Err(error) => {
                        let message = error.to_string();
                        if failing.as_ref() != Some(&message) {
                            store.record_failure(&error);
                            failing = Some(message);
                        }
                        // The next good fetch is a change even if it equals
                        // the last good set, so that it clears the error.
                        last_fetched = None;
                    }
                }
            }
        });
        Ok(ReloadTask { handle })
    }
}
