//! One shard's storage: connection entries of one cache line each, chained
//! from a fixed array of hash buckets, with the slow timer's links inside the
//! entry.
//!
//! A SYN flood from random sources is all misses on a large, cold table, so
//! what a new connection costs is the cache lines it touches. Here inserting
//! touches the bucket and the entry (the free list's head, prefetched at the
//! previous insert) and expiring touches the entry and its bucket; the
//! workers prefetch a batch's buckets and entries before processing it
//! ([`Hint`]). A general-purpose map plus a slab plus per-id timer arrays
//! touched about three times as many lines (control bytes, key slot, slab
//! slot, four timer arrays).
//!
//! The bucket array is sized once for the shard's ceiling and never
//! rehashed: past it, chains grow longer instead of the shard stalling on a
//! rehash under a flood.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::{Conn, ConnKey, ConnState, RevKey};
use crate::conn::wheel::{Links, NONE};
use crate::hash::SeededState;

const NAT: u8 = 1;
const TUN: u8 = 2;
const PERSISTENT: u8 = 4;
const LIVE: u8 = 8;
/// Linked in the reply index (VS/NAT connections).
const REV: u8 = 16;
const NO_SLOT: u16 = u16::MAX;

/// A connection as stored: [`Conn`]'s fields flattened so that they, the
/// two bucket chains (by client and, for VS/NAT, by reply) and the timer
/// links fill exactly one 64-byte line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Entry {
    caddr: u32,
    vaddr: u32,
    raddr: u32,
    pub expires: u32,
    pub timeout: u32,
    /// A template's `refs` (connections using it); a connection's
    /// `seq_next`. (A template never carries a sequence, nor a connection
    /// references.)
    pub aux: u32,
    /// Next entry in the bucket's chain (or in the free list).
    hnext: u32,
    /// Next entry in the reply bucket's chain.
    rnext: u32,
    wnext: u32,
    wprev: u32,
    cport: u16,
    vport: u16,
    rport: u16,
    svc: u16,
    rs: u16,
    wslot: u16,
    cmac: [u8; 6],
    proto: u8,
    pub state: ConnState,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    fn new(c: &Conn) -> Self {
        let flag = |on: bool, f: u8| if on { f } else { 0 };
        Entry {
            caddr: c.key.caddr,
            vaddr: c.key.vaddr,
            raddr: c.raddr,
            expires: c.expires,
            timeout: c.timeout,
            aux: if c.state == ConnState::Template {
                c.refs
            } else {
                c.seq_next
            },
            hnext: NONE,
            rnext: NONE,
            wnext: NONE,
            wprev: NONE,
            cport: c.key.cport,
            vport: c.key.vport,
            rport: c.rport,
            svc: c.svc,
            rs: c.rs,
            wslot: NO_SLOT,
            cmac: c.cmac,
            proto: c.key.proto,
            state: c.state,
            flags: LIVE | flag(c.nat, NAT) | flag(c.tun, TUN) | flag(c.persistent, PERSISTENT),
        }
    }

    /// Points a template at another real server (its key, timers and
    /// chains unchanged; templates are not in the reply index).
    pub fn retarget(&mut self, t: &super::Target) {
        debug_assert!(self.state == ConnState::Template);
        self.raddr = t.raddr;
        self.rport = t.rport;
        self.svc = t.svc;
        self.rs = t.rs;
        self.flags &= !(NAT | TUN);
        if t.nat {
            self.flags |= NAT;
        }
        if t.tun {
            self.flags |= TUN;
        }
    }

    pub fn key(&self) -> ConnKey {
        ConnKey {
            caddr: self.caddr,
            vaddr: self.vaddr,
            cport: self.cport,
            vport: self.vport,
            proto: self.proto,
        }
    }

    /// Whether a reply keyed `r` belongs to this entry.
    fn replies_to(&self, r: &RevKey) -> bool {
        self.flags & REV != 0
            && self.raddr == r.raddr
            && self.rport == r.rport
            && self.caddr == r.caddr
            && self.cport == r.cport
            && self.proto == r.proto
    }

    fn rev_key(&self) -> RevKey {
        RevKey {
            raddr: self.raddr,
            caddr: self.caddr,
            rport: self.rport,
            cport: self.cport,
            proto: self.proto,
        }
    }

    fn is(&self, key: &ConnKey) -> bool {
        self.caddr == key.caddr
            && self.cport == key.cport
            && self.vaddr == key.vaddr
            && self.vport == key.vport
            && self.proto == key.proto
    }

    pub fn live(&self) -> bool {
        self.flags & LIVE != 0
    }

    /// Where the connection goes.
    pub fn target(&self) -> super::Target {
        super::Target {
            svc: self.svc,
            rs: self.rs,
            raddr: self.raddr,
            rport: self.rport,
            nat: self.flags & NAT != 0,
            tun: self.flags & TUN != 0,
            persistent: self.flags & PERSISTENT != 0,
        }
    }

    /// The entry as the rest of the director sees it.
    pub fn conn(&self) -> Conn {
        Conn {
            key: self.key(),
            raddr: self.raddr,
            expires: self.expires,
            rport: self.rport,
            svc: self.svc,
            rs: self.rs,
            state: self.state,
            nat: self.flags & NAT != 0,
            tun: self.flags & TUN != 0,
            persistent: self.flags & PERSISTENT != 0,
            refs: if self.state == ConnState::Template {
                self.aux
            } else {
                0
            },
            timeout: self.timeout,
            cmac: self.cmac,
            seq_next: if self.state == ConnState::Template {
                0
            } else {
                self.aux
            },
        }
    }
}

