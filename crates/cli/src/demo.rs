//! `ap2 demo`: the key directory, the wallet and two merchants started in this process on free
//! loopback ports, and the whole story told over HTTP: a user, a checkout, a mandate request,
//! the approval with the one-time code, the paid order, then the attacks, each refused with the
//! merchant's code. The agent holds its own key and proves it on every call (SPEC §8), so the
//! mandate is bound to it. Exits 0 only if every step behaved as expected.

// Only `serde_json::Value` is indexed here, and its `Index` answers `Null` for a missing member
// instead of panicking.
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ap2_directory_client::{DirectoryClient, DirectoryClientConfig};
use ap2_mandate::{Clock, Jkt, Kid, LocalSigner, ProofRequest, SystemClock, make_proof};
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
const BACKEND_TOKEN: &str = "demo-backend-token";

/// Where the services are and the secrets the story's actors hold.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// Play against a running key directory instead of starting one (with the other URLs).
    #[arg(long, env = "AP2_KEY_DIRECTORY_URL", requires_all = ["wallet_url", "merchant_url", "other_merchant_url"])]
    pub key_directory_url: Option<String>,
    /// The running wallet.
    #[arg(long, env = "AP2_WALLET_URL")]
    pub wallet_url: Option<String>,
    /// The running merchant the agent buys from.
    #[arg(long, env = "AP2_MERCHANT_URL")]
    pub merchant_url: Option<String>,
    /// Another running merchant, which must refuse the mandate.
    #[arg(long, env = "AP2_OTHER_MERCHANT_URL")]
    pub other_merchant_url: Option<String>,
    /// The wallet's admin token.
    #[arg(long, env = "AP2_ADMIN_TOKEN", default_value = ADMIN_TOKEN, hide_env_values = true, allow_hyphen_values = true)]
    pub admin_token: String,
    /// The agent's token at the wallet (its id is agent-7).
    #[arg(long, env = "AP2_AGENT_TOKEN", default_value = AGENT_TOKEN, hide_env_values = true, allow_hyphen_values = true)]
    pub agent_token: String,
    /// The wallet's issuer token at the key directory (to revoke the user's key).
    #[arg(long, env = "AP2_DIRECTORY_TOKEN", default_value = DIRECTORY_TOKEN, hide_env_values = true, allow_hyphen_values = true)]
    pub directory_token: String,
    /// The merchants' backend token for `POST /v1/mandates/verify` (SPEC §9), which the demo
    /// uses, as the merchant's backend would, to watch a mandate's state without spending it.
    #[arg(long, env = "AP2_BACKEND_TOKEN", default_value = BACKEND_TOKEN, hide_env_values = true, allow_hyphen_values = true)]
    pub backend_token: String,
    /// Wait for a person to approve the first purchase on its approval page (SPEC §12: with
    /// the code the demo prints, or a passkey) instead of approving it by code.
    #[arg(long)]
    pub interactive: bool,
}

/// The URLs the story talks to.
struct Urls {
    directory: String,
    wallet: String,
    merchant: String,
    other_merchant: String,
    replay: String,
}

