//! SPEC §4, rule by rule: each test is named after the step and rule it shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;

use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    Consume, FixedClock, KeyResolver, Kid, LocalSigner, MerchantId, Presentation, ProblemCode,
    ReplayEntry, ReplayError, ReplayGuard, ReplayKey, ResolveError, Signer, Verifier,
    VerifierConfig, VerifyError,
};
use ap2_testkit::forge::{N, der, negate_s};
use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The vector

#[tokio::test]
async fn spec4_jwt_vector_verifies_at_a_fixed_time_inside_its_validity() {
    let f = Fixture::new();
    let v = vector();
    let token = v["token"].as_str().unwrap();
    let verified = f.check(token).await.unwrap();
    assert_eq!(verified.kid.as_str(), v["kid"].as_str().unwrap());
    assert_eq!(serde_json::to_value(&verified.claims).unwrap(), v["claims"]);
    assert_eq!(verified.claims.scope.max_amount.minor_units(), 8999);
}

#[tokio::test]
async fn spec4_jwt_vector_is_expired_after_exp_plus_leeway() {
    let v = vector();
    let token = v["token"].as_str().unwrap();
    assert_eq!(Fixture::at(1_798_761_900 + 29).code(token).await, "ok");
    assert_eq!(
        Fixture::at(1_798_761_900 + 30).code(token).await,
        "mandate_expired"
    );
}

#[tokio::test]
async fn spec2_minted_payload_matches_the_vector_byte_for_byte() {
    let f = Fixture::new();
    let v = vector();
    let claims: ap2_mandate::IntentMandate =
        f.check(v["token"].as_str().unwrap()).await.unwrap().claims;
    let token = ap2_mandate::mint(&f.signer, &claims).unwrap();
    let ours: Vec<&str> = token.split('.').collect();
    let theirs: Vec<&str> = v["token"].as_str().unwrap().split('.').collect();
    assert_eq!(ours[1], theirs[1], "payload segment");
    let header: Value = serde_json::from_slice(&unb64(ours[0])).unwrap();
    assert_eq!(
        String::from_utf8(unb64(ours[0])).unwrap(),
        format!(
            r#"{{"alg":"ES256","typ":"ap2-intent+jwt","kid":"{}"}}"#,
            f.kid()
        )
    );
    assert_eq!(header["kid"], v["kid"]);
    // A fresh jti: the replay set has the vector's already.
    let mut claims = claims;
    claims.jti = ap2_mandate::Jti::random().unwrap();
    let token = ap2_mandate::mint(&f.signer, &claims).unwrap();
    assert_eq!(f.code(&token).await, "ok");
}

// ---------------------------------------------------------------------------------------------
// Step 1: size and segments

#[tokio::test]
async fn spec4_step1_token_over_8_kib_is_refused_unread() {
    let f = Fixture::new();
    let padded = f.token_with(|c| c["pad"] = json!("x".repeat(8 * 1024)));
    assert_eq!(f.code(&padded).await, "mandate_malformed");
    let huge = "a".repeat(10 * 1024 * 1024);
    assert_eq!(f.code(&huge).await, "mandate_malformed");
    // Just under the limit is fine.
    let fits = f.token_with(|c| c["pad"] = json!("x".repeat(5 * 1024)));
    assert!(fits.len() <= 8 * 1024);
    assert_eq!(f.code(&fits).await, "ok");
}

#[tokio::test]
async fn spec4_step1_exactly_three_segments() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        parts[..2].join("."),
        format!("{token}.{}", parts[2]),
        parts[0].to_string(),
        String::new(),
        format!("{}..{}", parts[0], parts[2]),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
    ] {
        assert_eq!(f.code(&bad).await, "mandate_malformed", "{bad}");
    }
}

#[tokio::test]
async fn spec4_step1_segments_are_unpadded_base64url() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let parts: Vec<&str> = token.split('.').collect();
    let header_std = parts[0].replace('-', "+").replace('_', "/");
    for bad in [
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}\n", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}+/", parts[0], parts[1], parts[2]),
    ] {
        assert_eq!(f.code(&bad).await, "mandate_malformed", "{bad}");
    }
    if header_std != parts[0] {
        let bad = format!("{header_std}.{}.{}", parts[1], parts[2]);
        assert_eq!(f.code(&bad).await, "mandate_malformed");
    }
}

