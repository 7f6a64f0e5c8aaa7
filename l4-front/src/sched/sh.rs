//! Source hashing: a 256-bucket table filled with the servers in proportion
//! to their weights; a client address always hashes to the same bucket.
//! A bucket whose server is now down or draining yields no server until the
//! next rebuild (as IPVS sh without its fallback flag).

use std::sync::Arc;

use super::{RealServer, Scheduler};

const BUCKETS: usize = 256;

#[derive(Default)]
pub struct SourceHash {
    table: Vec<u16>,
}

impl Scheduler for SourceHash {
    fn name(&self) -> &'static str {
        "sh"
    }

    fn rebuild(&mut self, servers: &[Arc<RealServer>]) {
        self.table.clear();
        let live: Vec<(usize, u32)> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.effective_weight() > 0)
            .map(|(i, s)| (i, s.effective_weight()))
            .collect();
        if live.is_empty() {
            return;
        }
        // Cycle through the servers, each taking `weight` buckets in a row.
        let mut k = 0;
        let mut taken = 0;
        while self.table.len() < BUCKETS {
            let (i, w) = live[k];
            self.table.push(i as u16);
            taken += 1;
            if taken >= w {
                taken = 0;
                k = (k + 1) % live.len();
            }
        }
    }

    fn pick(&mut self, servers: &[Arc<RealServer>], caddr: u32, _cport: u16) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        // IPVS: (addr * 2654435761) >> (32 - bits).
        let b = (caddr.wrapping_mul(2_654_435_761) >> 24) as usize % BUCKETS;
        let i = self.table[b] as usize;
        (servers.get(i)?.effective_weight() > 0).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn same_client_same_server_and_weighted() {
        let rs = servers(&[1, 3]);
        let mut s = SourceHash::default();
        s.rebuild(&rs);
        let first = s.pick(&rs, 0x0a00_0001, 1);
        for p in 0..50 {
            assert_eq!(s.pick(&rs, 0x0a00_0001, p), first);
        }
        let mut counts = [0usize; 2];
        for a in 0..4000u32 {
            counts[s.pick(&rs, a.wrapping_mul(7919), 1).unwrap()] += 1;
        }
        assert!(counts[1] > 2 * counts[0], "{counts:?}");
        rs[1].set_weight(0);
        s.rebuild(&rs);
        assert_eq!(s.pick(&rs, 12345, 1), Some(0));
    }
}
