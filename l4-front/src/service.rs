//! The virtual service table the workers read: services, their real servers
//! (scheduler view, forwarding method, next-hop MAC) and the VIP index.
//! Built once from the checked [`Config`]; the control plane changes only
//! atomics in it (weights, health, resolved MACs).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::{Config, Defense, Method, ServiceConfig};
use crate::conn::{ConnKey, ConnTable};
use crate::hash::SeededState;
use crate::sched::{self, RealServer, Scheduler};

/// One virtual service.
pub struct Service {
    pub cfg: ServiceConfig,
    pub servers: Vec<RealServer>,
    pub methods: Vec<Method>,
    /// The service's scheduler. Locked once per new connection only (as
    /// IPVS' `sched_lock`): rr/wrr positions must be global, not per core,
    /// or every core would start with the same server.
    sched: Mutex<Box<dyn Scheduler>>,
    /// Next-hop MAC of each real server as a u64 (0 = not yet resolved).
    macs: Vec<AtomicU64>,
}

impl Service {
    /// Picks a real server for a new connection from `caddr:cport`.
    pub fn pick(&self, caddr: u32, cport: u16) -> Option<usize> {
        let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        s.pick(&self.servers, caddr, cport)
    }

    /// Rebuilds the scheduler after weight or health changes.
    pub fn rebuild(&self) {
        let mut s = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        s.rebuild(&self.servers);
    }

    pub fn mac(&self, rs: usize) -> Option<[u8; 6]> {
        let v = self.macs.get(rs)?.load(Ordering::Relaxed);
        (v != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    pub fn set_mac(&self, rs: usize, mac: [u8; 6]) {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&mac);
        if let Some(m) = self.macs.get(rs) {
            m.store(u64::from_be_bytes(b), Ordering::Relaxed);
        }
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
}

/// Everything the workers share, read-mostly.
pub struct Shared {
    pub services: Vec<Service>,
    /// <proto, vip, port> → service index.
    pub index: HashMap<(u8, u32, u16), u16, SeededState>,
    pub vips: HashSet<u32, SeededState>,
    /// <proto, real server addr, port> of VS/NAT servers (replies to catch).
    pub nat_servers: HashSet<(u8, u32, u16), SeededState>,
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
        let mut index = HashMap::with_hasher(h);
        let mut vips = HashSet::with_hasher(h);
        let mut nat_servers = HashSet::with_hasher(h);
        let mut services = Vec::new();
        for (i, s) in cfg.services.iter().enumerate() {
            let vip = u32::from(s.vip);
            index.insert((s.proto, vip, s.port), i as u16);
            vips.insert(vip);
            let servers: Vec<RealServer> = s
                .real_servers
                .iter()
                .map(|r| RealServer::new(u32::from(r.addr), r.port, r.weight))
                .collect();
            let sched = sched::by_name(&s.scheduler, &servers)
                .unwrap_or_else(|| Box::new(sched::RoundRobin::default()));
            for r in &s.real_servers {
                if r.method == Method::Nat {
                    nat_servers.insert((s.proto, u32::from(r.addr), r.port));
                }
            }
            let svc = Service {
                cfg: s.clone(),
                servers,
                methods: s.real_servers.iter().map(|r| r.method).collect(),
                sched: Mutex::new(sched),
                macs: s.real_servers.iter().map(|_| AtomicU64::new(0)).collect(),
            };
            for (j, r) in s.real_servers.iter().enumerate() {
                if let Some(m) = r.mac {
                    svc.set_mac(j, m);
                }
            }
            services.push(svc);
        }
        let table = ConnTable::new(
            cfg.director.shards,
            cfg.director.max_connections,
            cfg.timeouts,
            seed ^ 0x5bd1_e995,
        );
        Shared {
            services,
            index,
            vips,
            nat_servers,
            table,
            local_mac,
            local_ip,
            mtu: cfg.director.mtu,
            answer_arp: cfg.director.answer_arp,
            defense: cfg.defense,
            drop_packet_on: AtomicBool::new(cfg.defense.drop_packet == 3),
            active: AtomicBool::new(
                !matches!(cfg.sync, Some(s) if s.role == crate::config::SyncRole::Backup),
            ),
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
        let mut dropped = 0;
        for k in 0..n {
            for c in self.table.drop_half_open(tick as usize * n + k) {
                self.on_expire(&c);
                dropped += 1;
            }
        }
        dropped
    }

    /// Backup: applies one record from the master (ignored unless its
    /// service and real server exist here with the same address).
    pub fn apply_sync(&self, c: crate::conn::Conn, now: u32) {
        let Some(rs) = self
            .services
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
        self.services.iter().map(|s| s.servers.len()).collect()
    }

    /// The persistence template key of client `caddr` for service `svc`:
    /// <proto, client address & netmask, 0, VIP, port>. The protocol's top
    /// bit is set so no real connection (even from port 0) can collide.
    pub fn template_key(&self, svc: u16, caddr: u32) -> ConnKey {
        let s = &self.services[svc as usize].cfg;
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

    /// Called by the slow timer for every expired entry.
    pub fn on_expire(&self, c: &crate::conn::Conn) {
        if c.state == crate::conn::ConnState::Template {
            return;
        }
        if c.persistent {
            self.table
                .release_template(&self.template_key(c.svc, c.key.caddr));
        }
        if let Some(rs) = self
            .services
            .get(c.svc as usize)
            .and_then(|s| s.servers.get(c.rs as usize))
        {
            let ctr = if c.state.is_active() {
                &rs.active
            } else {
                &rs.inactive
            };
            let _ = ctr.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}
