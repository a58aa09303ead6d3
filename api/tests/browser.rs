//! The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven over
//! WebDriver with fantoccini): sign in, then watch the order table, an order's timeline (with a
//! lost If-Match race marked and its winner named) and the partitions panel change live while
//! orders and conflicting commands arrive through the API. Screenshots of every panel are saved
//! under `target/dashboard-screenshots/` (the README's pictures come from there).

mod common;

use common::{Options, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long any one thing may take to appear on the page.
const PATIENCE: Duration = Duration::from_secs(20);

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the browser test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver; deploy/run-tests.sh installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver answered within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, url }
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--disable-dev-shm-usage", "--window-size=1440,1000"],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the element at `css` exists and its text satisfies `ok`; returns the text.
async fn text_until(browser: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::from("<absent>");
    while Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never showed the expected text; last: {last:?}");
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

fn item(sku: &str) -> Value {
    json!({"type": "add_item", "sku": sku, "quantity": 1, "unit_price_cents": 250})
}

#[tokio::test]
async fn the_dashboard_shows_orders_conflicts_and_partitions_change_live_in_a_real_browser() {
    let app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Sign in with the admin key.
    browser.goto(&app.url("/")).await.unwrap();
    browser
        .find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(&app.admin_key)
        .await
        .unwrap();
    click(&browser, "#sign-in-form button").await;
    text_until(&browser, "#feed-state", |t| t == "live").await;

    // Orders: a new order appears without a reload, and its row follows its version.
    let order = app.create_order(json!([])).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let row = format!("#orders-table tr[data-order=\"{order}\"]");
    text_until(&browser, &row, |t| {
        t.contains("pending") && t.contains("test-client")
    })
    .await;
    let winner = app.send(&order, item("WIDGET"), Some(1)).await;
    let winner_id = winner["command_id"].as_str().unwrap().to_owned();
    app.wait_final(&winner_id).await;
    text_until(&browser, &format!("{row} td:nth-child(4)"), |t| t == "2").await;
    app.set_stock("WIDGET", 2).await;
    for _ in 0..3 {
        let other = app
            .new_order(json!([{"sku": "WIDGET", "quantity": 1, "unit_price_cents": 250}]))
            .await;
        app.run(&other, json!({"type": "reserve"}), None).await;
    }
    screenshot(&browser, "orders").await;

    // Timeline: open it, then lose an If-Match race while it is open; the conflict appears live,
    // marked, with the command that won.
    click(&browser, &format!("{row} a")).await;
    text_until(&browser, "#timeline-title", |t| {
        t.contains(&order) && t.contains("version 2")
    })
    .await;
    let loser = app.send(&order, item("GADGET"), Some(1)).await;
    let loser_id = loser["command_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.wait_final(&loser_id).await["reason"],
        "version_conflict"
    );
    let marked = format!(".journey.conflict[data-command=\"{loser_id}\"]");
    let note = text_until(&browser, &marked, |t| t.contains("version_conflict")).await;
    assert!(note.contains("expected version 1, found 2"), "{note}");
    let winner_link = browser
        .find(Locator::Css(&format!("{marked} a.winner")))
        .await
        .unwrap();
    assert_eq!(
        winner_link.attr("title").await.unwrap().as_deref(),
        Some(winner_id.as_str())
    );
    screenshot(&browser, "timeline").await;

    // Partitions: the panel fills from the live feed; traffic shows the active worker.
    click(&browser, "nav a[data-tab=\"partitions\"]").await;
    let partitions = app.topology.partitions as usize;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = browser
            .find_all(Locator::Css("#partitions-table tbody tr"))
            .await
            .unwrap();
        if rows.len() == partitions {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} partition rows, not {partitions}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let partition = orderflow_shared::partition::partition_of(
        orderflow_shared::domain::OrderId(order.parse().unwrap()),
        app.topology.partitions,
    );
    app.run(&order, json!({"type": "cancel"}), None).await;
    let active = format!("#partitions-table tr[data-partition=\"{partition}\"] td.active-worker");
    text_until(&browser, &active, |t| !t.is_empty() && t != "–").await;
    screenshot(&browser, "partitions").await;

    // Contention and throughput: the figures of the last minute show the race that was lost.
    click(&browser, "nav a[data-tab=\"contention\"]").await;
    text_until(&browser, "#hot-orders tbody", |t| {
        t.contains(&order[order.len() - 8..])
    })
    .await;
    // Two of the three reserves got the last units of WIDGET; one lost.
    text_until(&browser, "#hot-skus tbody", |t| {
        t.contains("WIDGET\t3\t1") || t.contains("WIDGET 3 1")
    })
    .await;
    screenshot(&browser, "contention").await;
    click(&browser, "nav a[data-tab=\"throughput\"]").await;
    text_until(&browser, "#chart-rates", |t| t.contains("applied/s")).await;
    screenshot(&browser, "throughput").await;

    browser.close().await.unwrap();
}
