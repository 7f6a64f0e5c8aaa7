//! Locality-Based Least Loaded (LBLL), thesis §7.3.1 and §7.5.4, in its
//! three forms. Time is injected (`now`), so tests are deterministic.
//!
//! Deviations from the pseudo-code, all forced by finite memory or failures:
//! * a set holds at most [`MAX_SET`] servers; adding to a full set replaces
//!   its most loaded member;
//! * members that are down or drained are pruned from a set when the target
//!   is next looked up (this counts as a change);
//! * the shrink step never removes the server being answered.

use std::time::{Duration, Instant};

use super::servers::ServerTable;
use super::table::{Entry, TargetTable, MAX_SET};
use crate::proto::{flags, Answer};

/// Which LBLL variant the CLS runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Independent distributors (figure 7.3).
    Independent,
    /// Distributors co-located with the servers (figure 7.4): prefer the
    /// local node while its load < T.
    CoLocated,
    /// Cache cluster (§7.5.4): answer ORIGIN for non-cacheable targets and
    /// when the caches are overloaded.
    Cache,
}

/// LBLL parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub mode: Mode,
    /// Load threshold T.
    pub t: f64,
    /// A set larger than one shrinks when unchanged for K.
    pub k: Duration,
}

/// The scheduler: parameters + the target table.
pub struct Lbll {
    pub params: Params,
    pub table: TargetTable,
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub answer: Answer,
    /// Whether the target's server set changed.
    pub changed: bool,
}

impl Lbll {
    pub fn new(params: Params, table: TargetTable) -> Self {
        Lbll { params, table }
    }

    /// Decides where content `id` goes. `local` is the distributor's node
    /// (co-located mode). Loads are read from `servers`; the caller records
    /// the assignment.
    pub fn lookup(
        &mut self,
        now: Instant,
        id: &[u8; 16],
        item_flags: u8,
        local: Option<u16>,
        servers: &ServerTable,
    ) -> Decision {
        let p = self.params;
        if p.mode == Mode::Cache && item_flags & flags::CACHEABLE == 0 {
            return Decision {
                answer: Answer::Origin,
                changed: false,
            };
        }
        let none = match p.mode {
            Mode::Cache => Answer::Origin,
            _ => Answer::None,
        };
        let e = self.table.get_or_insert(id, now);
        let mut changed = e.set.retain(|s| servers.eligible(s));
        // The global scan is only needed for an empty set or an overload;
        // a non-empty pruned set proves some server is eligible.
        if e.set.is_empty() && servers.least_loaded().is_none() {
            if changed {
                e.last_mod = now;
            }
            return Decision {
                answer: none,
                changed,
            };
        }
        let t = p.t;
        let answer = match p.mode {
            Mode::Independent => {
                let n = if e.set.is_empty() {
                    let g = global_min(servers, e);
                    changed |= add(e, g, servers);
                    g
                } else {
                    let n = least_in(e, servers);
                    let ln = servers.load(n);
                    if (ln > t && servers.any_below(t / 2.0, false)) || ln >= 2.0 * t {
                        let g = global_min(servers, e);
                        changed |= add(e, g, servers);
                        g
                    } else {
                        n
                    }
                };
                Answer::Server(n)
            }
            Mode::CoLocated => {
                let local = local.filter(|&l| servers.eligible(l));
                let local_ok = local.filter(|&l| servers.load(l) < t);
                let n = if e.set.is_empty() {
                    let n = local_ok.unwrap_or_else(|| global_min(servers, e));
                    changed |= add(e, n, servers);
                    n
                } else if let Some(l) = local_ok.filter(|&l| e.set.contains(l)) {
                    l
                } else {
                    let n = least_in(e, servers);
                    if servers.load(n) > t {
                        let n = local_ok.unwrap_or_else(|| global_min(servers, e));
                        changed |= add(e, n, servers);
                        n
                    } else {
                        n
                    }
                };
                Answer::Server(n)
            }
            Mode::Cache => {
                if e.set.is_empty() {
                    let g = global_min(servers, e);
                    changed |= add(e, g, servers);
                    Answer::Server(g)
                } else {
                    let n = least_in(e, servers);
                    if servers.load(n) > t {
                        if servers.any_below(t / 2.0, true) {
                            let g = global_min(servers, e);
                            changed |= add(e, g, servers);
                            Answer::Server(g)
                        } else {
                            Answer::Origin
                        }
                    } else {
                        Answer::Server(n)
                    }
                }
            }
        };
        // Shrink: a set unchanged for K loses its most loaded member.
        if e.set.len() > 1 && now.saturating_duration_since(e.last_mod) > p.k {
            let keep = match answer {
                Answer::Server(n) => Some(n),
                _ => None,
            };
            if let Some(m) = most_in(e, servers, keep) {
                changed |= e.set.remove(m);
            }
        }
        if changed {
            e.last_mod = now;
        }
        Decision { answer, changed }
    }
}