#[tokio::test]
async fn spec4_step1_header_and_payload_are_json_objects() {
    let f = Fixture::new();
    let header = f.header().to_string();
    let claims = vector()["claims"].to_string();
    for (h, p) in [
        ("not json".to_string(), claims.clone()),
        (header.clone(), "not json".to_string()),
        (header.clone(), "[1,2]".to_string()),
        (format!("\u{feff}{header}"), claims.clone()),
        (header.clone(), format!("\u{feff}{claims}")),
        (header.clone(), format!("{claims}{{}}")),
    ] {
        assert_eq!(
            f.code(&f.sign_raw(&h, &p)).await,
            "mandate_malformed",
            "{h} {p}"
        );
    }
    let non_utf8 = format!(
        "{}.{}.{}",
        b64(&header),
        b64(b"{\"iss\":\"\xff\"}"),
        b64([1u8; 64])
    );
    assert_eq!(f.code(&non_utf8).await, "mandate_malformed");
    let bomb = format!("{{\"a\":{}{}}}", "[".repeat(3000), "]".repeat(3000));
    assert_eq!(
        f.code(&f.sign_raw(&header, &bomb)).await,
        "mandate_malformed"
    );
}

#[tokio::test]
async fn spec4_step1_json_whitespace_is_accepted_because_the_signature_covers_the_bytes() {
    let f = Fixture::new();
    let claims = vector()["claims"].clone();
    let pretty = serde_json::to_string_pretty(&claims).unwrap();
    let token = f.sign_raw(&format!(" {} ", f.header()), &format!("\n{pretty}\n"));
    assert_eq!(f.code(&token).await, "ok");
}

// ---------------------------------------------------------------------------------------------
// Step 2: header hygiene

#[tokio::test]
async fn spec4_step2_alg_must_be_es256() {
    let f = Fixture::new();
    for alg in [
        json!("none"),
        json!("None"),
        json!("NONE"),
        json!("nOnE"),
        json!("HS256"),
        json!("HS384"),
        json!("HS512"),
        json!("RS256"),
        json!("PS256"),
        json!("EdDSA"),
        json!("ES384"),
        json!("ES256K"),
        json!("es256"),
        json!("ES256 "),
        json!(""),
        json!(null),
        json!(256),
        json!(["ES256"]),
    ] {
        let mut header = f.header();
        header["alg"] = alg.clone();
        let token = f.sign(&header, &vector()["claims"]);
        assert_eq!(
            f.code(&token).await,
            "mandate_algorithm_unsupported",
            "{alg}"
        );
    }
    let mut header = f.header();
    header.as_object_mut().unwrap().remove("alg");
    let token = f.sign(&header, &vector()["claims"]);
    assert_eq!(f.code(&token).await, "mandate_algorithm_unsupported");
}

#[tokio::test]
async fn spec4_step2_unsigned_none_tokens_are_refused() {
    let f = Fixture::new();
    let claims = vector()["claims"].to_string();
    for sig in ["", "AA"] {
        let token = format!(
            "{}.{}.{sig}",
            b64(json!({"alg": "none", "typ": "ap2-intent+jwt", "kid": f.kid()}).to_string()),
            b64(&claims)
        );
        let code = f.code(&token).await;
        assert!(
            code == "mandate_malformed" || code == "mandate_algorithm_unsupported",
            "{code}"
        );
    }
}

#[tokio::test]
async fn spec4_step2_typ_must_be_ap2_intent_jwt() {
    let f = Fixture::new();
    for typ in [
        json!("JWT"),
        json!("jwt"),
        json!("at+jwt"),
        json!("AP2-INTENT+JWT"),
        json!("application/ap2-intent+jwt"),
        json!(""),
        json!(null),
        json!(1),
    ] {
        let mut header = f.header();
        header["typ"] = typ.clone();
        assert_eq!(
            f.code(&f.sign(&header, &vector()["claims"])).await,
            "mandate_header_rejected",
            "{typ}"
        );
    }
    let mut header = f.header();
    header.as_object_mut().unwrap().remove("typ");
    assert_eq!(
        f.code(&f.sign(&header, &vector()["claims"])).await,
        "mandate_header_rejected"
    );
}

#[tokio::test]
async fn spec4_step2_kid_is_present_and_1_to_128_chars_of_the_kid_alphabet() {
    let f = Fixture::new();
    for kid in [
        json!(""),
        json!("k".repeat(129)),
        json!("../../etc/passwd"),
        json!("..%2F..%2Fkeys"),
        json!("' OR '1'='1"),
        json!("kid\u{0}"),
        json!("kïd"),
        json!(null),
        json!(42),
    ] {
        let mut header = f.header();
        header["kid"] = kid.clone();
        assert_eq!(
            f.code(&f.sign(&header, &vector()["claims"])).await,
            "mandate_header_rejected",
            "{kid}"
        );
    }
    let mut header = f.header();
    header.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        f.code(&f.sign(&header, &vector()["claims"])).await,
        "mandate_header_rejected"
    );
}

#[tokio::test]
async fn spec4_step2_members_that_bring_their_own_key_are_refused() {
    let f = Fixture::new();
    let jwk = vector()["jwk"].clone();
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("jwk", jwk),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("x5t", json!("abc")),
        ("x5t#S256", json!("abc")),
        ("crit", json!(["exp"])),
        ("crit", json!(["b64"])),
    ] {
        let mut header = f.header();
        header[name] = value;
        assert_eq!(
            f.code(&f.sign(&header, &vector()["claims"])).await,
            "mandate_header_rejected",
            "{name}"
        );
    }
}

