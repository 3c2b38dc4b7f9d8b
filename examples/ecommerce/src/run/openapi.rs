//! The OpenAPI 3.1 documents, taken from the routers themselves.
//!
//! Every service builds its routes with utoipa-axum's `routes!` from its
//! handlers' `#[utoipa::path]` attributes ([`crate::services::ApiRouter`]),
//! so a route cannot be served without its operation, and an operation is
//! documented only where its route is served: each process serves the
//! document of the router it assembled.
//!
//! One process serves its document at `/api/v1/openapi.json` and each
//! service's part (its tag) at `/api/v1/openapi/{service}.json`
//! ([`router`]); a service run on its own serves its document at
//! `/api/v1/openapi.json` ([`service_router`]); the gateway serves the
//! operations it forwards ([`gateway_api`]). Every business route declares
//! the `bearer` (JWT) security scheme with the scopes its
//! `RequireScopesLayer` enforces; tests/openapi.rs checks the documents
//! against the running system (routes, methods, scopes and response bodies)
//! and tools/schemathesis.sh fuzzes both run modes against them.

use std::collections::BTreeSet;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::platform::config::ServiceName;
use crate::services::{self, ApiRouter};

/// Adds the `bearer` scheme every `security(("bearer" = [...]))` refers to.
#[derive(Debug)]
struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An EdDSA JWT from `POST /api/v1/identity/login`; each operation lists \
                         the scopes (`scope` claim) it requires.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The tags, one per service, and what each covers.
const TAGS: [(&str, &str); 7] = [
    ("identity", "Users, login, token issuing, JWKS"),
    ("catalog", "Products and prices"),
    ("inventory", "Stock and reservations"),
    (
        "payments",
        "The fake payment provider and its fault injection",
    ),
    (
        "orders",
        "Orders, the place-order saga, inventory's breaker as orders sees it",
    ),
    ("shipping", "Shipments of confirmed orders"),
    (
        "analytics",
        "Read models: orders per customer, revenue per hour, top products, bought together",
    ),
];

/// Registers `T`'s schema and those it refers to.
fn add_schema<T: ToSchema + PartialSchema>(doc: &mut OpenApi) {
    let mut schemas = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut schemas);
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
}

/// `api` (operations relative to `/api/v1`, as a router collects them) as
/// a served document titled `title`: paths under `/api/v1`, the bearer
/// scheme, the tags its operations use.
pub(crate) fn document(title: &str, description: &str, api: OpenApi) -> OpenApi {
    let info = InfoBuilder::new()
        .title(title)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .build();
    let mut doc = OpenApiBuilder::new()
        .info(info)
        .build()
        .nest("/api/v1", api);
    BearerJwt.modify(&mut doc);
    // Named by every error response (through `IntoResponses`, which
    // utoipa does not register on its own).
    add_schema::<crate::api::ErrorBody>(&mut doc);
    if doc.paths.paths.keys().any(|path| path.ends_with("/events")) {
        // The events' `data` shapes: streams have no JSON body to refer to
        // them; the stream operations name them in their descriptions.
        add_schema::<crate::web::schemas::SagaStepEvent>(&mut doc);
        add_schema::<crate::web::schemas::SagaStateEvent>(&mut doc);
        add_schema::<crate::web::schemas::TickEvent>(&mut doc);
        add_schema::<crate::web::schemas::HealthReports>(&mut doc);
        add_schema::<crate::web::schemas::EmptyEvent>(&mut doc);
        add_schema::<crate::web::console::Transition>(&mut doc);
        add_schema::<crate::services::orders::summary::SummaryRow>(&mut doc);
    }
    let used = tags(&doc);
    doc.tags = Some(
        TAGS.iter()
            .filter(|(name, _)| used.contains(*name))
            .map(|(name, about)| {
                TagBuilder::new()
                    .name(*name)
                    .description(Some(*about))
                    .build()
            })
            .collect(),
    );
    doc
}

/// The tags `doc`'s operations carry.
fn tags(doc: &OpenApi) -> BTreeSet<String> {
    doc.paths
        .paths
        .values()
        .flat_map(|item| operations(item).into_iter())
        .flat_map(|op| op.tags.iter().flatten().cloned())
        .collect()
}

