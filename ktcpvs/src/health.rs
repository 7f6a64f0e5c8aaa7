//! Health checking (thesis §6.2.3): active probes of every real server,
//! passive failure detection from the request path, and the per-server
//! health state they share.
//!
//! - **Active probes** (`[service.health]`): every `interval_ms` a TCP
//!   connect — or an HTTP request whose status must fall in `expect_status`
//!   — under `timeout_ms`; `fall` consecutive failures take a server out of
//!   every scheduler, `rise` consecutive successes put it back. All probes
//!   of all services run on one dedicated thread (`ktcpvs-health`) with a
//!   small tokio current-thread runtime: never on a worker's event loop.
//! - **Passive detection** (always on, from `proxy.rs`): a failed connect
//!   takes a server out at once; a pooled connection failing before any
//!   response byte counts one failure towards `fall`. With active probes on,
//!   only the probes (`rise` successes) bring such a server back; with them
//!   off, worker 0 readmits it after [`crate::worker::READMIT_AFTER_S`] and
//!   the next request probes it.
//!
//! The state lives in [`HealthState`] inside each [`Server`], so it follows
//! the server wherever the server set is shared or swapped.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::config::{field_err, ConfigError, ServerConfig};
use crate::feedback;
use crate::sched::{Server, ServerSet};

/// `last_probe_us` before the first successful probe.
pub const NO_PROBE: u64 = u64::MAX;

/// Health and feedback state of one real server (all relaxed atomics: the
/// probe thread and the workers each write only what they own, and a stale
/// read costs at most one interval).
#[derive(Debug)]
pub struct HealthState {
    /// The configured weight (the thesis' DEFAULT_WEIGHT): dynamic feedback
    /// moves `Server::weight` within `[0, scale × base_weight]` and never
    /// touches a server whose base weight is 0 (administrative drain).
    pub base_weight: AtomicU32,
    /// Consecutive failures (probes, or passive) while up.
    pub fails: AtomicU32,
    /// Consecutive successful probes while down.
    pub oks: AtomicU32,
    /// Up/down transitions so far.
    pub transitions: AtomicU64,
    /// Duration of the last successful probe, µs ([`NO_PROBE`] before any).
    pub last_probe_us: AtomicU64,
    /// Sum and count of probe durations since feedback last read them.
    pub probe_sum_us: AtomicU64,
    pub probe_count: AtomicU64,
    /// Requests scheduled on the server (feedback's INPUT indicator).
    pub picks: AtomicU64,
    /// Aggregate load × 1000 of the last feedback round (metrics).
    pub agg_milli: AtomicU64,
    /// Load agent of the server (`[[service.server]] agent`), if any.
    pub agent: Mutex<Option<SocketAddr>>,
}

impl HealthState {
    pub fn new(weight: u32) -> HealthState {
        HealthState {
            base_weight: AtomicU32::new(weight),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            transitions: AtomicU64::new(0),
            last_probe_us: AtomicU64::new(NO_PROBE),
            probe_sum_us: AtomicU64::new(0),
            probe_count: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            agg_milli: AtomicU64::new(0),
            agent: Mutex::new(None),
        }
    }
}

impl Server {
    /// Sets the configured weight (administration): the effective weight
    /// and the base that dynamic feedback works from. Weight 0 drains.
    pub fn set_weight(&self, w: u32) {
        self.health.base_weight.store(w, Relaxed);
        self.weight.store(w, Relaxed);
    }
}

/// A [`Server`] from its configuration, with its load agent set.
pub fn new_server(c: &ServerConfig) -> Server {
    let s = Server::new(c.address, c.weight, c.low, c.high);
    *s.health.agent.lock().unwrap_or_else(|e| e.into_inner()) = c.agent;
    s
}

// ------------------------------------------------------------ transitions

/// Takes `s` out of every scheduler; logs and counts the transition once.
pub fn set_down(svc: &str, s: &Server, reason: fmt::Arguments<'_>) -> bool {
    if s.mark_down(crate::worker::clock_s()) {
        s.health.transitions.fetch_add(1, Relaxed);
        info!(service = svc, server = %s.addr, %reason, "real server down: out of rotation");
        true
    } else {
        false
    }
}

/// Puts `s` back in rotation; logs and counts the transition once.
pub fn set_up(svc: &str, s: &Server, reason: fmt::Arguments<'_>) -> bool {
    if !s.up.swap(true, Relaxed) {
        s.health.transitions.fetch_add(1, Relaxed);
        s.health.fails.store(0, Relaxed);
        info!(service = svc, server = %s.addr, %reason, "real server up: back in rotation");
        true
    } else {
        false
    }
}

