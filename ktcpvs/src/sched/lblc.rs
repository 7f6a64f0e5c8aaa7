//! Locality-based least-connection (§6.3.5).
//!
//! ```text
//! n = server[target]
//! if n unset or unavailable:            n = least-connection node
//! elif (n.conns > n.high and some node has conns < node.low)
//!      or n.conns >= 2 * n.high:        n = least-connection node
//! server[target] = n
//! ```
//! The table is shared by every worker without a lock (lock-free
//! cache-line buckets, [`super::slots`]), bounded by `max_entries`, and
//! entries unused for `expire` are swept by [`LocalityTable::expire`],
//! which a worker calls periodically.
//! The same table holds lblcr's target → server-set entries
//! ([`super::lblcr`]); a service uses one kind or the other.
//!
//! In-flight work is capped at Σhigh of the service: when every allowed
//! server is at its high threshold, [`Scheduler::at_capacity`] says so and
//! the request waits in the worker's queue ([`super::queue`]).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wlc::least_loaded;
use super::{Exclude, Request, Scheduler, Server};

/// The clock of a table: whole seconds, real or set by a test. The real
/// one is coarse: [`LocalityTable::tick`] (called every second by a
/// worker's housekeeping) stores the time, so a decision reads one atomic
/// instead of calling clock_gettime.
#[derive(Debug)]
enum Clock {
    Real { epoch: Instant, now: AtomicU32 },
    Manual(AtomicU32),
}

/// target hash → server index, shared by all workers of a service.
#[derive(Debug)]
pub struct LocalityTable {
    map: super::slots::Slots,
    /// lblcr: target hash → server set.
    pub(crate) sets: super::setslots::SetSlots,
    /// lblcr: a set unchanged for this long loses its busiest member.
    pub(crate) shrink_after_s: u32,
    clock: Clock,
    /// Number of re-assignments because of imbalance (a metric).
    pub reassigned: std::sync::atomic::AtomicU64,
}

impl LocalityTable {
    pub fn new(max_entries: usize) -> LocalityTable {
        LocalityTable {
            map: super::slots::Slots::new(max_entries),
            sets: super::setslots::SetSlots::new(max_entries),
            shrink_after_s: super::lblcr::DEFAULT_SHRINK_S,
            clock: Clock::Real {
                epoch: Instant::now(),
                now: AtomicU32::new(0),
            },
            reassigned: Default::default(),
        }
    }

    /// The table of a service using `kind`: lblc's slot array (16 bytes
    /// per entry) is allocated only for lblc, lblcr's set array (32
    /// bytes per entry) only for lblcr.
    pub fn for_kind(kind: super::SchedulerKind, max_entries: usize) -> LocalityTable {
        use super::SchedulerKind::{Lblc, Lblcr};
        let sized = |k| if kind == k { max_entries } else { 1 };
        LocalityTable {
            map: super::slots::Slots::new(sized(Lblc)),
            sets: super::setslots::SetSlots::new(sized(Lblcr)),
            ..LocalityTable::new(0)
        }
    }

    /// lblcr's K: seconds without change after which a server set shrinks.
    pub fn with_shrink(mut self, after: Duration) -> LocalityTable {
        self.shrink_after_s = after.as_secs().min(super::setslots::MAX_SHRINK_S as u64) as u32;
        self
    }

    /// A table whose clock only moves with [`LocalityTable::advance`].
    pub fn with_manual_clock(mut self) -> LocalityTable {
        self.clock = Clock::Manual(AtomicU32::new(0));
        self
    }

    /// Moves a manual clock forward (no effect on a real one).
    pub fn advance(&self, secs: u32) {
        if let Clock::Manual(t) = &self.clock {
            t.fetch_add(secs, Relaxed);
        }
    }

    /// Brings the coarse real clock up to date (no effect on a manual one).
    pub fn tick(&self) {
        if let Clock::Real { epoch, now } = &self.clock {
            now.store(epoch.elapsed().as_secs() as u32, Relaxed);
        }
    }

    #[inline]
    pub(crate) fn now(&self) -> u32 {
        match &self.clock {
            Clock::Real { now, .. } => now.load(Relaxed),
            Clock::Manual(t) => t.load(Relaxed),
        }
    }

    /// Entries held: targets (lblc) plus server sets (lblcr).
    pub fn len(&self) -> usize {
        self.map.len() + self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.sets.is_empty()
    }

    /// Bytes of lblc's and lblcr's arrays (fixed at start).
    pub fn slot_bytes(&self) -> usize {
        self.map.bytes() + self.sets.bytes()
    }

    #[inline]
    fn get(&self, key: u64) -> Option<usize> {
        self.map.get(key, self.now())
    }

    fn set(&self, key: u64, server: usize) {
        self.map.set(key, server, self.now());
    }

    /// Drops entries not used for `older_than`; returns how many.
    pub fn expire(&self, older_than: Duration) -> usize {
        self.tick();
        let now = self.now();
        let limit = older_than.as_secs().min(super::slots::MAX_AGE_S as u64) as u32;
        let before = self.len();
        self.map.expire(limit, now);
        self.sets.expire(limit.min(super::setslots::MAX_AGE_S), now);
        before - self.len()
    }
}

pub struct Lblc {
    table: Arc<LocalityTable>,
}

