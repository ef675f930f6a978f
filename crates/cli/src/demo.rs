//! `ap2 demo`: the key directory, the wallet and two merchants started in this process on free
//! loopback ports, and the whole story told over HTTP: a user, a checkout, a mandate request,
//! the approval with the one-time code, the paid order, then the attacks, each refused with the
//! merchant's code. Exits 0 only if every step behaved as expected.

// Only `serde_json::Value` is indexed here, and its `Index` answers `Null` for a missing member
// instead of panicking.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{Clock, Kid, SystemClock};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

const ISSUER: &str = "https://wallet.demo";
const DIRECTORY_TOKEN: &str = "demo-wallet-directory-token";
const ADMIN_TOKEN: &str = "demo-admin-token";
const AGENT: &str = "agent-7";
const AGENT_TOKEN: &str = "demo-agent-7-token";
const OTHER_AGENT: &str = "agent-8";
const OTHER_AGENT_TOKEN: &str = "demo-agent-8-token";

/// The merchant's clock in the demo: the system clock plus an offset the story moves forward
/// to show an expired mandate without waiting for it.
#[derive(Clone, Default)]
struct DemoClock(Arc<AtomicI64>);

impl Clock for DemoClock {
    fn now_unix(&self) -> i64 {
        SystemClock.now_unix() + self.0.load(Ordering::SeqCst)
    }
}

/// The three services and a second merchant, in this process.
struct Services {
    directory: key_directory::Running,
    wallet: wallet::Running,
    merchant: merchant::Running,
    other_merchant: merchant::Running,
    merchant_clock: DemoClock,
    replay: &'static str,
    _data: tempfile::TempDir,
}

impl Services {
    async fn start() -> Result<Self> {
        let data = tempfile::tempdir()?;
        let directory = key_directory::spawn(key_directory::Config::local(
            data.path().join("keys.db"),
            vec![
                format!("{ISSUER}={DIRECTORY_TOKEN}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            ],
        ))
        .await
        .context("starting the key directory")?;
        let wallet = wallet::spawn(wallet::Config::local(
            ISSUER,
            data.path().join("wallet"),
            &directory.url(),
            DIRECTORY_TOKEN,
            ADMIN_TOKEN,
            vec![
                format!("{AGENT}={AGENT_TOKEN}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
                format!("{OTHER_AGENT}={OTHER_AGENT_TOKEN}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            ],
        ))
        .await
        .context("starting the wallet")?;
        let redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
        let merchant_clock = DemoClock::default();
        let start_merchant = |id: &str, dir: &str, clock: Arc<dyn Clock>| {
            let mut config =
                merchant::Config::local(id, data.path().join(dir), &directory.url(), redis.clone());
            // A short key cache, so the revoked key is refused within a second of revocation.
            config.key_cache_secs = 1;
            merchant::spawn(
                config,
                merchant::Parts {
                    clock,
                    ..merchant::Parts::default()
                },
            )
        };
        let merchant = start_merchant("acme-corp", "acme", Arc::new(merchant_clock.clone()))
            .await
            .context("starting the merchant")?;
        let other_merchant = start_merchant("globex", "globex", Arc::new(SystemClock))
            .await
            .context("starting the second merchant")?;
        Ok(Self {
            directory,
            wallet,
            merchant,
            other_merchant,
            merchant_clock,
            replay: if redis.is_some() {
                "Redis (REDIS_URL)"
            } else {
                "in memory"
            },
            _data: data,
        })
    }

    async fn stop(self) -> Result<()> {
        self.merchant.stop().await?;
        self.other_merchant.stop().await?;
        self.wallet.stop().await?;
        self.directory.stop().await?;
        Ok(())
    }
}

/// An HTTP caller: the agent, the user or the administrator.
struct Http(reqwest::Client);

impl Http {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self.0.request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
        want: StatusCode,
    ) -> Result<Value> {
        let (status, body) = self.send(method, url.clone(), token, &[], body).await?;
        if status != want {
            bail!("{url} answered {status}, expected {want}: {body}");
        }
        Ok(body)
    }
}

fn text<'a>(value: &'a Value, name: &str) -> Result<&'a str> {
    value
        .get(name)
        .and_then(Value::as_str)
        .with_context(|| format!("no {name:?} in {value}"))
}

fn money(minor: &Value, currency: &str) -> String {
    let minor = minor.as_u64().unwrap_or_default();
    format!("{currency} {}.{:02}", minor / 100, minor % 100)
}

/// The story's state between steps.
struct Story<'a> {
    s: &'a Services,
    http: Http,
    user_token: String,
    kid: String,
}

impl Story<'_> {
    /// The agent opens a checkout at `merchant_url`; returns the session.
    async fn checkout(&self, merchant_url: &str, items: Value) -> Result<Value> {
        self.http
            .expect(
                reqwest::Method::POST,
                format!("{merchant_url}/v1/checkout-sessions"),
                None,
                Some(json!({ "line_items": items })),
                StatusCode::CREATED,
            )
            .await
    }

