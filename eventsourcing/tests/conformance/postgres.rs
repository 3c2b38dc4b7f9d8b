use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use trellis_eventsourcing::PgEventStore;
use trellis_eventsourcing::testing::conformance;

use crate::support::env_url;

/// Creates a fresh schema and returns a store whose pool uses it.
async fn store_in(url: &str, schema: &str) -> PgEventStore {
    let options = PgConnectOptions::from_str(url)
        .expect("url")
        .options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await
        .expect("connect");
    PgEventStore::with_pool(pool).await.expect("migrate")
}

async fn create_schema(url: &str) -> String {
    let schema = format!("es_test_{}", uuid::Uuid::now_v7().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("TRELLIS_TEST_POSTGRES_URL reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    admin.close().await;
    schema
}

async fn drop_schemas(url: &str, schemas: &[String]) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    for s in schemas {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE"
        )))
        .execute(&admin)
        .await;
    }
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_conformance_suite() {
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schemas = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| async {
        let schema = create_schema(&url).await;
        schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(schema.clone());
        store_in(&url, &schema).await
    })
    .await;
    let schemas = schemas.into_inner().unwrap_or_else(|p| p.into_inner());
    drop_schemas(&url, &schemas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_closed_and_reopened_loses_nothing() {
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    conformance::reopen_loses_nothing(|| store_in(&url, &schema)).await;
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_notifications_wake_subscriptions() {
    use std::time::Duration;
    use trellis_eventsourcing::{EventStore, ExpectedVersion, NewEvent};
    let Some(url) = env_url("TRELLIS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = create_schema(&url).await;
    let writer = store_in(&url, &schema).await;
    // A second store (another "process") only learns of appends via LISTEN/NOTIFY.
    let reader = store_in(&url, &schema).await;
    let mut head = reader.watch_head();
    // The LISTEN task subscribes asynchronously: keep appending until one
    // notification arrives (an append before LISTEN is simply not seen).
    let mut notified = false;
    for i in 0..50 {
        let r = writer
            .append(
                "n-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("X", serde_json::json!(i))],
            )
            .await
            .expect("append");
        if tokio::time::timeout(
            Duration::from_millis(200),
            head.wait_for(|h| *h >= r.positions[0]),
        )
        .await
        .is_ok()
        {
            notified = true;
            break;
        }
    }
    assert!(notified, "LISTEN/NOTIFY never woke the reader");
    drop(head);
    drop_schemas(&url, &[schema]).await;
}
