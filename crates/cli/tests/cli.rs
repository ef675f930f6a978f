//! The `ap2` binary, run as a process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const CART_VECTORS: &str = "../mandate/tests/vectors/cart_vectors.json";
const JWT_VECTOR: &str = "../mandate/tests/vectors/jwt_vector.json";

fn ap2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ap2"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn ap2_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ap2"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn vectors() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CART_VECTORS);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn cart_hash_prints_the_published_hashes_of_the_vector_file() {
    let out = ap2(&["cart-hash", CART_VECTORS]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: Vec<String> = vectors()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["cart_hash"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), expected);
}

#[test]
fn cart_hash_reads_one_cart_from_standard_input_and_prints_its_canonical_form() {
    let v = &vectors()[2];
    let out = ap2_stdin(&["cart-hash", "-"], &v["cart"].to_string());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end(), v["cart_hash"].as_str().unwrap());
    let out = ap2_stdin(&["cart-hash", "--canonical"], &v["cart"].to_string());
    assert_eq!(
        stdout(&out).trim_end_matches('\n'),
        v["canonical"].as_str().unwrap()
    );
}

#[test]
fn cart_hash_refuses_a_bad_cart_with_a_clear_error() {
    let mut cart = vectors()[0]["cart"].clone();
    cart["total"] = serde_json::json!(1);
    let out = ap2_stdin(&["cart-hash"], &cart.to_string());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("total 1 is not the sum"),
        "{}",
        stderr(&out)
    );
    let out = ap2(&["cart-hash", "no-such-file.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no-such-file.json"));
}

