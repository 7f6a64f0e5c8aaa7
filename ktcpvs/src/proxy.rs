//! One request/response exchange (thesis §6.4, §6.5): schedule the request
//! on a real server, take a pooled keep-alive connection (or open one),
//! send the rewritten head, stream the body both ways — spliced when
//! large, copied when small — and give the server connection back to the
//! pool when the exchange left it clean.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_uring::net::TcpStream;
use tracing::{debug, warn};

use crate::conn::{reply_error, Bufs};
use crate::http::chunked::ChunkedScanner;
use crate::http::request::RequestHead;
use crate::http::response::{self, ClientView};
use crate::http::Body;
use crate::metrics::ErrorKind;
use crate::obs::note;
use crate::sched::queue::{Admit, WaitQueue};
use crate::sched::rules::Subject;
use crate::sched::{target_hash, Request, Server};
use crate::uring::{
    poll, read_append, read_append_max, set_nonblocking, set_rcvlowat, splice_nb, write_pair,
    write_range, Pipe,
};
use crate::worker::{ServiceRt, Worker};

/// Longest wait for a real server to take request bytes.
const SERVER_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How an exchange failed; decides retry, error reply and what to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// The server connection failed before any byte of a response arrived.
    BeforeResponse,
    /// The server answered garbage or broke off after responding began.
    Server,
    /// The server did not answer in time; nothing was sent to the client.
    Timeout,
    /// The server's response head was malformed; nothing was sent to the client.
    BadResponse,
    /// The client went away mid-exchange.
    Client,
    /// The client's chunked body was malformed (the server connection is
    /// dropped with the partial request): 400 if no response began.
    BadBody,
}

pub(crate) struct Done {
    server_reusable: bool,
    pub(crate) keep_client: bool,
    /// The server answered 101 to the client's upgrade: the 101 head went
    /// to the client, and both connections now carry the new protocol
    /// ([`crate::tunnel::run`]).
    pub(crate) upgraded: bool,
}

/// Counts a request's cost on its server while the exchange runs; its end
/// wakes a request waiting for the in-flight cap on this worker.
struct LoadGuard<'a>(&'a Server, u32, &'a WaitQueue);

impl<'a> LoadGuard<'a> {
    fn new(s: &'a Server, cost: u32, q: &'a WaitQueue) -> Self {
        s.conns.fetch_add(cost, Relaxed);
        s.requests.fetch_add(1, Relaxed);
        LoadGuard(s, cost, q)
    }
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(self.1, Relaxed);
        self.2.finished();
    }
}

