//! The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven over
//! WebDriver with fantoccini): sign in, then watch the order table, an order's timeline (with a
//! lost If-Match race marked and its winner named) and the partitions panel change live while
//! orders and conflicting commands arrive through the API. Screenshots of every panel are saved
//! under `target/dashboard-screenshots/` (the README's pictures come from there).

mod common;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use orderflow_testkit::{Stack, wait_for};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
        wait_for("chromedriver to answer")
            .within(PATIENCE)
            .until(|| async { reqwest::get(format!("{url}/status")).await.is_ok() })
            .await;
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
    wait_for(format!("{css} to show the expected text"))
        .within(PATIENCE)
        .until(|| async {
            match browser.find(Locator::Css(css)).await {
                Ok(element) => match element.text().await {
                    Ok(text) if ok(&text) => Ok(text),
                    Ok(text) => Err(format!("{text:?}")),
                    Err(_) => Err("<absent>".to_owned()),
                },
                Err(_) => Err("<absent>".to_owned()),
            }
        })
        .await
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
    let app = common::stack().worker().start().await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Sign in as an admin operator.
    sign_in(&browser, &app).await;

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
    // Its details: none yet; a merge patch shows live, with the fields it changed.
    text_until(&browser, "#order-details dd[data-detail=\"note\"]", |t| {
        t == "–"
    })
    .await;
    let patched = app
        .run(
            &order,
            json!({"type": "update_details", "details": {"note": "ring twice",
                   "shipping_address": {"name": "Ada", "lines": ["1 Main St"], "city": "Oslo",
                                        "postal_code": "0150", "country": "NO"}}}),
            None,
        )
        .await;
    assert_eq!(patched["status"], "applied");
    text_until(&browser, "#order-details dd[data-detail=\"note\"]", |t| {
        t == "ring twice"
    })
    .await;
    text_until(
        &browser,
        "#order-details dd[data-detail=\"shipping address\"]",
        |t| t == "Ada · 1 Main St · 0150 Oslo · NO",
    )
    .await;
    text_until(&browser, "#events-table", |t| {
        t.contains("details_changed: shipping_address, note")
    })
    .await;
    screenshot(&browser, "timeline").await;

    // Partitions: the panel fills from the live feed; traffic shows the active worker.
    click(&browser, "nav a[data-tab=\"partitions\"]").await;
    let partitions = app.topology.partitions as usize;
    wait_for(format!("{partitions} partition rows"))
        .within(PATIENCE)
        .until(|| async {
            let rows = browser
                .find_all(Locator::Css("#partitions-table tbody tr"))
                .await
                .unwrap();
            if rows.len() == partitions {
                Ok(())
            } else {
                Err(format!("{} partition rows", rows.len()))
            }
        })
        .await;
    let partition = orderflow_contract::partition::partition_of(
        orderflow_domain::OrderId(order.parse().unwrap()),
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

/// Runs `script` (a function body) in the page and returns what it returns.
async fn js(browser: &Client, script: &str) -> Value {
    browser
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` returns true; panics with its last value otherwise.
async fn js_until(browser: &Client, script: &str, what: &str) {
    wait_for(format!("{what} (`{script}` to return true)"))
        .within(PATIENCE)
        .until(|| async {
            let value = browser.execute(script, vec![]).await;
            if matches!(value, Ok(Value::Bool(true))) {
                Ok(())
            } else {
                Err(format!("{value:?}"))
            }
        })
        .await;
}

/// Does the page scroll sideways? (The whole document wider than the window.)
async fn overflows_sideways(browser: &Client) -> Value {
    js(
        browser,
        "const d = document.documentElement;
         return d.scrollWidth > window.innerWidth ? `${d.scrollWidth} > ${window.innerWidth}` : false;",
    )
    .await
}

/// Signs in on the page as a new admin operator (`admin`, created on first use).
async fn sign_in(browser: &Client, app: &Stack) {
    sign_in_as(browser, app, "admin", "admin").await;
}

/// Creates an operator `name` with `role` and signs in as them on the page.
async fn sign_in_as(browser: &Client, app: &Stack, name: &str, role: &str) {
    let password = app.create_operator(name, role).await;
    browser.goto(&app.url("/")).await.unwrap();
    for (field, value) in [("#name", name), ("#password", password.as_str())] {
        browser
            .find(Locator::Css(field))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    click(browser, "#sign-in-form button").await;
    text_until(browser, "#feed-state", |t| t == "live").await;
    text_until(browser, "#who", |t| t == format!("{name} · {role}")).await;
}

/// Clicks a button that asks for confirmation, and confirms.
async fn click_and_confirm(browser: &Client, css: &str) {
    click(browser, css).await;
    wait_for(format!("{css} to ask for a confirmation"))
        .within(PATIENCE)
        .until(|| async { browser.accept_alert().await.is_ok() })
        .await;
}

fn cancel_message(app: &Stack, order: &str) -> String {
    json!({
        "version": 1, "command_id": uuid::Uuid::now_v7(), "client_id": app.client_id,
        "order_id": order, "command": {"type": "cancel"}
    })
    .to_string()
}

/// The WCAG contrast ratio of an element's text colour against its background, in the page.
const CONTRAST: &str = "
    const lum = (css) => {
      const [r, g, b] = css.match(/[\\d.]+/g).slice(0, 3).map((v) => {
        const c = Number(v) / 255;
        return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const style = getComputedStyle(arguments_element);
    const [a, b] = [lum(style.color), lum(style.backgroundColor)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);";

#[tokio::test]
async fn dead_letters_failures_and_journeys_read_right_in_a_real_browser() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let other = app.new_order(json!([])).await;
    let readable = common::insert_dead_letter(
        &app,
        Some(&order),
        "delivery limit reached",
        &cancel_message(&app, &order),
    )
    .await;
    let taken = common::insert_dead_letter(
        &app,
        Some(&other),
        "delivery limit reached",
        &cancel_message(&app, &other),
    )
    .await;
    let long_reason = format!(
        "the message is not a command: unknown variant `{}`, expected one of create, add_item",
        "refund".repeat(300)
    );
    let unreadable = common::insert_dead_letter(&app, None, &long_reason, "{not json").await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &app).await;
    click(&browser, "nav a[data-tab=\"partitions\"]").await;
    let row = |id: i64| format!("#dead-letters-table tr[data-dead-letter=\"{id}\"]");
    text_until(&browser, &row(unreadable), |t| {
        t.contains("unknown variant")
    })
    .await;
    text_until(&browser, "#dlq-depth", |t| t.contains("3 open")).await;
    text_until(&browser, "#alerts", |t| t.contains("dead letters")).await;

    // Redrive only where it can work; acknowledge everywhere open.
    let has = |css: String| {
        let browser = browser.clone();
        async move { browser.find(Locator::Css(&css)).await.is_ok() }
    };
    assert!(!has(format!("{} button.redrive", row(unreadable))).await);
    assert!(has(format!("{} button.acknowledge", row(unreadable))).await);
    assert!(has(format!("{} button.redrive", row(readable))).await);

    // A long reason wraps inside its cell; the page does not scroll sideways.
    let cell = browser
        .find(Locator::Css(&format!("{} td.reason", row(unreadable))))
        .await
        .unwrap();
    let fits = browser
        .execute(
            "const [c] = arguments; return c.scrollWidth <= c.clientWidth + 1 && c.getBoundingClientRect().right <= window.innerWidth;",
            vec![serde_json::to_value(&cell).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        Value::Bool(true),
        "the long reason overflows its cell"
    );
    assert_eq!(overflows_sideways(&browser).await, Value::Bool(false));
    screenshot(&browser, "dead-letters").await;

    // Another admin acknowledged `taken` meanwhile: redriving it fails, in a readable toast.
    let acknowledged = app
        .http
        .post(app.url(&format!("/dashboard/api/dead-letters/{taken}/acknowledge")))
        .bearer_auth(&app.admin_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(acknowledged.status(), 200);
    click_and_confirm(&browser, &format!("{} button.redrive", row(taken))).await;
    text_until(&browser, ".toast.error", |t| t.contains("redrive failed")).await;
    let toast = browser.find(Locator::Css(".toast.error")).await.unwrap();
    let contrast = browser
        .execute(
            &format!("const arguments_element = arguments[0]; {CONTRAST}"),
            vec![serde_json::to_value(&toast).unwrap()],
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(
        contrast >= 4.5,
        "the error toast's contrast is {contrast:.2}"
    );
    screenshot(&browser, "error-toast").await;

    // Redrive: the open count drops at once, and the command links back to its dead letter.
    click_and_confirm(&browser, &format!("{} button.redrive", row(readable))).await;
    text_until(&browser, "#dlq-depth", |t| t.contains("1 open")).await;
    let redriven_link = format!("{} a.redriven", row(readable));
    text_until(&browser, &redriven_link, |t| t.contains("redriven as")).await;
    // Acknowledge the unreadable one: nothing open, the banner clears.
    click(&browser, &format!("{} button.acknowledge", row(unreadable))).await;
    text_until(&browser, "#dlq-depth", |t| t.contains("0 open")).await;
    js_until(
        &browser,
        "return document.querySelector('#alerts .alert-dead_letters') === null;",
        "the dead-letter banner clears",
    )
    .await;

    click(&browser, &redriven_link).await;
    let command_id: String =
        sqlx::query_scalar::<_, uuid::Uuid>("select redriven_as from dead_letters where id = $1")
            .bind(readable)
            .fetch_one(&app.db)
            .await
            .unwrap()
            .to_string();
    let back = format!(".journey[data-command=\"{command_id}\"] a.dead-letter");
    text_until(&browser, &back, |t| t.contains(&format!("#{readable}"))).await;
    click(&browser, &back).await;
    js_until(
        &browser,
        &format!(
            "return !document.querySelector('#tab-partitions').hidden &&
               document.querySelector('#dead-letters-table tr[data-dead-letter=\"{readable}\"]')?.classList.contains('target') === true;"
        ),
        "the dead letter is shown",
    )
    .await;

    // A failed refresh turns the live indicator amber; the next good one turns it back.
    sqlx::query("alter table dead_letters rename to dead_letters_away")
        .execute(&app.db)
        .await
        .unwrap();
    click(&browser, "nav a[data-tab=\"partitions\"]").await;
    let amber = "const s = document.querySelector('#feed-state');
                 return s.classList.contains('stale') &&
                   getComputedStyle(s, '::before').color === 'rgb(240, 140, 0)';";
    js_until(&browser, amber, "the indicator turns amber").await;
    text_until(&browser, "#feed-state", |t| t.contains("refresh failed")).await;
    screenshot(&browser, "refresh-failed").await;
    sqlx::query("alter table dead_letters_away rename to dead_letters")
        .execute(&app.db)
        .await
        .unwrap();
    text_until(&browser, "#feed-state", |t| t == "live").await;

    // A command from a direct producer: received by the worker before it is recorded. No
    // stage of its journey may read negative.
    let direct = orderflow_domain::OrderId::new();
    let command_id = uuid::Uuid::now_v7();
    let message = json!({
        "version": 1, "command_id": command_id, "client_id": app.client_id,
        "order_id": direct.0, "command": {"type": "create", "customer_id": "direct",
        "currency": "EUR", "items": [{"sku": "D-1", "quantity": 1, "unit_price_cents": 100}]}
    });
    app.publish_raw(app.partition_of(direct), message.to_string().as_bytes())
        .await;
    app.wait_final(&command_id.to_string()).await;
    browser
        .goto(&app.url(&format!("/#timeline/{}", direct.0)))
        .await
        .unwrap();
    let stages = text_until(
        &browser,
        &format!(".journey[data-command=\"{command_id}\"] .stages"),
        |t| t.contains("ms"),
    )
    .await;
    assert!(
        !stages.contains("-"),
        "a negative duration on the timeline: {stages}"
    );
    // Read with retries: the live timeline re-renders, so a found element may go stale.
    let head = text_until(
        &browser,
        &format!(".journey[data-command=\"{command_id}\"] .journey-head"),
        |t| !t.is_empty(),
    )
    .await;
    assert!(!head.contains(" -"), "{head}");
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_viewer_sees_no_actions_and_a_forged_action_from_their_page_is_refused() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let letter = common::insert_dead_letter(
        &app,
        Some(&order),
        "delivery limit reached",
        &cancel_message(&app, &order),
    )
    .await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in_as(&browser, &app, "vera", "viewer").await;
    click(&browser, "nav a[data-tab=\"partitions\"]").await;
    let row = format!("#dead-letters-table tr[data-dead-letter=\"{letter}\"]");
    text_until(&browser, &row, |t| t.contains("an admin may redrive it")).await;
    let buttons = js(
        &browser,
        "return document.querySelectorAll('button.redrive, button.acknowledge').length;",
    )
    .await;
    assert_eq!(buttons, json!(0), "a viewer is offered no action");
    open_order(&browser, &app, &order).await;
    text_until(&browser, "#timeline-title", |t| t.contains("version 1")).await;
    assert_eq!(
        js(&browser, "return document.querySelector('#desk').hidden;").await,
        json!(true),
        "a viewer gets no edit form"
    );
    click(&browser, "nav a[data-tab=\"partitions\"]").await;
    assert_eq!(
        js(
            &browser,
            "return document.querySelector('#nav-operators').hidden;"
        )
        .await,
        json!(true),
        "only admins see the operators' screen"
    );

    // The same request the admin's button sends, forged from the viewer's own page (their
    // cookie and their CSRF token): the server refuses it, and nothing changes.
    let forged = js(
        &browser,
        &format!(
            "return fetch('/dashboard/api/dead-letters/{letter}/redrive', {{
               method: 'POST',
               headers: {{ 'content-type': 'application/json', 'x-csrf-token': me.csrf_token }},
               body: '{{}}',
             }}).then(async (r) => [r.status, (await r.json()).type]);"
        ),
    )
    .await;
    assert_eq!(
        forged,
        json!([403, "https://orderflow.dev/problems/role-required"])
    );
    let open: bool = sqlx::query_scalar(
        "select redriven_at is null and acknowledged_at is null from dead_letters where id = $1",
    )
    .bind(letter)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(open, "the dead letter is untouched");
    browser.close().await.unwrap();
}

#[tokio::test]
async fn an_admin_creates_and_disables_an_operator_on_the_page() {
    let app = common::stack().start().await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &app).await;
    click(&browser, "#nav-operators").await;
    text_until(
        &browser,
        "#operators-table tr[data-operator=\"admin\"]",
        |t| t.contains("you"),
    )
    .await;
    for (field, value) in [
        ("#op-name", "nina"),
        ("#op-password", "a long enough password"),
    ] {
        browser
            .find(Locator::Css(field))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    click(&browser, "#operator-form button").await;
    let row = "#operators-table tr[data-operator=\"nina\"]";
    text_until(&browser, row, |t| {
        t.contains("operator") && t.contains("live")
    })
    .await;
    // She signs in (elsewhere), and the admin disables her: her session ends.
    let session = app.sign_in("nina", "a long enough password").await;
    click_and_confirm(&browser, &format!("{row} button.disable")).await;
    text_until(&browser, row, |t| t.contains("disabled")).await;
    let after = app
        .as_signed_in(&session, reqwest::Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), reqwest::StatusCode::UNAUTHORIZED);
    screenshot(&browser, "operators").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_fits_a_narrow_window_backfills_its_charts_and_shows_what_it_does_not_know() {
    let app = common::stack().worker().start().await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &app).await;

    // Nothing finished yet: the conflict rate is unknown, not 0 %.
    js_until(
        &browser,
        "return series.t.length >= 2;",
        "two statistics frames",
    )
    .await;
    // (The contention tab is hidden: its text is read from the DOM.)
    assert_eq!(
        js(
            &browser,
            "return document.querySelector('#c-rate').textContent;"
        )
        .await,
        "–"
    );
    // The icon is the API's own, and nothing comes from another origin.
    js_until(
        &browser,
        "const link = document.querySelector('link[rel~=\"icon\"]');
         return link !== null && new URL(link.href).origin === location.origin;",
        "a same-origin icon",
    )
    .await;
    let icon = js(
        &browser,
        "return fetch(document.querySelector('link[rel~=\"icon\"]').href)
           .then((r) => `${r.status} ${r.headers.get('content-type')}`);",
    )
    .await;
    assert!(
        icon.as_str().is_some_and(|s| s.starts_with("200 image/")),
        "{icon}"
    );
    assert_eq!(
        js(
            &browser,
            "return performance.getEntriesByType('resource').filter((e) => !e.name.startsWith(location.origin)).map((e) => e.name);",
        )
        .await,
        json!([])
    );

    // Traffic: the rate becomes known.
    let order = app.new_order(json!([])).await;
    js_until(
        &browser,
        "return document.querySelector('#c-rate').textContent.includes('%');",
        "a conflict rate",
    )
    .await;

    // The charts' five minutes come from the server when the page opens.
    js_until(
        &browser,
        "return series.t.length >= 4;",
        "four statistics frames",
    )
    .await;
    // A new document (not only a new fragment): the page opens again.
    browser.goto(&app.url("/?again#throughput")).await.unwrap();
    js_until(
        &browser,
        "return typeof series !== 'undefined' && series.t.length > 0;",
        "chart data",
    )
    .await;
    let backfilled = js(
        &browser,
        "return series.t[0] < performance.timeOrigin / 1000 - 2 && series.applied.some((v) => v > 0);",
    )
    .await;
    assert_eq!(
        backfilled,
        Value::Bool(true),
        "the charts start empty on opening the page"
    );

    // A narrow window: the navigation and every panel fit, nothing scrolls sideways.
    browser.set_window_size(400, 900).await.unwrap();
    let width = js(&browser, "return window.innerWidth;").await;
    assert!(width.as_u64().is_some_and(|w| w <= 420), "window {width}");
    for tab in [
        "orders",
        "timeline",
        "partitions",
        "contention",
        "throughput",
    ] {
        click(&browser, &format!("nav a[data-tab=\"{tab}\"]")).await;
        js_until(
            &browser,
            &format!("return !document.querySelector('#tab-{tab}').hidden;"),
            tab,
        )
        .await;
        if tab == "timeline" {
            open_order(&browser, &app, &order).await;
            text_until(&browser, "#timeline-title", |t| t.contains(&order)).await;
        }
        assert_eq!(
            overflows_sideways(&browser).await,
            Value::Bool(false),
            "the {tab} tab scrolls sideways at 400 px"
        );
        let nav_fits = js(
            &browser,
            "return [...document.querySelectorAll('header nav a, #sign-out, #feed-state')].every((e) => {
               const r = e.getBoundingClientRect(); return r.left >= 0 && r.right <= window.innerWidth; });",
        )
        .await;
        assert_eq!(
            nav_fits,
            Value::Bool(true),
            "the navigation is cut off ({tab})"
        );
    }
    screenshot(&browser, "narrow").await;
    browser.close().await.unwrap();
}

/// Opens the order's timeline (and desk) at `#timeline/<order>` in `browser`.
async fn open_order(browser: &Client, app: &Stack, order: &str) {
    browser
        .goto(&app.url(&format!("/#timeline/{order}")))
        .await
        .unwrap();
}

/// Replaces the text of the form field at `css` as a person typing would (an `input` event).
async fn type_into(browser: &Client, css: &str, text: &str) {
    let element = browser.find(Locator::Css(css)).await.unwrap();
    element.clear().await.unwrap();
    element.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn two_operators_edit_one_address_and_the_second_sees_the_conflict_and_applies_theirs_on_top()
{
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let oslo = json!({"name": "Ada Lovelace", "lines": ["1 Main St"], "city": "Oslo",
                      "postal_code": "0150", "country": "NO"});
    let set = app
        .run(
            &order,
            json!({"type": "set_shipping_address", "address": oslo}),
            None,
        )
        .await;
    assert_eq!(set["version"], 2, "{set}");
    let driver = Driver::start().await;
    let (ann, ben) = (driver.browser().await, driver.browser().await);
    sign_in_as(&ann, &app, "ann", "operator").await;
    sign_in_as(&ben, &app, "ben", "operator").await;
    for browser in [&ann, &ben] {
        open_order(browser, &app, &order).await;
        text_until(browser, "#desk-base", |t| t.contains("version 2")).await;
        let city = js(
            browser,
            "return document.querySelector('#desk-city').value;",
        )
        .await;
        assert_eq!(
            city,
            json!("Oslo"),
            "the form starts from the order's details"
        );
    }
    // Both change the city of version 2 at once; ben also leaves a note.
    type_into(&ann, "#desk-city", "Bergen").await;
    type_into(&ben, "#desk-city", "Trondheim").await;
    type_into(&ben, "#desk-note", "gate code 1234").await;
    click(&ann, "#desk-save").await;
    text_until(&ann, "#desk-status", |t| t.contains("Saved: version 3")).await;
    js_until(
        &ann,
        "return document.querySelector('#desk-lease').offsetParent === null;",
        "ann holds no edit lease once she saved",
    )
    .await;
    click(&ben, "#desk-save").await;

    // Ben's edit lost: no silent overwrite, but who changed it and the three versions.
    let who = text_until(&ben, "#desk-conflict-who", |t| t.contains("operator:ann")).await;
    assert!(who.contains("since version 2"), "{who}");
    let row = |field: &str| {
        format!(
            "return [...document.querySelectorAll('#desk-comparison tr[data-field=\"{field}\"] td')]
                      .map((td) => td.textContent);"
        )
    };
    let address = js(&ben, &row("shipping_address")).await;
    let cells: Vec<&str> = address
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        cells[1].contains("Oslo") && cells[2].contains("Trondheim") && cells[3].contains("Bergen"),
        "started from, yours, current: {cells:?}"
    );
    let note = js(&ben, &row("note")).await;
    assert_eq!(note[1], "–");
    assert_eq!(note[2], "gate code 1234");
    assert_eq!(note[3], "–");
    assert_eq!(
        app.order(&order).await["details"]["shipping_address"]["city"],
        "Bergen",
        "ann's change stands until ben decides"
    );
    // Ann let go of her edit lease when she saved: ben's page no longer says she edits.
    js_until(
        &ben,
        "return document.querySelector('#desk-lease').offsetParent === null;",
        "ann's lease ended with her save",
    )
    .await;
    screenshot(&ben, "conflict").await;

    // Ben applies his on top of ann's: a new request against version 3.
    click(&ben, "#desk-apply-mine").await;
    text_until(&ben, "#desk-status", |t| t.contains("Saved: version 4")).await;
    let read = app.order(&order).await;
    assert_eq!(read["version"], 4);
    assert_eq!(read["details"]["shipping_address"]["city"], "Trondheim");
    assert_eq!(read["details"]["note"], "gate code 1234");
    // The history shows both changes, each with who made it.
    let events = app.events(&order).await;
    let actors: Vec<&str> = events
        .iter()
        .skip(2)
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["operator:ann", "operator:ben"]);
    text_until(&ann, "#events-table", |t| t.contains("operator:ben")).await;
    screenshot(&ann, "desk").await;

    // Edits of different fields against one version merge without asking: ann's email and
    // ben's note, both from version 4.
    for browser in [&ann, &ben] {
        text_until(browser, "#desk-base", |t| t.contains("version 4")).await;
    }
    type_into(&ann, "#desk-contact-email", "ann@example.org").await;
    type_into(&ben, "#desk-note", "ring twice").await;
    click(&ann, "#desk-save").await;
    text_until(&ann, "#desk-status", |t| t.contains("Saved: version 5")).await;
    click(&ben, "#desk-save").await;
    text_until(&ben, "#desk-status", |t| t.contains("Saved: version 6")).await;
    let read = app.order(&order).await;
    assert_eq!(read["details"]["contact_email"], "ann@example.org");
    assert_eq!(read["details"]["note"], "ring twice");
    assert_eq!(read["details"]["shipping_address"]["city"], "Trondheim");
    ann.close().await.unwrap();
    ben.close().await.unwrap();
}

#[tokio::test]
async fn an_operator_refunds_a_paid_order_with_a_reason_from_the_desk() {
    let app = common::stack().worker().start().await;
    let order = app.paid_order("DESK-1", 2, 700).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in_as(&browser, &app, "otto", "operator").await;
    open_order(&browser, &app, &order).await;
    text_until(&browser, "#desk-actions-base", |t| {
        t.contains("paid, version 3")
    })
    .await;
    let offered = js(
        &browser,
        "return [...document.querySelectorAll('#desk-actions [data-action]')]
                  .filter((b) => !b.hidden).map((b) => b.dataset.action);",
    )
    .await;
    assert_eq!(
        offered,
        json!(["ship", "refund"]),
        "what a paid order can do"
    );
    type_into(&browser, "#desk-reason", "returned unopened").await;
    click_and_confirm(&browser, "#desk-actions [data-action=\"refund\"]").await;
    text_until(&browser, "#desk-action-status", |t| {
        t.contains("Refunded and cancelled: version 4")
    })
    .await;
    let read = app.order(&order).await;
    assert_eq!(read["status"], "cancelled");
    let events = app.events(&order).await;
    let last = events.last().unwrap();
    assert_eq!(
        (&last["type"], &last["refunded_cents"], &last["reason"]),
        (
            &json!("order_cancelled"),
            &json!(1400),
            &json!("returned unopened")
        ),
        "{last}"
    );
    let refunds: i64 =
        sqlx::query_scalar("select count(*) from payments where kind = 'refund' and order_id = $1")
            .bind(uuid::Uuid::parse_str(&order).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(refunds, 1, "one refund of the capture");
    text_until(&browser, "#events-table", |t| t.contains("operator:otto")).await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn an_operator_ships_a_paid_order_with_its_tracking_number_from_the_desk() {
    let app = common::stack().worker().start().await;
    let order = app.paid_order("SHIP-1", 1, 500).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in_as(&browser, &app, "sam", "operator").await;
    open_order(&browser, &app, &order).await;
    text_until(&browser, "#desk-actions-base", |t| {
        t.contains("paid, version 3")
    })
    .await;
    // The order page shows its lines.
    text_until(&browser, "#order-lines tr[data-sku=\"SHIP-1\"]", |t| {
        t.contains("SHIP-1") && t.contains("5.00 EUR")
    })
    .await;
    // Ship asks for the number first, and sends nothing without one.
    click(&browser, "#desk-actions [data-action=\"ship\"]").await;
    text_until(&browser, "#desk-action-status", |t| {
        t.contains("needs a tracking number")
    })
    .await;
    assert_eq!(app.order(&order).await["status"], "paid");
    type_into(&browser, "#desk-tracking", "1Z999AA10123456784").await;
    click_and_confirm(&browser, "#desk-actions [data-action=\"ship\"]").await;
    text_until(&browser, "#desk-action-status", |t| {
        t.contains("Shipped: version 4")
    })
    .await;
    text_until(
        &browser,
        "#order-details dd[data-detail=\"tracking number\"]",
        |t| t == "1Z999AA10123456784",
    )
    .await;
    let read = app.order(&order).await;
    assert_eq!(
        (&read["status"], &read["tracking_number"]),
        (&json!("shipped"), &json!("1Z999AA10123456784"))
    );
    let shipped = app.events(&order).await.pop().unwrap();
    assert_eq!(
        (&shipped["type"], &shipped["actor"]),
        (&json!("order_shipped"), &json!("operator:sam")),
        "{shipped}"
    );
    browser.close().await.unwrap();
}

#[tokio::test]
async fn an_admin_sets_stock_on_the_stock_screen_and_a_viewer_only_reads_it() {
    let app = common::stack().worker().start().await;
    app.set_stock("SCREEN-1", 3).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in_as(&browser, &app, "ada", "admin").await;
    click(&browser, "nav a[data-tab=\"stock\"]").await;
    text_until(&browser, "#stock-table tr[data-sku=\"SCREEN-1\"]", |t| {
        t.contains("SCREEN-1") && t.contains('3')
    })
    .await;
    type_into(&browser, "#stock-sku", "SCREEN-1").await;
    type_into(&browser, "#stock-available", "40").await;
    click(&browser, "#stock-form button").await;
    text_until(&browser, "#stock-status", |t| {
        t.contains("SCREEN-1: 40 available")
    })
    .await;
    text_until(
        &browser,
        "#stock-table tr[data-sku=\"SCREEN-1\"] td:nth-child(2)",
        |t| t == "40",
    )
    .await;
    assert_eq!(app.stock("SCREEN-1").await["available"], 40);
    let audited: (String, Value) = sqlx::query_as(
        "select o.name, a.detail from admin_actions a join operators o on o.id = a.operator_id
          where a.action = 'set_stock' and a.target = 'SCREEN-1'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audited,
        ("ada".to_owned(), json!({"available": 40, "before": 3}))
    );
    // A bad figure is refused with the reason, and changes nothing.
    let refused = js(
        &browser,
        "return fetch('/dashboard/api/inventory/SCREEN-1', {
           method: 'PUT',
           headers: { 'content-type': 'application/json', 'x-csrf-token': me.csrf_token },
           body: JSON.stringify({ available: -1 }),
         }).then((r) => r.status);",
    )
    .await;
    assert_eq!(refused, json!(422));
    browser.close().await.unwrap();

    // A viewer reads the stock but gets no form, and the server refuses the change.
    let browser = driver.browser().await;
    sign_in_as(&browser, &app, "vic", "viewer").await;
    click(&browser, "nav a[data-tab=\"stock\"]").await;
    text_until(&browser, "#stock-table tr[data-sku=\"SCREEN-1\"]", |t| {
        t.contains("40")
    })
    .await;
    assert_eq!(
        js(
            &browser,
            "return document.querySelector('#stock-form').hidden;"
        )
        .await,
        json!(true)
    );
    let forged = js(
        &browser,
        "return fetch('/dashboard/api/inventory/SCREEN-1', {
           method: 'PUT',
           headers: { 'content-type': 'application/json', 'x-csrf-token': me.csrf_token },
           body: JSON.stringify({ available: 0 }),
         }).then((r) => r.status);",
    )
    .await;
    assert_eq!(forged, json!(403));
    assert_eq!(app.stock("SCREEN-1").await["available"], 40);
    browser.close().await.unwrap();
}

