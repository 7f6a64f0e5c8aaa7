//! Weighted round robin, the IPVS algorithm (§4.1.2): a current weight `cw`
//! steps down from the maximum weight by the weights' gcd; each round serves
//! the servers whose weight is at least `cw`. Weights 4, 3, 2 give
//! AABABCABC.

use std::sync::Arc;

use super::{RealServer, Scheduler};

#[derive(Default)]
pub struct WeightedRoundRobin {
    i: Option<usize>,
    cw: u32,
    max: u32,
    gcd: u32,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Scheduler for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "wrr"
    }

    fn rebuild(&mut self, servers: &[Arc<RealServer>]) {
        let ws = servers.iter().map(|s| s.effective_weight());
        self.max = ws.clone().max().unwrap_or(0);
        self.gcd = ws.fold(0, gcd).max(1);
        self.i = None;
        self.cw = 0;
    }

    fn pick(&mut self, servers: &[Arc<RealServer>], _caddr: u32, _cport: u16) -> Option<usize> {
        let n = servers.len();
        if n == 0 || self.max == 0 {
            return None;
        }
        // At most one full cycle of cw values over all servers.
        let bound = n * (self.max / self.gcd + 1) as usize + n;
        for _ in 0..bound {
            let i = match self.i {
                Some(i) if i + 1 < n => i + 1,
                _ => 0,
            };
            self.i = Some(i);
            if i == 0 {
                self.cw = self.cw.saturating_sub(self.gcd);
                if self.cw == 0 {
                    self.cw = self.max;
                }
            }
            if servers[i].effective_weight() >= self.cw {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn thesis_sequence() {
        let rs = servers(&[4, 3, 2]);
        let mut s = WeightedRoundRobin::default();
        s.rebuild(&rs);
        assert_eq!(sequence(&mut s, &rs, 18), "AABABCABCAABABCABC");
    }

    #[test]
    fn gcd_and_drain() {
        let rs = servers(&[4, 2, 0]);
        let mut s = WeightedRoundRobin::default();
        s.rebuild(&rs);
        assert_eq!(sequence(&mut s, &rs, 6), "AABAAB");
        rs[0].set_weight(0);
        rs[1].set_weight(0);
        s.rebuild(&rs);
        assert_eq!(sequence(&mut s, &rs, 2), "--");
    }

    #[test]
    fn weight_drop_without_rebuild_does_not_spin() {
        let rs = servers(&[3, 1]);
        let mut s = WeightedRoundRobin::default();
        s.rebuild(&rs);
        rs[0].set_weight(0);
        rs[1].set_weight(0);
        assert_eq!(sequence(&mut s, &rs, 3), "---");
    }
}
