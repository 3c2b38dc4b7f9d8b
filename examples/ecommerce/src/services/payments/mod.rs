//! Payments: a fake provider that deduplicates by idempotency key. Card
//! `4000000000000002` is always declined (Stripe's test number for it).

pub(crate) mod client;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde::Deserialize;
use sqlx::AnyPool;

use self::client::{PaymentReply, PaymentRequest};
use crate::api::{ApiError, ApiJson, Error};

/// The card number the fake provider declines.
pub const DECLINED_CARD: &str = "4000000000000002";

/// Whether the fake provider declines `card` (a number or a token).
fn declined(card: &str) -> bool {
    card == DECLINED_CARD || card.starts_with("tok_decline_")
}

/// Int, milliseconds: a delay this payments process adds before it
/// answers a charge (drill `slow-replica`). Evaluated with the process's
/// instance name as the targeting key (`HOSTNAME`, else its listen
/// address), so a flag file shared by every replica can slow one:
///
/// ```json
/// { "flags": { "payments-replica-latency-ms": {
///     "variants": { "off": 0, "slow": 400 }, "defaultVariant": "off",
///     "targeting": [{ "if": [{ "attribute": "targetingKey", "op": "equals", "value": "payments-2" }], "variant": "slow" }]
/// } } }
/// ```
pub(crate) const REPLICA_LATENCY_MS: &str = "payments-replica-latency-ms";

/// The per-replica fault switch of one payments process (distributed
/// mode): its flags and the instance name they are evaluated for.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaFault {
    pub(crate) flags: crate::platform::flags::Flags,
    pub(crate) instance: String,
}