/// Entries, their hash buckets and the free list of one shard.
pub(super) struct Store {
    hasher: SeededState,
    /// The reply index's buckets (as many as `buckets`), allocated with
    /// the shard's first VS/NAT connection.
    rbuckets: Vec<u32>,
    entries: Vec<Entry>,
    /// Written only under the shard's lock; atomic so that [`Hint`] may
    /// read them without it.
    buckets: Arc<[AtomicU32]>,
    mask: usize,
    /// Head of the free list (through `hnext`).
    free: u32,
    live: usize,
}

impl Store {
    /// Room for `reserve` entries without reallocating, and
    /// `reserve.next_power_of_two()` buckets.
    pub fn new(reserve: usize, hasher: SeededState) -> Self {
        let n = reserve.max(1).next_power_of_two();
        Store {
            hasher,
            rbuckets: Vec::new(),
            entries: Vec::with_capacity(reserve),
            buckets: (0..n).map(|_| AtomicU32::new(NONE)).collect(),
            mask: n - 1,
            free: NONE,
            live: 0,
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + (self.buckets.len() + self.rbuckets.len()) * 4
    }

    fn rbucket(&self, r: &RevKey) -> usize {
        self.hasher.hash_one(r) as usize & self.mask
    }

    /// The id of the VS/NAT connection a reply keyed `r` belongs to.
    pub fn find_reply(&self, r: &RevKey) -> Option<u32> {
        let head = *self.rbuckets.get(self.rbucket(r))?;
        self.first(head, |e| e.rnext, |e| e.replies_to(r))
    }

    /// Where a lookup of a hash will read, for prefetching without the
    /// lock.
    pub fn hint(&self) -> Hint {
        Hint {
            buckets: self.buckets.clone(),
            mask: self.mask,
            entries: self.entries.as_ptr() as usize,
            cap: self.entries.capacity(),
        }
    }

    /// Starts loading the bucket `hash` maps to.
    #[inline]
    pub fn prefetch_bucket(&self, hash: u64) {
        prefetch(self.bucket(hash));
    }

    fn bucket(&self, hash: u64) -> &AtomicU32 {
        &self.buckets[hash as usize & self.mask]
    }

    /// The id of `key`'s entry; `hash` is the key's hash.
    #[inline]
    pub fn find(&self, key: &ConnKey, hash: u64) -> Option<u32> {
        let head = self.bucket(hash).load(Ordering::Relaxed);
        self.first(head, |e| e.hnext, |e| e.is(key))
    }

    pub fn get(&self, id: u32) -> &Entry {
        &self.entries[id as usize]
    }

    pub fn get_mut(&mut self, id: u32) -> &mut Entry {
        &mut self.entries[id as usize]
    }

    /// Stores `c` (whose key hashes to `hash`, and is not present) and
    /// returns its id; a VS/NAT connection (not a template) is also
    /// indexed by its replies. Not scheduled on the wheel yet.
    pub fn insert(&mut self, c: &Conn, hash: u64) -> u32 {
        let mut e = Entry::new(c);
        let bucket = &self.buckets[hash as usize & self.mask];
        e.hnext = bucket.load(Ordering::Relaxed);
        let id = if self.free != NONE {
            let id = self.free;
            self.free = self.entries[id as usize].hnext;
            self.entries[id as usize] = e;
            // The next insert pops this one: have it cached by then.
            if let Some(next) = self.entries.get(self.free as usize) {
                prefetch(next);
            }
            id
        } else {
            self.entries.push(e);
            (self.entries.len() - 1) as u32
        };
        bucket.store(id, Ordering::Relaxed);
        if c.nat && c.state != ConnState::Template {
            if self.rbuckets.is_empty() {
                self.rbuckets = vec![NONE; self.buckets.len()];
            }
            let b = self.rbucket(&c.rev_key());
            let e = &mut self.entries[id as usize];
            e.rnext = self.rbuckets[b];
            e.flags |= REV;
            self.rbuckets[b] = id;
        }
        self.live += 1;
        id
    }

    /// Unchains entry `id` (its key hashes to `hash`; it must be off the
    /// wheel already) and frees it, returning its contents.
    pub fn remove(&mut self, id: u32, hash: u64) -> Conn {
        let b = hash as usize & self.mask;
        let head = self.unlink(self.buckets[b].load(Ordering::Relaxed), id, |e| {
            &mut e.hnext
        });
        self.buckets[b].store(head, Ordering::Relaxed);
        if self.entries[id as usize].flags & REV != 0 {
            let b = self.rbucket(&self.entries[id as usize].rev_key());
            self.rbuckets[b] = self.unlink(self.rbuckets[b], id, |e| &mut e.rnext);
        }
        let e = &mut self.entries[id as usize];
        let c = e.conn();
        e.flags = 0;
        e.hnext = self.free;
        self.free = id;
        self.live -= 1;
        c
    }

    /// Takes `id` out of the chain that starts at `head` and is linked
    /// through `link`; returns the chain's new head.
    fn unlink(&mut self, head: u32, id: u32, link: fn(&mut Entry) -> &mut u32) -> u32 {
        let next = *link(&mut self.entries[id as usize]);
        if head == id {
            return next;
        }
        let mut cur = head;
        while cur != NONE {
            let l = link(&mut self.entries[cur as usize]);
            if *l == id {
                *l = next;
                break;
            }
            cur = *l;
        }
        head
    }

    /// The first entry from `id` on along a chain (`next`) that `hit` takes.
    fn first(
        &self,
        mut id: u32,
        next: fn(&Entry) -> u32,
        hit: impl Fn(&Entry) -> bool,
    ) -> Option<u32> {
        while id != NONE {
            let e = &self.entries[id as usize];
            if hit(e) {
                return Some(id);
            }
            id = next(e);
        }
        None
    }

    /// Ids and entries of the live entries.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.live())
            .map(|(i, e)| (i as u32, e))
    }
}

