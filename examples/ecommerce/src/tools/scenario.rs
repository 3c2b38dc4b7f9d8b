//! The narrated scenario the binary runs against itself over HTTP.

use http::{Method, StatusCode};
use serde_json::json;

use crate::api::Error;
use crate::services::payments::DECLINED_CARD;
use crate::tools::client::{ApiClient, ApiResponse};

/// A card the fake provider accepts.
pub const GOOD_CARD: &str = "4242424242424242";

/// What the scenario did: the ids of its three orders, for assertions.
#[derive(Debug, Clone)]
pub struct ScenarioOutcome {
    /// The customer's id.
    pub customer: String,
    /// The customer's token (scopes: catalog:read orders:read orders:write).
    pub token: String,
    /// The order that completed (CONFIRMED).
    pub confirmed: String,
    /// The order whose payment was declined (REJECTED, compensated).
    pub declined: String,
    /// The order accepted while inventory's breaker was open (then validated
    /// once the breaker closed).
    pub pending: String,
    /// The status `pending` was accepted with (PENDING_VALIDATION).
    pub pending_status: String,
}

fn expect(response: &ApiResponse, status: StatusCode, what: &str) -> Result<(), Error> {
    if response.status == status {
        Ok(())
    } else {
        Err(Error::Scenario(format!(
            "{what}: expected {status}, got {} {}",
            response.status, response.body
        )))
    }
}

fn field<'a>(value: &'a serde_json::Value, name: &str) -> Result<&'a str, Error> {
    value[name]
        .as_str()
        .ok_or_else(|| Error::Scenario(format!("response lacks {name}: {value}")))
}

/// Runs the scenario against `base_url`, narrating through `say`.
pub async fn run(
    base_url: &str,
    ops_token: &str,
    mut say: impl FnMut(String),
) -> Result<ScenarioOutcome, Error> {
    let api = ApiClient::new(base_url);
    let email = format!(
        "ada+{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let credentials = json!({ "email": email, "password": "correct horse battery" });

    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(credentials.clone()),
        )
        .await?;
    expect(&r, StatusCode::CREATED, "register")?;
    let customer = field(&r.body, "id")?.to_owned();
    say(format!("1. registered {email} (user {customer})"));

    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/login",
            None,
            Some(credentials),
        )
        .await?;
    expect(&r, StatusCode::OK, "login")?;
    let token = field(&r.body, "access_token")?.to_owned();
    say(format!(
        "2. logged in: an EdDSA JWT with scopes \"{}\"",
        field(&r.body, "scope")?
    ));

    let r = api
        .json(Method::GET, "/api/v1/products", Some(&token), None)
        .await?;
    expect(&r, StatusCode::OK, "browse")?;
    let names: Vec<String> = r
        .body
        .as_array()
        .map(|products| {
            products
                .iter()
                .map(|p| {
                    format!(
                        "{} ({} cents)",
                        p["sku"].as_str().unwrap_or("?"),
                        p["price_cents"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    say(format!("3. browsed the catalog: {}", names.join(", ")));

    let place = |card: &str| json!({ "lines": [ { "sku": "TEA-001", "quantity": 2 }, { "sku": "MUG-002", "quantity": 1 } ], "card": card });

    let r = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            Some(place(GOOD_CARD)),
        )
        .await?;
    expect(&r, StatusCode::CREATED, "place order")?;
    let confirmed = field(&r.body, "order_id")?.to_owned();
    say(format!(
        "4. placed order {confirmed}: reserve inventory ▸ charge payment ▸ confirm reservation ▸ confirm order → {} ({} cents)",
        field(&r.body, "status")?,
        r.body["total_cents"]
    ));

    let r = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            Some(place(DECLINED_CARD)),
        )
        .await?;
    expect(&r, StatusCode::CREATED, "place declined order")?;
    let declined = field(&r.body, "order_id")?.to_owned();
    say(format!(
        "5. placed order {declined} with card {DECLINED_CARD}: payment declined (\"{}\"), reservation released, order {}",
        r.body["saga"]["error"].as_str().unwrap_or("?"),
        field(&r.body, "status")?,
    ));

    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(ops_token),
            Some(json!({ "open": true })),
        )
        .await?;
    expect(&r, StatusCode::OK, "open breaker")?;
    say(format!(
        "6. operator forced inventory's circuit breaker open (state {})",
        r.body["state"]
    ));
    let placed = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            Some(place(GOOD_CARD)),
        )
        .await;
    // Close the breaker again whatever happened to the order.
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(ops_token),
            Some(json!({ "open": false })),
        )
        .await?;
    expect(&r, StatusCode::OK, "close breaker")?;
    let placed = placed?;
    expect(&placed, StatusCode::CREATED, "place order in degraded mode")?;
    let pending_status = field(&placed.body, "status")?.to_owned();
    let pending = field(&placed.body, "order_id")?.to_owned();
    say(format!(
        "7. placed order {pending} while inventory was unreachable: the fallback accepted it as {}, nothing reserved or charged",
        pending_status
    ));
    let validated: Vec<String> = r.body["validated"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|o| {
                    format!(
                        "{} → {}",
                        o["order_id"].as_str().unwrap_or("?"),
                        o["status"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    say(format!(
        "8. breaker closed again (state {}); pending orders validated through the saga: {}",
        r.body["state"],
        validated.join(", ")
    ));

    let r = api
        .json(Method::GET, "/api/v1/orders", Some(&token), None)
        .await?;
    expect(&r, StatusCode::OK, "list orders")?;
    let summary: Vec<String> = r
        .body
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|o| {
                    format!(
                        "{}…={}",
                        &o["order_id"].as_str().unwrap_or("?")[..8],
                        o["status"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    say(format!(
        "9. the order-summary read model (read-your-writes) lists: {}",
        summary.join(", ")
    ));

    Ok(ScenarioOutcome {
        customer,
        token,
        confirmed,
        declined,
        pending,
        pending_status,
    })
}
