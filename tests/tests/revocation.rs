//! SPEC §10 against the real binaries: the key directory's event stream, a merchant that
//! follows it refusing a revoked key within 2 s although its key cache holds keys for 60 s,
//! and the stream resumed after the directory restarts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use ap2_e2e::Service;
use ap2_mandate::{LocalSigner, Signer};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.revocation";
const ISSUER_TOKEN: &str = "revocation-issuer-token";
const BACKEND_TOKEN: &str = "revocation-backend-token";

struct World {
    directory: Service,
    merchant: Service,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

fn cart() -> Value {
    ap2_e2e::shoe_cart()
}

impl World {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let directory = ap2_e2e::key_directory(tmp.path(), ISSUER, ISSUER_TOKEN).await;
        // The key cache's default, 60 s: only the stream can make a revocation felt sooner.
        let merchant = ap2_e2e::merchant(
            &tmp.path().join("merchant"),
            &directory,
            &[
                "--require-agent-binding",
                "false",
                "--backend-token",
                &format!("backend={BACKEND_TOKEN}"),
            ],
            &[],
        )
        .await;
        Self {
            directory,
            merchant,
            http: reqwest::Client::new(),
            _tmp: tmp,
        }
    }

    /// A user key registered at the directory.
    async fn register(&self, subject: &str) -> LocalSigner {
        ap2_e2e::register_user(&self.directory, ISSUER_TOKEN, subject).await
    }

    async fn revoke(&self, key: &LocalSigner) {
        let r = self
            .http
            .post(format!(
                "{}/v1/keys/{}/revoke",
                self.directory.url(),
                key.kid()
            ))
            .bearer_auth(ISSUER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    fn mandate(&self, key: &LocalSigner, subject: &str) -> String {
        ap2_e2e::unbound_mandate(key, ISSUER, subject, &cart())
    }

    /// The merchant's verdict on `mandate`, without spending it: "ok" or the code.
    async fn verdict(&self, mandate: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/mandates/verify", self.merchant.url()))
            .bearer_auth(BACKEND_TOKEN)
            .json(&json!({"mandate": mandate, "agent_id": "agent-7", "cart": cart(), "consume": false}))
            .send()
            .await
            .unwrap();
        let ok = r.status() == StatusCode::OK;
        let body: Value = r.json().await.unwrap();
        if ok {
            "ok".into()
        } else {
            body["code"].as_str().unwrap_or("?").to_owned()
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.merchant.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls until the merchant's stream has been opened `times` times and is open now.
    async fn wait_subscribed(&self, times: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric("ap2_revocation_stream_connected").await != 1.0
            || self.metric("ap2_revocation_stream_connects_total").await < times
        {
            assert!(
                Instant::now() < deadline,
                "the merchant never subscribed:\n{}",
                self.merchant.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Revokes `key` and polls the merchant until it refuses `mandate`; how long that took.
    async fn revoked_within(&self, key: &LocalSigner, mandate: &str) -> Duration {
        assert_eq!(self.verdict(mandate).await, "ok", "cached as active first");
        self.revoke(key).await;
        let revoked = Instant::now();
        loop {
            let verdict = self.verdict(mandate).await;
            if verdict == "mandate_key_revoked" {
                return revoked.elapsed();
            }
            assert_eq!(verdict, "ok");
            assert!(
                revoked.elapsed() < Duration::from_secs(30),
                "still accepted 30 s after the revocation"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn spec10_a_subscribed_merchant_refuses_a_revoked_key_within_2_s_even_after_the_directory_restarts()
 {
    let mut w = World::start().await;
    w.wait_subscribed(1.0).await;
    let alice = w.register("alice").await;
    let mandate = w.mandate(&alice, "alice");
    let took = w.revoked_within(&alice, &mandate).await;
    assert!(took < Duration::from_secs(2), "refused after {took:?}");

    // The directory restarts: the merchant opens the stream again by itself.
    w.directory.restart().await;
    w.wait_subscribed(2.0).await;
    let bob = w.register("bob").await;
    let mandate = w.mandate(&bob, "bob");
    let took = w.revoked_within(&bob, &mandate).await;
    assert!(took < Duration::from_secs(2), "after the restart: {took:?}");
}

/// The `data:` of each `revoked` event in `body`, with its id.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|block| block.contains("event: revoked"))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap()
                    .to_owned()
            };
            (
                field("id: "),
                serde_json::from_str(&field("data: ")).unwrap(),
            )
        })
        .collect()
}

/// Reads the stream until `count` more revocations came.
async fn read_events(response: &mut reqwest::Response, count: usize) -> Vec<(String, Value)> {
    let mut body = String::new();
    loop {
        let got = events(&body);
        if got.len() >= count {
            return got;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the events came")
            .unwrap()
            .expect("the stream is open");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn spec10_the_event_stream_resumes_after_last_event_id() {
    let w = World::start().await;
    let keys = [
        w.register("a").await,
        w.register("b").await,
        w.register("c").await,
    ];
    for key in &keys {
        w.revoke(key).await;
    }
    let url = format!("{}/v1/events", w.directory.url());
    // From the start: all three, in order, with increasing ids.
    let mut all = w
        .http
        .get(&url)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let got = read_events(&mut all, 3).await;
    let kids: Vec<&str> = got
        .iter()
        .map(|(_, d)| d["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids,
        keys.iter().map(|k| k.kid().as_str()).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|(_, d)| d["revoked_at"].is_string()));
    // Resuming after the first: the other two, then a new one live.
    let mut resumed = w
        .http
        .get(&url)
        .header("last-event-id", got[0].0.as_str())
        .send()
        .await
        .unwrap();
    let later = read_events(&mut resumed, 2).await;
    assert_eq!(later, got[1..].to_vec());
    let d = w.register("d").await;
    w.revoke(&d).await;
    let live = read_events(&mut resumed, 1).await;
    assert_eq!(live[0].1["kid"], d.kid().as_str());
    // A stream opened without Last-Event-ID starts from now.
    let mut fresh = w.http.get(&url).send().await.unwrap();
    let e = w.register("e").await;
    w.revoke(&e).await;
    let now = read_events(&mut fresh, 1).await;
    assert_eq!(now[0].1["kid"], e.kid().as_str());
    for bad in ["x", "-1", "1.5", ""] {
        let r = w
            .http
            .get(&url)
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "invalid_last_event_id"
        );
    }
}
