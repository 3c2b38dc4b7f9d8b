//! The console's progressive-delivery pages (issue #16): `/ops/flags`
//! lists this process's feature flags and switches their default variant
//! or state; `/ops/rollout` shows the orders rollout's strategy (canary
//! or blue-green), phase and weight, both
//! versions' numbers over the analysis interval and the decision log, with
//! pause, resume, promote and abort. Public HTML like `/ops`; the data
//! comes from the admin API (`/api/v1/admin/flags`, and
//! `/api/v1/admin/rollout` of the gateway or of a one-process run with a
//! second orders version) with the operator's token, through
//! `assets/delivery.js`.

use maud::{Markup, html};

use super::pages::layout;

/// `/ops/flags`.
pub(crate) async fn flags() -> Markup {
    layout(
        "Feature flags",
        "ops-flags",
        html! {
            h1 { "Feature flags" }
            p { a href="/ops" { "Operations console" } " · " a href="/ops/rollout" { "Canary rollout" } }
            p #flags-meta .note {}
            p #delivery-msg .msg role="status" aria-live="polite" {}
            table.panel {
                thead { tr { th { "Flag" } th { "What" } th { "Default variant" } th { "State" } th { "Rules" } th {} } }
                tbody #flags-rows {}
            }
            script src="/assets/delivery.js" defer {}
            noscript { p.note { "This page needs JavaScript: it reads the admin API with your token." } }
        },
    )
}

/// `/ops/rollout`.
pub(crate) async fn rollout() -> Markup {
    layout(
        "Rollout",
        "ops-rollout",
        html! {
            h1 { "Rollout (orders): " span #ro-strategy { "–" } }
            p { a href="/ops" { "Operations console" } " · " a href="/ops/flags" { "Feature flags" } }
            p #delivery-msg .msg role="status" aria-live="polite" {}
            section.panel aria-labelledby="ro-h" {
                h2 #ro-h { "Phase " span #ro-phase { "–" } ", canary weight " span #ro-weight { "–" } }
                progress #ro-bar max="100" value="0" aria-labelledby="ro-h" {}
                p #ro-steps .note {}
                div.row {
                    button #ro-pause type="button" { "Pause" }
                    button #ro-resume .secondary type="button" { "Resume" }
                    button #ro-promote type="button" { "Promote" }
                    button #ro-abort .secondary type="button" { "Abort (roll back)" }
                }
            }
            section.panel aria-labelledby="ro-v" {
                h2 #ro-v { "Last interval, per version" }
                table {
                    thead { tr { th { "Version" } th { "Requests" } th { "Errors" } th { "Success" } th { "p99" } } }
                    tbody #ro-versions {}
                }
            }
            section.panel aria-labelledby="ro-l" {
                h2 #ro-l { "Decision log (newest first)" }
                ol #ro-log .log {}
            }
            script src="/assets/delivery.js" defer {}
            noscript { p.note { "This page needs JavaScript: it reads the admin API with your token." } }
        },
    )
}

/// The pages' script.
pub(crate) async fn script() -> impl axum::response::IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/delivery.js"),
    )
}
