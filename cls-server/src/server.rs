//! The CLS server: one dedicated thread running a tokio current-thread
//! runtime. Every distributor connection, the resource monitor and the
//! metrics endpoint are tasks on that thread and share the scheduling state
//! through `Rc<RefCell<Cls>>` — no locks, no atomics on the decision path.
//!
//! Why one thread: every LBLL decision reads and updates global state (the
//! target's server set and every server's load), and two distributors asking
//! for the same target must see each other's assignments at once. A single
//! owner gives that for free and is fast enough (see README, `cls-bench`:
//! millions of lookups per second on one core); sharding the target table by
//! content id across threads would be the next step, not locks.
//!
//! Life of a batch: [`connection`] reads into its buffer →
//! [`proto::check`]/[`proto::parse`] → [`Conn::on_frame`] →
//! [`Lbll::lookup`] per item + [`ServerTable::assign`] → answers encoded in
//! place with [`BatchWriter`] → one `write_all` per read.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proto::{self, error_code, flags, Answer, BatchWriter, Decoded, Frame, ServerEntry};
use crate::sched::{DistKey, Lbll, Params, ServerTable, TargetTable};

/// Errors that stop the server (not per-connection errors).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the server thread stopped before it was ready")]
    ThreadDied,
}

/// The scheduling state, owned by the server thread.
pub struct Cls {
    pub lbll: Lbll,
    pub servers: ServerTable,
    /// Server table as announced in `HelloAck`.
    pub entries: Vec<ServerEntry>,
    pub metrics: Arc<Metrics>,
}

impl Cls {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let weights: Vec<u32> = cfg.servers.iter().map(|s| s.weight).collect();
        let servers = ServerTable::new(&weights);
        metrics.servers_alive.store(servers.len() as u64, Relaxed);
        Cls {
            lbll: Lbll::new(
                Params {
                    mode: cfg.mode,
                    t: cfg.threshold,
                    k: cfg.shrink_after,
                },
                TargetTable::new(cfg.max_targets, cfg.target_expiry),
            ),
            servers,
            entries: cfg
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| ServerEntry {
                    id: i as u16,
                    addr: s.addr,
                })
                .collect(),
            metrics,
        }
    }
}

