//! One worker = one OS thread = one tokio-uring runtime (one io_uring) with
//! its own SO_REUSEPORT listener per service (thesis §6.4.4, "threads only
//! synchronise when accepting" — here not even then: the kernel spreads
//! connections over the listeners). Everything a request touches is owned
//! by the worker: connections, buffers, pipes, keep-alive pools, scheduler
//! positions and counters. Shared state (server load, locality tables) is
//! read through atomics and a sharded map.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, ServiceConfig};
use crate::metrics::WorkerStats;
use crate::pool::Pool;
use crate::sched::lblc::LocalityTable;
use crate::sched::{Scheduler, ServerSet};
use crate::uring::Pipe;

/// A service as one worker sees it.
pub struct ServiceRt {
    pub cfg: ServiceConfig,
    pub servers: ServerSet,
    pub table: Arc<LocalityTable>,
    pub sched: RefCell<Box<dyn Scheduler>>,
    pub pool: RefCell<Pool>,
    /// Requests waiting for the lblc/lblcr in-flight cap on this worker.
    pub queue: crate::sched::queue::WaitQueue,
    /// Host header for HTTP/1.0 requests that carry none.
    pub default_host: Vec<u8>,
}

/// State shared by all services of one service, across workers.
#[derive(Clone)]
pub struct SharedService {
    pub cfg: ServiceConfig,
    pub servers: ServerSet,
    pub table: Arc<LocalityTable>,
}

pub struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub services: Vec<ServiceRt>,
    pub stats: Arc<WorkerStats>,
    pub shutdown: watch::Receiver<bool>,
    /// Client connections open on this worker.
    pub active: Cell<usize>,
    bufs: RefCell<Vec<Vec<u8>>>,
    pipes: RefCell<Vec<Rc<Pipe>>>,
}

/// Capacity of pooled I/O buffers.
pub const BUF_SIZE: usize = 32 * 1024;
/// Buffers kept per worker for reuse.
const MAX_POOLED_BUFS: usize = 4096;
/// Pipe size asked for with F_SETPIPE_SZ.
const PIPE_SIZE: u32 = 256 * 1024;

impl Worker {
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A cleared buffer from the worker's pool (allocates only when empty).
    pub fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    pub fn give_buf(&self, mut b: Vec<u8>) {
        // Buffers that grew for a huge head are not kept.
        if b.capacity() >= BUF_SIZE && b.capacity() <= 4 * BUF_SIZE {
            let mut bufs = self.bufs.borrow_mut();
            if bufs.len() < MAX_POOLED_BUFS {
                b.clear();
                bufs.push(b);
            }
        }
    }

    /// An empty pipe for splice(2).
    pub fn take_pipe(&self) -> Option<Rc<Pipe>> {
        if let Some(p) = self.pipes.borrow_mut().pop() {
            return Some(p);
        }
        match Pipe::new(PIPE_SIZE) {
            Ok(p) => Some(Rc::new(p)),
            Err(e) => {
                warn!(error = %e, "cannot create pipe; copying instead of splicing");
                None
            }
        }
    }

    /// Returns a pipe known to be empty; a pipe left holding data after an
    /// error is simply dropped.
    pub fn give_pipe(&self, p: Rc<Pipe>) {
        let mut pipes = self.pipes.borrow_mut();
        if pipes.len() < 256 && Rc::strong_count(&p) == 1 {
            pipes.push(p);
        }
    }
}

