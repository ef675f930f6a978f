//! `cargo bench -p ap2-mandate`: the protocol's costs without I/O: minting, verifying (SPEC §4
//! steps 1–6, the replay set left out), cart hashing and money parsing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;

use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    AgentId, Ap2Scope, Cart, Consume, Currency, FixedClock, IntentMandate, Jti, KeyRecord,
    KeyStatus, LineItem, LocalSigner, MerchantId, Money, Presentation, Signer, Verifier,
    VerifierConfig,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const NOW: i64 = 1_800_000_000;

fn cart(items: usize) -> Cart {
    let line_items = (0..items)
        .map(|i| LineItem {
            id: format!("sku-{i:04}"),
            title: format!("Product number {i}, in blue"),
            quantity: 1 + (i as u32 % 5),
            unit_price: 199 + i as u64 * 7,
        })
        .collect();
    Cart::new(
        MerchantId::parse("acme-corp").unwrap(),
        Currency::parse("USD").unwrap(),
        line_items,
    )
    .unwrap()
}

fn claims(cart: &Cart) -> IntentMandate {
    IntentMandate {
        iss: "https://wallet.example".into(),
        sub: "user-123".into(),
        aud: MerchantId::parse("acme-corp").unwrap(),
        iat: NOW - 10,
        nbf: None,
        exp: NOW + 200,
        jti: Jti::random().unwrap(),
        scope: Ap2Scope {
            max_amount: cart.total(),
            cart_hash: cart.hash().clone(),
            allow_agent_id: AgentId::parse("agent-7").unwrap(),
        },
        cnf: None,
        amr: None,
    }
}

fn mint(c: &mut Criterion) {
    let signer = LocalSigner::generate().unwrap();
    let cart = cart(1);
    let claims = claims(&cart);
    c.bench_function("mint (ES256, key in memory)", |b| {
        b.iter(|| ap2_mandate::mint(black_box(&signer), black_box(&claims)).unwrap())
    });
    c.bench_function("sign only (ES256, key in memory)", |b| {
        b.iter(|| {
            signer
                .sign_es256(black_box(b"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0"))
                .unwrap()
        })
    });
}

fn verify(c: &mut Criterion) {
    let signer = LocalSigner::generate().unwrap();
    let keys = MemoryKeys::new();
    keys.insert(KeyRecord {
        kid: signer.kid().clone(),
        issuer: "https://wallet.example".into(),
        subject: "user-123".into(),
        status: KeyStatus::Active,
        key: signer.public_key().verification_key().unwrap(),
    });
    let verifier = Verifier::new(
        VerifierConfig::without_binding(MerchantId::parse("acme-corp").unwrap()),
        keys,
        MemoryReplayGuard::new(),
        FixedClock(NOW),
    );
    let cart = cart(1);
    let token = ap2_mandate::mint(&signer, &claims(&cart)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("verify (SPEC §4 steps 1-6)", |b| {
        b.iter(|| {
            let presentation = Presentation::bearer(black_box(&token), "agent-7", &cart);
            runtime
                .block_on(verifier.verify(&presentation, Consume::No))
                .unwrap()
        })
    });
    c.bench_function("parse (SPEC §4 steps 1-2)", |b| {
        b.iter(|| ap2_mandate::verify::ParsedToken::parse(black_box(&token)).unwrap())
    });
    let key = signer.public_key().verification_key().unwrap();
    let (input, _) = token.rsplit_once('.').unwrap();
    let sig = signer.sign_es256(input.as_bytes()).unwrap();
    c.bench_function("signature only (ES256 verify, parsed key)", |b| {
        b.iter(|| assert!(key.verify_es256(black_box(input.as_bytes()), black_box(&sig))))
    });
}

/// SPEC §8: what a bound presentation adds to the verification above.
fn dpop(c: &mut Criterion) {
    let agent = LocalSigner::generate().unwrap();
    let htu = "https://merchant.example/v1/checkout-sessions/cs_1/complete";
    let mandate = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJ4In0.sig";
    let proof = ap2_mandate::make_proof(
        &agent,
        &ap2_mandate::ProofRequest {
            htm: "POST",
            htu,
            iat: NOW,
            jti: None,
            token: Some(mandate),
            nonce: None,
        },
    )
    .unwrap();
    let expected = ap2_mandate::Htu::parse(htu).unwrap();
    let config = VerifierConfig::new(MerchantId::parse("acme-corp").unwrap());
    let ath = ap2_mandate::dpop::ath(mandate);
    c.bench_function("dpop proof: form and signature (parse)", |b| {
        b.iter(|| ap2_mandate::DpopProof::parse(black_box(&proof)).unwrap())
    });
    let parsed = ap2_mandate::DpopProof::parse(&proof).unwrap();
    c.bench_function("dpop proof: claims (check, with ath)", |b| {
        b.iter(|| {
            let ath = ap2_mandate::dpop::ath(black_box(mandate));
            parsed
                .check(&config.proof_check("POST", &expected, Some(&ath)), NOW)
                .unwrap()
        })
    });
    let _ = ath;
    let public = agent.public_key().clone();
    c.bench_function("dpop proof: the jwk's key parsed for verification", |b| {
        b.iter(|| black_box(&public).verification_key().unwrap())
    });
    let jwk = public.to_jwk(&public.thumbprint());
    c.bench_function(
        "dpop proof: the jwk's point checked on the curve (p256)",
        |b| b.iter(|| ap2_mandate::EcPublicKey::from_jwk(black_box(&jwk)).unwrap()),
    );
    c.bench_function("dpop proof: jkt", |b| {
        b.iter(|| ap2_mandate::Jkt::of(black_box(&public)))
    });
    c.bench_function("dpop proof: htu normalised", |b| {
        b.iter(|| ap2_mandate::Htu::parse(black_box(htu)).unwrap())
    });
    c.bench_function("dpop proof: make (sign)", |b| {
        b.iter(|| {
            ap2_mandate::make_proof(
                &agent,
                &ap2_mandate::ProofRequest {
                    htm: "POST",
                    htu,
                    iat: NOW,
                    jti: None,
                    token: Some(mandate),
                    nonce: None,
                },
            )
            .unwrap()
        })
    });
}

fn cart_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("cart hash");
    for items in [1, 10, 100] {
        let json = serde_json::to_vec(&cart(items)).unwrap();
        group.bench_with_input(
            BenchmarkId::new("parse + validate + hash", items),
            &json,
            |b, json| b.iter(|| Cart::from_json(black_box(json)).unwrap()),
        );
    }
    group.finish();
}

fn money(c: &mut Criterion) {
    let usd = Currency::parse("USD").unwrap();
    c.bench_function("money parse \"89.99\" USD", |b| {
        b.iter(|| Money::parse(black_box("89.99"), usd).unwrap())
    });
    c.bench_function("money parse \"90071992547409.91\" USD", |b| {
        b.iter(|| Money::parse(black_box("90071992547409.91"), usd).unwrap())
    });
}

criterion_group!(benches, mint, verify, dpop, cart_hash, money);
criterion_main!(benches);
