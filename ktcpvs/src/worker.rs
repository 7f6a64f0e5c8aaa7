//! One worker = one OS thread = one tokio-uring runtime (one io_uring) with
//! its own SO_REUSEPORT listener per service (thesis §6.4.4, "threads only
//! synchronise when accepting" — here not even then: the kernel spreads
//! connections over the listeners). Everything a request touches is owned
//! by the worker: connections, buffers, pipes, keep-alive pools, scheduler
//! positions and counters. Shared state (server load, locality tables) is
//! read through atomics and a sharded map. The services themselves can
//! change at runtime (`runtime.rs`): the worker's view is rebuilt only when
//! the published generation moves.

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
use crate::runtime::{Runtime, ServiceShared};
use crate::sched::lblc::LocalityTable;
use crate::sched::{Scheduler, ServerSet};
use crate::uring::Pipe;

/// A service as one worker sees it: one version of a
/// [`ServiceShared`] plus what the worker owns for it. A connection holds
/// the `Rc` for the duration of a request and looks for a newer one
/// between requests (see [`Worker::current`]).
pub struct ServiceRt {
    pub id: u64,
    pub shared: Arc<ServiceShared>,
    pub cfg: ServiceConfig,
    pub servers: ServerSet,
    pub table: Arc<LocalityTable>,
    pub sched: RefCell<Box<dyn Scheduler>>,
    /// Shared by every version of the service on this worker, keyed by
    /// server id.
    pub pool: Rc<RefCell<Pool>>,
    /// Cache mode: idle keep-alive connections to origins, keyed by
    /// address (`crate::cache::exchange_origin`); shared like `pool`.
    pub origins: Rc<RefCell<Pool<SocketAddr>>>,
    /// Requests waiting for the lblc/lblcr in-flight cap on this worker;
    /// shared by every version of the service on this worker.
    pub queue: Rc<crate::sched::queue::WaitQueue>,
    /// Host header for HTTP/1.0 requests that carry none.
    pub default_host: Vec<u8>,
    /// This worker's CLS client for the service (`[service.cls]`).
    pub cls: Option<Rc<crate::cls::ClsRt>>,
}

impl ServiceRt {
    /// This version of a service on worker `worker`; `old` is the previous
    /// version on this worker, whose keep-alive pool and CLS connection
    /// carry over.
    fn build(worker: &Worker, sh: &Arc<ServiceShared>, old: Option<&ServiceRt>) -> ServiceRt {
        let pool = old.map(|o| o.pool.clone());
        let ids: Vec<u64> = sh.servers.iter().map(|s| s.id).collect();
        let p = &sh.cfg.pool;
        let pool = match pool {
            Some(pool) => {
                pool.borrow_mut()
                    .remap(&ids, p.max_idle_per_server, p.idle_timeout);
                pool
            }
            None => Rc::new(RefCell::new(Pool::new(
                &ids,
                p.max_idle_per_server,
                p.idle_timeout,
            ))),
        };
        let origins = match old {
            Some(o) => {
                o.origins
                    .borrow_mut()
                    .set_limits(p.max_idle_per_server, p.idle_timeout);
                o.origins.clone()
            }
            None => Rc::new(RefCell::new(Pool::new(
                &[],
                p.max_idle_per_server,
                p.idle_timeout,
            ))),
        };
        ServiceRt {
            id: sh.id,
            origins,
            shared: sh.clone(),
            cfg: sh.cfg.clone(),
            servers: sh.servers.clone(),
            table: sh.table.clone(),
            sched: RefCell::new(sh.cfg.scheduler.build(&sh.table)),
            pool,
            queue: match old {
                Some(o) if o.queue.settings() == (sh.cfg.queue, sh.cfg.queue_timeout) => {
                    o.queue.clone()
                }
                _ => Rc::new(crate::sched::queue::WaitQueue::new(
                    sh.cfg.queue,
                    sh.cfg.queue_timeout,
                )),
            },
            default_host: sh.cfg.listen.to_string().into_bytes(),
            cls: sh.cfg.cls.as_ref().map(|c| {
                let reuse = old.and_then(|o| o.cls.as_ref()).map(|o| o.client());
                crate::cls::ClsRt::start(c, worker.id, &sh.servers, worker.shutdown.clone(), reuse)
            }),
        }
    }
}

