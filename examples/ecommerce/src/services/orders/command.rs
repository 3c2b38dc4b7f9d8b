//! `POST /orders` through trellis-cqrs's command pipeline: trace ▸
//! validate (field errors, 422) ▸ authorize (403) ▸ idempotency by the
//! client's `Idempotency-Key`, durable in orders' read-model database ▸
//! [`PlaceService`], which prices the lines and runs the place-order saga.
//!
//! The pipeline's innermost service is ours rather than its
//! `RepositoryService`: an order is not one aggregate command but a saga
//! whose first step records it. Every layer works on any inner service of
//! the pipeline's shape, so the rules stay trellis-cqrs's.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::Serialize;
use tower::{Layer, Service, ServiceExt};
use trellis_cqrs::command::{
    AuthorizeLayer, CommandFuture, CommandTraceLayer, IdempotencyLayer, ValidateLayer,
};
use trellis_cqrs::{
    Command, CommandResult, Error, ErrorKind, Identity, Validate, ValidationErrors,
};

use super::OrdersState;
use super::saga::PlaceOrder;
use crate::api::{ApiError, FieldMessage};
use crate::platform::backend::ReadDb;
use crate::services::inventory::client::Line;

/// The scope (and pipeline role) that may place orders.
pub(crate) const WRITE: &str = "orders:write";

/// Most lines of an order.
const MAX_LINES: usize = 50;

/// A card number: kept for the saga, which only sees the provider's token;
/// never printed, and only its last four digits enter the command's
/// idempotency fingerprint (a key reused with another card is another
/// command; the store never holds the number, not even hashed alone).
#[derive(Clone)]
pub(crate) struct Card(pub(crate) String);

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Card(****)")
    }
}

impl Serialize for Card {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let last4 = self.0.get(self.0.len().saturating_sub(4)..).unwrap_or("");
        serializer.serialize_str(last4)
    }
}

/// Placing an order: what the customer asked for, before pricing.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PlaceOrderCommand {
    /// The token's subject.
    pub(crate) customer: String,
    /// The lines as requested (SKU and quantity).
    pub(crate) lines: Vec<Line>,
    pub(crate) card: Card,
}

impl Validate for PlaceOrderCommand {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if self.lines.is_empty() || self.lines.len() > MAX_LINES {
            errors.add(
                "lines",
                "invalid_lines",
                format!("an order has 1 to {MAX_LINES} lines"),
            );
        }
        let card = &self.card.0;
        if !(12..=19).contains(&card.len()) || !card.bytes().all(|b| b.is_ascii_digit()) {
            errors.add("card", "invalid_card", "card must be 12 to 19 digits");
        }
        for (i, line) in self.lines.iter().enumerate().take(MAX_LINES) {
            if !(1..=100).contains(&line.quantity) {
                errors.add(
                    format!("lines[{i}].quantity"),
                    "invalid_quantity",
                    format!(
                        "quantity of {} must be between 1 and 100, got {}",
                        line.sku, line.quantity
                    ),
                );
            }
        }
        errors.into_result()
    }
}

/// Only a caller holding [`WRITE`] places orders, and only their own.
fn authorize(identity: Option<&Identity>, command: &PlaceOrderCommand) -> Result<(), String> {
    match identity {
        None => Err("not authenticated".into()),
        Some(identity) if !identity.has_role(WRITE) => Err(format!("missing scope {WRITE}")),
        Some(identity) if identity.subject != command.customer => {
            Err("an order is placed for the caller only".into())
        }
        Some(_) => Ok(()),
    }
}

/// The durable idempotency store of `POST /orders`, in orders' read-model
/// database (shared by its replicas in distributed mode), on whichever
/// backend that database's URL names.
pub(crate) type OrderKeys = trellis_cqrs::AnyIdempotencyStore;

/// Opens the store (creating its table) in `db`.
///
/// # Errors
///
/// The database failed.
pub(crate) async fn open_keys(db: &ReadDb) -> Result<OrderKeys, Error> {
    OrderKeys::new(db.clone()).await
}

/// What this request's own run of the saga saw.
#[derive(Debug)]
pub(crate) struct Ran {
    /// The saga's record once decided; `None` while it still runs.
    pub(crate) record: Option<trellis_saga::SagaRecord>,
    /// The priced total.
    pub(crate) total_cents: i64,
}

/// Filled by [`PlaceService`] when it ran the saga; empty when the
/// pipeline answered a repeated key, or the saga existed already.
type Outcome = Arc<Mutex<Option<Ran>>>;

/// The pipeline's innermost service: prices the lines (an unknown SKU is a
/// field error), starts the place-order saga on its own task and waits
/// until it is decided (see `http::decided`) or the wait passes. Its
/// result's position is the event store's head then, for read-your-writes.
#[derive(Debug, Clone)]
pub(crate) struct PlaceService {
    app: OrdersState,
    outcome: Outcome,
}

