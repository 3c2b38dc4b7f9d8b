//! The request and response bodies of the JSON API, shared by handlers,
//! clients and the OpenAPI documents. Handlers answer with these types (or
//! describe their `json!` bodies with them where not yet converted), and
//! tests/openapi.rs validates real responses against them, so a handler that
//! changes its shape fails there.

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// Every error: `{"error": code, "message": ...}`, and the invalid fields
/// of a refused command.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// A stable, matchable code (`insufficient_scope`, `invalid_body`, …;
    /// with `fields`, the first field's code, e.g. `invalid_quantity`).
    pub(crate) error: String,
    /// What went wrong, for people.
    pub(crate) message: String,
    /// Every invalid field of a command refused with 422 (absent otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) fields: Vec<FieldMessage>,
}

/// One invalid field of a command.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct FieldMessage {
    /// The field's path in the request body (`card`, `lines[0].quantity`).
    pub(crate) field: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

/// The answers of the JWT and scope layers, and of an internal failure.
#[derive(Debug, IntoResponses)]
#[allow(dead_code)] // documentation only: the auth layers build these responses
pub(crate) enum AuthErrors {
    /// `unauthenticated` (no bearer token) or `invalid_token`.
    #[response(status = 401, description = "`unauthenticated` or `invalid_token`")]
    Unauthenticated(ErrorBody),
    /// `insufficient_scope`: the token lacks a scope the route requires.
    #[response(status = 403, description = "`insufficient_scope`")]
    Forbidden(ErrorBody),
    /// `internal`.
    #[response(status = 500, description = "`internal`")]
    Internal(ErrorBody),
}

/// The answers to a JSON body that is not acceptable (nothing is written).
#[derive(Debug, IntoResponses)]
#[allow(dead_code)] // documentation only: `ApiJson` and the handlers build these
pub(crate) enum BodyErrors {
    /// `malformed_json`.
    #[response(status = 400, description = "`malformed_json`")]
    Malformed(ErrorBody),
    /// `body_too_large` (over 16 KiB).
    #[response(status = 413, description = "`body_too_large` (over 16 KiB)")]
    TooLarge(ErrorBody),
    /// `unsupported_media_type`: not `application/json`.
    #[response(status = 415, description = "`unsupported_media_type`")]
    NotJson(ErrorBody),
    /// `invalid_body` (unknown field, wrong type) or a domain check
    /// (`invalid_quantity`, `unknown_product`, `invalid_card`, …).
    #[response(
        status = 422,
        description = "`invalid_body` or a domain check such as `invalid_quantity`, `unknown_product`"
    )]
    Invalid(ErrorBody),
}

/// The answers of an internal write (orders calling inventory or payments)
/// that is refused before it changes anything.
#[derive(Debug, IntoResponses)]
#[allow(dead_code)] // documentation only: `ApiJson` and the handlers build these
pub(crate) enum InternalWriteErrors {
    /// `malformed_json`, or `missing_idempotency_key`.
    #[response(
        status = 400,
        description = "`malformed_json` or `missing_idempotency_key` (1 to 200 characters)"
    )]
    BadRequest(ErrorBody),
    /// `body_too_large` (over 16 KiB).
    #[response(status = 413, description = "`body_too_large` (over 16 KiB)")]
    TooLarge(ErrorBody),
    /// `unsupported_media_type`: not `application/json`.
    #[response(status = 415, description = "`unsupported_media_type`")]
    NotJson(ErrorBody),
    /// `invalid_body` or a domain check (`invalid_lines`, `invalid_amount`).
    #[response(
        status = 422,
        description = "`invalid_body` (unknown field, wrong type) or a domain check: `invalid_lines`, `invalid_amount`"
    )]
    Invalid(ErrorBody),
}

/// The `Idempotency-Key` header every internal write carries: the caller's
/// key for this step, so a retried call does the work once.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
#[allow(dead_code)] // documentation only: handlers read the header map
pub(crate) struct IdempotencyKey(
    /// 1 to 200 visible ASCII characters, unique per saga step (e.g.
    /// `{order}/{step}/action`).
    #[param(min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$")]
    String,
);

/// `POST /inventory/reservations`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Reservation {
    /// The reservation id: the call's idempotency key.
    pub(crate) reservation: String,
}

/// `POST /inventory/reservations`'s answer when a line cannot be served.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InsufficientStock {
    /// Always `insufficient_stock`: orders tells the outcome by it.
    pub(crate) error: InsufficientStockCode,
    /// What went wrong, for people.
    pub(crate) message: String,
    /// The first SKU short of stock.
    pub(crate) sku: String,
}

/// The one code of [`InsufficientStock`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InsufficientStockCode {
    /// Not enough stock for a line.
    InsufficientStock,
}

/// `POST /payments/charges`'s answer when the card is declined.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Declined {
    /// Always `payment_declined`: orders tells the outcome by it.
    pub(crate) error: DeclinedCode,
    /// The provider's reason.
    pub(crate) message: String,
}

/// The one code of [`Declined`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeclinedCode {
    /// The provider declined the card.
    PaymentDeclined,
}

/// What to do with a reservation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FinishAction {
    /// Give the stock back (compensation).
    Release,
    /// Keep it for good (the order is confirmed).
    Confirm,
}

/// `POST /inventory/reservations/{action}`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Finished {
    /// The action done.
    pub(crate) status: FinishAction,
}

/// `POST /payments/charges`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Charged {
    /// The payment id (what a refund names).
    pub(crate) payment: String,
}

/// `POST /payments/refunds`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Refunded {
    /// Always `refunded`.
    pub(crate) status: RefundStatus,
}

