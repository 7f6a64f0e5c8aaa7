//! Locality-based least-connection with replication (§6.3.5, IPVS lblcr):
//! a target maps to a *set* of servers, so a hot target can be served by
//! several nodes while cold ones keep a single home.
//!
//! ```text
//! set = servers[target]
//! if set unset:             n = least-connection node; set = {n}
//! else:
//!   n = least-loaded member of set (C/W)
//!   if set has > 1 member and set unchanged for K seconds:
//!       drop the busiest member from set          (shrink)
//!   if n unset or n overloaded (as lblc):
//!       n = least-connection node; add n to set   (grow)
//! ```
//! Sets live in the service's shared [`LocalityTable`], in a lock-free
//! array of packed set words ([`super::setslots`]: bounded, expired with
//! the table, counted in `ktcpvs_locality_entries`). A set holds at most
//! [`MAX_SET`] servers; growing a full set replaces its busiest member.
//! A decision reads one bucket and changes the set with one
//! compare-and-swap, only when the set changes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::lblc::{at_high, overloaded, LocalityTable};
use super::setslots::Set;
pub use super::setslots::MAX_SET;
use super::wlc::least_loaded;
use super::{Exclude, Request, Scheduler, Server};

/// Default K: seconds a set must stay unchanged before it shrinks.
pub const DEFAULT_SHRINK_S: u32 = 60;

/// The member with the least C/W among schedulable, allowed ones.
fn least(set: Set, servers: &[Server], exclude: Exclude) -> Option<usize> {
    pick_by(set, servers, exclude, |cj, wj, ci, wi| cj * wi < ci * wj)
}

/// The member with the most C/W (the one a shrink drops).
fn most(set: Set, servers: &[Server]) -> Option<usize> {
    pick_by(set, servers, Exclude::NONE, |cj, wj, ci, wi| {
        cj * wi > ci * wj
    })
}

#[inline]
fn pick_by(
    set: Set,
    servers: &[Server],
    exclude: Exclude,
    better: impl Fn(u64, u64, u64, u64) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for j in set.members() {
        let Some(s) = servers.get(j) else { continue };
        if !s.available() || exclude.has(j) {
            continue;
        }
        let (cj, wj) = (s.conns() as u64, s.weight() as u64);
        match best {
            Some((_, ci, wi)) if !better(cj, wj, ci, wi) => {}
            _ => best = Some((j, cj, wj)),
        }
    }
    best.map(|(j, _, _)| j)
}

/// `set` with `j` added; a full set first loses its busiest member (or,
/// if none is a valid server any more, its first).
fn add(set: Set, j: usize, servers: &[Server], now: u32) -> Set {
    if set.len() < MAX_SET || set.contains(j) {
        return set.with(j, now);
    }
    let out = most(set, servers)
        .or_else(|| set.members().next())
        .unwrap_or(j);
    set.without(out, now).with(j, now)
}

pub struct Lblcr {
    table: Arc<LocalityTable>,
}

impl Lblcr {
    pub fn new(table: Arc<LocalityTable>) -> Lblcr {
        Lblcr { table }
    }
}

