//! ktcpvs: a user-space Layer-7 content switch on io_uring, after the
//! kernel KTCPVS of the Linux Virtual Server thesis (chapter 6).
//!
//! The binary (`main.rs`) only parses flags and calls [`start`]; tests call
//! the same function in-process. See ARCHITECTURE.md for the life of a
//! request through these modules.

pub mod config;
pub mod conn;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod quickstart;
pub mod sched;
pub mod uring;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tracing::info;

pub use config::Config;
use metrics::{Registry, WorkerStats};
use sched::lblc::LocalityTable;
use sched::Server;
use worker::SharedService;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("io_uring is unavailable ({0}). ktcpvs needs Linux 5.11 or later with io_uring enabled (check the sysctl kernel.io_uring_disabled and any seccomp profile, e.g. a container runtime's default one); it has no epoll fallback")]
    NoIoUring(std::io::Error),
    #[error("cannot listen on {addr} for service {service:?}: {source}")]
    Listen {
        service: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// A running switch.
pub struct Running {
    /// The bound address of each service, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub registry: Arc<Registry>,
    workers: Vec<JoinHandle<()>>,
    metrics: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Running {
    /// Waits until every worker has stopped (after the shutdown signal and
    /// the grace period).
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
        if let Some((stop, h)) = self.metrics {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = h.join();
        }
    }
}

/// Fails with a clear message if this kernel (or sandbox) refuses io_uring.
pub fn check_io_uring() -> Result<(), StartError> {
    io_uring::IoUring::new(8)
        .map(|_| ())
        .map_err(StartError::NoIoUring)
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Starts the workers; the switch runs until `shutdown` turns true.
pub fn start(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<Running, StartError> {
    check_io_uring()?;
    let cfg = Arc::new(cfg);
    let shared: Vec<SharedService> = cfg
        .services
        .iter()
        .map(|s| SharedService {
            cfg: s.clone(),
            servers: s
                .servers
                .iter()
                .map(|r| Server::new(r.address, r.weight, r.low, r.high))
                .collect::<Vec<_>>()
                .into(),
            table: Arc::new(
                LocalityTable::for_kind(s.scheduler, s.lblc_max_entries)
                    .with_shrink(s.lblcr_shrink),
            ),
        })
        .collect();

    // Bind every listener up front so that errors surface here, before
    // any thread starts. With port 0 the first bind picks the port and the
    // other workers join it.
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..cfg.workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for s in &cfg.services {
        let mut addr = s.listen;
        for (wid, lists) in per_worker.iter_mut().enumerate() {
            let l = bind_reuseport(addr).map_err(|source| StartError::Listen {
                service: s.name.clone(),
                addr,
                source,
            })?;
            if wid == 0 {
                addr = l.local_addr().map_err(|source| StartError::Listen {
                    service: s.name.clone(),
                    addr,
                    source,
                })?;
            }
            lists.push(l);
        }
        addrs.push(addr);
    }

    let stats: Vec<Arc<WorkerStats>> = (0..cfg.workers).map(|_| Arc::default()).collect();
    let registry = Arc::new(Registry {
        workers: stats.clone(),
        services: shared
            .iter()
            .map(|s| (s.cfg.name.clone(), s.servers.clone(), s.table.clone()))
            .collect(),
    });
    let metrics = match cfg.metrics {
        Some(addr) => {
            let stop = Arc::new(AtomicBool::new(false));
            let h = metrics::serve(addr, registry.clone(), stop.clone())
                .map_err(|source| StartError::Metrics { addr, source })?;
            info!(%addr, "metrics at http://{addr}/metrics");
            Some((stop, h))
        }
        None => None,
    };

    let mut workers = Vec::with_capacity(cfg.workers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let (cfg, shared, stats, sd) = (
            cfg.clone(),
            shared.clone(),
            stats[id].clone(),
            shutdown.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("ktcpvs-w{id}"))
            .spawn(move || worker::run_worker(id, cfg, shared, listeners, stats, sd))
            .map_err(StartError::Thread)?;
        workers.push(h);
    }
    for (s, a) in cfg.services.iter().zip(&addrs) {
        info!(service = %s.name, addr = %a, scheduler = s.scheduler.name(), servers = s.servers.len(), workers = cfg.workers, "listening");
    }
    Ok(Running {
        addrs,
        registry,
        workers,
        metrics,
    })
}