#[tokio::test]
async fn spec4_step2_duplicate_member_names_are_refused() {
    let f = Fixture::new();
    let kid = f.kid();
    let claims = vector()["claims"].to_string();
    let header = format!(r#"{{"alg":"ES256","typ":"ap2-intent+jwt","kid":"{kid}","kid":"{kid}"}}"#);
    assert_eq!(
        f.code(&f.sign_raw(&header, &claims)).await,
        "mandate_header_rejected"
    );
    let header = format!(r#"{{"alg":"ES256","alg":"none","typ":"ap2-intent+jwt","kid":"{kid}"}}"#);
    assert_eq!(
        f.code(&f.sign_raw(&header, &claims)).await,
        "mandate_header_rejected"
    );
    let header = f.header().to_string();
    let two_auds = claims.replacen(
        r#""aud":"acme-corp""#,
        r#""aud":"other","aud":"acme-corp""#,
        1,
    );
    assert_ne!(two_auds, claims);
    assert_eq!(
        f.code(&f.sign_raw(&header, &two_auds)).await,
        "mandate_malformed"
    );
    let two_amounts = claims.replacen(
        r#""max_amount":"89.99""#,
        r#""max_amount":"1000.00","max_amount":"89.99""#,
        1,
    );
    assert_ne!(two_amounts, claims);
    assert_eq!(
        f.code(&f.sign_raw(&header, &two_amounts)).await,
        "mandate_malformed"
    );
}

#[tokio::test]
async fn spec4_step2_unknown_header_members_are_ignored() {
    let f = Fixture::new();
    let mut header = f.header();
    header["cty"] = json!("JSON");
    header["x-trace"] = json!(1);
    assert_eq!(f.code(&f.sign(&header, &vector()["claims"])).await, "ok");
}

// ---------------------------------------------------------------------------------------------
// Step 3: the key

#[tokio::test]
async fn spec4_step3_unknown_kid_is_refused() {
    let f = Fixture::new();
    let mut header = f.header();
    header["kid"] = json!("no-such-key");
    assert_eq!(
        f.code(&f.sign(&header, &vector()["claims"])).await,
        "mandate_key_unknown"
    );
}

#[tokio::test]
async fn spec4_step3_revoked_key_is_refused() {
    let f = Fixture::new();
    assert!(f.keys.revoke(&Kid::parse(&f.kid()).unwrap()));
    assert_eq!(f.code(&f.token_with(|_| {})).await, "mandate_key_revoked");
}

#[tokio::test]
async fn spec4_step3_directory_down_is_503_never_an_accept() {
    struct Down;
    impl KeyResolver for Down {
        async fn resolve(&self, _: &Kid) -> Result<Arc<ap2_mandate::KeyRecord>, ResolveError> {
            Err(ResolveError::Unavailable("connection refused".into()))
        }
    }
    let verifier = Verifier::new(
        VerifierConfig::without_binding(MerchantId::parse("acme-corp").unwrap()),
        Down,
        MemoryReplayGuard::new(),
        FixedClock(NOW),
    );
    let err = verifier
        .verify(
            &Presentation::bearer(vector()["token"].as_str().unwrap(), AGENT, &shoe_cart()),
            Consume::Yes,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ProblemCode::KeyDirectoryUnavailable);
    assert_eq!(err.code().http_status(), 503);
    // The caller-facing message never carries the outage's cause.
    assert!(!err.to_string().contains("connection refused"));
}

#[tokio::test]
async fn spec4_step3_kid_of_another_users_key_is_an_issuer_mismatch() {
    // Mallory registers her own key; she signs a mandate naming user-123 under her kid.
    let f = Fixture::new();
    let mallory = LocalSigner::generate().unwrap();
    f.keys.insert(record(
        mallory.public_key(),
        mallory.kid().as_str(),
        ISSUER,
        "mallory",
    ));
    let header = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": mallory.kid().as_str()});
    let input = format!(
        "{}.{}",
        b64(header.to_string()),
        b64(vector()["claims"].to_string())
    );
    let token = format!(
        "{input}.{}",
        b64(mallory.sign_es256(input.as_bytes()).unwrap())
    );
    assert_eq!(f.code(&token).await, "mandate_issuer_mismatch");
    // And with the victim's kid, her signature does not verify.
    let header = f.header();
    let input = format!(
        "{}.{}",
        b64(header.to_string()),
        b64(vector()["claims"].to_string())
    );
    let token = format!(
        "{input}.{}",
        b64(mallory.sign_es256(input.as_bytes()).unwrap())
    );
    assert_eq!(f.code(&token).await, "mandate_signature_invalid");
}

// ---------------------------------------------------------------------------------------------
// Step 4: the signature

fn with_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(sig))
}

