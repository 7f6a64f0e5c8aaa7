//! The resource monitor (thesis §7.3.1, §4.2): every interval it probes each
//! server (TCP connect or HTTP request, timed) and, if configured, queries
//! its load agent; then, in one synchronous step ([`apply`], testable
//! without sockets or clocks), it updates liveness (failure after
//! `fail_after` consecutive failures, re-admission after `readmit_after`
//! consecutive successes), computes the aggregate load
//! `AGG = Σ R_k * I_k` over the indicators that have data, feeds it into
//! the dynamic weights, and expires stale pending assignments and targets.
//!
//! Load agent protocol: connect, read until EOF (at most 512 bytes) one line
//! of `key=value` pairs separated by spaces: `load`, `disk`, `memory`,
//! `process`, each a number where 1.0 means "just loaded". Unknown keys are
//! ignored; a bad value makes the agent result unusable (probe still counts).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::config::{Config, MonitorConfig, Probe, RealServer};
use crate::metrics::Metrics;
use crate::sched::ServerTable;
use crate::server::Cls;

/// Indicators reported by a load agent (1.0 = just loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentLoad {
    pub load: Option<f64>,
    pub disk: Option<f64>,
    pub memory: Option<f64>,
    pub process: Option<f64>,
}

/// Result of probing one server in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// No probe configured: always alive, no response time.
    NotProbed,
    /// Answered in this time, with the agent's indicators if any.
    Up {
        response: Duration,
        agent: Option<AgentLoad>,
    },
    Down,
}

/// Consecutive probe results of one server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    pub fails: u32,
    pub oks: u32,
}

/// Parses a load-agent reply.
pub fn parse_agent(text: &str) -> Option<AgentLoad> {
    let mut a = AgentLoad::default();
    for kv in text.split_ascii_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let slot = match k {
            "load" => &mut a.load,
            "disk" => &mut a.disk,
            "memory" => &mut a.memory,
            "process" => &mut a.process,
            _ => continue,
        };
        let v: f64 = v.parse().ok()?;
        if !(v.is_finite() && v >= 0.0) {
            return None;
        }
        *slot = Some(v);
    }
    Some(a)
}

/// `Σ R_k I_k / Σ R_k` over the indicators present (input, load, disk,
/// memory, process, response); `None` if none is.
pub fn aggregate(coeffs: &[f64; 6], ind: [Option<f64>; 6]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for (r, i) in coeffs.iter().zip(ind) {
        if let Some(i) = i {
            num += r * i;
            den += r;
        }
    }
    (den > 0.0).then(|| num / den)
}

/// Applies one interval's outcomes. Returns the ids that failed and those
/// re-admitted (for logging).
pub fn apply(
    cfg: &MonitorConfig,
    servers: &mut ServerTable,
    health: &mut [Health],
    outcomes: &[Outcome],
    metrics: &Metrics,
) -> (Vec<u16>, Vec<u16>) {
    let (mut failed, mut readmitted) = (Vec::new(), Vec::new());
    for (i, (h, o)) in health.iter_mut().zip(outcomes).enumerate() {
        let id = i as u16;
        let alive = servers.get(id).is_some_and(|s| s.alive);
        match o {
            Outcome::Down => {
                h.fails = h.fails.saturating_add(1);
                h.oks = 0;
                if alive && h.fails >= cfg.fail_after {
                    servers.set_alive(id, false);
                    failed.push(id);
                }
            }
            Outcome::Up { .. } | Outcome::NotProbed => {
                h.oks = h.oks.saturating_add(1);
                h.fails = 0;
                if !alive && h.oks >= cfg.readmit_after {
                    servers.set_alive(id, true);
                    readmitted.push(id);
                }
            }
        }
    }
    // INPUT_i = in-flight units_i / mean over alive servers.
    let live: Vec<(i64, bool)> = servers.iter().map(|s| (s.units, s.alive)).collect();
    let (sum, n) = live
        .iter()
        .filter(|(_, a)| *a)
        .fold((0i64, 0usize), |(s, n), (u, _)| (s + u.max(&0), n + 1));
    let mean = if n == 0 { 0.0 } else { sum as f64 / n as f64 };
    let agg: Vec<Option<f64>> = outcomes
        .iter()
        .zip(&live)
        .map(|(o, (units, _))| {
            let input = Some(if mean > 0.0 {
                (*units).max(0) as f64 / mean
            } else {
                0.0
            });
            let (resp, a) = match o {
                Outcome::Up { response, agent } => (
                    Some(response.as_secs_f64() / cfg.response_loaded.as_secs_f64()),
                    agent.unwrap_or_default(),
                ),
                _ => (None, AgentLoad::default()),
            };
            aggregate(
                &cfg.coefficients,
                [input, a.load, a.disk, a.memory, a.process, resp],
            )
        })
        .collect();
    servers.apply_feedback(&agg, cfg.feedback_a, cfg.feedback_scale);
    servers.tick();
    metrics
        .servers_alive
        .store(servers.iter().filter(|s| s.alive).count() as u64, Relaxed);
    metrics
        .server_failures
        .fetch_add(failed.len() as u64, Relaxed);
    metrics
        .server_readmissions
        .fetch_add(readmitted.len() as u64, Relaxed);
    (failed, readmitted)
}