#[tokio::test]
async fn operators_see_who_else_has_an_order_open_and_who_edits_it_and_an_admin_breaks_the_lease() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let driver = Driver::start().await;
    let (ann, ada) = (driver.browser().await, driver.browser().await);
    sign_in_as(&ann, &app, "ann", "operator").await;
    sign_in_as(&ada, &app, "ada", "admin").await;
    for browser in [&ann, &ada] {
        open_order(browser, &app, &order).await;
        text_until(browser, "#desk-base", |t| t.contains("version 1")).await;
    }
    let shown = js(
        &ann,
        "return [...document.querySelectorAll('#desk-actions label, #desk-actions button')]
                  .filter((e) => e.offsetParent !== null).map((e) => e.textContent.trim());",
    )
    .await;
    assert_eq!(
        shown,
        json!(["reason (cancel, refund)", "Cancel"]),
        "a pending order asks for no tracking number"
    );
    // Each sees the other, live.
    text_until(&ann, "#presence", |t| t.contains("ada")).await;
    text_until(&ada, "#presence", |t| t.contains("ann")).await;

    // Ann starts editing: ada is warned before she starts, with when it began.
    type_into(&ann, "#desk-note", "call before delivery").await;
    text_until(&ann, "#desk-lease-text", |t| {
        t.starts_with("You are editing since")
    })
    .await;
    let warning = text_until(&ada, "#desk-lease-text", |t| {
        t.starts_with("ann is editing since")
    })
    .await;
    assert!(
        warning.contains("the version decides"),
        "the lease warns, it decides nothing: {warning}"
    );
    let editing = js(
        &ada,
        "return document.querySelector('#presence .present.editing')?.dataset.name;",
    )
    .await;
    assert_eq!(
        editing,
        json!("ann"),
        "the editor is marked among those present"
    );
    js_until(
        &ada,
        "return document.querySelector('#desk-lease-break').offsetParent !== null;",
        "an admin is offered to break the lease",
    )
    .await;
    screenshot(&ada, "presence").await;

    // Ada breaks it; ann's page learns at its next renewal and says her edit still counts.
    click_and_confirm(&ada, "#desk-lease-break").await;
    js_until(
        &ada,
        "return document.querySelector('#desk-lease').offsetParent === null;",
        "nobody edits after the break",
    )
    .await;
    text_until(&ann, "#desk-status", |t| {
        t.contains("your edit lease ended") && t.contains("the version decides")
    })
    .await;
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from admin_actions where action = 'break_edit_lease' and target = $1",
    )
    .bind(&order)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // The version decides: nobody changed the order, so ann's edit applies.
    click(&ann, "#desk-save").await;
    text_until(&ann, "#desk-status", |t| t.contains("Saved: version 2")).await;
    assert_eq!(
        app.order(&order).await["details"]["note"],
        "call before delivery"
    );

    // Ann leaves the order: ada sees her go.
    click(&ann, "nav a[data-tab=\"orders\"]").await;
    js_until(
        &ada,
        "return document.querySelector('#presence').offsetParent === null;",
        "ann left the order",
    )
    .await;
    for browser in [ann, ada] {
        browser.close().await.unwrap();
    }
}

