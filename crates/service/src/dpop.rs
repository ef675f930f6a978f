//! SPEC §8 on the wire: the `DPoP` request header and the refusals with their challenges,
//! shared by the merchant (every agent call) and the wallet (mandate requests).

use ap2_mandate::VerifyError;
use axum::http::{HeaderMap, HeaderValue, StatusCode};

use crate::problem::Problem;

/// The request header holding the proof.
pub const DPOP_HEADER: &str = "dpop";

/// The one `DPoP` header's value, if there is one. Two headers (or one that is not
/// visible ASCII) are a malformed proof: RFC 9449 §4.3 check 1.
pub fn proof_header(headers: &HeaderMap) -> Result<Option<&str>, VerifyError> {
    let mut all = headers.get_all(DPOP_HEADER).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(VerifyError::ProofInvalid(
            "a request carries exactly one DPoP header",
        ));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| VerifyError::ProofInvalid("the DPoP header is not ASCII"))
}

/// A refused mandate as RFC 6750, RFC 9449 and RFC 9457 want it: 401 with the SPEC's code
/// and a challenge, or 503 when a dependency is down. The challenge is `DPoP` (`error=
/// "invalid_dpop_proof"`, `"use_dpop_nonce"` or, for the mandate's own failures,
/// `"invalid_token"`, with `algs="ES256"`) where this merchant requires binding or the request
/// used DPoP, and RFC 6750's `Bearer error="invalid_token"` otherwise.
pub fn refusal(err: &VerifyError, dpop: bool) -> Problem {
    let code = err.code();
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    // The message never carries an outage's cause (that goes to the log): see `VerifyError`.
    let detail = err.to_string();
    let problem = Problem::new(status, code.as_str(), detail.clone());
    let Some(error) = code.dpop_error() else {
        // A dependency that is down or throttled: worth asking again in a moment.
        return problem.with_retry_after(1);
    };
    // A quoted-string may not hold `"` or `\`; our messages have none, but make sure.
    let description: String = detail
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
        .collect();
    let challenge = if dpop || error != "invalid_token" {
        format!(r#"DPoP error="{error}", error_description="{description}", algs="ES256""#)
    } else {
        format!(r#"Bearer error="invalid_token", error_description="{description}""#)
    };
    match HeaderValue::from_str(&challenge) {
        Ok(value) => problem.with_challenge(value),
        Err(_) => problem.with_challenge(HeaderValue::from_static(
            r#"DPoP error="invalid_token", algs="ES256""#,
        )),
    }
}
