//! Weighted round-robin exactly as the thesis' pseudo-code (§4.1.2):
//! weights 4, 3, 2 give the cycle A A B A B C A B C.

use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// Index of the server chosen last (-1 at start).
    i: isize,
    /// Current weight.
    cw: i64,
}

impl Default for WeightedRoundRobin {
    fn default() -> Self {
        WeightedRoundRobin { i: -1, cw: 0 }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Scheduler for WeightedRoundRobin {
    fn pick(&mut self, servers: &[Server], _req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let n = servers.len();
        // Weights of servers that cannot be chosen count as 0.
        let w = |j: usize| -> u32 {
            if servers[j].available() && !exclude.has(j) {
                servers[j].weight()
            } else {
                0
            }
        };
        let (mut max, mut g) = (0u32, 0u32);
        for j in 0..n {
            let wj = w(j);
            max = max.max(wj);
            g = gcd(g, wj);
        }
        if max == 0 {
            return None;
        }
        // Weights may have dropped since the last pick (dynamic feedback,
        // administration): a current weight above the new maximum would
        // need more passes than the loop allows.
        self.cw = self.cw.min(max as i64);
        // At most one full pass over every weight level finds a server.
        for _ in 0..(n * (max / g) as usize + n) {
            self.i = (self.i + 1) % n as isize;
            if self.i == 0 {
                self.cw -= g as i64;
                if self.cw <= 0 {
                    self.cw = max as i64;
                }
            }
            let i = self.i as usize;
            if w(i) as i64 >= self.cw {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};

    #[test]
    fn weights_dropping_between_picks_still_schedule() {
        let s = test_servers(&[10, 10, 10]);
        let mut w = WeightedRoundRobin::default();
        for _ in 0..3 {
            assert!(w.pick(&s, &req(b"/"), Exclude::NONE).is_some());
        }
        for x in s.iter() {
            x.weight.store(1, std::sync::atomic::Ordering::Relaxed);
        }
        for _ in 0..6 {
            assert!(w.pick(&s, &req(b"/"), Exclude::NONE).is_some());
        }
    }

    #[test]
    fn thesis_cycle_aababcabc() {
        let s = test_servers(&[4, 3, 2]);
        let mut wrr = WeightedRoundRobin::default();
        let cycle: String = (0..18)
            .map(|_| (b'A' + wrr.pick(&s, &req(b"/"), Exclude::NONE).unwrap() as u8) as char)
            .collect();
        assert_eq!(cycle, "AABABCABCAABABCABC");
    }

    #[test]
    fn zero_weight_and_exclusion() {
        let s = test_servers(&[0, 2]);
        let mut wrr = WeightedRoundRobin::default();
        for _ in 0..5 {
            assert_eq!(wrr.pick(&s, &req(b"/"), Exclude::NONE), Some(1));
        }
        assert_eq!(wrr.pick(&s, &req(b"/"), Exclude::bits(0b10)), None);
    }
}
