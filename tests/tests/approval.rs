//! SPEC §12 in a real browser: Debian's Chromium, headless, driven over WebDriver, with the
//! WebDriver virtual authenticator (CTAP2, internal, resident keys, user verification). The
//! key directory and the wallet run as processes; the wallet's public URL is
//! `http://localhost:<port>`, since a WebAuthn relying party id must be a host name.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::path::Path;

use ap2_e2e::webdriver::{ChromeDriver, Session};
use ap2_e2e::{Service, free_port, key_directory, shoe_cart};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.example";
const DIRECTORY_TOKEN: &str = "e2e-directory-token-for-the-wallet";
const ADMIN_TOKEN: &str = "e2e-admin-token";
const AGENT_TOKEN: &str = "e2e-agent-7-token";
const MASTER_KEY: &str = "ZTJlLW1hc3Rlci1rZXktMzItYnl0ZXMtbG9uZy4uLi4=";

/// A wallet on `http://localhost:<port>`, its data and log in `dir`.
async fn wallet(dir: &Path, directory: &Service, extra: &[&str]) -> (Service, String) {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let public = format!("http://localhost:{port}");
    let data = dir.join("data");
    let mut args = vec!["--public-url", &public, "--allow-unbound-mandates"];
    args.extend_from_slice(extra);
    let service = Service::start_on(
        "wallet",
        port,
        &args,
        &[
            ("WALLET_ISSUER", ISSUER),
            ("WALLET_DATA_DIR", data.to_str().unwrap()),
            ("KEY_DIRECTORY_URL", &directory.url()),
            ("KEY_DIRECTORY_TOKEN", DIRECTORY_TOKEN),
            ("WALLET_ADMIN_TOKEN", ADMIN_TOKEN),
            ("WALLET_AGENT_TOKENS", &format!("agent-7={AGENT_TOKEN}")),
            ("WALLET_MASTER_KEY", MASTER_KEY),
        ],
        dir,
    )
    .await;
    (service, public)
}