/// Passive detection: a connect to `s` failed (refused, unreachable, timed
/// out). The server leaves rotation at once.
pub fn passive_connect_failure(svc: &str, s: &Server, err: &std::io::Error) {
    s.health.oks.store(0, Relaxed);
    set_down(svc, s, format_args!("connect failed: {err}"));
}

/// Passive detection: a new connection to `s` failed (reset or closed)
/// before any response byte. Counts towards `fall` (a completed exchange,
/// [`passive_ok`], starts the count again).
pub fn passive_reset(svc: &str, s: &Server, fall: u32) {
    s.health.oks.store(0, Relaxed);
    let n = s.health.fails.fetch_add(1, Relaxed) + 1;
    if n >= fall && s.up.load(Relaxed) {
        set_down(
            svc,
            s,
            format_args!(
                "{n} consecutive failures, last: pooled connection reset before a response"
            ),
        );
    }
}

/// Passive detection: an exchange with `s` completed, so earlier resets
/// were not consecutive (a server that closes some connections right after
/// answering — one whose handler did not read the request body — is not
/// failing). One relaxed load per response; a store only after a failure.
#[inline]
pub fn passive_ok(s: &Server) {
    if s.health.fails.load(Relaxed) != 0 {
        s.health.fails.store(0, Relaxed);
    }
}

/// Passive mode only (no active probes), once a second on worker 0: forget
/// old failures of servers that are up, and readmit servers down for
/// `after_s` seconds so that the next request probes them.
pub fn passive_tick(svc: &str, s: &Server, now_s: u64, after_s: u64) {
    if s.up.load(Relaxed) {
        if s.health.fails.load(Relaxed) != 0 {
            s.health.fails.store(0, Relaxed);
        }
    } else if s.readmit(now_s, after_s) {
        s.health.transitions.fetch_add(1, Relaxed);
        s.health.fails.store(0, Relaxed);
        info!(service = svc, server = %s.addr, reason = "readmitted after passive failure; the next request probes it", "real server up: back in rotation");
    }
}

// ------------------------------------------------------------ configuration

/// `[service.health]` as read from TOML.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub enabled: Option<bool>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<RawStatus>,
}

/// `expect_status = 200` or `expect_status = "200-399"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStatus {
    Code(u16),
    Text(String),
}

/// The checked `[service.health]`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Active probes on; off = passive detection only.
    pub enabled: bool,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// A request whose response status is within `status` (inclusive).
    Http {
        method: String,
        path: String,
        /// Host header; `None` = the server's address.
        host: Option<String>,
        status: (u16, u16),
    },
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: false,
            probe: Probe::Tcp,
            interval: Duration::from_millis(2000),
            timeout: Duration::from_millis(1000),
            rise: 2,
            fall: 3,
        }
    }
}

fn parse_status(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x21..0x7f).contains(&b))
}

impl RawHealth {
    /// Checks `[service.health]`; `field` is its path (`service[0].health`).
    pub fn check(self, field: &str) -> Result<HealthConfig, ConfigError> {
        let f = |name: &str| format!("{field}.{name}");
        let d = HealthConfig::default();
        let ms = |name: &str, v: Option<u64>, def: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(def),
                Some(0) => Err(field_err(f(name), "must be greater than 0")),
                Some(v) if v > 3_600_000 => Err(field_err(f(name), "must be at most 3600000")),
                Some(v) => Ok(Duration::from_millis(v)),
            }
        };
        let count = |name: &str, v: Option<u32>, def: u32| -> Result<u32, ConfigError> {
            match v.unwrap_or(def) {
                0 => Err(field_err(f(name), "must be at least 1")),
                v if v > 1000 => Err(field_err(f(name), "must be at most 1000")),
                v => Ok(v),
            }
        };
        let http_only = self.method.is_some()
            || self.path.is_some()
            || self.host.is_some()
            || self.expect_status.is_some();
        let probe = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => {
                if http_only {
                    return Err(field_err(
                        f("type"),
                        "method, path, host and expect_status need type = \"http\"",
                    ));
                }
                Probe::Tcp
            }
            "http" => {
                let method = self.method.unwrap_or_else(|| "GET".into());
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(field_err(f("method"), "must be an upper-case HTTP method"));
                }
                let path = self.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') || !header_safe(&path) {
                    return Err(field_err(
                        f("path"),
                        "must start with '/' and contain no spaces or control characters",
                    ));
                }
                if let Some(h) = &self.host {
                    if !header_safe(h) {
                        return Err(field_err(f("host"), "must be a non-empty host name"));
                    }
                }
                let status = match &self.expect_status {
                    None => (200, 399),
                    Some(RawStatus::Code(c)) => parse_status(&c.to_string()).ok_or_else(|| {
                        field_err(f("expect_status"), "must be a status between 100 and 599")
                    })?,
                    Some(RawStatus::Text(t)) => parse_status(t).ok_or_else(|| {
                        field_err(
                            f("expect_status"),
                            "must be a status or a range like \"200-399\" (100..599)",
                        )
                    })?,
                };
                Probe::Http {
                    method,
                    path,
                    host: self.host,
                    status,
                }
            }
            other => {
                return Err(field_err(
                    f("type"),
                    format!("unknown probe type {other:?} (known: tcp, http)"),
                ))
            }
        };
        Ok(HealthConfig {
            enabled: self.enabled.unwrap_or(false),
            probe,
            interval: ms("interval_ms", self.interval_ms, d.interval)?,
            timeout: ms("timeout_ms", self.timeout_ms, d.timeout)?,
            rise: count("rise", self.rise, d.rise)?,
            fall: count("fall", self.fall, d.fall)?,
        })
    }
}

