//! The fault drills as feature flags, evaluated on every call orders makes
//! to payments and inventory (as the OpenTelemetry demo's services evaluate
//! `paymentFailure` and friends): see [`crate::platform::flags`].
//!
//! The wrappers sit where the `FaultHandle` drills sit, inside the
//! resilience policy, so an outage or latency flag exercises the retry,
//! the timeout, the breaker and the fallback exactly as those drills do.

use std::time::Duration;

use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;

use super::{InventoryClient, PaymentClient};
use crate::platform::flags::{
    Flags, INJECTED_CHARGE_FAILURE, INVENTORY_DOWN, INVENTORY_LATENCY_MS, PAYMENT_FAILURE_RATE,
    PAYMENT_OUTAGE,
};
use crate::services::inventory::client::InventoryRequest;
use crate::services::payments::client::{PaymentReply, PaymentRequest};

/// A failure a flag injected (retryable, like a dropped connection).
#[derive(Debug, thiserror::Error)]
#[error("injected by flag {0}")]
pub(crate) struct Injected(&'static str);

/// `inner` behind [`PAYMENT_OUTAGE`] (every call fails) and
/// [`PAYMENT_FAILURE_RATE`] (that share of orders' charges fails for good,
/// by the order's sticky bucket, so a retried or adopted charge fails
/// again: the provider answers as it would to a refused card).
pub(crate) fn payments(flags: Flags, inner: PaymentClient) -> PaymentClient {
    BoxCloneSyncService::new(tower::service_fn(move |request: PaymentRequest| {
        let (flags, inner) = (flags.clone(), inner.clone());
        async move {
            let target = match &request {
                PaymentRequest::Charge { order_id, .. } => order_id.clone(),
                _ => String::new(),
            };
            if flags.bool(PAYMENT_OUTAGE, &target, false).await {
                return Err(BoxError::from(Injected(PAYMENT_OUTAGE)));
            }
            if let PaymentRequest::Charge { order_id, .. } = &request {
                let rate = flags.float(PAYMENT_FAILURE_RATE, order_id, 0.0).await;
                if trellis_flags::bucket(PAYMENT_FAILURE_RATE, order_id) < rate * 100.0 {
                    return Ok(PaymentReply::Declined {
                        reason: format!("{INJECTED_CHARGE_FAILURE} (flag {PAYMENT_FAILURE_RATE})"),
                    });
                }
            }
            inner.oneshot(request).await
        }
    }))
}

/// `inner` behind [`INVENTORY_DOWN`] (every call fails) and
/// [`INVENTORY_LATENCY_MS`] (every call is delayed).
pub(crate) fn inventory(flags: Flags, inner: InventoryClient) -> InventoryClient {
    BoxCloneSyncService::new(tower::service_fn(move |request: InventoryRequest| {
        let (flags, inner) = (flags.clone(), inner.clone());
        async move {
            let target = match &request {
                InventoryRequest::Reserve { order_id, .. } => order_id.clone(),
                _ => String::new(),
            };
            let delay = flags.int(INVENTORY_LATENCY_MS, &target, 0).await;
            if let Ok(ms @ 1..) = u64::try_from(delay) {
                tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
            }
            if flags.bool(INVENTORY_DOWN, &target, false).await {
                return Err(BoxError::from(Injected(INVENTORY_DOWN)));
            }
            inner.oneshot(request).await
        }
    }))
}
