//! lblcr's target → server-set map: a fixed array of 128-byte buckets,
//! shared by every worker without any lock, like lblc's
//! [`super::slots`]. A bucket holds eight entries: their eight key words
//! in its first cache line, their eight set words in the second (both
//! lines are fetched at once, so a decision costs one memory round trip).
//! Memory is fixed at start: 32 bytes per `max_entries`.
//!
//! ```text
//! key word: tag:32 | 0:10 | used:22        (all zero: empty entry)
//! set word: lastmod:25 | len:3 | m3:9 | m2:9 | m1:9 | m0:9
//! ```
//! The tag is the high half of the target's mixed hash, the bucket comes
//! from its low bits (as in `slots`); `used` and `lastmod` are the table's
//! clock in seconds, modulo 2^22 and 2^25. A set holds at most
//! [`MAX_SET`] servers of index < 512 ([`super::MAX_SERVERS`]).
//!
//! Every change is one compare-and-swap of one word. A set changed by two
//! workers at once keeps one of the two changes (the other is lost, a
//! locality hint, not data). A key word written before its set word is
//! seen with an empty set for an instant; a lookup treats that as a miss.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::slots::Buckets;
use super::zeroed::Zeroable;

/// Most servers one target's set holds.
pub const MAX_SET: usize = 4;
const WAYS: usize = 8;
const USED_BITS: u32 = 22;
const USED_MASK: u64 = (1 << USED_BITS) - 1;
const M_BITS: u32 = 9;
const M_MASK: u64 = (1 << M_BITS) - 1;
const LEN_SHIFT: u32 = M_BITS * MAX_SET as u32;
const MOD_SHIFT: u32 = LEN_SHIFT + 3;
const MOD_MASK: u64 = (1 << (64 - MOD_SHIFT)) - 1;
/// Longest expiry the packed use clock can tell apart (seconds).
pub const MAX_AGE_S: u32 = USED_MASK as u32;
/// Longest shrink period the packed change clock can tell apart.
pub const MAX_SHRINK_S: u32 = MOD_MASK as u32;

const _: () = assert!(1 << M_BITS >= super::MAX_SERVERS);

#[repr(C, align(128))]
#[derive(Debug)]
/// Eight entries: key words, then set words.
pub struct Bucket {
    keys: [AtomicU64; WAYS],
    sets: [AtomicU64; WAYS],
}
// SAFETY: atomics are valid when zeroed (a zero key word is empty).
unsafe impl Zeroable for Bucket {}

/// One target's server set, by value (a packed word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Set(u64);

impl Set {
    /// The set `{j}`, modified at `now`.
    pub fn one(j: usize, now: u32) -> Set {
        Set(j as u64 & M_MASK | 1 << LEN_SHIFT).touched(now)
    }

    pub fn len(self) -> usize {
        ((self.0 >> LEN_SHIFT) & 7) as usize
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The members' server indices.
    pub fn members(self) -> impl Iterator<Item = usize> {
        (0..self.len()).map(move |k| ((self.0 >> (k as u32 * M_BITS)) & M_MASK) as usize)
    }

    pub fn contains(self, j: usize) -> bool {
        self.members().any(|m| m == j)
    }

    /// Seconds since the last change, at `now`.
    pub fn age(self, now: u32) -> u32 {
        ((now as u64).wrapping_sub(self.0 >> MOD_SHIFT) & MOD_MASK) as u32
    }

    fn touched(self, now: u32) -> Set {
        Set(self.0 & !(MOD_MASK << MOD_SHIFT) | (now as u64 & MOD_MASK) << MOD_SHIFT)
    }

    /// The set with `j` added (unchanged if present or full), modified at
    /// `now`.
    pub fn with(self, j: usize, now: u32) -> Set {
        let n = self.len();
        if n >= MAX_SET || self.contains(j) {
            return self;
        }
        let k = n as u32 * M_BITS;
        let w = (self.0 & !(7 << LEN_SHIFT)) | (j as u64 & M_MASK) << k;
        Set(w | ((n as u64 + 1) << LEN_SHIFT)).touched(now)
    }

    /// The set without `j` (unchanged if absent), modified at `now`.
    pub fn without(self, j: usize, now: u32) -> Set {
        let mut out = Set(0);
        let mut found = false;
        for m in self.members() {
            if m == j && !found {
                found = true;
            } else {
                out = out.with(m, 0);
            }
        }
        if !found {
            return self;
        }
        out.touched(now)
    }
}

/// Where a looked-up set lives: pass it back to [`SetSlots::update`].
#[derive(Clone, Copy)]
pub struct Slot<'a>(&'a AtomicU64);

#[derive(Debug)]
pub struct SetSlots(Buckets<Bucket>);

impl std::ops::Deref for SetSlots {
    type Target = Buckets<Bucket>;
    fn deref(&self) -> &Buckets<Bucket> {
        &self.0
    }
}

#[inline]
fn key_word(tag: u64, now: u32) -> u64 {
    tag << 32 | (now as u64 & USED_MASK)
}

#[inline]
fn used_age(w: u64, now: u32) -> u32 {
    ((now as u64).wrapping_sub(w) & USED_MASK) as u32
}

impl SetSlots {
    /// Room for `max_entries` sets in about twice as many entries.
    pub fn new(max_entries: usize) -> SetSlots {
        SetSlots(Buckets::new(max_entries, WAYS))
    }