impl ReplicaFault {
    /// Waits [`REPLICA_LATENCY_MS`] for this instance, if set (at most a
    /// minute).
    async fn delay(&self) {
        let ms = self.flags.int(REPLICA_LATENCY_MS, &self.instance, 0).await;
        if let Ok(ms @ 1..) = u64::try_from(ms) {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Payments {
    pool: AnyPool,
    /// Distributed mode: this replica's own fault switch.
    fault: Option<ReplicaFault>,
}

impl Payments {
    pub(crate) async fn open(pool: AnyPool) -> Result<Self, Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS charges (idempotency_key TEXT PRIMARY KEY, payment_id TEXT NOT NULL, \
             order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL, status TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS refunds (idempotency_key TEXT PRIMARY KEY, payment_id TEXT NOT NULL UNIQUE)")
            .execute(&pool)
            .await?;
        Ok(Payments { pool, fault: None })
    }

    /// Charges recorded as `CHARGED` (and not refunded) for `order_id`.
    pub(crate) async fn net_charges(&self, order_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM charges c WHERE c.order_id = $1 AND c.status = 'CHARGED' \
             AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = c.payment_id)",
        )
        .bind(order_id)
        .fetch_one(&self.pool)
        .await
    }

    pub(crate) async fn call(&self, request: PaymentRequest) -> Result<PaymentReply, sqlx::Error> {
        match request {
            PaymentRequest::Charge {
                key,
                order_id,
                amount_cents,
                card,
            } => {
                let status = if declined(&card) {
                    "DECLINED"
                } else {
                    "CHARGED"
                };
                let payment = format!("pay_{}", uuid::Uuid::new_v4().simple());
                // One statement: the charge is made under the key, or the
                // row already there (a repeat, a retry racing the first
                // attempt, or a refund's CANCELLED marker) is answered.
                // The no-op update is what makes RETURNING yield the
                // existing row on a conflict (DO NOTHING returns none).
                let (payment, status): (String, String) = sqlx::query_as(
                    "INSERT INTO charges (idempotency_key, payment_id, order_id, amount_cents, status) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = excluded.idempotency_key \
                     RETURNING payment_id, status",
                )
                .bind(&key)
                .bind(&payment)
                .bind(&order_id)
                .bind(amount_cents)
                .bind(status)
                .fetch_one(&self.pool)
                .await?;
                Ok(match status.as_str() {
                    "CHARGED" => PaymentReply::Charged { payment },
                    CANCELLED => PaymentReply::Declined {
                        reason: "cancelled: this charge was refunded before it was made".into(),
                    },
                    _ => PaymentReply::Declined {
                        reason: "card declined".into(),
                    },
                })
            }
            PaymentRequest::Refund {
                key,
                payment,
                charge_key,
                order_id,
            } => {
                let payment = match (payment, charge_key) {
                    (Some(payment), _) => Some(payment),
                    (None, Some(charge_key)) => {
                        self.charge_to_refund(&charge_key, order_id.as_deref().unwrap_or(""))
                            .await?
                    }
                    (None, None) => None,
                };
                if let Some(payment) = payment {
                    sqlx::query("INSERT INTO refunds (idempotency_key, payment_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(&key)
                        .bind(&payment)
                        .execute(&self.pool)
                        .await?;
                }
                Ok(PaymentReply::Refunded)
            }
        }
    }

    /// The payment a refund by `charge_key` refunds: the charge's when it
    /// was charged, none when it was declined (or cancelled before), and
    /// none when it was never made, after recording a `CANCELLED` marker
    /// under the key so the charge arriving late (a retry still in flight)
    /// is refused. Inventory remembers early releases the same way.
    async fn charge_to_refund(
        &self,
        charge_key: &str,
        order_id: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        // The marker and a concurrent charge race on the key's primary
        // key: whichever row is there afterwards decides.
        sqlx::query(
            "INSERT INTO charges (idempotency_key, payment_id, order_id, amount_cents, status) \
             VALUES ($1, $2, $3, 0, 'CANCELLED') ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(charge_key)
        .bind(format!("cancelled_{}", uuid::Uuid::new_v4().simple()))
        .bind(order_id)
        .execute(&self.pool)
        .await?;
        let (payment, status): (String, String) =
            sqlx::query_as("SELECT payment_id, status FROM charges WHERE idempotency_key = $1")
                .bind(charge_key)
                .fetch_one(&self.pool)
                .await?;
        Ok((status == "CHARGED").then_some(payment))
    }
}

/// The status of the marker a refund by key leaves for a charge never made.
const CANCELLED: &str = "CANCELLED";

// ---------------------------------------------------------------- HTTP (distributed mode)

/// `POST /payments/charges`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChargeBody {
    /// The order paid for.
    #[schema(pattern = "^[^\\x00]*$")]
    order_id: String,
    /// Positive.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::api::integer")]
    amount_cents: i64,
    /// The card: a token from placing the order (`tok_...`; the number
    /// itself is accepted too, `4000000000000002` is always declined).
    #[schema(pattern = "^[^\\x00]*$")]
    card: String,
}

/// `POST /payments/refunds`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundBody {
    /// The payment id a charge answered with. Either this or `charge_key`.
    #[serde(default)]
    #[schema(pattern = "^[^\\x00]*$")]
    payment: Option<String>,
    /// The `Idempotency-Key` the charge was (or would have been) made
    /// with: refunds that charge whatever the caller knows of it; when no
    /// charge was made under it, the key is cancelled and a later charge
    /// with it is declined.
    #[serde(default)]
    #[schema(pattern = "^[^\\x00]*$")]
    charge_key: Option<String>,
    /// The order, recorded with a cancelled charge key.
    #[serde(default)]
    #[schema(pattern = "^[^\\x00]*$")]
    order_id: Option<String>,
}

/// Payments' internal routes (relative to `/api/v1`), for orders' service
/// token (scope `payments:write`).
pub(crate) fn routes() -> crate::services::ApiRouter<Payments> {
    use trellis_auth::RequireScopesLayer;
    use utoipa_axum::routes;
    crate::services::ApiRouter::default()
        .routes(routes!(charge))
        .routes(routes!(refund))
        .route_layer(RequireScopesLayer::all(["payments:write"]))
}

/// [`routes`] behind `validator`.
pub(crate) fn router(
    payments: Payments,
    validator: trellis_auth::Validator,
) -> crate::services::ApiRouter {
    routes()
        .layer(trellis_auth::JwtAuthLayer::new(validator))
        .with_state(payments)
}

/// Charges a card (service to service: orders' saga), deduplicated by the
/// `Idempotency-Key`: a repeated call answers what the first one did.
#[utoipa::path(
    post,
    path = "/payments/charges",
    tag = "payments",
    operation_id = "charge",
    params(crate::api::IdempotencyKey),
    request_body = ChargeBody,
    security(("bearer" = ["payments:write"])),
    responses(
        (status = 201, description = "Charged (or charged before with this key)", body = crate::api::Charged),
        (status = 402, description = "`payment_declined`: a business outcome, nothing charged", body = crate::api::Declined),
        crate::api::InternalWriteErrors,
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn charge(
    State(payments): State<Payments>,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<ChargeBody>,
) -> Result<axum::response::Response, ApiError> {
    let key = crate::api::idempotency_key(&headers)?;
    if let Some(fault) = &payments.fault {
        fault.delay().await;
    }
    if body.amount_cents <= 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "amount_cents must be positive",
        ));
    }
    let reply = payments
        .call(PaymentRequest::Charge {
            key,
            order_id: body.order_id,
            amount_cents: body.amount_cents,
            card: body.card,
        })
        .await?;
    Ok(match reply {
        PaymentReply::Charged { payment } => {
            (StatusCode::CREATED, Json(crate::api::Charged { payment })).into_response()
        }
        PaymentReply::Declined { reason } => (
            StatusCode::PAYMENT_REQUIRED,
            Json(crate::api::Declined {
                error: crate::api::DeclinedCode::PaymentDeclined,
                message: reason,
            }),
        )
            .into_response(),
        PaymentReply::Refunded => return Err(ApiError::internal("unexpected refund reply")),
    })
}

