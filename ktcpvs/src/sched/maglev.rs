//! Maglev hashing (Eisenbud et al., NSDI 2016) on the request target: a
//! lookup table of prime size M ≥ 100 × servers is filled from each
//! server's own permutation of the slots, in turns proportional to
//! weight; a target's hash indexes the table. O(1) per decision, an even
//! spread (each server within a few percent of its share) and minimal
//! disruption: when a server leaves, mostly its own slots change owner.
//!
//! When to use: many origins caching by target (as chash) where the
//! decision must stay O(1) whatever the number of servers and no server
//! load is looked at — Maglev does not bound load, so a hot target stays
//! on one server; prefer chash when that matters. The table is rebuilt
//! (in this worker, off the fast path of every other request) when a
//! weight or a server's up/down state changes; excluded servers (a retry,
//! a content rule) are skipped by walking on from the target's slot.

use super::hashing::{mix64, next_prime, server_key, signature};
use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug, Default)]
pub struct Maglev {
    table: Vec<u16>,
    sig: Option<u64>,
    // Scratch reused by rebuilds.
    next: Vec<u64>,
    credit: Vec<u64>,
}

impl Maglev {
    fn rebuild(&mut self, servers: &[Server]) {
        let n = servers.len();
        let m = next_prime((100 * n).max(101));
        self.table.clear();
        self.table.resize(m, u16::MAX);
        let live = |s: &Server| s.up.load(std::sync::atomic::Ordering::Relaxed) && s.weight() > 0;
        let wmax = servers
            .iter()
            .filter(|s| live(s))
            .map(|s| s.weight() as u64)
            .max();
        let Some(wmax) = wmax else {
            self.table.clear();
            return;
        };
        self.next.clear();
        self.next.resize(n, 0);
        self.credit.clear();
        self.credit.resize(n, 0);
        let perm = |j: usize, k: u64| {
            let key = server_key(servers[j].addr, 0);
            let offset = key % m as u64;
            let skip = mix64(key) % (m as u64 - 1) + 1;
            ((offset + k * skip) % m as u64) as usize
        };
        let mut filled = 0;
        while filled < m {
            for (j, srv) in servers.iter().enumerate() {
                if !live(srv) {
                    continue;
                }
                // Weighted turns: the heaviest server takes one slot each
                // round, the others in proportion.
                self.credit[j] += srv.weight() as u64;
                while self.credit[j] >= wmax && filled < m {
                    self.credit[j] -= wmax;
                    loop {
                        let slot = perm(j, self.next[j]);
                        self.next[j] += 1;
                        if self.table[slot] == u16::MAX {
                            self.table[slot] = j as u16;
                            filled += 1;
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Scheduler for Maglev {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let sig = signature(servers, true);
        if self.sig != Some(sig) {
            self.rebuild(servers);
            self.sig = Some(sig);
        }
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = (mix64(req.target_hash) % m as u64) as usize;
        for k in 0..m {
            let j = self.table[(start + k) % m] as usize;
            if j < servers.len() && servers[j].available() && !exclude.has(j) {
                return Some(j);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn table_is_prime_sized_and_shares_follow_weights() {
        let s = test_servers(&[1, 1, 2]);
        let mut m = Maglev::default();
        m.pick(&s, &req(b"/"), Exclude::NONE);
        assert_eq!(m.table.len(), 307);
        let share = |j: u16| m.table.iter().filter(|&&x| x == j).count();
        // 307 slots at 1:1:2 → 76.75 : 76.75 : 153.5.
        assert!((70..=84).contains(&share(0)), "{}", share(0));
        assert!((70..=84).contains(&share(1)), "{}", share(1));
        assert!((146..=161).contains(&share(2)), "{}", share(2));
    }

    #[test]
    fn same_target_same_server_and_minimal_disruption() {
        let s = test_servers(&[1; 5]);
        let mut a = Maglev::default();
        let mut b = Maglev::default();
        let ts: Vec<String> = (0..1000).map(|i| format!("/t/{i}")).collect();
        let before: Vec<usize> = ts
            .iter()
            .map(|t| {
                let x = a.pick(&s, &req(t.as_bytes()), Exclude::NONE).unwrap();
                assert_eq!(b.pick(&s, &req(t.as_bytes()), Exclude::NONE), Some(x));
                x
            })
            .collect();
        s[4].up.store(false, Relaxed);
        let mut moved = 0;
        for (t, &x) in ts.iter().zip(&before) {
            let now = a.pick(&s, &req(t.as_bytes()), Exclude::NONE).unwrap();
            assert_ne!(now, 4);
            if x != 4 && now != x {
                moved += 1;
            }
        }
        // Maglev's disruption for live servers' targets is small, not zero.
        assert!(moved < 100, "{moved} targets of live servers moved");
        s[4].up.store(true, Relaxed);
        for (t, &x) in ts.iter().zip(&before) {
            assert_eq!(a.pick(&s, &req(t.as_bytes()), Exclude::NONE), Some(x));
        }
    }

    #[test]
    fn exclusion_walks_on_and_zero_weight_is_never_used() {
        let s = test_servers(&[1, 0, 1]);
        let mut m = Maglev::default();
        for i in 0..100 {
            let t = format!("/{i}");
            assert_ne!(m.pick(&s, &req(t.as_bytes()), Exclude::NONE), Some(1));
            assert_eq!(
                m.pick(&s, &req(t.as_bytes()), Exclude::bits(0b001)),
                Some(2)
            );
        }
        assert_eq!(m.pick(&s, &req(b"/"), Exclude::bits(0b101)), None);
    }
}