/// Globally least loaded eligible server. Only called when one exists (the
/// set is non-empty after pruning, or `least_loaded` was checked); the
/// fallback keeps it total without a panic.
fn global_min(servers: &ServerTable, e: &Entry) -> u16 {
    servers
        .least_loaded()
        .unwrap_or_else(|| e.set.as_slice().first().copied().unwrap_or(0))
}

/// Least loaded member (ties: first in the set). The set is non-empty and
/// pruned to eligible servers.
fn least_in(e: &Entry, servers: &ServerTable) -> u16 {
    let s = e.set.as_slice();
    let mut best = s[0];
    let mut bl = servers.load(best);
    for &x in &s[1..] {
        let l = servers.load(x);
        if l < bl {
            best = x;
            bl = l;
        }
    }
    best
}

/// Most loaded member other than `keep` (ties: last in the set).
fn most_in(e: &Entry, servers: &ServerTable, keep: Option<u16>) -> Option<u16> {
    let mut best: Option<(u16, f64)> = None;
    for &x in e.set.as_slice() {
        if Some(x) == keep {
            continue;
        }
        let l = servers.load(x);
        if best.is_none_or(|(_, b)| l >= b) {
            best = Some((x, l));
        }
    }
    best.map(|(x, _)| x)
}

/// Adds `n`; a full set first loses its most loaded member.
fn add(e: &mut Entry, n: u16, servers: &ServerTable) -> bool {
    if e.set.contains(n) {
        return false;
    }
    if e.set.len() == MAX_SET {
        if let Some(m) = most_in(e, servers, None) {
            e.set.remove(m);
        }
    }
    e.set.insert(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::servers::DistKey;

    const T: f64 = 10.0;

    fn lbll(mode: Mode) -> Lbll {
        Lbll::new(
            Params {
                mode,
                t: T,
                k: Duration::from_secs(60),
            },
            TargetTable::new(1000, Duration::from_secs(3600)),
        )
    }

    /// Servers with the given in-flight units.
    fn servers(units: &[u32]) -> (ServerTable, DistKey) {
        let mut s = ServerTable::new(&vec![1; units.len()]);
        let d = s.add_distributor();
        for (i, &u) in units.iter().enumerate() {
            s.report(d, i as u16, u);
        }
        (s, d)
    }

    fn set_of(l: &Lbll, id: u8) -> Vec<u16> {
        l.table.peek(&[id; 16]).unwrap().set.as_slice().to_vec()
    }

    const C: u8 = flags::CACHEABLE;

    #[test]
    fn independent_empty_set_takes_least_loaded_then_sticks() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::Independent);
        let (mut s, d) = servers(&[5, 2, 7]);
        let a = l.lookup(t0, &[1; 16], 0, None, &s);
        assert_eq!(a.answer, Answer::Server(1));
        assert!(a.changed);
        // Locality: the target stays on 1 even when 1 is no longer the least
        // loaded, as long as it is below T.
        s.report(d, 1, 9);
        let a = l.lookup(t0, &[1; 16], 0, None, &s);
        assert_eq!(
            a,
            Decision {
                answer: Answer::Server(1),
                changed: false
            }
        );
    }

    #[test]
    fn independent_overload_adds_least_loaded() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::Independent);
        let (mut s, d) = servers(&[0, 8, 8]);
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, None, &s).answer,
            Answer::Server(0)
        );
        // 0 over T, but no node below T/2: stays.
        s.report(d, 0, 11);
        s.report(d, 1, 6);
        s.report(d, 2, 6);
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, None, &s).answer,
            Answer::Server(0)
        );
        // A node below T/2 appears: the target is replicated onto it.
        s.report(d, 2, 4);
        let a = l.lookup(t0, &[1; 16], 0, None, &s);
        assert_eq!(a.answer, Answer::Server(2));
        assert!(a.changed);
        assert_eq!(set_of(&l, 1), [0, 2]);
        // At 2T the least loaded node is added whatever the others' load.
        let mut l = lbll(Mode::Independent);
        let (mut s, d) = servers(&[0, 19, 19]);
        l.lookup(t0, &[2; 16], 0, None, &s);
        s.report(d, 0, 20);
        assert_eq!(
            l.lookup(t0, &[2; 16], 0, None, &s).answer,
            Answer::Server(1)
        );
        assert_eq!(set_of(&l, 2), [0, 1]);
    }

    #[test]
    fn independent_set_shrinks_after_k() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::Independent);
        let (mut s, d) = servers(&[0, 8]);
        l.lookup(t0, &[1; 16], 0, None, &s);
        s.report(d, 0, 25);
        s.report(d, 1, 3);
        l.lookup(t0, &[1; 16], 0, None, &s);
        assert_eq!(set_of(&l, 1), [0, 1]);
        // Not yet K since the last change.
        let a = l.lookup(t0 + Duration::from_secs(60), &[1; 16], 0, None, &s);
        assert!(!a.changed);
        // After K the most loaded member (0) is removed.
        let a = l.lookup(t0 + Duration::from_secs(61), &[1; 16], 0, None, &s);
        assert_eq!(a.answer, Answer::Server(1));
        assert!(a.changed);
        assert_eq!(set_of(&l, 1), [1]);
        assert_eq!(
            l.table.peek(&[1; 16]).unwrap().last_mod,
            t0 + Duration::from_secs(61)
        );
    }

    #[test]
    fn dead_members_are_pruned() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::Independent);
        let (mut s, _) = servers(&[0, 1]);
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, None, &s).answer,
            Answer::Server(0)
        );
        s.set_alive(0, false);
        let a = l.lookup(t0, &[1; 16], 0, None, &s);
        assert_eq!(a.answer, Answer::Server(1));
        assert_eq!(set_of(&l, 1), [1]);
        s.set_alive(1, false);
        assert_eq!(l.lookup(t0, &[1; 16], 0, None, &s).answer, Answer::None);
    }

    #[test]
    fn colocated_prefers_local_below_t() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::CoLocated);
        let (mut s, d) = servers(&[0, 5, 9]);
        // Empty set, local (2) below T: local, although 0 is least loaded.
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, Some(2), &s).answer,
            Answer::Server(2)
        );
        // Another distributor (local 1) asks for the same target: the set
        // is {2}, 1 is not in it, 2 is not over T → 2.
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, Some(1), &s).answer,
            Answer::Server(2)
        );
        // 2 goes over T: local 1 is below T → 1 is added.
        s.report(d, 2, 11);
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, Some(1), &s).answer,
            Answer::Server(1)
        );
        assert_eq!(set_of(&l, 1), [2, 1]);
        // Local in the set and below T: local, even if not the least loaded.
        s.report(d, 2, 0);
        assert_eq!(
            l.lookup(t0, &[1; 16], 0, Some(1), &s).answer,
            Answer::Server(1)
        );
        // Empty set, local over T: least loaded.
        s.report(d, 1, 10);
        assert_eq!(
            l.lookup(t0, &[3; 16], 0, Some(1), &s).answer,
            Answer::Server(0)
        );
        // Set member over T, local over T: global least loaded.
        s.report(d, 0, 12);
        s.report(d, 2, 3);
        assert_eq!(
            l.lookup(t0, &[3; 16], 0, Some(1), &s).answer,
            Answer::Server(2)
        );
        assert_eq!(set_of(&l, 3), [0, 2]);
        // No local node given: behaves like the least loaded member rule.
        assert_eq!(
            l.lookup(t0, &[3; 16], 0, None, &s).answer,
            Answer::Server(2)
        );
    }

    #[test]
    fn cache_bypasses_non_cacheable_and_overload() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::Cache);
        let (mut s, d) = servers(&[0, 4]);
        // Non-cacheable: origin, table untouched.
        assert_eq!(l.lookup(t0, &[1; 16], 0, None, &s).answer, Answer::Origin);
        assert!(l.table.peek(&[1; 16]).is_none());
        assert_eq!(
            l.lookup(t0, &[1; 16], C, None, &s).answer,
            Answer::Server(0)
        );
        // Member over T, a node at exactly T/2 (≤): replicate.
        s.report(d, 0, 11);
        s.report(d, 1, 5);
        assert_eq!(
            l.lookup(t0, &[1; 16], C, None, &s).answer,
            Answer::Server(1)
        );
        // All members over T and no node ≤ T/2: origin, set unchanged.
        s.report(d, 0, 12);
        s.report(d, 1, 11);
        let a = l.lookup(t0, &[1; 16], C, None, &s);
        assert_eq!(
            a,
            Decision {
                answer: Answer::Origin,
                changed: false
            }
        );
        // Every cache down: origin.
        s.set_alive(0, false);
        s.set_alive(1, false);
        assert_eq!(l.lookup(t0, &[1; 16], C, None, &s).answer, Answer::Origin);
    }

    #[test]
    fn full_set_replaces_most_loaded() {
        let t0 = Instant::now();
        let mut l = lbll(Mode::Independent);
        let n = MAX_SET + 2;
        let (mut s, d) = servers(&vec![30; n]);
        s.report(d, 0, 0);
        l.lookup(t0, &[1; 16], 0, None, &s);
        // Repeatedly overload the member and free another server.
        for i in 1..n as u16 {
            s.report(d, i - 1, 30);
            s.report(d, i, 0);
            assert_eq!(
                l.lookup(t0, &[1; 16], 0, None, &s).answer,
                Answer::Server(i)
            );
            assert!(set_of(&l, 1).len() <= MAX_SET);
            assert!(set_of(&l, 1).contains(&i));
        }
    }

    #[test]
    fn many_targets_spread_and_table_stays_bounded() {
        let t0 = Instant::now();
        let mut l = Lbll::new(
            Params {
                mode: Mode::Independent,
                t: T,
                k: Duration::from_secs(60),
            },
            TargetTable::new(64, Duration::from_secs(3600)),
        );
        let (mut s, d) = servers(&[0, 0, 0, 0]);
        let mut per = [0u32; 4];
        for i in 0..1000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            if let Answer::Server(n) = l.lookup(t0, &id, 0, None, &s).answer {
                s.assign(d, n, 1);
                per[n as usize] += 1;
            }
        }
        assert_eq!(per, [250; 4]);
        assert_eq!(l.table.len(), 64);
    }
}
