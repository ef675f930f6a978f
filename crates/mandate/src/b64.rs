//! base64url without padding, strict: no padding, no `+`/`/`, no non-canonical trailing bits.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// The three segments of a JWS compact token, or `None` for any other count.
pub(crate) fn three_segments(token: &str) -> Option<(&str, &str, &str)> {
    let mut segments = token.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(payload), Some(signature), None) => Some((header, payload, signature)),
        _ => None,
    }
}

/// Decodes into a fixed-size array, refusing any other length.
pub(crate) fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    // An N-byte value has exactly this many unpadded characters; checking first keeps an
    // oversized input from being decoded at all.
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    match URL_SAFE_NO_PAD.decode_slice(text, &mut out) {
        Ok(n) if n == N => Some(out),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_base64url_refuses_padding_standard_alphabet_and_trailing_bits() {
        assert_eq!(decode("YQ"), Some(b"a".to_vec()));
        assert_eq!(decode("YQ=="), None);
        assert_eq!(decode("+/"), None);
        assert_eq!(decode("YR"), None, "non-zero trailing bits");
        assert_eq!(decode_array::<1>("YQ"), Some([b'a']));
        assert_eq!(decode_array::<2>("YQ"), None);
    }
}
