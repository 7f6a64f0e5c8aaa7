//! lblc's target → server map: a fixed array of cache-line buckets of
//! eight atomic 64-bit slots, shared by every worker without any lock. A
//! decision reads one cache line; memory is fixed at start (16 bytes per
//! remembered target or less).
//!
//! A slot packs `tag:32 | server:10 | used:22`: the tag is the high half
//! of the target's (mixed) hash, the bucket comes from its low bits, so a
//! target is known by 32 + log2(buckets) bits of hash (two targets sharing
//! all of them would share a server — harmless for a locality hint);
//! `used` is the table's clock in seconds modulo 2^22 (48 days, far beyond
//! any expiry). An all-zero slot is empty.
//!
//! Writes are single compare-and-swaps. Two workers inserting the same
//! new target at the same instant may both succeed in different slots of
//! its bucket; lookups take the first, the other expires unused. A full
//! bucket evicts its least recently used slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::hashing::mix64;
use super::zeroed::{Zeroable, ZeroedSlice};

const SLOTS: usize = 8;
const TIME_BITS: u32 = 22;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const SERVER_BITS: u32 = 10;
const SERVER_MASK: u64 = (1 << SERVER_BITS) - 1;
/// Longest expiry the packed clock can tell apart (seconds).
pub const MAX_AGE_S: u32 = TIME_MASK as u32;

#[repr(align(64))]
#[derive(Debug)]
/// Eight slots in one cache line.
pub struct Bucket([AtomicU64; SLOTS]);
// SAFETY: atomics are valid when zeroed (an all-zero slot is empty).
unsafe impl Zeroable for Bucket {}

#[derive(Debug)]
pub struct Slots(Buckets<Bucket>);

/// A power-of-two array of cache-line buckets addressed by a target hash,
/// holding at most `max_entries` entries (lblc's slots, lblcr's sets).
#[derive(Debug)]
pub struct Buckets<B: Zeroable> {
    arr: ZeroedSlice<B>,
    mask: u64,
    max_entries: usize,
    count: AtomicUsize,
}

impl<B: Zeroable> Buckets<B> {
    /// Room for `max_entries` entries in buckets of `ways`, about two
    /// entries per `max_entries` (few evictions from full buckets).
    pub fn new(max_entries: usize, ways: usize) -> Buckets<B> {
        let n = (max_entries.max(1) * 2).div_ceil(ways).next_power_of_two();
        Buckets {
            arr: ZeroedSlice::new(n),
            mask: n as u64 - 1,
            max_entries,
            count: AtomicUsize::new(0),
        }
    }

    /// Bytes reserved by the array.
    pub fn bytes(&self) -> usize {
        self.arr.bytes()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.count.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket of `key` and the key's tag (the high half of its mixed
    /// hash, never zero: a zero word is an empty entry).
    #[inline]
    pub fn locate(&self, key: u64) -> (&B, u64) {
        let h = mix64(key);
        (&self.arr[(h & self.mask) as usize], (h >> 32) | 1)
    }

    /// Whether a new entry may be added.
    pub fn has_room(&self) -> bool {
        self.count.load(Relaxed) < self.max_entries
    }

    pub fn added(&self) {
        self.count.fetch_add(1, Relaxed);
    }

    pub fn removed(&self, n: usize) {
        self.count.fetch_sub(n, Relaxed);
    }

    pub fn iter(&self) -> std::slice::Iter<'_, B> {
        self.arr.iter()
    }

    #[cfg(test)]
    pub fn set_max_entries(&mut self, n: usize) {
        self.max_entries = n;
    }
}

impl std::ops::Deref for Slots {
    type Target = Buckets<Bucket>;
    fn deref(&self) -> &Buckets<Bucket> {
        &self.0
    }
}

#[inline]
fn pack(tag: u64, server: usize, now: u32) -> u64 {
    (tag << 32) | ((server as u64 & SERVER_MASK) << TIME_BITS) | (now as u64 & TIME_MASK)
}

#[inline]
fn tag_of(w: u64) -> u64 {
    w >> 32
}

#[inline]
fn server_of(w: u64) -> usize {
    ((w >> TIME_BITS) & SERVER_MASK) as usize
}

#[inline]
fn age(w: u64, now: u32) -> u32 {
    ((now as u64).wrapping_sub(w) & TIME_MASK) as u32
}

