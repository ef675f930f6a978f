//! Running the real service binaries as child processes on fixed loopback ports, so that a
//! service can be stopped (SIGTERM) and started again where the others expect it.
#![forbid(unsafe_code)]
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ap2_mandate::{LocalSigner, Signer};
pub use ap2_testkit::{RedisServer, free_port};

pub mod webdriver;

/// Where cargo put the service binaries: next to this test's own `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    if !path.exists() {
        // `cargo test -p ap2-e2e` alone does not build other packages' binaries.
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--bin",
                name,
                "-p",
                if name == "ap2" { "ap2-cli" } else { name },
            ])
            .args(if dir.ends_with("release") {
                &["--release"][..]
            } else {
                &[][..]
            })
            .status()
            .expect("running cargo build");
        assert!(status.success(), "could not build {name}");
    }
    path
}

/// One service process.
pub struct Service {
    name: &'static str,
    port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Starts `name` with `args` and `envs` on a free port, logging to `log_dir`.
    pub async fn start(
        name: &'static str,
        args: &[&str],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Self {
        Self::start_on(name, free_port(), args, envs, log_dir).await
    }

    /// As [`Service::start`], on `port` (for a service that must know its own URL first).
    pub async fn start_on(
        name: &'static str,
        port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Self {
        let mut service = Self {
            name,
            port,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        service.spawn().await;
        service
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary(self.name))
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
        self.wait_alive().await;
    }

    /// Polls `/healthz` until the process answers.
    async fn wait_alive(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.url())).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{} exited with {status}:\n{}", self.name, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/readyz` until the service and its dependencies answer.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.url())).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, and the process must exit 0 (a graceful stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            let exit = child.wait().expect("wait");
            assert!(
                exit.success(),
                "{} did not stop gracefully: {exit}\n{}",
                self.name,
                self.logs()
            );
        }
    }

    /// Stops it and starts it again on the same port with the same configuration.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The one-shoe cart of the SPEC's first vector, at acme-corp.
pub fn shoe_cart() -> serde_json::Value {
    serde_json::json!({"merchant_id": "acme-corp", "currency": "USD", "total": 8999, "line_items": [
        {"id": "shoe-001", "title": "Trail Runner", "quantity": 1, "unit_price": 8999}]})
}

/// The key directory binary with its database in `dir` and one issuer, `issuer=token`.
pub async fn key_directory(dir: &Path, issuer: &str, token: &str) -> Service {
    let db = dir.join("keys.db");
    Service::start(
        "key-directory",
        &[
            "--db",
            db.to_str().expect("a UTF-8 path"),
            "--issuer-token",
            &format!("{issuer}={token}"),
        ],
        &[],
        dir,
    )
    .await
}

/// A fresh user key, registered for `subject` at `directory` with the issuer's `token`.
pub async fn register_user(directory: &Service, token: &str, subject: &str) -> LocalSigner {
    let key = LocalSigner::generate().expect("a key");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/keys", directory.url()))
        .bearer_auth(token)
        .json(&serde_json::json!({"subject": subject, "jwk": key.public_key().to_jwk(key.kid())}))
        .send()
        .await
        .expect("the directory answers");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    key
}

/// An unbound mandate (SPEC §4 alone) from `issuer` for `subject`, for exactly `cart` at its
/// merchant, for agent-7, valid 300 s.
pub fn unbound_mandate(
    key: &LocalSigner,
    issuer: &str,
    subject: &str,
    cart: &serde_json::Value,
) -> String {
    use ap2_mandate::{AgentId, Ap2Scope, Cart, Clock, IntentMandate, Jti, SystemClock};
    let cart = Cart::from_json(cart.to_string().as_bytes()).expect("a SPEC §3 cart");
    let now = SystemClock.now_unix();
    ap2_mandate::mint(
        key,
        &IntentMandate {
            iss: issuer.into(),
            sub: subject.into(),
            aud: cart.merchant_id().clone(),
            iat: now,
            nbf: None,
            exp: now + 300,
            jti: Jti::random().expect("randomness"),
            scope: Ap2Scope {
                max_amount: cart.total(),
                cart_hash: cart.hash().clone(),
                allow_agent_id: AgentId::parse("agent-7").expect("an agent id"),
            },
            cnf: None,
            amr: None,
        },
    )
    .expect("minted")
}

/// The merchant acme-corp binary, its data and log in `dir` (made if missing), talking to
/// `directory`, with `extra` flags and `envs` on top (e.g. `--require-agent-binding false`).
pub async fn merchant(
    dir: &Path,
    directory: &Service,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Service {
    std::fs::create_dir_all(dir).expect("the merchant's directory");
    let data = dir.join("data");
    let url = directory.url();
    let mut args = vec![
        "--merchant-id",
        "acme-corp",
        "--data-dir",
        data.to_str().expect("a UTF-8 path"),
        "--key-directory-url",
        &url,
    ];
    args.extend_from_slice(extra);
    Service::start("merchant", &args, envs, dir).await
}