pub struct Worker {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub rt: Arc<Runtime>,
    /// This worker's view of the services, as of generation `seen`.
    pub services: RefCell<Vec<Rc<ServiceRt>>>,
    pub seen: Cell<u64>,
    pub stats: Arc<WorkerStats>,
    pub shutdown: watch::Receiver<bool>,
    /// Client connections open on this worker.
    pub active: Cell<usize>,
    /// This worker's side of the access log (`global.access_log`).
    pub alog: Option<crate::access_log::WorkerLog>,
    /// Requests seen by this worker (the second half of request ids).
    pub seq: Cell<u64>,
    bufs: RefCell<Vec<Vec<u8>>>,
    /// Small buffers for the reads of idle keep-alive connections.
    smalls: RefCell<Vec<Vec<u8>>>,
    pipes: RefCell<Vec<Rc<Pipe>>>,
}

/// Capacity of pooled I/O buffers.
pub const BUF_SIZE: usize = 32 * 1024;
/// Buffers kept per worker for reuse.
const MAX_POOLED_BUFS: usize = 4096;
/// Capacity of the buffer an idle keep-alive connection waits with: a
/// request that arrives is taken into a pooled `BUF_SIZE` buffer, so an
/// idle connection holds one page, not three large buffers.
pub const SMALL_BUF_SIZE: usize = 4096;
/// Small buffers kept per worker for reuse.
const MAX_POOLED_SMALL: usize = 16 * 1024;
/// Pipe size asked for with F_SETPIPE_SZ.
const PIPE_SIZE: u32 = 256 * 1024;

impl Worker {
    /// The newest version of service `id` on this worker, `None` if it
    /// was deleted. Costs one relaxed atomic load when nothing changed.
    #[inline]
    pub fn service(self: &Rc<Self>, id: u64) -> Option<Rc<ServiceRt>> {
        if self.rt.generation() != self.seen.get() {
            self.refresh();
        }
        self.services.borrow().iter().find(|s| s.id == id).cloned()
    }

    /// For a connection between two requests: the newest version of its
    /// service, or the one it has if the service was deleted (its open
    /// connections finish on the last version). `seen` is the generation
    /// the connection last looked at.
    #[inline]
    pub fn current(self: &Rc<Self>, s: &mut Rc<ServiceRt>, seen: &mut u64) {
        if self.rt.generation() == *seen {
            return;
        }
        if let Some(n) = self.service(s.id) {
            *s = n;
        }
        *seen = self.seen.get();
    }

    /// Rebuilds this worker's view from the published snapshot: unchanged
    /// services are kept as they are, changed ones get a new version
    /// sharing the keep-alive pool (remapped to the new server list), new
    /// ones start accepting, deleted ones close their idle connections.
    pub fn refresh(self: &Rc<Self>) {
        let snap = self.rt.snapshot();
        if snap.generation == self.seen.get() {
            return;
        }
        self.seen.set(snap.generation);
        let mut cur = self.services.borrow_mut();
        let mut next = Vec::with_capacity(snap.services.len());
        let mut accept = Vec::new();
        for sh in &snap.services {
            match cur.iter().find(|s| s.id == sh.id) {
                Some(old) if Arc::ptr_eq(&old.shared, sh) => next.push(old.clone()),
                Some(old) => next.push(Rc::new(ServiceRt::build(self, sh, Some(old)))),
                None => {
                    if let Some(l) = sh.take_listener(self.id) {
                        accept.push((sh.id, sh.cfg.name.clone(), sh.closed.subscribe(), l));
                    }
                    next.push(Rc::new(ServiceRt::build(self, sh, None)));
                }
            }
        }
        for old in cur.iter() {
            if !next.iter().any(|n| n.id == old.id) {
                old.pool.borrow_mut().close();
                old.origins.borrow_mut().close();
            }
        }
        *cur = next;
        drop(cur);
        for (id, name, closed, l) in accept {
            let listener = tokio_uring::net::TcpListener::from_std(l);
            tokio_uring::spawn(accept_loop(self.clone(), id, name, closed, listener));
        }
    }

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