impl Slots {
    /// Room for `max_entries` targets in about twice as many slots.
    pub fn new(max_entries: usize) -> Slots {
        Slots(Buckets::new(max_entries, SLOTS))
    }

    /// The server remembered for `key`, refreshing its use time.
    #[inline]
    pub fn get(&self, key: u64, now: u32) -> Option<usize> {
        let (b, tag) = self.locate(key);
        for s in &b.0 {
            let w = s.load(Relaxed);
            if w != 0 && tag_of(w) == tag {
                // Written only when the second changed: hot entries stay
                // read-only and do not bounce between workers' caches.
                if age(w, now) != 0 {
                    let _ = s.compare_exchange(w, pack(tag, server_of(w), now), Relaxed, Relaxed);
                }
                return Some(server_of(w));
            }
        }
        None
    }

    /// Remembers `server` for `key`. When the table holds `max_entries`,
    /// a new target is not remembered; a full bucket evicts its least
    /// recently used slot.
    pub fn set(&self, key: u64, server: usize, now: u32) {
        let (b, tag) = self.locate(key);
        let new = pack(tag, server, now);
        let mut empty = None;
        let mut oldest: Option<(usize, u64, u32)> = None;
        for (k, s) in b.0.iter().enumerate() {
            let w = s.load(Relaxed);
            if w == 0 {
                empty.get_or_insert(k);
                continue;
            }
            if tag_of(w) == tag {
                let _ = s.compare_exchange(w, new, Relaxed, Relaxed);
                return;
            }
            let a = age(w, now);
            if oldest.is_none_or(|(_, _, oa)| a > oa) {
                oldest = Some((k, w, a));
            }
        }
        match (empty, oldest) {
            (Some(k), _) => {
                if self.has_room() && b.0[k].compare_exchange(0, new, Relaxed, Relaxed).is_ok() {
                    self.added();
                }
            }
            (None, Some((k, w, _))) => {
                let _ = b.0[k].compare_exchange(w, new, Relaxed, Relaxed);
            }
            (None, None) => {}
        }
    }

    /// Empties slots unused for `limit` seconds or more; returns how many.
    pub fn expire(&self, limit: u32, now: u32) -> usize {
        let mut n = 0;
        for b in self.iter() {
            for s in &b.0 {
                let w = s.load(Relaxed);
                if w != 0
                    && age(w, now) >= limit
                    && s.compare_exchange(w, 0, Relaxed, Relaxed).is_ok()
                {
                    n += 1;
                }
            }
        }
        self.removed(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_set_replace_and_expire() {
        let t = Slots::new(100);
        assert_eq!(t.get(1, 0), None);
        t.set(1, 7, 0);
        t.set(2, 511, 0);
        assert_eq!(t.get(1, 0), Some(7));
        assert_eq!(t.get(2, 0), Some(511));
        t.set(1, 3, 5);
        assert_eq!(t.get(1, 5), Some(3));
        assert_eq!(t.len(), 2);
        // 2 was last used at 0, 1 at 5.
        assert_eq!(t.expire(10, 10), 1);
        assert_eq!(t.get(2, 10), None);
        assert_eq!(t.get(1, 10), Some(3));
        assert_eq!(t.len(), 1);
        // Clock wrap-around of the packed time.
        let late = MAX_AGE_S + 3;
        t.set(9, 4, late);
        assert_eq!(t.expire(5, late + 2), 1, "only 1 is old");
        assert_eq!(t.get(9, late + 2), Some(4));
    }

    #[test]
    fn bounded_by_max_entries_and_full_buckets_evict_lru() {
        let t = Slots::new(10);
        for k in 0..1000u64 {
            t.set(k, 1, 0);
        }
        assert_eq!(t.len(), 10);
        // One bucket: eight slots; a ninth key evicts the least recent.
        let t = Slots::new(4); // 1 bucket
        assert_eq!(t.bytes(), 64);
        let mut t = t;
        t.0.set_max_entries(1000);
        for k in 0..8u64 {
            t.set(k, k as usize, k as u32);
        }
        t.get(0, 20); // key 0 used again: key 1 is now the oldest
        t.set(100, 9, 21);
        assert_eq!(t.get(100, 21), Some(9));
        assert_eq!(t.get(0, 21), Some(0));
        assert_eq!(t.get(1, 21), None);
        assert_eq!(t.len(), 8);
    }
}
