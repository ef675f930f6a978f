//! The wallet's secrets: the master key that seals private keys at rest, random ids and
//! tokens, and one-time codes.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Seals and opens private keys with AES-256-GCM; the user id is the associated data, so a
/// sealed key cannot be moved to another user's row.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// From `WALLET_MASTER_KEY` if given, else from `<data_dir>/master.key`, created (mode
    /// 0600) on first start.
    pub fn load(configured: Option<&SecretString>, data_dir: &Path) -> anyhow::Result<Self> {
        let encoded: Zeroizing<String> = match configured {
            Some(key) => Zeroizing::new(key.expose_secret().trim().to_owned()),
            None => Zeroizing::new(Self::key_file(data_dir)?),
        };
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.as_bytes())
                .map_err(|_| anyhow::anyhow!("the master key is not base64"))?,
        );
        anyhow::ensure!(bytes.len() == 32, "the master key must be 32 bytes");
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| anyhow::anyhow!("the master key was refused"))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    fn key_file(data_dir: &Path) -> anyhow::Result<String> {
        let path = data_dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(bytes.as_mut())
                    .map_err(|_| anyhow::anyhow!("the random generator failed"))?;
                let encoded = STANDARD.encode(bytes.as_ref());
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&path)?;
                file.write_all(encoded.as_bytes())?;
                file.sync_all()?;
                tracing::warn!(
                    path = %path.display(),
                    "created a master key file; back it up or set WALLET_MASTER_KEY"
                );
                Ok(encoded)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, user_id: &str, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("random failed"))?;
        let mut in_out = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(user_id.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        in_out.fill(0);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] sealed for `user_id`.
    pub fn open(&self, user_id: &str, sealed: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "sealed key too short");
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let plaintext_len = self
            .0
            .open_in_place(nonce, Aad::from(user_id.as_bytes()), &mut in_out)
            .map_err(|_| anyhow::anyhow!("the sealed key does not open with this master key"))?
            .len();
        in_out.truncate(plaintext_len);
        Ok(in_out)
    }
}

/// The associated data a request's code is sealed under: a sealed code opens for its own
/// request only.
fn code_aad(request_id: &str) -> String {
    format!("otp:{request_id}")
}

/// Seals a one-time code for storage (SPEC §9: never in plain text), base64url.
pub fn seal_code(master: &MasterKey, request_id: &str, code: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let sealed = master.seal(&code_aad(request_id), code.as_bytes())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

/// Opens a stored code; `None` when there is none (the request ended) or it does not open.
pub fn open_code(master: &MasterKey, request_id: &str, stored: &str) -> Option<Zeroizing<String>> {
    use base64::Engine;
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(stored)
        .ok()?;
    let plain = master.open(&code_aad(request_id), &sealed).ok()?;
    String::from_utf8(plain.to_vec()).ok().map(Zeroizing::new)
}

/// `n` random bytes, base64url.
pub fn random_token(n: usize) -> anyhow::Result<String> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("random failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes.as_slice()))
}

/// SHA-256 of a bearer token, hex: what the database keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// A uniformly random 6-digit code (rejection sampling: no modulo bias).
pub fn otp() -> anyhow::Result<String> {
    const LIMIT: u32 = 4_294_000_000; // the largest multiple of 1_000_000 below 2^32
    loop {
        let mut bytes = [0u8; 4];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("random failed"))?;
        let n = u32::from_be_bytes(bytes);
        if n < LIMIT {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

/// Constant-time equality of two codes or tokens.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_user_and_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load(None, dir.path()).unwrap();
        let sealed = key.seal("alice", b"secret key bytes").unwrap();
        assert_eq!(
            key.open("alice", &sealed).unwrap().as_slice(),
            b"secret key bytes"
        );
        assert!(key.open("bob", &sealed).is_err());
        let again = MasterKey::load(None, dir.path()).unwrap();
        assert_eq!(
            again.open("alice", &sealed).unwrap().as_slice(),
            b"secret key bytes"
        );
        let other = SecretString::from(STANDARD.encode([7u8; 32]));
        assert!(
            MasterKey::load(Some(&other), dir.path())
                .unwrap()
                .open("alice", &sealed)
                .is_err()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let short = SecretString::from(STANDARD.encode([7u8; 16]));
        assert!(MasterKey::load(Some(&short), dir.path()).is_err());
    }

    #[test]
    fn otps_are_six_digits() {
        for _ in 0..1000 {
            let code = otp().unwrap();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
