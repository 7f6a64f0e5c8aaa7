//! The runtime model: what can change while the switch runs (tcpvsadm,
//! SIGHUP reload) and how the workers see the change.
//!
//! The services are published as one immutable [`Snapshot`] behind a mutex,
//! with a generation counter next to it. A worker compares the counter
//! with the generation it last saw — one relaxed atomic load per request
//! or accepted connection — and only when it differs takes the mutex,
//! clones the `Arc<Snapshot>` and rebuilds its own view
//! (`worker::Worker::refresh`). A watch channel also wakes every worker on
//! a change, so idle workers start accepting on new services at once.
//!
//! Identity survives a change: a service keeps its id, listeners, close
//! signal and counters across versions; a server keeps its id and shared
//! state ([`Server::share`]), so in-flight counts, up/down state and
//! counters carry over, requests still running on an older version update
//! the same atomics, and the per-worker keep-alive pools (keyed by server
//! id) keep the idle connections of the servers that remain.
//!
//! Changes are serialised by one admin mutex and run on the admin or
//! signal thread, never on a worker.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Config, RawConfig, RawServer, RawService, ServerConfig, ServiceConfig};
use crate::sched::lblc::LocalityTable;
use crate::sched::{SchedulerKind, Server, ServerSet};

/// Most servers a service may have (the size of the exclusion bitset).
pub use crate::sched::MAX_SERVERS;

/// Counters of one service that survive its versions.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Client connections accepted (zeroed by `tcpvsadm -Z`).
    pub connections: AtomicU64,
}

/// One version of a virtual service, shared by all workers.
pub struct ServiceShared {
    /// Stable across versions.
    pub id: u64,
    pub cfg: ServiceConfig,
    /// The bound listening address (the configured one, port 0 resolved).
    pub addr: SocketAddr,
    pub servers: ServerSet,
    pub table: Arc<LocalityTable>,
    /// One listener per worker, taken by each worker the first time it
    /// sees the service.
    listeners: Arc<Mutex<Vec<Option<std::net::TcpListener>>>>,
    /// Turns true when the service is deleted: accept loops stop.
    pub closed: Arc<watch::Sender<bool>>,
    pub counters: Arc<ServiceCounters>,
}

impl ServiceShared {
    /// Worker `worker`'s listener, once.
    pub fn take_listener(&self, worker: usize) -> Option<std::net::TcpListener> {
        lock(&self.listeners).get_mut(worker).and_then(Option::take)
    }

    /// Does `key` (a name, the configured or the bound address) name it?
    fn is(&self, key: &str) -> bool {
        self.cfg.name == key || self.addr.to_string() == key || self.cfg.listen.to_string() == key
    }
}

/// Every service, as published at one generation.
pub struct Snapshot {
    pub generation: u64,
    pub services: Vec<Arc<ServiceShared>>,
}

/// The switch's changeable state.
pub struct Runtime {
    /// The configuration the switch started with (globals and limits are
    /// read at start only).
    pub cfg: Arc<Config>,
    generation: AtomicU64,
    snap: Mutex<Arc<Snapshot>>,
    changed: watch::Sender<u64>,
    /// Serialises changes.
    admin: Mutex<()>,
    next_service_id: AtomicU64,
    /// The access log (`global.access_log`), set once at start.
    pub access_log: std::sync::OnceLock<Arc<crate::access_log::AccessLog>>,
}

/// A refused change; the message is what tcpvsadm prints.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, AdminError> {
    Err(AdminError(msg.into()))
}

/// Locks, ignoring poisoning (the data under these locks is only ever
/// replaced whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bind_reuseport(addr: SocketAddr, transparent: bool) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if transparent {
        // TPROXY cache front: accept connections addressed to any IP.
        s.set_ip_transparent(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Refuses an address another process already listens on: with
/// SO_REUSEPORT on both sides the kernel would let us bind it too and
/// share its connections between the two processes (a forgotten old
/// instance would silently take part of the traffic). A probe socket
/// without SO_REUSEPORT finds out; it is closed before the listeners are
/// bound. Port 0 needs no probe.
fn ensure_not_listened(addr: SocketAddr, transparent: bool) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if transparent {
        s.set_ip_transparent(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                "address in use: another process listens on it (is another ktcpvs running?)",
            )
        } else {
            e
        }
    })
}

