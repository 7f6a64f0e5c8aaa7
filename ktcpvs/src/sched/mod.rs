//! Schedulers (thesis §4.1, §6.3): one trait, one file per algorithm.
//!
//! Each worker owns its own scheduler instance (round-robin positions are
//! per worker, so workers never contend on them); what must be global — the
//! servers' in-flight counts and the lblc locality table — lives in
//! [`ServerSet`] and [`lblc::LocalityTable`], read without a global lock.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

pub mod chash;
pub mod hashing;
pub mod lblc;
pub mod lblcr;
pub mod lc;
pub mod maglev;
pub mod queue;
pub mod rr;
pub mod rules;
pub mod setslots;
pub mod sh;
pub mod slots;
pub mod wlc;
pub mod wrr;
pub mod zeroed;

/// One real server as every worker sees it.
///
/// The mutable state lives in a shared [`ServerState`] (reached through
/// `Deref`, so `s.conns`, `s.weight` read as fields): a runtime change
/// (tcpvsadm, reload) publishes a new server list whose surviving entries
/// are [`Server::share`]d copies, so in-flight counts, up/down state and
/// counters carry over and requests still running on an old list update
/// the same atomics.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// Stable identity across runtime changes (keys the keep-alive pools).
    pub id: u64,
    state: Arc<ServerState>,
}

/// The shared, mutable part of a [`Server`].
#[derive(Debug)]
pub struct ServerState {
    /// Scheduling weight; 0 drains the server (never chosen for new requests).
    pub weight: AtomicU32,
    pub low: AtomicU32,
    pub high: AtomicU32,
    /// In-flight work in connection units (a dynamic request counts 2).
    pub conns: AtomicU32,
    /// False while the server is considered down.
    pub up: AtomicBool,
    /// When (seconds on the process clock, see [`Server::mark_down`]) the
    /// server was last taken out after failing.
    pub down_since: std::sync::atomic::AtomicU64,
    /// Health checking and dynamic-feedback state (`crate::health`).
    pub health: crate::health::HealthState,
    /// Requests sent to this server (zeroed by `tcpvsadm -Z`).
    pub requests: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Server {
    type Target = ServerState;
    #[inline]
    fn deref(&self) -> &ServerState {
        &self.state
    }
}

impl Server {
    pub fn new(addr: SocketAddr, weight: u32, low: u32, high: u32) -> Server {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Server {
            addr,
            id: NEXT_ID.fetch_add(1, Relaxed),
            state: Arc::new(ServerState {
                weight: AtomicU32::new(weight),
                low: AtomicU32::new(low),
                high: AtomicU32::new(high),
                conns: AtomicU32::new(0),
                up: AtomicBool::new(true),
                down_since: Default::default(),
                health: crate::health::HealthState::new(weight),
                requests: Default::default(),
            }),
        }
    }

    /// The same server (same id, same shared state) for a new server list.
    pub fn share(&self) -> Server {
        Server {
            addr: self.addr,
            id: self.id,
            state: self.state.clone(),
        }
    }

    /// Passive failure detection: a connection to the server failed. It
    /// leaves every scheduler until [`Server::readmit`] lets one request
    /// probe it again. Returns true on the transition (log it once).
    pub fn mark_down(&self, now_s: u64) -> bool {
        self.down_since.store(now_s, Relaxed);
        self.up.swap(false, Relaxed)
    }

    /// Puts a server taken out by [`Server::mark_down`] back after `after_s`
    /// seconds (the next request is the probe). Returns true if it did.
    pub fn readmit(&self, now_s: u64, after_s: u64) -> bool {
        !self.up.load(Relaxed)
            && now_s.saturating_sub(self.down_since.load(Relaxed)) >= after_s
            && !self.up.swap(true, Relaxed)
    }
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }
    #[inline]
    pub fn conns(&self) -> u32 {
        self.conns.load(Relaxed)
    }
    /// Schedulable: up and weight > 0.
    #[inline]
    pub fn available(&self) -> bool {
        self.up.load(Relaxed) && self.weight() > 0
    }
}

/// The servers of one virtual service, shared by all workers.
pub type ServerSet = Arc<[Server]>;

/// Most servers one service may have (the width of [`Exclude`]).
pub const MAX_SERVERS: usize = 512;

/// A bit per server index: the servers a decision must avoid — those
/// already tried for this request (a retry) and those outside the server
/// set a content rule chose. A fixed 64-byte bitset: copied, never
/// allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exclude([u64; MAX_SERVERS / 64]);

impl Exclude {
    /// Nothing excluded.
    pub const NONE: Exclude = Exclude([0; MAX_SERVERS / 64]);

