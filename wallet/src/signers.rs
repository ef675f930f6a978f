//! The users' keys opened for signing, kept in memory so a mandate costs no unsealing.
//!
//! A key read from the store just before it was revoked (or rotated away from) must not be
//! cached just after: the cache would then sign with it until the wallet restarts (SPEC §10:
//! the wallet never signs with a revoked key). So every change of a key counts, and a key
//! read before a change is not cached: its reader reads the store again.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use ap2_mandate::{LocalSigner, Signer};

/// What the cache holds, under one lock.
#[derive(Default)]
struct Cache {
    by_user: HashMap<String, Arc<LocalSigner>>,
    /// Key revocations and rotations seen so far.
    changes: u64,
}

/// The users' signers (see the module's documentation).
#[derive(Default)]
pub struct Signers {
    cache: RwLock<Cache>,
}

impl Signers {
    /// `user`'s cached signer.
    pub fn get(&self, user: &str) -> Option<Arc<LocalSigner>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.by_user.get(user).cloned()
    }

    /// How many key changes there have been: read before reading a key from the store, and
    /// given to [`Signers::insert_unless_changed`].
    pub fn changes(&self) -> u64 {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .changes
    }

    /// Caches `signer` for `user`, read from the store after [`Signers::changes`] answered
    /// `seen`, unless a key changed since: then `false`, and the caller reads the store again
    /// (what it read may be the key just revoked).
    pub fn insert_unless_changed(&self, user: &str, signer: Arc<LocalSigner>, seen: u64) -> bool {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.changes != seen {
            return false;
        }
        cache.by_user.insert(user.to_owned(), signer);
        true
    }

    /// `user`'s signer: the cached one, or one `read` from the store and cached. A key that
    /// changed while it was read is read once more: that read follows the change (the store
    /// records a change before the cache counts it), so it is as current as any read, and it
    /// is used, cached only if nothing changed again meanwhile. So key changes elsewhere
    /// (users created, keys rotated) cost a mint at most one more read, never an unbounded
    /// wait.
    pub async fn get_or_read<E, Fut>(
        &self,
        user: &str,
        mut read: impl FnMut() -> Fut,
    ) -> Result<Arc<LocalSigner>, E>
    where
        Fut: std::future::Future<Output = Result<Arc<LocalSigner>, E>>,
    {
        if let Some(signer) = self.get(user) {
            return Ok(signer);
        }
        let seen = self.changes();
        let signer = read().await?;
        if self.insert_unless_changed(user, signer.clone(), seen) {
            return Ok(signer);
        }
        let seen = self.changes();
        let signer = read().await?;
        self.insert_unless_changed(user, signer.clone(), seen);
        Ok(signer)
    }

    /// `user`'s key is now `signer` (a user created, or a key rotated; the store already holds
    /// it): it signs for them from now on.
    pub fn replaced(&self, user: &str, signer: Arc<LocalSigner>) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.changes = cache.changes.wrapping_add(1);
        cache.by_user.insert(user.to_owned(), signer);
    }

    /// The key `kid` was revoked (the store already records it): dropped, whoever holds it (a
    /// user's current key, or one another instance rotated away from while this one held it).
    pub fn revoked(&self, kid: &str) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.changes = cache.changes.wrapping_add(1);
        cache
            .by_user
            .retain(|_, signer| Signer::kid(signer.as_ref()).as_str() != kid);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use ap2_mandate::{LocalSigner, Signer};

    use super::Signers;

    fn signer() -> Arc<LocalSigner> {
        Arc::new(LocalSigner::generate().unwrap())
    }

    #[test]
    fn a_key_read_before_a_revocation_is_not_cached_after_it() {
        let signers = Signers::default();
        let old = signer();
        let kid = old.kid().to_string();
        // A reader reads alice's key from the store; the key is revoked meanwhile.
        let seen = signers.changes();
        signers.revoked(&kid);
        assert!(!signers.insert_unless_changed("alice", old.clone(), seen));
        assert!(signers.get("alice").is_none());
        // Read again after the revocation: the store says revoked, or a new key is cached.
        let seen = signers.changes();
        assert!(signers.insert_unless_changed("alice", old.clone(), seen));
        assert!(signers.get("alice").is_some());
        // Cached before the revocation: the revocation drops it.
        signers.revoked(&kid);
        assert!(signers.get("alice").is_none());
    }

    #[tokio::test]
    async fn a_key_changed_while_read_is_read_once_more_and_the_second_read_is_used() {
        let signers = Signers::default();
        let (old, new) = (signer(), signer());
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            // The first read races a revocation of what it read; the second follows it.
            let read = if reads.get() == 1 {
                signers.revoked(old.kid().as_str());
                old.clone()
            } else {
                new.clone()
            };
            async move { Ok::<_, ()>(read) }
        };
        let got = signers.get_or_read("alice", read).await.unwrap();
        assert_eq!(got.kid(), new.kid(), "the read after the change signs");
        assert_eq!(reads.get(), 2);
        assert_eq!(
            signers.get("alice").unwrap().kid(),
            new.kid(),
            "and is cached"
        );
    }

    #[tokio::test]
    async fn a_stream_of_key_changes_costs_a_mint_one_more_read_not_a_wait() {
        let signers = Signers::default();
        let key = signer();
        let reads = std::cell::Cell::new(0);
        // Every read races a key change elsewhere (a user created, a key rotated).
        let read = || {
            reads.set(reads.get() + 1);
            signers.replaced(&format!("other-{}", reads.get()), signer());
            let key = key.clone();
            async move { Ok::<_, ()>(key) }
        };
        let got = signers.get_or_read("alice", read).await.unwrap();
        assert_eq!(got.kid(), key.kid());
        assert_eq!(reads.get(), 2, "read twice, then used");
        assert!(
            signers.get("alice").is_none(),
            "not cached: it changed again"
        );
    }

    #[tokio::test]
    async fn a_key_read_with_no_change_is_read_once_and_cached() {
        let signers = Signers::default();
        let key = signer();
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            let key = key.clone();
            async move { Ok::<_, ()>(key) }
        };
        signers.get_or_read("alice", read).await.unwrap();
        signers.get_or_read("alice", read).await.unwrap();
        assert_eq!(reads.get(), 1, "the second answer is the cached key");
    }

    #[tokio::test]
    async fn a_failed_read_is_answered_and_nothing_is_cached() {
        let signers = Signers::default();
        let failed = signers.get_or_read("bob", || async { Err("store down") });
        assert_eq!(failed.await.err(), Some("store down"));
        assert!(signers.get("bob").is_none());
    }

    #[test]
    fn a_key_read_before_a_rotation_does_not_replace_the_new_one() {
        let signers = Signers::default();
        let (old, new) = (signer(), signer());
        let seen = signers.changes();
        signers.replaced("alice", new.clone());
        assert!(!signers.insert_unless_changed("alice", old, seen));
        assert_eq!(
            signers.get("alice").unwrap().kid(),
            new.kid(),
            "the new key signs"
        );
    }
}
