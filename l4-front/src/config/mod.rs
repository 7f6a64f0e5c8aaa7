//! Configuration in two layers (Sozu `FileConfig` → `Config`): [`raw`]
//! mirrors the TOML file with serde and nothing else; [`Config::from_raw`]
//! checks every field and cross-field rule, fills defaults, and reports the
//! first problem naming the field, e.g.
//! `service[0].real_server[1].method: unknown method "foo" (dr, tun, nat)`.
//! The reference file with every key commented is `configs/l4-front.toml`.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::conn::Timeouts;
use crate::packet::parse::{PROTO_TCP, PROTO_UDP};

/// A configuration problem, naming the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// (The caller names the file.)
    #[error("cannot read: {err}")]
    Read { path: String, err: std::io::Error },
    /// Syntax or type errors; toml's message names the line, the column
    /// and the key.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        msg: msg.into(),
    }
}

pub mod raw;

/// DoS defences (§5.2.9). Each switch: 0 off, 1 or 2 automatic (active
/// while the connection table holds more than `threshold_percent` of
/// `max_connections`, the analogue of IPVS' free-memory threshold), 3
/// always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defense {
    /// Randomly drop half-open (SYN_RECV) entries.
    pub drop_entry: u8,
    /// Refuse one new connection in `drop_rate` before scheduling.
    pub drop_packet: u8,
    /// Shorter SYN_RECV timeout (`secure_syn_timeout`).
    pub secure_tcp: u8,
    pub threshold_percent: u8,
    pub drop_rate: u32,
    pub secure_syn_timeout: u32,
}

impl Default for Defense {
    fn default() -> Self {
        Defense {
            drop_entry: 0,
            drop_packet: 0,
            secure_tcp: 0,
            threshold_percent: 80,
            drop_rate: 10,
            secure_syn_timeout: 10,
        }
    }
}

impl Defense {
    /// Is a switch with `mode` active at table usage `used`/`max`?
    pub fn active(&self, mode: u8, used: usize, max: usize) -> bool {
        match mode {
            3 => true,
            1 | 2 => used * 100 > max * self.threshold_percent as usize,
            _ => false,
        }
    }
}

/// Role in a master/backup pair (§5.2.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRole {
    /// Sends connection records and heartbeats to `peer`.
    Master,
    /// Receives on `listen`; takes the VIPs over after `dead_ms` of silence.
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    pub role: SyncRole,
    pub listen: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
    pub interval_ms: u64,
    pub dead_ms: u64,
    /// Master only: on (re)start, take the VIPs back from an active backup
    /// after receiving its table for `failback_delay_ms` (needs `listen`;
    /// the backup needs `peer` to send it).
    pub failback: bool,
    pub failback_delay_ms: u64,
}

/// How real servers of a service are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    None,
    /// A TCP connect to the real server's address and port.
    Tcp,
    /// `GET health_path HTTP/1.0`, answered with a 2xx or 3xx status.
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthCheck,
    pub path: String,
    /// The port probed instead of each real server's own (needed by an
    /// all-ports service, whose servers have none).
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures before a server is taken out.
    pub fall: u32,
    /// Consecutive successes before it is put back.
    pub rise: u32,
}