// ------------------------------------------------------------ probe thread

/// Starts the probe thread. It probes the servers of every service with
/// active checks on, as published by the runtime: on every change
/// (tcpvsadm, reload) its probe and feedback tasks are rebuilt from the new
/// snapshot — the health state lives in each shared [`Server`], so nothing
/// is lost. It stops when `shutdown` turns true (or its sender goes away).
pub fn start(
    rt: Arc<crate::runtime::Runtime>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ktcpvs-health".into())
        .spawn(move || {
            tokio_rt.block_on(async move {
                let mut changes = rt.subscribe();
                let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
                loop {
                    changes.borrow_and_update();
                    for t in tasks.drain(..) {
                        t.abort();
                    }
                    for sh in &rt.snapshot().services {
                        let c = &sh.cfg;
                        if !c.health.enabled {
                            continue;
                        }
                        let name: Arc<str> = c.name.as_str().into();
                        let cfg = Arc::new(c.health.clone());
                        for i in 0..sh.servers.len() {
                            tasks.push(tokio::spawn(probe_loop(
                                name.clone(),
                                cfg.clone(),
                                sh.servers.clone(),
                                i,
                            )));
                        }
                        if c.feedback.enabled {
                            tasks.push(tokio::spawn(feedback::run(
                                name.clone(),
                                c.feedback.clone(),
                                sh.servers.clone(),
                                cfg.timeout,
                            )));
                        }
                    }
                    tokio::select! {
                        r = changes.changed() => if r.is_err() { break },
                        _ = shutdown.wait_for(|&v| v) => break,
                    }
                }
            });
        })
}

/// The request bytes of an HTTP probe of `addr`.
fn probe_request(p: &Probe, addr: SocketAddr) -> Option<Vec<u8>> {
    let Probe::Http {
        method, path, host, ..
    } = p
    else {
        return None;
    };
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    Some(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ktcpvs-health\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    )
}

async fn probe_loop(svc: Arc<str>, cfg: Arc<HealthConfig>, servers: ServerSet, i: usize) {
    let s = &servers[i];
    let req = probe_request(&cfg.probe, s.addr);
    let status = match cfg.probe {
        Probe::Http { status, .. } => status,
        Probe::Tcp => (0, 0),
    };
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(4096);
    loop {
        tick.tick().await;
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            cfg.timeout,
            probe_once(s.addr, req.as_deref(), status, &mut buf),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", cfg.timeout.as_millis())));
        match r {
            Ok(()) => on_success(&svc, s, &cfg, t0.elapsed()),
            Err(why) => on_failure(&svc, s, &cfg, &why),
        }
    }
}

/// One probe: connect, and for HTTP send the request and check the status.
async fn probe_once(
    addr: SocketAddr,
    req: Option<&[u8]>,
    status: (u16, u16),
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut c = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(req) = req else {
        return Ok(());
    };
    let _ = c.set_nodelay(true);
    c.write_all(req).await.map_err(|e| format!("send: {e}"))?;
    let code = read_status(&mut c, buf).await?;
    if (status.0..=status.1).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}, expected {}-{}", status.0, status.1))
    }
}