/// Forwards the request whose head is parsed at the start of `bufs.cb`
/// (its rewritten form is in `bufs.out`) and relays the response. On return
/// the request (head and body) has been consumed from `bufs.cb`. Returns
/// whether the client connection stays open.
pub async fn exchange(
    w: &Rc<Worker>,
    s: &ServiceRt,
    client: &Rc<TcpStream>,
    bufs: &mut Bufs,
    head: &RequestHead,
    peer: std::net::IpAddr,
) -> bool {
    let hash = target_hash(&bufs.cb[head.target.0..head.target.1]);
    let view = ClientView {
        http10: head.http10,
        keep_alive: head.keep_alive && !w.shutting_down(),
        head_request: head.method == crate::http::request::Method::Head,
        via: s.cfg.forwarding.via,
        upgrade: head.upgrade,
    };
    let retryable = head.body == Body::None && head.method.idempotent();
    // Content rules (§6.3.6): servers outside the request's set are
    // excluded from every decision.
    let mut exclude = s.cfg.rules.route(&Subject {
        path: &bufs.cb[head.target.0..head.target.1],
        host: &bufs.cb[head.host.0..head.host.1],
        method: &bufs.cb[head.method_name.0..head.method_name.1],
    });
    let mut tried = false;
    let mut force_fresh = false;
    let mut retried = false;
    // Cache mode / CLS (crate::cache, crate::cls): maybe a placement for
    // the first attempt, or the origin.
    let mut placed = None;
    if s.cfg.cache.is_some() || s.cls.is_some() {
        match crate::cache::route(w, s, client, &bufs.cb, head).await {
            crate::cache::Route::Sched => {}
            crate::cache::Route::Server(i) => placed = Some(i),
            crate::cache::Route::Origin(a) => {
                return crate::cache::exchange_origin(w, s, client, bufs, head, view, a).await
            }
            crate::cache::Route::NoOrigin => {
                reply_error(w, client, 502).await;
                return false;
            }
        }
    }
    loop {
        // The lblc/lblcr in-flight cap: beyond Σhigh, wait for room.
        let full = || s.sched.borrow().at_capacity(&s.servers, exclude);
        if full() {
            w.stats.queued_total.fetch_add(1, Relaxed);
            if s.queue.wait(full).await != Admit::Go {
                w.stats.queue_rejected_total.fetch_add(1, Relaxed);
                reply_error(w, client, 503).await;
                return false;
            }
        }
        let picked = if let Some(i) = placed.take().filter(|&i| !exclude.has(i)) {
            Some(i)
        } else {
            let req = Request {
                target: &bufs.cb[head.target.0..head.target.1],
                target_hash: hash,
                peer,
            };
            if s.servers.is_empty() {
                None // a service emptied at runtime (tcpvsadm -d)
            } else {
                s.sched.borrow_mut().pick(&s.servers, &req, exclude)
            }
        };
        let Some(i) = picked else {
            let status = if tried { 502 } else { 503 };
            reply_error(w, client, status).await;
            return false;
        };
        if tried {
            // Another server after a failed one: a scheduler re-assignment.
            w.stats.reassigned_total.fetch_add(1, Relaxed);
        }
        let server = &s.servers[i];
        note(|r| r.server = Some(server.addr));
        let pooled = if force_fresh {
            None
        } else {
            let (c, stale) = s.pool.borrow_mut().get(i, server.id, !retryable);
            w.stats.pool_stale_total.fetch_add(stale, Relaxed);
            c
        };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => {
                w.stats.pool_reused_total.fetch_add(1, Relaxed);
                c
            }
            None => match connect(
                s.cls
                    .as_ref()
                    .map_or(server.addr, |c| c.connect_addr(server.addr)),
                &s.cfg.pool,
            )
            .await
            {
                Ok(c) => {
                    w.stats.pool_new_total.fetch_add(1, Relaxed);
                    Rc::new(c)
                }
                Err(e) if local_shortage(&e) => {
                    // Out of descriptors, memory or local ports here: no
                    // fault of the server, and every other would fail the
                    // same way. 503 (the client may retry), server kept.
                    w.stats.server_connect_errors_total.fetch_add(1, Relaxed);
                    w.stats.error(ErrorKind::Connect);
                    warn_shortage(&e);
                    reply_error(w, client, 503).await;
                    return false;
                }
                Err(e) => {
                    w.stats.server_connect_errors_total.fetch_add(1, Relaxed);
                    w.stats.error(ErrorKind::Connect);
                    crate::health::passive_connect_failure(&s.cfg.name, server, &e);
                    exclude.add(i);
                    tried = true;
                    force_fresh = false;
                    continue;
                }
            },
        };
        force_fresh = false;
        let _load = LoadGuard::new(server, head.cost(), &s.queue);
        if s.cfg.feedback.enabled {
            // Dynamic feedback's INPUT indicator.
            server.health.picks.fetch_add(1, Relaxed);
        }
        let _cls_load = s.cls.as_ref().map(|c| c.track(i, head.cost()));
        w.stats.requests_total.fetch_add(1, Relaxed);
        let r = forward(w, s, client, &conn, bufs, head, view).await;
        if !reused && r.as_ref().err() == Some(&Fail::BeforeResponse) {
            // Passive detection: a new connection reset or closed without
            // an answer. (A pooled one that did is the pool's staleness —
            // a keep-alive timeout, or a server that closes after not
            // reading a body — not a failing server: not counted.)
            crate::health::passive_reset(&s.cfg.name, server, s.cfg.health.fall);
        }
        match r {
            Ok(done) => {
                crate::health::passive_ok(server);
                if completed(w, bufs, head, &done) {
                    s.pool.borrow_mut().put(i, server.id, conn);
                } else if done.upgraded {
                    // The server stays counted (`_load`) while the tunnel
                    // lasts: a long-lived connection, as lc/wlc see it.
                    crate::tunnel::run(w, client, &conn, bufs).await;
                }
                return done.keep_client;
            }
            Err(Fail::BeforeResponse) if retryable && !retried => {
                // A reused connection the server had closed: once more on a
                // fresh one to the same server. A fresh one that failed: the
                // server is in trouble, try another.
                retried = true;
                w.stats.retries_total.fetch_add(1, Relaxed);
                debug!(server = %server.addr, reused, "retrying request");
                if reused {
                    force_fresh = true;
                } else {
                    exclude.add(i);
                    tried = true;
                }
                continue;
            }
            Err(f) => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
                fail_client(w, client, f).await;
                return false;
            }
        }
    }
}

