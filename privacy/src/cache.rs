//! A bounded, lock-free, 2-way set-associative cache of full results (original address
//! -> pseudonym) for the keyed modes: client addresses are pseudonymised here,
//! per output view, before the event is encoded (broker: session ->
//! encode(view) -> fanout), and the same clients come back again and again.
//!
//! Each slot is a sequence lock made only of atomics (no `unsafe`): a writer
//! takes the slot by moving its sequence from even to odd with a CAS (and
//! simply skips the store when another writer has it), a reader retries
//! nothing: a slot it saw change under it, or one being written, is a miss.
//! A hit therefore only ever returns the value stored with exactly that key,
//! so the cache cannot change a result; it can only save the computation.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Counters and size of a [`ResultCache`], as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Slots (0 = no cache).
    pub capacity: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups computed (and then stored).
    pub misses: u64,
    /// Stores that replaced another address's entry.
    pub evictions: u64,
}

#[derive(Default)]
struct Slot {
    /// 0 = never written; odd = being written; even > 0 = valid.
    seq: AtomicU64,
    key_hi: AtomicU64,
    key_lo: AtomicU64,
    val_hi: AtomicU64,
    val_lo: AtomicU64,
}

pub(crate) struct ResultCache {
    slots: Box<[Slot]>,
    mask: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// The largest cache accepted (entries); bigger settings are cut to this.
pub const MAX_CACHE_ENTRIES: usize = 1 << 22;

impl ResultCache {
    /// `entries` is rounded up to a power of two (at least 2, at most
    /// [`MAX_CACHE_ENTRIES`]); 0 gives None (no cache).
    pub(crate) fn new(entries: usize) -> Option<Self> {
        if entries == 0 {
            return None;
        }
        let n = entries.clamp(2, MAX_CACHE_ENTRIES).next_power_of_two();
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::default()).collect();
        Some(Self {
            slots,
            mask: n - 1,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// The two slots (a 2-way set) `key` may live in, and a victim bit.
    #[inline]
    fn set(&self, key: u128) -> (&Slot, &Slot, bool) {
        // Fibonacci hashing of both halves; the top bits pick the set.
        let h =
            ((key >> 64) as u64 ^ (key as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let i = (h >> 32) as usize & self.mask & !1;
        // `i + 1 <= mask < len`: `get` never fails, it only keeps this panic-free.
        let first = self.slots.get(i).unwrap_or(&self.slots[0]);
        let second = self.slots.get(i + 1).unwrap_or(first);
        (first, second, h & (1 << 31) != 0)
    }

    /// The value stored with exactly `key` in `s`, if it is there and was
    /// not being written while read.
    #[inline]
    fn read(s: &Slot, key: u128) -> Option<u128> {
        let s1 = s.seq.load(Ordering::Acquire);
        if s1 == 0 || s1 & 1 == 1 {
            return None;
        }
        let kh = s.key_hi.load(Ordering::Relaxed);
        let kl = s.key_lo.load(Ordering::Relaxed);
        let vh = s.val_hi.load(Ordering::Relaxed);
        let vl = s.val_lo.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let s2 = s.seq.load(Ordering::Relaxed);
        (s1 == s2 && (u128::from(kh) << 64 | u128::from(kl)) == key)
            .then_some(u128::from(vh) << 64 | u128::from(vl))
    }

    /// The cached value for `key`, or compute it with `f`, store and return it.
    #[inline]
    pub(crate) fn get_or(&self, key: u128, f: impl FnOnce() -> u128) -> u128 {
        let (s0, s1, victim) = self.set(key);
        if let Some(v) = Self::read(s0, key).or_else(|| Self::read(s1, key)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return v;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let v = f();
        // An empty slot first, else the victim the hash picks.
        let s = if s0.seq.load(Ordering::Relaxed) == 0 {
            s0
        } else if s1.seq.load(Ordering::Relaxed) == 0 || victim {
            s1
        } else {
            s0
        };
        self.store(s, key, v);
        v
    }

    fn store(&self, s: &Slot, key: u128, v: u128) {
        let s0 = s.seq.load(Ordering::Relaxed);
        if s0 & 1 == 1
            || s.seq
                .compare_exchange(s0, s0 + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return; // another writer has the slot: skip, it is only a cache
        }
        fence(Ordering::Release);
        if s0 != 0 {
            let old = u128::from(s.key_hi.load(Ordering::Relaxed)) << 64
                | u128::from(s.key_lo.load(Ordering::Relaxed));
            if old != key {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.key_hi.store((key >> 64) as u64, Ordering::Relaxed);
        s.key_lo.store(key as u64, Ordering::Relaxed);
        s.val_hi.store((v >> 64) as u64, Ordering::Relaxed);
        s.val_lo.store(v as u64, Ordering::Relaxed);
        s.seq.store(s0 + 2, Ordering::Release);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            capacity: self.slots.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_evict_and_values() {
        let c = ResultCache::new(3).expect("cache"); // rounds to 4
        assert_eq!(c.stats().capacity, 4);
        assert_eq!(c.get_or(1, || 10), 10);
        assert_eq!(c.get_or(1, || 99), 10, "hit returns the stored value");
        let st = c.stats();
        assert_eq!((st.hits, st.misses), (1, 1));
        // 15 more keys into 4 slots: evictions, values always right.
        for k in 2..17u128 {
            assert_eq!(c.get_or(k, || k * 10), k * 10);
        }
        for k in 1..17u128 {
            assert_eq!(c.get_or(k, || k * 10), k * 10);
        }
        assert!(c.stats().evictions >= 1);
        assert!(ResultCache::new(0).is_none());
    }

    #[test]
    fn threads_never_see_a_wrong_value() {
        let c = std::sync::Arc::new(ResultCache::new(8).expect("cache"));
        let hs: Vec<_> = (0..4u128)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u128 {
                        let k = (i * 7 + t) % 64;
                        let v = c.get_or(k, || k.wrapping_mul(0x1234_5678_9abc_def1) ^ (k << 90));
                        assert_eq!(v, k.wrapping_mul(0x1234_5678_9abc_def1) ^ (k << 90));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("thread");
        }
    }
}
