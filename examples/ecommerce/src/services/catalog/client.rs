//! Catalog's client: where orders gets prices, in process or over HTTP
//! (cached briefly).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use trellis_cqrs::BoxError;

use super::{Catalog, Product};
use crate::api::ApiError;
use crate::platform::transport::{Transport, send, unexpected};
use crate::services::identity::client::ServiceToken;

/// The schema of a SKU a request names: one of the catalog's (its seed,
/// the only products there are), so a document states which are accepted.
pub(crate) fn sku_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(super::SEED.iter().map(|(sku, ..)| *sku)))
        .description(Some("One of the catalog's SKUs (`GET /products`)"))
        .build()
}

/// Where orders looks prices up: the catalog in this process, or the
/// catalog service over HTTP (distributed mode).
#[derive(Debug)]
pub(crate) enum Prices {
    Local(Catalog),
    Remote(CatalogClient),
}

impl Prices {
    pub(crate) async fn get(&self, sku: &str) -> Result<Option<Product>, crate::api::ApiError> {
        match self {
            Prices::Local(catalog) => Ok(catalog.get(sku).await?),
            Prices::Remote(client) => client.get(sku).await.map_err(ApiError::internal),
        }
    }
}

/// Catalog prices over HTTP, cached briefly: orders looks up every line
/// of every order, and prices change rarely.
#[derive(Debug)]
pub(crate) struct CatalogClient {
    transport: Transport,
    base: String,
    token: ServiceToken,
    cache: Mutex<std::collections::HashMap<String, (Option<Product>, Instant)>>,
}

/// How long a looked-up price is reused.
const PRICE_TTL: Duration = Duration::from_secs(5);

/// Most SKUs cached (the map is cleared when full).
const PRICE_CACHE_MAX: usize = 10_000;

impl CatalogClient {
    pub(crate) fn new(transport: Transport, base: String, token: ServiceToken) -> Self {
        CatalogClient {
            transport,
            base,
            token,
            cache: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Every product, ordered by SKU (the storefront page in distributed
    /// mode; not cached: the page shows what the catalog holds now).
    pub(crate) async fn list(&self) -> Result<Vec<Product>, BoxError> {
        let bearer = self.token.get().await?;
        let response = send(
            &self.transport,
            Method::GET,
            format!("{}/api/v1/products", self.base),
            Some(&bearer),
            None,
            None,
        )
        .await?;
        match response.status() {
            StatusCode::OK => Ok(serde_json::from_slice(response.body())?),
            _ => Err(unexpected("catalog", &response)),
        }
    }

    pub(crate) async fn get(&self, sku: &str) -> Result<Option<Product>, BoxError> {
        if let Some((product, at)) = self.cache.lock().expect("cache lock").get(sku)
            && at.elapsed() < PRICE_TTL
        {
            return Ok(product.clone());
        }
        if sku.is_empty() || !sku.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Ok(None);
        }
        let bearer = self.token.get().await?;
        let response = send(
            &self.transport,
            Method::GET,
            format!("{}/api/v1/products/{sku}", self.base),
            Some(&bearer),
            None,
            None,
        )
        .await?;
        let product = match response.status() {
            StatusCode::OK => Some(serde_json::from_slice::<Product>(response.body())?),
            StatusCode::NOT_FOUND => None,
            _ => return Err(unexpected("catalog", &response)),
        };
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= PRICE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(sku.to_owned(), (product.clone(), Instant::now()));
        Ok(product)
    }
}
