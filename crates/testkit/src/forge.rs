//! Forged mandates, made the way an attacker would make them, each with the exact SPEC §4 code
//! the verifier must answer. The same cases run against the library verifier and through the
//! merchant's HTTP API.

// Only `serde_json::Value`s built here as objects are indexed, and byte slices of known length.
#![allow(clippy::indexing_slicing)]

use ap2_mandate::{EcPublicKey, LocalSigner, Signer};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};

/// The issuer every honest key is registered under.
pub const ISSUER: &str = "https://wallet.example";
/// The victim.
pub const SUBJECT: &str = "user-123";
/// The attacker's own registered identity.
pub const MALLORY: &str = "mallory";
/// The merchant.
pub const MERCHANT: &str = "acme-corp";
/// The agent the mandates allow.
pub const AGENT: &str = "agent-7";

/// The group order n of P-256, big-endian.
pub const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Which cart a case is presented against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartChoice {
    /// SPEC vector V1: one Trail Runner, USD 89.99.
    Shoe,
    /// SPEC vector V2 (Sun hat, Wool socks ×3), presented with its items in the other order.
    PairReordered,
}

/// One forged (or honest) presentation and what the verifier must say.
#[derive(Debug, Clone)]
pub struct Case {
    /// The attack family.
    pub family: &'static str,
    /// What was done.
    pub name: String,
    /// The token as presented.
    pub token: String,
    /// The presenting agent.
    pub agent: &'static str,
    /// The merchant's cart for the presentation.
    pub cart: CartChoice,
    /// `"ok"` or the problem code.
    pub expected: &'static str,
}

/// The cart JSON for a choice, with line items in the order the merchant would get them.
pub fn cart_json(choice: CartChoice) -> Value {
    match choice {
        CartChoice::Shoe => json!({"merchant_id": MERCHANT, "currency": "USD", "total": 8999,
            "line_items": [{"id": "shoe-001", "title": "Trail Runner", "quantity": 1, "unit_price": 8999}]}),
        CartChoice::PairReordered => {
            json!({"merchant_id": MERCHANT, "currency": "USD", "total": 3250,
            "line_items": [{"id": "hat-7", "title": "Sun hat", "quantity": 1, "unit_price": 1900},
                           {"id": "sock-10", "title": "Wool socks", "quantity": 3, "unit_price": 450}]})
        }
    }
}

/// The hash of a cart choice.
pub fn cart_hash(choice: CartChoice) -> String {
    ap2_mandate::Cart::from_json(cart_json(choice).to_string().as_bytes())
        .map(|c| c.hash().to_string())
        .unwrap_or_default()
}

/// The keys of the game: the victim's (registered for [`SUBJECT`]), the attacker's own
/// (registered for [`MALLORY`]), and a key registered for the victim and then revoked.
pub struct Keys {
    /// The victim's key.
    pub victim: LocalSigner,
    /// Mallory's registered key.
    pub mallory: LocalSigner,
    /// A revoked key of the victim.
    pub revoked: LocalSigner,
    /// A key nobody registered.
    pub stranger: LocalSigner,
}

impl Keys {
    /// Fresh keys.
    pub fn generate() -> Option<Self> {
        Some(Self {
            victim: LocalSigner::generate().ok()?,
            mallory: LocalSigner::generate().ok()?,
            revoked: LocalSigner::generate().ok()?,
            stranger: LocalSigner::generate().ok()?,
        })
    }
}

/// base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign_with(key: &LocalSigner, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = key
        .sign_es256(input.as_bytes())
        .map(b64)
        .unwrap_or_default();
    format!("{input}.{sig}")
}

fn replace_signature(token: &str, sig: &[u8]) -> String {
    let input = token.rsplit_once('.').map_or(token, |(input, _)| input);
    format!("{input}.{}", b64(sig))
}

fn signature_of(token: &str) -> Vec<u8> {
    token
        .rsplit_once('.')
        .and_then(|(_, s)| URL_SAFE_NO_PAD.decode(s).ok())
        .unwrap_or_default()
}

/// `n - s`: the other valid signature of the same message.
pub fn negate_s(sig: &[u8]) -> Vec<u8> {
    let mut out = sig.to_vec();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let (Some(n), Some(s)) = (N.get(i), sig.get(32 + i)) else {
            return out;
        };
        let d = i16::from(*n) - i16::from(*s) - borrow;
        if let Some(o) = out.get_mut(32 + i) {
            *o = d.rem_euclid(256) as u8;
        }
        borrow = i16::from(d < 0);
    }
    out
}

