//! The switch configuration, rendered to the TOML the binary reads
//! (SPEC §1 interface: `[global]`, `[limits]`, `[[service]]`,
//! `[service.forwarding]`, `[service.pool]`, `[[service.server]]`).

use std::fmt::Write as _;
use std::net::SocketAddr;

/// One real server of a service.
#[derive(Clone, Debug)]
pub struct Server {
    pub address: SocketAddr,
    pub weight: u32,
    pub low: u32,
    pub high: u32,
    /// Load agent address (dynamic feedback).
    pub agent: Option<SocketAddr>,
    /// Server sets of content rules (`sets = [...]`); empty: default set.
    pub sets: Vec<String>,
}

impl Server {
    pub fn new(address: SocketAddr) -> Self {
        Server {
            address,
            weight: 1,
            low: 30,
            high: 60,
            agent: None,
            sets: Vec::new(),
        }
    }

    pub fn thresholds(mut self, low: u32, high: u32) -> Self {
        self.low = low;
        self.high = high;
        self
    }

    pub fn sets(mut self, sets: &[&str]) -> Self {
        self.sets = sets.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn weight(mut self, w: u32) -> Self {
        self.weight = w;
        self
    }
}

/// One virtual service. `listen = None` is filled with a free loopback port
/// by [`crate::Ktcpvs::start`].
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub listen: Option<SocketAddr>,
    pub scheduler: String,
    pub x_forwarded_for: bool,
    /// `[service.forwarding] request_id` (X-Request-Id to the servers).
    pub request_id: bool,
    pub x_forwarded_proto: bool,
    pub via: bool,
    /// `[service.forwarding] upgrade` (protocol switches passed on).
    pub upgrade: bool,
    pub max_idle_per_server: u32,
    pub idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    /// Extra TOML tables of the service (e.g. `[service.health]`,
    /// `[service.cls]`, `[service.cache]`), written before its servers.
    pub extra: String,
    pub servers: Vec<Server>,
    /// Extra `key = value` lines of the `[[service]]` table itself.
    pub keys: String,
    /// Extra `key = value` lines of its `[service.pool]` table.
    pub pool_keys: String,
}

/// The whole configuration file.
#[derive(Clone, Debug)]
pub struct Config {
    pub workers: u32,
    pub max_header_bytes: usize,
    pub client_header_timeout_ms: u64,
    pub client_idle_timeout_ms: u64,
    /// Extra `key = value` lines of the `[limits]` table.
    pub limits_keys: String,
    /// `global.metrics` (Prometheus endpoint), if any.
    pub metrics: Option<SocketAddr>,
    pub services: Vec<Service>,
    /// `global.admin_socket`; [`crate::Ktcpvs::start`] puts one in the
    /// test's scratch directory when unset.
    pub admin_socket: Option<String>,
    /// `global.access_log`, if any.
    pub access_log: Option<String>,
}

impl Config {
    /// One service named `web` with the given scheduler and servers (weight
    /// 1, low 30, high 60), two workers, the reference limits and pool.
    pub fn new(scheduler: &str, servers: &[SocketAddr]) -> Self {
        Self::with_servers(scheduler, servers.iter().map(|a| Server::new(*a)).collect())
    }

    pub fn with_servers(scheduler: &str, servers: Vec<Server>) -> Self {
        Config {
            workers: 2,
            max_header_bytes: 16384,
            client_header_timeout_ms: 10_000,
            client_idle_timeout_ms: 60_000,
            limits_keys: String::new(),
            metrics: None,
            admin_socket: None,
            access_log: None,
            services: vec![Service {
                name: "web".into(),
                listen: None,
                scheduler: scheduler.into(),
                x_forwarded_for: true,
                request_id: false,
                x_forwarded_proto: true,
                via: true,
                upgrade: true,
                max_idle_per_server: 64,
                idle_timeout_ms: 4000,
                connect_timeout_ms: 2000,
                response_timeout_ms: 30_000,
                extra: String::new(),
                servers,
                keys: String::new(),
                pool_keys: String::new(),
            }],
        }
    }

    /// The first service, for tweaking.
    pub fn svc(&mut self) -> &mut Service {
        &mut self.services[0]
    }

    /// Renders the TOML file. Services without a listen address are given
    /// `fallback_listen`.
    pub fn to_toml(&self, fallback_listen: SocketAddr) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[global]\nworkers = {}", self.workers);
        if let Some(m) = self.metrics {
            let _ = writeln!(s, "metrics = \"{m}\"");
        }
        if let Some(p) = &self.admin_socket {
            let _ = writeln!(s, "admin_socket = \"{p}\"");
        }
        if let Some(p) = &self.access_log {
            let _ = writeln!(s, "access_log = \"{p}\"");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "[limits]\nmax_header_bytes = {}\nclient_header_timeout_ms = {}\nclient_idle_timeout_ms = {}\n{}",
            self.max_header_bytes, self.client_header_timeout_ms, self.client_idle_timeout_ms, self.limits_keys
        );
        for svc in &self.services {
            let listen = svc.listen.unwrap_or(fallback_listen);
            let _ = writeln!(
                s,
                "[[service]]\nname = \"{}\"\nlisten = \"{}\"\nscheduler = \"{}\"\n{}",
                svc.name, listen, svc.scheduler, svc.keys
            );
            let _ = writeln!(
                s,
                "[service.forwarding]\nx_forwarded_for = {}\nx_forwarded_proto = {}\nvia = {}\nrequest_id = {}\nupgrade = {}\n",
                svc.x_forwarded_for, svc.x_forwarded_proto, svc.via, svc.request_id, svc.upgrade
            );
            let _ = writeln!(
                s,
                "[service.pool]\nmax_idle_per_server = {}\nidle_timeout_ms = {}\nconnect_timeout_ms = {}\nresponse_timeout_ms = {}\n{}",
                svc.max_idle_per_server, svc.idle_timeout_ms, svc.connect_timeout_ms, svc.response_timeout_ms, svc.pool_keys
            );
            s.push_str(&svc.extra);
            s.push('\n');
            for srv in &svc.servers {
                let _ = writeln!(
                    s,
                    "[[service.server]]\naddress = \"{}\"\nweight = {}\nlow = {}\nhigh = {}",
                    srv.address, srv.weight, srv.low, srv.high
                );
                if let Some(a) = srv.agent {
                    let _ = writeln!(s, "agent = \"{a}\"");
                }
                if !srv.sets.is_empty() {
                    let names: Vec<String> = srv.sets.iter().map(|n| format!("{n:?}")).collect();
                    let _ = writeln!(s, "sets = [{}]", names.join(", "));
                }
                s.push('\n');
            }
        }
        s
    }
}
