//! A small W3C WebDriver client for the browser tests: Debian's `chromedriver` driving
//! headless Chromium, with the WebAuthn virtual authenticator (WebAuthn §11). When either is
//! missing the test fails saying how to install them; it is never skipped.
#![allow(clippy::indexing_slicing)] // serde_json::Value indexing answers Null, never panics

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const INSTALL_HINT: &str = "this test drives Chromium over WebDriver and needs `chromium` and \
     `chromedriver` on PATH. Install them (Debian/Ubuntu: `apt-get install -y chromium \
     chromium-driver`) and run the tests again.";

fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A `chromedriver` process on a free loopback port.
pub struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    /// Starts `chromedriver` and waits until it says it is ready.
    pub async fn start() -> Self {
        let binary = on_path("chromedriver").unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let port = crate::free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new headless Chromium session, 390 px wide (a phone).
    pub async fn session(&self) -> Session {
        let chromium = on_path("chromium")
            .or_else(|| on_path("chromium-browser"))
            .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let answer: Value = http
            .post(format!("{}/session", self.url))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                             "--disable-gpu", "--window-size=390,1000"]
                }
            }}}))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Session {
            http,
            base: format!("{}/session/{id}", self.url),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Session {
    http: reqwest::Client,
    base: String,
}

/// The key that names an element in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Session {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON");
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` in the page and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs `script`, which calls its last argument with the result, and returns that.
    pub async fn execute_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({ "script": script, "args": args }))
            .await
    }

    /// Waits up to 15 s for an element matching `css` and returns its WebDriver id.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer: Value = self
                .http
                .post(format!("{}/element", self.base))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("chromedriver answers")
                .json()
                .await
                .expect("JSON");
            if let Some(id) = answer["value"][ELEMENT].as_str() {
                return id.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on the page:\n{}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    /// The visible text of the element matching `css` (empty when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits up to 20 s until the text of `css` contains `wanted`, and returns it.
    pub async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never said {wanted:?}; the page says:\n{}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self.get("/screenshot").await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG")
    }

    /// Adds a CTAP2 virtual authenticator (internal, resident keys, user verification) and
    /// returns its id.
    pub async fn add_authenticator(&self) -> String {
        self.post(
            "/webauthn/authenticator",
            json!({
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserConsenting": true,
                "isUserVerified": true
            }),
        )
        .await
        .as_str()
        .expect("an authenticator id")
        .to_owned()
    }

    /// The credentials an authenticator holds (with their private keys and sign counts).
    pub async fn credentials(&self, authenticator: &str) -> Vec<Value> {
        self.get(&format!(
            "/webauthn/authenticator/{authenticator}/credentials"
        ))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    /// Puts `credential` (as [`Session::credentials`] returns it) into an authenticator.
    pub async fn add_credential(&self, authenticator: &str, credential: Value) {
        self.post(
            &format!("/webauthn/authenticator/{authenticator}/credential"),
            credential,
        )
        .await;
    }

    /// Removes an authenticator.
    pub async fn remove_authenticator(&self, authenticator: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/webauthn/authenticator/{authenticator}"),
            None,
        )
        .await;
    }

    /// Ends the session (closes the browser).
    pub async fn close(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}
