//! Inventory's business gauge: `ecommerce_stock_available{sku}`, the units
//! of each SKU on the shelf (neither reserved nor sold), read back from the
//! stock table after every change this process makes. Every replica
//! reports the shared table, so `max by (sku)` is the stock.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::AnyPool;

use super::Inventory;
use super::client::{InventoryReply, InventoryRequest};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SkuLabel {
    sku: String,
}

/// The stock gauges; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct StockMetrics {
    available: Family<SkuLabel, Gauge>,
    /// One read-and-set at a time, so an older read never overwrites a
    /// newer one.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

impl StockMetrics {
    /// Registers the gauges in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = StockMetrics {
            available: Family::default(),
            refreshing: Arc::default(),
        };
        registry.register(
            "ecommerce_stock_available",
            "Units of a SKU available (not reserved, not sold)",
            metrics.available.clone(),
        );
        metrics
    }

    /// Sets every SKU's gauge from the stock table (a handful of rows).
    pub(crate) async fn refresh(&self, pool: &AnyPool) {
        let _one = self.refreshing.lock().await;
        let rows: Result<Vec<(String, i64)>, sqlx::Error> =
            sqlx::query_as("SELECT sku, available FROM stock")
                .fetch_all(pool)
                .await;
        match rows {
            Ok(rows) => {
                for (sku, available) in rows {
                    self.available
                        .get_or_create(&SkuLabel { sku })
                        .set(available);
                }
            }
            Err(error) => tracing::warn!(%error, "reading stock for its gauges failed"),
        }
    }
}

impl Inventory {
    /// Reports stock levels to `stock` from now on.
    pub(crate) async fn with_stock_metrics(mut self, stock: StockMetrics) -> Self {
        stock.refresh(&self.pool).await;
        self.stock = Some(stock);
        self
    }

    /// Answers `request`, then refreshes the stock gauges.
    pub(crate) async fn call(
        &self,
        request: InventoryRequest,
    ) -> Result<InventoryReply, sqlx::Error> {
        let reply = self.apply(request).await?;
        if let Some(stock) = &self.stock {
            stock.refresh(&self.pool).await;
        }
        Ok(reply)
    }
}
