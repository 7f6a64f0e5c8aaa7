//! The virtual service table the workers read: services, their real servers
//! (scheduler view, forwarding method, next-hop MAC) and the VIP index.
//!
//! The table is an immutable snapshot ([`Services`]) behind an `Arc`; run-time
//! changes (`l4adm -A/-E/-D/-a/-e/-d`, see [`Shared::apply`]) build a new
//! snapshot and publish it with a generation bump. A worker compares one
//! atomic generation per packet and fetches the new snapshot only after a
//! change, so the data path never locks for it.
//!
//! Indices are stable for the process' life, because connection entries
//! name their service and real server by index: a deleted service or real
//! server keeps its slot (flagged, weight 0 for the schedulers) so the
//! connections already using it go on until they end, as IPVS keeps a
//! deleted destination on its trash list; adding it back revives the slot.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Defense, Method, RealServerConfig, ServiceConfig};
use crate::conn::{ConnKey, ConnTable};
use crate::hash::SeededState;
use crate::sched::{self, RealServer, Scheduler};

/// One virtual service.
pub struct Service {
    pub cfg: ServiceConfig,
    pub servers: Vec<Arc<RealServer>>,
    pub methods: Vec<Method>,
    /// Deleted at run time: schedules nothing, its connections go on.
    pub deleted: bool,
    /// The service's scheduler. Locked once per new connection only (as
    /// IPVS' `sched_lock`): rr/wrr positions must be global, not per core,
    /// or every core would start with the same server.
    sched: Mutex<Box<dyn Scheduler>>,
}

impl Service {
    fn build(
        cfg: ServiceConfig,
        servers: Vec<Arc<RealServer>>,
        methods: Vec<Method>,
        deleted: bool,
    ) -> Service {
        let sched = sched::by_name(&cfg.scheduler, &servers)
            .unwrap_or_else(|| Box::new(sched::RoundRobin::default()));
        Service {
            cfg,
            servers,
            methods,
            deleted,
            sched: Mutex::new(sched),
        }
    }

    /// Picks a real server for a new connection from `caddr:cport`.
    pub fn pick(&self, caddr: u32, cport: u16) -> Option<usize> {
        if self.deleted {
            return None;
        }
        let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        s.pick(&self.servers, caddr, cport)
    }

    /// Rebuilds the scheduler after weight or health changes.
    pub fn rebuild(&self) {
        let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        s.rebuild(&self.servers);
    }

    pub fn mac(&self, rs: usize) -> Option<[u8; 6]> {
        self.servers.get(rs)?.mac()
    }

    pub fn set_mac(&self, rs: usize, mac: [u8; 6]) {
        if let Some(r) = self.servers.get(rs) {
            r.set_mac(mac);
        }
    }

    /// Index of the real server `addr:port`.
    pub fn find(&self, addr: u32, port: u16) -> Option<usize> {
        self.servers
            .iter()
            .position(|r| r.addr == addr && r.port == port)
    }

    /// `vip:port/proto` for logs and statistics.
    pub fn label(&self) -> String {
        let p = if self.cfg.proto == crate::packet::parse::PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        format!("{}:{}/{p}", self.cfg.vip, self.cfg.port)
    }

    /// The persistence template key of client `caddr` (§5.2.6): <proto,
    /// client address & netmask, 0, VIP, port> — port 0 for an all-ports
    /// service, so every port of the client shares one template. The
    /// protocol's top bit is set so no real connection (even from port 0)
    /// can collide.
    pub fn template_key(&self, caddr: u32) -> ConnKey {
        let s = &self.cfg;
        let mask = match s.persistence_netmask {
            0 => 0,
            n => u32::MAX << (32 - n as u32),
        };
        ConnKey {
            caddr: caddr & mask,
            vaddr: u32::from(s.vip),
            cport: 0,
            vport: s.port,
            proto: s.proto | 0x80,
        }
    }
}