/// A service's locality table (lblc's slots are sized only for lblc).
fn new_table(cfg: &ServiceConfig) -> LocalityTable {
    LocalityTable::for_kind(cfg.scheduler, cfg.lblc_max_entries).with_shrink(cfg.lblcr_shrink)
}

/// Server settings as tcpvsadm gives them (unset: keep, or the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerArgs {
    pub weight: Option<u32>,
    pub low: Option<u32>,
    pub high: Option<u32>,
}

/// The checks of `config.rs` for one server's numbers.
fn check_server(r: &ServerConfig) -> Result<(), AdminError> {
    if r.address.port() == 0 {
        return err("server: port 0 is not a server port");
    }
    if r.weight > 65_535 {
        return err("weight: must be at most 65535");
    }
    if r.high == 0 {
        return err("high: must be greater than 0");
    }
    if r.low > r.high {
        return err(format!("low: must not exceed high ({})", r.high));
    }
    Ok(())
}

impl Runtime {
    pub fn new(cfg: Arc<Config>) -> Arc<Runtime> {
        Arc::new(Runtime {
            cfg,
            generation: AtomicU64::new(0),
            snap: Mutex::new(Arc::new(Snapshot {
                generation: 0,
                services: Vec::new(),
            })),
            changed: watch::channel(0).0,
            admin: Mutex::new(()),
            next_service_id: AtomicU64::new(1),
            access_log: std::sync::OnceLock::new(),
        })
    }

