//! Configuration in two layers: [`RawConfig`] is exactly the TOML file
//! (serde, unknown keys refused); [`Config::from_raw`] applies defaults and
//! checks every field and cross-field rule, naming the field on error.
//! See `configs/cls-server.toml` for the commented reference.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::sched::Mode;

/// A configuration error that names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The callers name the file; `err` is not a `source`, so an error
    /// chain does not print the cause twice.
    #[error("cannot read: {err}")]
    Io { path: String, err: std::io::Error },
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("field `{field}`: {msg}")]
    Field { field: String, msg: String },
}

fn field(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        msg: msg.into(),
    }
}

// ------------------------------------------------------------- raw layer

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub scheduler: RawScheduler,
    #[serde(default)]
    pub monitor: RawMonitor,
    #[serde(default)]
    pub servers: Vec<RawRealServer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduler {
    pub mode: Option<String>,
    pub threshold: Option<f64>,
    pub shrink_after_ms: Option<u64>,
    pub max_targets: Option<usize>,
    pub target_expiry_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    pub enabled: Option<bool>,
    pub interval_ms: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
    pub fail_after: Option<u32>,
    pub readmit_after: Option<u32>,
    pub response_loaded_ms: Option<u64>,
    pub coefficients: Option<Vec<f64>>,
    pub feedback_a: Option<f64>,
    pub feedback_scale: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRealServer {
    pub name: Option<String>,
    pub addr: Option<String>,
    pub weight: Option<u32>,
    pub probe: Option<String>,
    pub http_path: Option<String>,
    pub agent: Option<String>,
}

// ---------------------------------------------------------- checked layer

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub max_connections: usize,
    pub mode: Mode,
    pub threshold: f64,
    pub shrink_after: Duration,
    pub max_targets: usize,
    pub target_expiry: Duration,
    pub monitor: MonitorConfig,
    /// Server id = index in this list.
    pub servers: Vec<RealServer>,
}

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub probe_timeout: Duration,
    pub fail_after: u32,
    pub readmit_after: u32,
    pub response_loaded: Duration,
    /// R1..R6: input, load, disk, memory, process, response.
    pub coefficients: [f64; 6],
    pub feedback_a: f64,
    pub feedback_scale: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    None,
    Tcp,
    Http,
}

#[derive(Debug, Clone)]
pub struct RealServer {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub probe: Probe,
    pub http_path: String,
    pub agent: Option<SocketAddr>,
}

/// Thesis default coefficients for a web service (SPEC §2).
pub const DEFAULT_COEFFICIENTS: [f64; 6] = [0.1, 0.3, 0.1, 0.1, 0.1, 0.3];
/// Most servers (ids are u16 and 0xFFFF is reserved).
pub const MAX_SERVERS: usize = 4096;

fn addr(f: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| field(f, format!("`{s}` is not an IP:port socket address")))
}

