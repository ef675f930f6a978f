//! Identifiers the services mint for the rows they store (sessions, orders, mandate requests).

use base64::Engine as _;

/// The random source failed; no identifier was made.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the random source failed")]
pub struct RandomFailed;

/// A fresh identifier made at `now_unix` (the service's clock, in seconds): 16 bytes,
/// base64url without padding (22 characters), the first 6 the seconds since the Unix epoch
/// (big-endian; a time before it counts as 0), the other 10 (80 bits) from the operating
/// system's CSPRNG. Identifiers made close together in time share their leading characters, so
/// the rows a service inserts under load land in a few neighbouring pages of each index on
/// them, not in a random page each (docs/PROTOCOL.md, "Identifiers").
pub fn time_ordered(now_unix: i64) -> Result<String, RandomFailed> {
    let secs = u64::try_from(now_unix).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&secs.to_be_bytes()[2..]);
    aws_lc_rs::rand::fill(&mut bytes[6..]).map_err(|_| RandomFailed)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec11_ids_made_in_the_same_second_share_their_time_and_differ_in_80_random_bits() {
        let decode = |id: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(id)
                .unwrap()
        };
        let t = 1_796_000_000_i64;
        let (a, b) = (time_ordered(t).unwrap(), time_ordered(t).unwrap());
        assert_eq!((a.len(), b.len()), (22, 22));
        let (a, b) = (decode(&a), decode(&b));
        assert_eq!(a[..6], u64::try_from(t).unwrap().to_be_bytes()[2..]);
        assert_eq!(a[..6], b[..6]);
        assert_ne!(a[6..], b[6..], "the random part repeated");
        // A second later: the same leading characters.
        let later = time_ordered(t + 1).unwrap();
        let first = time_ordered(t).unwrap();
        assert_eq!(later[..6], first[..6]);
        // A time before the epoch counts as 0.
        let early = decode(&time_ordered(-1).unwrap());
        assert_eq!(early[..6], [0u8; 6]);
    }
}
