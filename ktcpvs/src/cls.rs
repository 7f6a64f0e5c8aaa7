//! The distributor side of the Content Location Service (thesis chapter 7,
//! issue 4): a service with `[service.cls]` asks the CLS where each request
//! goes, through one [`ClsClient`] per worker (self-clocking batches, one in
//! flight; see `cls-server/src/client.rs`).
//!
//! * **Content id**: MD5 of the request target (the path without query
//!   string), `cls_server::proto::content_id`. In cache mode the host is not
//!   part of it: two origins' `/index.html` share a placement, which costs
//!   nothing (each cache keys its store by host and path itself).
//! * **Server ids**: the CLS announces its server table (id → address) in
//!   `HelloAck`; an answer's id is mapped to the service server with the
//!   *same address*. An id with no such server, a server that is down or
//!   already failed for this request, NONE, a timeout (`timeout_ms`), an
//!   unreachable CLS: the worker's own scheduler decides. No client request
//!   waits longer than `timeout_ms` for the CLS or fails because of it.
//! * **Load reports**: each worker counts its own in-flight connection
//!   units per server ([`ClsRt::track`]) and reports them every
//!   `report_interval_ms` (the CLS sums the distributors' reports).
//! * **Co-located** (figure 7.4): `node` is this node's CLS server id (sent
//!   in Hello; LBLL prefers it); `local_server` names which of the
//!   service's servers is this node's own, and `local_address` where to
//!   reach it (loopback) — every connection to that server goes there.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use cls_server::client::{Answer, ClientConfig, ClsClient};
use serde::Deserialize;

use crate::config::{field_err, positive_ms, ConfigError, ServerConfig};
use crate::sched::{Exclude, Server};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCls {
    pub address: Option<String>,
    pub node: Option<u16>,
    pub local_server: Option<String>,
    pub local_address: Option<String>,
    pub timeout_ms: Option<u64>,
    pub max_batch: Option<usize>,
    pub report_interval_ms: Option<u64>,
}

/// Checked `[service.cls]`.
#[derive(Debug, Clone)]
pub struct ClsConfig {
    pub address: SocketAddr,
    pub node: Option<u16>,
    /// This node's own server (its address in the service's list), and
    /// where to reach it (co-located mode). By address, not index, so that
    /// it survives runtime changes to the server list.
    pub local: Option<(SocketAddr, SocketAddr)>,
    pub timeout: Duration,
    pub max_batch: usize,
    pub report_interval: Duration,
}

fn addr(field: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse::<SocketAddr>()
        .map_err(|e| field_err(field, format!("not an address ip:port ({e})")))
}

impl RawCls {
    /// `prefix` is e.g. `service[0].cls`.
    pub fn check(self, prefix: &str, servers: &[ServerConfig]) -> Result<ClsConfig, ConfigError> {
        let f = |n: &str| format!("{prefix}.{n}");
        let address = addr(
            &f("address"),
            self.address
                .as_deref()
                .ok_or_else(|| field_err(f("address"), "is required (ip:port of the CLS)"))?,
        )?;
        if self.node == Some(cls_server::proto::NO_NODE) {
            return Err(field_err(f("node"), "must be at most 65534"));
        }
        let local = match (self.local_server, self.local_address) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(field_err(
                    f("local_address"),
                    "is required with local_server (where to reach the local server, e.g. 127.0.0.1:80)",
                ))
            }
            (None, Some(_)) => {
                return Err(field_err(
                    f("local_server"),
                    "is required with local_address (which [[service.server]] is this node's)",
                ))
            }
            (Some(s), Some(a)) => {
                let s = addr(&f("local_server"), &s)?;
                if !servers.iter().any(|r| r.address == s) {
                    return Err(field_err(
                        f("local_server"),
                        format!("{s} is not one of this service's servers"),
                    ));
                }
                Some((s, addr(&f("local_address"), &a)?))
            }
        };
        let max_batch = self.max_batch.unwrap_or(256);
        if !(1..=cls_server::proto::MAX_BATCH).contains(&max_batch) {
            return Err(field_err(f("max_batch"), "must be between 1 and 1024"));
        }
        Ok(ClsConfig {
            address,
            node: self.node,
            local,
            timeout: positive_ms(&f("timeout_ms"), self.timeout_ms, 20)?,
            max_batch,
            report_interval: positive_ms(&f("report_interval_ms"), self.report_interval_ms, 100)?,
        })
    }
}

