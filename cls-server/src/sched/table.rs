//! The target table: content id → server set, bounded in memory.
//!
//! An LRU list threaded through a slab (O(1) touch, insert, evict) plus a
//! hash map keyed by the content id. Bounds: at most `max_entries` entries
//! (the least recently used is evicted when full) and entries not used for
//! `expiry` are dropped (swept from the LRU end on insert and on
//! [`TargetTable::sweep`]). Memory is therefore at most about
//! `max_entries * (size_of::<Node>() + map overhead)` ≈ 100 bytes per entry.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use slab::Slab;

/// Most servers remembered for one target (LBLL's `serverSet`).
pub const MAX_SET: usize = 8;

/// A small inline set of server ids (no heap allocation per target).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerSet {
    ids: [u16; MAX_SET],
    len: u8,
}

impl ServerSet {
    pub fn as_slice(&self) -> &[u16] {
        &self.ids[..self.len as usize]
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn contains(&self, id: u16) -> bool {
        self.as_slice().contains(&id)
    }
    /// Adds `id`; false if present or full.
    pub fn insert(&mut self, id: u16) -> bool {
        if self.contains(id) || self.len() == MAX_SET {
            return false;
        }
        self.ids[self.len as usize] = id;
        self.len += 1;
        true
    }
    pub fn remove(&mut self, id: u16) -> bool {
        let n = self.len();
        match self.ids[..n].iter().position(|&x| x == id) {
            Some(p) => {
                self.ids.copy_within(p + 1..n, p);
                self.len -= 1;
                true
            }
            None => false,
        }
    }
    /// Keeps only the ids for which `keep` is true; returns whether any was
    /// removed.
    pub fn retain(&mut self, mut keep: impl FnMut(u16) -> bool) -> bool {
        let n = self.len();
        let mut w = 0;
        for r in 0..n {
            if keep(self.ids[r]) {
                self.ids[w] = self.ids[r];
                w += 1;
            }
        }
        self.len = w as u8;
        w != n
    }
}

/// One target's state.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub set: ServerSet,
    pub last_mod: Instant,
}

const NIL: usize = usize::MAX;

/// Entries reserved when the table is created.
pub const INITIAL_CAPACITY: usize = 1 << 16;

struct Node {
    key: [u8; 16],
    entry: Entry,
    last_used: Instant,
    prev: usize,
    next: usize,
}

/// Hasher for content ids: they are MD5 digests, so a keyed fold of the
/// 128 bits is enough; the per-table random key keeps crafted URLs from
/// piling into one bucket.
#[derive(Clone, Copy)]
pub struct IdHashBuilder {
    k0: u64,
    k1: u64,
}

impl IdHashBuilder {
    pub fn new() -> Self {
        let rs = std::collections::hash_map::RandomState::new();
        IdHashBuilder {
            k0: rs.hash_one(0x5a5a_u64),
            k1: rs.hash_one(0xa5a5_u64) | 1,
        }
    }
}

impl Default for IdHashBuilder {
    fn default() -> Self {
        Self::new()
    }
}

