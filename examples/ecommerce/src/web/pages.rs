//! The HTML pages, server-rendered with maud. The storefront's catalog is
//! rendered here (browsing and search work without JavaScript); everything
//! a user does — sign in, order, watch an order, operate — is done by
//! `app.js` through the public JSON API with the user's own token.

use axum::extract::{Path, Query, State};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::WebState;
use crate::api::ApiError;
use crate::services::catalog::Product;
use crate::services::catalog::client::Prices;

/// `$12.50` from 1250.
pub(crate) fn money(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, (cents % 100).abs())
}

pub(super) fn layout(title: &str, page: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" class="no-js" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Trellis Tea" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body data-page=(page) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Trellis Tea" }
                    nav aria-label="Main" {
                        a href="/" aria-current=[(page == "shop").then_some("page")] { "Shop" }
                        a href="/orders" aria-current=[(page == "orders").then_some("page")] { "My orders" }
                        a href="/ops" aria-current=[(page == "ops").then_some("page")] { "Operations" }
                    }
                    div #session .js-only aria-live="polite" {}
                }
                main #main { (main) }
                footer.bottom {
                    p { "The Trellis reference system: every action on these pages goes through the public JSON API with your token." }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Search {
    #[serde(default)]
    q: String,
}

async fn search(app: &WebState, q: &str) -> Result<Vec<Product>, ApiError> {
    // The same public catalog `GET /api/v1/products` lists; read-only.
    let catalog = match &app.catalog {
        Prices::Local(catalog) => catalog,
        Prices::Remote(client) => {
            // Distributed mode: the catalog service's list, filtered here
            // like the query below (a few dozen products).
            let q = q.trim().to_lowercase();
            let mut products = client.list().await.map_err(ApiError::internal)?;
            products.retain(|p| {
                p.name.to_lowercase().contains(&q) || p.sku.to_lowercase().contains(&q)
            });
            products.sort_by(|a, b| a.sku.cmp(&b.sku));
            products.truncate(200);
            return Ok(products);
        }
    };
    let pattern = format!(
        "%{}%",
        q.trim()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    // `$1` and LOWER: the catalog is SQLite or PostgreSQL (sqlx Any).
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT sku, name, price_cents FROM products \
         WHERE LOWER(name) LIKE LOWER($1) ESCAPE '\\' OR LOWER(sku) LIKE LOWER($1) ESCAPE '\\' \
         ORDER BY sku LIMIT 200",
    )
    .bind(pattern)
    .fetch_all(catalog.pool())
    .await?;
    Ok(rows.into_iter().map(Product::from).collect())
}

/// `/`: the storefront.
pub(crate) async fn shop(
    State(app): State<WebState>,
    Query(Search { q }): Query<Search>,
) -> Result<Markup, ApiError> {
    let q: String = q.chars().take(100).collect();
    let products = search(&app, &q).await?;
    Ok(layout(
        "Shop",
        "shop",
        html! {
            div.shop {
                section.catalog aria-labelledby="catalog-h" {
                    h1 #catalog-h { "Catalog" }
                    form.search role="search" method="get" action="/" {
                        label for="q" { "Search the catalog" }
                        div.row {
                            input #q type="search" name="q" value=(q) placeholder="tea, mug…" maxlength="100";
                            button type="submit" { "Search" }
                        }
                    }
                    @if !q.is_empty() {
                        p.note { (products.len()) " result" @if products.len() != 1 { "s" } " for “" (q) "”. " a href="/" { "Show all" } }
                    }
                    @if products.is_empty() {
                        p.empty { "Nothing matches. " a href="/" { "Show the whole catalog" } }
                    }
                    ul.products {
                        @for p in &products {
                            li.product {
                                h2 { (p.name) }
                                p.sku { (p.sku) }
                                p.price { (money(p.price_cents)) }
                                button.add.js-only type="button" data-sku=(p.sku) data-name=(p.name) data-price=(p.price_cents) {
                                    "Add to cart" span.visually-hidden { ": " (p.name) }
                                }
                            }
                        }
                    }
                    noscript { p.note { "Browsing works without JavaScript; the cart and checkout need it." } }
                }
                aside.side.js-only {
                    section #account aria-labelledby="account-h" {
                        h2 #account-h { "Your account" }
                        form #login-form {
                            label for="email" { "Email" }
                            input #email type="email" name="email" autocomplete="username" required;
                            label for="password" { "Password (8 characters or more)" }
                            input #password type="password" name="password" autocomplete="current-password" minlength="8" required;
                            div.row {
                                button #login type="submit" { "Sign in" }
                                button #register type="button" class="secondary" { "Create account" }
                            }
                        }
                        p #signed-in hidden {}
                        p #account-msg .msg role="status" aria-live="polite" {}
                    }
                    section #cart aria-labelledby="cart-h" {
                        h2 #cart-h { "Cart" }
                        ul #cart-lines {}
                        p #cart-empty { "Your cart is empty." }
                        p.total { "Total " strong #cart-total { "$0.00" } }
                        form #checkout {
                            label for="card" { "Card number" }
                            input #card name="card" inputmode="numeric" autocomplete="cc-number" value="4242424242424242" pattern="[0-9]{12,19}" required;
                            button #place type="submit" { "Place order" }
                        }
                        p #cart-msg .msg role="status" aria-live="polite" {}
                    }
                    section #progress aria-labelledby="progress-h" hidden {
                        h2 #progress-h { "Placing your order" }
                        ol #progress-steps .steps {}
                    }
                }
            }
        },
    ))
}