    /// An empty small buffer ([`SMALL_BUF_SIZE`]).
    pub fn take_small(&self) -> Vec<u8> {
        self.smalls
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SMALL_BUF_SIZE))
    }

    pub fn give_small(&self, mut b: Vec<u8>) {
        if b.capacity() == SMALL_BUF_SIZE {
            let mut smalls = self.smalls.borrow_mut();
            if smalls.len() < MAX_POOLED_SMALL {
                b.clear();
                smalls.push(b);
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

/// The best ring set-up the kernel takes:
/// - `IORING_SETUP_DEFER_TASKRUN` + `SINGLE_ISSUER` (Linux 6.1+): the
///   work that completes an operation runs when the worker next enters the
///   kernel to wait, in one batch, instead of interrupting it; only the
///   worker's own thread uses its ring, which this requires;
/// - else `COOP_TASKRUN` (5.19+): completions need not interrupt a running
///   worker with an IPI; it collects them at its next entry anyway;
/// - else the default.
fn worker_ring() -> io_uring::Builder {
    let works = |b: &io_uring::Builder| b.build(4).is_ok();
    let mut deferred = tokio_uring::uring_builder();
    deferred.setup_single_issuer().setup_defer_taskrun();
    if works(&deferred) {
        return deferred;
    }
    let mut coop = tokio_uring::uring_builder();
    coop.setup_coop_taskrun();
    if works(&coop) {
        return coop;
    }
    tokio_uring::uring_builder()
}

/// The runtime a worker runs on. No tokio reactor: the worker sleeps only
/// in `io_uring_enter` and collects completions there
/// (vendor/tokio-uring/PATCHED.md), so nothing on it may use `tokio::net`.
pub fn worker_runtime() -> tokio_uring::Builder {
    let mut b = tokio_uring::builder();
    b.entries(1024);
    b.ring_only(true);
    b.uring_builder(&worker_ring());
    b
}

/// Runs worker `id` on the current thread until shutdown, serving the
/// services `rt` publishes (taking listener `id` of each).
pub fn run_worker(
    id: usize,
    cfg: Arc<Config>,
    rt: Arc<Runtime>,
    stats: Arc<WorkerStats>,
    shutdown: watch::Receiver<bool>,
) {
    let b = worker_runtime();
    let alog = rt
        .access_log
        .get()
        .map(|a| crate::access_log::WorkerLog::new(a.clone()));
    b.start(async move {
        let w = Rc::new(Worker {
            id,
            cfg,
            rt,
            services: RefCell::new(Vec::new()),
            seen: Cell::new(u64::MAX),
            stats,
            shutdown,
            alog,
            seq: Cell::new(0),
            active: Cell::new(0),
            bufs: RefCell::new(Vec::new()),
            smalls: RefCell::new(Vec::new()),
            pipes: RefCell::new(Vec::new()),
        });
        // Subscribed before the first refresh: no change can fall between.
        let changes = w.rt.subscribe();
        w.refresh();
        tokio_uring::spawn(crate::timer::run());
        tokio_uring::spawn(follow_changes(w.clone(), changes));
        tokio_uring::spawn(housekeeping(w.clone()));
        if w.alog.is_some() {
            tokio_uring::spawn(crate::access_log::flusher(w.clone()));
        }
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
        for s in w.services.borrow().iter() {
            s.pool.borrow_mut().clear();
            s.origins.borrow_mut().clear();
        }
        if let Some(l) = &w.alog {
            l.flush();
        }
        debug!(worker = id, "worker stopped");
    });
}

/// Applies published changes as soon as they happen (requests would find
/// them too, but an idle worker must start accepting on a new service).
async fn follow_changes(w: Rc<Worker>, mut changes: watch::Receiver<u64>) {
    let mut sd = w.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = sd.changed() => break,
            r = changes.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
        w.refresh();
    }
}

async fn accept_loop(
    w: Rc<Worker>,
    id: u64,
    name: String,
    mut closed: watch::Receiver<bool>,
    listener: tokio_uring::net::TcpListener,
) {
    let mut sd = w.shutdown.clone();
    // The service as last seen: connections accepted after it was deleted
    // (or renamed by a reload) are still served, by this version.
    let mut last = w.service(id);
    let (mut warned, mut failed) = (None, 0u64);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = sd.changed() => break,
            _ = closed.wait_for(|c| *c) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(s) = w.service(id) {
                    last = Some(s);
                }
                let Some(s) = &last else {
                    break;
                };
                admit(&w, s, stream, peer);
            }
            Err(e) => {
                // EMFILE and the like: back off briefly instead of spinning,
                // and say so at most every 10 s (not 100 times a second).
                failed += 1;
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    // Out of descriptors: the idle pooled server
                    // connections give theirs back first.
                    for s in w.services.borrow().iter() {
                        s.pool.borrow_mut().clear();
                        s.origins.borrow_mut().clear();
                    }
                }
                if crate::obs::due(&mut warned, Duration::from_secs(10)) {
                    warn!(error = %e, failures = failed, service = %name, "accept failed (the connections wait in the listen queue)");
                    failed = 0;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Connections the kernel completed before we stopped are in the
    // listener's queue; closing it would reset them. Take them first (a
    // renamed service's new listener already takes the next ones; at
    // shutdown they get their request answered with `Connection: close`).
    if let Some(s) = &last {
        let n = drain_accept_queue(&w, s, &listener);
        if n > 0 {
            debug!(worker = w.id, service = %name, n, "served connections queued at close");
        }
    }
    info!(worker = w.id, service = %name, "stopped accepting");
}

/// Accepts whatever is queued on `listener` without waiting; returns how
/// many connections were taken.
fn drain_accept_queue(
    w: &Rc<Worker>,
    s: &Rc<ServiceRt>,
    listener: &tokio_uring::net::TcpListener,
) -> usize {
    use std::os::fd::{AsRawFd, FromRawFd};
    let fd = listener.as_raw_fd();
    // SAFETY: fcntl on a descriptor this listener owns; it is closed right
    // after, so blocking mode no longer matters to anyone.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return 0;
        }
    }
    let mut n = 0;
    loop {
        // SAFETY: plain accept4 on our listener; a returned descriptor is
        // owned by the std stream made from it.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted
                || e.raw_os_error() == Some(libc::ECONNABORTED)
            {
                continue;
            }
            return n; // EAGAIN: the queue is empty (or a real error)
        }
        // SAFETY: `c` is a fresh connected socket nobody else owns.
        let std_stream = unsafe { std::net::TcpStream::from_raw_fd(c) };
        let Ok(peer) = std_stream.peer_addr() else {
            continue; // already gone
        };
        admit(
            w,
            s,
            tokio_uring::net::TcpStream::from_std(std_stream),
            peer,
        );
        n += 1;
    }
}

