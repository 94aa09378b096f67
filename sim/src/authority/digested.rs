//! A map that keeps a digest of its entries as they change, for the
//! authority's audit (A6: an operation that is refused changes nothing).
//!
//! The digest is the wrapping sum of a hash of each entry: inserting,
//! removing or changing one entry adjusts it by that entry alone. Hashing the
//! whole state around every operation instead cost a pass over every token the
//! authority ever issued, per operation: most of a tier-1 world's time. The
//! map lends its values mutably only through [`DigestedMap::update`], which
//! takes the entry's hash out before the change and puts it back after, so
//! no change escapes the digest.
//!
//! The entries sit in a hash map keyed by the same deterministic hasher (a
//! lookup hashes the key once instead of comparing token texts down a
//! tree): nothing reads them in an order that could reach a trace, and the
//! digest is a sum, the same in any order.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher as _};

use crate::fast_hash::{FastHasher, FastMap};

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct DigestedMap<K, V> {
    map: FastMap<K, V>,
    digest: u64,
}

impl<K, V> Default for DigestedMap<K, V> {
    fn default() -> Self {
        Self { map: FastMap::default(), digest: 0 }
    }
}

fn entry_hash<K: Hash + ?Sized, V: Hash>(key: &K, value: &V) -> u64 {
    let mut hasher = FastHasher::default();
    key.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

impl<K: Eq + Hash, V: Hash> DigestedMap<K, V> {
    /// The digest of every entry.
    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.digest = self.digest.wrapping_add(entry_hash(&key, &value));
        if let Some(old) = self.map.get(&key) {
            self.digest = self.digest.wrapping_sub(entry_hash(&key, old));
        }
        self.map.insert(key, value);
    }

    /// Changes the value at `key` with `change`, if there is one.
    pub(crate) fn update<Q, R>(&mut self, key: &Q, change: impl FnOnce(&mut V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        // `Borrow` promises `key` hashes as the stored key does.
        let value = self.map.get_mut(key)?;
        self.digest = self.digest.wrapping_sub(entry_hash(key, value));
        let result = change(value);
        self.digest = self.digest.wrapping_add(entry_hash(key, value));
        Some(result)
    }

    /// Changes every value `select` picks with `change`.
    pub(crate) fn update_where(&mut self, select: impl Fn(&V) -> bool, mut change: impl FnMut(&mut V)) {
        for (key, value) in self.map.iter_mut().filter(|(_, value)| select(value)) {
            self.digest = self.digest.wrapping_sub(entry_hash(key, value));
            change(value);
            self.digest = self.digest.wrapping_add(entry_hash(key, value));
        }
    }

    /// The digest worked out from scratch, to check the running one.
    #[cfg(test)]
    pub(crate) fn recomputed(&self) -> u64 {
        self.map.iter().fold(0u64, |sum, (key, value)| sum.wrapping_add(entry_hash(key, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_digest_is_the_digest_of_what_the_map_holds() {
        let mut map: DigestedMap<String, (u64, bool)> = DigestedMap::default();
        let empty = map.digest();
        map.insert("a".into(), (1, false));
        map.insert("b".into(), (2, false));
        let two = map.digest();
        assert_ne!(two, empty);
        assert_eq!(map.update("a", |v| v.1 = true), Some(()));
        assert_ne!(map.digest(), two, "a change escaped the digest");
        map.update("a", |v| v.1 = false);
        assert_eq!(map.digest(), two, "undoing a change restores the digest");
        assert_eq!(map.update("nope", |v| v.0 = 9), None);
        map.insert("b".into(), (3, false));
        map.update_where(|v| v.0 > 2, |v| v.1 = true);
        assert_eq!(map.digest(), map.recomputed());
        assert_eq!(map.get("b"), Some(&(3, true)));
    }
}