#[test]
fn keygen_mint_verify_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("user.pem");
    let key = key.to_str().unwrap();
    let out = ap2(&["keygen", "--out", key]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jwk: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(jwk["crv"], "P-256");
    assert!(jwk.get("d").is_none(), "the private key is never printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // keygen does not overwrite by accident.
    assert_eq!(ap2(&["keygen", "--out", key]).status.code(), Some(2));

    let jwk_path = dir.path().join("user.jwk");
    std::fs::write(&jwk_path, jwk.to_string()).unwrap();
    let cart_path = dir.path().join("cart.json");
    std::fs::write(&cart_path, vectors()[0]["cart"].to_string()).unwrap();
    let (jwk_path, cart_path) = (jwk_path.to_str().unwrap(), cart_path.to_str().unwrap());

    let out = ap2(&[
        "mint",
        "--key",
        key,
        "--iss",
        "https://wallet.example",
        "--sub",
        "user-123",
        "--agent",
        "agent-7",
        "--cart",
        cart_path,
        "--now",
        "1798761600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();

    let verify = |agent: &str, now: &str| {
        ap2(&[
            "verify",
            &token,
            "--jwk",
            jwk_path,
            "--iss",
            "https://wallet.example",
            "--sub",
            "user-123",
            "--agent",
            agent,
            "--cart",
            cart_path,
            "--now",
            now,
        ])
    };
    let out = verify("agent-7", "1798761700");
    assert!(out.status.success(), "{}", stderr(&out));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(claims["ap2_scope"]["max_amount"], "89.99");
    assert_eq!(claims["aud"], "acme-corp");

    let out = verify("agent-8", "1798761700");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("mandate_agent_mismatch"),
        "{}",
        stderr(&out)
    );
    let out = verify("agent-7", "1798762000");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("mandate_expired"));
}

#[test]
fn verify_accepts_the_vector_token_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(JWT_VECTOR)).unwrap(),
    )
    .unwrap();
    let jwk = dir.path().join("jwk.json");
    std::fs::write(&jwk, v["jwk"].to_string()).unwrap();
    let out = ap2_stdin(
        &[
            "verify",
            "--jwk",
            jwk.to_str().unwrap(),
            "--iss",
            "https://wallet.example",
            "--sub",
            "user-123",
            "--agent",
            "agent-7",
            "--cart",
            "../mandate/tests/vectors/cart_v1.json",
            "--now",
            "1798761700",
        ],
        v["token"].as_str().unwrap(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `ap2 mint` for the SPEC's V1 cart with a freshly generated key and `extra` arguments.
fn mint_with_fresh_key(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let key = key.to_str().unwrap();
    assert!(ap2(&["keygen", "--out", key]).status.success());
    let mut args = vec![
        "mint",
        "--key",
        key,
        "--iss",
        "i",
        "--sub",
        "s",
        "--agent",
        "a",
        "--cart",
        "../mandate/tests/vectors/cart_v1.json",
    ];
    args.extend_from_slice(extra);
    ap2(&args)
}

#[test]
fn mint_refuses_a_bad_max_amount() {
    let out = mint_with_fresh_key(&["--max-amount", "89.9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--max-amount"), "{}", stderr(&out));
}

fn assert_demo_succeeded(out: &Output) {
    let text = stdout(out);
    assert!(out.status.success(), "{text}\n{}", stderr(out));
    for code in [
        "mandate_replayed",
        "mandate_cart_mismatch",
        "mandate_agent_mismatch",
        "mandate_audience_mismatch",
        "mandate_expired",
        "mandate_key_revoked",
    ] {
        assert!(
            text.contains(&format!("→ 401 {code}")),
            "{code} missing:\n{text}"
        );
    }
    assert!(!text.contains('✗'), "{text}");
    assert!(text.contains("Every step behaved as expected."));
    assert!(text.contains("charged"));
}

#[test]
fn demo_plays_the_story_and_the_attacks_with_the_in_memory_replay_set() {
    let out = Command::new(env!("CARGO_BIN_EXE_ap2"))
        .arg("demo")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert_demo_succeeded(&out);
    assert!(stdout(&out).contains("replay set in memory"));
}

#[test]
fn demo_uses_redis_when_redis_url_is_set() {
    let redis = ap2_testkit::RedisServer::start();
    let out = Command::new(env!("CARGO_BIN_EXE_ap2"))
        .arg("demo")
        .env("REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert_demo_succeeded(&out);
    assert!(stdout(&out).contains("replay set Redis"));
}

#[test]
fn spec8_mint_takes_a_thumbprint_that_begins_with_a_hyphen() {
    // base64url: one thumbprint in 64 begins with `-`, and is a value, not a flag.
    let jkt = format!("-{}", "A".repeat(42));
    let out = mint_with_fresh_key(&["--cnf-jkt", &jkt]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out);
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cnf"]["jkt"], jkt.as_str());
}

/// The JSON of a JWT's part `n` (0 the header, 1 the payload).
fn jwt_part(token: &str, n: usize) -> serde_json::Value {
    let part = token.trim().split('.').nth(n).unwrap();
    serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).unwrap(),
    )
    .unwrap()
}

#[test]
fn ids_and_nonces_that_begin_with_a_hyphen_are_values_not_flags() {
    // Agent ids may begin with `-` (`[A-Za-z0-9._:-]`), and kids, jtis and nonces are often
    // base64url, one in 64 of which begins with it.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let user = path("user.pem");
    let out = ap2(&["keygen", "--out", &user]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(path("user.jwk"), stdout(&out)).unwrap();
    let ids = ["--iss", "-i", "--sub", "-s", "--agent", "-a"];
    let cart = "../mandate/tests/vectors/cart_v1.json";
    let mut args = vec!["mint", "--key", &user, "--cart", cart];
    args.extend(ids);
    args.extend(["--jti", "-j", "--now", "1798761600"]);
    let out = ap2(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let mandate = stdout(&out).trim().to_owned();
    let claims = jwt_part(&mandate, 1);
    assert_eq!(
        [
            &claims["iss"],
            &claims["sub"],
            &claims["ap2_scope"]["allow_agent_id"],
            &claims["jti"]
        ],
        ["-i", "-s", "-a", "-j"]
    );
    let jwk = path("user.jwk");
    let mut args = vec!["verify", &mandate, "--jwk", &jwk, "--cart", cart];
    args.extend(ids);
    args.extend(["--audience", "acme-corp", "--now", "1798761601"]);
    let out = ap2(&args);
    assert!(out.status.success(), "{}", stderr(&out));

    args = vec!["mint", "--key", &user, "--cart", cart, "--kid", "-k"];
    args.extend(ids);
    let out = ap2(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(jwt_part(&stdout(&out), 0)["kid"], "-k");

    let out = ap2(&["agent-keygen", "--out", &path("agent.pem")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = "https://merchant.example/v1/checkout-sessions";
    let agent = path("agent.pem");
    let out = ap2(&[
        "dpop", "--key", &agent, "--method", "POST", "--url", url, "--nonce", "-n",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(jwt_part(&stdout(&out), 1)["nonce"], "-n");
}

#[test]
fn mint_count_prints_that_many_distinct_mandates() {
    let out = mint_with_fresh_key(&["--count", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens: std::collections::HashSet<String> =
        stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(tokens.len(), 50);
}

#[test]
fn spec8_agent_keygen_dpop_and_a_bound_mandate_verified_with_its_proof() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (user, agent) = (path("user.pem"), path("agent.pem"));
    let out = ap2(&["keygen", "--out", &user]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(path("user.jwk"), stdout(&out)).unwrap();
    let out = ap2(&["agent-keygen", "--out", &agent]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let jkt = printed["jkt"].as_str().unwrap().to_owned();
    assert_eq!(jkt.len(), 43);
    assert!(printed["jwk"].get("d").is_none());
    std::fs::write(path("cart.json"), vectors()[0]["cart"].to_string()).unwrap();
    let now = "1798761600";
    let out = ap2(&[
        "mint",
        "--key",
        &user,
        "--iss",
        "https://wallet.example",
        "--sub",
        "user-123",
        "--agent",
        "agent-7",
        "--cart",
        &path("cart.json"),
        "--now",
        now,
        "--cnf-jkt",
        &jkt,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mandate = stdout(&out).trim().to_owned();
    let url = "https://merchant.example/v1/checkout-sessions/cs_1/complete";
    let dpop = |key: &str, url: &str| {
        let out = ap2(&[
            "dpop",
            "--key",
            key,
            "--method",
            "POST",
            "--url",
            url,
            "--mandate",
            &mandate,
            "--now",
            now,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let verify = |proof: Option<&str>| {
        let mut args = vec![
            "verify",
            &mandate,
            "--jwk",
            &path("user.jwk"),
            "--iss",
            "https://wallet.example",
            "--sub",
            "user-123",
            "--agent",
            "agent-7",
            "--cart",
            &path("cart.json"),
            "--now",
            "1798761601",
            "--require-binding",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        if let Some(proof) = proof {
            args.extend(["--dpop", proof, "--htm", "POST", "--htu", url].map(str::to_owned));
        }
        ap2(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let proof = dpop(&agent, url);
    let out = verify(Some(&proof));
    assert!(out.status.success(), "{}", stderr(&out));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(claims["cnf"]["jkt"], jkt.as_str());
    for (proof, code) in [
        (None, "dpop_proof_required"),
        (
            Some(dpop(&agent, "https://merchant.example/other")),
            "dpop_proof_mismatch",
        ),
        (Some("not.a.proof".to_owned()), "dpop_proof_invalid"),
    ] {
        let out = verify(proof.as_deref());
        assert_eq!(out.status.code(), Some(1), "{code}");
        assert!(stderr(&out).contains(code), "{code}: {}", stderr(&out));
    }
    // Another key's proof.
    let thief = path("thief.pem");
    assert!(ap2(&["agent-keygen", "--out", &thief]).status.success());
    let out = verify(Some(&dpop(&thief, url)));
    assert!(
        stderr(&out).contains("dpop_key_mismatch"),
        "{}",
        stderr(&out)
    );
    // A method that is not one.
    let out = ap2(&["dpop", "--key", &agent, "--method", "post", "--url", url]);
    assert_eq!(out.status.code(), Some(2));
}