/// Forwarding method of a real server (ipvsadm `-g`, `-i`, `-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// VS/DR: direct routing, MAC rewrite only.
    Dr,
    /// VS/TUN: IP-in-IP to the real server.
    Tun,
    /// VS/NAT: address/port rewrite both ways.
    Nat,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Dr => "dr",
            Method::Tun => "tun",
            Method::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Director {
    pub interface: String,
    /// Worker threads; 0 means one per online CPU.
    pub workers: usize,
    /// The director's own LAN address (TUN outer source); `None` means the
    /// interface's first IPv4 address.
    pub local_ip: Option<Ipv4Addr>,
    pub answer_arp: bool,
    pub mtu: u16,
    pub max_connections: usize,
    pub shards: usize,
    pub stats_file: Option<PathBuf>,
    pub stats_interval_ms: u64,
    /// Unix socket for `l4adm` (none = no runtime control).
    pub control_socket: Option<PathBuf>,
    /// Receive through TPACKET_V3 rings (else `recvmmsg`).
    pub rx_ring: bool,
    /// Send through TPACKET_V2 rings (else `sendmmsg`).
    pub tx_ring: bool,
    /// Install an nftables netdev-ingress rule that drops VIP traffic in
    /// this host's kernel once the workers' packet sockets have seen it.
    pub kernel_drop: bool,
    /// Receive VIP traffic through AF_XDP sockets fed by an XDP program
    /// (`datapath::xdp`) instead of the packet sockets' rings.
    pub xdp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServerConfig {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub method: Method,
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub scheduler: String,
    /// Persistence timeout in seconds (0 = off).
    pub persistence: u32,
    /// Client netmask prefix length for persistence.
    pub persistence_netmask: u8,
    pub health: HealthConfig,
    /// Dynamic-feedback weights (§4.2); None = static weights.
    pub feedback: Option<FeedbackConfig>,
    pub real_servers: Vec<RealServerConfig>,
}

/// Dynamic-feedback weights (§4.2, `sched::feedback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackConfig {
    /// The formula's coefficient A (thesis default 5).
    pub gain: u32,
    /// Weights stay within [1, scale × configured weight] (default 10).
    pub scale: u32,
    /// The health probe's response time that counts as load 1.0.
    pub response_ms: u64,
    /// Share of the input index (new connections against the average) in
    /// the aggregate load; the rest is the response-time index.
    pub input_percent: u8,
}

/// The checked configuration the director runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub director: Director,
    pub timeouts: Timeouts,
    pub defense: Defense,
    /// None: a standalone director.
    pub sync: Option<SyncConfig>,
    pub services: Vec<ServiceConfig>,
}

fn ip(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse()
        .map_err(|_| bad(field, format!("{s:?} is not an IPv4 address")))
}

fn port(field: &str, p: i64) -> Result<u16, ConfigError> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(bad(field, format!("{p} is not a port (1-65535)")))
    }
}