fn signature_of(token: &str) -> Vec<u8> {
    unb64(token.rsplit_once('.').unwrap().1)
}

#[tokio::test]
async fn spec4_step4_tampered_payload_fails_the_signature() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let (header, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut claims = vector()["claims"].clone();
    claims["ap2_scope"]["max_amount"] = json!("8999.00");
    let forged = format!("{header}.{}.{sig}", b64(claims.to_string()));
    assert_eq!(f.code(&forged).await, "mandate_signature_invalid");
}

#[tokio::test]
async fn spec4_step4_r_and_s_must_be_in_1_to_n_minus_1() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let sig = signature_of(&token);
    let zero = [0u8; 32];
    let one = {
        let mut one = [0u8; 32];
        one[31] = 1;
        one
    };
    let n_plus_r = {
        // r + n overflows 256 bits for most r, so use n itself and 2^256 - 1 as out-of-range r.
        [0xffu8; 32]
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("r = s = 0 (CVE-2022-21449)", [zero, zero].concat()),
        ("r = 0", [&zero[..], &sig[32..]].concat()),
        ("s = 0", [&sig[..32], &zero[..]].concat()),
        ("r = n", [&N[..], &sig[32..]].concat()),
        ("s = n", [&sig[..32], &N[..]].concat()),
        ("r = 2^256 - 1", [&n_plus_r[..], &sig[32..]].concat()),
        ("s = 2^256 - 1", [&sig[..32], &n_plus_r[..]].concat()),
        ("r = s = 1", [one, one].concat()),
        ("r = s = n", [N, N].concat()),
    ];
    for (what, bad) in cases {
        assert_eq!(
            f.code(&with_signature(&token, &bad)).await,
            "mandate_signature_invalid",
            "{what}"
        );
    }
}

#[tokio::test]
async fn spec4_step4_only_the_raw_64_byte_form_is_accepted() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let sig = signature_of(&token);
    let mut extended = sig.clone();
    extended.push(0);
    let mut leading = vec![0u8];
    leading.extend(&sig);
    for (what, bad) in [
        ("DER", der(&sig)),
        ("truncated", sig[..63].to_vec()),
        ("half", sig[..32].to_vec()),
        ("extended", extended),
        ("leading zero", leading),
        ("one byte", vec![0]),
    ] {
        assert_eq!(
            f.code(&with_signature(&token, &bad)).await,
            "mandate_signature_invalid",
            "{what}"
        );
    }
}

#[tokio::test]
async fn spec4_step4_signature_of_another_token_is_refused() {
    let f = Fixture::new();
    let a = f.token_with(|c| c["jti"] = json!("token-a"));
    let b = f.token_with(|c| c["jti"] = json!("token-b"));
    assert_eq!(
        f.code(&with_signature(&a, &signature_of(&b))).await,
        "mandate_signature_invalid"
    );
}

#[tokio::test]
async fn spec4_step4_re_encoded_payload_with_the_old_signature_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let (header, rest) = token.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let claims: Value = serde_json::from_slice(&unb64(payload)).unwrap();
    let reencoded = serde_json::to_string_pretty(&claims).unwrap();
    let forged = format!("{header}.{}.{sig}", b64(reencoded));
    assert_eq!(f.code(&forged).await, "mandate_signature_invalid");
}

#[tokio::test]
async fn spec4_step4_high_s_signatures_are_valid_and_replay_keys_on_iss_jti() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let twin = with_signature(&token, &negate_s(&signature_of(&token)));
    assert_ne!(twin, token);
    // Both forms verify; the replay set sees one mandate.
    assert_eq!(f.code(&twin).await, "ok");
    assert_eq!(f.code(&token).await, "mandate_replayed");
}

// ---------------------------------------------------------------------------------------------
// Step 5: claims

#[tokio::test]
async fn spec4_step5_iss_and_sub_must_be_those_registered_for_the_kid() {
    let f = Fixture::new();
    for (name, value) in [
        ("iss", json!("https://evil.example")),
        ("iss", json!("https://wallet.example/")),
        ("iss", json!("HTTPS://WALLET.EXAMPLE")),
        ("sub", json!("user-124")),
        ("sub", json!("USER-123")),
        ("sub", json!("")),
    ] {
        let token = f.token_with(|c| c[name] = value.clone());
        assert_eq!(
            f.code(&token).await,
            "mandate_issuer_mismatch",
            "{name} {value}"
        );
    }
}