impl Scheduler for Lblcr {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let t = &*self.table;
        let key = req.target_hash;
        let now = t.now();
        let Some((slot, set)) = t.sets.get(key, now) else {
            let n = least_loaded(servers, exclude)?;
            t.sets.insert(key, Set::one(n, now), now);
            return Some(n);
        };
        let mut next = set;
        if set.len() > 1 && set.age(now) >= t.shrink_after_s {
            if let Some(busiest) = most(set, servers) {
                next = set.without(busiest, now);
            }
        }
        let n = match least(next, servers, exclude) {
            Some(n) if !overloaded(&servers[n], servers, exclude) => n,
            _ => {
                let n = least_loaded(servers, exclude)?;
                if !next.contains(n) {
                    next = add(next, n, servers, now);
                    t.reassigned.fetch_add(1, Relaxed);
                }
                n
            }
        };
        t.sets.update(slot, set, next);
        Some(n)
    }

    fn at_capacity(&self, servers: &[Server], exclude: Exclude) -> bool {
        at_high(servers, exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};

    fn members(t: &LocalityTable, path: &[u8]) -> Vec<u16> {
        let mut m: Vec<u16> = t
            .sets
            .get(req(path).target_hash, t.now())
            .unwrap()
            .1
            .members()
            .map(|j| j as u16)
            .collect();
        m.sort();
        m
    }

    #[test]
    fn grows_when_every_member_is_overloaded_and_shrinks_after_k() {
        let s = test_servers(&[1, 1, 1]);
        let t = Arc::new(
            LocalityTable::new(100)
                .with_manual_clock()
                .with_shrink(std::time::Duration::from_secs(60)),
        );
        let mut l = Lblcr::new(t.clone());
        let mut other = Lblcr::new(t.clone()); // a second worker
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(0));
        assert_eq!(members(&t, b"/hot"), [0]);
        // Balanced: the set's member keeps the target, from any worker.
        s[0].conns.store(40, Relaxed);
        assert_eq!(other.pick(&s, &req(b"/hot"), Exclude::NONE), Some(0));
        // Member over high while a node is under low: grow.
        s[0].conns.store(61, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(1));
        assert_eq!(members(&t, b"/hot"), [0, 1]);
        assert_eq!(t.reassigned.load(Relaxed), 1);
        // The set now serves from its least-loaded member.
        s[1].conns.store(10, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(1));
        s[1].conns.store(62, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(2));
        assert_eq!(members(&t, b"/hot"), [0, 1, 2]);
        // Unchanged for K seconds: the busiest member (1) leaves, one per K.
        s[0].conns.store(5, Relaxed);
        s[2].conns.store(5, Relaxed);
        t.advance(59);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(0));
        assert_eq!(members(&t, b"/hot"), [0, 1, 2], "not yet K");
        t.advance(1);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(0));
        assert_eq!(members(&t, b"/hot"), [0, 2]);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(0));
        assert_eq!(members(&t, b"/hot"), [0, 2], "next shrink waits K again");
        t.advance(60);
        s[0].conns.store(6, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/hot"), Exclude::NONE), Some(2));
        assert_eq!(members(&t, b"/hot"), [2]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn down_or_excluded_members_are_skipped_and_replaced() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(100).with_manual_clock());
        let mut l = Lblcr::new(t.clone());
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::NONE), Some(0));
        s[0].up.store(false, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::NONE), Some(1));
        assert_eq!(members(&t, b"/x"), [0, 1]);
        s[0].up.store(true, Relaxed);
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::bits(0b10)), Some(0));
        assert_eq!(l.pick(&s, &req(b"/x"), Exclude::bits(0b11)), None);
    }

    #[test]
    fn full_set_replaces_its_busiest_member() {
        let s = test_servers(&[1; 10]);
        let mut e = Set::one(0, 0);
        for j in 1..MAX_SET {
            e = add(e, j, &s, 0);
        }
        s[3].conns.store(50, Relaxed);
        e = add(e, 9, &s, 0);
        assert_eq!(e.len(), MAX_SET);
        assert!(!e.contains(3));
        assert!(e.contains(9));
    }

    #[test]
    fn bounded_and_capped() {
        let s = test_servers(&[1, 1]);
        let t = Arc::new(LocalityTable::new(2));
        let mut l = Lblcr::new(t.clone());
        for p in [&b"/1"[..], b"/2", b"/3"] {
            assert!(l.pick(&s, &req(p), Exclude::NONE).is_some());
        }
        assert_eq!(t.len(), 2);
        s[0].conns.store(60, Relaxed);
        s[1].conns.store(60, Relaxed);
        assert!(l.at_capacity(&s, Exclude::NONE));
    }
}
