//! Statistics (§5.2.8). Each worker owns one [`WorkerStats`] block and is its
//! only writer (relaxed atomics on its own cache lines, no contention); the
//! control thread sums the blocks into a [`Snapshot`] and renders it as
//! `name value` lines, per director, per service and per real server.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::packet::DropReason;

/// Director-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    RxFrames,
    RxBytes,
    TxFrames,
    TxBytes,
    TxErrors,
    /// Frames that are not ours (the kernel handles its own copy).
    Passed,
    ArpReplies,
    IcmpRelayed,
    FragNeededSent,
    /// VS/TUN packets without DF sent as two outer fragments.
    TunFragmented,
    ChecksumsCompleted,
    NatReplies,
    /// Frames the kernel dropped because the worker's socket or ring was
    /// full (PACKET_STATISTICS): the director fell behind.
    RxDropped,
    /// Frames received through an AF_XDP socket (`director.xdp`).
    XdpRxFrames,
}

impl Counter {
    pub const COUNT: usize = 14;
    pub const ALL: [Counter; Self::COUNT] = [
        Self::RxFrames,
        Self::RxBytes,
        Self::TxFrames,
        Self::TxBytes,
        Self::TxErrors,
        Self::Passed,
        Self::ArpReplies,
        Self::IcmpRelayed,
        Self::FragNeededSent,
        Self::TunFragmented,
        Self::ChecksumsCompleted,
        Self::NatReplies,
        Self::RxDropped,
        Self::XdpRxFrames,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::RxFrames => "rx_frames",
            Self::RxBytes => "rx_bytes",
            Self::TxFrames => "tx_frames",
            Self::TxBytes => "tx_bytes",
            Self::TxErrors => "tx_errors",
            Self::Passed => "passed",
            Self::ArpReplies => "arp_replies",
            Self::IcmpRelayed => "icmp_relayed",
            Self::FragNeededSent => "frag_needed_sent",
            Self::TunFragmented => "tun_fragmented",
            Self::ChecksumsCompleted => "checksums_completed",
            Self::NatReplies => "nat_replies",
            Self::RxDropped => "rx_dropped",
            Self::XdpRxFrames => "xdp_rx_frames",
        }
    }
}

/// Per real server (and, summed, per service) traffic.
#[derive(Debug, Default)]
pub struct RsCounters {
    pub conns: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

/// Statistics slots kept for services added at run time.
pub const SPARE_SERVICES: usize = 64;
/// Statistics slots per service kept for real servers added at run time.
pub const SPARE_SERVERS: usize = 32;

/// One worker's counters.
#[derive(Debug)]
pub struct WorkerStats {
    counters: [AtomicU64; Counter::COUNT],
    drops: [AtomicU64; DropReason::COUNT],
    /// Indexed `[service][real server]`.
    pub rs: Vec<Vec<RsCounters>>,
}

#[inline]
fn bump(a: &AtomicU64, n: u64) {
    // Single writer: a load and a store, no locked read-modify-write.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl WorkerStats {
    /// `shape[i]` is the number of real servers of service `i`. Room is
    /// kept for services and real servers added at run time (`l4adm`): at
    /// least [`SPARE_SERVICES`] services of [`SPARE_SERVERS`] servers each;
    /// traffic of a slot beyond that is forwarded but not counted here.
    pub fn new(shape: &[usize]) -> Self {
        let n = shape.len().max(SPARE_SERVICES);
        WorkerStats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            rs: (0..n)
                .map(|i| {
                    let k = shape.get(i).copied().unwrap_or(0).max(SPARE_SERVERS);
                    (0..k).map(|_| RsCounters::default()).collect()
                })
                .collect(),
        }
    }

    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        bump(&self.counters[c as usize], n);
    }

    #[inline]
    pub fn count_drop(&self, r: DropReason) {
        bump(&self.drops[r.index()], 1);
    }

    #[inline]
    pub fn rs_packet(&self, svc: usize, rs: usize, bytes: usize, new_conn: bool) {
        if let Some(c) = self.rs.get(svc).and_then(|v| v.get(rs)) {
            bump(&c.packets, 1);
            bump(&c.bytes, bytes as u64);
            if new_conn {
                bump(&c.conns, 1);
            }
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r.index()].load(Ordering::Relaxed)
    }
}

/// Summed counters of all workers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub counters: Vec<u64>,
    pub drops: Vec<u64>,
    /// `[service][rs] = (conns, packets, bytes)`
    pub rs: Vec<Vec<(u64, u64, u64)>>,
}