    #[inline]
    fn locate(&self, key: u64) -> (&Bucket, u64) {
        let (b, tag) = self.0.locate(key);
        // The set words' line is needed right after the key scan: ask for
        // it now so that both misses overlap.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch hint on memory we own; it cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(b.sets.as_ptr() as *const i8);
        }
        (b, tag)
    }

    /// The set remembered for `key`, refreshing its use time.
    #[inline]
    pub fn get(&self, key: u64, now: u32) -> Option<(Slot<'_>, Set)> {
        let (b, tag) = self.locate(key);
        for (k, kw) in b.keys.iter().enumerate() {
            let w = kw.load(Relaxed);
            if w >> 32 == tag {
                // Written only when the second changed: hot entries stay
                // read-only and do not bounce between workers' caches.
                if used_age(w, now) != 0 {
                    let _ = kw.compare_exchange(w, key_word(tag, now), Relaxed, Relaxed);
                }
                let s = Set(b.sets[k].load(Relaxed));
                return (!s.is_empty()).then_some((Slot(&b.sets[k]), s));
            }
        }
        None
    }

    /// Replaces the set `old` read by [`SetSlots::get`] with `new`, unless
    /// another worker changed it meanwhile (then theirs stands).
    #[inline]
    pub fn update(&self, slot: Slot<'_>, old: Set, new: Set) {
        if old != new {
            let _ = slot.0.compare_exchange(old.0, new.0, Relaxed, Relaxed);
        }
    }

    /// Remembers `set` for `key`. When the table holds `max_entries`, a
    /// new target is not remembered; a full bucket evicts its least
    /// recently used entry.
    pub fn insert(&self, key: u64, set: Set, now: u32) {
        let (b, tag) = self.locate(key);
        let kw_new = key_word(tag, now);
        let mut empty = None;
        let mut oldest: Option<(usize, u64, u32)> = None;
        for (k, kw) in b.keys.iter().enumerate() {
            let w = kw.load(Relaxed);
            if w == 0 {
                empty.get_or_insert(k);
                continue;
            }
            if w >> 32 == tag {
                b.sets[k].store(set.0, Relaxed);
                return;
            }
            let a = used_age(w, now);
            if oldest.is_none_or(|(_, _, oa)| a > oa) {
                oldest = Some((k, w, a));
            }
        }
        match (empty, oldest) {
            (Some(k), _) => {
                if self.has_room()
                    && b.keys[k]
                        .compare_exchange(0, kw_new, Relaxed, Relaxed)
                        .is_ok()
                {
                    b.sets[k].store(set.0, Relaxed);
                    self.added();
                }
            }
            (None, Some((k, w, _))) => {
                if b.keys[k]
                    .compare_exchange(w, kw_new, Relaxed, Relaxed)
                    .is_ok()
                {
                    b.sets[k].store(set.0, Relaxed);
                }
            }
            (None, None) => {}
        }
    }

    /// Empties entries unused for `limit` seconds or more; returns how many.
    pub fn expire(&self, limit: u32, now: u32) -> usize {
        let mut n = 0;
        for b in self.iter() {
            for (k, kw) in b.keys.iter().enumerate() {
                let w = kw.load(Relaxed);
                if w != 0
                    && used_age(w, now) >= limit
                    && kw.compare_exchange(w, 0, Relaxed, Relaxed).is_ok()
                {
                    b.sets[k].store(0, Relaxed);
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

    fn members(s: Set) -> Vec<usize> {
        s.members().collect()
    }

    #[test]
    fn set_words_add_remove_and_age() {
        let s = Set::one(511, 7);
        assert_eq!((members(s), s.age(7), s.age(10)), (vec![511], 0, 3));
        let s = s.with(3, 20).with(3, 30).with(0, 40).with(17, 50);
        assert_eq!(members(s), [511, 3, 0, 17]);
        assert_eq!(s.age(50), 0);
        assert_eq!(s.with(9, 60), s, "full: unchanged");
        let t = s.without(3, 70);
        assert_eq!((members(t), t.age(70)), (vec![511, 0, 17], 0));
        assert_eq!(t.without(3, 80), t, "absent: unchanged");
        let e = Set::one(1, 0).without(1, 5);
        assert!(e.is_empty());
        // The packed clock wraps.
        let late = (MOD_MASK as u32) + 5;
        assert_eq!(Set::one(2, late - 10).age(late), 10);
    }

    #[test]
    fn get_insert_update_expire() {
        let t = SetSlots::new(100);
        assert!(t.get(1, 0).is_none());
        t.insert(1, Set::one(4, 0), 0);
        t.insert(2, Set::one(5, 0), 0);
        let (slot, s) = t.get(1, 3).unwrap();
        assert_eq!(members(s), [4]);
        t.update(slot, s, s.with(6, 3));
        assert_eq!(members(t.get(1, 3).unwrap().1), [4, 6]);
        // A stale update loses to the change made meanwhile.
        t.update(slot, s, s.with(7, 3));
        assert_eq!(members(t.get(1, 3).unwrap().1), [4, 6]);
        assert_eq!(t.len(), 2);
        // 2 was last used at 0, 1 at 3.
        assert_eq!(t.expire(3, 3), 1);
        assert!(t.get(2, 3).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bounded_by_max_entries_and_full_buckets_evict_lru() {
        let t = SetSlots::new(10);
        for k in 0..1000u64 {
            t.insert(k, Set::one(1, 0), 0);
        }
        assert_eq!(t.len(), 10);
        let t = SetSlots::new(4); // one bucket
        let mut t = t;
        t.0.set_max_entries(1000);
        for k in 0..WAYS as u64 {
            t.insert(k, Set::one(k as usize, k as u32), k as u32);
        }
        t.get(0, 20); // 0 used again: 1 is now the oldest
        t.insert(100, Set::one(9, 21), 21);
        assert_eq!(members(t.get(100, 21).unwrap().1), [9]);
        assert!(t.get(0, 21).is_some());
        assert!(t.get(1, 21).is_none());
        assert_eq!(t.len(), WAYS);
    }
}