/// [`RefundBody`] as the server takes it: `payment` or `charge_key` (a
/// string) is required, which a derived schema cannot say.
pub(crate) struct RefundRequest;

impl utoipa::PartialSchema for RefundRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Type};
        let named = |field: &str| {
            ObjectBuilder::new()
                .property(field, ObjectBuilder::new().schema_type(Type::String))
                .required(field)
        };
        AllOfBuilder::new()
            .item(<RefundBody as utoipa::PartialSchema>::schema())
            .item(
                AnyOfBuilder::new()
                    .item(named("payment"))
                    .item(named("charge_key")),
            )
            .into()
    }
}

impl utoipa::ToSchema for RefundRequest {}

/// Refunds a payment, once per payment whatever the key, named by its
/// payment id or by the charge's idempotency key (a key never charged is
/// cancelled: a later charge with it is declined).
#[utoipa::path(
    post,
    path = "/payments/refunds",
    tag = "payments",
    operation_id = "refund",
    params(crate::api::IdempotencyKey),
    request_body = RefundRequest,
    security(("bearer" = ["payments:write"])),
    responses(
        (status = 200, description = "Refunded (also when it was before)", body = crate::api::Refunded),
        crate::api::InternalWriteErrors,
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn refund(
    State(payments): State<Payments>,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<Json<crate::api::Refunded>, ApiError> {
    let key = crate::api::idempotency_key(&headers)?;
    if body.payment.is_none() && body.charge_key.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_refund",
            "name the payment or the charge_key",
        ));
    }
    payments
        .call(PaymentRequest::Refund {
            key,
            payment: body.payment,
            charge_key: body.charge_key,
            order_id: body.order_id,
        })
        .await?;
    Ok(Json(crate::api::Refunded {
        status: crate::api::RefundStatus::Refunded,
    }))
}

/// Starts payments (the fake provider) on `pool`, its routes behind
/// `validator`, in either run mode.
///
/// # Errors
///
/// The tables cannot be created.
pub(crate) async fn start(
    pool: AnyPool,
    validator: trellis_auth::Validator,
) -> Result<crate::services::Started<Payments>, Error> {
    start_with_fault(pool, validator, None).await
}