#[tokio::test]
async fn spec4_step5_aud_is_this_merchant_alone() {
    let f = Fixture::new();
    for aud in [
        json!("other-corp"),
        json!("ACME-CORP"),
        json!("acme-corp "),
        json!("acme\u{2010}corp"),
        json!("аcme-corp"), // Cyrillic а
        json!(["acme-corp", "other-corp"]),
        json!(["other-corp", "acme-corp"]),
        json!(["acme-corp", "acme-corp"]),
        json!([]),
        json!(["other-corp"]),
    ] {
        let token = f.token_with(|c| c["aud"] = aud.clone());
        assert_eq!(f.code(&token).await, "mandate_audience_mismatch", "{aud}");
    }
    for aud in [
        json!(null),
        json!(1),
        json!({"aud": "acme-corp"}),
        json!([1]),
    ] {
        let token = f.token_with(|c| c["aud"] = aud.clone());
        assert_eq!(f.code(&token).await, "mandate_malformed", "{aud}");
    }
    let token = f.token_with(|c| c["aud"] = json!(["acme-corp"]));
    assert_eq!(
        f.code(&token).await,
        "ok",
        "an array of exactly one element"
    );
}

#[tokio::test]
async fn spec4_step5_expired_beyond_the_leeway_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|c| {
        c["iat"] = json!(NOW - 300);
        c["exp"] = json!(NOW - 30);
    });
    assert_eq!(f.code(&token).await, "mandate_expired");
    let token = f.token_with(|c| {
        c["iat"] = json!(NOW - 300);
        c["exp"] = json!(NOW - 29);
    });
    assert_eq!(f.code(&token).await, "ok", "within the 30 s leeway");
}

#[tokio::test]
async fn spec4_step5_nbf_in_the_future_is_not_yet_valid() {
    let f = Fixture::new();
    let token = f.token_with(|c| c["nbf"] = json!(NOW + 31));
    assert_eq!(f.code(&token).await, "mandate_not_yet_valid");
    let token = f.token_with(|c| c["nbf"] = json!(NOW + 30));
    assert_eq!(f.code(&token).await, "ok", "within the leeway");
}

#[tokio::test]
async fn spec4_step5_iat_in_the_future_beyond_the_leeway_is_not_yet_valid() {
    let f = Fixture::new();
    let token = f.token_with(|c| {
        c["iat"] = json!(NOW + 31);
        c["exp"] = json!(NOW + 300);
    });
    assert_eq!(f.code(&token).await, "mandate_not_yet_valid");
}

#[tokio::test]
async fn spec4_step5_lifetime_over_the_maximum_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|c| c["exp"] = json!(1_798_761_600 + 301));
    assert_eq!(f.code(&token).await, "mandate_lifetime_too_long");
    let token = f.token_with(|c| c["exp"] = json!(1_798_761_600 + 300));
    assert_eq!(f.code(&token).await, "ok");
    let token = f.token_with(|c| c["exp"] = json!(i64::MAX));
    assert_eq!(f.code(&token).await, "mandate_lifetime_too_long");
}