    /// The servers 0..64 given as a bit mask (tests, small services).
    pub const fn bits(low: u64) -> Exclude {
        let mut e = Exclude::NONE;
        e.0[0] = low;
        e
    }
    #[inline]
    pub fn has(self, i: usize) -> bool {
        i >= MAX_SERVERS || self.0[i / 64] & (1u64 << (i % 64)) != 0
    }
    #[inline]
    pub fn add(&mut self, i: usize) {
        if i < MAX_SERVERS {
            self.0[i / 64] |= 1u64 << (i % 64);
        }
    }
    #[inline]
    pub fn union(mut self, other: Exclude) -> Exclude {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        self
    }
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

/// What a scheduler may look at for one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request target (§6.3.5): the path without the query string.
    pub target: &'a [u8],
    /// Hash of `target`, computed once per request.
    pub target_hash: u64,
    /// The client's address (source hashing).
    pub peer: IpAddr,
}

/// A scheduling algorithm. `pick` returns an index into the service's
/// [`ServerSet`], never an excluded or unavailable server, or `None` when no
/// server can take the request.
pub trait Scheduler {
    fn pick(&mut self, servers: &[Server], req: &Request<'_>, exclude: Exclude) -> Option<usize>;

    /// True when the service is at its in-flight cap and a request should
    /// wait (see [`queue`]) instead of being scheduled now. Only lblc and
    /// lblcr have a cap (every allowed server at its high threshold).
    fn at_capacity(&self, _servers: &[Server], _exclude: Exclude) -> bool {
        false
    }
}

/// The configured algorithm of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Sh,
    /// Consistent hashing with bounded loads; the factor in percent.
    Chash {
        balance_factor: u32,
    },
    Maglev,
}

impl SchedulerKind {
    pub const NAMES: &'static str = "rr, wrr, lc, wlc, lblc, lblcr, sh, chash, maglev";

    pub fn parse(s: &str) -> Option<SchedulerKind> {
        Some(match s {
            "rr" => SchedulerKind::Rr,
            "wrr" => SchedulerKind::Wrr,
            "lc" => SchedulerKind::Lc,
            "wlc" => SchedulerKind::Wlc,
            "lblc" => SchedulerKind::Lblc,
            "lblcr" => SchedulerKind::Lblcr,
            "sh" => SchedulerKind::Sh,
            "chash" => SchedulerKind::Chash {
                balance_factor: chash::DEFAULT_BALANCE_FACTOR,
            },
            "maglev" => SchedulerKind::Maglev,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Lblc => "lblc",
            SchedulerKind::Lblcr => "lblcr",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Chash { .. } => "chash",
            SchedulerKind::Maglev => "maglev",
        }
    }

    /// Whether the service's in-flight work is capped at Σhigh (requests
    /// beyond it wait in the per-worker queue).
    pub fn capped(self) -> bool {
        matches!(self, SchedulerKind::Lblc | SchedulerKind::Lblcr)
    }

    /// A per-worker instance; `table` is the service's shared locality table
    /// (used by lblc and lblcr only).
    pub fn build(self, table: &Arc<lblc::LocalityTable>) -> Box<dyn Scheduler> {
        match self {
            SchedulerKind::Rr => Box::new(rr::RoundRobin::default()),
            SchedulerKind::Wrr => Box::new(wrr::WeightedRoundRobin::default()),
            SchedulerKind::Lc => Box::new(lc::LeastConnection),
            SchedulerKind::Wlc => Box::new(wlc::WeightedLeastConnection),
            SchedulerKind::Lblc => Box::new(lblc::Lblc::new(table.clone())),
            SchedulerKind::Lblcr => Box::new(lblcr::Lblcr::new(table.clone())),
            SchedulerKind::Sh => Box::new(sh::SourceHash::default()),
            SchedulerKind::Chash { balance_factor } => {
                Box::new(chash::ConsistentHash::new(balance_factor))
            }
            SchedulerKind::Maglev => Box::new(maglev::Maglev::default()),
        }
    }
}

/// FNV-1a, 64 bit: the target hash used for locality tables. Short targets
/// dominate, for which FNV beats SipHash by several times.
#[inline]
pub fn target_hash(target: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in target {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
pub(crate) fn test_servers(weights: &[u32]) -> Vec<Server> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Server::new(
                SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                w,
                30,
                60,
            )
        })
        .collect()
}

#[cfg(test)]
pub(crate) fn req(target: &[u8]) -> Request<'_> {
    Request {
        target,
        target_hash: target_hash(target),
        peer: IpAddr::from([127, 0, 0, 1]),
    }
}
