//! Configuration in two layers (STYLE.md §11): [`RawConfig`] is what serde
//! reads from TOML, [`Config`] is the checked runtime form with defaults
//! applied. Every error names the field it is about, e.g.
//! `service[0].server[1].weight: must be at most 65535`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::sched::SchedulerKind;

/// A configuration error; the message names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The callers name the file; `err` is not a `source`, so an error
    /// chain does not print the cause twice.
    #[error("cannot read: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{0}")]
    Syntax(String),
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
}

pub(crate) fn field_err(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        msg: msg.into(),
    }
}

// ---------------------------------------------------------------- raw layer

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub service: Vec<RawService>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub workers: Option<usize>,
    pub metrics: Option<String>,
    pub log: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
    pub splice_threshold: Option<u64>,
    pub admin_socket: Option<String>,
    pub access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_connections: Option<usize>,
    pub client_header_timeout_ms: Option<u64>,
    pub client_idle_timeout_ms: Option<u64>,
    pub client_body_timeout_ms: Option<u64>,
    pub tunnel_idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub scheduler: Option<String>,
    /// TCP congestion control of accepted client connections.
    pub client_congestion: Option<String>,
    #[serde(default)]
    pub forwarding: RawForwarding,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub lblc: RawLblc,
    #[serde(default)]
    pub health: crate::health::RawHealth,
    #[serde(default)]
    pub feedback: crate::feedback::RawFeedback,
    #[serde(default)]
    pub server: Vec<RawServer>,
    /// "proxy" (default) or "cache" (cache-cluster front, `crate::cache`).
    pub mode: Option<String>,
    /// Content Location Service client (`crate::cls`).
    pub cls: Option<crate::cls::RawCls>,
    /// Cache-mode settings (`crate::cache`).
    pub cache: Option<crate::cache::RawCache>,
    #[serde(default)]
    pub chash: RawChash,
    #[serde(default)]
    pub rule: Vec<RawRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChash {
    pub balance_factor: Option<u32>,
}

/// One `[[service.rule]]` (checked in [`crate::sched::rules`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub path_prefix: Option<String>,
    pub path_suffix: Option<String>,
    pub path_regex: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    pub set: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarding {
    pub x_forwarded_for: Option<bool>,
    pub x_forwarded_proto: Option<bool>,
    pub via: Option<bool>,
    pub request_id: Option<bool>,
    pub upgrade: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle_per_server: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub response_timeout_ms: Option<u64>,
    /// TCP congestion control of new real-server connections.
    pub congestion: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLblc {
    pub max_entries: Option<usize>,
    pub expire_s: Option<u64>,
    pub shrink_s: Option<u64>,
    pub queue: Option<usize>,
    pub queue_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub address: Option<String>,
    pub weight: Option<u32>,
    pub low: Option<u32>,
    pub high: Option<u32>,
    /// Load agent for dynamic feedback (ip:port).
    pub agent: Option<String>,
    pub sets: Option<Vec<String>>,
}

// ------------------------------------------------------------ checked layer

/// The checked configuration the switch runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub metrics: Option<SocketAddr>,
    pub log: String,
    pub shutdown_grace: Duration,
    /// Bodies with at least this many bytes still to move go through splice(2).
    pub splice_threshold: u64,
    pub limits: Limits,
    pub services: Vec<ServiceConfig>,
    /// The tcpvsadm socket; see [`AdminSocket`].
    pub admin_socket: AdminSocket,
    /// The access log file (`global.access_log`), off when `None`.
    pub access_log: Option<std::path::PathBuf>,
    /// The file this configuration was read from (what a reload re-reads).
    pub source: Option<std::path::PathBuf>,
}

/// Where the admin socket (tcpvsadm) listens: `global.admin_socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminSocket {
    /// Not set: [`DEFAULT_ADMIN_SOCKET`], and if it cannot be bound the
    /// switch runs without one (with a warning).
    Default,
    /// Set to a path: failing to bind it is a start error.
    Path(std::path::PathBuf),
    /// Set to "": no admin socket.
    Disabled,
}

