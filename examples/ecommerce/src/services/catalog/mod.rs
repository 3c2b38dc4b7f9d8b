//! Catalog: the products and their prices.

pub(crate) mod client;

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::api::{ApiError, Error};

/// A product as the catalog lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

/// The catalog on its database, its products also held in memory: a
/// price lookup (one per order line) reads no database. Nothing in the
/// system changes products after the seed, which reloads the copy; an
/// edit made to the table from outside (an operator's SQL, another
/// replica) is seen within [`PRODUCTS_TTL`], as the remote client's cache
/// sees it.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pool: AnyPool,
    products: Arc<RwLock<Products>>,
}

/// The products in memory and when they were read.
#[derive(Debug)]
struct Products {
    by_sku: HashMap<String, Product>,
    read_at: Instant,
}

/// How long the in-memory products answer before they are read again.
const PRODUCTS_TTL: Duration = Duration::from_secs(5);

impl Catalog {
    pub(crate) async fn open(pool: AnyPool) -> Result<Self, Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        for (sku, name, price, _) in SEED {
            sqlx::query("INSERT INTO products (sku, name, price_cents) VALUES ($1, $2, $3) ON CONFLICT (sku) DO NOTHING")
                .bind(sku)
                .bind(name)
                .bind(price)
                .execute(&pool)
                .await?;
        }
        // Read after the seed: the copy holds what was just written.
        let products = Arc::new(RwLock::new(read_products(&pool).await?));
        Ok(Catalog { pool, products })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The product `sku`, from memory (read again once older than
    /// [`PRODUCTS_TTL`]).
    pub(crate) async fn get(&self, sku: &str) -> Result<Option<Product>, sqlx::Error> {
        {
            let products = self.products.read().unwrap_or_else(|e| e.into_inner());
            if products.read_at.elapsed() < PRODUCTS_TTL {
                return Ok(products.by_sku.get(sku).cloned());
            }
        }
        let fresh = read_products(&self.pool).await?;
        let product = fresh.by_sku.get(sku).cloned();
        *self.products.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(product)
    }
}

/// Every product, read now.
async fn read_products(pool: &AnyPool) -> Result<Products, sqlx::Error> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT sku, name, price_cents FROM products")
            .fetch_all(pool)
            .await?;
    Ok(Products {
        by_sku: rows
            .into_iter()
            .map(|row| (row.0.clone(), Product::from(row)))
            .collect(),
        read_at: Instant::now(),
    })
}

/// The catalog routes (relative to `/api/v1`), each behind its scope.
pub(crate) fn routes() -> crate::services::ApiRouter<Catalog> {
    use trellis_auth::RequireScopesLayer;
    use utoipa_axum::routes;
    crate::services::ApiRouter::default()
        .routes(routes!(list))
        .routes(routes!(one))
        .route_layer(RequireScopesLayer::all(["catalog:read"]))
}

/// [`routes`] behind `validator`.
pub(crate) fn router(
    catalog: Catalog,
    validator: trellis_auth::Validator,
) -> crate::services::ApiRouter {
    routes()
        .layer(trellis_auth::JwtAuthLayer::new(validator))
        .with_state(catalog)
}

/// The catalog, ordered by SKU.
#[utoipa::path(
    get,
    path = "/products",
    tag = "catalog",
    operation_id = "list_products",
    security(("bearer" = ["catalog:read"])),
    responses(
        (status = 200, description = "Every product, ordered by SKU", body = [Product]),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn list(State(catalog): State<Catalog>) -> Result<Json<Vec<Product>>, ApiError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT sku, name, price_cents FROM products ORDER BY sku")
            .fetch_all(catalog.pool())
            .await?;
    Ok(Json(rows.into_iter().map(Product::from).collect()))
}

/// One product by SKU (orders looks prices up here in distributed mode).
#[utoipa::path(
    get,
    path = "/products/{sku}",
    tag = "catalog",
    operation_id = "get_product",
    params(("sku" = String, Path, description = "The product's SKU")),
    security(("bearer" = ["catalog:read"])),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "`not_found`: no product with this SKU", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn one(
    State(catalog): State<Catalog>,
    Path(sku): Path<String>,
) -> Result<Json<Product>, ApiError> {
    match catalog.get(&sku).await? {
        Some(product) => Ok(Json(product)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no product with sku {sku:?}"),
        )),
    }
}

/// Inventory's initial stock: (sku, units) of [`SEED`].
pub(crate) fn seed_stock() -> Vec<(&'static str, i64)> {
    SEED.iter().map(|(sku, _, _, n)| (*sku, *n)).collect()
}

/// Starts the catalog on `pool` (seeded when empty), its routes behind
/// `validator`, in either run mode.
///
/// # Errors
///
/// The products table cannot be created or seeded.
pub(crate) async fn start(
    pool: AnyPool,
    validator: trellis_auth::Validator,
) -> Result<crate::services::Started<Catalog>, Error> {
    let catalog = Catalog::open(pool).await?;
    Ok(crate::services::Started {
        router: router(catalog.clone(), validator),
        service: catalog,
        background: Vec::new(),
    })
}
