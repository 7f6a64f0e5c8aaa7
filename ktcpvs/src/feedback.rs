//! Dynamic-feedback weights (thesis §4.2): every `interval_ms` the probe
//! thread combines each server's load indicators into an aggregate load
//!
//! `AGG_i = R1·INPUT_i + R2·LOAD_i + R3·DISK_i + R4·MEMORY_i + R5·PROCESS_i + R6·RESPONSE_i`
//!
//! (ΣR = 1, web default {0.1, 0.3, 0.1, 0.1, 0.1, 0.3}; every indicator
//! normalised so that 1 means "just fully loaded") and moves the server's
//! effective weight by `A·∛(0.95 − AGG_i)` (A = 5), clamped to
//! `[0, SCALE·DEFAULT_WEIGHT_i]` (SCALE = 10), applied only when it changes
//! by more than `threshold`. A server whose configured weight is 0 is never
//! adjusted (administrative drain); a down server is skipped.
//!
//! Indicators:
//! - INPUT — requests scheduled on the server during the interval divided
//!   by the mean over the servers (counted by the switch itself);
//! - RESPONSE — mean health-probe duration over the interval divided by
//!   `response_full_ms`;
//! - LOAD, DISK, MEMORY, PROCESS — from the server's optional load agent
//!   (see [`parse_agent`] for its format).
//!
//! An indicator that is not available (no agent, no traffic) is left out
//! and the remaining coefficients are rescaled to sum to 1.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::{field_err, ConfigError};
use crate::health::HealthConfig;
use crate::sched::ServerSet;

/// The thesis' coefficients for web server clusters (§4.2.3).
pub const WEB_COEFFICIENTS: [f64; 6] = [0.1, 0.3, 0.1, 0.1, 0.1, 0.3];
/// The utilisation the weight update aims at (§4.2.4).
pub const TARGET: f64 = 0.95;

/// `[service.feedback]` as read from TOML.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeedback {
    pub enabled: Option<bool>,
    pub interval_ms: Option<u64>,
    pub coefficients: Option<Vec<f64>>,
    pub a: Option<f64>,
    pub scale: Option<u32>,
    pub threshold: Option<u32>,
    pub response_full_ms: Option<u64>,
    pub agent_path: Option<String>,
}

/// The weight-update parameters (§4.2.4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub a: f64,
    pub scale: u32,
    pub threshold: u32,
}

/// The checked `[service.feedback]`.
#[derive(Debug, Clone)]
pub struct FeedbackConfig {
    pub enabled: bool,
    pub interval: Duration,
    /// R1..R6: INPUT, LOAD (cpu), DISK, MEMORY, PROCESS, RESPONSE.
    pub r: [f64; 6],
    pub params: Params,
    pub response_full: Duration,
    pub agent_path: String,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            enabled: false,
            interval: Duration::from_secs(5),
            r: WEB_COEFFICIENTS,
            params: Params {
                a: 5.0,
                scale: 10,
                threshold: 1,
            },
            response_full: Duration::from_millis(200),
            agent_path: "/load".into(),
        }
    }
}

