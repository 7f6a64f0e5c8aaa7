//! Weighted least connection: the smallest overhead / weight, compared by
//! cross-multiplication as IPVS does (no division on the data path).

use std::sync::Arc;

use super::{RealServer, Scheduler};

pub struct WeightedLeastConnection;

impl Scheduler for WeightedLeastConnection {
    fn name(&self) -> &'static str {
        "wlc"
    }

    fn rebuild(&mut self, _servers: &[Arc<RealServer>]) {}

    fn pick(&mut self, servers: &[Arc<RealServer>], _caddr: u32, _cport: u16) -> Option<usize> {
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, s) in servers.iter().enumerate() {
            let w = s.effective_weight() as u64;
            if w == 0 {
                continue;
            }
            let o = s.overhead();
            match best {
                Some((_, bo, bw)) if o * bw >= bo * w => {}
                _ => best = Some((i, o, w)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn weight_scales_load() {
        let rs = servers(&[1, 3]);
        rs[0].active.store(1, Ordering::Relaxed);
        rs[1].active.store(2, Ordering::Relaxed);
        let mut s = WeightedLeastConnection;
        // 256/1 vs 512/3: the heavier server wins.
        assert_eq!(s.pick(&rs, 1, 1), Some(1));
        rs[1].active.store(4, Ordering::Relaxed);
        assert_eq!(s.pick(&rs, 1, 1), Some(0));
        rs[0].set_up(false);
        assert_eq!(s.pick(&rs, 1, 1), Some(1));
    }
}
