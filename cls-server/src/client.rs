//! Distributor-side CLS client with self-clocking batching (thesis §7.3.2).
//!
//! One [`ClsClient`] per distributor worker thread owns one persistent TCP
//! connection to the CLS and one driver task. Any number of tasks on that
//! thread call [`ClsClient::lookup`] concurrently; lookups wait in a queue;
//! the driver sends at most one batch at a time, and everything that queued
//! up while a batch was in flight forms the next batch (at most
//! `max_batch`). A quiet CLS therefore answers single lookups at once and a
//! busy one receives bigger batches.
//!
//! Failure behaviour: while the client is not connected, `lookup` fails at
//! once with [`ClsError::Unavailable`]; a lookup not answered within
//! `timeout` fails with [`ClsError::Timeout`]. The caller then decides
//! locally (its own lblc or consistent hashing). The driver reconnects with
//! exponential back-off (`backoff_min` doubling to `backoff_max`).
//!
//! Works on any tokio current-thread runtime with a `LocalSet`, including
//! tokio-uring's; the client is `!Send` by design. By default it connects
//! with tokio's own `TcpStream` (the runtime needs tokio's I/O driver); a
//! runtime without one gives a [`Connector`] (ktcpvs: sockets waited on
//! through io_uring).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::proto::{self, BatchWriter, Frame, LoadItem, LookupItem};
pub use crate::proto::{content_id, flags, Answer, ServerEntry, NO_NODE};

/// Client settings; [`ClientConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The CLS address.
    pub addr: SocketAddr,
    /// Identifies the distributor (worker) in the CLS logs.
    pub distributor_id: u32,
    /// The server id of the node this distributor runs on (co-located
    /// deployments), sent in Hello and used when a lookup gives no local
    /// node.
    pub node_id: Option<u16>,
    /// Most lookups in one batch (also capped by the CLS's limit).
    pub max_batch: usize,
    /// A lookup not answered within this fails with `Timeout`. Default 20 ms.
    pub timeout: Duration,
    /// Connecting (and the Hello exchange) must finish within this.
    pub connect_timeout: Duration,
    /// A batch unanswered for this long means the CLS is hung: the client
    /// drops the connection and reconnects. Default 1 s.
    pub batch_timeout: Duration,
    /// Reconnect back-off: first delay, doubled up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Lookups queued beyond this fail at once with `Overloaded`.
    pub max_queue: usize,
    /// Opens the connection to the CLS; `None`: tokio's `TcpStream`.
    pub connector: Option<Connector>,
}

/// A byte stream the client can talk to the CLS over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Transport for T {}

/// What [`Connector`] returns: a connected stream with Nagle off.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Transport>>>>>;

/// How the client opens its TCP connection to `addr` (see the module docs).
#[derive(Clone)]
pub struct Connector(pub Rc<dyn Fn(SocketAddr) -> Connecting>);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector(..)")
    }
}

/// The default: tokio's `TcpStream`.
fn tokio_connect(addr: SocketAddr) -> Connecting {
    Box::pin(async move {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s) as Box<dyn Transport>)
    })
}

impl ClientConfig {
    pub fn new(addr: SocketAddr) -> Self {
        ClientConfig {
            addr,
            distributor_id: 0,
            node_id: None,
            max_batch: 256,
            timeout: Duration::from_millis(20),
            connect_timeout: Duration::from_millis(500),
            batch_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
            max_queue: 8192,
            connector: None,
        }
    }
}

/// Why a lookup got no answer. In every case the distributor decides
/// locally; none of these is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClsError {
    #[error("CLS not connected")]
    Unavailable,
    #[error("CLS did not answer in time")]
    Timeout,
    #[error("too many lookups queued")]
    Overloaded,
    #[error("CLS connection lost with the lookup in flight")]
    Disconnected,
    #[error("client closed")]
    Closed,
}

/// Counters of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Lookups answered by the CLS.
    pub answered: u64,
    /// Batches sent.
    pub batches: u64,
    /// Lookups that failed (any [`ClsError`]).
    pub failed: u64,
    /// Successful connections (the first included).
    pub connects: u64,
}

/// Key of a lookup's [`Waiting`] cell in `Shared::cells`.
type Reply = usize;