/// One published snapshot of the virtual services.
pub struct Services {
    /// Slot `i` is service index `i` (stable; deleted ones stay).
    pub list: Vec<Arc<Service>>,
    /// <proto, vip, port> → service index (deleted services included, so
    /// their connections still find them). Port 0: all ports of the VIP.
    pub index: HashMap<(u8, u32, u16), u16, SeededState>,
    /// Every VIP in `index`: traffic to it is ours.
    pub vips: HashSet<u32, SeededState>,
    /// VIPs with at least one live service: answered in ARP and announced.
    pub arp_vips: HashSet<u32, SeededState>,
    /// <proto, real server addr, port> of VS/NAT servers (replies to catch);
    /// port 0 for the servers of an all-ports service.
    pub nat_servers: HashSet<(u8, u32, u16), SeededState>,
}

impl Services {
    fn new(list: Vec<Arc<Service>>, h: SeededState) -> Services {
        let mut index = HashMap::with_hasher(h);
        let mut vips = HashSet::with_hasher(h);
        let mut arp_vips = HashSet::with_hasher(h);
        let mut nat_servers = HashSet::with_hasher(h);
        for (i, s) in list.iter().enumerate() {
            let vip = u32::from(s.cfg.vip);
            index.insert((s.cfg.proto, vip, s.cfg.port), i as u16);
            vips.insert(vip);
            if !s.deleted {
                arp_vips.insert(vip);
            }
            for (j, r) in s.servers.iter().enumerate() {
                if s.methods[j] == Method::Nat {
                    nat_servers.insert((s.cfg.proto, r.addr, r.port));
                }
            }
        }
        Services {
            list,
            index,
            vips,
            arp_vips,
            nat_servers,
        }
    }

    /// The service for a packet to `vip:port`: the exact one, else the
    /// VIP's all-ports (port 0) service.
    #[inline]
    pub fn lookup(&self, proto: u8, vip: u32, port: u16) -> Option<u16> {
        match self.index.get(&(proto, vip, port)) {
            Some(&i) => Some(i),
            None => self.index.get(&(proto, vip, 0)).copied(),
        }
    }

    /// Is `addr:port` a VS/NAT real server (whose replies we rewrite)?
    #[inline]
    pub fn is_nat_server(&self, proto: u8, addr: u32, port: u16) -> bool {
        !self.nat_servers.is_empty()
            && (self.nat_servers.contains(&(proto, addr, port))
                || self.nat_servers.contains(&(proto, addr, 0)))
    }

    /// Slot of the service `<proto, vip, port>` (deleted ones included).
    fn slot(&self, proto: u8, vip: u32, port: u16) -> Option<usize> {
        self.index.get(&(proto, vip, port)).map(|&i| i as usize)
    }
}

/// Identifies a virtual service in a run-time change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceKey {
    pub proto: u8,
    pub vip: std::net::Ipv4Addr,
    pub port: u16,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = if self.proto == crate::packet::parse::PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        write!(f, "{}:{}/{p}", self.vip, self.port)
    }
}

/// A run-time change (ipvsadm's commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `-A`: a new service (its real servers come with `-a`).
    AddService(ServiceConfig),
    /// `-E`: scheduler and/or persistence of an existing service.
    EditService {
        key: ServiceKey,
        scheduler: Option<String>,
        persistence: Option<u32>,
        netmask: Option<u8>,
    },
    /// `-D`.
    DeleteService(ServiceKey),
    /// `-a`.
    AddServer(ServiceKey, RealServerConfig),
    /// `-e`: weight and/or forwarding method.
    EditServer {
        key: ServiceKey,
        addr: std::net::Ipv4Addr,
        port: u16,
        weight: Option<u32>,
        method: Option<Method>,
    },
    /// `-d`.
    DeleteServer {
        key: ServiceKey,
        addr: std::net::Ipv4Addr,
        port: u16,
    },
}

