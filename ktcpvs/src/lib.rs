//! ktcpvs: a user-space Layer-7 content switch on io_uring, after the
//! kernel KTCPVS of the Linux Virtual Server thesis (chapter 6).
//!
//! The binary (`main.rs`) only parses flags and calls [`start`]; tests call
//! the same function in-process. See ARCHITECTURE.md for the life of a
//! request through these modules.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod cls;
pub mod config;
pub mod conn;
pub mod feedback;
pub mod health;
pub mod http;
pub mod metrics;
pub mod obs;
pub mod pool;
pub mod proxy;
pub mod quickstart;
pub mod runtime;
pub mod sched;
pub mod timer;
pub mod tunnel;
pub mod uring;
pub mod worker;

use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{info, warn};

use config::AdminSocket;
pub use config::Config;
use metrics::{Registry, WorkerStats};
use runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("io_uring is unavailable ({0}). ktcpvs needs Linux 5.11 or later with io_uring enabled (check the sysctl kernel.io_uring_disabled and any seccomp profile, e.g. a container runtime's default one); it has no epoll fallback")]
    NoIoUring(std::io::Error),
    #[error("cannot listen on {addr} for service {service:?}: {error}")]
    Listen {
        service: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {error}")]
    Metrics {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot serve the admin socket {path} (global.admin_socket): {error}")]
    Admin { path: String, error: std::io::Error },
    #[error("cannot open the access log {path} (global.access_log): {error}")]
    AccessLog { path: String, error: std::io::Error },
    #[error("cannot start health-check thread: {0}")]
    Health(std::io::Error),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// A running switch.
pub struct Running {
    /// The bound address of each service, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub registry: Arc<Registry>,
    /// Services and servers as they are now; changes go through it.
    pub runtime: Arc<Runtime>,
    workers: Vec<JoinHandle<()>>,
    metrics: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    admin: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    health: Option<JoinHandle<()>>,
}

impl Running {
    /// Waits until every worker has stopped (after the shutdown signal and
    /// the grace period).
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
        if let Some(al) = &self.registry.access_log {
            al.drain(std::time::Duration::from_secs(2));
        }
        if let Some(h) = self.health {
            let _ = h.join();
        }
        for (stop, h) in self.metrics.into_iter().chain(self.admin) {
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

/// Descriptors the configuration may need at once: per worker, its
/// client connections (`limits.max_connections`), as many to the servers,
/// and the idle pooled ones; plus listeners, pipes and the rest.
pub fn descriptors_needed(cfg: &Config) -> u64 {
    let pooled: u64 = cfg
        .services
        .iter()
        .map(|s| (s.pool.max_idle_per_server * s.servers.len().max(1)) as u64)
        .sum();
    let per_worker = 2 * cfg.limits.max_connections as u64 + pooled;
    per_worker * cfg.workers as u64 + 1024
}

/// Raises the soft limit on open descriptors towards what the
/// configuration needs (at most the hard limit), as HAProxy does: a fresh
/// login's soft limit is often 1,024, which would make accepts fail with
/// EMFILE at a few hundred connections. Says so, naming the fields, when
/// the hard limit is lower than that.
pub fn raise_nofile_limit(cfg: &Config) {
    let want = descriptors_needed(cfg);
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return;
    }
    let target = want.min(rl.rlim_max);
    if target > rl.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            info!(
                from = rl.rlim_cur,
                to = target,
                "raised the open-descriptor limit"
            );
            rl.rlim_cur = target;
        }
    }
    if rl.rlim_cur < want {
        warn!(
            limit = rl.rlim_cur,
            needed = want,
            "the open-descriptor limit is below what limits.max_connections x workers (x2, client and server side) and the pools need: accepts will fail with EMFILE before that; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower limits.max_connections"
        );
    }
}

/// Starts the workers; the switch runs until `shutdown` turns true.
pub fn start(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<Running, StartError> {
    check_io_uring()?;
    raise_nofile_limit(&cfg);
    let cfg = Arc::new(cfg);
    let runtime = Runtime::new(cfg.clone());
    // The admin socket first: once the services accept, tcpvsadm works.
    let admin_path = match &cfg.admin_socket {
        AdminSocket::Disabled => None,
        AdminSocket::Default => Some((config::DEFAULT_ADMIN_SOCKET.into(), false)),
        AdminSocket::Path(p) => Some((p.clone(), true)),
    };
    let admin_sock: Option<(std::path::PathBuf, UnixListener)> = match admin_path {
        None => None,
        Some((path, explicit)) => match admin::bind(&path) {
            Ok(l) => Some((path, l)),
            Err(error) if explicit => {
                return Err(StartError::Admin {
                    path: path.display().to_string(),
                    error,
                })
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "no admin socket (set global.admin_socket); tcpvsadm will not reach this switch");
                None
            }
        },
    };
    let unlink_admin = |a: &Option<(std::path::PathBuf, UnixListener)>| {
        if let Some((p, _)) = a {
            let _ = std::fs::remove_file(p);
        }
    };
    // Bind every listener up front (one per worker and service) so that
    // errors surface here, before any thread starts. With port 0 the first
    // bind picks the port and the other workers join it.
    let addrs = match runtime.start() {
        Ok(a) => a,
        Err((service, addr, error)) => {
            unlink_admin(&admin_sock);
            return Err(StartError::Listen {
                service,
                addr,
                error,
            });
        }
    };

    let access_log = match &cfg.access_log {
        Some(path) => {
            let al = access_log::AccessLog::start(path).map_err(|error| {
                unlink_admin(&admin_sock);
                StartError::AccessLog {
                    path: path.display().to_string(),
                    error,
                }
            })?;
            let _ = runtime.access_log.set(al.clone());
            Some(al)
        }
        None => None,
    };
    let stats: Vec<Arc<WorkerStats>> = (0..cfg.workers).map(|_| Arc::default()).collect();
    let registry = Arc::new(Registry {
        workers: stats.clone(),
        runtime: runtime.clone(),
        access_log,
    });
    let metrics = match cfg.metrics {
        Some(addr) => {
            let stop = Arc::new(AtomicBool::new(false));
            let h = metrics::serve(addr, registry.clone(), stop.clone()).map_err(|error| {
                unlink_admin(&admin_sock);
                StartError::Metrics { addr, error }
            })?;
            info!(%addr, "metrics at http://{addr}/metrics");
            Some((stop, h))
        }
        None => None,
    };
    let admin = match admin_sock {
        None => None,
        Some((path, l)) => {
            let stop = Arc::new(AtomicBool::new(false));
            let h = admin::serve(l, &path, runtime.clone(), stop.clone()).map_err(|e| {
                let _ = std::fs::remove_file(&path);
                StartError::Thread(e)
            })?;
            info!(path = %path.display(), "admin socket (tcpvsadm) ready");
            Some((stop, h))
        }
    };
    let health = health::start(runtime.clone(), shutdown.clone()).map_err(StartError::Health)?;

    let mut workers = Vec::with_capacity(cfg.workers);
    for id in 0..cfg.workers {
        let (cfg, rt, stats, sd) = (
            cfg.clone(),
            runtime.clone(),
            stats[id].clone(),
            shutdown.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("ktcpvs-w{id}"))
            .spawn(move || worker::run_worker(id, cfg, rt, stats, sd))
            .map_err(StartError::Thread)?;
        workers.push(h);
    }
    for (s, a) in cfg.services.iter().zip(&addrs) {
        info!(service = %s.name, addr = %a, scheduler = s.scheduler.name(), servers = s.servers.len(), workers = cfg.workers, "listening");
    }
    Ok(Running {
        addrs,
        registry,
        runtime,
        workers,
        metrics,
        admin,
        health: Some(health),
    })
}