impl Snapshot {
    pub fn collect(workers: &[std::sync::Arc<WorkerStats>]) -> Snapshot {
        let mut s = Snapshot {
            counters: vec![0; Counter::COUNT],
            drops: vec![0; DropReason::COUNT],
            rs: Vec::new(),
        };
        for w in workers {
            for c in Counter::ALL {
                s.counters[c as usize] += w.get(c);
            }
            for r in DropReason::ALL {
                s.drops[r.index()] += w.dropped(r);
            }
            if s.rs.is_empty() {
                s.rs = w.rs.iter().map(|v| vec![(0, 0, 0); v.len()]).collect();
            }
            for (i, v) in w.rs.iter().enumerate() {
                for (j, c) in v.iter().enumerate() {
                    let e = &mut s.rs[i][j];
                    e.0 += c.conns.load(Ordering::Relaxed);
                    e.1 += c.packets.load(Ordering::Relaxed);
                    e.2 += c.bytes.load(Ordering::Relaxed);
                }
            }
        }
        s
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(c as usize).copied().unwrap_or(0)
    }

    /// `name value` lines; `labels[i]` names service i and `rs_labels[i][j]`
    /// its real servers.
    pub fn render(
        &self,
        labels: &[String],
        rs_labels: &[Vec<String>],
        extra: &[(&str, u64)],
    ) -> String {
        let mut o = String::new();
        for c in Counter::ALL {
            let _ = writeln!(o, "{} {}", c.name(), self.counter(c));
        }
        for r in DropReason::ALL {
            let _ = writeln!(o, "drop.{} {}", r.name(), self.drops[r.index()]);
        }
        for (k, v) in extra {
            let _ = writeln!(o, "{k} {v}");
        }
        // Only the slots in use (the rest is room for run-time additions).
        for (i, name) in labels.iter().enumerate() {
            let Some(v) = self.rs.get(i) else { break };
            let (mut c, mut p, mut b) = (0, 0, 0);
            let names = rs_labels.get(i).map(Vec::as_slice).unwrap_or(&[]);
            for (e, rn) in v.iter().zip(names) {
                if rn.is_empty() {
                    continue;
                }
                let _ = writeln!(o, "rs.{name}.{rn}.conns {}", e.0);
                let _ = writeln!(o, "rs.{name}.{rn}.packets {}", e.1);
                let _ = writeln!(o, "rs.{name}.{rn}.bytes {}", e.2);
                c += e.0;
                p += e.1;
                b += e.2;
            }
            let _ = writeln!(o, "service.{name}.conns {c}");
            let _ = writeln!(o, "service.{name}.packets {p}");
            let _ = writeln!(o, "service.{name}.bytes {b}");
        }
        o
    }
}

/// Rates (§5.2.8) between two snapshots `secs` apart: per service
/// connections, packets and bytes per second, and director-wide frames per
/// second, as `rate.*` lines.
pub fn render_rates(prev: &Snapshot, cur: &Snapshot, secs: f64, labels: &[String]) -> String {
    let mut o = String::new();
    if secs <= 0.0 {
        return o;
    }
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    for c in [Counter::RxFrames, Counter::TxFrames, Counter::TxBytes] {
        let _ = writeln!(
            o,
            "rate.{}_per_s {:.0}",
            c.name(),
            d(cur.counter(c), prev.counter(c))
        );
    }
    for (i, name) in labels.iter().enumerate().take(cur.rs.len()) {
        let sum = |s: &Snapshot, f: fn(&(u64, u64, u64)) -> u64| -> u64 {
            s.rs.get(i).map_or(0, |v| v.iter().map(f).sum())
        };
        let _ = writeln!(
            o,
            "rate.service.{name}.cps {:.0}",
            d(sum(cur, |e| e.0), sum(prev, |e| e.0))
        );
        let _ = writeln!(
            o,
            "rate.service.{name}.pps {:.0}",
            d(sum(cur, |e| e.1), sum(prev, |e| e.1))
        );
        let _ = writeln!(
            o,
            "rate.service.{name}.bps {:.0}",
            d(sum(cur, |e| e.2), sum(prev, |e| e.2)) * 8.0
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_two_snapshots() {
        let w = std::sync::Arc::new(WorkerStats::new(&[1]));
        let a = Snapshot::collect(std::slice::from_ref(&w));
        w.add(Counter::RxFrames, 100);
        w.rs_packet(0, 0, 1000, true);
        w.rs_packet(0, 0, 1000, false);
        let b = Snapshot::collect(std::slice::from_ref(&w));
        let r = render_rates(&a, &b, 2.0, &["svc".to_string()]);
        assert!(r.contains("rate.rx_frames_per_s 50"), "{r}");
        assert!(
            r.contains("rate.service.svc.cps 0") || r.contains("rate.service.svc.cps 1"),
            "{r}"
        );
        assert!(r.contains("rate.service.svc.pps 1"), "{r}");
        assert!(r.contains("rate.service.svc.bps 8000"), "{r}");
    }
}
