//! The storefront and the operations console in a real browser: Debian's
//! headless Chromium driven through WebDriver (chromedriver, started here
//! on a free loopback port and killed on drop), against a system started
//! by each test on loopback.
//!
//! Without `chromium` and `chromedriver` on PATH every test prints
//! "skipped: chromium not installed" and passes. A failing test saves a
//! screenshot and prints its path. With `ECOMMERCE_SCREENSHOTS=1` the
//! tests also write the screenshots the docs show into
//! `examples/ecommerce/docs/`.

mod support;

use std::error::Error;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use http::Method;
use hyper_util::client::legacy::connect::HttpConnector;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a page gets to show what a test waits for.
const WAIT: Duration = Duration::from_secs(15);

/// The browser tests share two cores with everything else: one at a time.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// chromedriver, killed (and reaped) on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> TestResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_driver(chromedriver: &Path) -> TestResult<Driver> {
    let port = free_port()?;
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err("chromedriver did not start listening within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(driver)
}

async fn open_browser(driver: &Driver, chromium: &Path) -> TestResult<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--hide-scrollbars",
                "--window-size=1280,900",
            ],
        }),
    );
    Ok(ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await?)
}

/// Where a failure's screenshot goes.
fn failure_shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{name}-failure.png"))
}

/// Runs `body` with a fresh system and browser; on failure saves a
/// screenshot, prints its path and fails the test.
async fn with_browser<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Client, ecommerce::Running) -> Fut,
    Fut: Future<Output = (Client, ecommerce::Running, TestResult)>,
{
    let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver"))
    else {
        println!("skipped: chromium not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let (running, _dir) = support::start(&format!("browser-{name}")).await;
    let driver = start_driver(&chromedriver)
        .await
        .expect("chromedriver starts");
    let client = open_browser(&driver, &chromium)
        .await
        .expect("chromium session opens");
    let started = Instant::now();
    let (client, running, result) = body(client, running).await;
    if let Err(error) = &result {
        let path = failure_shot(name);
        match client.screenshot().await {
            Ok(png) if std::fs::write(&path, &png).is_ok() => {
                eprintln!("screenshot of the failure: {}", path.display())
            }
            _ => eprintln!("no screenshot could be taken"),
        }
        if let Ok(url) = client.current_url().await {
            eprintln!("page: {url}");
        }
        let _ = client.close().await;
        let _ = running.shutdown().await;
        panic!("{name} failed: {error}");
    }
    println!("{name}: {:?} in the browser", started.elapsed());
    client.close().await.expect("browser closes");
    running.shutdown().await.expect("system stops");
}

/// Runs the async test body and hands the client and system back with its
/// outcome (so the wrapper can screenshot a failure).
macro_rules! steps {
    ($client:ident, $running:ident, $body:block) => {
        |$client: Client, $running: ecommerce::Running| async move {
            let outcome: TestResult = async { $body }.await;
            ($client, $running, outcome)
        }
    };
}

fn css(selector: &str) -> Locator<'_> {
    Locator::Css(selector)
}

async fn wait_for(client: &Client, selector: &str) -> TestResult<Element> {
    client
        .wait()
        .at_most(WAIT)
        .for_element(css(selector))
        .await
        .map_err(|e| format!("waiting for `{selector}`: {e}").into())
}

async fn text_of(client: &Client, selector: &str) -> TestResult<String> {
    Ok(client.find(css(selector)).await?.text().await?)
}

/// Waits until `selector`'s text contains `needle`; the last text read is
/// the error otherwise.
async fn wait_for_text(client: &Client, selector: &str, needle: &str) -> TestResult<String> {
    let until = Instant::now() + WAIT;
    loop {
        let text = text_of(client, selector).await?;
        if text.contains(needle) {
            return Ok(text);
        }
        if Instant::now() >= until {
            return Err(format!("`{selector}` reads {text:?}, never {needle:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(client: &Client, selector: &str, value: &str) -> TestResult {
    let input = client.find(css(selector)).await?;
    input.clear().await?;
    input.send_keys(value).await?;
    Ok(())
}

async fn click(client: &Client, selector: &str) -> TestResult {
    client.find(css(selector)).await?.click().await?;
    Ok(())
}

fn shots_wanted() -> bool {
    std::env::var("ECOMMERCE_SCREENSHOTS").is_ok_and(|v| v == "1")
}

/// Saves a docs screenshot when asked to (ECOMMERCE_SCREENSHOTS=1), with
/// the window `width` × `height`; leaves the window `width` × 900.
async fn docs_shot(client: &Client, file: &str, width: u32, height: u32) -> TestResult {
    if !shots_wanted() {
        return Ok(());
    }
    client.set_window_size(width, height).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&dir)?;
    client.execute("window.scrollTo(0, 0)", vec![]).await?;
    let path = dir.join(file);
    std::fs::write(&path, client.screenshot().await?)?;
    println!("wrote {}", path.display());
    client.set_window_size(width, 900).await?;
    Ok(())
}

/// Docs mode only: 16 s of varied traffic, with a spell of inventory
/// latency, so the console's chart has something to show.
async fn docs_traffic(running: &ecommerce::Running) -> TestResult {
    if !shots_wanted() {
        return Ok(());
    }
    let api = ecommerce::ApiClient::new(running.base_url());
    let ops = running.ops_token()?;
    let token =
        running.token_with_scopes("load", &["catalog:read", "orders:read", "orders:write"])?;
    let inventory_latency = |on: bool| {
        serde_json::json!({
            "enabled": on, "latency_probability": 0.5, "latency": "150ms"
        })
    };
    let started = Instant::now();
    let mut slowed = false;
    while started.elapsed() < Duration::from_secs(16) {
        let s = started.elapsed().as_secs_f64();
        if slowed != (7.0..12.0).contains(&s) {
            slowed = !slowed;
            api.json(
                Method::POST,
                "/api/v1/admin/inventory/faults",
                Some(&ops),
                Some(inventory_latency(slowed)),
            )
            .await?;
        }
        let burst = 2 + (4.0 * (1.0 + (s / 2.0).sin())) as usize;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..burst {
            let (api, token) = (api.clone(), token.clone());
            calls.spawn(async move {
                api.json(Method::GET, "/api/v1/products", Some(&token), None)
                    .await
            });
        }
        let (api2, token2) = (api.clone(), token.clone());
        calls.spawn(async move {
            let order = serde_json::json!({
                "lines": [{ "sku": "BIS-004", "quantity": 1 }], "card": "4242424242424242"
            });
            api2.json(Method::POST, "/api/v1/orders", Some(&token2), Some(order))
                .await
        });
        while let Some(done) = calls.join_next().await {
            done??;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Registers a new customer through the storefront and leaves them signed in.
async fn register(client: &Client, base: &str, email: &str) -> TestResult {
    client.goto(&format!("{base}/")).await?;
    wait_for(client, "html:not(.no-js) #login-form").await?;
    fill(client, "#email", email).await?;
    fill(client, "#password", "correct horse battery").await?;
    click(client, "#register").await?;
    wait_for(client, "#whoami").await?;
    Ok(())
}

async fn add_to_cart(client: &Client, sku: &str) -> TestResult {
    click(client, &format!("button.add[data-sku='{sku}']")).await?;
    wait_for(client, &format!("#cart-lines li[data-sku='{sku}']")).await?;
    Ok(())
}

/// Places the cart and waits for the order page; returns the order id.
async fn place_and_follow(client: &Client) -> TestResult<String> {
    click(client, "#place").await?;
    let id = wait_for(client, "#order-id").await?;
    Ok(id.attr("data-id").await?.unwrap_or_default())
}

async fn open_console(client: &Client, base: &str, token: &str) -> TestResult {
    client.goto(&format!("{base}/ops")).await?;
    // Start from the token form, even if this tab remembers a token.
    client
        .execute("sessionStorage.removeItem('trellis.ops')", vec![])
        .await?;
    client.refresh().await?;
    wait_for(client, "html:not(.no-js) #ops-token").await?;
    fill(client, "#ops-token", token).await?;
    click(client, "#ops-login button[type='submit']").await?;
    wait_for(
        client,
        "#console:not([hidden]) #breakers [data-breaker='inventory']",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_registers_signs_in_orders_and_sees_it_confirmed() {
    with_browser(
        "order-confirmed",
        steps!(client, running, {
            let base = running.base_url();
            register(&client, &base, "ada@example.com").await?;
            // Sign out and in again: the login form, not just registration.
            click(&client, "#logout").await?;
            wait_for(&client, "#login-form:not([hidden])").await?;
            fill(&client, "#email", "ada@example.com").await?;
            fill(&client, "#password", "correct horse battery").await?;
            click(&client, "#login").await?;
            wait_for(&client, "#whoami").await?;

            add_to_cart(&client, "TEA-001").await?;
            add_to_cart(&client, "MUG-002").await?;
            click(
                &client,
                "#cart-lines li[data-sku='TEA-001'] button[aria-label^='One more']",
            )
            .await?;
            let total = text_of(&client, "#cart-total").await?;
            if total != "$43.00" {
                return Err(format!("cart total {total}, expected 2 × $12.50 + $18.00").into());
            }
            docs_shot(&client, "storefront.png", 1280, 860).await?;
            let stock_before = running.stock("TEA-001").await?;

            let order_id = place_and_follow(&client).await?;
            wait_for(&client, "#order-status[data-status='CONFIRMED']").await?;
            for milestone in ["reserved", "charged", "confirmed"] {
                wait_for(
                    &client,
                    &format!(".tracker [data-milestone='{milestone}'][data-state='done']"),
                )
                .await?;
            }
            // Every step of the saga, as the orchestrator logged it.
            for step in [
                "record-order",
                "reserve-inventory",
                "charge-payment",
                "confirm-order",
                "confirm-reservation",
            ] {
                wait_for(
                    &client,
                    &format!("#steps li[data-step='{step}'][data-state='succeeded']"),
                )
                .await?;
            }
            if running.stock("TEA-001").await? != stock_before - 2 {
                return Err("the page said confirmed but inventory did not move".into());
            }
            if running.net_charges(&order_id).await? != 1 {
                return Err("the page said confirmed but there is no charge".into());
            }
            docs_shot(&client, "order.png", 1280, 900).await?;

            // The order history, from the read model.
            client.goto(&format!("{base}/orders")).await?;
            let link = wait_for(&client, &format!("#history a[href='/orders/{order_id}']")).await?;
            if link.text().await? != order_id {
                return Err("the history does not list the order".into());
            }
            wait_for(&client, "#history .badge.CONFIRMED").await?;
            Ok(())
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_outage_switched_on_in_the_console_compensates_the_order() {
    with_browser(
        "payment-outage",
        steps!(client, running, {
            let base = running.base_url();
            open_console(&client, &base, &running.ops_token()?).await?;
            click(&client, "#pay-down").await?;
            wait_for(&client, "#event-log li").await?;
            let log = text_of(&client, "#event-log").await?;
            if !log.contains("drill updated") {
                return Err(format!("the drill was not confirmed: {log}").into());
            }

            register(&client, &base, "grace@example.com").await?;
            add_to_cart(&client, "KET-003").await?;
            let stock_before = running.stock("KET-003").await?;
            let order_id = place_and_follow(&client).await?;
            wait_for(&client, "#order-status[data-status='REJECTED']").await?;
            // The outage leaves the charge's outcome unknown to the saga:
            // it fails, then is undone by key like the steps before it
            // (nothing was charged, so the refund finds nothing).
            wait_for(
                &client,
                "#steps li[data-step='charge-payment'][data-state='compensated']",
            )
            .await?;
            wait_for(
                &client,
                "#steps li[data-step='reserve-inventory'][data-state='compensated']",
            )
            .await?;
            wait_for(
                &client,
                ".tracker [data-milestone='reserved'][data-state='undone']",
            )
            .await?;
            wait_for(
                &client,
                ".tracker [data-milestone='charged'][data-state='failed']",
            )
            .await?;
            wait_for(
                &client,
                ".tracker [data-milestone='confirmed'][data-state='failed']",
            )
            .await?;
            // Whether the provider took the charge is unknown until it
            // answers: the refund by key waits for the outage to end, and
            // the page says so meanwhile.
            wait_for_text(&client, "#order-status", "Compensating").await?;
            // The provider comes back (through the API, so the open order
            // page keeps following the saga live).
            let back = ecommerce::ApiClient::new(base.clone())
                .json(
                    Method::POST,
                    "/api/v1/admin/payments/faults",
                    Some(&running.ops_token()?),
                    Some(serde_json::json!({ "enabled": false })),
                )
                .await?;
            if !back.status.is_success() {
                return Err(format!("switching the outage off: {}", back.body).into());
            }
            wait_for_text(&client, "#order-status", "Compensated").await?;
            if running.stock("KET-003").await? != stock_before
                || running.net_charges(&order_id).await? != 0
            {
                return Err("compensated on the page, but stock or charges moved".into());
            }
            docs_shot(&client, "order-compensated.png", 1280, 900).await?;

            // The console shows the compensated saga and the payment
            // breaker's view of the outage.
            open_console(&client, &base, &running.ops_token()?).await?;
            wait_for(&client, "#saga-counts [data-count='compensated']").await?;
            let counts = text_of(&client, "#saga-counts").await?;
            if !counts.contains("Compensated 1") {
                return Err(format!("saga counts read {counts:?}").into());
            }
            Ok(())
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_opens_inventorys_breaker_and_an_order_page_follows_validation_live() {
    with_browser(
        "breaker",
        steps!(client, running, {
            let base = running.base_url();
            let ops = running.ops_token()?;
            docs_traffic(&running).await?;
            open_console(&client, &base, &ops).await?;
            wait_for(
                &client,
                "#breakers [data-breaker='inventory'][data-state='closed']",
            )
            .await?;
            click(&client, "#inv-open").await?;
            wait_for(
                &client,
                "#breakers [data-breaker='inventory'][data-state='forced_open']",
            )
            .await?;
            let badge = text_of(&client, "#breakers [data-breaker='inventory'] .badge").await?;
            if badge != "Forced open" {
                return Err(format!("breaker badge reads {badge:?}").into());
            }
            // The transition arrived as a server-sent event.
            let log = text_of(&client, "#event-log").await?;
            if !log.contains("inventory: closed → forced_open") {
                return Err(format!("no transition in the live log: {log}").into());
            }
            // Traffic so far shows on the chart's caption.
            wait_for(&client, "#traffic-now:not(:empty)").await?;
            docs_shot(&client, "console.png", 1280, 1400).await?;

            // An order placed meanwhile is accepted for later validation...
            register(&client, &base, "linus@example.com").await?;
            add_to_cart(&client, "BIS-004").await?;
            let order_id = place_and_follow(&client).await?;
            wait_for(&client, "#order-status[data-status='PENDING_VALIDATION']").await?;
            wait_for(
                &client,
                ".tracker [data-milestone='confirmed'][data-state='active']",
            )
            .await?;
            // ...and the open page turns confirmed, without a reload, when the
            // breaker closes and the validation saga runs.
            let closed = ecommerce::ApiClient::new(base.clone())
                .json(
                    Method::POST,
                    "/api/v1/admin/inventory/breaker",
                    Some(&ops),
                    Some(serde_json::json!({ "open": false })),
                )
                .await?;
            if closed.body["validated"][0]["order_id"] != order_id.as_str() {
                return Err(format!("closing validated {}", closed.body).into());
            }
            wait_for(&client, "#order-status[data-status='CONFIRMED']").await?;
            wait_for(
                &client,
                "#steps li[data-key$='/validate#1'][data-state='succeeded']",
            )
            .await?;
            Ok(())
        }),
    )
    .await;
}

/// JS: the page's width, its scroll width and the visible elements that
/// stick out left or right of the viewport (the skip link hides off-screen
/// on purpose until focused).
const LAYOUT_PROBE: &str = r#"
const width = window.innerWidth;
const scroll = document.scrollingElement.scrollWidth;
const off = [];
for (const e of document.querySelectorAll('body *')) {
  if (e.closest('.skip, .visually-hidden')) continue;
  const r = e.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) continue;
  const s = getComputedStyle(e);
  if (s.visibility === 'hidden' || s.display === 'none') continue;
  if (r.left < -1 || r.right > width + 1) {
    off.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' [' + Math.round(r.left) + ', ' + Math.round(r.right) + ']');
  }
}
return { width, scroll, off: off.slice(0, 12) };
"#;

/// JS: form controls without a label or accessible name.
const LABEL_PROBE: &str = r#"
const bad = [];
for (const e of document.querySelectorAll('input, select, textarea, button')) {
  const named = (e.labels && e.labels.length > 0) || e.getAttribute('aria-label')
    || (e.tagName === 'BUTTON' && e.textContent.trim() !== '');
  if (!named) bad.push(e.outerHTML.slice(0, 80));
}
return bad;
"#;

async fn check_layout(client: &Client, page: &str, width: u32) -> TestResult {
    let unlabelled = client.execute(LABEL_PROBE, vec![]).await?;
    if unlabelled.as_array().is_some_and(|bad| !bad.is_empty()) {
        return Err(format!("{page}: controls without a label: {unlabelled}").into());
    }
    let probe = client.execute(LAYOUT_PROBE, vec![]).await?;
    let inner = probe["width"].as_u64().unwrap_or(0);
    let scroll = probe["scroll"].as_u64().unwrap_or(u64::MAX);
    if inner == 0 || inner > u64::from(width) {
        return Err(format!("{page} at {width}px: viewport is {inner}px").into());
    }
    if scroll > inner {
        return Err(format!("{page} at {width}px scrolls sideways: {scroll}px > {inner}px").into());
    }
    if probe["off"].as_array().is_some_and(|off| !off.is_empty()) {
        return Err(format!("{page} at {width}px: elements off-screen: {}", probe["off"]).into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_fits_a_phone_and_a_desktop() {
    with_browser(
        "layout",
        steps!(client, running, {
            let base = running.base_url();
            register(&client, &base, "hopper@example.com").await?;
            add_to_cart(&client, "TEA-001").await?;
            let order_id = place_and_follow(&client).await?;
            wait_for(&client, "#order-status[data-status='CONFIRMED']").await?;
            let ops = running.ops_token()?;
            for width in [390, 1280] {
                client.set_window_size(width, 900).await?;
                for (page, path, ready) in [
                    ("storefront", "/".to_owned(), "html:not(.no-js) #cart-total"),
                    ("search", "/?q=tea".to_owned(), ".product"),
                    ("history", "/orders".to_owned(), "#history li"),
                    (
                        "order",
                        format!("/orders/{order_id}"),
                        "#order-status[data-status='CONFIRMED']",
                    ),
                ] {
                    client.goto(&format!("{base}{path}")).await?;
                    wait_for(&client, ready).await?;
                    if page == "storefront" {
                        // With a line in the cart, whose row is the widest.
                        add_to_cart(&client, "TEA-001").await?;
                        // The keyboard's first stop is the skip link, then
                        // the header's links: no focus trap before them.
                        client.refresh().await?;
                        wait_for(&client, "html:not(.no-js) #cart-lines li").await?;
                        client
                            .find(css("body"))
                            .await?
                            .send_keys("\u{E004}")
                            .await?;
                        let first = client.active_element().await?;
                        if first.attr("class").await?.as_deref() != Some("skip") {
                            return Err("Tab does not reach the skip link first".into());
                        }
                        first.send_keys("\u{E007}").await?;
                        let url = client.current_url().await?;
                        if url.fragment() != Some("main") {
                            return Err(format!("the skip link led to {url}").into());
                        }
                    }
                    check_layout(&client, page, width).await?;
                    if page == "storefront" && width == 390 {
                        docs_shot(&client, "storefront-phone.png", 390, 1300).await?;
                    }
                }
                open_console(&client, &base, &ops).await?;
                wait_for(&client, "#saga-counts [data-count='completed']").await?;
                check_layout(&client, "console", width).await?;
                if width == 390 {
                    docs_shot(&client, "console-phone.png", 390, 1600).await?;
                }
            }
            Ok(())
        }),
    )
    .await;
}
