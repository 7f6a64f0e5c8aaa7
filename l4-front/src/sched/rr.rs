//! Round robin: servers in turn, skipping weight 0.

use std::sync::Arc;

use super::{RealServer, Scheduler};

#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "rr"
    }

    fn rebuild(&mut self, _servers: &[Arc<RealServer>]) {}

    fn pick(&mut self, servers: &[Arc<RealServer>], _caddr: u32, _cport: u16) -> Option<usize> {
        let n = servers.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if servers[i].effective_weight() > 0 {
                self.next = i + 1;
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
    fn turns_and_drain() {
        let rs = servers(&[1, 1, 1]);
        let mut s = RoundRobin::default();
        assert_eq!(sequence(&mut s, &rs, 6), "ABCABC");
        rs[1].set_weight(0);
        assert_eq!(sequence(&mut s, &rs, 4), "ACAC");
        rs[0].set_up(false);
        rs[2].set_up(false);
        assert_eq!(sequence(&mut s, &rs, 2), "--");
    }
}