/// The admin socket path used when `global.admin_socket` is not set (and
/// tcpvsadm's default).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ktcpvs.sock";

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub client_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub client_body_timeout: Duration,
    /// A switched-protocol tunnel (after a 101) with no byte either way
    /// for this long is closed.
    pub tunnel_idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub scheduler: SchedulerKind,
    /// TCP_CONGESTION of accepted client connections (None: the system's).
    pub client_congestion: Option<Congestion>,
    pub forwarding: Forwarding,
    pub pool: PoolConfig,
    pub lblc_max_entries: usize,
    pub lblc_expire: Duration,
    pub health: crate::health::HealthConfig,
    pub feedback: crate::feedback::FeedbackConfig,
    pub servers: Vec<ServerConfig>,
    /// Ask this CLS where requests go (`crate::cls`).
    pub cls: Option<crate::cls::ClsConfig>,
    /// Set in cache mode (`crate::cache`).
    pub cache: Option<crate::cache::CacheConfig>,
    /// lblcr's K: a server set unchanged this long loses its busiest member.
    pub lblcr_shrink: Duration,
    /// lblc/lblcr in-flight cap: requests waiting per worker, and how long.
    pub queue: usize,
    pub queue_timeout: Duration,
    pub rules: crate::sched::rules::Rules,
}

#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    pub x_forwarded_for: bool,
    pub x_forwarded_proto: bool,
    pub via: bool,
    /// Add `X-Request-Id: <worker>-<n>` when the client sent none.
    pub request_id: bool,
    /// Pass protocol upgrades (WebSocket): forward `Upgrade`, and after a
    /// 101 relay bytes both ways (crate::proxy::tunnel).
    pub upgrade: bool,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_idle_per_server: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// TCP_CONGESTION of new server connections (None: the system's).
    pub congestion: Option<Congestion>,
}

/// A TCP congestion-control algorithm name (`TCP_CONGESTION`), checked
/// against what the kernel offers when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Congestion(String);

/// Where the kernel lists the algorithms it has (loaded or built in).
const AVAILABLE_CC: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

impl Congestion {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Checks `v` for `field`: a name of at most 15 bytes the kernel has.
    fn parse(field: &str, v: Option<String>) -> Result<Option<Congestion>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        if v.is_empty()
            || v.len() > 15
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(field_err(
                field,
                format!("{v:?} is not a congestion-control name (e.g. \"cubic\", \"bbr\")"),
            ));
        }
        // Where /proc cannot be read (another OS, a sandbox), the socket
        // option's own error at start-up is the check.
        if let Ok(have) = std::fs::read_to_string(AVAILABLE_CC) {
            if !have.split_whitespace().any(|a| a == v) {
                return Err(field_err(
                    field,
                    format!(
                        "{v:?} is not available on this machine (available: {}; see {AVAILABLE_CC})",
                        have.trim()
                    ),
                ));
            }
        }
        // The kernel refuses an algorithm outside
        // net.ipv4.tcp_allowed_congestion_control to a process without
        // CAP_NET_ADMIN: try it on a scratch socket so that this, too, is
        // an error now rather than a silent default per connection.
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .and_then(|sock| sock.set_tcp_congestion(v.as_bytes()));
        if let Err(e) = probe {
            return Err(field_err(
                field,
                format!(
                    "cannot use {v:?}: {e} (an unprivileged process may use only \
                     net.ipv4.tcp_allowed_congestion_control)"
                ),
            ));
        }
        Ok(Some(Congestion(v)))
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub address: SocketAddr,
    pub weight: u32,
    pub low: u32,
    pub high: u32,
    pub agent: Option<SocketAddr>,
    /// Named server sets of content rules (empty: the default set).
    pub sets: Vec<String>,
}

/// Default number of bytes from which a body is spliced rather than copied.
/// Measured (bench/RESULTS.md, splice-vs-copy.svg): equal within noise up
/// to 64 KiB, splice cheaper from 256 KiB on; the crossings were ~64 KiB
/// (keep-alive) and ~151 KiB (one request per connection).
pub const DEFAULT_SPLICE_THRESHOLD: u64 = 128 * 1024;

impl Config {
    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
            path: path.display().to_string(),
            err,
        })?;
        let mut c = Config::from_toml(&text)?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses and checks a configuration held in a string.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        // serde_path_to_error names the field of a type error
        // (`service[0].server[1].weight: invalid value ...`).
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                ConfigError::Syntax(inner.to_string())
            } else {
                field_err(path, inner.message().trim().to_string())
            }
        })?;
        raw.validate()
    }
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

pub(crate) fn positive_ms(
    field: &str,
    v: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let d = ms(v, default);
    if d.is_zero() {
        return Err(field_err(field, "must be greater than 0"));
    }
    Ok(d)
}

