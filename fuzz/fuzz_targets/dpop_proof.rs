//! Any bytes as a DPoP proof (SPEC §8): refused without a panic or a hang, whatever they are.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = std::str::from_utf8(data)
        && let Ok(parsed) = ap2_mandate::DpopProof::parse(proof)
    {
        let htu = ap2_mandate::Htu::parse("https://merchant.example/v1/x").ok();
        let config = ap2_mandate::VerifierConfig::new(ap2_mandate::MerchantId::parse("m").unwrap());
        if let Some(htu) = htu {
            let _ = parsed.check(&config.proof_check("POST", &htu, None), 1_798_761_612);
        }
    }
});
