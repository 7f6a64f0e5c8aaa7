//! Consistent hashing with bounded loads on the request target (Mirrokni
//! et al. 2018; HAProxy's `hash-balance-factor`). Each server owns points
//! on a ring in proportion to its weight; a target goes to the first
//! server clockwise from its hash whose in-flight load, after taking the
//! request, stays within `factor` × its weighted share of the service's
//! load. A target stays on its server until that server is busier than
//! `factor` × average, then spills to the next one on the ring — cache
//! affinity like lblc without a table, and no server ever far above
//! average. Adding or removing a server moves only ~1/n of the targets.
//!
//! When to use: origins with per-target caches (as for lblc) where a hot
//! target must not overload its home, or where a locality table is too
//! costly in memory; factor 125 % (the default) trades a little locality
//! for a hard bound on imbalance. The ring is rebuilt when a weight
//! changes; down servers are skipped, not removed, so their targets come
//! back when they do.

use super::hashing::{mix64, server_key, signature};
use super::wlc::least_loaded;
use super::{Exclude, Request, Scheduler, Server};

/// Default `[service.chash] balance_factor`, in percent (HAProxy's
/// suggestion).
pub const DEFAULT_BALANCE_FACTOR: u32 = 125;
/// Ring points of a server with the largest weight.
const POINTS: u64 = 160;

#[derive(Debug)]
pub struct ConsistentHash {
    factor: u64,
    /// (point, server index), sorted by point.
    ring: Vec<(u64, u16)>,
    sig: Option<u64>,
}

impl ConsistentHash {
    pub fn new(balance_factor: u32) -> ConsistentHash {
        ConsistentHash {
            factor: balance_factor.max(100) as u64,
            ring: Vec::new(),
            sig: None,
        }
    }

    fn rebuild(&mut self, servers: &[Server]) {
        self.ring.clear();
        let max = servers.iter().map(|s| s.weight() as u64).max().unwrap_or(0);
        if max == 0 {
            return;
        }
        for (j, s) in servers.iter().enumerate() {
            let w = s.weight() as u64;
            if w == 0 {
                continue;
            }
            let points = (POINTS * w).div_ceil(max);
            for p in 0..points {
                self.ring.push((server_key(s.addr, p), j as u16));
            }
        }
        self.ring.sort_unstable();
    }
}

impl Scheduler for ConsistentHash {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let sig = signature(servers, false);
        if self.sig != Some(sig) {
            self.rebuild(servers);
            self.sig = Some(sig);
        }
        if self.ring.is_empty() {
            return None;
        }
        // The load bound: server j may hold up to
        // ceil(factor × (L + 1) × w_j / W) units, L and W over candidates.
        let (mut load, mut wsum) = (0u64, 0u64);
        for (j, s) in servers.iter().enumerate() {
            if s.available() && !exclude.has(j) {
                load += s.conns() as u64;
                wsum += s.weight() as u64;
            }
        }
        if wsum == 0 {
            return None;
        }
        let h = mix64(req.target_hash);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let n = self.ring.len();
        let mut seen = Exclude::NONE;
        for k in 0..n {
            let j = self.ring[(start + k) % n].1 as usize;
            if seen.has(j) {
                continue;
            }
            seen.add(j);
            let s = &servers[j];
            if !s.available() || exclude.has(j) {
                continue;
            }
            let cap = (self.factor * (load + 1) * s.weight() as u64).div_ceil(100 * wsum);
            if (s.conns() as u64) < cap {
                return Some(j);
            }
        }
        // Cannot happen with factor ≥ 100 (someone is at or below
        // average); kept as a safe answer.
        least_loaded(servers, exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};
    use std::sync::atomic::Ordering::Relaxed;

    fn targets() -> Vec<String> {
        (0..600).map(|i| format!("/obj/{i}.jpg")).collect()
    }

    #[test]
    fn same_target_same_server_while_loads_are_even() {
        let s = test_servers(&[1, 1, 1]);
        let mut a = ConsistentHash::new(125);
        let mut b = ConsistentHash::new(125); // another worker
        let mut count = [0usize; 3];
        for t in targets() {
            let x = a.pick(&s, &req(t.as_bytes()), Exclude::NONE).unwrap();
            assert_eq!(b.pick(&s, &req(t.as_bytes()), Exclude::NONE), Some(x));
            count[x] += 1;
        }
        assert!(count.iter().all(|&c| (120..280).contains(&c)), "{count:?}");
    }

    #[test]
    fn a_busy_home_spills_and_removal_moves_only_its_targets() {
        let s = test_servers(&[1, 1, 1]);
        let mut c = ConsistentHash::new(125);
        let home = c.pick(&s, &req(b"/hot"), Exclude::NONE).unwrap();
        // Home at 4 units, others idle: L+1 = 5, cap = ceil(1.25*5/3) = 3.
        s[home].conns.store(4, Relaxed);
        let spill = c.pick(&s, &req(b"/hot"), Exclude::NONE).unwrap();
        assert_ne!(spill, home);
        // Loads even again (1 each: cap = ceil(1.25*4/3) = 2): back home.
        for x in s.iter() {
            x.conns.store(1, Relaxed);
        }
        assert_eq!(c.pick(&s, &req(b"/hot"), Exclude::NONE), Some(home));
        for x in s.iter() {
            x.conns.store(0, Relaxed);
        }

        let ts = targets();
        let before: Vec<usize> = ts
            .iter()
            .map(|t| c.pick(&s, &req(t.as_bytes()), Exclude::NONE).unwrap())
            .collect();
        s[2].up.store(false, Relaxed);
        for (t, &b) in ts.iter().zip(&before) {
            let now = c.pick(&s, &req(t.as_bytes()), Exclude::NONE).unwrap();
            assert_ne!(now, 2);
            if b != 2 {
                assert_eq!(now, b, "{t} moved although its server is up");
            }
        }
    }

    #[test]
    fn bound_holds_under_one_hot_target_and_weight_zero_is_never_used() {
        let s = test_servers(&[1, 1, 1, 0]);
        let mut c = ConsistentHash::new(125);
        // 300 requests of one target, none finishing: the bound spreads them.
        for _ in 0..300 {
            let j = c.pick(&s, &req(b"/same"), Exclude::NONE).unwrap();
            assert_ne!(j, 3);
            s[j].conns.fetch_add(1, Relaxed);
        }
        let loads: Vec<u32> = s.iter().map(|x| x.conns()).collect();
        assert!(loads[..3].iter().all(|&l| l <= 125 + 1), "{loads:?}");
        assert_eq!(c.pick(&s, &req(b"/same"), Exclude::bits(0b0111)), None);
    }
}