    /// The agent asks for a mandate, the user reads the code and approves; returns the request
    /// id, the code and the mandate.
    async fn approved_mandate(&self, cart: &Value, ttl: u32) -> Result<(String, String, String)> {
        let wallet = self.s.wallet.url();
        let request = self
            .http
            .expect(
                reqwest::Method::POST,
                format!("{wallet}/v1/mandate-requests"),
                Some(AGENT_TOKEN),
                Some(json!({"user_id": "alice", "merchant_id": cart["merchant_id"], "cart": cart, "ttl_seconds": ttl})),
                StatusCode::CREATED,
            )
            .await?;
        let id = text(&request, "id")?.to_owned();
        let inbox = self
            .http
            .expect(
                reqwest::Method::GET,
                format!("{wallet}/v1/users/alice/notifications"),
                Some(&self.user_token),
                None,
                StatusCode::OK,
            )
            .await?;
        let otp = inbox["notifications"]
            .as_array()
            .and_then(|all| all.iter().find(|n| n["request_id"] == id.as_str()))
            .and_then(|n| n["otp"].as_str())
            .context("the request is not in alice's notifications")?
            .to_owned();
        self.http
            .expect(
                reqwest::Method::POST,
                format!("{wallet}/v1/mandate-requests/{id}/approve"),
                Some(&self.user_token),
                Some(json!({ "otp": otp })),
                StatusCode::OK,
            )
            .await?;
        let done = self
            .http
            .expect(
                reqwest::Method::GET,
                format!("{wallet}/v1/mandate-requests/{id}"),
                Some(AGENT_TOKEN),
                None,
                StatusCode::OK,
            )
            .await?;
        Ok((id, otp, text(&done, "mandate")?.to_owned()))
    }

    /// The agent presents `mandate` to complete `session` at `merchant_url`.
    async fn complete(
        &self,
        merchant_url: &str,
        session: &str,
        mandate: &str,
        agent: &str,
    ) -> Result<(StatusCode, Value)> {
        self.http
            .send(
                reqwest::Method::POST,
                format!("{merchant_url}/v1/checkout-sessions/{session}/complete"),
                Some(mandate),
                &[("AP2-Agent-Id", agent)],
                None,
            )
            .await
    }
}

/// Checks and prints one attack; returns whether it was refused with `code`.
fn refused(what: &str, got: &(StatusCode, Value), code: &str) -> bool {
    let got_code = got.1.get("code").and_then(Value::as_str).unwrap_or("-");
    let ok = got.0 == StatusCode::UNAUTHORIZED && got_code == code;
    println!(
        "  {} {what:<46} → {} {got_code}{}",
        if ok { "✓" } else { "✗" },
        got.0.as_u16(),
        if ok {
            String::new()
        } else {
            format!("   (expected 401 {code})")
        }
    );
    ok
}

/// Runs the demo; the exit status is 0 only if every step behaved.
pub async fn run() -> Result<bool> {
    let s = Services::start().await?;
    let outcome = story(&s).await;
    s.stop().await?;
    outcome
}

