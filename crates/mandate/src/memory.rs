//! In-memory implementations of the lookup traits, for tests, the `ap2` tool and the
//! single-process demo. A service with more than one instance needs shared ones (Redis).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::ids::Kid;
use crate::verify::{
    KeyRecord, KeyResolver, KeyStatus, ReplayEntry, ReplayError, ReplayGuard, ReplayKey,
    ResolveError,
};

/// Keys held in a map; `revoke` flips a key's status.
#[derive(Debug, Default)]
pub struct MemoryKeys {
    records: RwLock<HashMap<Kid, Arc<KeyRecord>>>,
}

impl MemoryKeys {
    /// An empty set of keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the record for its kid.
    pub fn insert(&self, record: KeyRecord) {
        if let Ok(mut records) = self.records.write() {
            records.insert(record.kid.clone(), Arc::new(record));
        }
    }

    /// Marks `kid` revoked; false if it is unknown.
    pub fn revoke(&self, kid: &Kid) -> bool {
        let Ok(mut records) = self.records.write() else {
            return false;
        };
        match records.get_mut(kid) {
            Some(record) => {
                let mut revoked = KeyRecord::clone(record);
                revoked.status = KeyStatus::Revoked;
                *record = Arc::new(revoked);
                true
            }
            None => false,
        }
    }
}

impl KeyResolver for MemoryKeys {
    async fn resolve(&self, kid: &Kid) -> Result<Arc<KeyRecord>, ResolveError> {
        let records = self
            .records
            .read()
            .map_err(|_| ResolveError::Unavailable("key map lock poisoned".into()))?;
        records.get(kid).cloned().ok_or(ResolveError::Unknown)
    }
}

/// A replay set in this process's memory. Entries leave once their deadline has passed, so it
/// stays as small as the number of unexpired mandates.
#[derive(Debug, Default)]
pub struct MemoryReplayGuard {
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    until: HashMap<ReplayKey, i64>,
    /// The size at which expired entries are swept next: twice the size after a sweep, so a
    /// sweep costs amortised O(1) per insert.
    sweep_at: usize,
}

impl MemoryReplayGuard {
    /// An empty replay set.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many mandates are recorded now.
    pub fn len(&self) -> usize {
        self.used.lock().map_or(0, |used| used.until.len())
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReplayGuard for MemoryReplayGuard {
    async fn consume(&self, entries: &[ReplayEntry<'_>], now_unix: i64) -> Result<(), ReplayError> {
        let mut used = self
            .used
            .lock()
            .map_err(|_| ReplayError::Unavailable("replay set lock poisoned".into()))?;
        // Under the one lock: every entry is checked before any is recorded.
        if let Some(index) = entries.iter().position(|entry| {
            used.until
                .get(entry.key)
                .is_some_and(|until| *until > now_unix)
        }) {
            return Err(ReplayError::AlreadyUsed(index));
        }
        if used.until.len() >= used.sweep_at {
            used.until.retain(|_, until| *until > now_unix);
            used.sweep_at = (used.until.len() * 2).max(1024);
        }
        for entry in entries {
            used.until.insert(entry.key.clone(), entry.until_unix);
        }
        Ok(())
    }
}