/// A connect that failed for want of a local resource (descriptors,
/// buffers, memory, ephemeral ports), not because of the server.
fn local_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Logs a local shortage at most every 10 s per worker.
fn warn_shortage(e: &io::Error) {
    thread_local! {
        static LAST: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
    }
    LAST.with(|l| {
        let mut last = l.get();
        if crate::obs::due(&mut last, Duration::from_secs(10)) {
            warn!(error = %e, "cannot connect to a server: local resources exhausted (answering 503; the servers stay in rotation)");
        }
        l.set(last);
    });
}

/// Books a complete exchange (also for `crate::cache`'s origin
/// exchanges): counts the response, consumes a body-less request from
/// `bufs.cb`. Returns whether the server connection may be pooled.
pub(crate) fn completed(w: &Worker, bufs: &mut Bufs, head: &RequestHead, done: &Done) -> bool {
    w.stats.responses_total.fetch_add(1, Relaxed);
    if head.body == Body::None {
        bufs.cb.drain(..head.head_len);
    }
    done.server_reusable && !w.shutting_down()
}

/// Tells the client (or closes on it) after a failed exchange.
pub(crate) async fn fail_client(w: &Rc<Worker>, client: &Rc<TcpStream>, f: Fail) {
    match f {
        Fail::Client => {
            w.stats.client_errors_total.fetch_add(1, Relaxed);
            w.stats.error(ErrorKind::ClientAbort);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        Fail::BadBody if !crate::obs::responding() => {
            debug!("malformed chunked request body");
            reply_error(w, client, 400).await
        }
        Fail::BadBody => {
            // Part of a response is out: closing is the only signal left.
            w.stats.error(ErrorKind::Parse);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        Fail::BeforeResponse => {
            w.stats.error(ErrorKind::ServerReset);
            reply_error(w, client, 502).await
        }
        Fail::BadResponse => {
            w.stats.error(ErrorKind::BadResponse);
            reply_error(w, client, 502).await
        }
        Fail::Timeout => {
            w.stats.error(ErrorKind::Timeout);
            reply_error(w, client, 504).await
        }
        Fail::Server => {
            w.stats.error(ErrorKind::ServerAbort);
            // The client may already have part of the response:
            // closing is the only honest signal left.
            w.stats.server_errors_total.fetch_add(1, Relaxed);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A new connection to a real server (or origin), set up as the service's
/// pool settings say.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    pool: &crate::config::PoolConfig,
) -> io::Result<TcpStream> {
    let c = tokio::time::timeout(pool.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    c.set_nodelay(true)?;
    // Ready for splice(2) (see `splice_exact`); io_uring operations and
    // this crate's direct sends (MSG_DONTWAIT) work the same either way.
    set_nonblocking(c.as_raw_fd())?;
    if let Some(cc) = &pool.congestion {
        // Checked when the configuration was read; a failure here leaves
        // the system's algorithm, which still works.
        if let Err(e) = crate::uring::set_congestion(c.as_raw_fd(), cc) {
            debug!(%addr, error = %e, "cannot set pool.congestion");
        }
    }
    Ok(c)
}

/// Sends the request and relays the response on one server connection.
pub(crate) async fn forward(
    w: &Rc<Worker>,
    s: &ServiceRt,
    client: &Rc<TcpStream>,
    server: &Rc<TcpStream>,
    bufs: &mut Bufs,
    head: &RequestHead,
    view: ClientView,
) -> Result<Done, Fail> {
    let out = std::mem::take(&mut bufs.out);
    let n = out.len();
    let (r, out) = write_range(server, out, 0, n, s.cfg.pool.response_timeout).await;
    bufs.out = out;
    r.map_err(|_| Fail::BeforeResponse)?;
    note(|r| r.server_out += n as u64);
    if head.body == Body::None {
        // The head stays in `bufs.cb` until the exchange is over: a retry
        // needs its target again.
        return download(
            w,
            s,
            client,
            server,
            &mut bufs.sb,
            &mut bufs.out,
            view,
            None,
        )
        .await;
    }
    // A body: upload and download run together, so a server may answer
    // early (or send 100 Continue) while the client still sends.
    let cb = std::mem::take(&mut bufs.cb);
    let owes = Cell::new(u64::MAX);
    let up = upload(w, client, server, cb, head, &owes);
    let down = download(
        w,
        s,
        client,
        server,
        &mut bufs.sb,
        &mut bufs.out,
        view,
        Some(&owes),
    );
    tokio::pin!(up, down);
    let mut up_res: Option<(Result<(), Fail>, Vec<u8>)> = None;
    let mut down_res: Option<Result<Done, Fail>> = None;
    // Whether the answer was complete before the body was all sent.
    let mut early = false;
    loop {
        tokio::select! {
            // The upload first: when both are ready, the body was sent
            // before the answer was seen.
            biased;
            r = &mut up, if up_res.is_none() => up_res = Some(r),
            r = &mut down, if down_res.is_none() => {
                early = up_res.is_none();
                down_res = Some(r);
            }
        }
        match (&up_res, &down_res) {
            (_, Some(Err(f))) => return Err(*f),
            // The client failed: nothing more to relay.
            (Some((Err(f), _)), _) if *f != Fail::Server => return Err(*f),
            // The server stopped taking the body (it may have answered and
            // closed: a 413, a redirect): its answer still goes to the client.
            (Some((Err(_), _)), None) => {}
            // Both over, and the client's whole body was read (also when
            // the server stopped taking it: the upload then read the rest
            // and dropped it): the client buffer is at its next request.
            (Some(_), Some(Ok(_))) if owes.get() == 0 => break,
            // Answered while more body than `DRAIN_LIMIT` was still to
            // come (the response said `Connection: close`), or the client
            // asked to close.
            (_, Some(Ok(d))) if !d.keep_client || up_res.is_some() => {
                return Ok(close_after_early_answer(client).await)
            }
            (None, Some(Ok(_))) => {
                // Answered, and the response said keep-alive: the rest of
                // the body (at most `DRAIN_LIMIT`) is read — on to the
                // server, or dropped if the server stopped taking it — so
                // the client connection goes on at its next request.
                match crate::timer::timeout(FINISH_UPLOAD, &mut up).await {
                    Ok(r) if owes.get() == 0 && matches!(r.0, Ok(()) | Err(Fail::Server)) => {
                        up_res = Some(r);
                        break;
                    }
                    _ => return Ok(close_after_early_answer(client).await),
                }
            }
            _ => {}
        }
    }
    let (Some((up_r, cb)), Some(done)) = (up_res, down_res) else {
        unreachable!("both halves finished")
    };
    bufs.cb = cb;
    let mut done = done?;
    if up_r.is_err() || early || (done.server_reusable && unsent(server) > 0) {
        // The server did not take the whole body, or answered before it
        // had it — before the upload ended, or with part of the body still
        // in our send queue, unacknowledged — and most such servers close
        // right after (hyper does): never pool it. A request with a body
        // cannot be retried on a connection found dead only when used.
        done.server_reusable = false;
    }
    Ok(done)
}

/// Bytes of `sock`'s send queue the peer has not acknowledged (SIOCOUTQ);
/// 0 if the ioctl fails.
fn unsent(sock: &TcpStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// An answer that begins while the client still owes at most this much
/// request body keeps the client connection: the rest is read (and
/// dropped, if the server no longer takes it). With more to come, or an
/// unknown amount (chunked, or a body spliced), the answer says
/// `Connection: close`.
const DRAIN_LIMIT: u64 = 256 * 1024;

/// How long a complete answer waits for the rest of the request body
/// (at most `DRAIN_LIMIT`) to be read, to keep the client connection.
const FINISH_UPLOAD: Duration = Duration::from_secs(5);

/// The end of an exchange whose answer began before the request body was
/// all there: the rest of the body cannot be told from a next request
/// without reading it all, so both connections end (the response said
/// `Connection: close` if the client still owed body bytes when it began).
/// What the client still sends is read and dropped for a moment, so that
/// closing with unread input does not reset the connection before the
/// client has read the response.
async fn close_after_early_answer(client: &Rc<TcpStream>) -> Done {
    crate::conn::lingering_close(client).await;
    Done {
        server_reusable: false,
        keep_client: false,
        upgraded: false,
    }
}

/// Sends the request body to the server; returns the client buffer with
/// the bytes that follow the body (the next pipelined requests). `owes`
/// tells how many body bytes are still to be read from the client
/// (`u64::MAX`: unknown), 0 once the last one has been.
async fn upload(
    w: &Rc<Worker>,
    client: &Rc<TcpStream>,
    server: &Rc<TcpStream>,
    mut cb: Vec<u8>,
    head: &RequestHead,
    owes: &Cell<u64>,
) -> (Result<(), Fail>, Vec<u8>) {
    let (head_len, body) = (head.head_len, head.body);
    let timeout = Some(w.cfg.limits.client_body_timeout);
    // A client that sent `Expect: 100-continue` may never send its body
    // once it has a final answer: for it, only a body read to its end
    // counts (an early answer then says `Connection: close`).
    let set_owed = |x: u64| {
        owes.set(if head.expect_continue && x != 0 {
            u64::MAX
        } else {
            x
        })
    };
    // Once a send to the server fails, the rest of a copied body is still
    // read from the client and dropped (`sent` stays false), so the client
    // connection ends at its next request and can be kept: a server may
    // answer and close without reading a body (a 401, or a handler that
    // never reads it).
    let mut sent = true;
    match body {
        Body::Length(n) => {
            let avail = ((cb.len() - head_len) as u64).min(n) as usize;
            let mut rem = n - avail as u64;
            if rem < w.cfg.splice_threshold {
                set_owed(rem);
            }
            let (r, b) =
                write_range(server, cb, head_len, head_len + avail, SERVER_SEND_TIMEOUT).await;
            cb = b;
            sent = r.is_ok();
            cb.drain(..head_len + avail);
            if rem >= w.cfg.splice_threshold {
                if !sent {
                    return (Err(Fail::Server), cb);
                }
                let r =
                    splice_exact(w, client, server, rem, timeout, Fail::Client, Fail::Server).await;
                if r.is_ok() {
                    owes.set(0);
                    note(|r| {
                        r.body_in += n;
                        r.server_out += n;
                    });
                }
                return (r, cb);
            }
            while rem > 0 {
                let (r, b) = read_append(client, cb, 4096, timeout).await;
                cb = b;
                match r {
                    Ok(0) | Err(_) => return (Err(Fail::Client), cb),
                    Ok(_) => {}
                }
                let k = (cb.len() as u64).min(rem) as usize;
                set_owed(rem - k as u64);
                if sent {
                    let (r, b) = write_range(server, cb, 0, k, SERVER_SEND_TIMEOUT).await;
                    cb = b;
                    sent = r.is_ok();
                    if sent {
                        w.stats.copied_bytes_total.fetch_add(k as u64, Relaxed);
                    }
                }
                cb.drain(..k);
                rem -= k as u64;
            }
            note(|r| {
                r.body_in += n;
                if sent {
                    r.server_out += n;
                }
            });
        }
        Body::Chunked => {
            let mut sc = ChunkedScanner::new();
            let mut start = head_len;
            loop {
                let c = match sc.feed(&cb[start..], |_| {}) {
                    Ok(c) => c,
                    Err(_) => return (Err(Fail::BadBody), cb),
                };
                if sc.is_done() {
                    owes.set(0);
                }
                if sent {
                    let (r, b) =
                        write_range(server, cb, start, start + c, SERVER_SEND_TIMEOUT).await;
                    cb = b;
                    sent = r.is_ok();
                }
                note(|r| {
                    r.body_in += c as u64;
                    if sent {
                        r.server_out += c as u64;
                    }
                });
                cb.drain(..start + c);
                start = 0;
                if sc.is_done() {
                    break;
                }
                let (r, b) = read_append(client, cb, 4096, timeout).await;
                cb = b;
                match r {
                    Ok(0) | Err(_) => return (Err(Fail::Client), cb),
                    Ok(_) => {}
                }
            }
        }
        Body::None | Body::Close => {
            owes.set(0);
            cb.drain(..head_len);
        }
    }
    (if sent { Ok(()) } else { Err(Fail::Server) }, cb)
}

/// Reads the response head (forwarding interim 1xx heads), then relays the
/// body as its framing says.
// Two sockets, two buffers, what the client asked for and the upload's
// progress: a struct around them would only rename the parameters.
#[allow(clippy::too_many_arguments)]
async fn download(
    w: &Rc<Worker>,
    s: &ServiceRt,
    client: &Rc<TcpStream>,
    server: &Rc<TcpStream>,
    sb: &mut Vec<u8>,
    out: &mut Vec<u8>,
    view: ClientView,
    owes: Option<&Cell<u64>>,
) -> Result<Done, Fail> {
    let rto = Some(s.cfg.pool.response_timeout);
    // A client that stops reading is given up after its idle timeout.
    let ct = w.cfg.limits.client_idle_timeout;
    sb.clear();
    let mut started = false;
    let rh = loop {
        if !sb.is_empty() {
            // A response that begins while the client still owes more
            // request body than `DRAIN_LIMIT` (or an unknown amount) ends
            // the connection (see `forward`): say so in it. (Checked per
            // head: after a 100 Continue the body may come.)
            let view = ClientView {
                keep_alive: view.keep_alive && owes.is_none_or(|o| o.get() <= DRAIN_LIMIT),
                ..view
            };
            match response::parse(sb, view, out) {
                Ok(Some(rh)) if rh.interim => {
                    started = true;
                    sb.drain(..rh.head_len);
                    let (hl, ol) = (rh.head_len as u64, out.len() as u64);
                    note(|r| r.server_in += hl);
                    if !view.http10 {
                        write_all(client, out, ct).await.map_err(|_| Fail::Client)?;
                        note(|r| r.head_out += ol);
                    }
                    continue;
                }
                Ok(Some(rh)) => break rh,
                Ok(None) if sb.len() > 64 * 1024 => {
                    return Err(if started {
                        Fail::Server
                    } else {
                        Fail::BadResponse
                    })
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "bad response from real server");
                    return Err(if started {
                        Fail::Server
                    } else {
                        Fail::BadResponse
                    });
                }
            }
        }
        // At most HEAD_READ bytes: whatever body comes with the head goes
        // through user space, and a large body is better spliced.
        let (r, b) = read_append_max(server, std::mem::take(sb), 4096, HEAD_READ, rto).await;
        *sb = b;
        match r {
            Ok(n) if n > 0 => {}
            Ok(_) if sb.is_empty() && !started => return Err(Fail::BeforeResponse),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(if started { Fail::Server } else { Fail::Timeout });
            }
            Err(_) if sb.is_empty() && !started => return Err(Fail::BeforeResponse),
            _ => return Err(Fail::Server),
        }
    };
    // From here on the client receives bytes; no retry is possible.
    let hl = rh.head_len;
    let avail = sb.len() - hl;
    let mut clean = rh.server_reusable;
    let head_out = out.len() as u64;
    let status = rh.status;
    note(|r| {
        r.status = status;
        r.head_out += head_out;
        r.server_in += hl as u64;
    });
    // Body bytes sent to the client and read from the server.
    let (mut body_out, mut body_in) = (0u64, 0u64);
    if rh.upgrade {
        // The 101 head, and whatever of the new protocol came with it.
        let (r, b) = write_pair(client, std::mem::take(out), &sb[hl..], ct).await;
        *out = b;
        r.map_err(|_| Fail::Client)?;
        let early = avail as u64;
        note(|r| {
            r.body_out += early;
            r.server_in += early;
        });
        sb.clear();
        return Ok(Done {
            server_reusable: false,
            keep_client: false,
            upgraded: true,
        });
    }
    match rh.body {
        Body::None => {
            clean &= avail == 0;
            write_all(client, out, ct).await.map_err(|_| Fail::Client)?;
        }
        Body::Length(n) => {
            let take = (avail as u64).min(n) as usize;
            clean &= avail == take;
            // Head and body bytes in one sendmsg, without a copy.
            let (r, b) = write_pair(client, std::mem::take(out), &sb[hl..hl + take], ct).await;
            *out = b;
            r.map_err(|_| Fail::Client)?;
            let rem = n - take as u64;
            if rem >= w.cfg.splice_threshold {
                splice_exact(w, server, client, rem, rto, Fail::Server, Fail::Client).await?;
            } else if rem > 0 {
                clean &= copy_exact(w, server, client, sb, rem, rto).await?;
            }
            (body_out, body_in) = (n, n);
        }
        Body::Chunked => {
            let mut sc = ChunkedScanner::new();
            let mut from = hl;
            loop {
                let c = if rh.dechunk {
                    let data = &sb[from..];
                    sc.feed(data, |r| out.extend_from_slice(&data[r]))
                } else {
                    sc.feed(&sb[from..], |_| {})
                        .inspect(|&c| out.extend_from_slice(&sb[from..from + c]))
                }
                .map_err(|_| Fail::Server)?;
                clean &= from + c == sb.len();
                // The first write also carries the head.
                let hd = if from == hl { head_out } else { 0 };
                let sent = out.len() as u64 - hd;
                write_all(client, out, ct).await.map_err(|_| Fail::Client)?;
                body_out += sent;
                body_in += c as u64;
                if sc.is_done() {
                    break;
                }
                out.clear();
                sb.clear();
                from = 0;
                let (r, b) = read_append(server, std::mem::take(sb), 0, rto).await;
                *sb = b;
                match r {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Fail::Server),
                }
            }
        }
        Body::Close => {
            out.extend_from_slice(&sb[hl..]);
            body_out = avail as u64;
            write_all(client, out, ct).await.map_err(|_| Fail::Client)?;
            loop {
                sb.clear();
                let (r, b) = read_append(server, std::mem::take(sb), 0, rto).await;
                *sb = b;
                match r {
                    Ok(0) => break,
                    Ok(n) => {
                        write_all(client, sb, ct).await.map_err(|_| Fail::Client)?;
                        body_out += n as u64;
                    }
                    Err(_) => return Err(Fail::Server),
                }
            }
            body_in = body_out;
            clean = false;
        }
    }
    note(|r| {
        r.body_out += body_out;
        r.server_in += body_in;
    });
    Ok(Done {
        server_reusable: clean,
        keep_client: !rh.close_client,
        upgraded: false,
    })
}

/// Writes all of `buf` (which is given back in place).
async fn write_all(sock: &Rc<TcpStream>, buf: &mut Vec<u8>, deadline: Duration) -> io::Result<()> {
    let b = std::mem::take(buf);
    let n = b.len();
    let (r, b) = write_range(sock, b, 0, n, deadline).await;
    *buf = b;
    r
}

/// Most bytes one read of a response head takes (see `download`): a 1 KB
/// object with its head fits in one read, and of a body long enough to be
/// spliced at most this much is copied through user space.
const HEAD_READ: usize = 16 * 1024;

/// Copies exactly `n` bytes from `from` to `to` through `buf`. Returns
/// whether the source sent nothing beyond them.
async fn copy_exact(
    w: &Worker,
    from: &Rc<TcpStream>,
    to: &Rc<TcpStream>,
    buf: &mut Vec<u8>,
    mut n: u64,
    limit: Option<Duration>,
) -> Result<bool, Fail> {
    let mut clean = true;
    while n > 0 {
        buf.clear();
        let (r, b) = read_append(from, std::mem::take(buf), 0, limit).await;
        *buf = b;
        match r {
            Ok(got) if got > 0 => {}
            _ => return Err(Fail::Server),
        }
        let k = (buf.len() as u64).min(n) as usize;
        clean &= k == buf.len();
        buf.truncate(k);
        write_all(to, buf, w.cfg.limits.client_idle_timeout)
            .await
            .map_err(|_| Fail::Client)?;
        w.stats.copied_bytes_total.fetch_add(k as u64, Relaxed);
        n -= k as u64;
    }
    Ok(clean)
}

/// Moves exactly `n` bytes from `from` to `to` with splice(2) through a
/// pooled pipe: the payload never enters user space. Falls back to copying
/// if no pipe can be had.
///
/// Each splice runs inline and non-blocking ([`splice_nb`]); only when a
/// socket is not ready does the task wait, with an io_uring poll. While the
/// body lasts, `from` has SO_RCVLOWAT set to what a pipe holds (or what is
/// left), so that wait ends once a pipe's worth has arrived instead of at
/// every segment: at moderate rates that is what divides the wake-ups (and
/// the CPU) per body. A sender that pauses is flushed after
/// [`LOWAT_FLUSH_AFTER`].
async fn splice_exact(
    w: &Worker,
    from: &Rc<TcpStream>,
    to: &Rc<TcpStream>,
    n: u64,
    limit: Option<Duration>,
    from_fail: Fail,
    to_fail: Fail,
) -> Result<(), Fail> {
    let (fd_in, fd_out) = (from.as_raw_fd(), to.as_raw_fd());
    // splice(2) honours only the sockets' own O_NONBLOCK (SPLICE_F_NONBLOCK
    // covers the pipe): without it a splice from an empty socket would
    // block the whole worker. Server sockets are non-blocking from
    // `connect` on; a client socket is made so here, once per splice.
    // Either failure (no pipe, or no O_NONBLOCK) means a buffered copy.
    let is_server = |f: &Fail| matches!(f, Fail::Server);
    let pipe = w.take_pipe().filter(|_| {
        [(fd_in, &from_fail), (fd_out, &to_fail)]
            .into_iter()
            .filter(|(_, f)| !is_server(f))
            .try_for_each(|(fd, _)| set_nonblocking(fd))
            .inspect_err(|e| warn!(error = %e, "cannot make sockets non-blocking; copying instead of splicing"))
            .is_ok()
    });
    let Some(pipe) = pipe else {
        let mut buf = w.take_buf();
        let r = copy_exact(w, from, to, &mut buf, n, limit).await;
        w.give_buf(buf);
        return r.map(|_| ());
    };
    // The source's SO_RCVLOWAT as splice_loop leaves it.
    let mut lowat = 1;
    let r = splice_loop(w, from, to, &pipe, n, limit, &mut lowat).await;
    // The source may be a pooled server socket: back to the default.
    if lowat != 1 {
        set_rcvlowat(fd_in, 1);
    }
    match r {
        Ok(()) => {
            w.stats.spliced_bytes_total.fetch_add(n, Relaxed);
            w.give_pipe(pipe);
            Ok(())
        }
        Err(side) => {
            let (sock, fail) = match side {
                Side::From => (from, from_fail),
                Side::To => (to, to_fail),
            };
            let _ = sock.shutdown(std::net::Shutdown::Both);
            Err(fail)
        }
    }
}

/// How long a splice waits for a pipe's worth of data (SO_RCVLOWAT) before
/// it settles for whatever has arrived.
const LOWAT_FLUSH_AFTER: Duration = Duration::from_millis(2);

/// Which end of a splice failed.
enum Side {
    From,
    To,
}

async fn splice_loop(
    w: &Worker,
    from: &Rc<TcpStream>,
    to: &Rc<TcpStream>,
    pipe: &Pipe,
    mut n: u64,
    limit: Option<Duration>,
    lowat: &mut u64,
) -> Result<(), Side> {
    let (fd_in, fd_out) = (from.as_raw_fd(), to.as_raw_fd());
    while n > 0 {
        let want = n.min(pipe.cap as u64);
        let mut got = match splice_nb(fd_in, pipe.w, want as usize) {
            Ok(0) => return Err(Side::From),
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing queued: wake only once `want` bytes are (or at
                // EOF/error). Set only when a wait comes, so a body that
                // arrives ahead of the splices costs no setsockopt.
                if want != *lowat {
                    set_rcvlowat(fd_in, want as u32);
                    *lowat = want;
                }
                let wait = poll(from, libc::POLLIN);
                tokio::pin!(wait);
                // The 2 ms flush must not wait for a quiet worker's slow
                // ring tick (250 ms).
                let precise = tokio_uring::precise_timers();
                let ready = tokio::select! {
                    biased;
                    r = &mut wait => r,
                    _ = tokio::time::sleep(LOWAT_FLUSH_AFTER) => {
                        // A slow or pausing sender: take what is there
                        // (lowering the mark wakes the poll if any byte is
                        // queued) so that data is never held back long and
                        // the idle timeout measures silence, not slowness.
                        set_rcvlowat(fd_in, 1);
                        *lowat = 1;
                        drop(precise);
                        match limit {
                            Some(d) => tokio::time::timeout(d, wait)
                                .await
                                .unwrap_or(Err(io::ErrorKind::TimedOut.into())),
                            None => wait.await,
                        }
                    }
                };
                if let Err(e) = ready {
                    debug!(error = %e, "splice: waiting for the source failed");
                    return Err(Side::From);
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "splice in failed");
                return Err(Side::From);
            }
        };
        n -= got as u64;
        while got > 0 {
            match splice_nb(pipe.r, fd_out, got) {
                Ok(0) => return Err(Side::To),
                Ok(put) => got -= put,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = tokio::time::timeout(
                        w.cfg.limits.client_idle_timeout,
                        poll(to, libc::POLLOUT),
                    )
                    .await
                    .unwrap_or(Err(io::ErrorKind::TimedOut.into()));
                    if ready.is_err() {
                        return Err(Side::To);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "splice out failed");
                    return Err(Side::To);
                }
            }
        }
    }
    Ok(())
}
