//! A bounded map with approximate least-recently-used eviction and O(1) operations.
//!
//! Two generations: lookups hit `hot` or promote from `cold`; when `hot` fills, it becomes
//! `cold` and the old `cold` is dropped. An entry survives as long as it is used at least
//! once per generation, which is what a cache of hot streams needs, with none of the
//! bookkeeping of a linked list.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// See the module docs.
#[derive(Debug)]
pub struct GenerationalCache<K, V> {
    hot: HashMap<K, V>,
    cold: HashMap<K, V>,
    generation_size: usize,
}

impl<K: Hash + Eq, V> GenerationalCache<K, V> {
    /// A cache holding at most `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            hot: HashMap::new(),
            cold: HashMap::new(),
            generation_size: (capacity / 2).max(1),
        }
    }

    /// The value for `key`, promoting it to the hot generation.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_mut(key).map(|value| &*value)
    }

    /// The value for `key`, to change in place, promoting it to the hot generation.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.hot.contains_key(key) {
            let (k, v) = self.cold.remove_entry(key)?;
            self.insert(k, v);
        }
        self.hot.get_mut(key)
    }

    /// Inserts or replaces a value.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.hot.get_mut(&key) {
            *slot = value;
            return;
        }
        if self.hot.len() >= self.generation_size {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.cold.remove(&key);
        self.hot.insert(key, value);
    }

    /// Forgets one key.
    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.hot.remove(key);
        self.cold.remove(key);
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.hot.clear();
        self.cold.clear();
    }

    /// How many entries are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_what_is_used() {
        let mut cache = GenerationalCache::new(4);
        for i in 0..100u32 {
            cache.insert(i, i);
            // Key 0 is used all the time and must survive every generation change.
            if i > 0 {
                assert_eq!(cache.get(&0), Some(&0));
            }
            assert!(cache.len() <= 4, "len {} at {i}", cache.len());
        }
        assert_eq!(cache.get(&1), None);
        cache.insert(0, 7);
        assert_eq!(cache.get(&0), Some(&7));
    }
}
