//! Locality-based least-connection (§6.3.5).
//!
//! ```text
//! n = server[target]
//! if n unset or unavailable:            n = least-connection node
//! elif (n.conns > n.high and some node has conns < node.low)
//!      or n.conns >= 2 * n.high:        n = least-connection node
//! server[target] = n
//! ```
//! The table is shared by every worker (a sharded [`DashMap`], no global
//! lock), bounded by `max_entries`, and entries unused for `expire` are
//! swept by [`LocalityTable::expire`], which a worker calls periodically.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::wlc::least_loaded;
use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug)]
struct Entry {
    server: u32,
    /// Seconds since the table was created, at last use.
    used: AtomicU32,
}

/// target hash → server index, shared by all workers of a service.
#[derive(Debug)]
pub struct LocalityTable {
    map: DashMap<u64, Entry>,
    max_entries: usize,
    epoch: Instant,
    /// Number of re-assignments because of imbalance (a metric).
    pub reassigned: std::sync::atomic::AtomicU64,
}

impl LocalityTable {
    pub fn new(max_entries: usize) -> LocalityTable {
        LocalityTable {
            map: DashMap::with_shard_amount(64),
            max_entries,
            epoch: Instant::now(),
            reassigned: Default::default(),
        }
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, key: u64) -> Option<usize> {
        self.map.get(&key).map(|e| {
            e.used.store(self.now(), Relaxed);
            e.server as usize
        })
    }

    fn set(&self, key: u64, server: usize) {
        let now = self.now();
        if let Some(mut e) = self.map.get_mut(&key) {
            e.server = server as u32;
            e.used.store(now, Relaxed);
            return;
        }
        // Bounded: when full, the target is scheduled but not remembered
        // until the next sweep frees room.
        if self.map.len() < self.max_entries {
            self.map.insert(
                key,
                Entry {
                    server: server as u32,
                    used: AtomicU32::new(now),
                },
            );
        }
    }

    /// Drops entries not used for `older_than`; returns how many.
    pub fn expire(&self, older_than: Duration) -> usize {
        let now = self.now();
        let limit = older_than.as_secs().min(u32::MAX as u64) as u32;
        let before = self.map.len();
        self.map
            .retain(|_, e| now.saturating_sub(e.used.load(Relaxed)) < limit);
        before - self.map.len()
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
fn overloaded(n: &Server, servers: &[Server], exclude: Exclude) -> bool {
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
        let first = a.pick(&s, &req(b"/a"), Exclude(0)).unwrap();
        s[first].conns.fetch_add(5, Relaxed);
        for _ in 0..10 {
            assert_eq!(b.pick(&s, &req(b"/a"), Exclude(0)), Some(first));
        }
        // a new target goes to a least-loaded node, not the busy one
        let other = a.pick(&s, &req(b"/b"), Exclude(0)).unwrap();
        assert_ne!(other, first);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn reassigns_when_over_high_and_someone_under_low() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(100));
        let mut l = Lblc::new(t.clone());
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude(0)), Some(0));
        s[0].conns.store(61, Relaxed); // > high (60)
        s[1].conns.store(29, Relaxed); // < low (30)
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude(0)), Some(1));
        assert_eq!(t.reassigned.load(Relaxed), 1);
        // over high but nobody under low: stays
        s[1].conns.store(61, Relaxed);
        s[0].conns.store(31, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude(0)), Some(1));
        // at 2*high it moves regardless
        s[1].conns.store(120, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude(0)), Some(0));
    }

    #[test]
    fn bounded_and_expires() {
        let s = test_servers(&[1]);
        let t = Arc::new(LocalityTable::new(2));
        let mut l = Lblc::new(t.clone());
        for p in [&b"/1"[..], b"/2", b"/3"] {
            assert_eq!(l.pick(&s, &req(p), Exclude(0)), Some(0));
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(Duration::ZERO), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn down_holder_is_replaced() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(10));
        let mut l = Lblc::new(t);
        assert_eq!(l.pick(&s, &req(b"/d"), Exclude(0)), Some(0));
        s[0].up.store(false, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/d"), Exclude(0)), Some(1));
    }
}