    /// The published generation (one relaxed load: the request path).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.snap).clone()
    }

    /// Wakes on every published change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn publish(&self, services: Vec<Arc<ServiceShared>>) -> u64 {
        let mut g = lock(&self.snap);
        let generation = g.generation + 1;
        // Values from the configuration into the shared server state, now
        // that nothing can fail any more.
        for s in &services {
            for (srv, c) in s.servers.iter().zip(&s.cfg.servers) {
                // Only a changed configured weight resets the effective
                // one (which dynamic feedback may have moved).
                if srv.health.base_weight.load(Relaxed) != c.weight {
                    srv.set_weight(c.weight);
                }
                *srv.health.agent.lock().unwrap_or_else(|e| e.into_inner()) = c.agent;
                srv.low.store(c.low, Relaxed);
                srv.high.store(c.high, Relaxed);
            }
        }
        let old = std::mem::replace(
            &mut *g,
            Arc::new(Snapshot {
                generation,
                services,
            }),
        );
        self.generation.store(generation, Relaxed);
        // Services that left: their accept loops stop.
        for s in &old.services {
            if !g.services.iter().any(|n| n.id == s.id) {
                s.closed.send_replace(true);
            }
        }
        drop(g);
        self.changed.send_replace(generation);
        generation
    }

    /// Binds a new service's listeners (one per worker) and builds its
    /// first version.
    /// `ours`: this process listens on the address already (a service
    /// renamed by a reload), so only another process's listener is refused.
    fn new_service(
        &self,
        cfg: ServiceConfig,
        ours: bool,
    ) -> Result<Arc<ServiceShared>, (SocketAddr, std::io::Error)> {
        let mut addr = cfg.listen;
        let mut ls = Vec::with_capacity(self.cfg.workers);
        let tproxy = cfg
            .cache
            .as_ref()
            .is_some_and(|c| c.transparent == crate::cache::Transparent::Tproxy);
        if !ours {
            ensure_not_listened(addr, tproxy).map_err(|e| (addr, e))?;
        }
        for wid in 0..self.cfg.workers {
            let l = bind_reuseport(addr, tproxy).map_err(|e| (addr, e))?;
            if wid == 0 {
                addr = l.local_addr().map_err(|e| (addr, e))?;
            }
            ls.push(Some(l));
        }
        let servers: Vec<Server> = cfg.servers.iter().map(crate::health::new_server).collect();
        Ok(Arc::new(ServiceShared {
            id: self.next_service_id.fetch_add(1, Relaxed),
            addr,
            servers: servers.into(),
            table: Arc::new(new_table(&cfg)),
            cfg,
            listeners: Arc::new(Mutex::new(ls)),
            closed: Arc::new(watch::channel(false).0),
            counters: Arc::default(),
        }))
    }

    /// The next version of `old` with this configuration and server list.
    /// The locality table (target → server index) is kept while the old
    /// indices stay valid (servers only appended).
    fn derive(
        old: &ServiceShared,
        mut cfg: ServiceConfig,
        servers: Vec<Server>,
    ) -> Arc<ServiceShared> {
        // Content rules hold server-index masks: recompute them.
        cfg.rules = cfg.rules.remap(&cfg.servers);
        let prefix = old.servers.len() <= servers.len()
            && old.servers.iter().zip(&servers).all(|(a, b)| a.id == b.id);
        let same_table = old.cfg.lblc_max_entries == cfg.lblc_max_entries
            && (old.cfg.scheduler == SchedulerKind::Lblc) == (cfg.scheduler == SchedulerKind::Lblc)
            && old.cfg.lblcr_shrink == cfg.lblcr_shrink;
        let table = if prefix && same_table {
            old.table.clone()
        } else {
            Arc::new(new_table(&cfg))
        };
        Arc::new(ServiceShared {
            id: old.id,
            addr: old.addr,
            servers: servers.into(),
            table,
            cfg,
            listeners: old.listeners.clone(),
            closed: old.closed.clone(),
            counters: old.counters.clone(),
        })
    }

    /// Publishes the services of the start configuration.
    pub(crate) fn start(&self) -> Result<Vec<SocketAddr>, (String, SocketAddr, std::io::Error)> {
        let mut out = Vec::new();
        for s in &self.cfg.services {
            let sh = self
                .new_service(s.clone(), false)
                .map_err(|(a, e)| (s.name.clone(), a, e))?;
            out.push(sh);
        }
        let addrs = out.iter().map(|s| s.addr).collect();
        self.publish(out);
        Ok(addrs)
    }

    fn find(snap: &Snapshot, key: &str) -> Result<usize, AdminError> {
        snap.services
            .iter()
            .position(|s| s.is(key))
            .ok_or_else(|| AdminError(format!("no service {key:?} (see tcpvsadm -L)")))
    }

    /// Applies `f` to a copy of the service list and publishes the result.
    fn change(
        &self,
        f: impl FnOnce(&Runtime, &mut Vec<Arc<ServiceShared>>) -> Result<String, AdminError>,
    ) -> Result<String, AdminError> {
        let _g = lock(&self.admin);
        let snap = self.snapshot();
        let mut services = snap.services.clone();
        let msg = f(self, &mut services)?;
        let generation = self.publish(services);
        info!(generation, "{msg}");
        Ok(msg)
    }

    pub fn add_service(
        &self,
        listen: SocketAddr,
        scheduler: Option<SchedulerKind>,
        name: Option<String>,
    ) -> Result<String, AdminError> {
        self.change(|rt, services| {
            // Default name: the address with what a name may not hold
            // replaced ("127.0.0.1_8080").
            let name = name.unwrap_or_else(|| {
                listen
                    .to_string()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect::<String>()
                    .trim_matches('_')
                    .to_string()
            });
            if services.iter().any(|s| s.cfg.name == name) {
                return err(format!("service {name:?} exists already"));
            }
            if listen.port() != 0 && services.iter().any(|s| s.addr == listen) {
                return err(format!("a service listens on {listen} already"));
            }
            // The defaults of a [[service]] without options, checked by the
            // configuration code itself (one placeholder server).
            let raw = RawConfig {
                service: vec![RawService {
                    name: Some(name.clone()),
                    listen: Some(listen.to_string()),
                    scheduler: scheduler.map(|k| k.name().to_string()),
                    client_congestion: None,
                    forwarding: Default::default(),
                    pool: Default::default(),
                    lblc: Default::default(),
                    health: Default::default(),
                    feedback: Default::default(),
                    mode: None,
                    cls: None,
                    cache: None,
                    chash: Default::default(),
                    rule: Vec::new(),
                    server: vec![RawServer {
                        address: Some("127.0.0.1:1".into()),
                        weight: None,
                        low: None,
                        high: None,
                        agent: None,
                        sets: None,
                    }],
                }],
                ..Default::default()
            };
            let mut cfg = raw
                .validate()
                .map_err(|e| AdminError(e.to_string().replace("service[0].", "")))?
                .services
                .remove(0);
            cfg.servers.clear();
            let sh = rt
                .new_service(cfg, false)
                .map_err(|(a, e)| AdminError(format!("cannot listen on {a}: {e}")))?;
            let msg = format!(
                "added service {name} on {} ({})",
                sh.addr,
                sh.cfg.scheduler.name()
            );
            services.push(sh);
            Ok(msg)
        })
    }

    pub fn edit_service(
        &self,
        key: &str,
        scheduler: Option<SchedulerKind>,
    ) -> Result<String, AdminError> {
        self.change(|_, services| {
            let k = Self::find_in(services, key)?;
            let old = &services[k];
            let mut cfg = old.cfg.clone();
            if let Some(s) = scheduler {
                cfg.scheduler = s;
            }
            let servers = old.servers.iter().map(Server::share).collect();
            let msg = format!("edited service {} ({})", cfg.name, cfg.scheduler.name());
            services[k] = Self::derive(old, cfg, servers);
            Ok(msg)
        })
    }

    pub fn del_service(&self, key: &str) -> Result<String, AdminError> {
        self.change(|_, services| {
            let k = Self::find_in(services, key)?;
            let old = services.remove(k);
            Ok(format!("deleted service {} ({})", old.cfg.name, old.addr))
        })
    }

    pub fn add_server(
        &self,
        key: &str,
        addr: SocketAddr,
        a: ServerArgs,
    ) -> Result<String, AdminError> {
        self.change(|_, services| {
            let k = Self::find_in(services, key)?;
            let old = &services[k];
            if old.servers.iter().any(|s| s.addr == addr) {
                return err(format!(
                    "server {addr} exists already in service {}",
                    old.cfg.name
                ));
            }
            if old.servers.len() >= MAX_SERVERS {
                return err(format!("at most {MAX_SERVERS} servers per service"));
            }
            let r = ServerConfig {
                address: addr,
                weight: a.weight.unwrap_or(1),
                low: a.low.unwrap_or(30),
                high: a.high.unwrap_or(60),
                agent: None,
                sets: Vec::new(),
            };
            check_server(&r)?;
            let mut cfg = old.cfg.clone();
            cfg.servers.push(r.clone());
            let mut servers: Vec<Server> = old.servers.iter().map(Server::share).collect();
            servers.push(crate::health::new_server(&r));
            let msg = format!(
                "added server {addr} to service {} (weight {})",
                cfg.name, r.weight
            );
            services[k] = Self::derive(old, cfg, servers);
            Ok(msg)
        })
    }

    pub fn edit_server(
        &self,
        key: &str,
        addr: SocketAddr,
        a: ServerArgs,
    ) -> Result<String, AdminError> {
        self.change(|_, services| {
            let k = Self::find_in(services, key)?;
            let old = &services[k];
            let j = Self::find_server(old, addr)?;
            let mut cfg = old.cfg.clone();
            let r = &mut cfg.servers[j];
            r.weight = a.weight.unwrap_or(r.weight);
            r.low = a.low.unwrap_or(r.low);
            r.high = a.high.unwrap_or(r.high);
            check_server(r)?;
            let msg = format!(
                "edited server {addr} of service {} (weight {}, low {}, high {})",
                cfg.name, r.weight, r.low, r.high
            );
            let servers = old.servers.iter().map(Server::share).collect();
            services[k] = Self::derive(old, cfg, servers);
            Ok(msg)
        })
    }

    pub fn del_server(&self, key: &str, addr: SocketAddr) -> Result<String, AdminError> {
        self.change(|_, services| {
            let k = Self::find_in(services, key)?;
            let old = &services[k];
            let j = Self::find_server(old, addr)?;
            let mut cfg = old.cfg.clone();
            cfg.servers.remove(j);
            let servers = old
                .servers
                .iter()
                .filter(|s| s.addr != addr)
                .map(Server::share)
                .collect();
            let msg = format!("deleted server {addr} from service {}", cfg.name);
            services[k] = Self::derive(old, cfg, servers);
            Ok(msg)
        })
    }

    fn find_in(services: &[Arc<ServiceShared>], key: &str) -> Result<usize, AdminError> {
        services
            .iter()
            .position(|s| s.is(key))
            .ok_or_else(|| AdminError(format!("no service {key:?} (see tcpvsadm -L)")))
    }

    fn find_server(s: &ServiceShared, addr: SocketAddr) -> Result<usize, AdminError> {
        s.servers
            .iter()
            .position(|x| x.addr == addr)
            .ok_or_else(|| AdminError(format!("no server {addr} in service {}", s.cfg.name)))
    }

    /// Zeroes the counters shown by `tcpvsadm -L --stats` (the Prometheus
    /// counters are never reset).
    pub fn zero(&self, key: Option<&str>) -> Result<String, AdminError> {
        let _g = lock(&self.admin);
        let snap = self.snapshot();
        let list: Vec<&Arc<ServiceShared>> = match key {
            Some(k) => vec![&snap.services[Self::find(&snap, k)?]],
            None => snap.services.iter().collect(),
        };
        for s in &list {
            s.counters.connections.store(0, Relaxed);
            for srv in s.servers.iter() {
                srv.requests.store(0, Relaxed);
            }
        }
        Ok(format!("zeroed the counters of {} service(s)", list.len()))
    }

    /// Re-reads the configuration file and applies it as a diff: services
    /// are matched by name and listen address, servers by address; those
    /// that match keep their state, connections and counters. An invalid
    /// file (or a listener that cannot be bound) changes nothing.
    pub fn reload(&self) -> Result<String, AdminError> {
        // logrotate: the access log is re-opened whatever the outcome.
        if let Some(al) = self.access_log.get() {
            al.reopen();
        }
        let Some(path) = self.cfg.source.clone() else {
            return err("reload: the switch was not started from a configuration file");
        };
        let res = self.change(|rt, services| {
            let new = Config::from_file(&path)
                .map_err(|e| AdminError(format!("reload refused, {}: {e}", path.display())))?;
            let mut next = Vec::with_capacity(new.services.len());
            let (mut kept, mut renamed, mut added) = (0, 0, 0);
            let tproxy = |c: &ServiceConfig| {
                c.cache
                    .as_ref()
                    .is_some_and(|c| c.transparent == crate::cache::Transparent::Tproxy)
            };
            for sc in new.services {
                let same = services
                    .iter()
                    .find(|s| s.cfg.name == sc.name && s.cfg.listen == sc.listen);
                // A service renamed on the same address keeps its
                // listeners: closing them would reset the connections the
                // kernel is completing on them at that moment.
                let moved = same.is_none().then(|| {
                    services.iter().find(|s| {
                        sc.listen.port() != 0
                            && s.cfg.listen == sc.listen
                            && tproxy(&s.cfg) == tproxy(&sc)
                            && !next.iter().any(|n: &Arc<ServiceShared>| n.id == s.id)
                    })
                });
                match same.or(moved.flatten()) {
                    Some(old) => {
                        let servers = sc
                            .servers
                            .iter()
                            .map(|r| match old.servers.iter().find(|x| x.addr == r.address) {
                                Some(x) => x.share(),
                                None => crate::health::new_server(r),
                            })
                            .collect();
                        if same.is_some() {
                            kept += 1;
                        } else {
                            renamed += 1;
                        }
                        next.push(Self::derive(old, sc, servers));
                    }
                    None => {
                        let name = sc.name.clone();
                        let ours = services.iter().any(|s| s.addr == sc.listen);
                        next.push(rt.new_service(sc, ours).map_err(|(a, e)| {
                            AdminError(format!(
                                "reload refused, service {name:?}: cannot listen on {a}: {e}"
                            ))
                        })?);
                        added += 1;
                    }
                }
            }
            let deleted = services
                .iter()
                .filter(|s| !next.iter().any(|n| n.id == s.id))
                .count();
            let mut msg = format!(
                "reloaded {}: {kept} service(s) kept, {renamed} renamed, {added} added, {deleted} deleted",
                path.display()
            );
            let restart = new.workers != rt.cfg.workers
                || new.metrics != rt.cfg.metrics
                || new.admin_socket != rt.cfg.admin_socket
                || format!("{:?}", new.limits) != format!("{:?}", rt.cfg.limits)
                || new.shutdown_grace != rt.cfg.shutdown_grace
                || new.splice_threshold != rt.cfg.splice_threshold;
            if restart {
                msg.push_str(
                    "; note: [global] and [limits] changed, which apply only after a restart",
                );
            }
            *services = next;
            Ok(msg)
        });
        if let Err(e) = &res {
            warn!("{e}; the running configuration is unchanged");
        }
        res
    }

    /// The `tcpvsadm -L` table (like `ipvsadm -L -n [--stats]`).
    pub fn list(&self, key: Option<&str>, stats: bool) -> Result<String, AdminError> {
        let snap = self.snapshot();
        let list = self.select(&snap, key)?;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "KTCPVS version {} (generation {})",
            env!("CARGO_PKG_VERSION"),
            snap.generation
        );
        let _ = write!(
            o,
            "{:<16} {:<24} {:<9}",
            "Name", "LocalAddress:Port", "Scheduler"
        );
        if stats {
            let _ = write!(o, " {:>10} {:>10}", "Conns", "Requests");
        }
        let _ = write!(
            o,
            "\n  -> {:<35} {:>6} {:>5} {:>5} {:>8} {:<5}",
            "RemoteAddress:Port", "Weight", "Low", "High", "InFlight", "State"
        );
        if stats {
            let _ = write!(o, " {:>10}", "Requests");
        }
        o.push('\n');
        for s in list {
            let reqs: u64 = s.servers.iter().map(|x| x.requests.load(Relaxed)).sum();
            let _ = write!(
                o,
                "{:<16} {:<24} {:<9}",
                s.cfg.name,
                s.addr.to_string(),
                s.cfg.scheduler.name()
            );
            if stats {
                let _ = write!(
                    o,
                    " {:>10} {:>10}",
                    s.counters.connections.load(Relaxed),
                    reqs
                );
            }
            o.push('\n');
            for x in s.servers.iter() {
                let _ = write!(
                    o,
                    "  -> {:<35} {:>6} {:>5} {:>5} {:>8} {:<5}",
                    x.addr.to_string(),
                    x.weight(),
                    x.low.load(Relaxed),
                    x.high.load(Relaxed),
                    x.conns(),
                    if x.up.load(Relaxed) { "up" } else { "down" }
                );
                if stats {
                    let _ = write!(o, " {:>10}", x.requests.load(Relaxed));
                }
                o.push('\n');
            }
        }
        Ok(o)
    }

    /// The same as JSON (always with the counters).
    pub fn list_json(&self, key: Option<&str>) -> Result<String, AdminError> {
        let snap = self.snapshot();
        let list = self.select(&snap, key)?;
        let mut o = format!("{{\"generation\":{},\"services\":[", snap.generation);
        for (k, s) in list.iter().enumerate() {
            if k > 0 {
                o.push(',');
            }
            let reqs: u64 = s.servers.iter().map(|x| x.requests.load(Relaxed)).sum();
            let _ = write!(
                o,
                "{{\"name\":{},\"listen\":\"{}\",\"scheduler\":\"{}\",\"connections\":{},\"requests\":{},\"servers\":[",
                json_str(&s.cfg.name),
                s.addr,
                s.cfg.scheduler.name(),
                s.counters.connections.load(Relaxed),
                reqs
            );
            for (j, x) in s.servers.iter().enumerate() {
                if j > 0 {
                    o.push(',');
                }
                let _ = write!(
                    o,
                    "{{\"address\":\"{}\",\"weight\":{},\"low\":{},\"high\":{},\"inflight\":{},\"up\":{},\"requests\":{}}}",
                    x.addr,
                    x.weight(),
                    x.low.load(Relaxed),
                    x.high.load(Relaxed),
                    x.conns(),
                    x.up.load(Relaxed),
                    x.requests.load(Relaxed)
                );
            }
            o.push_str("]}");
        }
        o.push_str("]}\n");
        Ok(o)
    }

    fn select<'a>(
        &self,
        snap: &'a Snapshot,
        key: Option<&str>,
    ) -> Result<Vec<&'a Arc<ServiceShared>>, AdminError> {
        Ok(match key {
            Some(k) => vec![&snap.services[Self::find(snap, k)?]],
            None => snap.services.iter().collect(),
        })
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(text: &str) -> Arc<Runtime> {
        let cfg = Config::from_toml(text).unwrap();
        let rt = Runtime::new(Arc::new(Config { workers: 2, ..cfg }));
        rt.start().unwrap();
        rt
    }

    const ONE: &str = r#"
        [[service]]
        name = "web"
        listen = "127.0.0.1:0"
        scheduler = "wrr"
        [[service.server]]
        address = "127.0.0.1:9001"
        [[service.server]]
        address = "127.0.0.1:9002"
    "#;

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        // The accept loop relies on it instead of a setsockopt per
        // connection.
        let l = bind_reuseport("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap());
    }

    #[test]
    fn servers_keep_identity_and_state_across_changes() {
        let rt = rt(ONE);
        let before = rt.snapshot();
        let s0 = &before.services[0].servers[0];
        s0.conns.fetch_add(3, Relaxed);
        rt.add_server(
            "web",
            "127.0.0.1:9003".parse().unwrap(),
            ServerArgs::default(),
        )
        .unwrap();
        rt.edit_server(
            "web",
            "127.0.0.1:9001".parse().unwrap(),
            ServerArgs {
                weight: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        let after = rt.snapshot();
        assert_eq!(after.generation, before.generation + 2);
        let s = &after.services[0];
        assert_eq!(s.id, before.services[0].id);
        assert_eq!(s.servers.len(), 3);
        assert_eq!(s.servers[0].id, s0.id);
        assert_eq!(s.servers[0].conns(), 3, "in-flight count carried over");
        assert_eq!(s0.weight(), 5, "old version sees the new weight");
        // appended only: locality table kept
        assert!(Arc::ptr_eq(&s.table, &before.services[0].table));
        rt.del_server("web", "127.0.0.1:9001".parse().unwrap())
            .unwrap();
        let s = &rt.snapshot().services[0];
        assert_eq!(s.servers.len(), 2);
        assert!(!Arc::ptr_eq(&s.table, &before.services[0].table));
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let rt = rt(ONE);
        let g = rt.generation();
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert!(
            rt.add_server("web", a, ServerArgs::default()).is_err(),
            "duplicate"
        );
        assert!(rt.add_server("nope", a, ServerArgs::default()).is_err());
        let e = rt
            .edit_server(
                "web",
                a,
                ServerArgs {
                    low: Some(100),
                    high: Some(50),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.0.starts_with("low:"), "{e}");
        assert!(rt.reload().is_err(), "no file to reload");
        assert_eq!(rt.generation(), g);
        assert_eq!(rt.snapshot().services[0].servers[0].weight(), 1);
    }

    #[test]
    fn services_are_added_and_deleted() {
        let rt = rt(ONE);
        let msg = rt
            .add_service(
                "127.0.0.1:0".parse().unwrap(),
                Some(SchedulerKind::Rr),
                Some("api".into()),
            )
            .unwrap();
        assert!(msg.contains("api"), "{msg}");
        let snap = rt.snapshot();
        assert_eq!(snap.services.len(), 2);
        let api = snap.services[1].clone();
        assert!(api.servers.is_empty());
        assert!(api.take_listener(0).is_some());
        assert!(api.take_listener(0).is_none(), "taken once");
        rt.edit_service("api", Some(SchedulerKind::Lc)).unwrap();
        assert_eq!(rt.snapshot().services[1].cfg.scheduler, SchedulerKind::Lc);
        assert!(!*api.closed.borrow());
        rt.del_service("api").unwrap();
        assert!(
            *api.closed.borrow(),
            "deleting a service closes its accept loops"
        );
        assert_eq!(rt.snapshot().services.len(), 1);
        let json = rt.list_json(None).unwrap();
        assert!(json.contains("\"name\":\"web\""), "{json}");
    }
}
