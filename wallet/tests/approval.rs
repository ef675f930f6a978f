//! SPEC §12 over real HTTP, without a browser: approval links, the code on the page, the
//! approval modes, `amr`, evidence and the notification webhook (tests/tests/approval.rs in
//! the e2e crate drives the passkey ceremonies in Chromium).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.example";
const DIRECTORY_TOKEN: &str = "directory-token";
const ADMIN: &str = "admin-token";
const AGENT_TOKEN: &str = "agent-7-token";
const PUBLIC: &str = "http://localhost:8081";

struct World {
    _directory: key_directory::Running,
    wallet: wallet::Running,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

async fn world(configure: impl FnOnce(&mut wallet::Config)) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let directory = key_directory::spawn(key_directory::Config::local(
        tmp.path().join("keys.db"),
        vec![format!("{ISSUER}={DIRECTORY_TOKEN}").parse().unwrap()],
    ))
    .await
    .unwrap();
    let mut config = wallet::Config::local(
        ISSUER,
        tmp.path().join("wallet"),
        &directory.url(),
        DIRECTORY_TOKEN,
        ADMIN,
        vec![format!("agent-7={AGENT_TOKEN}").parse().unwrap()],
    );
    config.allow_unbound_mandates = true;
    config.public_url = Some(PUBLIC.to_owned());
    configure(&mut config);
    let wallet = wallet::spawn(config).await.unwrap();
    World {
        _directory: directory,
        wallet,
        http: reqwest::Client::new(),
        _tmp: tmp,
    }
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.wallet.url())
    }

    /// The same path on the wallet, for a link made under the public URL.
    fn local(&self, link: &str) -> String {
        self.url(
            link.strip_prefix(PUBLIC)
                .expect("a link under the public URL"),
        )
    }

    async fn user(&self, user_id: &str) -> String {
        let r = self
            .http
            .post(self.url("/v1/users"))
            .bearer_auth(ADMIN)
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

    async fn request(&self, user_id: &str) -> String {
        let cart = json!({"merchant_id": "acme-corp", "currency": "JPY", "total": 1500,
            "line_items": [{"id": "tea", "title": "Sencha <b>tin</b>", "quantity": 3, "unit_price": 500}]});
        let r = self
            .http
            .post(self.url("/v1/mandate-requests"))
            .bearer_auth(AGENT_TOKEN)
            .json(&json!({"user_id": user_id, "merchant_id": "acme-corp", "cart": cart}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn notification(&self, user_id: &str, token: &str, id: &str) -> Value {
        let body: Value = self
            .http
            .get(self.url(&format!("/v1/users/{user_id}/notifications")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["request_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no notification for {id}: {body}"))
    }

    /// The approval link in `user`'s notification of request `id`.
    async fn approval_link(&self, user_id: &str, token: &str, id: &str) -> String {
        self.notification(user_id, token, id).await["approval_url"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn status(&self, id: &str) -> Value {
        self.http
            .get(self.url(&format!("/v1/mandate-requests/{id}")))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// An `application/x-www-form-urlencoded` body of values that need no escaping (base64url
/// tags, digits).
fn form(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

const FORM: &str = "application/x-www-form-urlencoded";

fn tag(link: &str) -> String {
    link.split_once("?t=").unwrap().1.to_owned()
}

#[tokio::test]
async fn spec12_the_code_on_the_page_mints_a_mandate_saying_otp() {
    let w = world(|_| {}).await;
    let token = w.user("alice").await;
    let id = w.request("alice").await;
    let note = w.notification("alice", &token, &id).await;
    let link = note["approval_url"].as_str().unwrap();
    assert!(link.starts_with(&format!("{PUBLIC}/approve/{id}?t=")));
    let code = note["otp"].as_str().unwrap();

    // The page: every line with its quantity, amounts in the currency's own format (JPY has
    // no minor unit), the merchant's text escaped, the headers of a page that trusts nothing.
    let page = w.http.get(w.local(link)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("Sencha &lt;b&gt;tin&lt;/b&gt;"), "{html}");
    assert!(!html.contains("<b>tin"));
    assert!(
        html.contains("500 JPY") && html.contains("1500 JPY"),
        "{html}"
    );
    assert!(!html.contains("<script>") && !html.contains("style="));

    // A form posted from another site is refused; the wallet's own page may post it.
    let fields = [("t", tag(link)), ("otp", code.to_owned())];
    let forged = w
        .http
        .post(w.url(&format!("/approve/{id}/otp")))
        .header("Origin", "https://evil.example")
        .header("Content-Type", FORM)
        .body(form(&fields))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(
        forged
            .text()
            .await
            .unwrap()
            .contains("cross_origin_refused")
    );
    let wrong = w
        .http
        .post(w.url(&format!("/approve/{id}/otp")))
        .header("Origin", PUBLIC)
        .header("Content-Type", FORM)
        .body(form(&[("t", tag(link)), ("otp", "000000".to_owned())]))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(wrong.text().await.unwrap().contains("tries left"));
    let done = w
        .http
        .post(w.url(&format!("/approve/{id}/otp")))
        .header("Origin", PUBLIC)
        .header("Content-Type", FORM)
        .body(form(&fields))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert!(done.text().await.unwrap().contains("Approved"));

    let mandate = w.status(&id).await["mandate"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(mandate.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["amr"], json!(["otp"]));

    // No passkey, no evidence; and only the user or the admin may ask.
    let evidence = |token: &'static str| {
        w.http
            .get(w.url(&format!("/v1/mandate-requests/{id}/evidence")))
            .bearer_auth(token)
            .send()
    };
    let r = evidence(ADMIN).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "evidence_not_found"
    );
    assert_eq!(
        evidence(AGENT_TOKEN).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn spec12_a_link_opens_its_own_request_only() {
    let w = world(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let a = w.request("alice").await;
    let b = w.request("bob").await;
    let alice_link = w.approval_link("alice", &alice, &a).await;
    let bob_link = w.approval_link("bob", &bob, &b).await;
    for (path, why) in [
        (
            format!("/approve/{a}?t={}", tag(&bob_link)),
            "bob's tag on alice's request",
        ),
        (format!("/approve/{a}"), "no tag"),
        (format!("/approve/{a}?t=AAAA"), "a made-up tag"),
        (
            format!("/approve/nope?t={}", tag(&alice_link)),
            "another id",
        ),
    ] {
        let r = w.http.get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{why}");
        assert!(r.text().await.unwrap().contains("link_invalid"), "{why}");
    }
    // Deny with bob's tag does nothing to alice's request.
    let r = w
        .http
        .post(w.url(&format!("/approve/{a}/deny")))
        .header("Content-Type", FORM)
        .body(form(&[("t", tag(&bob_link))]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(w.status(&a).await["status"], "pending_approval");
    // The passkey calls need the tag too, and a passkey.
    let r = w
        .http
        .post(w.url(&format!("/approve/{a}/passkey/options")))
        .json(&json!({"t": tag(&bob_link)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = w
        .http
        .post(w.url(&format!("/approve/{a}/passkey/options")))
        .json(&json!({"t": tag(&alice_link)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "no_passkey");
    // Enrolment links: the admin's, for a user that exists; tampered, they do not open.
    let r = w
        .http
        .post(w.url("/v1/users/alice/enrollment-links"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = w
        .http
        .post(w.url("/v1/users/nobody/enrollment-links"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let link: Value = w
        .http
        .post(w.url("/v1/users/alice/enrollment-links"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    assert_eq!(
        w.http.get(w.local(url)).send().await.unwrap().status(),
        StatusCode::OK
    );
    let for_bob = url.replace("/enroll/alice?", "/enroll/bob?");
    assert_eq!(
        w.http.get(w.local(&for_bob)).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn spec12_passkeys_only_the_code_is_neither_shown_nor_taken() {
    let w = world(|c| c.approval = wallet::approval::ApprovalMode::Passkey).await;
    let token = w.user("alice").await;
    let id = w.request("alice").await;
    let note = w.notification("alice", &token, &id).await;
    assert!(note.get("otp").is_none(), "{note}");
    let r = w
        .http
        .post(w.url(&format!("/v1/mandate-requests/{id}/approve")))
        .bearer_auth(&token)
        .json(&json!({"otp": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "otp_not_allowed");
    let html = w
        .http
        .get(w.local(note["approval_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("otp-form"), "{html}");
    assert!(html.contains("enrolment link"), "{html}");
}

#[tokio::test]
async fn spec12_passkeys_need_a_host_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = wallet::Config::local(
        ISSUER,
        tmp.path().to_path_buf(),
        "http://127.0.0.1:9",
        DIRECTORY_TOKEN,
        ADMIN,
        vec![],
    );
    config.public_url = Some("http://127.0.0.1:8081".into());
    config.approval = wallet::approval::ApprovalMode::Passkey;
    let error = wallet::build(config).await.err().expect("refused");
    assert!(error.to_string().contains("IP address"), "{error}");
}

/// What the webhook receiver saw: each POST's `AP2-Signature` and body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test]
async fn spec12_notifications_reach_the_webhook_signed_and_retried() {
    // A receiver that refuses the first delivery, then takes them.
    let seen: Seen = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    let signature = headers
                        .get("ap2-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.push((signature, body.to_vec()));
                    if seen.len() == 1 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let w = world(|c| {
        c.notify_url = Some(hook);
        c.notify_secret = Some("whsec-test".to_owned().into());
    })
    .await;
    w.user("alice").await;
    let id = w.request("alice").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "not retried");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    for (signature, body) in &seen {
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("{signature}"));
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"whsec-test");
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(body);
        let expected: String = aws_lc_rs::hmac::sign(&key, &signed)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected);
        let note: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(note["type"], "mandate_request");
        assert_eq!(note["user_id"], "alice");
        assert_eq!(note["notification"]["request_id"], id.as_str());
        assert!(note["notification"]["otp"].as_str().unwrap().len() == 6);
        assert!(
            note["notification"]["approval_url"]
                .as_str()
                .unwrap()
                .starts_with(PUBLIC)
        );
    }
}

/// A wallet on `pg` (with the master key every instance would share), and the approval link
/// of a request it holds for alice.
async fn on_postgres_with_a_link(pg: &ap2_testkit::PgServer) -> (World, String) {
    let url = pg.url();
    let w = world(move |c| {
        c.database_url = Some(url.into());
        c.master_key = Some(
            base64::engine::general_purpose::STANDARD
                .encode([7u8; 32])
                .into(),
        );
    })
    .await;
    let token = w.user("alice").await;
    let id = w.request("alice").await;
    let link = w.approval_link("alice", &token, &id).await;
    (w, link)
}

/// A database that cannot answer is the store's failure, not the link's: while it is down the
/// approval page is `503 store_unavailable` (the user is told to try again, not that the link
/// is bad), and once it is back the same link opens the page again, without a restart.
#[tokio::test]
async fn spec12_the_approval_page_tells_a_store_outage_from_an_invalid_link() {
    let mut pg = ap2_testkit::PgServer::start();
    let (w, link) = on_postgres_with_a_link(&pg).await;
    let page = w.http.get(w.local(&link)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    pg.stop();
    let page = w.http.get(w.local(&link)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = page.text().await.unwrap();
    assert!(text.contains("store_unavailable"), "{text}");
    assert!(!text.contains("link_invalid"), "{text}");
    assert!(text.contains("try again in a moment"), "{text}");
    pg.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page = w.http.get(w.local(&link)).send().await.unwrap();
        if page.status() == StatusCode::OK {
            break;
        }
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            std::time::Instant::now() < deadline,
            "the page did not come back within 30 s of the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The page asks the store whether the user has a passkey; a store that cannot say is `503`,
/// not "no passkey" (which would tell a user with passkeys to ask for an enrolment link). The
/// failure is made real: the passkeys' table renamed away on the PostgreSQL server.
#[tokio::test]
async fn spec12_a_store_that_cannot_list_passkeys_is_503_not_no_passkey() {
    let pg = ap2_testkit::PgServer::start();
    let (w, link) = on_postgres_with_a_link(&pg).await;
    let psql = |sql: &str| {
        let status = std::process::Command::new("psql")
            .args([pg.url().as_str(), "-qc", sql])
            .status()
            .expect("psql (apt-get install -y postgresql-client)");
        assert!(status.success(), "{sql}");
    };
    assert_eq!(
        w.http.get(w.local(&link)).send().await.unwrap().status(),
        StatusCode::OK
    );
    psql("ALTER TABLE wallet.passkeys RENAME TO passkeys_moved");
    let page = w.http.get(w.local(&link)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = page.text().await.unwrap();
    assert!(text.contains("store_unavailable"), "{text}");
    psql("ALTER TABLE wallet.passkeys_moved RENAME TO passkeys");
    assert_eq!(
        w.http.get(w.local(&link)).send().await.unwrap().status(),
        StatusCode::OK
    );
}
