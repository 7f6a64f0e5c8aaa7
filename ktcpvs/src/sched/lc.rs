//! Least-connection (§4.1.3): the available server with the fewest
//! in-flight connection units; ties go to the lowest index.

use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug, Default)]
pub struct LeastConnection;

impl Scheduler for LeastConnection {
    fn pick(&mut self, servers: &[Server], _req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, s) in servers.iter().enumerate() {
            if !s.available() || exclude.has(i) {
                continue;
            }
            let c = s.conns();
            if best.is_none_or(|(_, bc)| c < bc) {
                best = Some((i, c));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn fewest_conns_wins() {
        let s = test_servers(&[1, 9, 1]);
        s[0].conns.store(3, Relaxed);
        s[1].conns.store(2, Relaxed);
        s[2].conns.store(2, Relaxed);
        let mut lc = LeastConnection;
        assert_eq!(lc.pick(&s, &req(b"/"), Exclude::NONE), Some(1));
        assert_eq!(lc.pick(&s, &req(b"/"), Exclude::bits(0b010)), Some(2));
    }
}