/// A shard's bucket array and where its entries lie, read without the
/// shard's lock to start loading the lines a lookup is about to touch (a
/// worker does this for a whole batch of frames before processing it).
/// Only ever used for prefetch instructions, which cannot fault: an entry
/// address made stale by the entries growing past their reservation just
/// prefetches nothing useful.
pub(super) struct Hint {
    buckets: Arc<[AtomicU32]>,
    mask: usize,
    entries: usize,
    cap: usize,
}

impl Hint {
    /// Starts loading the bucket `hash` maps to.
    #[inline]
    pub fn bucket(&self, hash: u64) {
        prefetch(&self.buckets[hash as usize & self.mask]);
    }

    /// Starts loading the first entry chained from `hash`'s bucket (best
    /// after [`Hint::bucket`] has had time to complete).
    #[inline]
    pub fn entry(&self, hash: u64) {
        let id = self.buckets[hash as usize & self.mask].load(Ordering::Relaxed) as usize;
        if id < self.cap {
            prefetch((self.entries + id * std::mem::size_of::<Entry>()) as *const u8);
        }
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: no fault,
/// no effect on what a later load returns).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally; any
    // address is allowed.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl Links for Store {
    #[inline]
    fn next(&self, id: u32) -> u32 {
        self.entries[id as usize].wnext
    }
    #[inline]
    fn prev(&self, id: u32) -> u32 {
        self.entries[id as usize].wprev
    }
    #[inline]
    fn slot(&self, id: u32) -> u32 {
        match self.entries[id as usize].wslot {
            NO_SLOT => NONE,
            s => s as u32,
        }
    }
    #[inline]
    fn set_next(&mut self, id: u32, next: u32) {
        self.entries[id as usize].wnext = next;
    }
    #[inline]
    fn set_prev(&mut self, id: u32, prev: u32) {
        self.entries[id as usize].wprev = prev;
    }
    #[inline]
    fn set_links(&mut self, id: u32, next: u32, prev: u32, slot: u32) {
        let e = &mut self.entries[id as usize];
        e.wnext = next;
        e.wprev = prev;
        // Slots number fewer than 2^16 (wheel::SLOTS).
        e.wslot = if slot == NONE { NO_SLOT } else { slot as u16 };
    }
    #[inline]
    fn when(&self, id: u32) -> u64 {
        self.entries[id as usize].expires as u64
    }
    #[inline]
    fn prefetch(&self, id: u32) {
        if let Some(e) = self.entries.get(id as usize) {
            prefetch(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(port: u16) -> Conn {
        Conn {
            key: ConnKey {
                caddr: 0x0a00_0001,
                vaddr: 0x0a00_0064,
                cport: port,
                vport: 80,
                proto: 6,
            },
            raddr: 0x0a00_000b,
            expires: 60,
            rport: 8080,
            svc: 1,
            rs: 2,
            state: ConnState::SynRecv,
            nat: true,
            tun: false,
            persistent: true,
            refs: 0,
            timeout: 4,
            cmac: [1, 2, 3, 4, 5, 6],
            seq_next: 7,
        }
    }

    #[test]
    fn round_trips_and_chains_share_a_bucket() {
        // 2 buckets: every hash below lands in bucket 0 or 1.
        let mut s = Store::new(2, SeededState::new(1));
        let ids: Vec<u32> = (0..5).map(|p| s.insert(&conn(p), 0)).collect();
        assert_eq!(s.len(), 5);
        for (p, &id) in ids.iter().enumerate() {
            assert_eq!(s.find(&conn(p as u16).key, 0), Some(id));
            assert_eq!(s.get(id).conn().key, conn(p as u16).key);
        }
        let c = s.get(ids[0]).conn();
        assert_eq!(format!("{c:?}"), format!("{:?}", conn(0)));
        assert_eq!(s.find(&conn(9).key, 0), None);
        // Middle, head and tail of the chain.
        for i in [2, 4, 0] {
            assert_eq!(s.remove(ids[i], 0).key, conn(i as u16).key);
            assert_eq!(s.find(&conn(i as u16).key, 0), None);
        }
        for i in [1, 3] {
            assert_eq!(s.find(&conn(i as u16).key, 0), Some(ids[i]));
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().count(), 2);
        // Freed slots are reused before the vector grows.
        let id = s.insert(&conn(20), 1);
        assert!(ids.contains(&id));
        assert_eq!(s.entries.len(), 5);
        assert_eq!(s.find(&conn(20).key, 1), Some(id));
        // The reply index (all of these are VS/NAT connections).
        let rev = |p: u16| conn(p).rev_key();
        for p in [1, 3, 20] {
            assert_eq!(
                s.find_reply(&rev(p)).map(|i| s.get(i).key()),
                Some(conn(p).key)
            );
        }
        s.remove(id, 1);
        assert_eq!(s.find_reply(&rev(20)), None);
        assert_eq!(s.find_reply(&rev(1)), Some(ids[1]));
    }
}
