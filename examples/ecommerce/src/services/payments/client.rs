//! Payments' client: the requests orders makes of payments (a card is
//! tokenized before it leaves orders), the answers, and the client that
//! sends them over HTTP (distributed mode).

use http::{Method, StatusCode};
use serde_json::json;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;

use super::DECLINED_CARD;
use crate::platform::transport::{Transport, json_body, send, unexpected};
use crate::services::identity::client::ServiceToken;

/// The provider token for `card`, made when the order is placed so that no
/// card number is stored anywhere (the saga state and log keep the token):
/// `tok_<verdict>_<last four>_<random>`. The fake provider's tokens carry
/// its verdict, as its test card numbers do; a real provider's token is
/// opaque and kept in its vault.
pub(crate) fn tokenize(card: &str) -> String {
    let last4 = card.get(card.len().saturating_sub(4)..).unwrap_or_default();
    let verdict = if card == DECLINED_CARD {
        "decline"
    } else {
        "ok"
    };
    format!("tok_{verdict}_{last4}_{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug, Clone)]
pub(crate) enum PaymentRequest {
    Charge {
        key: String,
        order_id: String,
        amount_cents: i64,
        card: String,
    },
    /// Refunds `payment` when given, else the charge made under
    /// `charge_key` (for `order_id`): a compensation refunds by the key
    /// whatever its saga recorded. A charge key with no charge yet is
    /// cancelled, so the charge arriving late is refused.
    Refund {
        key: String,
        payment: Option<String>,
        charge_key: Option<String>,
        order_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PaymentReply {
    Charged { payment: String },
    Declined { reason: String },
    Refunded,
}

/// `POST /payments/refunds`'s body: only the fields given.
fn refund_body(
    payment: Option<String>,
    charge_key: Option<String>,
    order_id: Option<String>,
) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    for (name, value) in [
        ("payment", payment),
        ("charge_key", charge_key),
        ("order_id", order_id),
    ] {
        if let Some(value) = value {
            body.insert(name.into(), value.into());
        }
    }
    serde_json::Value::Object(body)
}

/// Payments over HTTP: charge / refund.
pub(crate) fn payment_client(
    transport: Transport,
    base: String,
    token: ServiceToken,
) -> BoxCloneSyncService<PaymentRequest, PaymentReply, BoxError> {
    BoxCloneSyncService::new(tower::service_fn(move |request: PaymentRequest| {
        let (transport, base, token) = (transport.clone(), base.clone(), token.clone());
        async move {
            let bearer = token.get().await?;
            match request {
                PaymentRequest::Charge {
                    key,
                    order_id,
                    amount_cents,
                    card,
                } => {
                    let response = send(
                        &transport,
                        Method::POST,
                        format!("{base}/api/v1/payments/charges"),
                        Some(&bearer),
                        Some(&key),
                        Some(json!({ "order_id": order_id, "amount_cents": amount_cents, "card": card })),
                    )
                    .await?;
                    let body = json_body(&response).unwrap_or_default();
                    match response.status() {
                        StatusCode::CREATED | StatusCode::OK => Ok(PaymentReply::Charged {
                            payment: body["payment"]
                                .as_str()
                                .ok_or("charge answer has no payment id")?
                                .to_owned(),
                        }),
                        StatusCode::PAYMENT_REQUIRED if body["error"] == "payment_declined" => {
                            Ok(PaymentReply::Declined {
                                reason: body["message"].as_str().unwrap_or("declined").to_owned(),
                            })
                        }
                        _ => Err(unexpected("payments", &response)),
                    }
                }
                PaymentRequest::Refund {
                    key,
                    payment,
                    charge_key,
                    order_id,
                } => {
                    let response = send(
                        &transport,
                        Method::POST,
                        format!("{base}/api/v1/payments/refunds"),
                        Some(&bearer),
                        Some(&key),
                        Some(refund_body(payment, charge_key, order_id)),
                    )
                    .await?;
                    if response.status().is_success() {
                        Ok(PaymentReply::Refunded)
                    } else {
                        Err(unexpected("payments", &response))
                    }
                }
            }
        }
    }))
}