/// Where a lookup's answer meets its caller: one slab entry per pending
/// lookup, reused after it (no allocation per lookup once the slab has
/// grown to the peak number of pending lookups).
#[derive(Default)]
struct Waiting {
    result: Option<Result<Answer, ClsError>>,
    waker: Option<Waker>,
    /// The caller stopped waiting (its future was dropped): whoever would
    /// answer frees the cell instead.
    gone: bool,
}

/// A queued lookup. Its deadline is enforced by the driver (one timer for
/// all lookups, not one per lookup: a per-lookup tokio timer cost about as
/// much as the rest of the lookup).
struct Pending {
    item: LookupItem,
    deadline: Instant,
    tx: Reply,
}

/// A lookup in the batch in flight; `tx` is taken when it is answered
/// (e.g. times out).
struct Slot {
    deadline: Instant,
    tx: Option<Reply>,
}

#[derive(Default)]
struct State {
    connected: bool,
    closed: bool,
    queue: VecDeque<Pending>,
    /// Server id → address, from the last HelloAck.
    servers: Vec<ServerEntry>,
    /// Latest load report not yet sent.
    load: Vec<LoadItem>,
    load_dirty: bool,
}

struct Shared {
    cfg: ClientConfig,
    st: RefCell<State>,
    /// One cell per pending lookup (queued or in flight).
    cells: RefCell<slab::Slab<Waiting>>,
    wake: Notify,
    answered: Cell<u64>,
    batches: Cell<u64>,
    failed: Cell<u64>,
    connects: Cell<u64>,
}

impl Shared {
    fn fail_queue(&self, e: ClsError) {
        loop {
            let Some(p) = self.st.borrow_mut().queue.pop_front() else {
                return;
            };
            self.answer(p.tx, Err(e));
        }
    }

    /// Hands lookup `key` its result (or frees its cell if the caller is
    /// gone). Each key is answered exactly once.
    fn answer(&self, key: Reply, r: Result<Answer, ClsError>) {
        let waker = {
            let mut cells = self.cells.borrow_mut();
            let Some(c) = cells.get_mut(key) else {
                return;
            };
            if c.gone {
                cells.remove(key);
                return;
            }
            c.result = Some(r);
            c.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the caller of lookup `key` stopped waiting; frees its cell
    /// if so.
    fn abandoned(&self, key: Reply) -> bool {
        let mut cells = self.cells.borrow_mut();
        if cells.get(key).is_some_and(|c| c.gone) {
            cells.remove(key);
            return true;
        }
        false
    }
}

/// The caller's side of a pending lookup: ready when the driver has put a
/// result in its cell.
struct Wait<'a> {
    sh: &'a Shared,
    key: Reply,
    done: bool,
}

impl Future for Wait<'_> {
    type Output = Result<Answer, ClsError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut cells = self.sh.cells.borrow_mut();
        let Some(c) = cells.get_mut(self.key) else {
            drop(cells);
            self.done = true;
            return Poll::Ready(Err(ClsError::Disconnected));
        };
        if let Some(r) = c.result.take() {
            cells.remove(self.key);
            drop(cells);
            self.done = true;
            return Poll::Ready(r);
        }
        match &mut c.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut cells = self.sh.cells.borrow_mut();
        if let Some(c) = cells.get_mut(self.key) {
            if c.result.is_some() {
                cells.remove(self.key);
            } else {
                c.gone = true;
                c.waker = None;
            }
        }
    }
}

/// Handle to the CLS for one distributor thread. Dropping the last `Rc`
/// closes the connection and stops the driver.
pub struct ClsClient {
    sh: Rc<Shared>,
}

impl ClsClient {
    /// Starts the driver task (on the current `LocalSet`) and returns at
    /// once; the connection is made in the background, and lookups fail
    /// with `Unavailable` until it is up.
    pub fn connect(cfg: ClientConfig) -> Rc<ClsClient> {
        let sh = Rc::new(Shared {
            cfg,
            st: RefCell::new(State::default()),
            cells: RefCell::new(slab::Slab::new()),
            wake: Notify::new(),
            answered: Cell::new(0),
            batches: Cell::new(0),
            failed: Cell::new(0),
            connects: Cell::new(0),
        });
        tokio::task::spawn_local(drive(sh.clone()));
        Rc::new(ClsClient { sh })
    }