/// Starts serving an accepted connection (or closes it at once over
/// `limits.max_connections`).
fn admit(w: &Rc<Worker>, s: &Rc<ServiceRt>, stream: tokio_uring::net::TcpStream, peer: SocketAddr) {
    w.stats.connections_accepted_total.fetch_add(1, Relaxed);
    s.shared.counters.connections.fetch_add(1, Relaxed);
    if w.active.get() >= w.cfg.limits.max_connections {
        // Over the limit: refuse by closing at once (back-pressure).
        debug!(%peer, "connection limit reached; closing");
        drop(stream);
        return;
    }
    // TCP_NODELAY: inherited from the listener (set once at bind), no
    // setsockopt per connection. A congestion control, when asked for, is
    // set per connection so that a reload changes it for the next one (the
    // name was tried when the configuration was read).
    if let Some(cc) = &s.cfg.client_congestion {
        if let Err(e) = crate::uring::set_congestion(std::os::fd::AsRawFd::as_raw_fd(&stream), cc) {
            debug!(%peer, error = %e, "cannot set client_congestion");
        }
    }
    tokio_uring::spawn(crate::conn::serve_client(
        w.clone(),
        s.clone(),
        stream,
        peer,
    ));
}

/// Once a second: close expired pooled connections, publish gauges; every
/// 30 s (worker 0 only) expire old locality entries.
async fn housekeeping(w: Rc<Worker>) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let mut idle = 0;
        for s in w.services.borrow().iter() {
            if w.id == 0 {
                s.table.tick();
            }
            // With active health checks only the probes readmit a server.
            if w.id == 0 && !s.cfg.health.enabled {
                for srv in s.servers.iter() {
                    crate::health::passive_tick(&s.cfg.name, srv, clock_s(), READMIT_AFTER_S);
                }
            }
            let mut p = s.pool.borrow_mut();
            p.sweep();
            idle += p.idle_count();
            let mut o = s.origins.borrow_mut();
            o.sweep();
            idle += o.idle_count();
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