impl RawConfig {
    /// Applies defaults and cross-field checks.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let g = self.global;
        let workers = match g.workers {
            None | Some(0) => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            Some(n) if n > 1024 => return Err(field_err("global.workers", "must be at most 1024")),
            Some(n) => n,
        };
        let metrics = match g.metrics {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                field_err("global.metrics", format!("not an address ip:port ({e})"))
            })?),
        };
        let l = self.limits;
        let max_header_bytes = l.max_header_bytes.unwrap_or(16 * 1024);
        if !(256..=1024 * 1024).contains(&max_header_bytes) {
            return Err(field_err(
                "limits.max_header_bytes",
                "must be between 256 and 1048576",
            ));
        }
        let max_headers = l.max_headers.unwrap_or(100);
        if !(8..=1000).contains(&max_headers) {
            return Err(field_err(
                "limits.max_headers",
                "must be between 8 and 1000",
            ));
        }
        let limits = Limits {
            max_header_bytes,
            max_headers,
            max_connections: match l.max_connections {
                Some(0) => {
                    return Err(field_err(
                        "limits.max_connections",
                        "must be greater than 0",
                    ))
                }
                v => v.unwrap_or(50_000),
            },
            client_header_timeout: positive_ms(
                "limits.client_header_timeout_ms",
                l.client_header_timeout_ms,
                10_000,
            )?,
            client_idle_timeout: positive_ms(
                "limits.client_idle_timeout_ms",
                l.client_idle_timeout_ms,
                60_000,
            )?,
            client_body_timeout: positive_ms(
                "limits.client_body_timeout_ms",
                l.client_body_timeout_ms,
                60_000,
            )?,
            tunnel_idle_timeout: positive_ms(
                "limits.tunnel_idle_timeout_ms",
                l.tunnel_idle_timeout_ms,
                3_600_000,
            )?,
        };
        if self.service.is_empty() {
            return Err(field_err("service", "at least one [[service]] is required"));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut services = Vec::with_capacity(self.service.len());
        for (i, s) in self.service.into_iter().enumerate() {
            let f = |name: &str| format!("service[{i}].{name}");
            let name = s.name.unwrap_or_else(|| format!("service{i}"));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(field_err(
                    f("name"),
                    "must be non-empty and use only letters, digits, '-', '_', '.'",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(field_err(
                    f("name"),
                    format!("duplicate service name {name:?}"),
                ));
            }
            let listen = s
                .listen
                .ok_or_else(|| field_err(f("listen"), "is required (ip:port)"))?
                .parse::<SocketAddr>()
                .map_err(|e| field_err(f("listen"), format!("not an address ip:port ({e})")))?;
            if listen.port() != 0 && !listens.insert(listen) {
                return Err(field_err(
                    f("listen"),
                    format!("{listen} is used by another service"),
                ));
            }
            let mut scheduler = match s.scheduler.as_deref() {
                None => SchedulerKind::Wlc,
                Some(name) => SchedulerKind::parse(name).ok_or_else(|| {
                    field_err(
                        f("scheduler"),
                        format!(
                            "unknown scheduler {name:?} (known: {})",
                            SchedulerKind::NAMES
                        ),
                    )
                })?,
            };
            if let Some(bf) = s.chash.balance_factor {
                if !(100..=1000).contains(&bf) {
                    return Err(field_err(
                        f("chash.balance_factor"),
                        "must be between 100 and 1000 (percent of the average load)",
                    ));
                }
                if let SchedulerKind::Chash { balance_factor } = &mut scheduler {
                    *balance_factor = bf;
                }
            }
            let fw = s.forwarding;
            let forwarding = Forwarding {
                x_forwarded_for: fw.x_forwarded_for.unwrap_or(true),
                x_forwarded_proto: fw.x_forwarded_proto.unwrap_or(true),
                via: fw.via.unwrap_or(true),
                request_id: fw.request_id.unwrap_or(false),
                upgrade: fw.upgrade.unwrap_or(true),
            };
            let p = s.pool;
            let max_idle = p.max_idle_per_server.unwrap_or(64);
            if max_idle > 100_000 {
                return Err(field_err(
                    f("pool.max_idle_per_server"),
                    "must be at most 100000",
                ));
            }
            let pool = PoolConfig {
                max_idle_per_server: max_idle,
                idle_timeout: positive_ms(&f("pool.idle_timeout_ms"), p.idle_timeout_ms, 4_000)?,
                connect_timeout: positive_ms(
                    &f("pool.connect_timeout_ms"),
                    p.connect_timeout_ms,
                    2_000,
                )?,
                response_timeout: positive_ms(
                    &f("pool.response_timeout_ms"),
                    p.response_timeout_ms,
                    30_000,
                )?,
                congestion: Congestion::parse(&f("pool.congestion"), p.congestion)?,
            };
            if s.server.is_empty() {
                return Err(field_err(
                    f("server"),
                    "at least one [[service.server]] is required",
                ));
            }
            if s.server.len() > crate::sched::MAX_SERVERS {
                return Err(field_err(
                    f("server"),
                    format!("at most {} servers per service", crate::sched::MAX_SERVERS),
                ));
            }
            let mut servers = Vec::with_capacity(s.server.len());
            let mut addrs = HashSet::new();
            for (j, r) in s.server.into_iter().enumerate() {
                let g = |name: &str| format!("service[{i}].server[{j}].{name}");
                let address = r
                    .address
                    .ok_or_else(|| field_err(g("address"), "is required (ip:port)"))?
                    .parse::<SocketAddr>()
                    .map_err(|e| {
                        field_err(g("address"), format!("not an address ip:port ({e})"))
                    })?;
                if address.port() == 0 {
                    return Err(field_err(g("address"), "port 0 is not a server port"));
                }
                if !addrs.insert(address) {
                    return Err(field_err(
                        g("address"),
                        format!("{address} is listed twice"),
                    ));
                }
                let weight = r.weight.unwrap_or(1);
                if weight > 65_535 {
                    return Err(field_err(g("weight"), "must be at most 65535"));
                }
                let low = r.low.unwrap_or(30);
                let high = r.high.unwrap_or(60);
                if high == 0 {
                    return Err(field_err(g("high"), "must be greater than 0"));
                }
                if low > high {
                    return Err(field_err(
                        g("low"),
                        format!("must not exceed high ({high})"),
                    ));
                }
                let agent = match r.agent {
                    None => None,
                    Some(a) => Some(a.parse::<SocketAddr>().map_err(|e| {
                        field_err(g("agent"), format!("not an address ip:port ({e})"))
                    })?),
                };
                let sets = r.sets.unwrap_or_default();
                if let Some(bad) = sets.iter().find(|n| {
                    n.is_empty()
                        || !n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                }) {
                    return Err(field_err(
                        g("sets"),
                        format!("bad set name {bad:?} (letters, digits, '-', '_', '.')"),
                    ));
                }
                servers.push(ServerConfig {
                    address,
                    weight,
                    low,
                    high,
                    agent,
                    sets,
                });
            }
            let health = s.health.check(&f("health"))?;
            let feedback = s.feedback.check(&f("feedback"), &health)?;
            let lblc_max_entries = s.lblc.max_entries.unwrap_or(1 << 20);
            if lblc_max_entries == 0 {
                return Err(field_err(f("lblc.max_entries"), "must be greater than 0"));
            }
            let cls = match s.cls {
                Some(c) => Some(c.check(&f("cls"), &servers)?),
                None => None,
            };
            let cache = crate::cache::check_mode(&f(""), s.mode.as_deref(), s.cache)?;
            let lb = &s.lblc;
            let lblcr_shrink = Duration::from_secs(
                lb.shrink_s
                    .unwrap_or(crate::sched::lblcr::DEFAULT_SHRINK_S as u64),
            );
            let max_shrink = crate::sched::setslots::MAX_SHRINK_S as u64;
            if lblcr_shrink.is_zero() || lblcr_shrink.as_secs() > max_shrink {
                return Err(field_err(
                    f("lblc.shrink_s"),
                    format!("must be between 1 and {max_shrink} (388 days)"),
                ));
            }
            let queue = lb.queue.unwrap_or(crate::sched::queue::DEFAULT_QUEUE);
            if queue > 1_000_000 {
                return Err(field_err(f("lblc.queue"), "must be at most 1000000"));
            }
            let queue_timeout = positive_ms(
                &f("lblc.queue_timeout_ms"),
                lb.queue_timeout_ms,
                crate::sched::queue::DEFAULT_QUEUE_TIMEOUT_MS,
            )?;
            let rules =
                crate::sched::rules::Rules::build(s.rule, &servers, &format!("service[{i}]"))?;
            services.push(ServiceConfig {
                name,
                listen,
                scheduler,
                client_congestion: Congestion::parse(&f("client_congestion"), s.client_congestion)?,
                forwarding,
                pool,
                lblc_max_entries,
                lblc_expire: Duration::from_secs(s.lblc.expire_s.unwrap_or(360).max(1)),
                health,
                feedback,
                servers,
                cls,
                cache,
                lblcr_shrink,
                queue,
                queue_timeout,
                rules,
            });
        }
        Ok(Config {
            workers,
            metrics,
            log: g.log.unwrap_or_else(|| "info".to_string()),
            shutdown_grace: ms(g.shutdown_grace_ms, 30_000),
            splice_threshold: g.splice_threshold.unwrap_or(DEFAULT_SPLICE_THRESHOLD),
            limits,
            services,
            admin_socket: match g.admin_socket {
                None => AdminSocket::Default,
                Some(p) if p.is_empty() => AdminSocket::Disabled,
                Some(p) if !p.starts_with('/') => {
                    return Err(field_err(
                        "global.admin_socket",
                        "must be an absolute path (or \"\" to disable)",
                    ))
                }
                Some(p) => AdminSocket::Path(p.into()),
            },
            access_log: match g.access_log {
                None => None,
                Some(p) if p.is_empty() => None,
                Some(p) if !p.starts_with('/') => {
                    return Err(field_err(
                        "global.access_log",
                        "must be an absolute path (or \"\" for none)",
                    ))
                }
                Some(p) => Some(p.into()),
            },
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[service]]
        name = "web"
        listen = "127.0.0.1:8080"
        scheduler = "wrr"
        [[service.server]]
        address = "127.0.0.1:9001"
        weight = 4
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.services[0].servers[0].weight, 4);
        assert_eq!(c.services[0].servers[0].low, 30);
        assert_eq!(c.services[0].servers[0].high, 60);
        assert_eq!(c.limits.max_header_bytes, 16384);
        assert!(c.workers >= 1);
        assert_eq!(c.admin_socket, AdminSocket::Default);
        let c = Config::from_toml(&format!("[global]\nadmin_socket = \"\"\n{GOOD}")).unwrap();
        assert_eq!(c.admin_socket, AdminSocket::Disabled);
        let s = &c.services[0];
        assert_eq!(s.lblcr_shrink, Duration::from_secs(60));
        assert_eq!((s.queue, s.queue_timeout), (1024, Duration::from_secs(5)));
        let c = Config::from_toml(&GOOD.replace("\"wrr\"", "\"chash\"")).unwrap();
        assert_eq!(
            c.services[0].scheduler,
            SchedulerKind::Chash {
                balance_factor: 125
            }
        );
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&GOOD.replace("weight = 4", "weight = 70000"))
            .starts_with("service[0].server[0].weight:"));
        assert!(err(&GOOD.replace("\"wrr\"", "\"nope\"")).starts_with("service[0].scheduler:"));
        assert!(err(&GOOD.replace("127.0.0.1:9001", "nowhere"))
            .starts_with("service[0].server[0].address:"));
        assert!(
            err(&GOOD.replace("weight = 4", "low = 80")).starts_with("service[0].server[0].low:")
        );
        assert!(err("[global]\nworkers = 5000\n").starts_with("global.workers:"));
        assert!(err("").starts_with("service:"));
        assert!(
            err(&format!("[global]\nadmin_socket = \"rel.sock\"\n{GOOD}"))
                .starts_with("global.admin_socket:")
        );
        assert!(err(&format!("{GOOD}\n[limits]\nmax_header_bytes = 10\n"))
            .starts_with("limits.max_header_bytes:"));
        // unknown keys are refused too, with their name
        assert!(err(&GOOD.replace("weight = 4", "wieght = 4")).contains("wieght"));
        // scheduler options and server sets
        let e = err(&GOOD.replace("\"wrr\"", "\"chash\"\n[service.chash]\nbalance_factor = 50"));
        assert!(e.starts_with("service[0].chash.balance_factor:"), "{e}");
        let e = err(&GOOD.replace("weight = 4", "sets = [\"a b\"]"));
        assert!(e.starts_with("service[0].server[0].sets:"), "{e}");
        let e = err(&format!("{GOOD}\n[service.lblc]\nqueue_timeout_ms = 0\n"));
        assert!(e.starts_with("service[0].lblc.queue_timeout_ms:"), "{e}");
        let e = err(&format!("{GOOD}\n[service.lblc]\nshrink_s = 0\n"));
        assert!(e.starts_with("service[0].lblc.shrink_s:"), "{e}");
        // type errors name the field's path
        let e = err(&GOOD.replace("weight = 4", "weight = -1"));
        assert!(e.starts_with("service[0].server[0].weight:"), "{e}");
    }
}