/// Probes one server (and its agent) within `timeout`.
pub async fn probe(s: &RealServer, timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let main = async {
        match s.probe {
            Probe::None => Ok(None),
            Probe::Tcp => TcpStream::connect(s.addr).await.map(|_| Some(t0.elapsed())),
            Probe::Http => http_probe(s.addr, &s.http_path)
                .await
                .map(|_| Some(t0.elapsed())),
        }
    };
    let agent = async {
        match s.agent {
            Some(a) => query_agent(a).await,
            None => None,
        }
    };
    let (r, agent) = match tokio::time::timeout(timeout, async { tokio::join!(main, agent) }).await
    {
        Ok(x) => x,
        Err(_) => return Outcome::Down,
    };
    match r {
        Ok(None) => Outcome::NotProbed,
        Ok(Some(response)) => Outcome::Up { response, agent },
        Err(_) => Outcome::Down,
    }
}

async fn http_probe(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: cls-monitor\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut b = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut b[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    // "HTTP/1.x NNN": anything below 500 means the service works.
    let ok = n >= 12 && b.starts_with(b"HTTP/1.") && matches!(b[9], b'1'..=b'4');
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::other("bad or 5xx HTTP status"))
    }
}

async fn query_agent(addr: SocketAddr) -> Option<AgentLoad> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut b = [0u8; 512];
    let mut n = 0;
    while n < b.len() {
        match s.read(&mut b[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    parse_agent(std::str::from_utf8(&b[..n]).ok()?)
}

/// The monitor task: runs on the server thread until the server stops.
/// When `monitor.enabled` is false it only does the interval housekeeping
/// (pending assignments, target expiry); servers then stay alive.
pub async fn run(cfg: Rc<Config>, state: Rc<RefCell<Cls>>) {
    let m = &cfg.monitor;
    let mut health = vec![Health::default(); cfg.servers.len()];
    let mut tick = tokio::time::interval(m.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !m.enabled {
            let st = &mut *state.borrow_mut();
            st.servers.tick();
            st.lbll.table.sweep(Instant::now());
            st.metrics
                .targets
                .store(st.lbll.table.len() as u64, Relaxed);
            continue;
        }
        let mut probes = tokio::task::JoinSet::new();
        for (i, s) in cfg.servers.iter().enumerate() {
            let s = s.clone();
            let timeout = m.probe_timeout;
            probes.spawn_local(async move { (i, probe(&s, timeout).await) });
        }
        let mut outcomes = vec![Outcome::Down; cfg.servers.len()];
        while let Some(r) = probes.join_next().await {
            if let Ok((i, o)) = r {
                outcomes[i] = o;
            }
        }
        let now = Instant::now();
        let st = &mut *state.borrow_mut();
        let (failed, readmitted) = apply(m, &mut st.servers, &mut health, &outcomes, &st.metrics);
        for id in failed {
            let s = &cfg.servers[id as usize];
            warn!(server = %s.name, addr = %s.addr, "server failed; removed from scheduling");
        }
        for id in readmitted {
            let s = &cfg.servers[id as usize];
            info!(server = %s.name, addr = %s.addr, "server answers again; re-admitted");
        }
        st.lbll.table.sweep(now);
        st.metrics
            .targets
            .store(st.lbll.table.len() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_COEFFICIENTS;

    fn cfg() -> MonitorConfig {
        MonitorConfig {
            enabled: true,
            interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(1),
            fail_after: 2,
            readmit_after: 2,
            response_loaded: Duration::from_millis(100),
            coefficients: DEFAULT_COEFFICIENTS,
            feedback_a: 5.0,
            feedback_scale: 10.0,
        }
    }

    fn up(ms: u64) -> Outcome {
        Outcome::Up {
            response: Duration::from_millis(ms),
            agent: None,
        }
    }

    #[test]
    fn failure_detection_and_readmission() {
        let c = cfg();
        let m = Metrics::default();
        let mut t = ServerTable::new(&[1, 1]);
        let mut h = vec![Health::default(); 2];
        let (f, _) = apply(&c, &mut t, &mut h, &[Outcome::Down, up(1)], &m);
        assert!(f.is_empty(), "one failure is not enough");
        let (f, _) = apply(&c, &mut t, &mut h, &[Outcome::Down, up(1)], &m);
        assert_eq!(f, [0]);
        assert!(!t.eligible(0));
        assert_eq!(m.servers_alive.load(Relaxed), 1);
        let (_, r) = apply(&c, &mut t, &mut h, &[up(1), up(1)], &m);
        assert!(r.is_empty());
        let (_, r) = apply(&c, &mut t, &mut h, &[up(1), up(1)], &m);
        assert_eq!(r, [0]);
        assert!(t.eligible(0));
        assert_eq!(m.server_failures.load(Relaxed), 1);
        assert_eq!(m.server_readmissions.load(Relaxed), 1);
    }

    #[test]
    fn slow_server_gets_more_load_per_connection() {
        let c = cfg();
        let m = Metrics::default();
        let mut t = ServerTable::new(&[1, 1]);
        let d = t.add_distributor();
        let mut h = vec![Health::default(); 2];
        for _ in 0..3 {
            t.report(d, 0, 10);
            t.report(d, 1, 10);
            apply(&c, &mut t, &mut h, &[up(300), up(5)], &m);
        }
        assert!(t.load(0) > t.load(1), "{} vs {}", t.load(0), t.load(1));
    }

    #[test]
    fn aggregate_renormalises_missing_indicators() {
        let r = DEFAULT_COEFFICIENTS;
        assert_eq!(aggregate(&r, [None; 6]), None);
        // Only input (0.1) and response (0.3): (0.1*1 + 0.3*2) / 0.4.
        let a = aggregate(&r, [Some(1.0), None, None, None, None, Some(2.0)]).unwrap();
        assert!((a - 1.75).abs() < 1e-9);
        let all = aggregate(&r, [Some(1.0); 6]).unwrap();
        assert!((all - 1.0).abs() < 1e-9);
    }

    #[test]
    fn agent_reply_parsing() {
        let a = parse_agent("load=0.5 memory=0.25 foo=bar\n").unwrap();
        assert_eq!(a.load, Some(0.5));
        assert_eq!(a.memory, Some(0.25));
        assert_eq!(a.disk, None);
        assert!(parse_agent("load=x").is_none());
        assert!(parse_agent("load=-1").is_none());
        assert_eq!(parse_agent(""), Some(AgentLoad::default()));
    }
}