/// A webhook on a free loopback port; its URL, and the notifications it receives.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let note: Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send(note);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A user; their bearer token.
    async fn user(&self, user_id: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/users", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "user_id": user_id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["user_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The agent asks for a mandate for `user_id` (the shoe cart); the request id.
    async fn request(&self, user_id: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/mandate-requests", self.base))
            .bearer_auth(AGENT_TOKEN)
            .json(
                &json!({"user_id": user_id, "merchant_id": "acme-corp", "cart": shoe_cart(),
                          "max_amount": "100.00"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The approval link of request `id`, from the user's notifications.
    async fn approval_url(&self, user_id: &str, token: &str, id: &str) -> String {
        let notes: Value = self
            .http
            .get(format!("{}/v1/users/{user_id}/notifications", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        notes["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["request_id"] == id)
            .unwrap_or_else(|| panic!("no notification for {id}: {notes}"))["approval_url"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The request as the agent sees it.
    async fn status(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/mandate-requests/{id}", self.base))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The claims of a compact JWS.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Where screenshots are kept: `target/screenshots/`.
fn screenshots() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// In the page: asks for the assertion options, flips one bit of the challenge, lets the
/// authenticator sign that, and posts it; answers the wallet's status and body.
const TAMPERED: &str = r#"
const [id, t, done] = arguments;
const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - s.length % 4) % 4)), c => c.charCodeAt(0));
const enc = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
(async () => {
  const post = (path, body) => fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const started = await (await post(`/approve/${id}/passkey/options`, {t})).json();
  const pk = started.options.publicKey;
  const challenge = dec(pk.challenge);
  challenge[0] ^= 1;
  pk.challenge = challenge.buffer;
  for (const c of pk.allowCredentials || []) c.id = dec(c.id).buffer;
  const cred = await navigator.credentials.get({publicKey: pk});
  const r = cred.response;
  const answer = await post(`/approve/${id}/passkey`, {t, state: started.state, credential: {
    id: cred.id, rawId: enc(cred.rawId), type: cred.type, extensions: {},
    response: {authenticatorData: enc(r.authenticatorData), clientDataJSON: enc(r.clientDataJSON),
               signature: enc(r.signature), userHandle: r.userHandle ? enc(r.userHandle) : null}}});
  done({status: answer.status, body: await answer.json()});
})().catch(e => done({error: String(e)}));
"#;

/// Enrols a passkey for `user_id` in the browser, with a fresh virtual authenticator; its id.
async fn enrol(browser: &Session, api: &Api, user_id: &str) -> String {
    let authenticator = browser.add_authenticator().await;
    let link: Value = api
        .http
        .post(format!("{}/v1/users/{user_id}/enrollment-links", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    browser.goto(link["url"].as_str().unwrap()).await;
    browser.wait_text("h1", "Add a passkey").await;
    browser.click("#enroll-passkey").await;
    browser.wait_text("#status", "Passkey added").await;
    authenticator
}

#[tokio::test]
async fn spec12_a_person_approves_with_a_passkey_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = key_directory(tmp.path(), ISSUER, DIRECTORY_TOKEN).await;
    let (wallet, public) = wallet(&tmp.path().join("wallet"), &directory, &[]).await;
    let api = Api {
        http: reqwest::Client::new(),
        base: wallet.url(),
    };
    let driver = ChromeDriver::start().await;
    let browser = driver.session().await;

    let alice = api.user("alice").await;
    let authenticator = enrol(&browser, &api, "alice").await;

    // The agent asks; the user opens the link of the notification and reads the cart.
    let id = api.request("alice").await;
    let url = api.approval_url("alice", &alice, &id).await;
    assert!(
        url.starts_with(&format!("{public}/approve/{id}?t=")),
        "{url}"
    );
    browser.goto(&url).await;
    let items = browser.wait_text("#items", "Trail Runner").await;
    assert!(items.contains("89.99 USD"), "{items}");
    assert_eq!(browser.text("#merchant").await, "acme-corp");
    assert_eq!(browser.text("#agent").await, "agent-7");
    assert_eq!(browser.text("#total").await, "89.99 USD");
    assert_eq!(browser.text("#max-amount").await, "100.00 USD");
    std::fs::write(
        screenshots().join("approval.png"),
        browser.screenshot().await,
    )
    .unwrap();

    // Approve with the passkey: the mandate says how, and the evidence re-verifies.
    browser.click("#approve-passkey").await;
    browser.wait_text("#outcome", "Approved").await;
    let approved = api.status(&id).await;
    assert_eq!(approved["status"], "approved");
    let mandate = claims(approved["mandate"].as_str().unwrap());
    assert_eq!(mandate["amr"], json!(["hwk", "user", "mfa"]));
    let evidence: Value = api
        .http
        .get(format!("{}/v1/mandate-requests/{id}/evidence", api.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parsed: ap2_mandate::evidence::Evidence = serde_json::from_value(evidence.clone()).unwrap();
    let verified = ap2_mandate::evidence::verify_evidence(&parsed).unwrap();
    assert!(verified.user_verified);
    assert_eq!(parsed.terms.request_id, id);
    assert_eq!(parsed.rp_id, "localhost");
    // The CLI re-verifies it from a file; a changed term does not verify.
    let file = tmp.path().join("evidence.json");
    std::fs::write(&file, evidence.to_string()).unwrap();
    let cli = std::process::Command::new(ap2_e2e::binary("ap2"))
        .arg("verify-evidence")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(String::from_utf8_lossy(&cli.stdout).starts_with("valid:"));
    let mut changed = evidence.clone();
    changed["terms"]["max_amount"] = json!("1000.00");
    std::fs::write(&file, changed.to_string()).unwrap();
    let cli = std::process::Command::new(ap2_e2e::binary("ap2"))
        .arg("verify-evidence")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));

    // The same link again shows the outcome, not the buttons.
    browser.goto(&url).await;
    browser.wait_text("#outcome", "Approved").await;

    // Deny.
    let denied = api.request("alice").await;
    browser
        .goto(&api.approval_url("alice", &alice, &denied).await)
        .await;
    browser.click("#deny").await;
    browser.wait_text("#outcome", "Denied").await;
    assert_eq!(api.status(&denied).await["status"], "denied");

    // Another user's link does not open this user's request.
    let bob = api.user("bob").await;
    let bobs = api.request("bob").await;
    let bobs_url = api.approval_url("bob", &bob, &bobs).await;
    let pending = api.request("alice").await;
    let alices_url = api.approval_url("alice", &alice, &pending).await;
    let bobs_tag = bobs_url.split_once("?t=").unwrap().1;
    browser
        .goto(&format!("{public}/approve/{pending}?t={bobs_tag}"))
        .await;
    browser.wait_text("p.code", "link_invalid").await;
    let r = api
        .http
        .get(format!("{}/approve/{pending}?t={bobs_tag}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );

    // A challenge that is not the request's: the assertion is refused, nothing is minted.
    browser.goto(&alices_url).await;
    browser.wait_text("#items", "Trail Runner").await;
    let t = alices_url.split_once("?t=").unwrap().1;
    let answer = browser.execute_async(TAMPERED, json!([pending, t])).await;
    assert_eq!(answer["status"], 403, "{answer}");
    assert_eq!(answer["body"]["code"], "passkey_refused", "{answer}");
    assert_eq!(api.status(&pending).await["status"], "pending_approval");

    // A cloned authenticator: the same credential with its sign counter back at 0.
    let credentials = browser.credentials(&authenticator).await;
    assert_eq!(credentials.len(), 1);
    let mut clone = credentials[0].clone();
    clone["signCount"] = json!(0);
    browser.remove_authenticator(&authenticator).await;
    let copy = browser.add_authenticator().await;
    browser.add_credential(&copy, clone).await;
    browser.goto(&alices_url).await;
    browser.click("#approve-passkey").await;
    browser.wait_text("#status", "sign counter went back").await;
    assert_eq!(api.status(&pending).await["status"], "pending_approval");

    browser.close().await;
}

#[tokio::test]
async fn spec12_an_expired_link_shows_that_it_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let directory = key_directory(tmp.path(), ISSUER, DIRECTORY_TOKEN).await;
    // The link is taken from the webhook, sent when the request is made: the notifications
    // list shows pending requests only, and a 1 s deadline can pass before it is read.
    let (hook, mut pushed) = webhook().await;
    let (wallet, _) = wallet(
        &tmp.path().join("wallet"),
        &directory,
        &[
            "--approval-ttl-secs",
            "1",
            "--notify-url",
            &hook,
            "--notify-secret",
            "e2e-webhook-secret",
        ],
    )
    .await;
    let api = Api {
        http: reqwest::Client::new(),
        base: wallet.url(),
    };
    api.user("carol").await;
    let id = api.request("carol").await;
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), pushed.recv())
        .await
        .expect("no notification was pushed in 10 s")
        .expect("the webhook stopped");
    assert_eq!(note["notification"]["request_id"], id.as_str());
    let url = note["notification"]["approval_url"]
        .as_str()
        .unwrap()
        .to_owned();
    // The request's deadline passes (1 s), then the link is opened.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api.status(&id).await["status"] != "expired" {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let driver = ChromeDriver::start().await;
    let browser = driver.session().await;
    browser.goto(&url).await;
    browser.wait_text("#outcome", "Expired").await;
    assert_eq!(
        api.http.get(url).send().await.unwrap().status(),
        StatusCode::GONE
    );
    browser.close().await;
}