/// Where the CLS says a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// This index of the service's servers.
    Server(usize),
    /// Bypass the caches (cache mode).
    Origin,
    /// No usable answer: decide locally.
    Local,
}

/// No service server for this CLS id.
const UNMAPPED: u16 = u16::MAX;

/// One worker's CLS state for one service.
pub struct ClsRt {
    client: Rc<ClsClient>,
    cfg: ClsConfig,
    /// CLS server id → service server index (or UNMAPPED); rebuilt after
    /// every (re)connection, since the CLS's table may have changed.
    map: RefCell<Vec<u16>>,
    map_epoch: Cell<u64>,
    /// This worker's in-flight connection units per service server.
    inflight: Vec<Cell<u32>>,
}

impl ClsRt {
    /// Starts the client and the load reporter on the current worker
    /// runtime (inside its `LocalSet`).
    ///
    /// `reuse`: the client of the previous version of the service on this
    /// worker (runtime changes), kept if the CLS settings did not change,
    /// so a server-list change does not reconnect to the CLS.
    pub fn start(
        cfg: &ClsConfig,
        worker: usize,
        servers: &crate::sched::ServerSet,
        shutdown: tokio::sync::watch::Receiver<bool>,
        reuse: Option<(Rc<ClsClient>, ClsConfig)>,
    ) -> Rc<ClsRt> {
        let client = match reuse {
            Some((c, old))
                if old.address == cfg.address
                    && old.node == cfg.node
                    && old.timeout == cfg.timeout
                    && old.max_batch == cfg.max_batch =>
            {
                c
            }
            _ => {
                let mut cc = ClientConfig::new(cfg.address);
                cc.distributor_id = worker as u32;
                cc.node_id = cfg.node;
                cc.timeout = cfg.timeout;
                cc.max_batch = cfg.max_batch;
                // The workers' runtime has no tokio reactor: wait on the
                // socket through io_uring.
                cc.connector = Some(cls_server::client::Connector(Rc::new(|addr| {
                    Box::pin(async move {
                        let s = crate::uring::RingStream::connect(addr).await?;
                        Ok(Box::new(s) as Box<dyn cls_server::client::Transport>)
                    })
                })));
                ClsClient::connect(cc)
            }
        };
        let rt = Rc::new(ClsRt {
            client,
            cfg: cfg.clone(),
            map: RefCell::new(Vec::new()),
            map_epoch: Cell::new(0),
            inflight: (0..servers.len()).map(|_| Cell::new(0)).collect(),
        });
        tokio::task::spawn_local(report_loop(Rc::downgrade(&rt), servers.clone(), shutdown));
        rt
    }

    /// The client and the settings it was made with (see [`ClsRt::start`]).
    pub fn client(&self) -> (Rc<ClsClient>, ClsConfig) {
        (self.client.clone(), self.cfg.clone())
    }

    /// Rebuilds the id → index map if the client reconnected since.
    fn refresh(&self, servers: &[Server]) {
        let epoch = self.client.stats().connects;
        if epoch == self.map_epoch.get() {
            return;
        }
        self.map_epoch.set(epoch);
        let table = self.client.servers();
        let mut map = self.map.borrow_mut();
        map.clear();
        for e in &table {
            let idx = e.id as usize;
            if idx >= 4096 {
                continue; // ids are positions in the CLS config; absurd ones ignored
            }
            if map.len() <= idx {
                map.resize(idx + 1, UNMAPPED);
            }
            map[idx] = servers
                .iter()
                .position(|s| s.addr == e.addr)
                .map_or(UNMAPPED, |i| i as u16);
        }
    }