impl RawFeedback {
    /// Checks `[service.feedback]` (`field` is its path); feedback needs the
    /// active probes of `health`.
    pub fn check(self, field: &str, health: &HealthConfig) -> Result<FeedbackConfig, ConfigError> {
        let f = |name: &str| format!("{field}.{name}");
        let d = FeedbackConfig::default();
        let enabled = self.enabled.unwrap_or(false);
        if enabled && !health.enabled {
            return Err(field_err(
                f("enabled"),
                "needs active health checks ([service.health] enabled = true): probe response times drive it",
            ));
        }
        let interval = match self.interval_ms {
            None => d.interval,
            Some(v) if !(100..=3_600_000).contains(&v) => {
                return Err(field_err(
                    f("interval_ms"),
                    "must be between 100 and 3600000",
                ))
            }
            Some(v) => Duration::from_millis(v),
        };
        let r = match self.coefficients {
            None => d.r,
            Some(v) => {
                let r: [f64; 6] = v.as_slice().try_into().map_err(|_| {
                    field_err(
                        f("coefficients"),
                        "must list 6 numbers: input, load, disk, memory, process, response",
                    )
                })?;
                if r.iter().any(|x| !x.is_finite() || *x < 0.0)
                    || (r.iter().sum::<f64>() - 1.0).abs() > 1e-6
                {
                    return Err(field_err(
                        f("coefficients"),
                        "must be non-negative and sum to 1",
                    ));
                }
                r
            }
        };
        let a = self.a.unwrap_or(d.params.a);
        if !a.is_finite() || a <= 0.0 || a > 1000.0 {
            return Err(field_err(f("a"), "must be greater than 0 and at most 1000"));
        }
        let scale = self.scale.unwrap_or(d.params.scale);
        if !(1..=1000).contains(&scale) {
            return Err(field_err(f("scale"), "must be between 1 and 1000"));
        }
        let threshold = self.threshold.unwrap_or(d.params.threshold);
        if threshold > 65_535 {
            return Err(field_err(f("threshold"), "must be at most 65535"));
        }
        let response_full = match self.response_full_ms {
            None => d.response_full,
            Some(0) => return Err(field_err(f("response_full_ms"), "must be greater than 0")),
            Some(v) => Duration::from_millis(v),
        };
        let agent_path = self.agent_path.unwrap_or(d.agent_path);
        if !agent_path.starts_with('/') || agent_path.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(field_err(
                f("agent_path"),
                "must start with '/' and contain no spaces or control characters",
            ));
        }
        Ok(FeedbackConfig {
            enabled,
            interval,
            r,
            params: Params {
                a,
                scale,
                threshold,
            },
            response_full,
            agent_path,
        })
    }
}

/// Indicators in coefficient order: INPUT, LOAD, DISK, MEMORY, PROCESS,
/// RESPONSE; `None` = not available this round.
pub type Indicators = [Option<f64>; 6];

/// The aggregate load (§4.2.3) over the available indicators, their
/// coefficients rescaled to sum to 1. `None` when nothing is available.
/// With every indicator present this is exactly the thesis' formula.
pub fn aggregate(r: &[f64; 6], ind: &Indicators) -> Option<f64> {
    let (mut sum, mut weight) = (0.0, 0.0);
    for (k, v) in ind.iter().enumerate() {
        if let Some(v) = v {
            sum += r[k] * v;
            weight += r[k];
        }
    }
    (weight > 0.0).then(|| sum / weight)
}

/// The weight update (§4.2.4): `w + A·∛(0.95 − agg)`, clamped to
/// `[0, scale·default]` and rounded; `Some(new)` only when it differs from
/// `current` by more than the threshold. A default weight of 0 is never
/// adjusted.
pub fn next_weight(current: u32, default: u32, agg: f64, p: &Params) -> Option<u32> {
    if default == 0 || !agg.is_finite() {
        return None;
    }
    let d = TARGET - agg;
    let max = p.scale as f64 * default as f64;
    let w = (current as f64 + p.a * d.cbrt()).clamp(0.0, max).round() as u32;
    (w.abs_diff(current) > p.threshold).then_some(w)
}

/// A load agent's answer; each value is normalised by the agent so that
/// 1.0 = fully loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct AgentLoad {
    pub cpu: Option<f64>,
    pub disk: Option<f64>,
    pub mem: Option<f64>,
    pub proc: Option<f64>,
}

/// Parses a load agent's body: `key=value` pairs separated by white space
/// or commas, e.g. `cpu=0.35 mem=0.50 disk=0.10 proc=0.80`. Known keys:
/// `cpu` (LOAD), `disk`, `mem` (MEMORY), `proc` (PROCESS); each value a
/// non-negative decimal, 1.0 = fully loaded. Unknown keys are ignored
/// (room for more indicators); a pair without `=` or a bad value for a
/// known key rejects the whole answer.
pub fn parse_agent(body: &[u8]) -> Result<AgentLoad, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    let mut l = AgentLoad::default();
    for tok in text
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
    {
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| format!("{tok:?} is not key=value"))?;
        let slot = match k {
            "cpu" => &mut l.cpu,
            "disk" => &mut l.disk,
            "mem" => &mut l.mem,
            "proc" => &mut l.proc,
            _ => continue,
        };
        let v: f64 = v
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{k}: {v:?} is not a non-negative number"))?;
        *slot = Some(v);
    }
    Ok(l)
}