/// A timeline refresh still on its way when the operator leaves the order must not put them back
/// on it: its late answer is dropped, and the page says "I have it open" no more. (CI caught the
/// race: a command frame's refresh landed after the tab changed and renewed presence for good.)
#[tokio::test]
async fn a_timeline_answer_that_arrives_after_the_operator_left_does_not_put_them_back_on_the_order()
 {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let driver = Driver::start().await;
    let ann = driver.browser().await;
    sign_in_as(&ann, &app, "ann", "operator").await;
    open_order(&ann, &app, &order).await;
    text_until(&ann, "#desk-base", |t| t.contains("version 1")).await;
    let present = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from order_presence where order_id = $1::text::uuid",
        )
        .bind(&order)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    wait_for("ann's presence recorded")
        .within(PATIENCE)
        .until(|| async {
            match present().await {
                1 => Ok(()),
                n => Err(format!("{n} present")),
            }
        })
        .await;

    // Every request the page sends is recorded; the order's timeline answer is held until the test
    // lets it go, and `window.consumed` turns true only after the page has done what it does with it
    // (a task queued behind the answer's continuations).
    js(
        &ann,
        &format!(
            "const real = window.fetch;
             window.sent = [];
             window.held = 0;
             window.consumed = false;
             let release;
             const gate = new Promise((resolve) => {{ release = resolve; }});
             window.releaseHeld = () => release();
             window.fetch = async (url, options = {{}}) => {{
               window.sent.push(`${{options.method || 'GET'}} ${{url}}`);
               if (url !== '/dashboard/api/orders/{order}' || (options.method || 'GET') !== 'GET') {{
                 return real(url, options);
               }}
               window.held += 1;
               const response = await real(url, options);
               const text = await response.text();
               await gate;
               return {{
                 ok: response.ok,
                 status: response.status,
                 json: async () => {{
                   setTimeout(() => {{ window.consumed = true; }}, 0);
                   return JSON.parse(text);
                 }},
               }};
             }};
             return true;"
        ),
    )
    .await;

    // A change to the order makes the page refresh its timeline: that answer is held.
    let changed = app
        .run(
            &order,
            json!({"type": "update_details", "details": {"note": "late answer"}}),
            None,
        )
        .await;
    assert_eq!(changed["status"], "applied");
    js_until(
        &ann,
        "return window.held >= 1;",
        "the timeline refresh is on its way",
    )
    .await;

    // Ann leaves the order while it is: the page says so, and the server forgets her.
    click(&ann, "nav a[data-tab=\"orders\"]").await;
    wait_for("ann's presence gone")
        .within(PATIENCE)
        .until(|| async {
            match present().await {
                0 => Ok(()),
                n => Err(format!("{n} present")),
            }
        })
        .await;
    let left = js(&ann, "return window.sent.length;").await;

    // The late answer arrives and is dealt with.
    js(&ann, "window.releaseHeld(); return true;").await;
    js_until(
        &ann,
        "return window.consumed;",
        "the late answer is consumed",
    )
    .await;
    let after = js(&ann, "return window.sent;").await;
    let renewals: Vec<&Value> = after.as_array().unwrap()[left.as_u64().unwrap() as usize..]
        .iter()
        .filter(|r| r.as_str().unwrap().ends_with("/presence"))
        .collect();
    assert!(
        renewals.is_empty(),
        "the page went back to the order it left: {renewals:?}"
    );
    assert_eq!(present().await, 0, "nobody has the order open");
    ann.close().await.unwrap();
}