    /// Asks where content `id` (MD5 of the target, [`content_id`]) should
    /// go. `flags` are [`flags`] bits; `local_node` overrides the
    /// configured node id for this lookup.
    ///
    /// [`content_id`]: crate::proto::content_id
    pub async fn lookup(
        &self,
        id: [u8; 16],
        flags: u8,
        local_node: Option<u16>,
    ) -> Result<Answer, ClsError> {
        let r = self.lookup_inner(id, flags, local_node).await;
        if r.is_err() {
            self.sh.failed.set(self.sh.failed.get() + 1);
        }
        r
    }

    async fn lookup_inner(
        &self,
        id: [u8; 16],
        flags: u8,
        local_node: Option<u16>,
    ) -> Result<Answer, ClsError> {
        let key = {
            let mut st = self.sh.st.borrow_mut();
            if st.closed {
                return Err(ClsError::Closed);
            }
            if !st.connected {
                return Err(ClsError::Unavailable);
            }
            if st.queue.len() >= self.sh.cfg.max_queue {
                return Err(ClsError::Overloaded);
            }
            let tx = self.sh.cells.borrow_mut().insert(Waiting::default());
            st.queue.push_back(Pending {
                item: LookupItem {
                    id,
                    flags: flags & proto::flags::ALL,
                    local_node: local_node.unwrap_or(NO_NODE),
                },
                deadline: Instant::now() + self.sh.cfg.timeout,
                tx,
            });
            tx
        };
        self.sh.wake.notify_one();
        // The driver answers every queued lookup: with the CLS's answer, by
        // its deadline (Timeout), or when the connection goes.
        Wait {
            sh: &self.sh,
            key,
            done: false,
        }
        .await
    }

    /// Records this distributor's in-flight connection units per server
    /// `(server id, units)`; sent before the next batch (or at once when
    /// idle). Only the latest report is kept.
    pub fn report_load(&self, items: &[(u16, u32)]) {
        let mut st = self.sh.st.borrow_mut();
        st.load.clear();
        st.load.extend(
            items
                .iter()
                .filter(|(s, _)| *s != NO_NODE)
                .take(proto::MAX_BATCH)
                .map(|&(server, inflight)| LoadItem { server, inflight }),
        );
        st.load_dirty = true;
        drop(st);
        self.sh.wake.notify_one();
    }

    /// Whether the connection is up (Hello exchanged).
    pub fn is_connected(&self) -> bool {
        self.sh.st.borrow().connected
    }

    /// Waits until connected, at most `within`.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Address of server `id` as announced by the CLS.
    pub fn server_addr(&self, id: u16) -> Option<SocketAddr> {
        let st = self.sh.st.borrow();
        // The CLS lists servers in id order; search only if it did not.
        match st.servers.get(id as usize) {
            Some(e) if e.id == id => Some(e.addr),
            _ => st.servers.iter().find(|e| e.id == id).map(|e| e.addr),
        }
    }

    /// The CLS's server table as announced (normally index = server id).
    pub fn servers(&self) -> Vec<ServerEntry> {
        self.sh.st.borrow().servers.clone()
    }

    /// Lookups whose cell is still in use (queued, in flight, or answered
    /// but not yet collected by a caller).
    pub fn pending(&self) -> usize {
        self.sh.cells.borrow().len()
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            answered: self.sh.answered.get(),
            batches: self.sh.batches.get(),
            failed: self.sh.failed.get(),
            connects: self.sh.connects.get(),
        }
    }
}