impl Lblc {
    pub fn new(table: Arc<LocalityTable>) -> Lblc {
        Lblc { table }
    }
}

/// The thesis' imbalance test for the node currently holding a target.
pub(crate) fn overloaded(n: &Server, servers: &[Server], exclude: Exclude) -> bool {
    let (c, high) = (n.conns(), n.high.load(Relaxed));
    if c >= 2 * high {
        return true;
    }
    c > high
        && servers
            .iter()
            .enumerate()
            .any(|(j, s)| s.available() && !exclude.has(j) && s.conns() < s.low.load(Relaxed))
}

impl Scheduler for Lblc {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let key = req.target_hash;
        match self.table.get(key) {
            Some(i) if i < servers.len() && servers[i].available() && !exclude.has(i) => {
                if !overloaded(&servers[i], servers, exclude) {
                    return Some(i);
                }
                let j = least_loaded(servers, exclude)?;
                if j != i {
                    self.table.reassigned.fetch_add(1, Relaxed);
                    self.table.set(key, j);
                }
                Some(j)
            }
            _ => {
                let j = least_loaded(servers, exclude)?;
                self.table.set(key, j);
                Some(j)
            }
        }
    }

    fn at_capacity(&self, servers: &[Server], exclude: Exclude) -> bool {
        at_high(servers, exclude)
    }
}

/// The in-flight cap (Σhigh): true when some server could take the
/// request (available, not excluded) but every such server is at or
/// above its high threshold. With no candidate at all it is false: the
/// request is answered 503 at once rather than queued for nothing.
pub fn at_high(servers: &[Server], exclude: Exclude) -> bool {
    let mut any = false;
    for (j, s) in servers.iter().enumerate() {
        if !s.available() || exclude.has(j) {
            continue;
        }
        if s.conns() < s.high.load(Relaxed) {
            return false;
        }
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};

    #[test]
    fn same_target_same_server_while_balanced() {
        let s = test_servers(&[1, 1, 1]);
        let t = Arc::new(LocalityTable::new(100));
        let mut a = Lblc::new(t.clone());
        let mut b = Lblc::new(t.clone()); // another worker, same table
        let first = a.pick(&s, &req(b"/a"), Exclude::NONE).unwrap();
        s[first].conns.fetch_add(5, Relaxed);
        for _ in 0..10 {
            assert_eq!(b.pick(&s, &req(b"/a"), Exclude::NONE), Some(first));
        }
        // a new target goes to a least-loaded node, not the busy one
        let other = a.pick(&s, &req(b"/b"), Exclude::NONE).unwrap();
        assert_ne!(other, first);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn reassigns_when_over_high_and_someone_under_low() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(100));
        let mut l = Lblc::new(t.clone());
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::NONE), Some(0));
        s[0].conns.store(61, Relaxed); // > high (60)
        s[1].conns.store(29, Relaxed); // < low (30)
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::NONE), Some(1));
        assert_eq!(t.reassigned.load(Relaxed), 1);
        // over high but nobody under low: stays
        s[1].conns.store(61, Relaxed);
        s[0].conns.store(31, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::NONE), Some(1));
        // at 2*high it moves regardless
        s[1].conns.store(120, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::NONE), Some(0));
    }

    #[test]
    fn bounded_and_expires() {
        let s = test_servers(&[1]);
        let t = Arc::new(LocalityTable::new(2));
        let mut l = Lblc::new(t.clone());
        for p in [&b"/1"[..], b"/2", b"/3"] {
            assert_eq!(l.pick(&s, &req(p), Exclude::NONE), Some(0));
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(Duration::ZERO), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn capacity_is_sigma_high_over_allowed_servers() {
        let s = test_servers(&[1, 1, 1]);
        let l = Lblc::new(Arc::new(LocalityTable::new(10)));
        assert!(!l.at_capacity(&s, Exclude::NONE));
        s[0].conns.store(60, Relaxed);
        s[1].conns.store(61, Relaxed);
        assert!(!l.at_capacity(&s, Exclude::NONE), "server 2 has room");
        assert!(l.at_capacity(&s, Exclude::bits(0b100)), "2 excluded");
        s[2].conns.store(60, Relaxed);
        assert!(l.at_capacity(&s, Exclude::NONE));
        s[2].up.store(false, Relaxed);
        assert!(
            l.at_capacity(&s, Exclude::NONE),
            "down servers do not count"
        );
        assert!(
            !l.at_capacity(&s, Exclude::bits(0b011)),
            "no candidate at all: not a wait"
        );
    }

    #[test]
    fn manual_clock_expires_only_idle_entries() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(10).with_manual_clock());
        let mut l = Lblc::new(t.clone());
        l.pick(&s, &req(b"/old"), Exclude::NONE);
        t.advance(5);
        l.pick(&s, &req(b"/new"), Exclude::NONE);
        assert_eq!(t.expire(Duration::from_secs(5)), 1);
        assert_eq!(t.len(), 1);
        t.advance(4);
        assert_eq!(t.expire(Duration::from_secs(5)), 0);
    }

    #[test]
    fn down_holder_is_replaced() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(10));
        let mut l = Lblc::new(t);
        assert_eq!(l.pick(&s, &req(b"/d"), Exclude::NONE), Some(0));
        s[0].up.store(false, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/d"), Exclude::NONE), Some(1));
    }
}
