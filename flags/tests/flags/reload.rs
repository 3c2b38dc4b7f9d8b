use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use open_feature::provider::{FeatureProvider, ProviderStatus};
use tokio::time::Instant;
use trellis_flags::{Error, FileSource, FlagDefinitions, FlagSource, FlagStore};

use crate::ctx;

const INTERVAL: Duration = Duration::from_secs(1);
/// How often the tests look; the bound they check is INTERVAL + STEP.
const STEP: Duration = Duration::from_millis(10);

fn flags(default: &str) -> String {
    format!(
        r#"{{ "flags": {{
            "checkout": {{ "variants": {{ "on": true, "off": false }}, "defaultVariant": "{default}" }},
            "banner": {{ "variants": {{ "a": "A", "b": "B" }}, "defaultVariant": "a" }}
        }} }}"#
    )
}

/// A file in a directory of its own, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("trellis-flags-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = Self(dir.join("flags.json"));
        file.write(contents);
        file
    }

    /// Replaces the file atomically, as a config-map update or an editor does.
    fn write(&self, contents: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn checkout(store: &FlagStore) -> bool {
    store.bool_value("checkout", &ctx(None, &[])).unwrap().value
}

/// Waits (on the paused clock) until `cond` holds; returns how long it took.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() <= limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(STEP).await;
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_changed_file_is_served_within_the_poll_interval() {
    let file = TempFile::new("changed", &flags("off"));
    let store = FlagStore::empty();
    let _task = store
        .watch(FileSource::new(&file.0), INTERVAL)
        .await
        .unwrap();
    assert!(!checkout(&store));
    let generation = store.status().generation;

    // Let a few polls see the unchanged file: nothing reloads.
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(store.status().generation, generation);

    file.write(&flags("on"));
    let took = eventually(INTERVAL + STEP, || checkout(&store)).await;
    assert!(took <= INTERVAL + STEP, "took {took:?}");
    assert_eq!(store.status().generation, generation + 1);
    assert!(store.status().is_healthy());
}

#[tokio::test(start_paused = true)]
async fn a_malformed_file_keeps_the_last_good_set_and_reports_it() {
    let file = TempFile::new("malformed", &flags("off"));
    let store = FlagStore::empty();
    let provider = store.provider();
    let _task = store
        .watch(FileSource::new(&file.0), INTERVAL)
        .await
        .unwrap();
    assert_eq!(provider.status(), ProviderStatus::Ready);

    file.write(r#"{ "flags": { "checkout": { "variants": { "on": true, "#);
    eventually(INTERVAL + STEP, || !store.status().is_healthy()).await;
    let status = store.status();
    let failure = status.last_error.expect("the error is reported");
    assert!(
        failure.message.contains("do not parse"),
        "{}",
        failure.message
    );
    assert_eq!(provider.status(), ProviderStatus::STALE);
    // Still the last good set, whole.
    assert!(!checkout(&store));
    assert_eq!(
        &*store.string_value("banner", &ctx(None, &[])).unwrap().value,
        "A"
    );
    assert_eq!(status.flags, 2);
    // Reported once: later polls of the same broken file record nothing new.
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(store.status().last_error.unwrap().at, failure.at);

    // Fixing the file (even back to the same set) clears the error.
    file.write(&flags("on"));
    eventually(INTERVAL + STEP, || checkout(&store)).await;
    assert!(store.status().is_healthy());
    assert_eq!(provider.status(), ProviderStatus::Ready);
}

#[tokio::test(start_paused = true)]
async fn one_invalid_flag_rejects_the_whole_file() {
    let file = TempFile::new("half", &flags("off"));
    let store = FlagStore::empty();
    let _task = store
        .watch(FileSource::new(&file.0), INTERVAL)
        .await
        .unwrap();
    let generation = store.status().generation;

    // `checkout` changes validly, `banner` is broken: neither may apply.
    file.write(
        r#"{ "flags": {
            "checkout": { "variants": { "on": true, "off": false }, "defaultVariant": "on" },
            "banner": { "variants": { "a": "A", "b": "B" }, "defaultVariant": "zzz" }
        } }"#,
    );
    eventually(INTERVAL + STEP, || !store.status().is_healthy()).await;
    let message = store.status().last_error.unwrap().message;
    assert!(
        message.contains("banner") && message.contains("zzz"),
        "{message}"
    );
    assert!(!checkout(&store), "half of the new set was applied");
    assert_eq!(store.status().generation, generation);
    // The rejection is reported once, not re-applied on every poll.
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(store.status().generation, generation);
}

#[tokio::test(start_paused = true)]
async fn a_missing_file_fails_the_first_watch() {
    let store = FlagStore::empty();
    let missing = std::env::temp_dir().join("trellis-flags-definitely-missing/flags.json");
    let err = store
        .watch(FileSource::new(missing), INTERVAL)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(!store.status().is_healthy());
}

#[tokio::test(start_paused = true)]
async fn admin_changes_stay_until_the_file_changes() {
    let file = TempFile::new("admin", &flags("off"));
    let store = FlagStore::empty();
    let _task = store
        .watch(FileSource::new(&file.0), INTERVAL)
        .await
        .unwrap();

    store.set_default_variant("checkout", "on").unwrap();
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(
        checkout(&store),
        "an unchanged file must not undo an admin change"
    );

    file.write(&flags("off").replace("\"A\"", "\"A2\""));
    eventually(INTERVAL + STEP, || !checkout(&store)).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_task_stops_reloads() {
    let file = TempFile::new("stop", &flags("off"));
    let store = FlagStore::empty();
    let task = store
        .watch(FileSource::new(&file.0), INTERVAL)
        .await
        .unwrap();
    task.stop();
    file.write(&flags("on"));
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(!checkout(&store));
}

/// A source standing in for a service's own database table.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<String>>);

#[trellis_flags::async_trait]
impl FlagSource for Table {
    async fn fetch(&self) -> Result<FlagDefinitions, Error> {
        let row = self.0.lock().unwrap().clone();
        FlagDefinitions::from_json(&row)
    }
}

#[tokio::test(start_paused = true)]
async fn any_flag_source_hot_reloads() {
    let table = Table::default();
    *table.0.lock().unwrap() = flags("off");
    let store = FlagStore::empty();
    let _task = store.watch(table.clone(), INTERVAL).await.unwrap();
    assert!(!checkout(&store));
    *table.0.lock().unwrap() = flags("on");
    let took = eventually(INTERVAL + STEP, || checkout(&store)).await;
    assert!(took <= INTERVAL + STEP);
}

#[cfg(feature = "yaml")]
#[tokio::test(start_paused = true)]
async fn yaml_files_hot_reload_too() {
    let dir = TempFile::new("yaml", "{}");
    let path = dir.0.with_extension("yaml");
    let yaml = |v: &str| {
        format!(
            "flags:\n  checkout:\n    variants: {{ on: true, off: false }}\n    defaultVariant: {v}\n"
        )
    };
    std::fs::write(&path, yaml("off")).unwrap();
    let store = FlagStore::empty();
    let _task = store.watch(FileSource::new(&path), INTERVAL).await.unwrap();
    assert!(!checkout(&store));
    std::fs::write(&path, yaml("on")).unwrap();
    eventually(INTERVAL + STEP, || checkout(&store)).await;
}