/// Runs worker `id` on the current thread until shutdown, serving the
/// given listeners (one per service, same order as `shared`).
pub fn run_worker(
    id: usize,
    cfg: Arc<Config>,
    shared: Vec<SharedService>,
    listeners: Vec<std::net::TcpListener>,
    stats: Arc<WorkerStats>,
    shutdown: watch::Receiver<bool>,
) {
    let mut ring = tokio_uring::uring_builder();
    // Completions need not interrupt a running worker with an IPI: it
    // collects them at its next entry into the kernel anyway (Linux 5.19+;
    // refused by older kernels, then the ring is built without it).
    ring.setup_coop_taskrun();
    let mut b = tokio_uring::builder();
    b.entries(1024);
    if io_uring::IoUring::<io_uring::squeue::Entry>::builder()
        .setup_coop_taskrun()
        .build(4)
        .is_ok()
    {
        b.uring_builder(&ring);
    }
    b.start(async move {
        let services = shared
            .into_iter()
            .map(|s| ServiceRt {
                sched: RefCell::new(s.cfg.scheduler.build(&s.table)),
                pool: RefCell::new(Pool::new(
                    s.servers.len(),
                    s.cfg.pool.max_idle_per_server,
                    s.cfg.pool.idle_timeout,
                )),
                queue: crate::sched::queue::WaitQueue::new(s.cfg.queue, s.cfg.queue_timeout),
                default_host: s.cfg.listen.to_string().into_bytes(),
                cfg: s.cfg,
                servers: s.servers,
                table: s.table,
            })
            .collect();
        let w = Rc::new(Worker {
            id,
            cfg,
            services,
            stats,
            shutdown,
            active: Cell::new(0),
            bufs: RefCell::new(Vec::new()),
            pipes: RefCell::new(Vec::new()),
        });
        for (svc, l) in listeners.into_iter().enumerate() {
            let listener = tokio_uring::net::TcpListener::from_std(l);
            tokio_uring::spawn(accept_loop(w.clone(), svc, listener));
        }
        tokio_uring::spawn(housekeeping(w.clone()));
        let mut sd = w.shutdown.clone();
        while !*sd.borrow_and_update() {
            if sd.changed().await.is_err() {
                break;
            }
        }
        // Stop accepting happened in accept_loop; let in-flight requests
        // finish (idle connections close themselves on the signal).
        let deadline = Instant::now() + w.cfg.shutdown_grace;
        while w.active.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if w.active.get() > 0 {
            warn!(
                worker = id,
                open = w.active.get(),
                "grace period over; closing remaining connections"
            );
        }
        for s in &w.services {
            s.pool.borrow_mut().clear();
        }
        debug!(worker = id, "worker stopped");
    });
}

async fn accept_loop(w: Rc<Worker>, svc: usize, listener: tokio_uring::net::TcpListener) {
    let mut sd = w.shutdown.clone();
    let max = w.cfg.limits.max_connections;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = sd.changed() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                w.stats.connections_accepted_total.fetch_add(1, Relaxed);
                if w.active.get() >= max {
                    // Over the limit: refuse by closing at once (back-pressure).
                    debug!(%peer, "connection limit reached; closing");
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tokio_uring::spawn(crate::conn::serve_client(w.clone(), svc, stream, peer));
            }
            Err(e) => {
                // EMFILE and the like: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    info!(worker = w.id, service = %w.services[svc].cfg.name, "stopped accepting");
}

/// Once a second: close expired pooled connections, publish gauges; every
/// 30 s (worker 0 only) expire old locality entries.
async fn housekeeping(w: Rc<Worker>) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let mut idle = 0;
        for s in &w.services {
            if w.id == 0 {
                s.table.tick();
                for srv in s.servers.iter() {
                    if srv.readmit(clock_s(), READMIT_AFTER_S) {
                        info!(server = %srv.addr, "real server back in rotation (next request probes it)");
                    }
                }
            }
            let mut p = s.pool.borrow_mut();
            p.sweep();
            idle += p.idle_count();
            if w.id == 0 && tick.is_multiple_of(30) {
                s.table.expire(s.cfg.lblc_expire);
            }
        }
        w.stats.pool_idle.store(idle as u64, Relaxed);
        w.stats
            .connections_active
            .store(w.active.get() as u64, Relaxed);
    }
}

/// Seconds a real server that refused a connection stays out of rotation
/// before one request probes it again (passive failure detection).
pub const READMIT_AFTER_S: u64 = 2;

/// Seconds since the process started (a monotonic clock for coarse times).
pub fn clock_s() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Formats a peer's IP into `buf`, returning the used prefix, without
/// allocating.
pub fn ip_text(peer: SocketAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{}", peer.ip());
    let n = cur.position() as usize;
    &buf[..n]
}