/// A DER `SEQUENCE { INTEGER r, INTEGER s }` of a raw `r||s` signature.
pub fn der(sig: &[u8]) -> Vec<u8> {
    fn int(bytes: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let (r, s) = sig.split_at(sig.len().min(32));
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn hmac_token(alg: &str, kid: &str, payload: &str, secret: &[u8]) -> String {
    let algorithm = match alg {
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    };
    let header = json!({"alg": alg, "typ": "ap2-intent+jwt", "kid": kid}).to_string();
    let input = format!("{}.{}", b64(header), b64(payload));
    let tag = hmac::sign(&hmac::Key::new(algorithm, secret), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// Builds every case. `now` is the verifier's time; every case has its own `jti`, so cases do
/// not replay each other.
pub fn cases(keys: &Keys, now: i64) -> Vec<Case> {
    let victim_kid = keys.victim.kid().to_string();
    let header = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": victim_kid});
    let mut counter = 0u32;
    let mut claims = |edit: &dyn Fn(&mut Value)| -> Value {
        counter += 1;
        let mut c = json!({
            "iss": ISSUER, "sub": SUBJECT, "aud": MERCHANT,
            "iat": now - 10, "exp": now + 200, "jti": format!("forged-{counter}"),
            "ap2_intent": "CART_PURCHASE_V1",
            "ap2_scope": {"max_amount": "89.99", "currency": "USD",
                          "cart_hash": cart_hash(CartChoice::Shoe), "allow_agent_id": AGENT},
        });
        edit(&mut c);
        c
    };
    let signed = |h: &Value, c: &Value| sign_with(&keys.victim, &h.to_string(), &c.to_string());
    let mut out = Vec::new();
    let mut add = |family: &'static str, name: &str, token: String, expected: &'static str| {
        out.push(Case {
            family,
            name: name.to_owned(),
            token,
            agent: AGENT,
            cart: CartChoice::Shoe,
            expected,
        });
    };

    // --- algorithm
    let payload = claims(&|_| {}).to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = json!({"alg": alg, "typ": "ap2-intent+jwt", "kid": victim_kid}).to_string();
        add(
            "algorithm",
            &format!("alg {alg}, no signature"),
            format!("{}.{}.", b64(&h), b64(&payload)),
            "mandate_malformed",
        );
        add(
            "algorithm",
            &format!("alg {alg}, a junk signature"),
            format!("{}.{}.AA", b64(&h), b64(&payload)),
            "mandate_algorithm_unsupported",
        );
    }
    let public = keys.victim.public_key();
    let p256_key = p256::PublicKey::from_sec1_bytes(&sec1(public)).ok();
    let pem = p256_key
        .and_then(|k| k.to_public_key_pem(LineEnding::LF).ok())
        .unwrap_or_default();
    let der_key = p256_key
        .and_then(|k| k.to_public_key_der().ok())
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    let jwk_json = public.to_jwk(keys.victim.kid()).to_string();
    let raw = sec1(public);
    for alg in ["HS256", "HS384", "HS512"] {
        for (what, secret) in [
            ("PEM", pem.as_bytes()),
            ("DER", &der_key[..]),
            ("JWK JSON", jwk_json.as_bytes()),
            ("raw point", &raw[..]),
        ] {
            let payload = claims(&|_| {}).to_string();
            add(
                "algorithm",
                &format!("{alg} keyed with the public key ({what})"),
                hmac_token(alg, &victim_kid, &payload, secret),
                "mandate_algorithm_unsupported",
            );
        }
    }
    for alg in ["RS256", "PS256", "EdDSA", "ES384", "ES512", "ES256K"] {
        let h = json!({"alg": alg, "typ": "ap2-intent+jwt", "kid": victim_kid});
        add(
            "algorithm",
            &format!("{alg} header over an ES256 signature"),
            signed(&h, &claims(&|_| {})),
            "mandate_algorithm_unsupported",
        );
    }
    for alg in [
        Value::Null,
        json!(256),
        json!(["ES256"]),
        json!({"alg": "ES256"}),
    ] {
        let h = json!({"alg": alg, "typ": "ap2-intent+jwt", "kid": victim_kid});
        add(
            "algorithm",
            &format!("alg {alg}"),
            signed(&h, &claims(&|_| {})),
            "mandate_algorithm_unsupported",
        );
    }
    let h = json!({"typ": "ap2-intent+jwt", "kid": victim_kid});
    add(
        "algorithm",
        "alg missing",
        signed(&h, &claims(&|_| {})),
        "mandate_algorithm_unsupported",
    );

    // --- signature
    let good = signed(&header, &claims(&|_| {}));
    let sig = signature_of(&good);
    let (r, s) = sig.split_at(32.min(sig.len()));
    let zero = [0u8; 32];
    let over = [0xffu8; 32];
    for (name, bad) in [
        ("r = s = 0 (CVE-2022-21449)", [zero, zero].concat()),
        ("r = 0", [&zero[..], s].concat()),
        ("s = 0", [r, &zero[..]].concat()),
        ("r = n", [&N[..], s].concat()),
        ("s = n", [r, &N[..]].concat()),
        ("r = 2^256-1", [&over[..], s].concat()),
        ("s = 2^256-1", [r, &over[..]].concat()),
        ("DER-encoded", der(&sig)),
        (
            "truncated to 63 bytes",
            sig.get(..63).unwrap_or_default().to_vec(),
        ),
        ("extended by a byte", [&sig[..], &[0u8][..]].concat()),
        ("r alone", r.to_vec()),
    ] {
        add(
            "signature",
            name,
            replace_signature(&good, &bad),
            "mandate_signature_invalid",
        );
    }
    add(
        "signature",
        "empty signature segment",
        replace_signature(&good, &[])
            .trim_end_matches('.')
            .to_owned()
            + ".",
        "mandate_malformed",
    );
    let other = signed(&header, &claims(&|_| {}));
    add(
        "signature",
        "the signature of another token",
        replace_signature(&good, &signature_of(&other)),
        "mandate_signature_invalid",
    );
    let payload_value: Value = good
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null);
    let pretty = serde_json::to_string_pretty(&payload_value).unwrap_or_default();
    let head = good.split('.').next().unwrap_or_default();
    add(
        "signature",
        "same claims re-encoded, old signature",
        format!("{head}.{}.{}", b64(pretty), b64(&sig)),
        "mandate_signature_invalid",
    );
    let high_s = signed(&header, &claims(&|_| {}));
    let twin = replace_signature(&high_s, &negate_s(&signature_of(&high_s)));
    add(
        "signature",
        "the high/low-S twin of a valid signature (valid, SPEC §4)",
        twin,
        "ok",
    );
    add(
        "signature",
        "the original after its twin was spent",
        high_s,
        "mandate_replayed",
    );

    // --- header
    let forbidden = [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUJ"])),
        ("x5t", json!("dGh1bWI")),
        ("x5t#S256", json!("dGh1bWI")),
        ("crit", json!(["x-unknown"])),
        ("crit", json!(["exp"])),
    ];
    for (member, value) in forbidden {
        let mut h = header.clone();
        h[member] = value;
        add(
            "header",
            &format!("{member} in the header"),
            signed(&h, &claims(&|_| {})),
            "mandate_header_rejected",
        );
    }
    // CVE-2018-0114: the attacker embeds their own key and signs with it.
    let mut h = header.clone();
    h["jwk"] = keys.stranger.public_key().to_jwk(keys.stranger.kid());
    add(
        "header",
        "embedded jwk with the attacker's key (CVE-2018-0114)",
        sign_with(&keys.stranger, &h.to_string(), &claims(&|_| {}).to_string()),
        "mandate_header_rejected",
    );
    for (name, typ) in [
        ("typ missing", None),
        ("typ JWT", Some(json!("JWT"))),
        ("typ at+jwt", Some(json!("at+jwt"))),
        ("typ upper case", Some(json!("AP2-INTENT+JWT"))),
    ] {
        let mut h = header.clone();
        match typ {
            Some(t) => h["typ"] = t,
            None => {
                if let Some(m) = h.as_object_mut() {
                    m.remove("typ");
                }
            }
        }
        add(
            "header",
            name,
            signed(&h, &claims(&|_| {})),
            "mandate_header_rejected",
        );
    }
    let mut h = header.clone();
    if let Some(m) = h.as_object_mut() {
        m.remove("kid");
    }
    add(
        "header",
        "kid missing",
        signed(&h, &claims(&|_| {})),
        "mandate_header_rejected",
    );
    for (name, kid) in [
        ("kid empty", String::new()),
        ("kid of 129 chars", "k".repeat(129)),
        ("kid with path traversal", "../../keys/admin".to_owned()),
        ("kid with SQL", "x' OR '1'='1".to_owned()),
        ("kid with NUL", "kid\u{0}".to_owned()),
    ] {
        let h = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": kid});
        add(
            "header",
            name,
            signed(&h, &claims(&|_| {})),
            "mandate_header_rejected",
        );
    }
    // Mallory signs a mandate naming the victim, under her own registered kid.
    let h = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": keys.mallory.kid().as_str()});
    add(
        "header",
        "another user's registered kid",
        sign_with(&keys.mallory, &h.to_string(), &claims(&|_| {}).to_string()),
        "mandate_issuer_mismatch",
    );
    // ... and under the victim's kid her signature does not verify.
    add(
        "header",
        "the victim's kid, signed by another key",
        sign_with(
            &keys.mallory,
            &header.to_string(),
            &claims(&|_| {}).to_string(),
        ),
        "mandate_signature_invalid",
    );
    let h = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": keys.revoked.kid().as_str()});
    add(
        "header",
        "kid of a revoked key",
        sign_with(&keys.revoked, &h.to_string(), &claims(&|_| {}).to_string()),
        "mandate_key_revoked",
    );
    let h = json!({"alg": "ES256", "typ": "ap2-intent+jwt", "kid": keys.stranger.kid().as_str()});
    add(
        "header",
        "kid nobody registered",
        sign_with(&keys.stranger, &h.to_string(), &claims(&|_| {}).to_string()),
        "mandate_key_unknown",
    );

    // --- encoding
    let token = signed(&header, &claims(&|_| {}));
    let parts: Vec<&str> = token.split('.').collect();
    let (h64, p64, s64) = (
        parts.first().copied().unwrap_or(""),
        parts.get(1).copied().unwrap_or(""),
        parts.get(2).copied().unwrap_or(""),
    );
    let hdr_bytes = URL_SAFE_NO_PAD.decode(h64).unwrap_or_default();
    let padded = URL_SAFE.encode(&hdr_bytes);
    let standard = STANDARD.encode(&hdr_bytes);
    for (name, t) in [
        (
            "padding on the header",
            if padded == h64 {
                format!("{h64}==.{p64}.{s64}")
            } else {
                format!("{padded}.{p64}.{s64}")
            },
        ),
        ("padding on the signature", format!("{h64}.{p64}.{s64}==")),
        ("two segments", format!("{h64}.{p64}")),
        ("four segments", format!("{token}.{s64}")),
        ("empty header segment", format!(".{p64}.{s64}")),
        ("empty payload segment", format!("{h64}..{s64}")),
        ("whitespace inside the token", format!("{h64} .{p64}.{s64}")),
        ("a trailing newline", format!("{token}\n")),
    ] {
        add("encoding", name, t, "mandate_malformed");
    }
    if standard != padded && standard.trim_end_matches('=') != h64 {
        add(
            "encoding",
            "standard base64 alphabet",
            format!("{}.{p64}.{s64}", standard.trim_end_matches('=')),
            "mandate_malformed",
        );
    }
    let c = claims(&|_| {}).to_string();
    add(
        "encoding",
        "whitespace around the JSON (valid, covered by the signature)",
        sign_with(&keys.victim, &format!(" {header} "), &format!("\n{c}\t")),
        "ok",
    );
    add(
        "encoding",
        "a BOM before the header JSON",
        sign_with(
            &keys.victim,
            &format!("\u{feff}{header}"),
            &claims(&|_| {}).to_string(),
        ),
        "mandate_malformed",
    );
    add(
        "encoding",
        "a BOM before the payload JSON",
        sign_with(
            &keys.victim,
            &header.to_string(),
            &format!("\u{feff}{}", claims(&|_| {})),
        ),
        "mandate_malformed",
    );
    let non_utf8 = {
        let input = format!(
            "{}.{}",
            b64(header.to_string()),
            b64(b"{\"iss\":\"\xff\xfe\"}")
        );
        let sig = keys
            .victim
            .sign_es256(input.as_bytes())
            .map(b64)
            .unwrap_or_default();
        format!("{input}.{sig}")
    };
    add(
        "encoding",
        "non-UTF-8 bytes in the payload",
        non_utf8,
        "mandate_malformed",
    );
    let kid = &victim_kid;
    add(
        "encoding",
        "duplicate kid in the header",
        sign_with(
            &keys.victim,
            &format!(r#"{{"alg":"ES256","typ":"ap2-intent+jwt","kid":"{kid}","kid":"{kid}"}}"#),
            &claims(&|_| {}).to_string(),
        ),
        "mandate_header_rejected",
    );
    add(
        "encoding",
        "duplicate alg in the header",
        sign_with(
            &keys.victim,
            &format!(r#"{{"alg":"none","alg":"ES256","typ":"ap2-intent+jwt","kid":"{kid}"}}"#),
            &claims(&|_| {}).to_string(),
        ),
        "mandate_header_rejected",
    );
    let c = claims(&|_| {}).to_string();
    let two_auds = c.replacen(
        r#""aud":"acme-corp""#,
        r#""aud":"other-corp","aud":"acme-corp""#,
        1,
    );
    add(
        "encoding",
        "two aud members in the payload",
        sign_with(&keys.victim, &header.to_string(), &two_auds),
        "mandate_malformed",
    );
    let bomb = format!("{{\"a\":{}{}}}", "[".repeat(2000), "]".repeat(2000));
    add(
        "encoding",
        "a nesting depth bomb",
        sign_with(&keys.victim, &header.to_string(), &bomb),
        "mandate_malformed",
    );
    add(
        "encoding",
        "a token just over 8 KiB",
        sign_with(
            &keys.victim,
            &header.to_string(),
            &claims(&|c| c["pad"] = json!("x".repeat(6200))).to_string(),
        ),
        "mandate_malformed",
    );

    // --- claims
    let iat = now - 10;
    for (name, edit, code) in [
        (
            "expired",
            Box::new(|c: &mut Value| {
                c["iat"] = json!(now - 400);
                c["exp"] = json!(now - 100);
            }) as Box<dyn Fn(&mut Value)>,
            "mandate_expired",
        ),
        (
            "nbf in the future",
            Box::new(|c: &mut Value| c["nbf"] = json!(now + 120)),
            "mandate_not_yet_valid",
        ),
        (
            "iat in the future beyond the leeway",
            Box::new(|c: &mut Value| {
                c["iat"] = json!(now + 120);
                c["exp"] = json!(now + 240);
            }),
            "mandate_not_yet_valid",
        ),
        (
            "lifetime over the maximum",
            Box::new(move |c: &mut Value| c["exp"] = json!(iat + 301)),
            "mandate_lifetime_too_long",
        ),
        (
            "exp as a string",
            Box::new(|c: &mut Value| c["exp"] = json!((now + 200).to_string())),
            "mandate_malformed",
        ),
        (
            "exp as a float",
            Box::new(|c: &mut Value| c["exp"] = json!(now as f64 + 200.5)),
            "mandate_malformed",
        ),
        (
            "exp negative",
            Box::new(|c: &mut Value| c["exp"] = json!(-1)),
            "mandate_malformed",
        ),
        (
            "iat as a string",
            Box::new(move |c: &mut Value| c["iat"] = json!(iat.to_string())),
            "mandate_malformed",
        ),
        (
            "iat as a float",
            Box::new(move |c: &mut Value| c["iat"] = json!(iat as f64 + 0.5)),
            "mandate_malformed",
        ),
        (
            "iat negative",
            Box::new(|c: &mut Value| c["iat"] = json!(-5)),
            "mandate_malformed",
        ),
        (
            "aud with several merchants",
            Box::new(|c: &mut Value| c["aud"] = json!([MERCHANT, "other-corp"])),
            "mandate_audience_mismatch",
        ),
        (
            "aud differing by case",
            Box::new(|c: &mut Value| c["aud"] = json!("ACME-CORP")),
            "mandate_audience_mismatch",
        ),
        (
            "aud with a Cyrillic a",
            Box::new(|c: &mut Value| c["aud"] = json!("\u{0430}cme-corp")),
            "mandate_audience_mismatch",
        ),
        (
            "aud as an array of one (valid)",
            Box::new(|c: &mut Value| c["aud"] = json!([MERCHANT])),
            "ok",
        ),
        (
            "iss not the registered issuer",
            Box::new(|c: &mut Value| c["iss"] = json!("https://evil.example")),
            "mandate_issuer_mismatch",
        ),
        (
            "sub not the registered subject",
            Box::new(|c: &mut Value| c["sub"] = json!(MALLORY)),
            "mandate_issuer_mismatch",
        ),
        (
            "unknown intent",
            Box::new(|c: &mut Value| c["ap2_intent"] = json!("CART_PURCHASE_V2")),
            "mandate_intent_unsupported",
        ),
        // SPEC §12: amr says how the user approved; parsing it must not weaken SPEC §4.
        (
            "amr of a passkey (valid)",
            Box::new(|c: &mut Value| c["amr"] = json!(["hwk", "user", "mfa"])),
            "ok",
        ),
        (
            "amr of a code (valid)",
            Box::new(|c: &mut Value| c["amr"] = json!(["otp"])),
            "ok",
        ),
        (
            "amr as a string",
            Box::new(|c: &mut Value| c["amr"] = json!("otp")),
            "mandate_malformed",
        ),
        (
            "amr empty",
            Box::new(|c: &mut Value| c["amr"] = json!([])),
            "mandate_malformed",
        ),
        (
            "amr with a number",
            Box::new(|c: &mut Value| c["amr"] = json!(["otp", 1])),
            "mandate_malformed",
        ),
        (
            "amr as an object",
            Box::new(|c: &mut Value| c["amr"] = json!({"otp": true})),
            "mandate_malformed",
        ),
        (
            "amr with nine methods",
            Box::new(|c: &mut Value| c["amr"] = json!(vec!["otp"; 9])),
            "mandate_malformed",
        ),
        (
            "amr with a 33-character method",
            Box::new(|c: &mut Value| c["amr"] = json!(["a".repeat(33)])),
            "mandate_malformed",
        ),
        (
            "amr with a space in a method",
            Box::new(|c: &mut Value| c["amr"] = json!(["hwk user"])),
            "mandate_malformed",
        ),
    ] {
        add("claims", name, signed(&header, &claims(&*edit)), code);
    }
    for missing in ["jti", "exp", "aud", "iss", "sub", "iat"] {
        let c = claims(&|c| {
            if let Some(m) = c.as_object_mut() {
                m.remove(missing);
            }
        });
        add(
            "claims",
            &format!("{missing} missing"),
            signed(&header, &c),
            "mandate_malformed",
        );
    }

    // --- scope
    for missing in ["max_amount", "currency", "cart_hash", "allow_agent_id"] {
        let c = claims(&|c| {
            if let Some(m) = c["ap2_scope"].as_object_mut() {
                m.remove(missing);
            }
        });
        add(
            "scope",
            &format!("{missing} missing"),
            signed(&header, &c),
            "mandate_scope_invalid",
        );
    }
    for (name, member, value, code) in [
        (
            "max_amount as a JSON number",
            "max_amount",
            json!(89.99),
            "mandate_scope_invalid",
        ),
        (
            "max_amount with extra digits",
            "max_amount",
            json!("89.990"),
            "mandate_scope_invalid",
        ),
        (
            "max_amount negative",
            "max_amount",
            json!("-89.99"),
            "mandate_scope_invalid",
        ),
        (
            "max_amount in exponent form",
            "max_amount",
            json!("8.999e1"),
            "mandate_scope_invalid",
        ),
        (
            "max_amount huge",
            "max_amount",
            json!("99999999999999999999999.00"),
            "mandate_scope_invalid",
        ),
        (
            "currency lower case",
            "currency",
            json!("usd"),
            "mandate_scope_invalid",
        ),
        (
            "currency unknown",
            "currency",
            json!("XYZ"),
            "mandate_scope_invalid",
        ),
        (
            "cart_hash of another cart",
            "cart_hash",
            json!(cart_hash(CartChoice::PairReordered)),
            "mandate_cart_mismatch",
        ),
        (
            "cart_hash in hex",
            "cart_hash",
            json!("642204e9a2286ca58f53ea0841ff0248db686d63a8c6356ff455e40e595adf01"),
            "mandate_scope_invalid",
        ),
        (
            "cart_hash with another algorithm prefix",
            "cart_hash",
            json!(cart_hash(CartChoice::Shoe).replacen("sha256-", "sha512-", 1)),
            "mandate_scope_invalid",
        ),
        (
            "another agent allowed",
            "allow_agent_id",
            json!("agent-8"),
            "mandate_agent_mismatch",
        ),
        (
            "total one minor unit above max_amount",
            "max_amount",
            json!("89.98"),
            "mandate_amount_exceeded",
        ),
        (
            "another currency",
            "currency",
            json!("EUR"),
            "mandate_currency_mismatch",
        ),
    ] {
        add(
            "scope",
            name,
            signed(
                &header,
                &claims(&|c| c["ap2_scope"][member] = value.clone()),
            ),
            code,
        );
    }
    let pair = claims(&|c| {
        c["ap2_scope"]["cart_hash"] = json!(cart_hash(CartChoice::PairReordered));
        c["ap2_scope"]["max_amount"] = json!("32.50");
    });
    out.push(Case {
        family: "scope",
        name: "the same cart with its items reordered (valid)".into(),
        token: signed(&header, &pair),
        agent: AGENT,
        cart: CartChoice::PairReordered,
        expected: "ok",
    });
    let presented_by_other = signed(&header, &claims(&|_| {}));
    out.push(Case {
        family: "scope",
        name: "presented by another agent".into(),
        token: presented_by_other,
        agent: "agent-8",
        cart: CartChoice::Shoe,
        expected: "mandate_agent_mismatch",
    });
    out
}

fn sec1(key: &EcPublicKey) -> Vec<u8> {
    let jwk = key.to_jwk(&key.thumbprint());
    let coord = |name: &str| {
        jwk[name]
            .as_str()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .unwrap_or_default()
    };
    [vec![0x04], coord("x"), coord("y")].concat()
}

/// One forged (or honest) DPoP proof for a presentation and what the verifier must say.
#[derive(Debug, Clone)]
pub struct ProofCase {
    /// What was done.
    pub name: String,
    /// The `DPoP` header's value.
    pub proof: String,
    /// `"ok"` or the problem code.
    pub expected: &'static str,
}

/// The `ath` of a token.
fn ath_of(token: &str) -> String {
    b64(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The public JWK members of a key, as a proof's header carries them.
pub fn proof_jwk(key: &LocalSigner) -> Value {
    serde_json::from_str(&key.public_key().thumbprint_input()).unwrap_or(Value::Null)
}

/// The DPoP family: proofs for presenting `mandate` (bound to `agent`'s key) with the
/// request `htm` `htu` at time `now`, made the way an attacker (or a sloppy client) would make
/// them, each with its SPEC §8 code. `thief` is another key that signs honestly. Every proof
/// has its own `jti`, so the cases do not replay each other.
pub fn proof_cases(
    agent: &LocalSigner,
    thief: &LocalSigner,
    mandate: &str,
    htm: &str,
    htu: &str,
    now: i64,
) -> Vec<ProofCase> {
    let jwk = proof_jwk(agent);
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let ath = ath_of(mandate);
    let mut counter = 0u32;
    let mut claims = |edit: &dyn Fn(&mut Value)| -> Value {
        counter += 1;
        let mut c = json!({"jti": format!("proof-{counter}-{now}"), "htm": htm, "htu": htu,
                           "iat": now, "ath": ath});
        edit(&mut c);
        c
    };
    let signed =
        |key: &LocalSigner, h: &Value, c: &Value| sign_with(key, &h.to_string(), &c.to_string());
    let mut out = Vec::new();
    let mut add = |name: &str, proof: String, expected: &'static str| {
        out.push(ProofCase {
            name: name.to_owned(),
            proof,
            expected,
        });
    };
    let url = url_parts(htu);

    // --- honest, and the spellings of the URL that normalise to the same one
    add(
        "an honest proof",
        signed(agent, &header, &claims(&|_| {})),
        "ok",
    );
    let upper = format!(
        "{}://{}{}",
        url.0.to_uppercase(),
        url.1.to_uppercase(),
        url.2
    );
    add(
        "htu with the scheme and host in upper case",
        signed(agent, &header, &claims(&|c| c["htu"] = json!(upper))),
        "ok",
    );
    let default_port = match url.0.as_str() {
        "https" => format!("https://{}:443{}", url.1, url.2),
        _ => format!("http://{}:80{}", url.1, url.2),
    };
    if !url.1.contains(':') {
        add(
            "htu with the default port spelled out",
            signed(agent, &header, &claims(&|c| c["htu"] = json!(default_port))),
            "ok",
        );
    }
    add(
        "htu with a query and a fragment (ignored)",
        signed(
            agent,
            &header,
            &claims(&|c| c["htu"] = json!(format!("{htu}?a=1#f"))),
        ),
        "ok",
    );
    add(
        "iat 60 s ago (the oldest accepted)",
        signed(agent, &header, &claims(&|c| c["iat"] = json!(now - 60))),
        "ok",
    );
    add(
        "iat 5 s ahead (the leeway)",
        signed(agent, &header, &claims(&|c| c["iat"] = json!(now + 5))),
        "ok",
    );

    // --- the request and the token
    add(
        "htu with a trailing slash",
        signed(
            agent,
            &header,
            &claims(&|c| c["htu"] = json!(format!("{htu}/"))),
        ),
        "dpop_proof_mismatch",
    );
    add(
        "htu of another path",
        signed(
            agent,
            &header,
            &claims(&|c| c["htu"] = json!(format!("{htu}-other"))),
        ),
        "dpop_proof_mismatch",
    );
    add(
        "htu of another host",
        signed(
            agent,
            &header,
            &claims(&|c| {
                c["htu"] = json!(format!("{}://evil.example{}", url.0, url.2));
            }),
        ),
        "dpop_proof_mismatch",
    );
    add(
        "htu that is not a URL",
        signed(agent, &header, &claims(&|c| c["htu"] = json!("not a url"))),
        "dpop_proof_mismatch",
    );
    add(
        "htm of another method",
        signed(agent, &header, &claims(&|c| c["htm"] = json!("GET"))),
        "dpop_proof_mismatch",
    );
    add(
        "htm in lower case",
        signed(
            agent,
            &header,
            &claims(&|c| c["htm"] = json!(htm.to_lowercase())),
        ),
        "dpop_proof_mismatch",
    );
    add(
        "no ath",
        signed(
            agent,
            &header,
            &claims(&|c| {
                c.as_object_mut().map(|o| o.remove("ath"));
            }),
        ),
        "dpop_proof_mismatch",
    );
    add(
        "ath of another token",
        signed(
            agent,
            &header,
            &claims(&|c| c["ath"] = json!(ath_of("another.token.x"))),
        ),
        "dpop_proof_mismatch",
    );
    add(
        "iat 61 s ago",
        signed(agent, &header, &claims(&|c| c["iat"] = json!(now - 61))),
        "dpop_proof_stale",
    );
    add(
        "iat 6 s ahead",
        signed(agent, &header, &claims(&|c| c["iat"] = json!(now + 6))),
        "dpop_proof_stale",
    );

    // --- the claims' form
    for (name, member, value) in [
        ("iat as a string", "iat", json!(now.to_string())),
        ("iat as a float", "iat", json!(now as f64 + 0.5)),
        ("iat negative", "iat", json!(-1)),
        ("jti with a dot", "jti", json!("a.b")),
        ("jti empty", "jti", json!("")),
        ("htu as a number", "htu", json!(7)),
        ("ath as a number", "ath", json!(7)),
    ] {
        add(
            name,
            signed(agent, &header, &claims(&|c| c[member] = value.clone())),
            "dpop_proof_invalid",
        );
    }
    for member in ["jti", "htm", "htu", "iat"] {
        add(
            &format!("no {member}"),
            signed(
                agent,
                &header,
                &claims(&|c| {
                    c.as_object_mut().map(|o| o.remove(member));
                }),
            ),
            "dpop_proof_invalid",
        );
    }

    // --- the header
    let payload = claims(&|_| {}).to_string();
    for (name, h) in [
        ("typ jwt", json!({"typ": "jwt", "alg": "ES256", "jwk": jwk})),
        ("typ missing", json!({"alg": "ES256", "jwk": jwk})),
        (
            "typ of a mandate",
            json!({"typ": "ap2-intent+jwt", "alg": "ES256", "jwk": jwk}),
        ),
        (
            "alg ES384",
            json!({"typ": "dpop+jwt", "alg": "ES384", "jwk": jwk}),
        ),
        ("alg missing", json!({"typ": "dpop+jwt", "jwk": jwk})),
        ("no jwk", json!({"typ": "dpop+jwt", "alg": "ES256"})),
        (
            "jwk as a string",
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk.to_string()}),
        ),
        (
            "a kid instead of a jwk",
            json!({"typ": "dpop+jwt", "alg": "ES256", "kid": "k1"}),
        ),
        (
            "a kid beside the jwk",
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "kid": "k1"}),
        ),
        (
            "a jku",
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "jku": "https://evil.example/jwks"}),
        ),
        (
            "an x5c",
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "x5c": ["MIIB"]}),
        ),
        (
            "crit",
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "crit": ["exp"]}),
        ),
        (
            "an unknown header member",
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "zip": "DEF"}),
        ),
    ] {
        add(
            name,
            sign_with(agent, &h.to_string(), &payload),
            "dpop_proof_invalid",
        );
    }
    let mut private = jwk.clone();
    private["d"] = json!(b64([7u8; 32]));
    let mut off_curve = jwk.clone();
    off_curve["y"] = json!(b64([1u8; 32]));
    let mut identity = jwk.clone();
    identity["x"] = json!(b64([0u8; 32]));
    identity["y"] = json!(b64([0u8; 32]));
    let mut p384 = jwk.clone();
    p384["crv"] = json!("P-384");
    let mut rsa = jwk.clone();
    rsa["kty"] = json!("RSA");
    let mut short = jwk.clone();
    short["x"] = json!(b64([1u8; 31]));
    let mut extra = jwk.clone();
    extra["kid"] = json!("k1");
    for (name, key) in [
        ("a jwk with the private d", private),
        ("a jwk off the curve", off_curve),
        ("a jwk of the point (0, 0)", identity),
        ("a jwk on P-384", p384),
        ("a jwk of type RSA", rsa),
        ("a jwk with a 31-byte x", short),
        ("a jwk with a kid", extra),
    ] {
        let h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key});
        add(
            name,
            sign_with(agent, &h.to_string(), &payload),
            "dpop_proof_invalid",
        );
    }
    let jwk_text = jwk.to_string();
    for (name, secret) in [
        (
            "alg HS256 keyed with the jwk's JSON",
            jwk_text.as_bytes().to_vec(),
        ),
        (
            "alg HS256 keyed with the thumbprint input",
            agent.public_key().thumbprint_input().into_bytes(),
        ),
    ] {
        let h = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}).to_string();
        let input = format!("{}.{}", b64(&h), b64(&payload));
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        add(
            name,
            format!("{input}.{}", b64(tag.as_ref())),
            "dpop_proof_invalid",
        );
    }
    let none = json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}).to_string();
    add(
        "alg none without a signature",
        format!("{}.{}.", b64(&none), b64(&payload)),
        "dpop_proof_invalid",
    );
    add(
        "duplicate alg in the header",
        sign_with(
            agent,
            &format!(r#"{{"typ":"dpop+jwt","alg":"ES256","alg":"none","jwk":{jwk_text}}}"#),
            &payload,
        ),
        "dpop_proof_invalid",
    );
    add(
        "duplicate htu in the payload",
        sign_with(
            agent,
            &header.to_string(),
            &format!(
                r#"{{"jti":"dup-{now}","htm":"{htm}","htu":"https://evil.example/","htu":"{htu}","iat":{now},"ath":"{ath}"}}"#
            ),
        ),
        "dpop_proof_invalid",
    );

    // --- the signature and the encoding
    let honest = signed(agent, &header, &claims(&|_| {}));
    let sig = signature_of(&honest);
    add(
        "signed by another key than the jwk",
        signed(thief, &header, &claims(&|_| {})),
        "dpop_proof_invalid",
    );
    add(
        "an all-zero signature",
        replace_signature(&honest, &[0u8; 64]),
        "dpop_proof_invalid",
    );
    add(
        "a DER signature",
        replace_signature(&honest, &der(&sig)),
        "dpop_proof_invalid",
    );
    let mut flipped = sig.clone();
    if let Some(b) = flipped.get_mut(10) {
        *b ^= 1;
    }
    add(
        "one bit of the signature flipped",
        replace_signature(&honest, &flipped),
        "dpop_proof_invalid",
    );
    let (h64, rest) = honest.split_once('.').unwrap_or_default();
    let (p64, s64) = rest.split_once('.').unwrap_or_default();
    add("two segments", format!("{h64}.{p64}"), "dpop_proof_invalid");
    add(
        "four segments",
        format!("{honest}.{s64}"),
        "dpop_proof_invalid",
    );
    add("empty segments", "..".to_owned(), "dpop_proof_invalid");
    add(
        "a padding character after the payload",
        format!("{h64}.{p64}=.{s64}"),
        "dpop_proof_invalid",
    );
    add(
        "two proofs joined by a comma",
        format!("{honest}, {}", signed(agent, &header, &claims(&|_| {}))),
        "dpop_proof_invalid",
    );
    let padding = "x".repeat(5 * 1024);
    add(
        "a proof over 4 KiB",
        signed(agent, &header, &claims(&|c| c["pad"] = json!(padding))),
        "dpop_proof_invalid",
    );

    // --- the key binding
    let thief_header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": proof_jwk(thief)});
    add(
        "an honest proof by another key (a thief's)",
        signed(thief, &thief_header, &claims(&|_| {})),
        "dpop_key_mismatch",
    );
    out
}

/// `(scheme, authority, path)` of an absolute URL, for spelling it differently.
fn url_parts(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    (scheme.to_owned(), authority.to_owned(), path.to_owned())
}
