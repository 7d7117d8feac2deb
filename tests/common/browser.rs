//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `scripts/install-deps` installs): each [`Browser`] starts its own chromedriver on
//! a free port with a fresh profile, and stops both when dropped.
//!
//! The browser resolves no host name but the loopback address, so a page that reaches for
//! anything but the server under test fails to load it, and [`Browser::console_errors`]
//! reports it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a test waits for the page to show something.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// axe-core, vendored (tests/assets/axe-core-4.14.1, MPL-2.0).
const AXE: &str = include_str!("../assets/axe-core-4.14.1/axe.min.js");

fn path_of(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_string())
}

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    driver_url: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a 1280×800 headless Chromium.
    pub async fn start() -> Self {
        let chromedriver = path_of("ANNALS_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = path_of("ANNALS_CHROMIUM", "/usr/bin/chromium");
        for (what, path) in [("chromedriver", &chromedriver), ("chromium", &chromium)] {
            assert!(
                std::path::Path::new(path).exists(),
                "{what} is not at {path}: run scripts/install-deps (Debian packages chromium \
                 and chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http
            .get(format!("{driver_url}/status"))
            .send()
            .await
            .is_err()
        {
            assert!(started.elapsed() < PATIENCE, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    // Without these Chromium reaches for Google's hosts at every start.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--no-first-run",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                    // No name but the loopback address resolves: the page can reach only
                    // the server under test.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver_url)
            .await
            .expect("a Chromium session");
        let session = client
            .session_id()
            .await
            .unwrap()
            .expect("the session has an id");
        Browser {
            client,
            driver,
            driver_url,
            session,
            _profile: profile,
        }
    }

    /// Opens `url` and waits for the document to have loaded.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The first element matching `css`, once there is one.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element matches {css} after {PATIENCE:?}: {e}"))
    }

    /// Clicks the first element matching `css`, once there is one.
    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Waits until `css` matches an element whose text satisfies `check`, and returns the
    /// text.
    pub async fn wait_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if check(&text) {
                    return text;
                }
                last = Some(text);
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{css} never showed the expected text; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the script (a function body) returns `true`.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let started = Instant::now();
        loop {
            if self.js(script).await == json!(true) {
                return;
            }
            assert!(started.elapsed() < PATIENCE, "never true: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// Everything the page logged at the error level since the last call (console errors,
    /// uncaught exceptions, failed loads, policy violations).
    pub async fn console_errors(&self) -> Vec<String> {
        let log: Value = reqwest::Client::new()
            .post(format!(
                "{}/session/{}/se/log",
                self.driver_url, self.session
            ))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        log["value"]
            .as_array()
            .expect("chromedriver returns the browser log")
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Runs axe-core on the page and returns its serious and critical violations.
    pub async fn accessibility_violations(&self) -> Vec<Value> {
        if self.js("return typeof window.axe === 'object';").await != json!(true) {
            self.js(&format!("{AXE}\nreturn true;")).await;
        }
        let violations = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                   .then(r => done(r.violations.map(v => ({
                       id: v.id, impact: v.impact, help: v.help,
                       nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')) }))))
                   .catch(e => done([{ id: 'axe-failed', impact: 'critical', help: String(e) }]));",
                Vec::new(),
            )
            .await
            .unwrap();
        violations
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .cloned()
            .collect()
    }

    /// Checks that Tab reaches every visible control of the page, in some order: numbers
    /// the controls, presses Tab until focus has been on each (or twice their count), and
    /// returns the ones never focused, by their outer HTML.
    pub async fn unreachable_by_keyboard(&self) -> Vec<String> {
        let count = self
            .js("document.activeElement && document.activeElement.blur();
                 const controls = [...document.querySelectorAll(
                     'a[href], button, input, select, textarea, summary, [tabindex]')]
                   .filter(e => e.offsetParent !== null && !e.disabled);
                 controls.forEach((e, i) => e.setAttribute('data-kbd', String(i)));
                 return controls.length;")
            .await
            .as_u64()
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..count * 2 + 2 {
            self.client
                .active_element()
                .await
                .unwrap()
                .send_keys(&fantoccini::key::Key::Tab.to_string())
                .await
                .unwrap();
            if let Value::String(i) = self
                .js("return document.activeElement.getAttribute('data-kbd');")
                .await
            {
                seen.insert(i);
            }
            if seen.len() as u64 == count {
                break;
            }
        }
        let seen: Vec<String> = seen.into_iter().collect();
        let missing = self
            .client
            .execute(
                "const seen = new Set(arguments[0]);
                 return [...document.querySelectorAll('[data-kbd]')]
                   .filter(e => !seen.has(e.getAttribute('data-kbd')))
                   .map(e => e.outerHTML.slice(0, 200));",
                vec![json!(seen)],
            )
            .await
            .unwrap();
        serde_json::from_value(missing).unwrap()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        png
    }

    /// Ends the session and the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// A test that panics still ends its session (and so its Chromium) before the driver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let address = self.driver_url.trim_start_matches("http://");
        if let Ok(mut socket) = std::net::TcpStream::connect(address) {
            let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                socket,
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = socket.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