fn ms(f: &str, v: Option<u64>, default: u64, min: u64) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if v < min {
        return Err(field(f, format!("must be at least {min} ms")));
    }
    Ok(Duration::from_millis(v))
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
            path: path.display().to_string(),
            err,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::from_raw(toml::from_str(text)?)
    }

    /// Defaults and checks.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = addr(
            "server.listen",
            raw.server.listen.as_deref().unwrap_or("127.0.0.1:7070"),
        )?;
        let metrics_listen = raw
            .server
            .metrics_listen
            .as_deref()
            .map(|s| addr("server.metrics_listen", s))
            .transpose()?;
        let max_connections = raw.server.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(field("server.max_connections", "must be at least 1"));
        }

        let s = raw.scheduler;
        let mode = match s.mode.as_deref().unwrap_or("independent") {
            "independent" => Mode::Independent,
            "colocated" => Mode::CoLocated,
            "cache" => Mode::Cache,
            other => {
                return Err(field(
                    "scheduler.mode",
                    format!("`{other}`: expected independent, colocated or cache"),
                ))
            }
        };
        let threshold = s.threshold.unwrap_or(60.0);
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(field("scheduler.threshold", "must be a number > 0"));
        }
        let shrink_after = ms("scheduler.shrink_after_ms", s.shrink_after_ms, 60_000, 0)?;
        let max_targets = s.max_targets.unwrap_or(1_000_000);
        if !(1..=100_000_000).contains(&max_targets) {
            return Err(field("scheduler.max_targets", "must be in 1..=100000000"));
        }
        let target_expiry = ms(
            "scheduler.target_expiry_ms",
            s.target_expiry_ms,
            3_600_000,
            1,
        )?;

        let m = raw.monitor;
        let interval = ms("monitor.interval_ms", m.interval_ms, 2000, 10)?;
        let probe_timeout = ms("monitor.probe_timeout_ms", m.probe_timeout_ms, 1000, 1)?;
        if probe_timeout >= interval {
            return Err(field(
                "monitor.probe_timeout_ms",
                "must be shorter than monitor.interval_ms",
            ));
        }
        let fail_after = m.fail_after.unwrap_or(2);
        if fail_after == 0 {
            return Err(field("monitor.fail_after", "must be at least 1"));
        }
        let readmit_after = m.readmit_after.unwrap_or(1);
        if readmit_after == 0 {
            return Err(field("monitor.readmit_after", "must be at least 1"));
        }
        let response_loaded = ms("monitor.response_loaded_ms", m.response_loaded_ms, 100, 1)?;
        let coefficients = match m.coefficients {
            None => DEFAULT_COEFFICIENTS,
            Some(v) => {
                let c: [f64; 6] = v.as_slice().try_into().map_err(|_| {
                    field(
                        "monitor.coefficients",
                        "expected 6 numbers: input, load, disk, memory, process, response",
                    )
                })?;
                if c.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                    return Err(field("monitor.coefficients", "must be finite and >= 0"));
                }
                if (c.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
                    return Err(field("monitor.coefficients", "must sum to 1"));
                }
                c
            }
        };
        let feedback_a = m.feedback_a.unwrap_or(5.0);
        if !(feedback_a.is_finite() && feedback_a >= 0.0) {
            return Err(field("monitor.feedback_a", "must be a number >= 0"));
        }
        let feedback_scale = m.feedback_scale.unwrap_or(10.0);
        if !(feedback_scale.is_finite() && feedback_scale >= 1.0) {
            return Err(field("monitor.feedback_scale", "must be a number >= 1"));
        }

        if raw.servers.is_empty() {
            return Err(field("servers", "at least one [[servers]] entry is needed"));
        }
        if raw.servers.len() > MAX_SERVERS {
            return Err(field("servers", format!("at most {MAX_SERVERS} servers")));
        }
        let mut servers = Vec::with_capacity(raw.servers.len());
        for (i, r) in raw.servers.into_iter().enumerate() {
            let f = |k: &str| format!("servers[{i}].{k}");
            let a = addr(
                &f("addr"),
                r.addr
                    .as_deref()
                    .ok_or_else(|| field(f("addr"), "missing"))?,
            )?;
            if servers.iter().any(|s: &RealServer| s.addr == a) {
                return Err(field(f("addr"), format!("{a} is listed twice")));
            }
            let probe = match r.probe.as_deref().unwrap_or("tcp") {
                "none" => Probe::None,
                "tcp" => Probe::Tcp,
                "http" => Probe::Http,
                other => {
                    return Err(field(
                        f("probe"),
                        format!("`{other}`: expected none, tcp or http"),
                    ))
                }
            };
            let http_path = r.http_path.unwrap_or_else(|| "/".into());
            if !http_path.starts_with('/') || http_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(field(
                    f("http_path"),
                    "must start with / and contain no spaces or control characters",
                ));
            }
            let agent = r
                .agent
                .as_deref()
                .map(|s| addr(&f("agent"), s))
                .transpose()?;
            servers.push(RealServer {
                name: r.name.unwrap_or_else(|| a.to_string()),
                addr: a,
                weight: r.weight.unwrap_or(1),
                probe,
                http_path,
                agent,
            });
        }
        if servers.iter().all(|s| s.weight == 0) {
            return Err(field("servers", "every server has weight 0"));
        }

        Ok(Config {
            listen,
            metrics_listen,
            max_connections,
            mode,
            threshold,
            shrink_after,
            max_targets,
            target_expiry,
            monitor: MonitorConfig {
                enabled: m.enabled.unwrap_or(true),
                interval,
                probe_timeout,
                fail_after,
                readmit_after,
                response_loaded,
                coefficients,
                feedback_a,
                feedback_scale,
            },
            servers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[[servers]]\naddr = \"127.0.0.1:8080\"\n";

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.mode, Mode::Independent);
        assert_eq!(c.threshold, 60.0);
        assert_eq!(c.monitor.interval, Duration::from_secs(2));
        assert_eq!(c.monitor.coefficients, DEFAULT_COEFFICIENTS);
        assert_eq!(c.servers[0].probe, Probe::Tcp);
        assert_eq!(c.servers[0].weight, 1);
    }

    #[test]
    fn reference_file_is_valid() {
        let text = include_str!("../../configs/cls-server.toml");
        let c = Config::parse(text).unwrap();
        assert!(!c.servers.is_empty());
    }

    #[test]
    fn bad_configs_name_the_field() {
        assert!(err("").contains("`servers`"));
        assert!(err(&format!("[scheduler]\nmode = \"x\"\n{MIN}")).contains("scheduler.mode"));
        assert!(err(&format!("[scheduler]\nthreshold = 0\n{MIN}")).contains("scheduler.threshold"));
        assert!(err(&format!("[server]\nlisten = \"nope\"\n{MIN}")).contains("server.listen"));
        assert!(err(&format!("[monitor]\ncoefficients = [1.0]\n{MIN}"))
            .contains("monitor.coefficients"));
        assert!(err(&format!(
            "[monitor]\ncoefficients = [0.5,0.5,0.5,0,0,0]\n{MIN}"
        ))
        .contains("sum to 1"));
        assert!(err(&format!(
            "[monitor]\ninterval_ms = 100\nprobe_timeout_ms = 200\n{MIN}"
        ))
        .contains("monitor.probe_timeout_ms"));
        assert!(err("[[servers]]\naddr = \"1.2.3.4\"\n").contains("servers[0].addr"));
        assert!(
            err(&format!("{MIN}[[servers]]\naddr = \"127.0.0.1:8080\"\n"))
                .contains("servers[1].addr")
        );
        assert!(err(&format!("{MIN}probe = \"icmp\"\n")).contains("servers[0].probe"));
        assert!(err("[[servers]]\naddr = \"127.0.0.1:1\"\nweight = 0\n").contains("weight 0"));
        // Unknown keys (typos) are refused by the raw layer, naming the key.
        assert!(err(&format!("[scheduler]\nthreshhold = 3\n{MIN}")).contains("threshhold"));
    }
}
