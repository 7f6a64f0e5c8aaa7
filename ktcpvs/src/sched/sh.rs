//! Source hashing (IPVS `sh`): the client's IP picks a bucket of a table
//! filled by weight, so one client keeps its server across connections —
//! for applications that keep per-client state on the server (sessions
//! without a shared store) when the client is not behind a changing NAT.
//!
//! The table (`16 × servers` buckets, at least 256) is filled by smooth
//! weighted round-robin and rebuilt only when a weight changes. A bucket
//! whose server is down, drained or excluded falls back to the next
//! bucket of the client's probe sequence (IPVS `sh-fallback`): only that
//! server's clients move, and they come back when it does.

use super::hashing::{ip_hash, mix64, signature};
use super::{Exclude, Request, Scheduler, Server};

#[derive(Debug, Default)]
pub struct SourceHash {
    buckets: Vec<u16>,
    sig: Option<u64>,
}

impl SourceHash {
    fn rebuild(&mut self, servers: &[Server]) {
        let n = servers.len();
        let size = (16 * n).max(256);
        self.buckets.clear();
        let total: i64 = servers.iter().map(|s| s.weight() as i64).sum();
        if total == 0 {
            return;
        }
        // Smooth weighted round-robin: proportional and interleaved.
        let mut cur = vec![0i64; n];
        for _ in 0..size {
            let mut best = 0;
            for (j, s) in servers.iter().enumerate() {
                cur[j] += s.weight() as i64;
                if cur[j] > cur[best] {
                    best = j;
                }
            }
            cur[best] -= total;
            self.buckets.push(best as u16);
        }
    }
}

impl Scheduler for SourceHash {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize> {
        let sig = signature(servers, false);
        if self.sig != Some(sig) {
            self.rebuild(servers);
            self.sig = Some(sig);
        }
        let m = self.buckets.len() as u64;
        if m == 0 {
            return None;
        }
        let h = ip_hash(req.peer);
        // The first probe is the client's own bucket; later ones rehash.
        for k in 0..m {
            let b = if k == 0 { h } else { mix64(h ^ k) };
            let j = self.buckets[(b % m) as usize] as usize;
            if j < servers.len() && servers[j].available() && !exclude.has(j) {
                return Some(j);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{req, test_servers};
    use std::net::IpAddr;
    use std::sync::atomic::Ordering::Relaxed;

    fn from(ip: [u8; 4]) -> Request<'static> {
        Request {
            peer: IpAddr::from(ip),
            ..req(b"/")
        }
    }

    #[test]
    fn a_client_keeps_its_server_and_clients_spread_by_weight() {
        let s = test_servers(&[1, 2, 1]);
        let mut sh = SourceHash::default();
        let mut count = [0usize; 3];
        for i in 0..4000u32 {
            let ip = (0x0a00_0000 + i).to_be_bytes();
            let first = sh.pick(&s, &from(ip), Exclude::NONE).unwrap();
            // The target does not matter, only the client.
            let again = sh
                .pick(
                    &s,
                    &Request {
                        target: b"/x",
                        ..from(ip)
                    },
                    Exclude::NONE,
                )
                .unwrap();
            assert_eq!(first, again);
            count[first] += 1;
        }
        // Weights 1:2:1 → about 1000:2000:1000.
        assert!((800..1200).contains(&count[0]), "{count:?}");
        assert!((1700..2300).contains(&count[1]), "{count:?}");
        assert!((800..1200).contains(&count[2]), "{count:?}");
    }

    #[test]
    fn only_the_clients_of_a_down_server_move() {
        let s = test_servers(&[1, 1, 1]);
        let mut sh = SourceHash::default();
        let ips: Vec<[u8; 4]> = (0..300u32)
            .map(|i| (0xc0a8_0000 + i).to_be_bytes())
            .collect();
        let before: Vec<usize> = ips
            .iter()
            .map(|&ip| sh.pick(&s, &from(ip), Exclude::NONE).unwrap())
            .collect();
        s[1].up.store(false, Relaxed);
        for (ip, &b) in ips.iter().zip(&before) {
            let now = sh.pick(&s, &from(*ip), Exclude::NONE).unwrap();
            assert_ne!(now, 1);
            if b != 1 {
                assert_eq!(now, b, "a client of a live server moved");
            }
        }
        s[1].up.store(true, Relaxed);
        for (ip, &b) in ips.iter().zip(&before) {
            assert_eq!(sh.pick(&s, &from(*ip), Exclude::NONE), Some(b));
        }
        assert_eq!(sh.pick(&s, &from(ips[0]), Exclude::bits(0b111)), None);
    }

    #[test]
    fn weight_zero_never_chosen() {
        let s = test_servers(&[0, 1]);
        let mut sh = SourceHash::default();
        for i in 0..100u8 {
            assert_eq!(sh.pick(&s, &from([10, 0, 0, i]), Exclude::NONE), Some(1));
        }
        s[1].weight.store(0, Relaxed);
        assert_eq!(sh.pick(&s, &from([10, 0, 0, 1]), Exclude::NONE), None);
    }
}