/// GETs `path` from a load agent and parses the body (status 200 required;
/// Content-Length or close-delimited, at most 4 KiB).
async fn fetch_agent(addr: SocketAddr, path: &str, buf: &mut Vec<u8>) -> Result<AgentLoad, String> {
    let mut c = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ktcpvs-feedback\r\nConnection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let code = crate::health::read_status(&mut c, buf).await?;
    if code != 200 {
        return Err(format!("status {code}"));
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let Ok(httparse::Status::Complete(hl)) = r.parse(buf) else {
        return Err("bad response head".into());
    };
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let mut tmp = [0u8; 1024];
    loop {
        let body = buf.len() - hl;
        if len.is_some_and(|n| body >= n) {
            break;
        }
        if body > 4096 {
            return Err("body over 4 KiB".into());
        }
        let n = c.read(&mut tmp).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            if len.is_some() {
                return Err("closed before the end of the body".into());
            }
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let end = len.map_or(buf.len(), |n| (hl + n).min(buf.len()));
    parse_agent(&buf[hl..end])
}

/// The feedback loop of one service (runs on the probe thread).
pub async fn run(svc: Arc<str>, cfg: FeedbackConfig, servers: ServerSet, agent_timeout: Duration) {
    let mut prev: Vec<u64> = servers
        .iter()
        .map(|s| s.health.picks.load(Relaxed))
        .collect();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut buf = Vec::with_capacity(1024);
    let full_us = cfg.response_full.as_micros() as f64;
    loop {
        tick.tick().await;
        let eligible =
            |s: &crate::sched::Server| s.up.load(Relaxed) && s.health.base_weight.load(Relaxed) > 0;
        let mut new = Vec::with_capacity(servers.len());
        let (mut sum, mut count) = (0u64, 0u64);
        for (s, p) in servers.iter().zip(prev.iter_mut()) {
            let now = s.health.picks.load(Relaxed);
            let n = now.wrapping_sub(*p);
            *p = now;
            new.push(n);
            if eligible(s) {
                sum += n;
                count += 1;
            }
        }
        let mean = if count > 0 {
            sum as f64 / count as f64
        } else {
            0.0
        };
        for (i, s) in servers.iter().enumerate() {
            let h = &s.health;
            let probe_sum = h.probe_sum_us.swap(0, Relaxed);
            let probes = h.probe_count.swap(0, Relaxed);
            if !eligible(s) {
                continue;
            }
            let mut ind: Indicators = [None; 6];
            if mean > 0.0 {
                ind[0] = Some(new[i] as f64 / mean);
            }
            if probes > 0 {
                ind[5] = Some(probe_sum as f64 / probes as f64 / full_us);
            }
            let agent = *h.agent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = agent {
                match tokio::time::timeout(agent_timeout, fetch_agent(a, &cfg.agent_path, &mut buf))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
                {
                    Ok(l) => {
                        ind[1] = l.cpu;
                        ind[2] = l.disk;
                        ind[3] = l.mem;
                        ind[4] = l.proc;
                    }
                    Err(e) => {
                        debug!(service = %svc, server = %s.addr, agent = %a, error = %e, "load agent failed")
                    }
                }
            }
            let Some(agg) = aggregate(&cfg.r, &ind) else {
                continue;
            };
            h.agg_milli
                .store(((agg * 1000.0).round() as u64).max(1), Relaxed);
            let cur = s.weight();
            let base = h.base_weight.load(Relaxed);
            if let Some(w) = next_weight(cur, base, agg, &cfg.params) {
                s.weight.store(w, Relaxed);
                debug!(service = %svc, server = %s.addr, agg, from = cur, to = w, "feedback weight");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        a: 5.0,
        scale: 10,
        threshold: 1,
    };

    #[test]
    fn aggregate_is_the_thesis_formula_with_all_indicators() {
        let ind = [
            Some(1.0),
            Some(0.5),
            Some(0.2),
            Some(0.4),
            Some(0.6),
            Some(0.8),
        ];
        // 0.1·1 + 0.3·0.5 + 0.1·0.2 + 0.1·0.4 + 0.1·0.6 + 0.3·0.8 = 0.61
        let agg = aggregate(&WEB_COEFFICIENTS, &ind).unwrap();
        assert!((agg - 0.61).abs() < 1e-12, "{agg}");
    }

    #[test]
    fn missing_indicators_rescale_the_rest() {
        // Only INPUT (0.1) and RESPONSE (0.3): (0.1·2 + 0.3·0.4) / 0.4 = 0.8
        let ind = [Some(2.0), None, None, None, None, Some(0.4)];
        let agg = aggregate(&WEB_COEFFICIENTS, &ind).unwrap();
        assert!((agg - 0.8).abs() < 1e-12, "{agg}");
        assert_eq!(aggregate(&WEB_COEFFICIENTS, &[None; 6]), None);
    }

    #[test]
    fn weight_update_follows_the_cube_root_rule() {
        // 0.95 − 0.95 = 0: unchanged.
        assert_eq!(next_weight(10, 5, 0.95, &P), None);
        // agg 0.87: 5·∛0.08 = 2.0 → 10 + 2 = 12.
        assert_eq!(next_weight(10, 5, 0.87, &P), Some(12));
        // agg 1.075: 5·∛(−0.125) = −2.5 → 7.5 → rounds to 8.
        assert_eq!(next_weight(10, 5, 1.075, &P), Some(8));
        // agg 0.949: 5·∛0.001 = 0.5 → 10.5 → 11, a change of 1: damped.
        assert_eq!(next_weight(10, 5, 0.949, &P), None);
        let p0 = Params { threshold: 0, ..P };
        assert_eq!(next_weight(10, 5, 0.949, &p0), Some(11));
    }

    #[test]
    fn weight_update_is_clamped_and_leaves_drained_servers_alone() {
        // Idle server: grows, but never beyond SCALE·DEFAULT = 10·2.
        assert_eq!(next_weight(19, 2, 0.0, &P), None, "20 is a change of 1");
        assert_eq!(next_weight(17, 2, 0.0, &P), Some(20));
        // Hugely overloaded: 5·∛(0.95 − 125.95) = −25 → clamped at 0.
        assert_eq!(next_weight(8, 2, 125.95, &P), Some(0));
        // A server configured with weight 0 is drained by the operator.
        assert_eq!(next_weight(0, 0, 0.0, &P), None);
        assert_eq!(next_weight(3, 2, f64::NAN, &P), None);
    }

    #[test]
    fn agent_format() {
        let l = parse_agent(b"cpu=0.35 mem=0.50,disk=0.1\nproc=2 net=7\n").unwrap();
        assert_eq!(
            l,
            AgentLoad {
                cpu: Some(0.35),
                disk: Some(0.1),
                mem: Some(0.5),
                proc: Some(2.0)
            }
        );
        assert_eq!(parse_agent(b"").unwrap(), AgentLoad::default());
        assert!(parse_agent(b"cpu=-1").is_err());
        assert!(parse_agent(b"cpu=nan").is_err());
        assert!(parse_agent(b"cpu").is_err());
        assert!(parse_agent(b"cpu=0.5 mem=x").is_err());
        assert!(parse_agent(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn config_errors_name_the_field() {
        let on = HealthConfig {
            enabled: true,
            ..HealthConfig::default()
        };
        let off = HealthConfig::default();
        let check = |text: &str, h: &HealthConfig| {
            let raw: RawFeedback = toml::from_str(text).unwrap();
            raw.check("service[0].feedback", h)
                .map_err(|e| e.to_string())
        };
        assert!(check("enabled = true", &on).unwrap().enabled);
        for (text, h, field) in [
            ("enabled = true", &off, "service[0].feedback.enabled:"),
            (
                "coefficients = [0.5, 0.5]",
                &on,
                "service[0].feedback.coefficients:",
            ),
            (
                "coefficients = [0.5, 0.5, 0.5, 0, 0, 0]",
                &on,
                "service[0].feedback.coefficients:",
            ),
            ("a = 0.0", &on, "service[0].feedback.a:"),
            ("scale = 0", &on, "service[0].feedback.scale:"),
            ("interval_ms = 5", &on, "service[0].feedback.interval_ms:"),
            (
                "agent_path = \"load\"",
                &on,
                "service[0].feedback.agent_path:",
            ),
        ] {
            let e = check(text, h).unwrap_err();
            assert!(e.starts_with(field), "{text}: {e}");
        }
    }
}
