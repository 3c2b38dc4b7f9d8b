//! Catalog: the products and their prices.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use sqlx::SqlitePool;

use crate::error::{ApiError, Error};

/// A product as the catalog lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Product {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) price_cents: i64,
}

impl From<(String, String, i64)> for Product {
    fn from((sku, name, price_cents): (String, String, i64)) -> Self {
        Product {
            sku,
            name,
            price_cents,
        }
    }
}

/// The seed catalog: (sku, name, price in cents, initial stock).
pub(crate) const SEED: &[(&str, &str, i64, i64)] = &[
    ("TEA-001", "Sencha green tea, 100 g", 1250, 100),
    ("MUG-002", "Stoneware mug", 1800, 50),
    ("KET-003", "Gooseneck kettle", 6400, 10),
    ("BIS-004", "Oat biscuits", 450, 200),
];

#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pool: SqlitePool,
}

impl Catalog {
    pub(crate) async fn open(pool: SqlitePool) -> Result<Self, Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        for (sku, name, price, _) in SEED {
            sqlx::query("INSERT INTO products (sku, name, price_cents) VALUES (?, ?, ?) ON CONFLICT (sku) DO NOTHING")
                .bind(sku)
                .bind(name)
                .bind(price)
                .execute(&pool)
                .await?;
        }
        Ok(Catalog { pool })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn get(&self, sku: &str) -> Result<Option<Product>, sqlx::Error> {
        let row: Option<(String, String, i64)> =
            sqlx::query_as("SELECT sku, name, price_cents FROM products WHERE sku = ?")
                .bind(sku)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Product::from))
    }
}

/// The catalog, ordered by SKU.
#[utoipa::path(
    get,
    path = "/api/v1/products",
    tag = "catalog",
    operation_id = "list_products",
    security(("bearer" = ["catalog:read"])),
    responses(
        (status = 200, description = "Every product, ordered by SKU", body = [Product]),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn list(
    State(app): State<crate::app::AppState>,
) -> Result<Json<Vec<Product>>, ApiError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT sku, name, price_cents FROM products ORDER BY sku")
            .fetch_all(app.catalog.pool())
            .await?;
    Ok(Json(rows.into_iter().map(Product::from).collect()))
}
