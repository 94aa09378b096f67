//! A fast deterministic hasher and the maps keyed by it.
//!
//! The simulation's checkers and authority look tokens and callers up
//! millions of times per campaign; ordered maps cost a tree walk of
//! comparisons per lookup, SipHash most of what a hash map saves, and std's
//! `RandomState` would make a run's iteration order differ from the next.
//! This is the Fx multiply-rotate scheme with a fixed seed: the same keys
//! land the same way in every run. Only accidental equality matters here,
//! never an adversary. Use these maps only where nothing reads them in
//! order (membership and lookup); anything iterated into a trace or a
//! verdict stays in a `BTreeMap`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hash map that is the same in every run (see the [module docs](self)).
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A hash set that is the same in every run (see the [module docs](self)).
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// See the [module docs](self). Also the authority's state digest
/// ([`Authority`](crate::authority::Authority)'s audit), which hashes every
/// token it holds.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let mut tail = [0; 8];
        let rest = chunks.remainder();
        if let Some(head) = tail.get_mut(..rest.len()) {
            head.copy_from_slice(rest);
        }
        self.add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