/// Reads a response head into `buf` (at most 16 KiB) and returns its
/// status; the head's length is `buf`'s prefix up to the blank line.
pub(crate) async fn read_status(c: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    buf.clear();
    let mut tmp = [0u8; 2048];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(_)) => return Ok(r.code.unwrap_or(0)),
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("bad response head: {e}")),
        }
        if buf.len() > 16 * 1024 {
            return Err("response head over 16 KiB".into());
        }
        let n = c.read(&mut tmp).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn on_success(svc: &str, s: &Server, cfg: &HealthConfig, took: Duration) {
    let h = &s.health;
    let us = took.as_micros().min(u64::MAX as u128 - 1) as u64;
    h.last_probe_us.store(us, Relaxed);
    h.probe_sum_us.fetch_add(us, Relaxed);
    h.probe_count.fetch_add(1, Relaxed);
    if s.up.load(Relaxed) {
        if h.fails.load(Relaxed) != 0 {
            h.fails.store(0, Relaxed);
        }
        return;
    }
    let n = h.oks.fetch_add(1, Relaxed) + 1;
    if n >= cfg.rise {
        h.oks.store(0, Relaxed);
        set_up(svc, s, format_args!("{n} consecutive probes passed"));
    }
}

fn on_failure(svc: &str, s: &Server, cfg: &HealthConfig, why: &str) {
    let h = &s.health;
    h.oks.store(0, Relaxed);
    if !s.up.load(Relaxed) {
        debug!(service = svc, server = %s.addr, why, "probe of a down server failed");
        return;
    }
    let n = h.fails.fetch_add(1, Relaxed) + 1;
    debug!(service = svc, server = %s.addr, why, failures = n, "probe failed");
    if n >= cfg.fall {
        set_down(
            svc,
            s,
            format_args!("{n} consecutive probes failed, last: {why}"),
        );
    }
}

// ------------------------------------------------------------ metrics

