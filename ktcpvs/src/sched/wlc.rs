//! Weighted least-connection (§4.1.4): the server j minimising C_j / W_j,
//! compared without division as C_j * W_i < C_i * W_j. Weight 0 is never
//! scheduled.

use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug, Default)]
pub struct WeightedLeastConnection;

/// The wlc choice among `servers`, shared with lblc.
pub fn least_loaded(servers: &[Server], exclude: Exclude) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None; // (index, conns, weight)
    for (j, s) in servers.iter().enumerate() {
        if !s.available() || exclude.has(j) {
            continue;
        }
        let (cj, wj) = (s.conns() as u64, s.weight() as u64);
        match best {
            Some((_, ci, wi)) if cj * wi >= ci * wj => {}
            _ => best = Some((j, cj, wj)),
        }
    }
    best.map(|(j, _, _)| j)
}

impl Scheduler for WeightedLeastConnection {
    fn pick(&mut self, servers: &[Server], _req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        least_loaded(servers, exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn ratio_decides() {
        // C/W: 4/2 = 2, 5/5 = 1, 0/0 = never
        let s = test_servers(&[2, 5, 0]);
        s[0].conns.store(4, Relaxed);
        s[1].conns.store(5, Relaxed);
        let mut wlc = WeightedLeastConnection;
        assert_eq!(wlc.pick(&s, &req(b"/"), Exclude::NONE), Some(1));
        s[1].conns.store(11, Relaxed);
        assert_eq!(wlc.pick(&s, &req(b"/"), Exclude::NONE), Some(0));
        assert_eq!(wlc.pick(&s, &req(b"/"), Exclude::bits(0b011)), None);
    }

    #[test]
    fn thesis_comparison_ties_and_idle_weight_zero() {
        // §4.1.4: m moves to i only if C_m*W_i > C_i*W_m (strictly), so
        // ties keep the first server; weight 0 is never chosen, even idle.
        let s = test_servers(&[0, 3, 1, 3]);
        s[1].conns.store(3, Relaxed);
        s[2].conns.store(1, Relaxed);
        s[3].conns.store(3, Relaxed);
        let mut wlc = WeightedLeastConnection;
        assert_eq!(wlc.pick(&s, &req(b"/"), Exclude::NONE), Some(1));
        s[1].conns.store(4, Relaxed); // 4/3 > 1/1 = 3/3
        assert_eq!(wlc.pick(&s, &req(b"/"), Exclude::NONE), Some(2));
    }
}
