//! Least connection: the server with the smallest IPVS overhead
//! (active × 256 + inactive), ignoring weights except 0 (drain).

use std::sync::Arc;

use super::{RealServer, Scheduler};

pub struct LeastConnection;

impl Scheduler for LeastConnection {
    fn name(&self) -> &'static str {
        "lc"
    }

    fn rebuild(&mut self, _servers: &[Arc<RealServer>]) {}

    fn pick(&mut self, servers: &[Arc<RealServer>], _caddr: u32, _cport: u16) -> Option<usize> {
        servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.effective_weight() > 0)
            .min_by_key(|(_, s)| s.overhead())
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn least_loaded_wins() {
        let rs = servers(&[1, 1, 1]);
        rs[0].active.store(2, Ordering::Relaxed);
        rs[1].inactive.store(300, Ordering::Relaxed);
        rs[2].active.store(1, Ordering::Relaxed);
        let mut s = LeastConnection;
        assert_eq!(s.pick(&rs, 1, 1), Some(2));
        rs[2].set_weight(0);
        assert_eq!(s.pick(&rs, 1, 1), Some(1));
    }
}