/// The three services and a second merchant, in this process.
struct Services {
    directory: key_directory::Running,
    wallet: wallet::Running,
    merchant: merchant::Running,
    other_merchant: merchant::Running,
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
        let mut wallet_config = wallet::Config::local(
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
        );
        // The approval page's passkeys need a host name (a WebAuthn relying party id is never
        // an IP address): the wallet is reached as localhost, on a port chosen first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        wallet_config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wallet_config.public_url = Some(format!("http://localhost:{port}"));
        let wallet = wallet::spawn(wallet_config)
            .await
            .context("starting the wallet")?;
        let redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
        let backend: ap2_service::NamedToken = format!("demo-backend={BACKEND_TOKEN}")
            .parse()
            .map_err(anyhow::Error::msg)?;
        let start_merchant = |id: &str, dir: &str| {
            let mut config =
                merchant::Config::local(id, data.path().join(dir), &directory.url(), redis.clone());
            // So that the demo takes seconds: a 1-second mandate is expired a second later (the
            // leeway). A revoked key is refused at once: the merchant follows the directory's
            // event stream, with the key cache's default of 60 s.
            config.leeway_secs = 1;
            config.backend_tokens = vec![backend.clone()];
            merchant::spawn(config, merchant::Parts::default())
        };
        let merchant = start_merchant("acme-corp", "acme")
            .await
            .context("starting the merchant")?;
        let other_merchant = start_merchant("globex", "globex")
            .await
            .context("starting the second merchant")?;
        Ok(Self {
            directory,
            wallet,
            merchant,
            other_merchant,
            replay: if redis.is_some() {
                "Redis (REDIS_URL)"
            } else {
                "in memory"
            },
            _data: data,
        })
    }

    fn urls(&self) -> Urls {
        Urls {
            directory: self.directory.url(),
            // As its public URL names it (the base of the proofs' htu and of its links).
            wallet: self.wallet.url().replace("127.0.0.1", "localhost"),
            merchant: self.merchant.url(),
            other_merchant: self.other_merchant.url(),
            replay: self.replay.to_owned(),
        }
    }

    async fn stop(self) -> Result<()> {
        self.merchant.stop().await?;
        self.other_merchant.stop().await?;
        self.wallet.stop().await?;
        self.directory.stop().await?;
        Ok(())
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// Nothing.
    None,
    /// `Authorization: Bearer <token>` (the wallet's tokens).
    Bearer(&'a str),
    /// `Authorization: DPoP <mandate>`.
    Dpop(&'a str),
}

/// An HTTP caller: the agent, the user or the administrator.
struct Http(reqwest::Client);

impl Http {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self.0.request(method, &url);
        match auth {
            Auth::None => {}
            Auth::Bearer(token) => request = request.bearer_auth(token),
            Auth::Dpop(token) => request = request.header("Authorization", format!("DPoP {token}")),
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
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<Value>,
        want: StatusCode,
    ) -> Result<Value> {
        let (status, body) = self.send(method, url.clone(), auth, headers, body).await?;
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

/// A DPoP proof by `key` for `method url`, presenting `mandate` if given (SPEC §8).
fn proof(key: &LocalSigner, method: &str, url: &str, mandate: Option<&str>) -> Result<String> {
    Ok(make_proof(
        key,
        &ProofRequest {
            htm: method,
            htu: url,
            iat: SystemClock.now_unix(),
            jti: None,
            token: mandate,
            nonce: None,
        },
    )?)
}

/// The agents of the story and the thief, each with its own key.
struct Keys {
    agent: LocalSigner,
    other_agent: LocalSigner,
    thief: LocalSigner,
}

/// The story's state between steps.
struct Story {
    urls: Urls,
    http: Http,
    secrets: Endpoints,
    keys: Keys,
    user_id: String,
    user_token: String,
    kid: String,
}

impl Story {
    /// `key`'s agent opens a checkout at `merchant_url`, with a proof; returns the session.
    async fn checkout_as(
        &self,
        key: &LocalSigner,
        merchant_url: &str,
        items: &Value,
    ) -> Result<Value> {
        let url = format!("{merchant_url}/v1/checkout-sessions");
        let proof = proof(key, "POST", &url, None)?;
        self.http
            .expect(
                reqwest::Method::POST,
                url,
                Auth::None,
                &[("DPoP", &proof)],
                Some(json!({ "line_items": items })),
                StatusCode::CREATED,
            )
            .await
    }

    async fn checkout(&self, merchant_url: &str, items: &Value) -> Result<Value> {
        self.checkout_as(&self.keys.agent, merchant_url, items)
            .await
    }

    /// The agent asks for a mandate (with a proof of its key), the user reads the code and
    /// approves; returns the request, the code and the mandate.
    async fn approved_mandate(&self, cart: &Value, ttl: u32) -> Result<(Value, String, String)> {
        let (request, otp, mandate, _) = self.approved_mandate_with_link(cart, ttl).await?;
        Ok((request, otp, mandate))
    }

    /// As [`Story::approved_mandate`], with the approval page's link as well.
    async fn approved_mandate_with_link(
        &self,
        cart: &Value,
        ttl: u32,
    ) -> Result<(Value, String, String, String)> {
        let (request, id, otp, link) = self.ask_with_link(cart, ttl).await?;
        let wallet = &self.urls.wallet;
        self.http
            .expect(
                reqwest::Method::POST,
                format!("{wallet}/v1/mandate-requests/{id}/approve"),
                Auth::Bearer(&self.user_token),
                &[],
                Some(json!({ "otp": otp })),
                StatusCode::OK,
            )
            .await?;
        Ok((request, otp, self.mandate_of(&id).await?, link))
    }

    /// The mandate of approved request `id`, as the agent collects it.
    async fn mandate_of(&self, id: &str) -> Result<String> {
        let done = self
            .http
            .expect(
                reqwest::Method::GET,
                format!("{}/v1/mandate-requests/{id}", self.urls.wallet),
                Auth::Bearer(&self.secrets.agent_token),
                &[],
                None,
                StatusCode::OK,
            )
            .await?;
        Ok(text(&done, "mandate")?.to_owned())
    }

    /// The agent asks for a mandate for `cart`; returns the request, its id, and the code
    /// from the user's notifications.
    async fn ask(&self, cart: &Value, ttl: u32) -> Result<(Value, String, String)> {
        let (request, id, otp, _) = self.ask_with_link(cart, ttl).await?;
        Ok((request, id, otp))
    }

    /// As [`Story::ask`], with the approval page's link of the notification.
    async fn ask_with_link(
        &self,
        cart: &Value,
        ttl: u32,
    ) -> Result<(Value, String, String, String)> {
        let wallet = &self.urls.wallet;
        let agent = self.secrets.agent_token.as_str();
        let url = format!("{wallet}/v1/mandate-requests");
        let request_proof = proof(&self.keys.agent, "POST", &url, None)?;
        let request = self
            .http
            .expect(
                reqwest::Method::POST,
                url,
                Auth::Bearer(agent),
                &[("DPoP", &request_proof)],
                Some(json!({"user_id": self.user_id, "merchant_id": cart["merchant_id"], "cart": cart, "ttl_seconds": ttl})),
                StatusCode::CREATED,
            )
            .await?;
        let id = text(&request, "id")?.to_owned();
        let inbox = self
            .http
            .expect(
                reqwest::Method::GET,
                format!("{wallet}/v1/users/{}/notifications", self.user_id),
                Auth::Bearer(&self.user_token),
                &[],
                None,
                StatusCode::OK,
            )
            .await?;
        let note = inbox["notifications"]
            .as_array()
            .and_then(|all| all.iter().find(|n| n["request_id"] == id.as_str()))
            .context("the request is not in the user's notifications")?;
        let otp = note["otp"]
            .as_str()
            .context("the notification has no code (the wallet approves with passkeys only)")?
            .to_owned();
        let link = text(note, "approval_url")?.to_owned();
        Ok((request, id, otp, link))
    }

    /// The agent asks; a person approves on the page (or denies, or lets it expire); returns
    /// the request, the code and the mandate.
    async fn approved_by_person(&self, cart: &Value, ttl: u32) -> Result<(Value, String, String)> {
        let (request, id, otp, link) = self.ask_with_link(cart, ttl).await?;
        println!("   Open the approval page and approve (code {otp}, or a passkey once enrolled):");
        println!("   {link}");
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            let state = self
                .http
                .expect(
                    reqwest::Method::GET,
                    format!("{}/v1/mandate-requests/{id}", self.urls.wallet),
                    Auth::Bearer(&self.secrets.agent_token),
                    &[],
                    None,
                    StatusCode::OK,
                )
                .await?;
            match state["status"].as_str() {
                Some("approved") => {
                    return Ok((request, otp, text(&state, "mandate")?.to_owned()));
                }
                Some("pending_approval") if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => bail!(
                    "the request was not approved: {}",
                    other.unwrap_or("unknown")
                ),
            }
        }
    }

    /// The user enters the code of request `id`: the wallet's answer.
    async fn approve(&self, id: &str, otp: &str) -> Result<(StatusCode, Value)> {
        self.http
            .send(
                reqwest::Method::POST,
                format!("{}/v1/mandate-requests/{id}/approve", self.urls.wallet),
                Auth::Bearer(&self.user_token),
                &[],
                Some(json!({ "otp": otp })),
            )
            .await
    }

    fn complete_url(merchant_url: &str, session: &str) -> String {
        format!("{merchant_url}/v1/checkout-sessions/{session}/complete")
    }

    /// `key`'s holder presents `mandate` (as `auth` says) with a proof made for `proof_url`,
    /// naming `agent`, to complete `session` at `merchant_url`.
    async fn present(
        &self,
        (merchant_url, session): (&str, &str),
        mandate: &str,
        (agent, key): (&str, &LocalSigner),
        proof_url: &str,
        auth: Auth<'_>,
    ) -> Result<(StatusCode, Value)> {
        let dpop = proof(key, "POST", proof_url, Some(mandate))?;
        self.http
            .send(
                reqwest::Method::POST,
                Self::complete_url(merchant_url, session),
                auth,
                &[("AP2-Agent-Id", agent), ("DPoP", &dpop)],
                None,
            )
            .await
    }

    /// The honest completion: `key`'s agent presents `mandate` for `session`.
    async fn complete(
        &self,
        merchant_url: &str,
        session: &str,
        mandate: &str,
        agent: &str,
        key: &LocalSigner,
    ) -> Result<(StatusCode, Value)> {
        let url = Self::complete_url(merchant_url, session);
        self.present(
            (merchant_url, session),
            mandate,
            (agent, key),
            &url,
            Auth::Dpop(mandate),
        )
        .await
    }

    /// Asks the merchant, without spending the mandate, until it answers `code` (a mandate
    /// expiring, a revocation reaching the merchant's key cache) or `limit` passes.
    async fn wait_for_code(
        &self,
        mandate: &str,
        cart: &Value,
        code: &str,
        limit: Duration,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (_, body) = self
                .http
                .send(
                    reqwest::Method::POST,
                    format!("{}/v1/mandates/verify", self.urls.merchant),
                    Auth::Bearer(&self.secrets.backend_token),
                    &[],
                    Some(json!({"mandate": mandate, "agent_id": AGENT, "cart": cart, "consume": false})),
                )
                .await?;
            if body["code"] == code || std::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Checks and prints one attack; returns whether it was refused with `status` and `code`.
fn refused_with(what: &str, got: &(StatusCode, Value), status: StatusCode, code: &str) -> bool {
    let got_code = got.1.get("code").and_then(Value::as_str).unwrap_or("-");
    let ok = got.0 == status && got_code == code;
    println!(
        "  {} {what:<52} → {} {got_code}{}",
        if ok { "✓" } else { "✗" },
        got.0.as_u16(),
        if ok {
            String::new()
        } else {
            format!("   (expected {} {code})", status.as_u16())
        }
    );
    ok
}

/// As [`refused_with`], for the 401 refusals of SPEC §4 and §8.
fn refused(what: &str, got: &(StatusCode, Value), code: &str) -> bool {
    refused_with(what, got, StatusCode::UNAUTHORIZED, code)
}

/// Runs the demo, against services started here or, with every URL given, running ones.
/// The result is true only if every step behaved.
pub async fn run(endpoints: Endpoints) -> Result<bool> {
    let external = match (
        &endpoints.key_directory_url,
        &endpoints.wallet_url,
        &endpoints.merchant_url,
        &endpoints.other_merchant_url,
    ) {
        (Some(directory), Some(wallet), Some(merchant), Some(other)) => Some(Urls {
            directory: directory.trim_end_matches('/').to_owned(),
            wallet: wallet.trim_end_matches('/').to_owned(),
            merchant: merchant.trim_end_matches('/').to_owned(),
            other_merchant: other.trim_end_matches('/').to_owned(),
            replay: "as configured there".to_owned(),
        }),
        _ => None,
    };
    match external {
        Some(urls) => {
            // Running services keep their users: a fresh user id per run.
            let suffix = ap2_mandate::Jti::random()?
                .as_str()
                .chars()
                .take(6)
                .collect::<String>();
            story(urls, endpoints, format!("alice-{suffix}")).await
        }
        None => {
            let services = Services::start().await?;
            let outcome = story(services.urls(), endpoints, "alice".to_owned()).await;
            services.stop().await?;
            outcome
        }
    }
}

async fn story(urls: Urls, secrets: Endpoints, user_id: String) -> Result<bool> {
    println!("AP2 intent mandates: the whole flow\n");
    println!("  key-directory  {}", urls.directory);
    println!("  wallet         {}", urls.wallet);
    println!(
        "  merchant       {}   (acme-corp; replay set {})",
        urls.merchant, urls.replay
    );
    println!(
        "  merchant       {}   (another merchant)\n",
        urls.other_merchant
    );
    let http = Http(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
    );

    let user = http
        .expect(
            reqwest::Method::POST,
            format!("{}/v1/users", urls.wallet),
            Auth::Bearer(&secrets.admin_token),
            &[],
            Some(json!({ "user_id": user_id })),
            StatusCode::CREATED,
        )
        .await?;
    let story = Story {
        user_token: text(&user, "user_token")?.to_owned(),
        kid: text(&user, "kid")?.to_owned(),
        urls,
        http,
        secrets,
        keys: Keys {
            agent: LocalSigner::generate()?,
            other_agent: LocalSigner::generate()?,
            thief: LocalSigner::generate()?,
        },
        user_id,
    };
    let keys = &story.keys;
    let user_id = story.user_id.as_str();
    println!(
        "1. The wallet creates user {user_id}: a P-256 key, kid {}",
        story.kid
    );
    let key = story
        .http
        .expect(
            reqwest::Method::GET,
            format!("{}/v1/keys/{}", story.urls.directory, story.kid),
            Auth::None,
            &[],
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
    println!(
        "   {AGENT} holds its own P-256 key, jkt {}",
        Jkt::of(keys.agent.public_key())
    );

    let merchant = story.urls.merchant.clone();
    let items = json!([{"id": "shoe-001", "quantity": 1}, {"id": "sock-10", "quantity": 3}]);
    let session = story.checkout(&merchant, &items).await?;
    let cart = session["cart"].clone();
    let currency = text(&cart, "currency")?.to_owned();
    let total = money(&cart["total"], &currency);
    println!(
        "2. {AGENT} opens a checkout at acme-corp with a DPoP proof of its key (the session is\n   \
         its key's): 1 × Trail Runner, 3 × Wool socks = {total}"
    );
    println!("   cart_hash {}", text(&session, "cart_hash")?);

    let (request, otp, mandate, link) = if story.secrets.interactive {
        println!("3. {AGENT} asks the wallet for a mandate for that cart, with a proof");
        println!("4. {user_id} is notified (acme-corp, {AGENT}, {total}).");
        let (request, otp, mandate) = story.approved_by_person(&cart, 120).await?;
        (request, otp, mandate, None)
    } else {
        let (request, otp, mandate, link) = story.approved_mandate_with_link(&cart, 120).await?;
        (request, otp, mandate, Some(link))
    };
    println!(
        "3. {AGENT} asks the wallet for a mandate for that cart, with a proof: request {}",
        text(&request, "id")?
    );
    println!(
        "4. {user_id} reads the notification (acme-corp, {AGENT}, {total}, code {otp}, and\n   \
         the link of its approval page) and approves: the wallet mints an ES256 mandate valid\n   \
         120 s, bound to cnf.jkt {}, saying how the user approved (amr {})",
        text(&request, "cnf_jkt")?,
        claims_of(&mandate)?["amr"]
    );
    if let Some(link) = link {
        println!("   The approval page (`ap2 demo --interactive` waits for a person there):");
        println!("   {link}");
    }
    let session_id = text(&session, "id")?.to_owned();
    let paid = story
        .complete(&merchant, &session_id, &mandate, AGENT, &keys.agent)
        .await?;
    if paid.0 != StatusCode::OK {
        println!("✗ the checkout was refused: {} {}", paid.0, paid.1);
        return Ok(false);
    }
    println!(
        "5. {AGENT} completes the checkout with Authorization: DPoP <mandate> and a fresh\n   \
         proof: order {}, {} charged\n",
        text(&paid.1, "order_id")?,
        money(&paid.1["amount"], &currency)
    );

    println!("Attacks, each refused by the merchant:");
    let mut all = true;

    let second = story.checkout(&merchant, &items).await?;
    let second_id = text(&second, "id")?.to_owned();
    let got = story
        .complete(&merchant, &second_id, &mandate, AGENT, &keys.agent)
        .await?;
    all &= refused("the same mandate presented again", &got, "mandate_replayed");

    // A fresh mandate for the original cart, then a dearer cart at checkout.
    let (_, _, fresh) = story.approved_mandate(&cart, 120).await?;
    let dearer = story
        .checkout(&merchant, &json!([{"id": "shoe-001", "quantity": 2}]))
        .await?;
    let got = story
        .complete(&merchant, text(&dearer, "id")?, &fresh, AGENT, &keys.agent)
        .await?;
    all &= refused(
        "the cart swapped after approval",
        &got,
        "mandate_cart_mismatch",
    );

    // Another agent, with its own key and its own session for the same cart.
    let theirs = story
        .checkout_as(&keys.other_agent, &merchant, &items)
        .await?;
    let got = story
        .complete(
            &merchant,
            text(&theirs, "id")?,
            &fresh,
            OTHER_AGENT,
            &keys.other_agent,
        )
        .await?;
    all &= refused(
        &format!("another agent ({OTHER_AGENT}) presenting it"),
        &got,
        "mandate_agent_mismatch",
    );

    let other = story.urls.other_merchant.clone();
    let elsewhere = story.checkout(&other, &items).await?;
    let got = story
        .complete(&other, text(&elsewhere, "id")?, &fresh, AGENT, &keys.agent)
        .await?;
    all &= refused(
        "another merchant receiving it",
        &got,
        "mandate_audience_mismatch",
    );

    // The mandate copied out of the agent's logs: the thief opens its own session for the same
    // cart and presents it in the agent's name, with a proof of its own key.
    let thiefs = story.checkout_as(&keys.thief, &merchant, &items).await?;
    let got = story
        .complete(&merchant, text(&thiefs, "id")?, &fresh, AGENT, &keys.thief)
        .await?;
    all &= refused(
        "a thief presenting it with its own key",
        &got,
        "dpop_key_mismatch",
    );

    // An eavesdropper replays the agent's captured proof, to open sessions in its name.
    let url = format!("{merchant}/v1/checkout-sessions");
    let captured = proof(&keys.agent, "POST", &url, None)?;
    let body = json!({ "line_items": items });
    story
        .http
        .expect(
            reqwest::Method::POST,
            url.clone(),
            Auth::None,
            &[("DPoP", &captured)],
            Some(body.clone()),
            StatusCode::CREATED,
        )
        .await?;
    let got = story
        .http
        .send(
            reqwest::Method::POST,
            url,
            Auth::None,
            &[("DPoP", &captured)],
            Some(body),
        )
        .await?;
    all &= refused("a captured proof sent again", &got, "dpop_proof_replayed");

    let other_url = Story::complete_url(&merchant, &session_id);
    let got = story
        .present(
            (&merchant, &second_id),
            &fresh,
            (AGENT, &keys.agent),
            &other_url,
            Auth::Dpop(&fresh),
        )
        .await?;
    all &= refused("a proof made for another URL", &got, "dpop_proof_mismatch");

    let second_url = Story::complete_url(&merchant, &second_id);
    let got = story
        .present(
            (&merchant, &second_id),
            &fresh,
            (AGENT, &keys.agent),
            &second_url,
            Auth::Bearer(&fresh),
        )
        .await?;
    all &= refused(
        "the bound mandate presented as Bearer",
        &got,
        "dpop_proof_required",
    );

    let got = story
        .complete(
            &merchant,
            &second_id,
            &fresh,
            OTHER_AGENT,
            &keys.other_agent,
        )
        .await?;
    all &= refused_with(
        &format!("{OTHER_AGENT} completing {AGENT}'s session"),
        &got,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );

    // A mandate approved for one second, presented once the merchant counts it expired.
    let (_, _, short) = story.approved_mandate(&cart, 1).await?;
    story
        .wait_for_code(&short, &cart, "mandate_expired", Duration::from_secs(60))
        .await?;
    let got = story
        .complete(&merchant, &second_id, &short, AGENT, &keys.agent)
        .await?;
    all &= refused("presented after it expired", &got, "mandate_expired");

    // The wallet's issuer revokes the user's key; the directory's event stream tells the
    // merchant at once (SPEC §10).
    let directory = DirectoryClient::new(&story.urls.directory, DirectoryClientConfig::default())
        .map_err(anyhow::Error::msg)?;
    directory
        .revoke(
            &SecretString::from(story.secrets.directory_token.clone()),
            &Kid::parse(&story.kid)?,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    story
        .wait_for_code(
            &fresh,
            &cart,
            "mandate_key_revoked",
            Duration::from_secs(70),
        )
        .await?;
    let got = story
        .complete(&merchant, &second_id, &fresh, AGENT, &keys.agent)
        .await?;
    all &= refused(
        "signed with a key revoked since",
        &got,
        "mandate_key_revoked",
    );

    // The wallet follows the same stream: it will not sign with the revoked key (SPEC §10).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (pending, otp, got) = loop {
        let (_, pending, otp) = story.ask(&cart, 120).await?;
        let got = story.approve(&pending, &otp).await?;
        if got.0 != StatusCode::OK || std::time::Instant::now() >= deadline {
            break (pending, otp, got);
        }
        // Approved before the revocation reached the wallet: ask again.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    all &= refused_with(
        "the wallet asked to sign with the revoked key",
        &got,
        StatusCode::CONFLICT,
        "user_key_revoked",
    );
    // The user gets a new key; the same request is then approved with it, and pays.
    let rotated = story
        .http
        .expect(
            reqwest::Method::POST,
            format!(
                "{}/v1/users/{}/keys/rotate",
                story.urls.wallet, story.user_id
            ),
            Auth::Bearer(&story.user_token),
            &[],
            None,
            StatusCode::OK,
        )
        .await?;
    println!(
        "  the user's key is rotated: {} replaces {}",
        text(&rotated, "kid")?,
        text(&rotated, "previous_kid")?
    );
    let approved = story.approve(&pending, &otp).await?;
    let paid = if approved.0 == StatusCode::OK {
        let mandate = story.mandate_of(&pending).await?;
        let third = story.checkout(&merchant, &items).await?;
        story
            .complete(&merchant, text(&third, "id")?, &mandate, AGENT, &keys.agent)
            .await?
    } else {
        approved
    };
    let ok = paid.0 == StatusCode::OK;
    println!(
        "  {} approved again with the new key: {}",
        if ok { "✓" } else { "✗" },
        if ok {
            format!("order {}", text(&paid.1, "order_id")?)
        } else {
            format!("{} {}", paid.0, paid.1)
        }
    );
    all &= ok;

    let session_url = format!("{merchant}/v1/checkout-sessions/{second_id}");
    let look = proof(&keys.agent, "GET", &session_url, None)?;
    let unpaid = story
        .http
        .expect(
            reqwest::Method::GET,
            session_url,
            Auth::None,
            &[("DPoP", &look)],
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

/// The claims of a compact JWS (no signature check: for printing what was minted).
fn claims_of(token: &str) -> Result<Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1).context("not a compact JWS")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}