/// A running server. Dropping it shuts the server down.
pub struct ServerHandle {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    /// Stops accepting, closes every connection and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }
    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `config.listen` and runs the CLS on a new thread. Returns once the
/// listener is bound (bind errors are returned here).
pub fn spawn(config: Config) -> Result<ServerHandle, ServerError> {
    let metrics = Arc::new(Metrics::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let m = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("cls-server".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(ServerError::Runtime(e)));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = match bind(config.listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let addr = listener.local_addr().unwrap_or(config.listen);
                let _ = ready_tx.send(Ok(addr));
                run(config, listener, m, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
        })
        .map_err(ServerError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok(ServerHandle {
            addr,
            metrics,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(ServerError::ThreadDied),
    }
}

/// Binds with SO_REUSEADDR so a restarted CLS gets its port back at once.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let e = |source| ServerError::Bind { addr, source };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(e)?;
    sock.set_reuseaddr(true).map_err(e)?;
    sock.bind(addr).map_err(e)?;
    sock.listen(1024).map_err(e)
}

/// Serves until `shutdown` completes. Must run inside a `LocalSet`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let state = Rc::new(RefCell::new(Cls::new(&config, metrics.clone())));
    let config = Rc::new(config);
    info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        mode = ?config.mode,
        servers = config.servers.len(),
        "CLS listening"
    );
    let mut tasks = tokio::task::JoinSet::new();
    // With the monitor disabled it still keeps time: expires pending
    // assignments and stale targets every interval.
    tasks.spawn_local(crate::monitor::run(config.clone(), state.clone()));
    if let Some(addr) = config.metrics_listen {
        match bind(addr) {
            Ok(l) => {
                tasks.spawn_local(metrics_endpoint(l, metrics.clone()));
            }
            Err(e) => warn!(error = %e, "metrics endpoint disabled"),
        }
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    metrics.connections_accepted.fetch_add(1, Relaxed);
                    if metrics.connections_open.load(Relaxed) as usize >= config.max_connections {
                        metrics.connections_refused.fetch_add(1, Relaxed);
                        warn!(%peer, "max_connections reached; closing");
                        continue;
                    }
                    tasks.spawn_local(connection(stream, peer, state.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    info!("CLS shutting down");
    tasks.shutdown().await;
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(#[from] proto::ProtoError),
    #[error("protocol violation: {0}")]
    Violation(&'static str, u16),
}

/// Initial read buffer; grows on demand up to one maximal frame.
const INITIAL_BUF: usize = 16 * 1024;
const BUF_CEILING: usize = proto::LEN_BYTES + proto::MAX_FRAME_LEN;

struct Conn {
    state: Rc<RefCell<Cls>>,
    dist: DistKey,
    /// Node id from Hello (co-located deployments); None until Hello.
    hello: Option<proto::Hello>,
    out: Vec<u8>,
}

async fn connection(stream: TcpStream, peer: SocketAddr, state: Rc<RefCell<Cls>>) {
    let metrics = state.borrow().metrics.clone();
    metrics.connections_open.fetch_add(1, Relaxed);
    let dist = state.borrow_mut().servers.add_distributor();
    let mut conn = Conn {
        state: state.clone(),
        dist,
        hello: None,
        out: Vec::with_capacity(4096),
    };
    let r = conn.serve(stream).await;
    match &r {
        Ok(()) => debug!(%peer, "distributor disconnected"),
        Err(ConnError::Io(e)) => debug!(%peer, error = %e, "distributor connection lost"),
        Err(e) => {
            metrics.malformed_frames.fetch_add(1, Relaxed);
            warn!(%peer, error = %e, "closing this distributor connection");
        }
    }
    state.borrow_mut().servers.remove_distributor(dist);
    metrics.connections_open.fetch_sub(1, Relaxed);
}

impl Conn {
    async fn serve(&mut self, mut stream: TcpStream) -> Result<(), ConnError> {
        let _ = stream.set_nodelay(true);
        let mut buf = vec![0u8; INITIAL_BUF];
        let (mut start, mut end) = (0usize, 0usize);
        loop {
            // Handle every whole frame buffered, then write all answers at once.
            let mut failure = None;
            loop {
                match proto::decode(&buf[start..end]) {
                    Ok(Decoded::Frame(f, n)) => {
                        if let Err(e) = self.on_frame(f) {
                            failure = Some(e);
                            break;
                        }
                        start += n;
                    }
                    Ok(Decoded::Incomplete(need)) => {
                        if need > buf.len() - start {
                            // Move the partial frame to the front; grow up to
                            // the ceiling (need ≤ BUF_CEILING by `check`).
                            buf.copy_within(start..end, 0);
                            end -= start;
                            start = 0;
                            if need > buf.len() {
                                buf.resize(need.max(buf.len() * 2).min(BUF_CEILING), 0);
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                let code = match &e {
                    ConnError::Violation(_, c) => *c,
                    _ => error_code::MALFORMED,
                };
                proto::encode_error(&mut self.out, code);
                let _ = stream.write_all(&self.out).await;
                return Err(e);
            }
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                self.out.clear();
            }
            if start == end {
                start = 0;
                end = 0;
            }
            let n = stream.read(&mut buf[end..]).await?;
            if n == 0 {
                return Ok(());
            }
            end += n;
        }
    }

    fn on_frame(&mut self, f: Frame<'_>) -> Result<(), ConnError> {
        match (self.hello, f) {
            (None, Frame::Hello(h)) => {
                if h.version != proto::VERSION {
                    return Err(ConnError::Violation(
                        "unsupported protocol version",
                        error_code::UNSUPPORTED_VERSION,
                    ));
                }
                debug!(distributor = h.distributor_id, node = h.node_id, "hello");
                self.hello = Some(h);
                let st = self.state.borrow();
                proto::encode_hello_ack(&mut self.out, proto::MAX_BATCH as u16, &st.entries);
                Ok(())
            }
            (None, _) => Err(ConnError::Violation(
                "first frame is not Hello",
                error_code::EXPECTED_HELLO,
            )),
            (Some(h), Frame::BatchLookup(b)) => {
                let now = Instant::now();
                let conn_node = (h.node_id != proto::NO_NODE).then_some(h.node_id);
                let st = &mut *self.state.borrow_mut();
                let (mut origin, mut none) = (0u64, 0u64);
                let mut w = BatchWriter::answer(&mut self.out, b.request_id);
                for it in b.items() {
                    let local = if it.local_node != proto::NO_NODE {
                        Some(it.local_node)
                    } else {
                        conn_node
                    };
                    let d = st.lbll.lookup(now, &it.id, it.flags, local, &st.servers);
                    match d.answer {
                        Answer::Server(n) => {
                            let units = if it.flags & flags::DYNAMIC != 0 { 2 } else { 1 };
                            st.servers.assign(self.dist, n, units);
                        }
                        Answer::Origin => origin += 1,
                        Answer::None => none += 1,
                    }
                    w.push_answer(d.answer);
                }
                let n = w.finish() as u64;
                let m = &st.metrics;
                m.lookups.fetch_add(n, Relaxed);
                m.batches.fetch_add(1, Relaxed);
                if origin > 0 {
                    m.answers_origin.fetch_add(origin, Relaxed);
                }
                if none > 0 {
                    m.answers_none.fetch_add(none, Relaxed);
                }
                m.targets.store(st.lbll.table.len() as u64, Relaxed);
                m.targets_evicted.store(st.lbll.table.evicted(), Relaxed);
                Ok(())
            }
            (Some(_), Frame::LoadReport(r)) => {
                let st = &mut *self.state.borrow_mut();
                for it in r.items() {
                    // Unknown server ids are ignored (config skew), not fatal.
                    st.servers.report(self.dist, it.server, it.inflight);
                }
                st.metrics.load_reports.fetch_add(1, Relaxed);
                Ok(())
            }
            (Some(_), _) => Err(ConnError::Violation(
                "unexpected frame type from a distributor",
                error_code::UNEXPECTED_FRAME,
            )),
        }
    }
}

/// Minimal HTTP/1.x responder for `GET /metrics` (Prometheus text).
async fn metrics_endpoint(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let m = metrics.clone();
        tokio::task::spawn_local(async move {
            let mut req = [0u8; 2048];
            let mut n = 0;
            let read = async {
                while n < req.len() {
                    match s.read(&mut req[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
            let (status, body) = if req[..n].starts_with(b"GET /metrics ") {
                ("200 OK", m.render_prometheus())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}