impl Config {
    /// The sync role and settings, if any.
    pub fn director_sync(&self) -> Option<(SyncRole, SyncConfig)> {
        self.sync.map(|s| (s.role, s))
    }

    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::File = toml::from_str(text)?;
        Self::from_raw(raw)
    }

    /// The second layer: checks and defaults.
    pub fn from_raw(raw: raw::File) -> Result<Config, ConfigError> {
        let d = raw.director.unwrap_or_default();
        let interface = d
            .interface
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("director.interface", "required (the LAN port)"))?;
        if interface.len() >= libc::IFNAMSIZ {
            return Err(bad("director.interface", "longer than 15 bytes"));
        }
        let local_ip = match d.local_ip {
            Some(s) => Some(ip("director.local_ip", &s)?),
            None => None,
        };
        let mtu = d.mtu.unwrap_or(1500);
        if !(576..=9000).contains(&mtu) {
            return Err(bad("director.mtu", format!("{mtu} outside 576-9000")));
        }
        let max_connections = d.max_connections.unwrap_or(2_000_000);
        if max_connections == 0 {
            return Err(bad("director.max_connections", "must be at least 1"));
        }
        let shards = d.shards.unwrap_or(64);
        if !(1..=4096).contains(&shards) {
            return Err(bad("director.shards", format!("{shards} outside 1-4096")));
        }
        let workers = d.workers.unwrap_or(0);
        if workers > 256 {
            return Err(bad("director.workers", "at most 256"));
        }
        let director = Director {
            interface,
            workers,
            local_ip,
            answer_arp: d.answer_arp.unwrap_or(true),
            mtu: mtu as u16,
            max_connections,
            shards,
            stats_file: d.stats_file.map(PathBuf::from),
            stats_interval_ms: d.stats_interval_ms.unwrap_or(1000).max(50),
            control_socket: d.control_socket.map(PathBuf::from),
            rx_ring: d.rx_ring.unwrap_or(true),
            tx_ring: d.tx_ring.unwrap_or(true),
            kernel_drop: d.kernel_drop.unwrap_or(true),
            xdp: d.xdp.unwrap_or(false),
        };

        let t = raw.timeouts.unwrap_or_default();
        let def = Timeouts::default();
        let secs = |name: &str, v: Option<u32>, dflt: u32| -> Result<u32, ConfigError> {
            match v {
                Some(0) => Err(bad(format!("timeouts.{name}"), "must be at least 1 second")),
                Some(v) => Ok(v),
                None => Ok(dflt),
            }
        };
        let timeouts = Timeouts {
            tcp_syn: secs("tcp_syn", t.tcp_syn, def.tcp_syn)?,
            tcp_established: secs("tcp_established", t.tcp_established, def.tcp_established)?,
            tcp_fin: secs("tcp_fin", t.tcp_fin, def.tcp_fin)?,
            tcp_close: secs("tcp_close", t.tcp_close, def.tcp_close)?,
            udp: secs("udp", t.udp, def.udp)?,
        };

        let d = raw.defense.unwrap_or_default();
        let dd = Defense::default();
        let switch = |name: &str, v: Option<u8>| -> Result<u8, ConfigError> {
            match v.unwrap_or(0) {
                m @ 0..=3 => Ok(m),
                m => Err(bad(
                    format!("defense.{name}"),
                    format!("{m}: 0 off, 1-2 automatic, 3 always"),
                )),
            }
        };
        let defense = Defense {
            drop_entry: switch("drop_entry", d.drop_entry)?,
            drop_packet: switch("drop_packet", d.drop_packet)?,
            secure_tcp: switch("secure_tcp", d.secure_tcp)?,
            threshold_percent: match d.threshold_percent.unwrap_or(dd.threshold_percent) {
                p @ 1..=100 => p,
                p => {
                    return Err(bad(
                        "defense.threshold_percent",
                        format!("{p} outside 1-100"),
                    ))
                }
            },
            drop_rate: match d.drop_rate.unwrap_or(dd.drop_rate) {
                0 | 1 => return Err(bad("defense.drop_rate", "must be at least 2")),
                r => r,
            },
            secure_syn_timeout: match d.secure_syn_timeout.unwrap_or(dd.secure_syn_timeout) {
                0 => return Err(bad("defense.secure_syn_timeout", "must be at least 1")),
                t => t,
            },
        };

        let sync = match raw.sync {
            None => None,
            Some(y) => {
                let addr = |name: &str,
                            v: Option<String>|
                 -> Result<Option<std::net::SocketAddr>, ConfigError> {
                    v.map(|s| {
                        s.parse().map_err(|_| {
                            bad(format!("sync.{name}"), format!("{s:?} is not ADDR:PORT"))
                        })
                    })
                    .transpose()
                };
                let listen = addr("listen", y.listen)?;
                let peer = addr("peer", y.peer)?;
                let role = match y.role.as_deref() {
                    Some("master") => SyncRole::Master,
                    Some("backup") => SyncRole::Backup,
                    Some(other) => {
                        return Err(bad(
                            "sync.role",
                            format!("unknown {other:?} (master, backup)"),
                        ))
                    }
                    None => return Err(bad("sync.role", "required (master, backup)")),
                };
                if role == SyncRole::Master && peer.is_none() {
                    return Err(bad("sync.peer", "a master needs the backup's ADDR:PORT"));
                }
                if role == SyncRole::Backup && listen.is_none() {
                    return Err(bad("sync.listen", "a backup needs ADDR:PORT to listen on"));
                }
                let interval_ms = y.interval_ms.unwrap_or(100);
                if !(10..=10_000).contains(&interval_ms) {
                    return Err(bad("sync.interval_ms", "outside 10-10000"));
                }
                let dead_ms = y.dead_ms.unwrap_or(1000);
                if dead_ms < 2 * interval_ms {
                    return Err(bad("sync.dead_ms", "must be at least twice interval_ms"));
                }
                let failback = y.failback.unwrap_or(false);
                if failback && role != SyncRole::Master {
                    return Err(bad("sync.failback", "only a master takes the VIPs back"));
                }
                if failback && listen.is_none() {
                    return Err(bad(
                        "sync.listen",
                        "failback needs ADDR:PORT to receive the backup's table on",
                    ));
                }
                let failback_delay_ms = y.failback_delay_ms.unwrap_or(2000);
                if !(interval_ms..=600_000).contains(&failback_delay_ms) {
                    return Err(bad(
                        "sync.failback_delay_ms",
                        "between interval_ms and 600000",
                    ));
                }
                Some(SyncConfig {
                    role,
                    listen,
                    peer,
                    interval_ms,
                    dead_ms,
                    failback,
                    failback_delay_ms,
                })
            }
        };

        if raw.service.is_empty() {
            return Err(bad("service", "at least one [[service]] is required"));
        }
        if raw.service.len() > u16::MAX as usize {
            return Err(bad("service", "too many services"));
        }
        let mut seen = HashSet::new();
        let mut services = Vec::new();
        for (i, s) in raw.service.into_iter().enumerate() {
            let f = |k: &str| format!("service[{i}].{k}");
            let vip = ip(&f("vip"), &s.vip)?;
            // Port 0: all ports of the VIP (§5.2.6), persistent only.
            let port_ = if s.port == 0 {
                if s.persistence.unwrap_or(0) == 0 {
                    return Err(bad(
                        f("port"),
                        "0 (all ports) needs persistence (a number of seconds)",
                    ));
                }
                0
            } else {
                port(&f("port"), s.port)?
            };
            let proto = match s.protocol.as_deref().unwrap_or("tcp") {
                "tcp" => PROTO_TCP,
                "udp" => PROTO_UDP,
                other => return Err(bad(f("protocol"), format!("unknown {other:?} (tcp, udp)"))),
            };
            if !seen.insert((proto, vip, port_)) {
                return Err(bad(f("vip"), format!("duplicate service {vip}:{port_}")));
            }
            let scheduler = s.scheduler.unwrap_or_else(|| "wlc".into());
            if !crate::sched::NAMES.contains(&scheduler.as_str()) {
                return Err(bad(
                    f("scheduler"),
                    format!("unknown {scheduler:?} ({})", crate::sched::NAMES.join(", ")),
                ));
            }
            let persistence_netmask = s.persistence_netmask.unwrap_or(32);
            if persistence_netmask > 32 {
                return Err(bad(f("persistence_netmask"), "a prefix length 0-32"));
            }
            let kind = match s.health_check.as_deref().unwrap_or("none") {
                "none" => HealthCheck::None,
                "tcp" => HealthCheck::Tcp,
                "http" => HealthCheck::Http,
                other => {
                    return Err(bad(
                        f("health_check"),
                        format!("unknown {other:?} (none, tcp, http)"),
                    ))
                }
            };
            if s.health_port == Some(0) {
                return Err(bad(f("health_port"), "outside 1-65535"));
            }
            if port_ == 0 && kind != HealthCheck::None && s.health_port.is_none() {
                return Err(bad(
                    f("health_check"),
                    "an all-ports service (port 0) has no port of its own to probe: set health_port",
                ));
            }
            let interval_ms = s.health_interval_ms.unwrap_or(2000);
            if !(50..=3_600_000).contains(&interval_ms) {
                return Err(bad(f("health_interval_ms"), "outside 50-3600000"));
            }
            let timeout_ms = s.health_timeout_ms.unwrap_or(1000);
            if timeout_ms == 0 || timeout_ms > interval_ms {
                return Err(bad(
                    f("health_timeout_ms"),
                    "must be 1..=health_interval_ms",
                ));
            }
            let fall = s.health_fall.unwrap_or(2);
            let rise = s.health_rise.unwrap_or(2);
            if fall == 0 {
                return Err(bad(f("health_fall"), "must be at least 1"));
            }
            if rise == 0 {
                return Err(bad(f("health_rise"), "must be at least 1"));
            }
            let path = s.health_path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(f("health_path"), "an absolute path without spaces"));
            }
            let feedback = if s.feedback.unwrap_or(false) {
                if kind == HealthCheck::None {
                    return Err(bad(
                        f("feedback"),
                        "needs health_check (its probes measure the response times)",
                    ));
                }
                let gain = s.feedback_gain.unwrap_or(5);
                if !(1..=100).contains(&gain) {
                    return Err(bad(f("feedback_gain"), "outside 1-100"));
                }
                let scale = s.feedback_scale.unwrap_or(10);
                if !(1..=100).contains(&scale) {
                    return Err(bad(f("feedback_scale"), "outside 1-100"));
                }
                let response_ms = s.feedback_response_ms.unwrap_or(100);
                if !(1..=60_000).contains(&response_ms) {
                    return Err(bad(f("feedback_response_ms"), "outside 1-60000"));
                }
                let input_percent = s.feedback_input_percent.unwrap_or(25);
                if input_percent > 100 {
                    return Err(bad(f("feedback_input_percent"), "outside 0-100"));
                }
                Some(FeedbackConfig {
                    gain,
                    scale,
                    response_ms,
                    input_percent,
                })
            } else {
                None
            };
            let health = HealthConfig {
                kind,
                path,
                port: s.health_port,
                interval_ms,
                timeout_ms,
                fall,
                rise,
            };
            if s.real_server.len() > u16::MAX as usize {
                return Err(bad(f("real_server"), "too many real servers"));
            }
            let mut rss = Vec::new();
            let mut rseen = HashSet::new();
            for (j, r) in s.real_server.into_iter().enumerate() {
                let g = |k: &str| format!("service[{i}].real_server[{j}].{k}");
                let addr = ip(&g("address"), &r.address)?;
                let method = match r.method.as_deref().unwrap_or("dr") {
                    "dr" => Method::Dr,
                    "tun" => Method::Tun,
                    "nat" => Method::Nat,
                    other => {
                        return Err(bad(
                            g("method"),
                            format!("unknown method {other:?} (dr, tun, nat)"),
                        ))
                    }
                };
                let rport =
                    match r.port {
                        Some(_) if port_ == 0 => return Err(bad(
                            g("port"),
                            "an all-ports service (port 0) keeps the client's port; leave it out",
                        )),
                        Some(p) => port(&g("port"), p)?,
                        None => port_,
                    };
                if method != Method::Nat && rport != port_ {
                    return Err(bad(
                        g("port"),
                        format!(
                            "{} cannot change the port (service port {port_}); use nat",
                            method.name()
                        ),
                    ));
                }
                let weight = r.weight.unwrap_or(1);
                if !(0..=65535).contains(&weight) {
                    return Err(bad(g("weight"), format!("{weight} outside 0-65535")));
                }
                let mac = match r.mac {
                    Some(m) => Some(
                        crate::packet::parse_mac(&m)
                            .ok_or_else(|| bad(g("mac"), format!("{m:?} is not a MAC")))?,
                    ),
                    None => None,
                };
                if !rseen.insert((addr, rport)) {
                    return Err(bad(g("address"), format!("duplicate {addr}:{rport}")));
                }
                rss.push(RealServerConfig {
                    addr,
                    port: rport,
                    weight: weight as u32,
                    method,
                    mac,
                });
            }
            services.push(ServiceConfig {
                vip,
                port: port_,
                proto,
                scheduler,
                persistence: s.persistence.unwrap_or(0),
                persistence_netmask,
                health,
                feedback,
                real_servers: rss,
            });
        }
        Ok(Config {
            director,
            timeouts,
            defense,
            sync,
            services,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [director]
        interface = "eth0"
        [[service]]
        vip = "10.201.2.100"
        port = 80
        scheduler = "wrr"
        [[service.real_server]]
        address = "10.201.2.11"
        weight = 4
        [[service.real_server]]
        address = "10.201.2.12"
        method = "tun"
    "#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_and_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.director.mtu, 1500);
        assert!(c.director.answer_arp);
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.services[0].real_servers[1].method, Method::Tun);
        assert_eq!(c.services[0].real_servers[1].port, 80);
        assert_eq!(c.services[0].real_servers[0].weight, 4);
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(err(&GOOD.replace("\"tun\"", "\"foo\""))
            .starts_with("service[0].real_server[1].method"));
        assert!(err(&GOOD.replace("weight = 4", "weight = -1"))
            .starts_with("service[0].real_server[0].weight"));
        assert!(err(&GOOD.replace("10.201.2.100", "10.201.2")).starts_with("service[0].vip"));
        assert!(err(&GOOD.replace("\"wrr\"", "\"fifo\"")).starts_with("service[0].scheduler"));
        assert!(err(&GOOD.replace("port = 80", "port = 0")).starts_with("service[0].port"));
        assert!(err(&GOOD.replace("interface = \"eth0\"", "")).starts_with("director.interface"));
        assert!(err(&format!("{GOOD}\n[timeouts]\ntcp_syn = 0\n")).starts_with("timeouts.tcp_syn"));
        let e = err(&GOOD.replace(
            "scheduler = \"wrr\"",
            "scheduler = \"wrr\"\nhealth_check = \"icmp\"",
        ));
        assert!(e.starts_with("service[0].health_check"), "{e}");
        let e = err(&GOOD.replace("method = \"tun\"", "method = \"tun\"\nport = 8080"));
        assert!(e.starts_with("service[0].real_server[1].port"), "{e}");
        let e = err(&GOOD.replace(
            "scheduler = \"wrr\"",
            "scheduler = \"wrr\"\nfeedback = true",
        ));
        assert!(e.starts_with("service[0].feedback"), "{e}");
        // An all-ports service probes health_port.
        let all_ports = GOOD
            .replace("port = 80", "port = 0\npersistence = 60")
            .replace(
                "scheduler = \"wrr\"",
                "scheduler = \"wrr\"\nhealth_check = \"tcp\"",
            );
        let e = err(&all_ports);
        assert!(
            e.starts_with("service[0].health_check") && e.contains("health_port"),
            "{e}"
        );
        let c = Config::parse(
            &all_ports.replace("persistence = 60", "persistence = 60\nhealth_port = 22"),
        )
        .unwrap();
        assert_eq!(c.services[0].health.port, Some(22));
        let e = err(&GOOD.replace(
            "scheduler = \"wrr\"",
            "scheduler = \"wrr\"\nhealth_port = 0",
        ));
        assert!(e.starts_with("service[0].health_port"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[sync]\nrole = \"backup\"\nlisten = \"1.2.3.4:1\"\nfailback = true\n"
        ));
        assert!(e.starts_with("sync.failback"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[sync]\nrole = \"master\"\npeer = \"1.2.3.4:1\"\nfailback = true\n"
        ));
        assert!(e.starts_with("sync.listen"), "{e}");
        // Unknown keys are refused by the raw layer, with the key's name.
        let e = err(&GOOD.replace("scheduler = \"wrr\"", "schedular = \"wrr\""));
        assert!(e.contains("schedular"), "{e}");
    }

    #[test]
    fn duplicate_service_refused() {
        let dup = format!("{GOOD}\n[[service]]\nvip = \"10.201.2.100\"\nport = 80\n");
        assert!(err(&dup).starts_with("service[1].vip"));
    }

    #[test]
    fn reference_configs_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("l4-front") && name.ends_with(".toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
