//! Counters of the CLS, readable from any thread, rendered in the
//! Prometheus text format. Updated once per batch (not per lookup) on the
//! hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub lookups: AtomicU64,
    pub batches: AtomicU64,
    pub answers_origin: AtomicU64,
    pub answers_none: AtomicU64,
    pub load_reports: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    pub targets: AtomicU64,
    pub targets_evicted: AtomicU64,
    pub servers_alive: AtomicU64,
    pub server_failures: AtomicU64,
    pub server_readmissions: AtomicU64,
}

/// A point-in-time copy, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub lookups: u64,
    pub batches: u64,
    pub malformed_frames: u64,
    pub connections_open: u64,
    pub load_reports: u64,
    pub servers_alive: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            lookups: self.lookups.load(Relaxed),
            batches: self.batches.load(Relaxed),
            malformed_frames: self.malformed_frames.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            load_reports: self.load_reports.load(Relaxed),
            servers_alive: self.servers_alive.load(Relaxed),
        }
    }

    /// Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 14] = [
            (
                "cls_lookups_total",
                "counter",
                "Lookups answered.",
                &self.lookups,
            ),
            (
                "cls_batches_total",
                "counter",
                "BatchLookup frames answered.",
                &self.batches,
            ),
            (
                "cls_answers_origin_total",
                "counter",
                "Lookups answered ORIGIN.",
                &self.answers_origin,
            ),
            (
                "cls_answers_none_total",
                "counter",
                "Lookups answered NONE.",
                &self.answers_none,
            ),
            (
                "cls_load_reports_total",
                "counter",
                "LoadReport frames received.",
                &self.load_reports,
            ),
            (
                "cls_malformed_frames_total",
                "counter",
                "Connections closed for a malformed or unexpected frame.",
                &self.malformed_frames,
            ),
            (
                "cls_connections_accepted_total",
                "counter",
                "Distributor connections accepted.",
                &self.connections_accepted,
            ),
            (
                "cls_connections_refused_total",
                "counter",
                "Connections closed at accept (max_connections).",
                &self.connections_refused,
            ),
            (
                "cls_connections_open",
                "gauge",
                "Distributor connections open.",
                &self.connections_open,
            ),
            (
                "cls_targets",
                "gauge",
                "Entries in the target table.",
                &self.targets,
            ),
            (
                "cls_targets_evicted_total",
                "counter",
                "Target entries evicted because the table was full.",
                &self.targets_evicted,
            ),
            (
                "cls_servers_alive",
                "gauge",
                "Servers currently schedulable (alive).",
                &self.servers_alive,
            ),
            (
                "cls_server_failures_total",
                "counter",
                "Servers declared failed by the monitor.",
                &self.server_failures,
            ),
            (
                "cls_server_readmissions_total",
                "counter",
                "Failed servers re-admitted by the monitor.",
                &self.server_readmissions,
            ),
        ];
        let mut s = String::with_capacity(2048);
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.lookups.fetch_add(3, Relaxed);
        let t = m.render_prometheus();
        assert!(t.contains("# TYPE cls_lookups_total counter\ncls_lookups_total 3\n"));
        assert!(t.contains("cls_malformed_frames_total 0\n"));
    }
}