fn operations(item: &utoipa::openapi::PathItem) -> Vec<&utoipa::openapi::path::Operation> {
    [
        &item.get,
        &item.put,
        &item.post,
        &item.delete,
        &item.options,
        &item.head,
        &item.patch,
        &item.trace,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The operations of `doc` tagged `tag`, as a document of their own.
fn part(doc: &OpenApi, tag: &str) -> OpenApi {
    let mut part = doc.clone();
    part.paths.paths.retain(|_, item| {
        let keep = |op: &mut Option<utoipa::openapi::path::Operation>| {
            if op
                .as_ref()
                .is_some_and(|op| !op.tags.iter().flatten().any(|t| t == tag))
            {
                *op = None;
            }
        };
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ] {
            keep(op);
        }
        !operations(item).is_empty()
    });
    if let Some(tags) = &mut part.tags {
        tags.retain(|t| t.name == tag);
    }
    part.info.title = format!("ecommerce {tag}");
    part.info.description = Some(format!(
        "The {tag} service of the Trellis reference system, as this process serves it."
    ));
    part
}

/// What a service's routes document, without starting it (the routers
/// without their state): the gateway's document is made of these.
pub(crate) fn service_api(service: ServiceName) -> OpenApi {
    match service {
        ServiceName::Identity => services::identity::routes(true).into_openapi(),
        ServiceName::Catalog => services::catalog::routes().into_openapi(),
        ServiceName::Inventory => services::inventory::routes().into_openapi(),
        ServiceName::Payments => services::payments::routes().into_openapi(),
        // Orders serves the pages' API too (run/distributed/).
        ServiceName::Orders => services::orders::http::routes()
            .into_openapi()
            .merge_from(crate::web::api_routes().into_openapi()),
        ServiceName::Shipping => services::shipping::routes().into_openapi(),
        ServiceName::Analytics => services::analytics::routes().into_openapi(),
        ServiceName::Gateway => gateway_api(),
    }
}

/// The gateway's operations: every service's that the gateway forwards
/// (`services::gateway::owner`), relative to `/api/v1`.
pub(crate) fn gateway_api() -> OpenApi {
    let mut api = OpenApiBuilder::new().build();
    for service in [
        ServiceName::Identity,
        ServiceName::Catalog,
        ServiceName::Inventory,
        ServiceName::Payments,
        ServiceName::Orders,
        ServiceName::Shipping,
        ServiceName::Analytics,
    ] {
        api.merge(service_api(service));
    }
    api.paths
        .paths
        .retain(|path, _| services::gateway::owner(path).is_some());
    api
}

fn json_response(body: Bytes) -> axum::response::Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn serialized(doc: &OpenApi) -> Bytes {
    // Serializing plain data cannot fail.
    Bytes::from(doc.to_json().unwrap_or_default())
}

/// One process: `/openapi.json` (what `api` documents, every service's
/// routes merged) and `/openapi/{service}.json` (a service's part), to be
/// nested under `/api/v1`. Public, like the JWKS.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(api: OpenApi) -> Router<S> {
    let doc = document(
        "ecommerce",
        "Every service of the Trellis reference system, in one process.",
        api,
    );
    let mut router = Router::new();
    for tag in tags(&doc) {
        let body = serialized(&part(&doc, &tag));
        router = router.route(
            &format!("/openapi/{tag}.json"),
            get(move || async move { json_response(body) }),
        );
    }
    let body = serialized(&doc);
    router.route(
        "/openapi.json",
        get(move || async move { json_response(body) }),
    )
}

/// One service per process: the document of its routes (`api`) at
/// `/openapi.json`, to be nested under `/api/v1`.
pub(crate) fn service_router<S: Clone + Send + Sync + 'static>(
    service: ServiceName,
    api: OpenApi,
) -> Router<S> {
    let doc = document(
        &format!("ecommerce {service}"),
        &format!("The {service} service of the Trellis reference system."),
        api,
    );
    let body = serialized(&doc);
    Router::new().route(
        "/openapi.json",
        get(move || async move { json_response(body) }),
    )
}

/// Splits `router` into its routes and, at `/openapi.json`, their document
/// as `service` alone serves it.
pub(crate) fn with_document(service: ServiceName, router: ApiRouter) -> Router {
    let (router, api) = router.split_for_parts();
    router.merge(service_router(service, api))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn paths(doc: &OpenApi) -> Vec<String> {
        doc.paths.paths.keys().cloned().collect()
    }

    #[test]
    fn the_gateway_documents_what_it_forwards() {
        let doc = document("ecommerce gateway", "", gateway_api());
        let paths = paths(&doc);
        for forwarded in [
            "/api/v1/identity/login",
            "/api/v1/.well-known/jwks.json",
            "/api/v1/products/{sku}",
            "/api/v1/orders",
            "/api/v1/admin/events",
            "/api/v1/shipments/{order_id}",
            "/api/v1/analytics/customers",
        ] {
            assert!(paths.iter().any(|p| p == forwarded), "{forwarded}");
        }
        // Internal routes, the service-token grant and the one-process
        // audit are not the gateway's.
        for internal in [
            "/api/v1/identity/token",
            "/api/v1/inventory/reservations",
            "/api/v1/payments/charges",
            "/api/v1/admin/audit",
        ] {
            assert!(!paths.iter().any(|p| p == internal), "{internal}");
        }
    }

    #[test]
    fn a_service_part_keeps_only_its_tag() {
        let mut api = OpenApiBuilder::new().build();
        for service in [ServiceName::Catalog, ServiceName::Orders] {
            api.merge(service_api(service));
        }
        let doc = document("ecommerce", "", api);
        let catalog = part(&doc, "catalog");
        assert_eq!(
            paths(&catalog),
            ["/api/v1/products", "/api/v1/products/{sku}"]
        );
        assert_eq!(catalog.info.title, "ecommerce catalog");
        let payments = part(&doc, "payments");
        assert_eq!(paths(&payments), ["/api/v1/admin/payments/faults"]);
    }

    fn refs<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("$ref", Some(reference)) => found.push(reference),
                        _ => refs(v, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_every_document_resolves() {
        for service in [
            ServiceName::Identity,
            ServiceName::Catalog,
            ServiceName::Inventory,
            ServiceName::Payments,
            ServiceName::Orders,
            ServiceName::Shipping,
            ServiceName::Analytics,
            ServiceName::Gateway,
        ] {
            let doc = document("test", "", service_api(service));
            let doc: serde_json::Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
            let mut found = Vec::new();
            refs(&doc, &mut found);
            assert!(!found.is_empty(), "{service}");
            for reference in found {
                let pointer = reference.strip_prefix('#').unwrap();
                assert!(
                    doc.pointer(pointer).is_some(),
                    "{service}: dangling {reference}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_service_process_serves_its_own_document() {
        let response = service_router::<()>(ServiceName::Orders, service_api(ServiceName::Orders))
            .oneshot(
                http::Request::get("/openapi.json")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["info"]["title"], "ecommerce orders");
        assert!(doc["paths"]["/api/v1/orders"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/products"].is_null());
    }
}