fn tracker() -> Markup {
    html! {
        ol.tracker aria-label="Progress" {
            li data-milestone="reserved" { "Reserved" }
            li data-milestone="charged" { "Charged" }
            li data-milestone="confirmed" { "Confirmed" }
        }
    }
}

/// `/orders`: the customer's order history (from the read model, via the API).
pub(crate) async fn orders() -> Markup {
    layout(
        "My orders",
        "orders",
        html! {
            h1 { "My orders" }
            p #orders-msg .msg role="status" aria-live="polite" {}
            ul #history .history {}
            noscript { p.note { "Your orders load with JavaScript, through the API with your token." } }
        },
    )
}

/// `/orders/{id}`: one order and its saga, live.
pub(crate) async fn order(Path(id): Path<String>) -> Markup {
    let id: String = id.chars().take(80).collect();
    layout(
        "Order",
        "order",
        html! {
            h1 { "Order " span.id #order-id data-id=(id) { (id) } }
            p #order-status .status data-status="" role="status" aria-live="polite" { "Loading…" }
            (tracker())
            dl #order-facts .facts {}
            h2 { "Saga steps" }
            p.note { "Each step appears when the orchestrator has logged it." }
            ol #steps .steps {}
            p #order-msg .msg role="status" aria-live="polite" {}
            p { a href="/orders" { "All my orders" } " · " a href="/" { "Back to the shop" } }
        },
    )
}

/// `/ops`: the operations console. Public HTML; all data comes from the
/// admin endpoints, with the operator's token.
pub(crate) async fn ops() -> Markup {
    layout(
        "Operations",
        "ops",
        html! {
            h1 { "Operations console" }
            p { a href="/ops/flags" { "Feature flags" } " · " a href="/ops/rollout" { "Canary rollout" } }
            form #ops-login .panel {
                div #ops-ask {
                    label for="ops-token" { "Operator token (scope ops:admin, printed by " code { "cargo run -p ecommerce" } ")" }
                    input #ops-token type="password" name="token" autocomplete="off" required;
                    div.row { button type="submit" { "Open console" } }
                }
                div.row {
                    button #ops-logout .secondary type="button" hidden { "Forget token" }
                }
                p #ops-msg .msg role="status" aria-live="polite" {}
            }
            div #console hidden {
                section.panel aria-labelledby="traffic-h" {
                    h2 #traffic-h { "Traffic, last 5 minutes" }
                    p.legend {
                        span.key.k-rps { "requests/s" } " "
                        span.key.k-p50 { "p50" } " "
                        span.key.k-p99 { "p99" } " "
                        span #traffic-now {}
                    }
                    canvas #chart role="img" aria-label="Requests per second and p50/p99 latency over the last five minutes" {}
                }
                div.grid {
                    section.panel aria-labelledby="business-h" {
                        h2 #business-h { "Business" }
                        div #business {}
                    }
                    section.panel aria-labelledby="traces-h" {
                        h2 #traces-h { "Latest sagas and slow requests" }
                        div #traces {}
                    }
                    section.panel aria-labelledby="drills-h" {
                        h2 #drills-h { "Fault drills" }
                        fieldset {
                            legend { "Payments" }
                            label.switch { input #pay-down type="checkbox"; " Payment provider unreachable" }
                            label for="pay-fail" { "Payment failure rate: " output #pay-fail-out for="pay-fail" { "0%" } }
                            input #pay-fail type="range" min="0" max="100" step="5" value="0";
                        }
                        fieldset {
                            legend { "Inventory" }
                            label for="inv-latency" { "Inventory latency: " output #inv-latency-out for="inv-latency" { "0 ms" } }
                            input #inv-latency type="range" min="0" max="3000" step="100" value="0";
                            label for="inv-fail" { "Inventory failure rate: " output #inv-fail-out for="inv-fail" { "0%" } }
                            input #inv-fail type="range" min="0" max="100" step="5" value="0";
                        }
                        p #faults-now .note {}
                    }
                    section.panel aria-labelledby="breakers-h" {
                        h2 #breakers-h { "Circuit breakers" }
                        div #breakers {}
                        div.row {
                            button #inv-open type="button" { "Open inventory breaker" }
                            button #inv-close .secondary type="button" { "Close it, validate pending orders" }
                        }
                    }
                    section.panel aria-labelledby="health-h" {
                        h2 #health-h { "Health" }
                        div #health {}
                    }
                    section.panel aria-labelledby="limits-h" {
                        h2 #limits-h { "Bulkheads and rate limiters" }
                        div #bulkheads {}
                        div #limiters {}
                    }
                    section.panel aria-labelledby="proj-h" {
                        h2 #proj-h { "Projections" }
                        div #projections {}
                    }
                    section.panel aria-labelledby="sagas-h" {
                        h2 #sagas-h { "Sagas" }
                        p #saga-counts {}
                        div #saga-list {}
                    }
                }
                section.panel aria-labelledby="log-h" {
                    h2 #log-h { "Live events" }
                    ol #event-log .log aria-live="off" {}
                }
            }
            noscript { p.note { "The console needs JavaScript: it reads the admin API with your token." } }
        },
    )
}

/// The embedded script.
pub(crate) async fn script() -> impl axum::response::IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.js"),
    )
}

/// The embedded style sheet.
pub(crate) async fn style() -> impl axum::response::IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.css"),
    )
}
