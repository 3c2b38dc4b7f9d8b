//! The blue-green smoke check's acceptance test (Flagger's pre-rollout
//! webhook, Argo Rollouts' `prePromotionAnalysis`): real orders placed on
//! the green version before it takes any customer's traffic.
//!
//! Each smoke order is placed with an `Idempotency-Key` and read back. It
//! passes when the place answers 201 or 202 and is not marked a failure
//! of the system (`x-rollout-outcome: error`, see
//! [`OUTCOME_HEADER`](crate::platform::delivery::OUTCOME_HEADER): a
//! charge or a reservation that failed by the system's fault, not the
//! card's or the stock's), and the read answers 200. The orders are real:
//! they reserve, charge and confirm like a customer's, so a green whose
//! payments path fails is caught before the switch, and the audit accounts
//! for them like any order.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};

/// Sends one request (its path after `/api/v1`) to the green version and
/// buffers the answer; `Err` is a transport failure, in words.
pub(crate) type SmokeSend = Arc<
    dyn Fn(Request<Bytes>) -> BoxFuture<'static, Result<Response<Bytes>, String>> + Send + Sync,
>;

/// Smoke orders per green instance: enough that a version failing every
/// charge or reservation is caught, few enough to leave no mark on stock.
pub(crate) const SMOKE_ORDERS: usize = 3;

/// The card of the smoke orders: the fake provider's always-good card.
const SMOKE_CARD: &str = "4242424242424242";

fn request(method: Method, path: &str, token: &str, body: Bytes) -> Result<Request<Bytes>, String> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            crate::api::IDEMPOTENCY_KEY,
            uuid::Uuid::new_v4().to_string(),
        )
        .body(body)
        .map_err(|e| e.to_string())
}

fn text(body: &Bytes) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

/// Places `orders` smoke orders of one unit of `sku` through `send` with
/// `token` (scopes `orders:write orders:read`) and reads each back.
///
/// # Errors
///
/// Why the first failing order failed: a transport error, a status, or
/// the saga's error of an order the system failed.
pub(crate) async fn smoke_orders(
    send: &SmokeSend,
    token: &str,
    sku: &str,
    orders: usize,
) -> Result<(), String> {
    for n in 1..=orders {
        let body = serde_json::json!({
            "lines": [{ "sku": sku, "quantity": 1 }],
            "card": SMOKE_CARD,
        });
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        let placed = send(request(Method::POST, "/orders", token, body)?)
            .await
            .map_err(|e| format!("smoke order {n}: {e}"))?;
        let marked = placed
            .headers()
            .get(crate::platform::delivery::OUTCOME_HEADER)
            .is_some_and(|v| v == "error");
        if !matches!(placed.status(), StatusCode::CREATED | StatusCode::ACCEPTED) || marked {
            return Err(format!(
                "smoke order {n}: {}{} {}",
                placed.status(),
                if marked {
                    " (a failure of the system)"
                } else {
                    ""
                },
                text(placed.body())
            ));
        }
        let id: serde_json::Value =
            serde_json::from_slice(placed.body()).map_err(|e| format!("smoke order {n}: {e}"))?;
        let id = id["order_id"]
            .as_str()
            .ok_or_else(|| format!("smoke order {n}: no order_id in {}", text(placed.body())))?;
        let read = send(request(
            Method::GET,
            &format!("/orders/{id}"),
            token,
            Bytes::new(),
        )?)
        .await
        .map_err(|e| format!("smoke order {n} read back: {e}"))?;
        if read.status() != StatusCode::OK {
            return Err(format!(
                "smoke order {n} read back: {} {}",
                read.status(),
                text(read.body())
            ));
        }
    }
    Ok(())
}