impl Service<Command<PlaceOrderCommand>> for PlaceService {
    type Response = CommandResult;
    type Error = Error;
    type Future = CommandFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, command: Command<PlaceOrderCommand>) -> CommandFuture {
        let (app, outcome) = (self.app.clone(), self.outcome.clone());
        Box::pin(async move {
            let order_id = command.aggregate_id;
            let PlaceOrderCommand {
                customer,
                lines: requested,
                card,
            } = command.payload;
            let mut lines = Vec::with_capacity(requested.len());
            let mut total_cents = 0i64;
            let mut unknown = ValidationErrors::new();
            for (i, line) in requested.into_iter().enumerate() {
                let product = app
                    .prices
                    .get(&line.sku)
                    .await
                    .map_err(|e| Error::Handler(format!("prices: {}", e.message).into()))?;
                let Some(product) = product else {
                    unknown.add(
                        format!("lines[{i}].sku"),
                        "unknown_product",
                        format!("no product with sku {:?}", line.sku),
                    );
                    continue;
                };
                total_cents += product.price_cents * line.quantity;
                lines.push(Line {
                    sku: product.sku,
                    quantity: line.quantity,
                });
            }
            unknown.into_result().map_err(Error::Validation)?;
            // A checkout step behind a flag: an order-value limit (0: none).
            let limit = app
                .flags
                .int(crate::platform::flags::CHECKOUT_ORDER_LIMIT, &customer, 0)
                .await;
            if limit > 0 && total_cents > limit {
                let mut over = ValidationErrors::new();
                over.add(
                    "lines",
                    "order_limit",
                    format!(
                        "orders are limited to {limit} cents for now, this one is {total_cents}"
                    ),
                );
                over.into_result().map_err(Error::Validation)?;
            }
            let state = PlaceOrder {
                order_id: order_id.clone(),
                customer,
                lines,
                total_cents,
                // Only the provider's token is kept (saga state and log), never the number.
                card: crate::services::payments::client::tokenize(&card.0),
                reservation: None,
                payment: None,
                pending_validation: false,
                trace_id: trellis_observability::metrics::current_trace_id(),
                traceparent: trellis_observability::trace::current_traceparent()
                    .map(|(traceparent, _)| traceparent),
            };
            let wait = super::http::place_wait(&app);
            // Subscribed before the start, so no event of this saga is missed.
            let events = app.orders.orchestrator.subscribe();
            let saga = {
                let (app, order_id) = (app.clone(), order_id.clone());
                // The saga continues the request's trace, in a span that
                // does not hold the request's open when the saga outlives
                // the answer.
                let run = trellis_observability::trace::continue_current_trace(
                    tracing::info_span!(parent: None, "place-order saga"),
                );
                let trace_id = trellis_observability::metrics::current_trace_id();
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        let started = std::time::Instant::now();
                        let result = app.orders.saga.start(&order_id, state).await;
                        if let Ok(record) = &result {
                            app.metrics
                                .saga_ended(
                                    &app.orders.orchestrator,
                                    record,
                                    started.elapsed(),
                                    trace_id,
                                )
                                .await;
                        }
                        result
                    },
                    run,
                ))
            };
            let decided = super::http::decided(&app, &order_id, saga, events);
            let record = match tokio::time::timeout(wait, decided).await {
                Ok(Ok(Ok(record))) => Some(record),
                // Started before (a run whose claim expired, or a
                // validation): the handler answers the saga as it stands.
                Ok(Ok(Err(trellis_saga::Error::AlreadyExists { .. }))) => {
                    return Ok(CommandResult {
                        version: 0,
                        positions: Vec::new(),
                    });
                }
                Ok(Ok(Err(e))) => return Err(Error::Handler(Box::new(e))),
                Ok(Err(join)) => return Err(Error::Handler(Box::new(join))),
                // Still running: the adopter or a later answer finishes it.
                Err(_elapsed) => None,
            };
            if let Ok(mut slot) = outcome.lock() {
                *slot = Some(Ran {
                    record,
                    total_cents,
                });
            }
            Ok(CommandResult {
                version: 0,
                positions: vec![app.orders.appended_head()],
            })
        })
    }
}

/// Sends `command` through the pipeline: the command's result and, when
/// this request ran the saga, what it saw (see [`Outcome`]).
///
/// # Errors
///
/// The pipeline's error: see [`api_error`] for the answer of each kind.
pub(crate) async fn place(
    app: &OrdersState,
    command: Command<PlaceOrderCommand>,
) -> Result<(CommandResult, Option<Ran>), Error> {
    let outcome = Outcome::default();
    let wait = super::http::place_wait(app);
    let inner = PlaceService {
        app: app.clone(),
        outcome: outcome.clone(),
    };
    // A key outlives its run by far: a claim must not expire under a saga
    // still deciding; a repeat waits for the first attempt's answer.
    let idempotency = IdempotencyLayer::new(app.orders.keys.clone())
        .with_claim_ttl(wait * 2)
        .wait_in_flight(wait);
    let pipeline = CommandTraceLayer::new().layer(
        ValidateLayer::new().layer(AuthorizeLayer::new(authorize).layer(idempotency.layer(inner))),
    );
    let result = pipeline.oneshot(command).await?;
    let ran = outcome.lock().ok().and_then(|mut slot| slot.take());
    Ok((result, ran))
}

