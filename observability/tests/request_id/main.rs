//! Correlation ids: kept, made, echoed, replaced when malformed, recorded in
//! logs and forwarded to the next service over real HTTP.

#[path = "../support/mod.rs"]
mod support;

use axum::Router;
use axum::routing::get;
use http::{HeaderMap, Request};
use support::{body_string, http_client, serve, telemetry};
use tower::{ServiceBuilder, ServiceExt as _};
use trellis_observability::{PropagateRequestIdLayer, RequestId, RequestIdLayer, ServerTraceLayer};

/// A service that answers with the `x-request-id` it received and the
/// extension it saw.
async fn echo_app() -> std::net::SocketAddr {
    let app = Router::new()
        .route(
            "/echo",
            get(
                |headers: HeaderMap, axum::Extension(id): axum::Extension<RequestId>| async move {
                    tracing::info!("echo");
                    assert_eq!(headers["x-request-id"], id.as_str());
                    id.to_string()
                },
            ),
        )
        .layer(
            ServiceBuilder::new()
                .layer(ServerTraceLayer::new())
                .layer(RequestIdLayer::new()),
        );
    serve(app).await
}

async fn get_with(addr: std::net::SocketAddr, id: Option<&str>) -> (String, String) {
    let mut req = Request::get(format!("http://{addr}/echo"));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let res = http_client()
        .request(req.body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    (echoed, body_string(res).await)
}

#[tokio::test]
async fn a_well_formed_id_is_kept_and_echoed() {
    // Every test registers its dispatcher before touching a callsite: tracing
    // caches callsite interest process-wide, and a test thread without a
    // dispatcher could otherwise cache "never" for a callsite another test logs from.
    let t = telemetry("rid");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let addr = echo_app().await;
    let (echoed, seen) = get_with(addr, Some("req-7f1c2a9e")).await;
    assert_eq!(echoed, "req-7f1c2a9e");
    assert_eq!(seen, "req-7f1c2a9e");
}

#[tokio::test]
async fn a_missing_id_is_made_and_echoed() {
    // Every test registers its dispatcher before touching a callsite: tracing
    // caches callsite interest process-wide, and a test thread without a
    // dispatcher could otherwise cache "never" for a callsite another test logs from.
    let t = telemetry("rid");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let addr = echo_app().await;
    let (echoed, seen) = get_with(addr, None).await;
    assert_eq!(echoed, seen);
    assert_eq!(uuid::Uuid::parse_str(&echoed).unwrap().get_version_num(), 4);
    let (second, _) = get_with(addr, None).await;
    assert_ne!(echoed, second, "each request gets its own id");
}

#[tokio::test]
async fn garbage_ids_are_replaced() {
    // Every test registers its dispatcher before touching a callsite: tracing
    // caches callsite interest process-wide, and a test thread without a
    // dispatcher could otherwise cache "never" for a callsite another test logs from.
    let t = telemetry("rid");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let addr = echo_app().await;
    let long = "a".repeat(129);
    for garbage in ["has space", "<script>", long.as_str(), "semi;colon"] {
        let (echoed, seen) = get_with(addr, Some(garbage)).await;
        assert_ne!(echoed, garbage);
        assert_eq!(echoed, seen);
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
    }
}

#[tokio::test]
async fn the_id_is_in_the_log_lines_and_forwarded_downstream() {
    let t = telemetry("rid");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let downstream = echo_app().await;
    let client = ServiceBuilder::new()
        .layer(PropagateRequestIdLayer::new())
        .service(http_client());
    let upstream = Router::new()
        .route(
            "/call",
            get(move || {
                let client = client.clone();
                async move {
                    let req = Request::get(format!("http://{downstream}/echo"))
                        .body(String::new())
                        .unwrap();
                    body_string(client.oneshot(req).await.unwrap()).await
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(ServerTraceLayer::new()),
        );
    let upstream = serve(upstream).await;

    let req = Request::get(format!("http://{upstream}/call"))
        .header("x-request-id", "order-42")
        .body(String::new())
        .unwrap();
    let res = http_client().request(req).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "order-42");
    assert_eq!(
        body_string(res).await,
        "order-42",
        "downstream saw the same id"
    );

    let echo = t.logs.with_message("echo");
    assert_eq!(echo.len(), 1);
    assert_eq!(echo[0]["span"]["request_id"], "order-42");
}

#[tokio::test]
async fn an_explicit_outgoing_id_is_not_overwritten() {
    // Every test registers its dispatcher before touching a callsite: tracing
    // caches callsite interest process-wide, and a test thread without a
    // dispatcher could otherwise cache "never" for a callsite another test logs from.
    let t = telemetry("rid");
    let _scope = tracing::dispatcher::set_default(&t.dispatch);
    let client = ServiceBuilder::new()
        .layer(PropagateRequestIdLayer::new())
        .service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(
                req.headers()["x-request-id"].clone(),
            ))
        });
    let server = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .service_fn(move |_req: Request<()>| {
            let req = Request::builder()
                .header("x-request-id", "explicit")
                .body(())
                .unwrap();
            client.clone().oneshot(req)
        });
    let res = server
        .oneshot(
            Request::builder()
                .header("x-request-id", "incoming")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.body(), "explicit");
    assert_eq!(res.headers()["x-request-id"], "incoming");
}