/// [`start`] with this replica's fault switch (distributed mode).
///
/// # Errors
///
/// The tables cannot be created.
pub(crate) async fn start_with_fault(
    pool: AnyPool,
    validator: trellis_auth::Validator,
    fault: Option<ReplicaFault>,
) -> Result<crate::services::Started<Payments>, Error> {
    let mut payments = Payments::open(pool).await?;
    payments.fault = fault;
    Ok(crate::services::Started {
        router: router(payments.clone(), validator),
        service: payments,
        background: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::client::tokenize;
    use super::*;

    async fn payments(name: &str) -> (Payments, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-payments-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = crate::platform::db::open_any(&dir, "payments")
            .await
            .unwrap();
        (Payments::open(pool).await.unwrap(), dir)
    }

    fn charge(key: &str) -> PaymentRequest {
        PaymentRequest::Charge {
            key: key.into(),
            order_id: "o1".into(),
            amount_cents: 2500,
            card: "4242424242424242".into(),
        }
    }

    fn refund_by_key(key: &str, charge_key: &str) -> PaymentRequest {
        PaymentRequest::Refund {
            key: key.into(),
            payment: None,
            charge_key: Some(charge_key.into()),
            order_id: Some("o1".into()),
        }
    }

    #[tokio::test]
    async fn a_refund_by_key_refunds_the_charge_made_under_it() {
        let (payments, dir) = payments("by-key").await;
        let reply = payments.call(charge("o1/2/action")).await.unwrap();
        assert!(matches!(reply, PaymentReply::Charged { .. }), "{reply:?}");
        assert_eq!(payments.net_charges("o1").await.unwrap(), 1);
        // The saga never recorded the payment id: the key is enough.
        for key in ["o1/0/settle-charge", "o1/0/settle-charge", "another"] {
            assert_eq!(
                payments
                    .call(refund_by_key(key, "o1/2/action"))
                    .await
                    .unwrap(),
                PaymentReply::Refunded
            );
        }
        assert_eq!(payments.net_charges("o1").await.unwrap(), 0);
        let refunds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refunds")
            .fetch_one(&payments.pool)
            .await
            .unwrap();
        assert_eq!(refunds, 1, "refunded once");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_refund_by_key_before_the_charge_cancels_it() {
        let (payments, dir) = payments("cancel").await;
        assert_eq!(
            payments
                .call(refund_by_key("o1/0/settle-charge", "o1/2/action"))
                .await
                .unwrap(),
            PaymentReply::Refunded
        );
        // The charge call that was still in flight arrives late: refused.
        let late = payments.call(charge("o1/2/action")).await.unwrap();
        assert!(matches!(late, PaymentReply::Declined { .. }), "{late:?}");
        assert_eq!(payments.net_charges("o1").await.unwrap(), 0);
        // A declined charge's key refunds nothing.
        let declined = PaymentRequest::Charge {
            key: "o2/2/action".into(),
            order_id: "o2".into(),
            amount_cents: 100,
            card: DECLINED_CARD.into(),
        };
        payments.call(declined).await.unwrap();
        payments
            .call(refund_by_key("o2/0/settle-charge", "o2/2/action"))
            .await
            .unwrap();
        let refunds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refunds")
            .fetch_one(&payments.pool)
            .await
            .unwrap();
        assert_eq!(refunds, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_token_keeps_the_last_four_digits_and_the_verdict_never_the_number() {
        let token = tokenize("4242424242424242");
        assert!(token.starts_with("tok_ok_4242_"), "{token}");
        assert!(!token.contains("424242424242"), "{token}");
        assert!(!declined(&token));
        let declined_token = tokenize(DECLINED_CARD);
        assert!(!declined_token.contains(DECLINED_CARD));
        assert!(declined(&declined_token));
        assert_ne!(tokenize("4242424242424242"), token, "random per order");
    }
}