/// The caller as the pipeline sees it: the token's subject, with the write
/// scope as a role when the token carries it.
pub(crate) fn identity(claims: &trellis_auth::Claims, customer: &str) -> Identity {
    let identity = Identity::new(customer);
    if claims.has_scope(WRITE) {
        identity.with_role(WRITE)
    } else {
        identity
    }
}

/// The answer to a pipeline error, by its kind's status
/// ([`ErrorKind::status_hint`]): 422 with the invalid fields (the code is
/// the first field's), 403, 409, 503; the rest 500.
pub(crate) fn api_error(error: Error) -> ApiError {
    let kind = error.kind();
    let status = match kind {
        // The library's hint is the IETF idempotency-key draft's 422. Here
        // the body is valid; it conflicts with what the key already stands
        // for (server state), which is 409's meaning, and a valid request is
        // never answered 422 (the OpenAPI document's promise, which
        // schemathesis checks).
        ErrorKind::IdempotencyMismatch => http::StatusCode::CONFLICT,
        _ => http::StatusCode::from_u16(kind.status_hint())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
    };
    let code = match kind {
        ErrorKind::Validation => {
            let fields = error.validation().map(|v| v.errors()).unwrap_or_default();
            let code = fields
                .first()
                .map_or_else(|| "invalid_command".to_owned(), |f| f.code.clone());
            let message = fields
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let fields = fields
                .iter()
                .map(|f| FieldMessage {
                    field: f.field.clone(),
                    message: f.message.clone(),
                })
                .collect();
            return ApiError::new(status, "invalid_command", message).with_fields(code, fields);
        }
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::IdempotencyMismatch => "idempotency_key_reused",
        ErrorKind::InFlight => "idempotency_key_in_flight",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Rejected | ErrorKind::InvalidInput => "rejected",
        ErrorKind::NotReady | ErrorKind::Unavailable => "unavailable",
        _ => return ApiError::internal(error),
    };
    let message = match &error {
        Error::IdempotencyMismatch { .. } => {
            "this Idempotency-Key was used with another order".to_owned()
        }
        Error::InFlight { .. } => {
            "an order with this Idempotency-Key is still being placed; retry shortly".to_owned()
        }
        other => other.to_string(),
    };
    // Per request, and the client has the answer: debug, not info.
    tracing::debug!(%error, status = status.as_u16(), "order command refused");
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(lines: Vec<(&str, i64)>, card: &str) -> PlaceOrderCommand {
        PlaceOrderCommand {
            customer: "ada".into(),
            lines: lines
                .into_iter()
                .map(|(sku, quantity)| Line {
                    sku: sku.into(),
                    quantity,
                })
                .collect(),
            card: Card(card.into()),
        }
    }

    #[test]
    fn every_invalid_field_is_listed() {
        let errors = command(
            vec![("TEA-001", 0), ("MUG-002", 1), ("KET-003", 101)],
            "12ab",
        )
        .validate()
        .unwrap_err();
        let fields: Vec<_> = errors.fields().collect();
        assert_eq!(fields, ["card", "lines[0].quantity", "lines[2].quantity"]);
        assert!(command(vec![], "4242424242424242").validate().is_err());
        assert!(
            command(vec![("TEA-001", 1)], "4242424242424242")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_422_lists_the_fields_under_the_first_code() {
        let errors = command(vec![("TEA-001", -3)], "4242424242424242")
            .validate()
            .unwrap_err();
        let error = api_error(Error::Validation(errors));
        assert_eq!(error.status, http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.code, "invalid_quantity");
        assert_eq!(error.fields.len(), 1);
        assert_eq!(error.fields[0].field, "lines[0].quantity");
        let forbidden = api_error(Error::Forbidden {
            reason: "missing scope".into(),
        });
        assert_eq!(forbidden.status, http::StatusCode::FORBIDDEN);
        let busy = api_error(Error::InFlight {
            key: uuid::Uuid::nil(),
        });
        assert_eq!(busy.status, http::StatusCode::CONFLICT);
    }

    #[test]
    fn the_fingerprint_holds_the_last_four_digits_only() {
        let json =
            serde_json::to_string(&command(vec![("TEA-001", 1)], "4242424242421234")).unwrap();
        assert!(json.contains("\"card\":\"1234\""), "{json}");
        assert!(!json.contains("424242"), "{json}");
        assert_eq!(
            format!("{:?}", Card("4242424242421234".into())),
            "Card(****)"
        );
    }

    #[test]
    fn only_the_customer_with_the_write_scope_may_place() {
        let order = command(vec![("TEA-001", 1)], "4242424242424242");
        let writer = Identity::new("ada").with_role(WRITE);
        assert!(authorize(Some(&writer), &order).is_ok());
        assert!(authorize(Some(&Identity::new("ada")), &order).is_err());
        assert!(authorize(Some(&Identity::new("bob").with_role(WRITE)), &order).is_err());
        assert!(authorize(None, &order).is_err());
    }
}