    /// Asks the CLS where content `target` goes. Never fails: any problem
    /// is `Placement::Local`.
    pub async fn place(
        &self,
        servers: &[Server],
        target: &[u8],
        flags: u8,
        exclude: Exclude,
    ) -> Placement {
        let id = cls_server::proto::content_id(target);
        match self.client.lookup(id, flags, None).await {
            Ok(Answer::Server(n)) => {
                self.refresh(servers);
                match self.map.borrow().get(n as usize) {
                    Some(&i) if i != UNMAPPED => {
                        let i = i as usize;
                        if servers[i].available() && !exclude.has(i) {
                            Placement::Server(i)
                        } else {
                            Placement::Local
                        }
                    }
                    _ => Placement::Local,
                }
            }
            Ok(Answer::Origin) => Placement::Origin,
            Ok(Answer::None) | Err(_) => Placement::Local,
        }
    }

    /// Where to connect for the server at `public` (the local server over loopback in
    /// co-located mode).
    pub fn connect_addr(&self, public: SocketAddr) -> SocketAddr {
        match self.cfg.local {
            Some((l, a)) if l == public => a,
            _ => public,
        }
    }

    /// Counts `cost` units on server `i` for this worker's load reports
    /// while the guard lives.
    pub fn track(&self, i: usize, cost: u32) -> Track<'_> {
        if let Some(c) = self.inflight.get(i) {
            c.set(c.get() + cost);
        }
        Track(self, i, cost)
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }
}

pub struct Track<'a>(&'a ClsRt, usize, u32);

impl Drop for Track<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0.inflight.get(self.1) {
            c.set(c.get().saturating_sub(self.2));
        }
    }
}

/// Every `report_interval`: this worker's in-flight units per CLS server id.
/// Ends when this version of the service is gone (runtime change).
async fn report_loop(
    rt: std::rc::Weak<ClsRt>,
    servers: crate::sched::ServerSet,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut items: Vec<(u16, u32)> = Vec::with_capacity(servers.len());
    let Some(interval) = rt.upgrade().map(|r| r.cfg.report_interval) else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let Some(rt) = rt.upgrade() else {
            return;
        };
        if !rt.client.is_connected() {
            continue;
        }
        rt.refresh(&servers);
        items.clear();
        for (id, &i) in rt.map.borrow().iter().enumerate() {
            if i != UNMAPPED {
                items.push((id as u16, rt.inflight[i as usize].get()));
            }
        }
        if !items.is_empty() {
            rt.client.report_load(&items);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
        [[service]]
        listen = "127.0.0.1:8080"
        [[service.server]]
        address = "10.0.0.1:80"
        [[service.server]]
        address = "10.0.0.2:80"
        [service.cls]
    "#;

    fn err(extra: &str) -> String {
        Config::from_toml(&format!("{BASE}{extra}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn cls_config_checked_with_field_names() {
        let c = Config::from_toml(&format!(
            "{BASE}address = \"127.0.0.1:7070\"\nnode = 1\nlocal_server = \"10.0.0.2:80\"\nlocal_address = \"127.0.0.1:8081\"\n"
        ))
        .unwrap();
        let cls = c.services[0].cls.as_ref().unwrap();
        assert_eq!(cls.node, Some(1));
        assert_eq!(
            cls.local,
            Some((
                "10.0.0.2:80".parse().unwrap(),
                "127.0.0.1:8081".parse().unwrap()
            ))
        );
        assert_eq!(cls.timeout.as_millis(), 20);
        assert!(err("node = 1\n").starts_with("service[0].cls.address:"));
        assert!(err("address = \"x\"\n").starts_with("service[0].cls.address:"));
        assert!(err("address = \"127.0.0.1:7070\"\nlocal_server = \"10.0.0.9:80\"\nlocal_address = \"127.0.0.1:1\"\n")
            .starts_with("service[0].cls.local_server:"));
        assert!(
            err("address = \"127.0.0.1:7070\"\nlocal_server = \"10.0.0.1:80\"\n")
                .starts_with("service[0].cls.local_address:")
        );
        assert!(err("address = \"127.0.0.1:7070\"\ntimeout_ms = 0\n")
            .starts_with("service[0].cls.timeout_ms:"));
        assert!(err("address = \"127.0.0.1:7070\"\nmax_batch = 5000\n")
            .starts_with("service[0].cls.max_batch:"));
        assert!(err("address = \"127.0.0.1:7070\"\nnodde = 1\n").contains("nodde"));
    }
}
