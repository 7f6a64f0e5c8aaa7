//! Helpers shared by the hashing schedulers (sh, chash, maglev): a 64-bit
//! mixer, a stable per-server key, and the signature that tells a
//! per-worker lookup structure to rebuild.

use std::net::{IpAddr, SocketAddr};

use super::Server;

/// splitmix64's finaliser: spreads every input bit over the output.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable hash of a server's address (its identity on a ring or in a
/// Maglev permutation: the same server lands at the same places in every
/// worker and after every restart).
pub fn server_key(addr: SocketAddr, salt: u64) -> u64 {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    };
    mix64(mix64((ip as u64) ^ ((ip >> 64) as u64).rotate_left(17) ^ salt) ^ addr.port() as u64)
}

/// A hash of a client address (source hashing).
#[inline]
pub fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix64(u32::from(v4) as u64),
        IpAddr::V6(v6) => {
            let v = u128::from(v6);
            mix64((v as u64) ^ mix64((v >> 64) as u64))
        }
    }
}

/// Signature of the servers' weights (and, if `with_up`, availability):
/// a structure built from them is rebuilt when it changes. O(servers),
/// no allocation; each server's term is mixed on its own and summed, so
/// the loop has no serial dependency through the mixer.
#[inline]
pub fn signature(servers: &[Server], with_up: bool) -> u64 {
    let mut h = servers.len() as u64;
    for (j, s) in servers.iter().enumerate() {
        let mut v = (s.weight() as u64) << 20 | j as u64;
        if with_up && !s.up.load(std::sync::atomic::Ordering::Relaxed) {
            v |= 1 << 60;
        }
        h = h.wrapping_add(mix64(v));
    }
    h
}

/// The smallest prime ≥ n (n ≥ 2).
pub fn next_prime(n: usize) -> usize {
    let is_prime = |m: usize| {
        if m < 2 {
            return false;
        }
        let mut d = 2;
        while d * d <= m {
            if m.is_multiple_of(d) {
                return false;
            }
            d += 1;
        }
        true
    };
    let mut m = n.max(2);
    while !is_prime(m) {
        m += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert_eq!(next_prime(100), 101);
        assert_eq!(next_prime(30000), 30011);
        assert_eq!(next_prime(2), 2);
    }

    #[test]
    fn signature_follows_weight_and_state() {
        let s = crate::sched::test_servers(&[1, 2]);
        let a = signature(&s, true);
        assert_eq!(a, signature(&s, true));
        s[1].up.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_ne!(a, signature(&s, true));
        assert_eq!(signature(&s, false), {
            s[1].up.store(true, std::sync::atomic::Ordering::Relaxed);
            signature(&s, false)
        });
    }
}