#[tokio::test]
async fn spec4_step5_times_are_integer_numeric_dates() {
    let f = Fixture::new();
    for (name, value) in [
        ("exp", json!("1798761900")),
        ("exp", json!(1_798_761_900.0)),
        ("exp", json!(1_798_761_900.5)),
        ("exp", json!(-1)),
        ("exp", json!(null)),
        ("exp", json!(true)),
        ("exp", json!(u64::MAX)),
        ("iat", json!("1798761600")),
        ("iat", json!(1.7987616e9)),
        ("iat", json!(-1_798_761_600)),
        ("nbf", json!("0")),
        ("nbf", json!(0.5)),
    ] {
        let token = f.token_with(|c| c[name] = value.clone());
        assert_eq!(f.code(&token).await, "mandate_malformed", "{name} {value}");
    }
    // The exponent form is a float in JSON, whatever its value.
    let claims = vector()["claims"]
        .to_string()
        .replace("1798761900", "1.7987619e9");
    assert_eq!(
        f.code(&f.sign_raw(&f.header().to_string(), &claims)).await,
        "mandate_malformed"
    );
    let token = f.token_with(|c| c["exp"] = json!(1_798_761_600));
    assert_eq!(f.code(&token).await, "mandate_malformed", "exp == iat");
    // `-0` is a JSON integer equal to 0, but a NumericDate here is written without a sign.
    let claims = vector()["claims"]
        .to_string()
        .replacen('{', r#"{"nbf":-0,"#, 1);
    assert_eq!(
        f.code(&f.sign_raw(&f.header().to_string(), &claims)).await,
        "mandate_malformed"
    );
}

#[tokio::test]
async fn spec4_step5_required_claims_must_be_present() {
    let f = Fixture::new();
    for name in ["iss", "sub", "aud", "iat", "exp", "jti"] {
        let token = f.token_with(|c| {
            c.as_object_mut().unwrap().remove(name);
        });
        assert_eq!(f.code(&token).await, "mandate_malformed", "{name}");
    }
    for jti in [json!(""), json!("a.b"), json!("j".repeat(129)), json!(1)] {
        let token = f.token_with(|c| c["jti"] = jti.clone());
        assert_eq!(f.code(&token).await, "mandate_malformed", "{jti}");
    }
}

#[tokio::test]
async fn spec4_step5_ap2_intent_must_be_known() {
    let f = Fixture::new();
    for intent in [
        json!("CART_PURCHASE_V2"),
        json!("cart_purchase_v1"),
        json!(1),
        json!(null),
    ] {
        let token = f.token_with(|c| c["ap2_intent"] = intent.clone());
        assert_eq!(
            f.code(&token).await,
            "mandate_intent_unsupported",
            "{intent}"
        );
    }
    let token = f.token_with(|c| {
        c.as_object_mut().unwrap().remove("ap2_intent");
    });
    assert_eq!(f.code(&token).await, "mandate_intent_unsupported");
}

#[tokio::test]
async fn spec4_step5_ap2_scope_must_be_complete_and_well_formed() {
    let f = Fixture::new();
    for name in ["max_amount", "currency", "cart_hash", "allow_agent_id"] {
        let token = f.token_with(|c| {
            c["ap2_scope"].as_object_mut().unwrap().remove(name);
        });
        assert_eq!(
            f.code(&token).await,
            "mandate_scope_invalid",
            "missing {name}"
        );
    }
    for (name, value) in [
        ("max_amount", json!(89.99)),
        ("max_amount", json!(8999)),
        ("max_amount", json!("89.990")),
        ("max_amount", json!("89.9")),
        ("max_amount", json!("-89.99")),
        ("max_amount", json!("8.999e1")),
        ("max_amount", json!("089.99")),
        ("max_amount", json!("99999999999999999999.00")),
        ("max_amount", json!("")),
        ("currency", json!("usd")),
        ("currency", json!("XXY")),
        ("currency", json!("XAU")),
        ("currency", json!(840)),
        (
            "cart_hash",
            json!("642204e9a2286ca58f53ea0841ff0248db686d63a8c6356ff455e40e595adf01"),
        ),
        (
            "cart_hash",
            json!("sha512-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE"),
        ),
        (
            "cart_hash",
            json!("sha256-ZCIE6aIobKWPU-oIQf8CSNtobWOoxjVv9FXkDlla3wE="),
        ),
        ("allow_agent_id", json!("")),
        ("allow_agent_id", json!("agent 7")),
        ("allow_agent_id", json!(7)),
        ("extra", json!("member")),
    ] {
        let token = f.token_with(|c| c["ap2_scope"][name] = value.clone());
        assert_eq!(
            f.code(&token).await,
            "mandate_scope_invalid",
            "{name} {value}"
        );
    }
    for scope in [json!(null), json!("scope"), json!([])] {
        let token = f.token_with(|c| c["ap2_scope"] = scope.clone());
        assert_eq!(f.code(&token).await, "mandate_scope_invalid", "{scope}");
    }
    let token = f.token_with(|c| {
        c.as_object_mut().unwrap().remove("ap2_scope");
    });
    assert_eq!(f.code(&token).await, "mandate_scope_invalid");
}

// ---------------------------------------------------------------------------------------------
// Step 6: binding to the request

#[tokio::test]
async fn spec4_step6_another_agent_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    for agent in ["agent-8", "AGENT-7", "agent-7 ", ""] {
        assert_eq!(
            f.check_for(&token, agent, &shoe_cart())
                .await
                .unwrap_err()
                .code(),
            ProblemCode::AgentMismatch,
            "{agent:?}"
        );
    }
    assert!(f.check_for(&token, AGENT, &shoe_cart()).await.is_ok());
}

#[tokio::test]
async fn spec4_step6_cart_hash_must_be_the_merchants_cart() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let mut swapped = cart_vector(0);
    swapped["line_items"][0]["title"] = json!("Trail Runner (used)");
    assert_eq!(
        f.check_for(&token, AGENT, &cart(&swapped))
            .await
            .unwrap_err()
            .code(),
        ProblemCode::CartMismatch
    );
    let mut cheaper = cart_vector(0);
    cheaper["line_items"][0]["unit_price"] = json!(100);
    cheaper["total"] = json!(100);
    assert_eq!(
        f.check_for(&token, AGENT, &cart(&cheaper))
            .await
            .unwrap_err()
            .code(),
        ProblemCode::CartMismatch
    );
}

#[tokio::test]
async fn spec4_step6_the_same_cart_reordered_passes() {
    let f = Fixture::new();
    let v2 = cart(&cart_vector(1));
    let token = f.token_with(|c| {
        c["ap2_scope"]["cart_hash"] = json!(v2.hash().as_str());
        c["ap2_scope"]["max_amount"] = json!("32.50");
    });
    let mut reordered = cart_vector(1);
    reordered["line_items"].as_array_mut().unwrap().reverse();
    assert!(f.check_for(&token, AGENT, &cart(&reordered)).await.is_ok());
}

#[tokio::test]
async fn spec4_step6_currency_must_be_the_carts() {
    let f = Fixture::new();
    let token = f.token_with(|c| c["ap2_scope"]["currency"] = json!("EUR"));
    assert_eq!(f.code(&token).await, "mandate_currency_mismatch");
}