async fn story(s: &Services) -> Result<bool> {
    println!("AP2 intent mandates: the whole flow, in one process\n");
    println!("  key-directory  {}", s.directory.url());
    println!("  wallet         {}   (issuer {ISSUER})", s.wallet.url());
    println!(
        "  merchant       {}   (acme-corp; replay set {})",
        s.merchant.url(),
        s.replay
    );
    println!(
        "  merchant       {}   (globex, another merchant)\n",
        s.other_merchant.url()
    );
    let http = Http(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    );

    let user = http
        .expect(
            reqwest::Method::POST,
            format!("{}/v1/users", s.wallet.url()),
            Some(ADMIN_TOKEN),
            Some(json!({"user_id": "alice"})),
            StatusCode::CREATED,
        )
        .await?;
    let story = Story {
        s,
        user_token: text(&user, "user_token")?.to_owned(),
        kid: text(&user, "kid")?.to_owned(),
        http,
    };
    println!(
        "1. The wallet creates user alice: a P-256 key, kid {}",
        story.kid
    );
    let key = story
        .http
        .expect(
            reqwest::Method::GET,
            format!("{}/v1/keys/{}", s.directory.url(), story.kid),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    println!(
        "   the key directory lists it: issuer {}, subject {}, {}",
        text(&key, "issuer")?,
        text(&key, "subject")?,
        text(&key, "status")?
    );

    let items = json!([{"id": "shoe-001", "quantity": 1}, {"id": "sock-10", "quantity": 3}]);
    let session = story.checkout(&s.merchant.url(), items.clone()).await?;
    let cart = session["cart"].clone();
    let currency = text(&cart, "currency")?.to_owned();
    println!(
        "2. {AGENT} opens a checkout at acme-corp: 1 × Trail Runner, 3 × Wool socks = {}",
        money(&cart["total"], &currency)
    );
    println!("   cart_hash {}", text(&session, "cart_hash")?);

    let (request_id, otp, mandate) = story.approved_mandate(&cart, 120).await?;
    println!("3. {AGENT} asks the wallet for a mandate for that cart: request {request_id}");
    println!(
        "4. alice reads her notification (acme-corp, {AGENT}, {}) with code {otp}",
        money(&cart["total"], &currency)
    );
    println!("   and approves with it: the wallet mints an ES256 mandate valid 120 s");
    let session_id = text(&session, "id")?.to_owned();
    let paid = story
        .complete(&s.merchant.url(), &session_id, &mandate, AGENT)
        .await?;
    if paid.0 != StatusCode::OK {
        println!("✗ the checkout was refused: {} {}", paid.0, paid.1);
        return Ok(false);
    }
    println!(
        "5. {AGENT} completes the checkout with the mandate: order {}, {} charged\n",
        text(&paid.1, "order_id")?,
        money(&paid.1["amount"], &currency)
    );

    println!("Attacks, each refused by the merchant:");
    let mut all = true;

    let second = story.checkout(&s.merchant.url(), items.clone()).await?;
    let second_id = text(&second, "id")?.to_owned();
    let got = story
        .complete(&s.merchant.url(), &second_id, &mandate, AGENT)
        .await?;
    all &= refused("the same mandate presented again", &got, "mandate_replayed");

    // A fresh mandate for the original cart, then a dearer cart at checkout.
    let (_, _, fresh) = story.approved_mandate(&cart, 120).await?;
    let dearer = story
        .checkout(
            &s.merchant.url(),
            json!([{"id": "shoe-001", "quantity": 2}]),
        )
        .await?;
    let got = story
        .complete(&s.merchant.url(), text(&dearer, "id")?, &fresh, AGENT)
        .await?;
    all &= refused(
        "the cart swapped after approval",
        &got,
        "mandate_cart_mismatch",
    );

    let got = story
        .complete(&s.merchant.url(), &second_id, &fresh, OTHER_AGENT)
        .await?;
    all &= refused(
        &format!("another agent ({OTHER_AGENT}) presenting it"),
        &got,
        "mandate_agent_mismatch",
    );

    let elsewhere = story
        .checkout(&s.other_merchant.url(), items.clone())
        .await?;
    let got = story
        .complete(
            &s.other_merchant.url(),
            text(&elsewhere, "id")?,
            &fresh,
            AGENT,
        )
        .await?;
    all &= refused(
        "another merchant (globex) receiving it",
        &got,
        "mandate_audience_mismatch",
    );

    // Ten minutes later at the merchant: the mandate lived 120 s.
    s.merchant_clock.0.store(600, Ordering::SeqCst);
    let got = story
        .complete(&s.merchant.url(), &second_id, &fresh, AGENT)
        .await?;
    s.merchant_clock.0.store(0, Ordering::SeqCst);
    all &= refused(
        "presented ten minutes later (expired)",
        &got,
        "mandate_expired",
    );

    // The wallet's issuer revokes alice's key; the merchant's key cache lasts 1 s here.
    let directory = DirectoryClient::new(&s.directory.url(), DirectoryClientConfig::default())
        .map_err(anyhow::Error::msg)?;
    directory
        .revoke(
            &SecretString::from(DIRECTORY_TOKEN),
            &Kid::parse(&story.kid)?,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = story
        .complete(&s.merchant.url(), &second_id, &fresh, AGENT)
        .await?;
    all &= refused(
        "signed with a key revoked since",
        &got,
        "mandate_key_revoked",
    );

    let unpaid = story
        .http
        .expect(
            reqwest::Method::GET,
            format!("{}/v1/checkout-sessions/{second_id}", s.merchant.url()),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    let untouched = unpaid["status"] == "ready_for_complete";
    println!(
        "  {} nothing was charged by the attacks{}",
        if untouched { "✓" } else { "✗" },
        if untouched {
            String::new()
        } else {
            format!(": {unpaid}")
        }
    );
    all &= untouched;
    println!();
    if all {
        println!("Every step behaved as expected.");
    } else {
        println!("Some steps did NOT behave as expected.");
    }
    Ok(all)
}