/// Appends the per-server health metrics (Prometheus text).
pub fn render_metrics<'a>(
    out: &mut String,
    services: impl Iterator<Item = (&'a str, &'a ServerSet)> + Clone,
) {
    let block = |out: &mut String,
                 name: &str,
                 kind: &str,
                 help: &str,
                 v: &dyn Fn(&Server) -> Option<String>| {
        let _ = writeln!(
            out,
            "# HELP ktcpvs_{name} {help}\n# TYPE ktcpvs_{name} {kind}"
        );
        for (svc, servers) in services.clone() {
            for s in servers.iter() {
                if let Some(v) = v(s) {
                    let _ = writeln!(
                        out,
                        "ktcpvs_{name}{{service=\"{}\",server=\"{}\"}} {v}",
                        crate::metrics::Esc(svc),
                        s.addr
                    );
                }
            }
        }
    };
    block(
        out,
        "server_healthy",
        "gauge",
        "Health state of a real server: 1 up, 0 down (probes or passive detection).",
        &|s| Some(u8::from(s.up.load(Relaxed)).to_string()),
    );
    block(
        out,
        "server_health_transitions_total",
        "counter",
        "Up/down transitions of a real server.",
        &|s| Some(s.health.transitions.load(Relaxed).to_string()),
    );
    block(
        out,
        "server_probe_latency_seconds",
        "gauge",
        "Duration of the last successful health probe.",
        &|s| {
            let us = s.health.last_probe_us.load(Relaxed);
            (us != NO_PROBE).then(|| format!("{:.6}", us as f64 / 1e6))
        },
    );
    block(
        out,
        "server_weight",
        "gauge",
        "Effective scheduling weight (dynamic feedback moves it; 0 drains).",
        &|s| Some(s.weight().to_string()),
    );
    block(
        out,
        "server_aggregate_load",
        "gauge",
        "Aggregate load of the last dynamic-feedback round (thesis 4.2; 0.95 is the target).",
        &|s| {
            let m = s.health.agg_milli.load(Relaxed);
            (m != 0).then(|| format!("{:.3}", m as f64 / 1000.0))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<HealthConfig, String> {
        let raw: RawHealth = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.check("service[0].health").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_passive_tcp() {
        let c = check("").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.probe, Probe::Tcp);
        assert_eq!((c.rise, c.fall), (2, 3));
    }

    #[test]
    fn http_probe_and_status_forms() {
        let c = check("enabled = true\ntype = \"http\"\npath = \"/health\"\nexpect_status = 204\n")
            .unwrap();
        assert_eq!(
            c.probe,
            Probe::Http {
                method: "GET".into(),
                path: "/health".into(),
                host: None,
                status: (204, 204)
            }
        );
        let c = check("type = \"http\"\nexpect_status = \"200-299\"\n").unwrap();
        assert!(matches!(
            c.probe,
            Probe::Http {
                status: (200, 299),
                ..
            }
        ));
        let req = probe_request(&c.probe, "127.0.0.1:81".parse().unwrap()).unwrap();
        assert!(req.starts_with(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:81\r\n"));
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("rise = 0", "service[0].health.rise:"),
            ("fall = 0", "service[0].health.fall:"),
            ("interval_ms = 0", "service[0].health.interval_ms:"),
            ("type = \"icmp\"", "service[0].health.type:"),
            ("path = \"/x\"", "service[0].health.type:"),
            ("type = \"http\"\npath = \"x\"", "service[0].health.path:"),
            (
                "type = \"http\"\nmethod = \"get it\"",
                "service[0].health.method:",
            ),
            (
                "type = \"http\"\nexpect_status = \"300-200\"",
                "service[0].health.expect_status:",
            ),
            (
                "type = \"http\"\nexpect_status = 700",
                "service[0].health.expect_status:",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.starts_with(field), "{text}: {e}");
        }
    }

    fn server() -> Server {
        Server::new("127.0.0.1:9".parse().unwrap(), 1, 30, 60)
    }

    #[test]
    fn fall_and_rise_counts() {
        let cfg = HealthConfig {
            enabled: true,
            rise: 2,
            fall: 3,
            ..HealthConfig::default()
        };
        let s = server();
        on_failure("t", &s, &cfg, "x");
        on_failure("t", &s, &cfg, "x");
        assert!(s.up.load(Relaxed), "down before fall failures");
        on_success("t", &s, &cfg, Duration::from_micros(5));
        on_failure("t", &s, &cfg, "x");
        on_failure("t", &s, &cfg, "x");
        assert!(s.up.load(Relaxed), "a success resets the count");
        on_failure("t", &s, &cfg, "x");
        assert!(!s.up.load(Relaxed));
        on_success("t", &s, &cfg, Duration::from_micros(5));
        assert!(!s.up.load(Relaxed), "up before rise successes");
        on_failure("t", &s, &cfg, "x");
        on_success("t", &s, &cfg, Duration::from_micros(5));
        assert!(!s.up.load(Relaxed), "a failure resets the rise count");
        on_success("t", &s, &cfg, Duration::from_micros(7));
        assert!(s.up.load(Relaxed));
        assert_eq!(s.health.transitions.load(Relaxed), 2);
        assert_eq!(s.health.last_probe_us.load(Relaxed), 7);
    }

    #[test]
    fn every_scheduler_skips_drained_and_down_servers() {
        use crate::sched::{lblc::LocalityTable, req, test_servers, Exclude, SchedulerKind};
        let table = Arc::new(LocalityTable::new(1024));
        for kind in ["rr", "wrr", "lc", "wlc", "lblc"] {
            let kind = SchedulerKind::parse(kind).unwrap();
            let servers = test_servers(&[2, 3, 1]);
            servers[1].set_weight(0); // drained
            servers[2].mark_down(0); // down
            let mut sched = kind.build(&table);
            for i in 0..50 {
                let t = format!("/t{i}");
                let got = sched.pick(&servers, &req(t.as_bytes()), Exclude::NONE);
                assert_eq!(got, Some(0), "{}", kind.name());
            }
            servers[0].set_weight(0);
            let got = sched.pick(&servers, &req(b"/x"), Exclude::NONE);
            assert_eq!(got, None, "{}: nothing schedulable", kind.name());
        }
    }

    #[test]
    fn with_probes_on_a_passively_downed_server_needs_rise_successes() {
        let cfg = HealthConfig {
            enabled: true,
            rise: 3,
            ..HealthConfig::default()
        };
        let s = server();
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        passive_connect_failure("t", &s, &e);
        on_success("t", &s, &cfg, Duration::from_micros(5));
        on_success("t", &s, &cfg, Duration::from_micros(5));
        assert!(!s.up.load(Relaxed));
        on_success("t", &s, &cfg, Duration::from_micros(5));
        assert!(s.up.load(Relaxed));
    }

    #[test]
    fn passive_resets_count_towards_fall_and_connect_failure_is_immediate() {
        let s = server();
        passive_reset("t", &s, 2);
        assert!(s.up.load(Relaxed));
        passive_reset("t", &s, 2);
        assert!(!s.up.load(Relaxed));
        passive_tick("t", &s, 100, 2);
        assert!(s.up.load(Relaxed), "passive mode readmits after the delay");
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        passive_connect_failure("t", &s, &e);
        assert!(!s.up.load(Relaxed));
        assert_eq!(s.health.transitions.load(Relaxed), 3);
    }
}