#[tokio::test]
async fn spec4_step6_total_above_max_amount_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|c| c["ap2_scope"]["max_amount"] = json!("89.98"));
    assert_eq!(
        f.code(&token).await,
        "mandate_amount_exceeded",
        "one cent over"
    );
    let token = f.token_with(|c| c["ap2_scope"]["max_amount"] = json!("0.00"));
    assert_eq!(f.code(&token).await, "mandate_amount_exceeded");
    let token = f.token_with(|c| c["ap2_scope"]["max_amount"] = json!("100.00"));
    assert_eq!(
        f.code(&token).await,
        "ok",
        "a ceiling above the total is fine"
    );
}

#[tokio::test]
async fn spec4_step6_a_cart_of_another_merchant_is_a_cart_mismatch() {
    let f = Fixture::new();
    let mut other = cart_vector(0);
    other["merchant_id"] = json!("other-corp");
    let other = cart(&other);
    let token = f.token_with(|c| c["ap2_scope"]["cart_hash"] = json!(other.hash().as_str()));
    assert_eq!(
        f.check_for(&token, AGENT, &other).await.unwrap_err().code(),
        ProblemCode::CartMismatch
    );
}

// ---------------------------------------------------------------------------------------------
// Step 7: the replay set

#[tokio::test]
async fn spec4_step7_the_same_mandate_twice_is_replayed() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    assert_eq!(f.code(&token).await, "ok");
    assert_eq!(f.code(&token).await, "mandate_replayed");
    assert_eq!(f.replay.len(), 1);
}

#[tokio::test]
async fn spec4_step7_a_dry_run_does_not_consume() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let cart = shoe_cart();
    let presentation = Presentation::bearer(&token, AGENT, &cart);
    assert!(f.verifier.verify(&presentation, Consume::No).await.is_ok());
    assert!(f.verifier.verify(&presentation, Consume::No).await.is_ok());
    assert!(f.replay.is_empty());
    assert!(f.verifier.verify(&presentation, Consume::Yes).await.is_ok());
    assert_eq!(
        f.verifier
            .verify(&presentation, Consume::Yes)
            .await
            .unwrap_err(),
        VerifyError::Replayed
    );
}

#[tokio::test]
async fn spec4_step7_replay_key_is_iss_and_jti() {
    let jti = ap2_mandate::Jti::parse("j1").unwrap();
    let a = ReplayKey::new("https://wallet.example", &jti);
    assert_eq!(a, ReplayKey::new("https://wallet.example", &jti));
    assert_ne!(a, ReplayKey::new("https://other.example", &jti));
    assert_ne!(
        ReplayKey::new("ab", &ap2_mandate::Jti::parse("c").unwrap()),
        ReplayKey::new("a", &ap2_mandate::Jti::parse("bc").unwrap()),
        "length-prefixed: no ambiguity between iss and jti"
    );
    assert_eq!(a.as_str().len(), 64);
    // SHA-256(u64be(len(iss)) || iss || jti) in lower-case hex, as PROTOCOL.md states.
    assert_eq!(
        ReplayKey::new(
            "https://wallet.example",
            &ap2_mandate::Jti::parse("abc").unwrap()
        )
        .as_str(),
        "c1d9b7b72cd4e4a364f267f766e080dd5b9b5dd18a3464427b7c2e7af314452d"
    );
}

#[tokio::test]
async fn spec4_step7_the_same_jti_under_another_issuer_is_independent() {
    let f = Fixture::new();
    let other = LocalSigner::generate().unwrap();
    f.keys.insert(record(
        other.public_key(),
        other.kid().as_str(),
        "https://other-wallet.example",
        SUBJECT,
    ));
    assert_eq!(f.code(&f.token_with(|_| {})).await, "ok");
    let mut claims = vector()["claims"].clone();
    claims["iss"] = json!("https://other-wallet.example");
    let header = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": other.kid().as_str()});
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let token = format!(
        "{input}.{}",
        b64(other.sign_es256(input.as_bytes()).unwrap())
    );
    assert_eq!(f.code(&token).await, "ok");
    assert_eq!(f.code(&token).await, "mandate_replayed");
}

