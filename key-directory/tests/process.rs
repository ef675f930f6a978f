//! The real `key-directory` binary: configuration from flags and environment, a graceful stop
//! on SIGTERM, keys that survive the restart, and no secret in the logs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ap2_mandate::{LocalSigner, Signer};
use serde_json::{Value, json};

const TOKEN: &str = "very-secret-issuer-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Process {
    child: Child,
    url: String,
}

async fn start(db: &std::path::Path, via_env: bool) -> Process {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_key-directory"));
    cmd.arg("--db")
        .arg(db)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    if via_env {
        cmd.env(
            "KEY_DIRECTORY_ISSUER_TOKENS",
            format!("https://wallet.example={TOKEN},https://b.example=other"),
        );
    } else {
        cmd.arg("--issuer-token")
            .arg(format!("https://wallet.example={TOKEN}"));
    }
    let child = cmd
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key-directory did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Process { child, url }
}

/// SIGTERM, then the exit status and everything it logged.
fn terminate(p: Process) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = p.child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn keys_and_their_status_survive_a_restart_and_secrets_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("keys.db");
    let http = reqwest::Client::new();

    let first = start(&db, false).await;
    let keep = LocalSigner::generate().unwrap();
    let drop = LocalSigner::generate().unwrap();
    for (key, subject) in [(&keep, "alice"), (&drop, "bob")] {
        let r = http
            .post(format!("{}/v1/keys", first.url))
            .bearer_auth(TOKEN)
            .json(&json!({"subject": subject, "jwk": key.public_key().to_jwk(key.kid())}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = http
        .post(format!("{}/v1/keys/{}/revoke", first.url, drop.kid()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, logs) = terminate(first);
    assert!(
        status.success(),
        "a graceful stop exits 0: {status:?}\n{logs}"
    );
    assert!(logs.contains("key registered"), "{logs}");
    assert!(
        !logs.contains(TOKEN),
        "the issuer token must never be logged"
    );

    let second = start(&db, true).await;
    let alice: Value = http
        .get(format!("{}/v1/keys/{}", second.url, keep.kid()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alice["status"], "active");
    assert_eq!(alice["subject"], "alice");
    let bob: Value = http
        .get(format!("{}/v1/keys/{}", second.url, drop.kid()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bob["status"], "revoked");
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", second.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    // The issuer token from the environment works after the restart.
    let r = http
        .post(format!("{}/v1/keys/{}/revoke", second.url, keep.kid()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, logs) = terminate(second);
    assert!(status.success());
    assert!(!logs.contains(TOKEN));
}

#[test]
fn a_malformed_issuer_token_flag_is_a_clear_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_key-directory"))
        .args([
            "--issuer-token",
            "no-equals-sign",
            "--db",
            "/nonexistent/never-created.db",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NAME=TOKEN"), "{err}");
}
