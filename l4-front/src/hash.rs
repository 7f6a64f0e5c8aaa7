//! A small seeded hasher for the hot-path tables.
//!
//! std's SipHash costs ~20 ns per 16-byte key; this multiply-rotate hash with
//! a per-process random seed and a murmur3 finaliser is several times cheaper
//! and, being seeded, does not let a SYN flood from chosen sources aim at one
//! bucket chain the way an unseeded hash would.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

#[derive(Clone, Copy)]
pub struct FastHasher {
    h: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.h = (self.h.rotate_left(5) ^ v).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        mix64(self.h)
    }
}

/// murmur3's 64-bit finaliser.
#[inline]
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Builds [`FastHasher`]s starting from a seed.
#[derive(Clone, Copy, Debug)]
pub struct SeededState {
    pub seed: u64,
}

impl SeededState {
    pub fn new(seed: u64) -> Self {
        SeededState { seed }
    }

    /// A seed from the kernel's random pool (falls back to the clock).
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let seed = if n == 8 {
            u64::from_ne_bytes(b)
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x1234_5678)
        };
        SeededState { seed }
    }
}

impl BuildHasher for SeededState {
    type Hasher = FastHasher;
    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher { h: self.seed }
    }
}
