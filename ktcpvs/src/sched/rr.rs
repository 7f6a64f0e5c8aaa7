//! Round-robin (§4.1.1): every available server in turn, weights ignored
//! except that weight 0 drains.

use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn pick(&mut self, servers: &[Server], _req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let n = servers.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if servers[i].available() && !exclude.has(i) {
                self.next = (i + 1) % n;
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
    fn rotates_and_skips_drained_and_excluded() {
        let s = test_servers(&[1, 0, 5]);
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&s, &req(b"/"), Exclude::NONE).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(rr.pick(&s, &req(b"/"), Exclude::bits(0b101)), None);
        assert!(s[0].mark_down(100));
        assert!(
            !s[0].mark_down(100),
            "only the first failure is a transition"
        );
        assert_eq!(rr.pick(&s, &req(b"/"), Exclude::NONE), Some(2));
        assert_eq!(rr.pick(&s, &req(b"/"), Exclude::NONE), Some(2));
        assert!(!s[0].readmit(101, 2));
        assert!(s[0].readmit(102, 2));
        assert!(!s[0].readmit(103, 2), "already back");
        assert_eq!(rr.pick(&s, &req(b"/"), Exclude::NONE), Some(0));
    }
}
