//! Counters, one set per worker (written only by that worker, so the
//! relaxed atomics never bounce between cores), summed when scraped, and
//! served in the Prometheus text format on `global.metrics`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Runtime;

macro_rules! counters {
    ($($name:ident : $help:literal),* $(,)?) => {
        /// Per-worker counters.
        #[derive(Debug, Default)]
        pub struct WorkerStats { $(pub $name: AtomicU64,)* }

        impl WorkerStats {
            fn render_into(all: &[Arc<WorkerStats>], out: &mut String) {
                $(
                    let v: u64 = all.iter().map(|s| s.$name.load(Relaxed)).sum();
                    let _ = writeln!(out, "# HELP ktcpvs_{} {}", stringify!($name), $help);
                    let kind = if stringify!($name).ends_with("_active") || stringify!($name).ends_with("_idle") { "gauge" } else { "counter" };
                    let _ = writeln!(out, "# TYPE ktcpvs_{} {}", stringify!($name), kind);
                    let _ = writeln!(out, "ktcpvs_{} {}", stringify!($name), v);
                )*
            }
        }
    };
}

counters! {
    connections_accepted_total: "Client connections accepted.",
    connections_active: "Client connections open now.",
    requests_total: "Requests forwarded to a real server.",
    responses_total: "Responses relayed completely to clients.",
    bad_requests_total: "Requests refused with 400/501 (malformed or ambiguous).",
    header_too_large_total: "Requests refused with 431.",
    no_server_total: "Requests answered 503: no server available.",
    bad_gateway_total: "Requests answered 502 or 504 (server failed before responding).",
    server_connect_errors_total: "Failed connections to real servers.",
    server_errors_total: "Real servers failing mid-response (client connection closed).",
    client_errors_total: "Clients failing or leaving mid-exchange.",
    retries_total: "Requests re-sent after a reused connection failed.",
    pool_reused_total: "Requests sent on a pooled keep-alive connection.",
    pool_new_total: "New connections opened to real servers.",
    pool_stale_total: "Pooled connections found closed before reuse.",
    pool_idle: "Idle pooled real-server connections.",
    spliced_bytes_total: "Body bytes moved with splice(2).",
    copied_bytes_total: "Body bytes moved through user-space buffers.",
    cls_placed_total: "Requests sent where the CLS placed them.",
    cls_local_total: "Requests the worker placed itself (CLS down, slow, NONE or unusable answer).",
    cls_origin_total: "Cacheable requests the CLS sent to the origin (ORIGIN).",
    cache_bypass_total: "Non-cacheable requests (cache mode) sent to the origin.",
    origin_requests_total: "Requests forwarded to an origin server (cache mode).",
    queued_total: "Requests that waited for the lblc/lblcr in-flight cap (every server at its high threshold).",
    queue_rejected_total: "Requests answered 503 after the in-flight cap's queue was full or its wait timed out.",
}

/// What the metrics endpoint reads.
pub struct Registry {
    pub workers: Vec<Arc<WorkerStats>>,
    /// The services as they are now (they change at runtime).
    pub runtime: Arc<Runtime>,
}

impl Registry {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        WorkerStats::render_into(&self.workers, &mut out);
        let snap = self.runtime.snapshot();
        let services: Vec<_> = snap
            .services
            .iter()
            .map(|s| (&s.cfg.name, &s.servers, &s.table))
            .collect();
        let _ = writeln!(out, "# HELP ktcpvs_config_generation Runtime configuration changes applied (tcpvsadm, reload).\n# TYPE ktcpvs_config_generation gauge\nktcpvs_config_generation {}", snap.generation);
        out.push_str("# HELP ktcpvs_server_inflight In-flight work per real server, in connection units.\n# TYPE ktcpvs_server_inflight gauge\n");
        for (name, servers, _) in &services {
            for s in servers.iter() {
                let _ = writeln!(
                    out,
                    "ktcpvs_server_inflight{{service=\"{name}\",server=\"{}\"}} {}",
                    s.addr,
                    s.conns()
                );
            }
        }
        out.push_str("# HELP ktcpvs_server_up Whether a real server is schedulable.\n# TYPE ktcpvs_server_up gauge\n");
        for (name, servers, _) in &services {
            for s in servers.iter() {
                let _ = writeln!(
                    out,
                    "ktcpvs_server_up{{service=\"{name}\",server=\"{}\"}} {}",
                    s.addr,
                    u8::from(s.available())
                );
            }
        }
        crate::health::render_metrics(&mut out, services.iter().map(|(n, s, _)| (n.as_str(), *s)));
        out.push_str("# HELP ktcpvs_locality_entries Entries of the locality table (lblc targets, lblcr server sets).\n# TYPE ktcpvs_locality_entries gauge\n");
        for (name, _, t) in &services {
            let _ = writeln!(
                out,
                "ktcpvs_locality_entries{{service=\"{name}\"}} {}",
                t.len()
            );
        }
        out.push_str("# HELP ktcpvs_locality_reassigned_total Targets moved to another server (lblc) or sets grown (lblcr) because of imbalance.\n# TYPE ktcpvs_locality_reassigned_total counter\n");
        for (name, _, t) in &services {
            let _ = writeln!(
                out,
                "ktcpvs_locality_reassigned_total{{service=\"{name}\"}} {}",
                t.reassigned.load(Relaxed)
            );
        }
        out
    }
}

/// Serves `GET /metrics` on a plain thread of its own (never on an event
/// loop). Stops when `stop` is set.
pub fn serve(
    addr: SocketAddr,
    reg: Arc<Registry>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    std::thread::Builder::new().name("ktcpvs-metrics".into()).spawn(move || {
        while !stop.load(Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    let mut req = [0u8; 1024];
                    let n = s.read(&mut req).unwrap_or(0);
                    let ok = req[..n].starts_with(b"GET /metrics");
                    let body = if ok { reg.render() } else { "not found; try /metrics\n".to_string() };
                    let status = if ok { "200 OK" } else { "404 Not Found" };
                    let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}
