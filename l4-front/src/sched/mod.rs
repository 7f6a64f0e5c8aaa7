//! Schedulers (§4.1) behind one trait, one file per algorithm, as HAProxy's
//! `lb_*.c`. The data path calls [`Scheduler::pick`] once per new
//! connection; anything expensive (Maglev's lookup table, sh's buckets,
//! wrr's gcd/max) is built in [`Scheduler::rebuild`], which the control plane
//! calls when the server set or a weight changes.
//!
//! Weight 0 drains a server: it gets no new connections, but entries already
//! in the connection table keep going to it. A server marked down by health
//! checks counts as weight 0.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub mod feedback;
mod lc;
mod maglev;
mod rr;
mod sh;
mod wlc;
mod wrr;

pub use lc::LeastConnection;
pub use maglev::Maglev;
pub use rr::RoundRobin;
pub use sh::SourceHash;
pub use wlc::WeightedLeastConnection;
pub use wrr::WeightedRoundRobin;

/// The scheduler-visible state of one real server. Counters are shared by
/// all worker threads (they change once per connection, not per packet).
#[derive(Debug)]
pub struct RealServer {
    pub addr: u32,
    pub port: u16,
    weight: AtomicU32,
    up: AtomicBool,
    /// ESTABLISHED connections.
    pub active: AtomicU32,
    /// Connections in any other state.
    pub inactive: AtomicU32,
    /// Connections ever scheduled to it (dynamic feedback's input index).
    pub created: AtomicU64,
    /// Deleted at run time (`l4adm -d`): no new connections; the entries
    /// already in the table keep going to it until they expire (IPVS moves
    /// such a server to its trash list). Re-adding it clears the flag.
    removed: AtomicBool,
    /// Dynamic-feedback weight (§4.2), `NO_DYNAMIC` when not in use.
    dynamic: AtomicU32,
    /// Next-hop MAC as a u64 (0 = not yet resolved).
    mac: AtomicU64,
}

/// `RealServer::dynamic` when dynamic feedback is off.
const NO_DYNAMIC: u32 = u32::MAX;

impl RealServer {
    pub fn new(addr: u32, port: u16, weight: u32) -> Self {
        RealServer {
            addr,
            port,
            weight: AtomicU32::new(weight),
            up: AtomicBool::new(true),
            active: AtomicU32::new(0),
            inactive: AtomicU32::new(0),
            created: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            dynamic: AtomicU32::new(NO_DYNAMIC),
            mac: AtomicU64::new(0),
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Relaxed)
    }

    /// The dynamic-feedback weight, if feedback is on for this server.
    pub fn dynamic_weight(&self) -> Option<u32> {
        let d = self.dynamic.load(Ordering::Relaxed);
        (d != NO_DYNAMIC).then_some(d)
    }

    /// Sets (Some) or clears (None) the dynamic-feedback weight.
    pub fn set_dynamic_weight(&self, w: Option<u32>) {
        self.dynamic.store(
            w.unwrap_or(NO_DYNAMIC).min(NO_DYNAMIC - 1),
            Ordering::Relaxed,
        )
    }

    /// The next-hop MAC, once resolved.
    pub fn mac(&self) -> Option<[u8; 6]> {
        let v = self.mac.load(Ordering::Relaxed);
        (v != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    pub fn set_mac(&self, mac: [u8; 6]) {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&mac);
        self.mac.store(u64::from_be_bytes(b), Ordering::Relaxed);
    }

    /// The configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed)
    }

    /// The weight schedulers use: 0 when down, draining or removed; the
    /// dynamic-feedback weight when feedback is on (0 still drains).
    pub fn effective_weight(&self) -> u32 {
        if !self.is_up() || self.is_removed() {
            return 0;
        }
        match (self.weight(), self.dynamic_weight()) {
            (0, _) => 0,
            (w, None) => w,
            (_, Some(d)) => d,
        }
    }

    /// IPVS' load estimate: active × 256 + inactive.
    pub fn overhead(&self) -> u64 {
        (self.active.load(Ordering::Relaxed) as u64) * 256
            + self.inactive.load(Ordering::Relaxed) as u64
    }
}

/// One scheduling algorithm.
pub trait Scheduler: Send {
    fn name(&self) -> &'static str;
    /// Recomputes internal tables from the servers' current weights.
    fn rebuild(&mut self, servers: &[Arc<RealServer>]);
    /// Chooses a server for a new connection from `caddr:cport`; `None` when
    /// no server may take it.
    fn pick(&mut self, servers: &[Arc<RealServer>], caddr: u32, cport: u16) -> Option<usize>;
}

/// Scheduler names accepted in the configuration.
pub const NAMES: [&str; 6] = ["rr", "wrr", "lc", "wlc", "sh", "maglev"];

/// Creates (and builds) a scheduler by name.
pub fn by_name(name: &str, servers: &[Arc<RealServer>]) -> Option<Box<dyn Scheduler>> {
    let mut s: Box<dyn Scheduler> = match name {
        "rr" => Box::new(RoundRobin::default()),
        "wrr" => Box::new(WeightedRoundRobin::default()),
        "lc" => Box::new(LeastConnection),
        "wlc" => Box::new(WeightedLeastConnection),
        "sh" => Box::new(SourceHash::default()),
        "maglev" => Box::new(Maglev::default()),
        _ => return None,
    };
    s.rebuild(servers);
    Some(s)
}

/// A stable hash of a real server's identity (Maglev, sh): the same on
/// every director, so a backup picks the same servers.
pub(crate) fn server_hash(rs: &RealServer, salt: u64) -> u64 {
    crate::hash::mix64(((rs.addr as u64) << 16 | rs.port as u64) ^ salt)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn servers(weights: &[u32]) -> Vec<Arc<RealServer>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(RealServer::new(0x0ac9_020b + i as u32, 80, w)))
            .collect()
    }

    pub fn sequence(s: &mut dyn Scheduler, rs: &[Arc<RealServer>], n: usize) -> String {
        (0..n)
            .map(|i| match s.pick(rs, 0x0ac9_0100 + i as u32, 1000) {
                Some(k) => (b'A' + k as u8) as char,
                None => '-',
            })
            .collect()
    }
}