#[tokio::test]
async fn spec4_step7_the_replay_deadline_is_exp_plus_leeway() {
    struct Recorder(std::sync::Mutex<Vec<i64>>);
    impl ReplayGuard for Recorder {
        async fn consume(&self, entries: &[ReplayEntry<'_>], _: i64) -> Result<(), ReplayError> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(entries.iter().map(|e| e.until_unix));
            Ok(())
        }
    }
    let keys = MemoryKeys::new();
    let signer = signer();
    keys.insert(record(
        signer.public_key(),
        signer.kid().as_str(),
        ISSUER,
        SUBJECT,
    ));
    let verifier = Verifier::new(
        VerifierConfig::without_binding(MerchantId::parse("acme-corp").unwrap()),
        keys,
        Recorder(Default::default()),
        FixedClock(NOW),
    );
    let cart = shoe_cart();
    verifier
        .verify(
            &Presentation::bearer(vector()["token"].as_str().unwrap(), AGENT, &cart),
            Consume::Yes,
        )
        .await
        .unwrap();
    assert_eq!(
        *verifier.replay().0.lock().unwrap(),
        vec![1_798_761_900 + 30]
    );
}

#[tokio::test]
async fn spec4_step7_replay_store_down_fails_closed() {
    struct Down;
    impl ReplayGuard for Down {
        async fn consume(&self, _: &[ReplayEntry<'_>], _: i64) -> Result<(), ReplayError> {
            Err(ReplayError::Unavailable("timed out".into()))
        }
    }
    let keys = MemoryKeys::new();
    let signer = signer();
    keys.insert(record(
        signer.public_key(),
        signer.kid().as_str(),
        ISSUER,
        SUBJECT,
    ));
    let verifier = Verifier::new(
        VerifierConfig::without_binding(MerchantId::parse("acme-corp").unwrap()),
        keys,
        Down,
        FixedClock(NOW),
    );
    let cart = shoe_cart();
    let v = vector();
    let presentation = Presentation::bearer(v["token"].as_str().unwrap(), AGENT, &cart);
    let err = verifier
        .verify(&presentation, Consume::Yes)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ProblemCode::ReplayStoreUnavailable);
    assert_eq!(err.code().http_status(), 503);
    assert!(!err.to_string().contains("timed out"));
    // A dry run does not touch the store.
    assert!(verifier.verify(&presentation, Consume::No).await.is_ok());
}

#[tokio::test]
async fn spec4_step7_concurrent_presentations_accept_exactly_one() {
    let f = Arc::new(Fixture::new());
    let token = Arc::new(f.token_with(|_| {}));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let f = f.clone();
            let token = token.clone();
            tokio::spawn(async move { f.code(&token).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            "ok" => ok += 1,
            code => assert_eq!(code, "mandate_replayed"),
        }
    }
    assert_eq!(ok, 1);
}

// ---------------------------------------------------------------------------------------------
// Order and codes

#[tokio::test]
async fn spec4_steps_run_in_order_cheapest_first() {
    let f = Fixture::new();
    // Unknown kid and expired: step 3 speaks first.
    let mut header = f.header();
    header["kid"] = json!("no-such-key");
    let mut claims = vector()["claims"].clone();
    claims["exp"] = json!(1);
    claims["iat"] = json!(0);
    assert_eq!(
        f.code(&f.sign(&header, &claims)).await,
        "mandate_key_unknown"
    );
    // Bad signature and the wrong audience: step 4 speaks first.
    let token = f.token_with(|c| c["aud"] = json!("other"));
    let forged = with_signature(&token, &[1u8; 64]);
    assert_eq!(f.code(&forged).await, "mandate_signature_invalid");
    // Revoked key and a forbidden header: step 2 speaks first.
    f.keys.revoke(&Kid::parse(&f.kid()).unwrap());
    let mut header = f.header();
    header["jku"] = json!("https://attacker.example");
    assert_eq!(
        f.code(&f.sign(&header, &vector()["claims"])).await,
        "mandate_header_rejected"
    );
    // Nothing refused is recorded in the replay set.
    assert!(f.replay.is_empty());
}

#[test]
fn spec4_problem_codes_are_exactly_the_specs() {
    let spec = [
        "mandate_required",
        "mandate_malformed",
        "mandate_header_rejected",
        "mandate_algorithm_unsupported",
        "mandate_key_unknown",
        "mandate_key_revoked",
        "mandate_signature_invalid",
        "mandate_issuer_mismatch",
        "mandate_audience_mismatch",
        "mandate_expired",
        "mandate_not_yet_valid",
        "mandate_lifetime_too_long",
        "mandate_intent_unsupported",
        "mandate_scope_invalid",
        "mandate_agent_mismatch",
        "mandate_cart_mismatch",
        "mandate_currency_mismatch",
        "mandate_amount_exceeded",
        "mandate_replayed",
        "key_directory_unavailable",
        "replay_store_unavailable",
        // SPEC §8.
        "mandate_binding_required",
        "dpop_proof_required",
        "dpop_proof_invalid",
        "dpop_proof_mismatch",
        "dpop_proof_stale",
        "dpop_proof_replayed",
        "dpop_key_mismatch",
        "use_dpop_nonce",
    ];
    let ours: Vec<&str> = ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(ours, spec);
    for code in ProblemCode::ALL {
        let expected = if code.as_str().ends_with("_unavailable") {
            503
        } else {
            401
        };
        assert_eq!(code.http_status(), expected, "{code}");
    }
}
