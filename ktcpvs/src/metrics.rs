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
        pub struct WorkerStats {
            $(pub $name: AtomicU64,)*
            /// Responses sent to clients by status class (index 1..=5: 1xx..5xx).
            pub status_class: [AtomicU64; 6],
            /// Errors by kind ([`ErrorKind`]).
            pub errors: [AtomicU64; ErrorKind::ALL.len()],
        }

        impl WorkerStats {
            fn render_into(all: &[Arc<WorkerStats>], out: &mut String) {
                out.push_str("# HELP ktcpvs_responses_by_class_total Responses sent to clients (relayed or the switch's own error replies) by status class.\n# TYPE ktcpvs_responses_by_class_total counter\n");
                for c in 1..=5 {
                    let v: u64 = all.iter().map(|s| s.status_class[c].load(Relaxed)).sum();
                    let _ = writeln!(out, "ktcpvs_responses_by_class_total{{class=\"{c}xx\"}} {v}");
                }
                out.push_str("# HELP ktcpvs_errors_total Errors by kind (see README: Metrics).\n# TYPE ktcpvs_errors_total counter\n");
                for (k, kind) in ErrorKind::ALL.iter().enumerate() {
                    let v: u64 = all.iter().map(|s| s.errors[k].load(Relaxed)).sum();
                    let _ = writeln!(out, "ktcpvs_errors_total{{kind=\"{}\"}} {v}", kind.label());
                }
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
    bad_requests_total: "Requests refused with 400/417/501 (malformed, ambiguous or unsupported).",
    header_too_large_total: "Requests refused with 431 (header block too large) or 414 (URI too long).",
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
    tunnels_total: "Connections switched to another protocol (101 to an Upgrade, e.g. WebSocket) and relayed as a tunnel.",
    tunnels_active: "Switched-protocol tunnels open now.",
    cls_placed_total: "Requests sent where the CLS placed them.",
    cls_local_total: "Requests the worker placed itself (CLS down, slow, NONE or unusable answer).",
    cls_origin_total: "Cacheable requests the CLS sent to the origin (ORIGIN).",
    cache_bypass_total: "Non-cacheable requests (cache mode) sent to the origin.",
    origin_requests_total: "Requests forwarded to an origin server (cache mode).",
    queued_total: "Requests that waited for the lblc/lblcr in-flight cap (every server at its high threshold).",
    queue_rejected_total: "Requests answered 503 after the in-flight cap's queue was full or its wait timed out.",
    reassigned_total: "Requests given to another server after a failed attempt (connect failure, or a fresh connection failing before the response).",
    client_bytes_received_total: "Request bytes (heads and bodies) read from clients and handled.",
    client_bytes_sent_total: "Response bytes (heads and bodies) sent to clients.",
    server_bytes_sent_total: "Request bytes (heads and bodies) sent to real servers.",
    server_bytes_received_total: "Response bytes (heads and bodies) read from real servers and relayed.",
}

/// The `kind` label of `ktcpvs_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A connection to a real server failed or timed out (each attempt).
    Connect,
    /// A real server did not answer in time (504).
    Timeout,
    /// A real server's response head was malformed (502).
    BadResponse,
    /// A real server closed or reset before answering (502).
    ServerReset,
    /// A real server broke off mid-response (client connection closed).
    ServerAbort,
    /// The client left or broke its body mid-exchange.
    ClientAbort,
    /// A malformed or unsupported request (400, 417, 501).
    Parse,
    /// A request head over the limits (431, or 414 for the request line).
    TooLarge,
    /// A request head not complete in time (408).
    HeaderTimeout,
    /// No server available, or the in-flight cap's queue full (503).
    NoServer,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::BadResponse,
        ErrorKind::ServerReset,
        ErrorKind::ServerAbort,
        ErrorKind::ClientAbort,
        ErrorKind::Parse,
        ErrorKind::TooLarge,
        ErrorKind::HeaderTimeout,
        ErrorKind::NoServer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::ServerReset => "server_reset",
            ErrorKind::ServerAbort => "server_abort",
            ErrorKind::ClientAbort => "client_abort",
            ErrorKind::Parse => "parse",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::HeaderTimeout => "header_timeout",
            ErrorKind::NoServer => "no_server",
        }
    }
}

impl WorkerStats {
    /// Counts one error of kind `k`.
    #[inline]
    pub fn error(&self, k: ErrorKind) {
        self.errors[k as usize].fetch_add(1, Relaxed);
    }

    /// Counts one response with status `status` sent to a client.
    #[inline]
    pub fn status(&self, status: u16) {
        if let Some(c) = self.status_class.get(usize::from(status / 100)) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// A label value escaped per the text exposition format (`\`, `"`, newline).
pub struct Esc<'a>(pub &'a str);

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// What the metrics endpoint reads.
pub struct Registry {
    pub workers: Vec<Arc<WorkerStats>>,
    /// The services as they are now (they change at runtime).
    pub runtime: Arc<Runtime>,
    /// The access log, if `global.access_log` is set.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
}

impl Registry {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        WorkerStats::render_into(&self.workers, &mut out);
        let snap = self.runtime.snapshot();
        let services: Vec<_> = snap
            .services
            .iter()
            .map(|s| (Esc(&s.cfg.name), &s.servers, &s.table))
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
        crate::health::render_metrics(&mut out, services.iter().map(|(n, s, _)| (n.0, *s)));
        out.push_str("# HELP ktcpvs_server_requests_total Requests sent to a real server (zeroed by tcpvsadm -Z).\n# TYPE ktcpvs_server_requests_total counter\n");
        for (name, servers, _) in &services {
            for s in servers.iter() {
                let _ = writeln!(
                    out,
                    "ktcpvs_server_requests_total{{service=\"{name}\",server=\"{}\"}} {}",
                    s.addr,
                    s.requests.load(Relaxed)
                );
            }
        }
        out.push_str("# HELP ktcpvs_service_connections_total Client connections accepted per service (zeroed by tcpvsadm -Z).\n# TYPE ktcpvs_service_connections_total counter\n");
        for (svc, (name, _, _)) in snap.services.iter().zip(&services) {
            let _ = writeln!(
                out,
                "ktcpvs_service_connections_total{{service=\"{name}\"}} {}",
                svc.counters.connections.load(Relaxed)
            );
        }
        out.push_str("# HELP ktcpvs_service_requests_total Requests sent to the service's real servers (sum over its servers).\n# TYPE ktcpvs_service_requests_total counter\n");
        for (name, servers, _) in &services {
            let v: u64 = servers.iter().map(|s| s.requests.load(Relaxed)).sum();
            let _ = writeln!(
                out,
                "ktcpvs_service_requests_total{{service=\"{name}\"}} {v}"
            );
        }
        if let Some(al) = &self.access_log {
            let _ = writeln!(out, "# HELP ktcpvs_access_log_dropped_total Access log lines dropped because the writer fell behind.\n# TYPE ktcpvs_access_log_dropped_total counter\nktcpvs_access_log_dropped_total {}", al.dropped.load(Relaxed));
        }
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