pub struct IdHasher {
    k0: u64,
    k1: u64,
    h: u64,
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 16]` hashes as a length prefix (write_usize) then the bytes.
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            let x = u64::from_le_bytes(w) ^ self.h ^ self.k0;
            let m = (x as u128).wrapping_mul(self.k1 as u128);
            self.h = (m as u64) ^ ((m >> 64) as u64);
        }
    }
    #[inline]
    fn write_usize(&mut self, _len: usize) {}
    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;
    #[inline]
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            k0: self.k0,
            k1: self.k1,
            h: 0,
        }
    }
}

/// Bounded LRU map from content id to [`Entry`].
pub struct TargetTable {
    map: HashMap<[u8; 16], usize, IdHashBuilder>,
    nodes: Slab<Node>,
    head: usize,
    tail: usize,
    max_entries: usize,
    expiry: Duration,
    touch: Duration,
    evicted: u64,
    expired: u64,
}

impl TargetTable {
    /// `max_entries` ≥ 1. Room for [`INITIAL_CAPACITY`] entries is reserved
    /// up front; beyond that the table grows (amortised) up to
    /// `max_entries`. Reserving all of `max_entries` would spread a small
    /// working set over a huge array and cost a cache miss per probe.
    pub fn new(max_entries: usize, expiry: Duration) -> Self {
        let max_entries = max_entries.max(1);
        TargetTable {
            map: HashMap::with_capacity_and_hasher(
                max_entries.min(INITIAL_CAPACITY),
                IdHashBuilder::new(),
            ),
            nodes: Slab::with_capacity(max_entries.min(INITIAL_CAPACITY)),
            head: NIL,
            tail: NIL,
            max_entries,
            expiry,
            touch: (expiry / 16).min(Duration::from_secs(1)),
            evicted: 0,
            expired: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
    /// Entries dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
    /// Entries dropped because they were unused for `expiry`.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Read-only look-up (tests, introspection); does not touch the LRU.
    pub fn peek(&self, key: &[u8; 16]) -> Option<&Entry> {
        self.map.get(key).map(|&i| &self.nodes[i].entry)
    }

    /// The entry for `key`, created empty (with `last_mod = now`) if absent
    /// or expired; marks it most recently used.
    pub fn get_or_insert(&mut self, key: &[u8; 16], now: Instant) -> &mut Entry {
        if let Some(&i) = self.map.get(key) {
            let node = &mut self.nodes[i];
            if now.saturating_duration_since(node.last_used) > self.expiry {
                node.entry = Entry {
                    set: ServerSet::default(),
                    last_mod: now,
                };
                self.expired += 1;
            }
            // Lazy promotion: relink at most once per `touch` interval, so a
            // hot target costs one cache line, not three (its neighbours'
            // links). The list stays ordered by `last_used`, which is the
            // last relink time; expiry is therefore exact to within `touch`.
            if now.saturating_duration_since(node.last_used) > self.touch {
                node.last_used = now;
                self.unlink(i);
                self.push_front(i);
            }
            return &mut self.nodes[i].entry;
        }
        self.sweep(now);
        if self.map.len() >= self.max_entries {
            let t = self.tail;
            self.remove_node(t);
            self.evicted += 1;
        }
        let i = self.nodes.insert(Node {
            key: *key,
            entry: Entry {
                set: ServerSet::default(),
                last_mod: now,
            },
            last_used: now,
            prev: NIL,
            next: NIL,
        });
        self.map.insert(*key, i);
        self.push_front(i);
        &mut self.nodes[i].entry
    }

    /// Drops entries unused for longer than `expiry` (from the LRU end, so
    /// the cost is proportional to what is dropped).
    pub fn sweep(&mut self, now: Instant) {
        while self.tail != NIL {
            let t = self.tail;
            if now.saturating_duration_since(self.nodes[t].last_used) <= self.expiry {
                break;
            }
            self.remove_node(t);
            self.expired += 1;
        }
    }

    /// Removes `server` from every set (a server that left the
    /// configuration for good). Failed servers are instead pruned lazily.
    pub fn forget_server(&mut self, server: u16) {
        for (_, n) in self.nodes.iter_mut() {
            n.entry.set.remove(server);
        }
    }

    fn remove_node(&mut self, i: usize) {
        self.unlink(i);
        let n = self.nodes.remove(i);
        self.map.remove(&n.key);
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.nodes[i].prev, self.nodes[i].next);
        if p == NIL {
            self.head = n;
        } else {
            self.nodes[p].next = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.nodes[n].prev = p;
        }
        self.nodes[i].prev = NIL;
        self.nodes[i].next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].next = self.head;
        self.nodes[i].prev = NIL;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> [u8; 16] {
        [i; 16]
    }

    #[test]
    fn server_set_ops() {
        let mut s = ServerSet::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        for i in 0..MAX_SET as u16 - 1 {
            s.insert(10 + i);
        }
        assert_eq!(s.len(), MAX_SET);
        assert!(!s.insert(99));
        assert!(s.remove(3));
        assert_eq!(s.as_slice()[0], 10);
        assert!(s.retain(|x| x % 2 == 0));
        assert!(s.as_slice().iter().all(|x| x % 2 == 0));
    }

    #[test]
    fn bounded_lru_evicts_least_recently_used() {
        let t0 = Instant::now();
        let mut t = TargetTable::new(3, Duration::from_secs(100));
        for i in 0..3 {
            t.get_or_insert(&k(i), t0).set.insert(i as u16);
        }
        // A touch within the 1 s granularity does not reorder ...
        t.get_or_insert(&k(0), t0 + Duration::from_millis(500));
        // ... a later one does: 1 becomes the LRU.
        let t1 = t0 + Duration::from_secs(2);
        t.get_or_insert(&k(0), t1);
        t.get_or_insert(&k(9), t1);
        assert_eq!(t.len(), 3);
        assert!(t.peek(&k(1)).is_none());
        assert!(t.peek(&k(0)).is_some());
        assert_eq!(t.evicted(), 1);
        for i in 10..200 {
            t.get_or_insert(&k(i), t1);
            assert!(t.len() <= 3);
        }
    }

    #[test]
    fn entries_expire() {
        let t0 = Instant::now();
        let exp = Duration::from_secs(10);
        let mut t = TargetTable::new(100, exp);
        t.get_or_insert(&k(1), t0).set.insert(1);
        t.get_or_insert(&k(2), t0 + Duration::from_secs(5))
            .set
            .insert(2);
        // Re-used after expiry: comes back empty.
        let e = t.get_or_insert(&k(1), t0 + Duration::from_secs(11));
        assert!(e.set.is_empty());
        // Swept: 2 was last used at 5 s.
        t.sweep(t0 + Duration::from_secs(16));
        assert!(t.peek(&k(2)).is_none());
        assert!(t.peek(&k(1)).is_some());
        assert_eq!(t.expired(), 2);
    }
}