/// Everything the workers share, read-mostly.
pub struct Shared {
    /// The current snapshot; the lock is taken only by the control plane
    /// and by a worker that saw `generation` move.
    view: Mutex<Arc<Services>>,
    generation: AtomicU64,
    hasher: SeededState,
    pub table: ConnTable,
    pub local_mac: [u8; 6],
    pub local_ip: u32,
    pub mtu: u16,
    pub answer_arp: bool,
    pub defense: Defense,
    /// drop_packet is active (set by the control thread each second).
    pub drop_packet_on: AtomicBool,
    /// This director owns the VIPs (answers ARP). False on a backup until
    /// it takes over.
    pub active: AtomicBool,
}

impl Shared {
    pub fn new(cfg: &Config, local_mac: [u8; 6], local_ip: u32, seed: u64) -> Shared {
        let h = SeededState::new(seed);
        let list = cfg
            .services
            .iter()
            .map(|s| {
                let servers = s
                    .real_servers
                    .iter()
                    .map(|r| {
                        let rs = RealServer::new(u32::from(r.addr), r.port, r.weight);
                        if let Some(m) = r.mac {
                            rs.set_mac(m);
                        }
                        Arc::new(rs)
                    })
                    .collect();
                let methods = s.real_servers.iter().map(|r| r.method).collect();
                Arc::new(Service::build(s.clone(), servers, methods, false))
            })
            .collect();
        let table = ConnTable::new(
            cfg.director.shards,
            cfg.director.max_connections,
            cfg.timeouts,
            seed ^ 0x5bd1_e995,
        );
        Shared {
            view: Mutex::new(Arc::new(Services::new(list, h))),
            generation: AtomicU64::new(1),
            hasher: h,
            table,
            local_mac,
            local_ip,
            mtu: cfg.director.mtu,
            answer_arp: cfg.director.answer_arp,
            defense: cfg.defense,
            drop_packet_on: AtomicBool::new(cfg.defense.drop_packet == 3),
            // A backup, and a master that may have to take the VIPs back
            // from an active backup, start without them.
            active: AtomicBool::new(
                !matches!(cfg.sync, Some(s) if s.role == crate::config::SyncRole::Backup || s.failback),
            ),
        }
    }