/// The webhooks tab: an operator sees which endpoint fails and why, reads its delivery log and
/// retries the given-up delivery once the receiver works again; a viewer reads the same and gets
/// no retry button.
#[tokio::test]
async fn an_operator_finds_a_failing_webhook_endpoint_and_retries_its_given_up_delivery() {
    use common::webhooks::{Answer, Receiver, register, until_failing};
    let app = common::webhooks::stack(Some(1)).worker().start().await;
    let receiver = Receiver::start().await;
    receiver.script([], Answer::Status(500));
    let endpoint = register(&app, json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    app.new_order(json!([])).await;
    until_failing(&app, &id).await;

    let driver = Driver::start().await;
    let (oli, vic) = (driver.browser().await, driver.browser().await);
    sign_in_as(&oli, &app, "oli", "operator").await;
    sign_in_as(&vic, &app, "vic", "viewer").await;
    for browser in [&oli, &vic] {
        click(browser, "nav a[data-tab=\"webhooks\"]").await;
        let row = format!("#webhooks-table tr[data-endpoint=\"{id}\"]");
        text_until(browser, &row, |t| {
            t.contains(&receiver.url) && t.contains("failing") && t.contains("HTTP 500")
        })
        .await;
        click(browser, &format!("{row} a")).await;
        text_until(browser, "#deliveries-table tbody", |t| {
            t.contains("given_up")
        })
        .await;
    }
    screenshot(&oli, "webhooks").await;
    assert_eq!(
        js(
            &vic,
            "return document.querySelectorAll('#deliveries-table button.retry').length;"
        )
        .await,
        json!(0),
        "a viewer gets no retry"
    );

    // The receiver works again; the operator retries; the delivery goes and the endpoint heals.
    receiver.script([], Answer::Ok);
    click(&oli, "#deliveries-table tr.given_up button.retry").await;
    wait_for("the retried delivery received")
        .within(PATIENCE)
        .until(|| async { receiver.got().iter().any(|g| g.succeeded()).then_some(()) })
        .await;
    let row = format!("#webhooks-table tr[data-endpoint=\"{id}\"]");
    text_until(&oli, &row, |t| t.contains("active")).await;
    text_until(&oli, "#deliveries-table tbody", |t| t.contains("delivered")).await;
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from admin_actions where action = 'retry_webhook_delivery' and target = $1",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    for browser in [oli, vic] {
        browser.close().await.unwrap();
    }
}