/// The one state of [`Refunded`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RefundStatus {
    /// The payment is refunded (now or before).
    Refunded,
}

/// `POST /identity/register`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Registered {
    /// The user id (the `sub` of their tokens).
    pub(crate) id: String,
    /// The email, trimmed and lowercased.
    pub(crate) email: String,
}

/// `POST /identity/login`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// An EdDSA-signed JWT.
    pub(crate) access_token: String,
    /// Always `Bearer`.
    pub(crate) token_type: String,
    /// Seconds until it expires.
    pub(crate) expires_in: u64,
    /// The granted scopes, space separated.
    pub(crate) scope: String,
}

/// An order's state in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum OrderState {
    /// Recorded, the saga under way.
    Placed,
    /// Reserved, charged and confirmed.
    Confirmed,
    /// Accepted while inventory was unreachable; validated later.
    PendingValidation,
    /// Compensated: nothing reserved or charged stands.
    Rejected,
}

impl OrderState {
    /// The state the read model's text names, if any.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PLACED" => OrderState::Placed,
            "CONFIRMED" => OrderState::Confirmed,
            "PENDING_VALIDATION" => OrderState::PendingValidation,
            "REJECTED" => OrderState::Rejected,
            _ => return None,
        })
    }
}

/// How the place-order saga ended.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaOutcome {
    /// `Completed`, `Compensated`, or a state a crash left it in.
    pub(crate) status: String,
    /// The failed step's error, if any.
    pub(crate) error: Option<String>,
}

/// `POST /orders`'s answer: the read-model row and the saga's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PlacedOrder {
    /// The new order's id.
    pub(crate) order_id: String,
    /// The customer (the token's subject).
    pub(crate) customer: String,
    /// Where the order stands.
    #[schema(value_type = OrderState)]
    pub(crate) status: String,
    /// Sum of price × quantity.
    pub(crate) total_cents: i64,
    /// Units over all lines.
    pub(crate) items: i64,
    /// Why it was rejected, when it was.
    pub(crate) reason: Option<String>,
    /// The saga's outcome.
    pub(crate) saga: SagaOutcome,
}

/// An order validated when inventory's breaker closed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ValidatedOrder {
    /// The order.
    pub(crate) order_id: String,
    /// Its state after validation.
    pub(crate) status: OrderState,
}

/// `POST /admin/inventory/breaker`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BreakerOutcome {
    /// The breaker's state (`Closed`, `Open`, `HalfOpen`, `ForcedOpen`).
    pub(crate) state: String,
    /// Orders validated by closing it.
    pub(crate) validated: Vec<ValidatedOrder>,
}

/// The payment provider's fault injection (trellis-resilience `FaultConfig`;
/// every field optional on input, all present in the answer; no other).
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FaultSettings {
    /// Master switch.
    enabled: bool,
    /// Probability (0–1) that a call is delayed by `latency`.
    #[schema(minimum = 0.0, maximum = 1.0)]
    latency_probability: f64,
    /// The delay: a number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`),
    /// e.g. `"250ms"` (a number of seconds is accepted on input too).
    #[schema(pattern = "^[0-9]{1,9}(\\.[0-9]{1,9})?(ns|us|ms|s|m|h)$")]
    latency: String,
    /// Probability (0–1) that a call fails before reaching the provider.
    #[schema(minimum = 0.0, maximum = 1.0)]
    error_probability: f64,
    /// Probability (0–1) that a call reaches the provider and its answer is lost.
    #[schema(minimum = 0.0, maximum = 1.0)]
    abort_probability: f64,
}

/// One public key of the JWKS.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Jwk {
    /// Key type (`OKP` for Ed25519).
    kty: String,
    /// Key id, the `kid` of the tokens it verifies.
    kid: String,
    /// Algorithm (`EdDSA`).
    alg: String,
    /// Curve (`Ed25519`).
    crv: Option<String>,
    /// The public key, base64url.
    x: Option<String>,
}

/// The JSON Web Key Set services verify tokens with.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Jwks {
    /// The current and the previous signing keys.
    keys: Vec<Jwk>,
}

/// Deserializes an `i64` the way JSON Schema counts integers: `38` and
/// `38.0` alike (a number with no fractional part is an `integer` to the
/// documents' validators, so the server takes it too); `38.5` and numbers
/// beyond `i64` are refused.
pub(crate) fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::Deserialize;
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(i64),
        Float(f64),
    }
    // 2^63 as f64: the first value past `i64::MAX`.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match Number::deserialize(deserializer)? {
        Number::Int(n) => Ok(n),
        #[allow(clippy::cast_possible_truncation)] // integral and in range: exact
        Number::Float(x) if x.fract() == 0.0 && (-LIMIT..LIMIT).contains(&x) => Ok(x as i64),
        Number::Float(x) => Err(D::Error::custom(format!(
            "invalid type: {x} is not an integer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Quantity {
        #[serde(deserialize_with = "super::integer")]
        n: i64,
    }

    #[test]
    fn integers_are_taken_as_json_schema_counts_them() {
        let n = |json: &str| serde_json::from_str::<Quantity>(json).map(|q| q.n);
        assert_eq!(n(r#"{"n": 38}"#).unwrap(), 38);
        assert_eq!(n(r#"{"n": 38.0}"#).unwrap(), 38);
        assert_eq!(n(r#"{"n": -2.0}"#).unwrap(), -2);
        assert!(n(r#"{"n": 38.5}"#).is_err());
        assert!(n(r#"{"n": 1e19}"#).is_err());
        assert!(n(r#"{"n": "38"}"#).is_err());
    }
}