    /// The current snapshot.
    pub fn services(&self) -> Arc<Services> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves on every published change (one atomic load per packet).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies a run-time change: builds and publishes a new snapshot.
    /// Existing connections keep their real server and method.
    pub fn apply(&self, change: Change) -> Result<(), String> {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = view.list.clone();
        let slot = |k: &ServiceKey| view.slot(k.proto, u32::from(k.vip), k.port);
        let live = |k: &ServiceKey| match slot(k) {
            Some(i) if !list[i].deleted => Ok(i),
            _ => Err(format!("no service {k}")),
        };
        match change {
            Change::AddService(cfg) => {
                let key = ServiceKey {
                    proto: cfg.proto,
                    vip: cfg.vip,
                    port: cfg.port,
                };
                if !sched::NAMES.contains(&cfg.scheduler.as_str()) {
                    return Err(format!("unknown scheduler {:?}", cfg.scheduler));
                }
                if cfg.port == 0 && cfg.persistence == 0 {
                    return Err("port 0 (all ports) needs persistence (-p)".into());
                }
                match slot(&key) {
                    Some(i) if !list[i].deleted => return Err(format!("service {key} exists")),
                    Some(i) => {
                        // Revive the slot: its old servers stay, removed,
                        // until added again.
                        let old = &list[i];
                        list[i] = Arc::new(Service::build(
                            cfg,
                            old.servers.clone(),
                            old.methods.clone(),
                            false,
                        ));
                    }
                    None => {
                        if list.len() >= u16::MAX as usize {
                            return Err("too many services".into());
                        }
                        list.push(Arc::new(Service::build(cfg, Vec::new(), Vec::new(), false)));
                    }
                }
            }
            Change::EditService {
                key,
                scheduler,
                persistence,
                netmask,
            } => {
                let i = live(&key)?;
                let old = &list[i];
                let mut cfg = old.cfg.clone();
                if let Some(s) = scheduler {
                    if !sched::NAMES.contains(&s.as_str()) {
                        return Err(format!("unknown scheduler {s:?}"));
                    }
                    cfg.scheduler = s;
                }
                if let Some(p) = persistence {
                    if cfg.port == 0 && p == 0 {
                        return Err("port 0 (all ports) needs persistence".into());
                    }
                    cfg.persistence = p;
                }
                if let Some(m) = netmask {
                    if m > 32 {
                        return Err("netmask: a prefix length 0-32".into());
                    }
                    cfg.persistence_netmask = m;
                }
                list[i] = Arc::new(Service::build(
                    cfg,
                    old.servers.clone(),
                    old.methods.clone(),
                    false,
                ));
            }
            Change::DeleteService(key) => {
                let i = live(&key)?;
                let old = &list[i];
                for r in &old.servers {
                    r.set_removed(true);
                }
                list[i] = Arc::new(Service::build(
                    old.cfg.clone(),
                    old.servers.clone(),
                    old.methods.clone(),
                    true,
                ));
            }
            Change::AddServer(key, rc) => {
                let i = live(&key)?;
                let old = &list[i];
                if old.cfg.port == 0 && rc.port != 0 {
                    return Err("an all-ports service takes real servers without a port".into());
                }
                if rc.method != Method::Nat && rc.port != old.cfg.port {
                    return Err(format!(
                        "{} cannot change the port (service port {}); use -m",
                        rc.method.name(),
                        old.cfg.port
                    ));
                }
                if rc.weight > 65535 {
                    return Err("weight outside 0-65535".into());
                }
                let (mut servers, mut methods) = (old.servers.clone(), old.methods.clone());
                match old.find(u32::from(rc.addr), rc.port) {
                    Some(j) if !servers[j].is_removed() => {
                        return Err(format!("real server {}:{} exists", rc.addr, rc.port))
                    }
                    Some(j) => {
                        // Revived: same slot, so its old connections and
                        // counters stay consistent.
                        servers[j].set_weight(rc.weight);
                        servers[j].set_up(true);
                        servers[j].set_removed(false);
                        methods[j] = rc.method;
                    }
                    None => {
                        if servers.len() >= u16::MAX as usize {
                            return Err("too many real servers".into());
                        }
                        let rs = RealServer::new(u32::from(rc.addr), rc.port, rc.weight);
                        if let Some(m) = rc.mac {
                            rs.set_mac(m);
                        }
                        servers.push(Arc::new(rs));
                        methods.push(rc.method);
                    }
                }
                list[i] = Arc::new(Service::build(old.cfg.clone(), servers, methods, false));
            }
            Change::EditServer {
                key,
                addr,
                port,
                weight,
                method,
            } => {
                let i = live(&key)?;
                let old = &list[i];
                let j = match old.find(u32::from(addr), port) {
                    Some(j) if !old.servers[j].is_removed() => j,
                    _ => return Err(format!("no real server {addr}:{port} in {key}")),
                };
                if let Some(w) = weight {
                    if w > 65535 {
                        return Err("weight outside 0-65535".into());
                    }
                }
                if matches!(method, Some(m) if m != Method::Nat && port != old.cfg.port) {
                    return Err(format!(
                        "only nat may change the port (service port {})",
                        old.cfg.port
                    ));
                }
                if let Some(w) = weight {
                    old.servers[j].set_weight(w);
                }
                match method {
                    Some(m) if m != old.methods[j] => {
                        let mut methods = old.methods.clone();
                        methods[j] = m;
                        list[i] = Arc::new(Service::build(
                            old.cfg.clone(),
                            old.servers.clone(),
                            methods,
                            false,
                        ));
                    }
                    // A weight alone: same snapshot, new scheduler tables.
                    _ => {
                        old.rebuild();
                        return Ok(());
                    }
                }
            }
            Change::DeleteServer { key, addr, port } => {
                let i = live(&key)?;
                let old = &list[i];
                match old.find(u32::from(addr), port) {
                    Some(j) if !old.servers[j].is_removed() => {
                        old.servers[j].set_removed(true);
                    }
                    _ => return Err(format!("no real server {addr}:{port} in {key}")),
                }
                old.rebuild();
                return Ok(());
            }
        }
        *view = Arc::new(Services::new(list, self.hasher));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Rebuilds the scheduler of service `svc` in the current snapshot
    /// (health checks, dynamic feedback).
    pub fn rebuild_service(&self, svc: usize) {
        if let Some(s) = self.services().list.get(svc) {
            s.rebuild();
        }
    }

    /// Once a second: switches the DoS defences on or off by table usage
    /// and, while drop_entry is on, drops the half-open entries of a
    /// rotating 1/32 of the shards (IPVS drops from 1/32 of its table).
    pub fn defend(&self, tick: u32) -> usize {
        let d = &self.defense;
        let (used, max) = (self.table.len(), self.table.max());
        self.drop_packet_on
            .store(d.active(d.drop_packet, used, max), Ordering::Relaxed);
        self.table
            .set_secure(d.active(d.secure_tcp, used, max), d.secure_syn_timeout);
        if !d.active(d.drop_entry, used, max) {
            return 0;
        }
        let n = (self.table.shards() / 32).max(1);
        let view = self.services();
        let mut dropped = 0;
        for k in 0..n {
            for c in self.table.drop_half_open(tick as usize * n + k) {
                self.on_expire_in(&view, &c);
                dropped += 1;
            }
        }
        dropped
    }

    /// Backup: applies one record from the master (ignored unless its
    /// service and real server exist here with the same address).
    pub fn apply_sync(&self, c: crate::conn::Conn, now: u32) {
        let view = self.services();
        let Some(rs) = view
            .list
            .get(c.svc as usize)
            .and_then(|s| s.servers.get(c.rs as usize))
        else {
            return;
        };
        if rs.addr != c.raddr || c.state == crate::conn::ConnState::Template {
            return;
        }
        let ctr = |s: crate::conn::ConnState| {
            if s.is_active() {
                &rs.active
            } else {
                &rs.inactive
            }
        };
        match self.table.insert_synced(c, now) {
            Ok(None) => {
                ctr(c.state).fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(old)) if old.is_active() != c.state.is_active() => {
                let _ = ctr(old)
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
                ctr(c.state).fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Service shape for the statistics blocks.
    pub fn shape(&self) -> Vec<usize> {
        self.services()
            .list
            .iter()
            .map(|s| s.servers.len())
            .collect()
    }

    /// The persistence template key of client `caddr` for service `svc`.
    pub fn template_key(&self, svc: u16, caddr: u32) -> ConnKey {
        match self.services().list.get(svc as usize) {
            Some(s) => s.template_key(caddr),
            None => ConnKey::default(),
        }
    }

    /// Called by the slow timer for every expired entry.
    pub fn on_expire(&self, c: &crate::conn::Conn) {
        self.on_expire_in(&self.services(), c)
    }

    /// As [`Shared::on_expire`] with a snapshot the caller already holds.
    pub fn on_expire_in(&self, view: &Services, c: &crate::conn::Conn) {
        if c.state == crate::conn::ConnState::Template {
            return;
        }
        let Some(s) = view.list.get(c.svc as usize) else {
            return;
        };
        if c.persistent {
            self.table.release_template(&s.template_key(c.key.caddr));
        }
        if let Some(rs) = s.servers.get(c.rs as usize) {
            let ctr = if c.state.is_active() {
                &rs.active
            } else {
                &rs.inactive
            };
            let _ = ctr.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}
