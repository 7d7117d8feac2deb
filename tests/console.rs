//! The admin console in a real browser: headless Chromium over WebDriver against a real
//! server. Sign-in and roles, streams, events and their links, the live tail, projection
//! control, the plots, GraphiQL from the binary, accessibility (axe-core and the keyboard)
//! and a clean console log.
//!
//! `ANNALS_SCREENSHOTS=docs/images cargo test --test console` writes the screenshots the
//! README shows (`console-overview.png`, `console-event.png`).

mod common;

use std::time::Duration;

use annals::server::auth::Role;
use common::TestServer;
use common::browser::Browser;
use fantoccini::Locator;
use serde_json::{Value, json};
use uuid::Uuid;

const APPEND: &str = "mutation($stream: String!, $events: [EventInput!]!) {
    appendToStream(streamId: $stream, expectedVersion: { state: ANY }, events: $events) {
        position
    }
}";

/// Appends one event and returns its position.
async fn append(server: &TestServer, key: Option<&str>, stream: &str, event: Value) -> String {
    let data = server
        .ok_as(key, APPEND, json!({ "stream": stream, "events": [event] }))
        .await;
    data["appendToStream"]["position"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Fails with every error the page logged and every serious accessibility violation of
/// the view it shows.
async fn check_page(browser: &Browser, view: &str) {
    let violations = browser.accessibility_violations().await;
    assert!(
        violations.is_empty(),
        "{view}: axe-core reports {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
    let errors = browser.console_errors().await;
    assert!(
        errors.is_empty(),
        "{view}: the page logged errors: {errors:#?}"
    );
}

/// Clicks `button`, waits for the confirmation dialog and answers it with `answer`.
async fn confirm(browser: &Browser, button: &str, answer: &str) {
    browser.click(button).await;
    browser.wait_for("dialog#confirm[open]").await;
    browser.click(answer).await;
}

/// A reader signs in and sees no write action; streams, an event and its causation link;
/// a new event arrives in the live tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_browses_streams_events_and_the_live_tail_without_write_actions() {
    let (server, keys) = TestServer::with_keys(&[Role::Reader, Role::Admin]).await;
    let (reader, admin) = (keys[0].clone(), keys[1].clone());
    let cause = Uuid::new_v4();
    append(
        &server,
        Some(&admin),
        "parcel-1",
        json!({ "eventId": cause, "type": "ParcelPacked", "payload": { "weightGrams": 1200 } }),
    )
    .await;
    let effect = append(
        &server,
        Some(&admin),
        "parcel-2",
        json!({
            "type": "ParcelLabelled",
            "payload": { "carrier": "post" },
            "metadata": { "correlationId": cause, "causationId": cause },
        }),
    )
    .await;
    for i in 3..=30 {
        append(
            &server,
            Some(&admin),
            &format!("crate-{i}"),
            json!({ "type": "CrateStacked", "payload": { "i": i } }),
        )
        .await;
    }

    let browser = Browser::start().await;
    browser.goto(&server.url("/admin/")).await;
    // A server with keys asks for one; a wrong key is refused on the form.
    browser.wait_for("#signin").await;
    browser
        .wait_for("#api-key")
        .await
        .send_keys("ank_wrong")
        .await
        .unwrap();
    browser.click("#signin-submit").await;
    browser.wait_text("#signin-error", |t| !t.is_empty()).await;
    let key = browser.wait_for("#api-key").await;
    key.clear().await.unwrap();
    key.send_keys(&reader).await.unwrap();
    browser.click("#signin-submit").await;
    browser.wait_text("#viewer-role", |t| t == "reader").await;
    browser.wait_for("#overview-head").await;
    browser
        .wait_text("#overview-head", |t| t.contains("30"))
        .await;
    // The failed sign-in answered 401 (logged by the browser as a failed load); that one
    // is the test's doing.
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("401"))
        .collect();
    assert!(errors.is_empty(), "sign-in logged {errors:#?}");
    check_page(&browser, "overview (reader)").await;

    // No write action is offered to a reader.
    browser.goto(&server.url("/admin/#/projections")).await;
    browser.wait_for("tr[data-projection='orders']").await;
    assert_eq!(browser.count("[data-requires]").await, 0, "write controls");
    assert_eq!(browser.count("button.projection-pause").await, 0);
    browser.goto(&server.url("/admin/#/audit")).await;
    browser.wait_for("#export-form").await;
    assert_eq!(
        browser.count("#export-download").await,
        0,
        "exports are admin"
    );
    check_page(&browser, "projections and audit (reader)").await;

    // Streams: a prefix search, then one stream, then its event.
    browser.goto(&server.url("/admin/#/streams")).await;
    let prefix = browser.wait_for("#stream-prefix").await;
    prefix.send_keys("parcel-").await.unwrap();
    browser.click("#stream-search button[type='submit']").await;
    browser
        .wait_until(
            "the search lists exactly the two parcels",
            "const ids = [...document.querySelectorAll('#stream-list a.stream-link')]
               .map(a => a.dataset.streamId);
             return ids.length === 2 && ids[0] === 'parcel-1' && ids[1] === 'parcel-2';",
        )
        .await;
    check_page(&browser, "streams").await;
    // Pages: 28 crates at 20 a page.
    browser
        .client
        .find(Locator::Id("stream-category"))
        .await
        .unwrap()
        .select_by_value("crate")
        .await
        .unwrap();
    let prefix = browser.wait_for("#stream-prefix").await;
    prefix.clear().await.unwrap();
    browser.click("#stream-search button[type='submit']").await;
    browser.click("#streams-next").await;
    browser
        .wait_until(
            "the second page holds the last 8 crates",
            "const ids = [...document.querySelectorAll('#stream-list a.stream-link')]
               .map(a => a.dataset.streamId);
             return ids.length === 8 && ids.every(id => id.startsWith('crate-'));",
        )
        .await;

    browser.goto(&server.url("/admin/#/streams/parcel-2")).await;
    browser
        .click(&format!(
            "#stream-events a.event-link[data-position='{effect}']"
        ))
        .await;
    browser
        .wait_text("#event-type", |t| t == "ParcelLabelled")
        .await;
    browser.wait_text("#event-position", |t| t == effect).await;
    browser
        .wait_text("#chain-status", |t| t.starts_with("verified"))
        .await;
    let payload = browser
        .wait_for("#event-payload")
        .await
        .text()
        .await
        .unwrap();
    let payload: Value = serde_json::from_str(&payload).expect("the payload as JSON");
    assert_eq!(payload, json!({ "carrier": "post" }));
    let hash = browser.wait_for("#event-hash").await.text().await.unwrap();
    assert_eq!(hash.len(), 64, "the hash in hex: {hash}");
    check_page(&browser, "event").await;
    // The causation link leads to the event that caused it.
    browser.click("a#event-causation").await;
    browser
        .wait_text("#event-id", |t| t == cause.to_string())
        .await;
    browser
        .wait_text("#event-type", |t| t == "ParcelPacked")
        .await;

    // The live tail shows an event appended now.
    browser.goto(&server.url("/admin/#/tail")).await;
    browser
        .wait_text("#tail-status", |t| t.contains("live"))
        .await;
    let live = append(
        &server,
        Some(&admin),
        "parcel-3",
        json!({ "type": "ParcelShipped", "payload": {} }),
    )
    .await;
    let item = browser
        .wait_for(&format!("#tail-list .tail-event[data-position='{live}']"))
        .await;
    let text = item.text().await.unwrap();
    assert!(
        text.contains("ParcelShipped") && text.contains("parcel-3"),
        "{text}"
    );
    // Paused, a new event waits; resumed, it shows.
    browser.click("#tail-pause").await;
    browser.wait_text("#tail-pause", |t| t == "Resume").await;
    let held = append(
        &server,
        Some(&admin),
        "parcel-4",
        json!({ "type": "ParcelShipped", "payload": {} }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held_item = format!("#tail-list .tail-event[data-position='{held}']");
    assert_eq!(browser.count(&held_item).await, 0, "shown while paused");
    browser.click("#tail-pause").await;
    browser.wait_for(&held_item).await;
    check_page(&browser, "live tail").await;
    browser.close().await;
    server.stop().await;
}

/// An admin (loopback without keys: the console opens directly) pauses and resumes a
/// projection with confirmation, sees the plots draw, and every control is reachable by
/// keyboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pauses_and_resumes_a_projection_and_sees_the_plots() {
    let server = TestServer::with_node(|_| {}).await;
    common::product(&server, "lamp", 4_500, 1_000_000).await;
    for i in 0..12 {
        server
            .ok(
                "mutation($id: String!) { placeOrder(orderId: $id, customerId: \"c-1\",
                   lines: [{ productId: \"lamp\", quantity: 1 }]) { position } }",
                json!({ "id": format!("o-{i}") }),
            )
            .await;
    }
    // Orders keep coming while the test runs, so the plots have something to draw.
    let load = {
        let client = server.client.clone();
        let url = server.url("/graphql");
        tokio::spawn(async move {
            for i in 12.. {
                let query = "mutation($id: String!) { placeOrder(orderId: $id, customerId: \"c-2\",
                    lines: [{ productId: \"lamp\", quantity: 1 }]) { position } }";
                let body = json!({ "query": query, "variables": { "id": format!("o-{i}") } });
                let _ = client.post(&url).json(&body).send().await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let browser = Browser::start().await;
    browser.goto(&server.url("/admin/#/projections")).await;
    browser.wait_text("#viewer-role", |t| t == "admin").await;
    let row = "tr[data-projection='orders']";
    browser
        .wait_text(&format!("{row} td.projection-state"), |t| t == "RUNNING")
        .await;
    assert!(
        browser.count("[data-requires='admin']").await > 0,
        "admin controls"
    );

    // Pause, cancelled: nothing happens.
    confirm(
        &browser,
        &format!("{row} button.projection-pause"),
        "#confirm-cancel",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = server.ok("{ projections { name state } }", json!({})).await;
    assert!(
        state["projections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "orders" && p["state"] == "RUNNING"),
        "a cancelled pause pauses nothing: {state}"
    );
    // Pause, confirmed.
    confirm(
        &browser,
        &format!("{row} button.projection-pause"),
        "#confirm-ok",
    )
    .await;
    browser
        .wait_text(&format!("{row} td.projection-state"), |t| t == "PAUSED")
        .await;
    // Resume.
    confirm(
        &browser,
        &format!("{row} button.projection-resume"),
        "#confirm-ok",
    )
    .await;
    browser
        .wait_text(&format!("{row} td.projection-state"), |t| t == "RUNNING")
        .await;

    // The lag plot draws the server's samples (one a second).
    browser
        .wait_until(
            "the lag plot has points and paints its canvas",
            "const plot = document.querySelector('#lag-plot');
             const points = Number(plot && plot.getAttribute('data-points'));
             const canvas = plot && plot.querySelector('canvas');
             if (!(points >= 2) || !canvas) return false;
             const pixels = canvas.getContext('2d')
               .getImageData(0, 0, canvas.width, canvas.height).data;
             let painted = 0;
             for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
             return painted > 100;",
        )
        .await;
    check_page(&browser, "projections (admin)").await;
    let missed = browser.unreachable_by_keyboard().await;
    assert!(missed.is_empty(), "not reachable by Tab: {missed:#?}");

    browser.goto(&server.url("/admin/#/overview")).await;
    browser
        .wait_until(
            "the throughput plot has points",
            "const plot = document.querySelector('#throughput-plot');
             return Number(plot && plot.getAttribute('data-points')) >= 2;",
        )
        .await;
    check_page(&browser, "overview (admin)").await;
    let missed = browser.unreachable_by_keyboard().await;
    assert!(missed.is_empty(), "not reachable by Tab: {missed:#?}");
    browser
        .js("document.activeElement.blur(); return true;")
        .await;
    let overview = browser.screenshot().await;
    load.abort();

    // An event of the checkout, caused by the order placed before it.
    let requested = server
        .ok(
            "{ events(filter: { types: [\"PaymentRequested\"] }, limit: 1) { events { position } } }",
            json!({}),
        )
        .await;
    let position = requested["events"]["events"][0]["position"]
        .as_str()
        .unwrap()
        .to_string();
    browser
        .goto(&server.url(&format!("/admin/#/events/{position}")))
        .await;
    browser.wait_for("a#event-causation").await;
    browser
        .wait_text("#chain-status", |t| t.starts_with("verified"))
        .await;
    check_page(&browser, "event (admin)").await;
    browser
        .js("document.activeElement.blur(); return true;")
        .await;
    let event = browser.screenshot().await;
    if let Ok(dir) = std::env::var("ANNALS_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/console-overview.png"), overview).unwrap();
        std::fs::write(format!("{dir}/console-event.png"), event).unwrap();
    }
    browser.close().await;
    server.stop().await;
}

/// GraphiQL comes from the binary and runs `{ head }`, with no request to any other host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_a_query_with_no_network_but_the_server() {
    let server = TestServer::open().await;
    append(
        &server,
        None,
        "note-1",
        json!({ "type": "Noted", "payload": {} }),
    )
    .await;
    let browser = Browser::start().await;
    // The console links to it.
    browser.goto(&server.url("/admin/")).await;
    browser.click("a[href='/admin/graphiql']").await;
    browser.wait_for(".graphiql-container").await;
    browser.click(".graphiql-execute-button").await;
    browser
        .wait_until(
            "the result pane shows the head",
            "const result = document.querySelector('.result-window, .graphiql-response');
             return !!result && result.textContent.includes('\"head\"')
               && result.textContent.includes('\"1\"');",
        )
        .await;
    let origin = server.url("");
    let elsewhere = browser
        .js(&format!(
            "return performance.getEntriesByType('resource').map(e => e.name)
               .filter(name => !name.startsWith('{origin}/') && !name.startsWith('data:'));"
        ))
        .await;
    assert_eq!(elsewhere, json!([]), "requests to other hosts");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "GraphiQL logged errors: {errors:#?}");
    // And `GET /graphql` from a browser is the same page.
    browser.goto(&server.url("/graphql")).await;
    browser.wait_for(".graphiql-container").await;
    browser.close().await;
    server.stop().await;
}
