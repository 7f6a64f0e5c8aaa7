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
//! Sets live in the service's shared [`LocalityTable`] (bounded, expired
//! with the lblc entries; both count in `ktcpvs_locality_entries`). A
//! decision that changes nothing takes only a shard read lock.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use super::lblc::{at_high, overloaded, LocalityTable};
use super::wlc::least_loaded;
use super::{Exclude, Request, Scheduler, Server};

/// Default K: seconds a set must stay unchanged before it shrinks.
pub const DEFAULT_SHRINK_S: u32 = 60;
/// Most members one set holds; growing a full set replaces its busiest.
pub const MAX_SET: usize = 8;

/// One target's server set.
#[derive(Debug)]
pub struct SetEntry {
    members: [u16; MAX_SET],
    len: u8,
    /// Table seconds at the last grow or shrink.
    lastmod: u32,
    /// Table seconds at last use (expiry).
    pub(crate) used: AtomicU32,
}

impl SetEntry {
    fn new(first: usize, now: u32) -> SetEntry {
        let mut members = [0; MAX_SET];
        members[0] = first as u16;
        SetEntry {
            members,
            len: 1,
            lastmod: now,
            used: AtomicU32::new(now),
        }
    }

    pub fn members(&self) -> &[u16] {
        &self.members[..self.len as usize]
    }

    /// The member with the least C/W among schedulable, allowed ones.
    fn least(&self, servers: &[Server], exclude: Exclude) -> Option<usize> {
        self.pick_by(servers, exclude, |cj, wj, ci, wi| cj * wi < ci * wj)
    }

    /// The member with the most C/W (the one a shrink drops).
    fn most(&self, servers: &[Server]) -> Option<usize> {
        self.pick_by(servers, Exclude::NONE, |cj, wj, ci, wi| cj * wi > ci * wj)
    }

    fn pick_by(
        &self,
        servers: &[Server],
        exclude: Exclude,
        better: impl Fn(u64, u64, u64, u64) -> bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, u64, u64)> = None;
        for &m in self.members() {
            let j = m as usize;
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

    fn remove(&mut self, j: usize) {
        let n = self.len as usize;
        if let Some(k) = self.members[..n].iter().position(|&m| m as usize == j) {
            self.members.copy_within(k + 1..n, k);
            self.len -= 1;
        }
    }

    fn add(&mut self, j: usize, servers: &[Server]) {
        if self.members().contains(&(j as u16)) {
            return;
        }
        if self.len as usize == MAX_SET {
            // Full: the busiest member (or an invalid index) makes room.
            let out = self.most(servers).unwrap_or(self.members[0] as usize);
            self.remove(out);
        }
        self.members[self.len as usize] = j as u16;
        self.len += 1;
    }
}

pub struct Lblcr {
    table: Arc<LocalityTable>,
}

impl Lblcr {
    pub fn new(table: Arc<LocalityTable>) -> Lblcr {
        Lblcr { table }
    }
}

/// What the read-locked look at a set concluded.
enum Look {
    Hit(usize),
    Change,
    Missing,
}

impl Scheduler for Lblcr {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let t = &*self.table;
        let key = req.target_hash;
        let now = t.now();
        let look = match t.sets.get(&key) {
            None => Look::Missing,
            Some(e) => {
                if e.used.load(Relaxed) != now {
                    e.used.store(now, Relaxed);
                }
                let shrink = e.len > 1 && now.saturating_sub(e.lastmod) >= t.shrink_after_s;
                match e.least(servers, exclude) {
                    Some(n) if !shrink && !overloaded(&servers[n], servers, exclude) => {
                        Look::Hit(n)
                    }
                    _ => Look::Change,
                }
            }
        };
        match look {
            Look::Hit(n) => Some(n),
            Look::Missing => {
                let n = least_loaded(servers, exclude)?;
                if t.sets.len() < t.max_entries {
                    t.sets.insert(key, SetEntry::new(n, now));
                }
                Some(n)
            }
            Look::Change => {
                let Some(mut e) = t.sets.get_mut(&key) else {
                    // Expired meanwhile: schedule as new, remember next time.
                    return least_loaded(servers, exclude);
                };
                if e.len > 1 && now.saturating_sub(e.lastmod) >= t.shrink_after_s {
                    if let Some(busiest) = e.most(servers) {
                        e.remove(busiest);
                        e.lastmod = now;
                    }
                }
                match e.least(servers, exclude) {
                    Some(n) if !overloaded(&servers[n], servers, exclude) => Some(n),
                    _ => {
                        let n = least_loaded(servers, exclude)?;
                        if !e.members().contains(&(n as u16)) {
                            e.add(n, servers);
                            e.lastmod = now;
                            t.reassigned.fetch_add(1, Relaxed);
                        }
                        Some(n)
                    }
                }
            }
        }
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
        let mut m = t
            .sets
            .get(&req(path).target_hash)
            .unwrap()
            .members()
            .to_vec();
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
        let mut e = SetEntry::new(0, 0);
        for j in 1..MAX_SET {
            e.add(j, &s);
        }
        s[3].conns.store(50, Relaxed);
        e.add(9, &s);
        assert_eq!(e.members().len(), MAX_SET);
        assert!(!e.members().contains(&3));
        assert!(e.members().contains(&9));
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
