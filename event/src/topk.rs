//! Top-k heavy hitters (qnames, clients, domains) with the space-saving algorithm
//! (Metwally, Agrawal, El Abbadi 2005), shared by tapbus-aggregate's top-N series and
//! tapbus-top's tables: `capacity` monitored keys; a new key past capacity replaces the one
//! with the smallest count and inherits that count + 1 (the inherited part is its possible
//! overestimate, kept as `error`). Every key with a true count above `events / capacity`
//! is monitored, and a monitored key's count is at most `error` above its true count.
//!
//! Memory is `capacity` keys whatever the stream. Each offer costs one hash lookup of the
//! borrowed key and an O(log capacity) sift of a min-heap of slot numbers; a replaced
//! key's buffers are reused for the new key (`make` gets the old one, and the slot's copy
//! is updated with `clone_from`), so a full summary does not allocate for short keys.
//!
//! Each key may carry a value `V` (e.g. tapbus-top's recent rate): [`SpaceSaving::offer`]
//! hands it out, and a replaced key's value starts again from `V::default()`. With the
//! default `V = ()` it costs nothing.

use std::borrow::Borrow;
use std::hash::Hash;

use rustc_hash::FxHashMap;

#[derive(Debug, Clone)]
struct Slot<K, V> {
    key: K,
    count: u64,
    error: u64,
    /// Position of this slot in `heap`.
    pos: usize,
    value: V,
}

/// One monitored key: its count, the count's error bound, its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a, K, V> {
    pub key: &'a K,
    /// Counted occurrences, the inherited part included (never below the true count).
    pub count: u64,
    /// At most this much of `count` is inherited (`count - error <= true count`).
    pub error: u64,
    pub value: &'a V,
}

/// A space-saving summary of at most `capacity` keys.
#[derive(Debug, Clone)]
pub struct SpaceSaving<K, V = ()> {
    map: FxHashMap<K, usize>,
    slots: Vec<Slot<K, V>>,
    /// Slot numbers, a binary min-heap by count.
    heap: Vec<usize>,
    capacity: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V: Default> SpaceSaving<K, V> {
    /// An empty summary keeping `capacity` (at least 1) keys.
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            map: FxHashMap::default(),
            slots: Vec::new(),
            heap: Vec::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Counts one occurrence of `key` and returns its value. `make` builds the stored key
    /// for a new one, given the evicted key (to reuse its buffer) when the summary is full.
    #[inline]
    pub fn offer<Q>(&mut self, key: &Q, make: impl FnOnce(&Q, Option<K>) -> K) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(&s) = self.map.get(key) {
            self.slots[s].count += 1;
            self.sift_down(self.slots[s].pos);
            return &mut self.slots[s].value;
        }
        if self.slots.len() < self.capacity {
            let s = self.slots.len();
            let k = make(key, None);
            self.map.insert(k.clone(), s);
            self.slots.push(Slot {
                key: k,
                count: 1,
                error: 0,
                pos: self.heap.len(),
                value: V::default(),
            });
            self.heap.push(s);
            self.sift_up(self.heap.len() - 1);
            return &mut self.slots[s].value;
        }
        // Replace the minimum (the heap's root).
        let s = self.heap[0];
        self.evicted += 1;
        let old = self
            .map
            .remove_entry::<K>(&self.slots[s].key)
            .map(|(k, _)| k);
        let k = make(key, old);
        let slot = &mut self.slots[s];
        slot.key.clone_from(&k);
        self.map.insert(k, s);
        slot.error = slot.count;
        slot.count += 1;
        slot.value = V::default();
        self.sift_down(0);
        &mut self.slots[s].value
    }

    /// The `n` keys with the highest counts, highest first (ties by key order of
    /// `Ord`), each with its count and error bound.
    pub fn top(&self, n: usize) -> Vec<(&K, u64, u64)>
    where
        K: Ord,
    {
        let mut v: Vec<(&K, u64, u64)> = self
            .slots
            .iter()
            .map(|s| (&s.key, s.count, s.error))
            .collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    /// Every monitored key, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_, K, V>> {
        self.slots.iter().map(|s| Entry {
            key: &s.key,
            count: s.count,
            error: s.error,
            value: &s.value,
        })
    }

    /// Whether `key` is monitored.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(key)
    }

    /// Keys monitored (at most the capacity).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True before the first offer.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Keys replaced by a new key so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn count_at(&self, pos: usize) -> u64 {
        self.slots[self.heap[pos]].count
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        let (sa, sb) = (self.heap[a], self.heap[b]);
        self.slots[sa].pos = a;
        self.slots[sb].pos = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.count_at(parent) <= self.count_at(i) {
                break;
            }
            self.swap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < n && self.count_at(l) < self.count_at(m) {
                m = l;
            }
            if r < n && self.count_at(r) < self.count_at(m) {
                m = r;
            }
            if m == i {
                return;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &mut SpaceSaving<String>, k: &str) {
        s.offer(k, |k, old| {
            let mut b = old.unwrap_or_default();
            b.clear();
            b.push_str(k);
            b
        });
    }

    #[test]
    fn exact_below_capacity() {
        let mut s = SpaceSaving::new(10);
        for k in ["a", "b", "a", "c", "a", "b"] {
            offer(&mut s, k);
        }
        let t = s.top(2);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].0.as_str(), t[0].1, t[0].2), ("a", 3, 0));
        assert_eq!((t[1].0.as_str(), t[1].1), ("b", 2));
        assert_eq!(s.top(10).len(), 3);
        assert_eq!(s.evicted(), 0);
    }

    #[test]
    fn heavy_hitters_survive_and_bounds_hold() {
        // 3 heavy keys among many rare ones, capacity 8.
        let mut s = SpaceSaving::new(8);
        let mut truth = std::collections::HashMap::new();
        for i in 0..10_000u32 {
            let k = match i % 10 {
                0..=2 => "heavy1".to_string(),
                3..=4 => "heavy2".to_string(),
                5 => "heavy3".to_string(),
                _ => format!("rare{i}"),
            };
            *truth.entry(k.clone()).or_insert(0u64) += 1;
            offer(&mut s, &k);
        }
        let t = s.top(3);
        let names: Vec<&str> = t.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(names, ["heavy1", "heavy2", "heavy3"]);
        for (k, count, error) in s.top(8) {
            let real = truth[k];
            assert!(
                count >= real && count - error <= real,
                "{k}: {count} {error} {real}"
            );
        }
        assert_eq!(s.len(), 8, "bounded");
        let total: u64 = s.iter().map(|x| x.count).sum();
        assert_eq!(total, 10_000, "space-saving keeps the sum of counts");
        // Every rare key past the first five that filled the table replaced one.
        assert!(s.evicted() >= 4000 - 5, "{}", s.evicted());
    }

    #[test]
    fn values_follow_their_key_and_restart_when_replaced() {
        let mut s: SpaceSaving<Box<str>, u32> = SpaceSaving::new(2);
        let key = |k: &str, _: Option<Box<str>>| Box::<str>::from(k);
        for _ in 0..3 {
            *s.offer("a", key) += 10;
        }
        *s.offer("b", key) += 1;
        // "c" replaces "b" (the smallest count): count 2, error 1, value from default.
        *s.offer("c", key) += 5;
        let mut got: Vec<(&str, u64, u64, u32)> = s
            .iter()
            .map(|e| (&**e.key, e.count, e.error, *e.value))
            .collect();
        got.sort();
        assert_eq!(got, vec![("a", 3, 0, 30), ("c", 2, 1, 5)]);
        assert!(s.contains("a") && !s.contains("b"));
        assert_eq!(s.evicted(), 1);
    }
}