impl Drop for ClsClient {
    fn drop(&mut self) {
        self.sh.st.borrow_mut().closed = true;
        self.sh.wake.notify_one();
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("closed by the CLS")]
    Eof,
    #[error("protocol: {0}")]
    Proto(#[from] proto::ProtoError),
    #[error("unexpected reply: {0}")]
    Unexpected(&'static str),
    #[error("CLS sent error code {0}")]
    Remote(u16),
}

const RBUF_CEILING: usize = proto::LEN_BYTES + proto::MAX_FRAME_LEN;

/// Read side: a buffer with a ceiling, filled until one whole frame is in.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    /// Buffers one whole frame; returns its length (prefix included),
    /// starting at `self.start`.
    async fn frame(&mut self, s: &mut dyn Transport) -> Result<usize, SessionError> {
        loop {
            match proto::check(&self.buf[self.start..self.end])? {
                proto::Check::Complete(n) => return Ok(n),
                proto::Check::Incomplete(need) => {
                    if need > self.buf.len() - self.start {
                        self.buf.copy_within(self.start..self.end, 0);
                        self.end -= self.start;
                        self.start = 0;
                        if need > self.buf.len() {
                            let n = need.max(self.buf.len() * 2).min(RBUF_CEILING);
                            self.buf.resize(n, 0);
                        }
                    }
                    let k = s.read(&mut self.buf[self.end..]).await?;
                    if k == 0 {
                        return Err(SessionError::Eof);
                    }
                    self.end += k;
                }
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

async fn drive(sh: Rc<Shared>) {
    let cfg = sh.cfg.clone();
    let mut backoff = cfg.backoff_min;
    let mut rd = Reader {
        buf: vec![0u8; 8192],
        start: 0,
        end: 0,
    };
    let mut wbuf = Vec::with_capacity(64 + cfg.max_batch * 24);
    let mut inflight = Vec::with_capacity(cfg.max_batch);
    let mut req_id = 0u32;
    let mut was_up = false;
    loop {
        if sh.st.borrow().closed {
            return;
        }
        rd.start = 0;
        rd.end = 0;
        let r = session(
            &sh,
            &mut rd,
            &mut wbuf,
            &mut inflight,
            &mut req_id,
            &mut backoff,
        )
        .await;
        let connected = std::mem::replace(&mut sh.st.borrow_mut().connected, false);
        for slot in inflight.drain(..) {
            if let Some(tx) = slot.tx {
                sh.answer(tx, Err(ClsError::Disconnected));
            }
        }
        sh.fail_queue(ClsError::Disconnected);
        if sh.st.borrow().closed {
            return;
        }
        match r {
            Ok(()) => return,
            Err(e) if connected || !was_up => {
                warn!(cls = %cfg.addr, error = %e, "CLS connection lost; deciding locally until it is back");
            }
            Err(e) => debug!(cls = %cfg.addr, error = %e, "CLS reconnect failed"),
        }
        was_up |= connected;
        // Back off, but stop at once if the client is dropped.
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = async { while !sh.st.borrow().closed { sh.wake.notified().await } } => return,
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

type Inflight = Vec<Slot>;

/// The earliest deadline still pending: the first live slot of the batch in
/// flight, else the head of the queue (both are in arrival order).
fn next_deadline(sh: &Shared, inflight: &Inflight) -> Option<Instant> {
    inflight
        .iter()
        .find(|s| s.tx.is_some())
        .map(|s| s.deadline)
        .or_else(|| sh.st.borrow().queue.front().map(|p| p.deadline))
}

/// Fails every lookup whose deadline has passed with `Timeout`.
fn expire(sh: &Shared, inflight: &mut Inflight, now: Instant) {
    for s in inflight.iter_mut() {
        if s.deadline > now {
            break;
        }
        if let Some(tx) = s.tx.take() {
            sh.answer(tx, Err(ClsError::Timeout));
        }
    }
    loop {
        let p = {
            let mut st = sh.st.borrow_mut();
            if st.queue.front().is_none_or(|p| p.deadline > now) {
                return;
            }
            st.queue.pop_front()
        };
        if let Some(p) = p {
            sh.answer(p.tx, Err(ClsError::Timeout));
        }
    }
}

async fn session(
    sh: &Shared,
    rd: &mut Reader,
    wbuf: &mut Vec<u8>,
    inflight: &mut Inflight,
    req_id: &mut u32,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let cfg = &sh.cfg;
    // Connect and exchange Hello / HelloAck.
    let mut s = tokio::time::timeout(cfg.connect_timeout, async {
        let mut s = match &cfg.connector {
            Some(c) => (c.0)(cfg.addr).await?,
            None => tokio_connect(cfg.addr).await?,
        };
        wbuf.clear();
        proto::encode_hello(
            wbuf,
            &proto::Hello {
                version: proto::VERSION,
                distributor_id: cfg.distributor_id,
                node_id: cfg.node_id.unwrap_or(NO_NODE),
            },
        );
        s.write_all(wbuf).await?;
        let n = rd.frame(&mut *s).await?;
        let max_batch = match proto::parse(&rd.buf[rd.start..rd.start + n])? {
            Frame::HelloAck(a) => {
                if a.version != proto::VERSION {
                    return Err(SessionError::Unexpected("protocol version"));
                }
                let mut st = sh.st.borrow_mut();
                st.servers.clear();
                st.servers.extend(a.servers());
                a.max_batch as usize
            }
            Frame::Error(c) => return Err(SessionError::Remote(c)),
            _ => return Err(SessionError::Unexpected("expected HelloAck")),
        };
        rd.consume(n);
        Ok::<_, SessionError>((s, max_batch))
    })
    .await
    .map_err(|_| SessionError::Timeout)??;
    let max_batch = cfg.max_batch.min(s.1).clamp(1, proto::MAX_BATCH);
    {
        let mut st = sh.st.borrow_mut();
        st.connected = true;
        st.load_dirty = !st.load.is_empty();
    }
    sh.connects.set(sh.connects.get() + 1);
    *backoff = cfg.backoff_min;
    info!(cls = %cfg.addr, "connected to the CLS");
    let s = &mut *s.0;

    loop {
        // Idle: wait for work, noticing a CLS that goes away meanwhile.
        loop {
            if rd.start != rd.end || rd.end == rd.buf.len() {
                return Err(SessionError::Unexpected("data while idle"));
            }
            {
                let st = sh.st.borrow();
                if st.closed {
                    return Ok(());
                }
                if !st.queue.is_empty() || st.load_dirty {
                    break;
                }
            }
            tokio::select! {
                _ = sh.wake.notified() => {}
                r = s.read(&mut rd.buf[rd.end..]) => match r? {
                    0 => return Err(SessionError::Eof),
                    _ => return Err(SessionError::Unexpected("data while idle")),
                },
            }
        }
        // Build: load report (if any) + everything queued, up to max_batch.
        wbuf.clear();
        {
            let mut st = sh.st.borrow_mut();
            if st.load_dirty {
                let mut w = BatchWriter::load_report(wbuf);
                for it in &st.load {
                    w.push_load(it);
                }
                w.finish();
                st.load_dirty = false;
            }
            if !st.queue.is_empty() {
                let mark = wbuf.len();
                *req_id = req_id.wrapping_add(1);
                let mut w = BatchWriter::lookup(wbuf, *req_id);
                while inflight.len() < max_batch {
                    let Some(p) = st.queue.pop_front() else { break };
                    // Skip lookups whose caller already gave up.
                    if sh.abandoned(p.tx) {
                        continue;
                    }
                    w.push_lookup(&p.item);
                    inflight.push(Slot {
                        deadline: p.deadline,
                        tx: Some(p.tx),
                    });
                }
                w.finish();
                if inflight.is_empty() {
                    wbuf.truncate(mark);
                }
            }
        }
        if wbuf.is_empty() {
            continue;
        }
        // A batch is at most ~20 KiB: if the CLS does not take it within a
        // lookup timeout it is not reading, and the connection is dropped
        // (so no caller waits longer than its timeout).
        tokio::time::timeout(cfg.timeout, s.write_all(wbuf))
            .await
            .map_err(|_| SessionError::Timeout)??;
        if inflight.is_empty() {
            continue;
        }
        // Wait for the answer; lookups arriving meanwhile form the next
        // batch. Callers whose deadline passes meanwhile get `Timeout`; a
        // batch unanswered for `batch_timeout` drops the connection.
        let give_up = Instant::now() + cfg.batch_timeout;
        let n = loop {
            let wake = next_deadline(sh, inflight).map_or(give_up, |d| d.min(give_up));
            tokio::select! {
                r = rd.frame(s) => break r?,
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    expire(sh, inflight, now);
                    if now >= give_up {
                        return Err(SessionError::Timeout);
                    }
                }
            }
        };
        match proto::parse(&rd.buf[rd.start..rd.start + n])? {
            Frame::BatchAnswer(a) if a.request_id == *req_id && a.len() == inflight.len() => {
                for (slot, ans) in inflight.drain(..).zip(a.answers()) {
                    if let Some(tx) = slot.tx {
                        sh.answer(tx, Ok(ans));
                    }
                }
                sh.answered.set(sh.answered.get() + a.len() as u64);
                sh.batches.set(sh.batches.get() + 1);
            }
            Frame::Error(c) => return Err(SessionError::Remote(c)),
            _ => return Err(SessionError::Unexpected("answer does not match the batch")),
        }
        rd.consume(n);
    }
}
