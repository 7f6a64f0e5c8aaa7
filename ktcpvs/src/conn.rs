//! The client side of one connection: read a request head (check before
//! parse, with limits and timeouts), hand it to [`crate::proxy::exchange`],
//! repeat while the connection is kept alive. Pipelined requests simply
//! wait in the read buffer; each is scheduled on its own and answered in
//! order, because one exchange finishes before the next begins.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_uring::net::TcpStream;
use tracing::{debug, Instrument};

use crate::access_log::{capture, End, Fields};
use crate::metrics::ErrorKind;

use crate::http::request::{self, ForwardCtx};
use crate::uring::{read_append, recv_now, write_range};
use crate::worker::{ip_text, ServiceRt, Worker};

/// The three buffers of a client connection, taken from the worker's pool.
pub struct Bufs {
    /// Bytes from the client not yet consumed (the current head, maybe
    /// body bytes and further pipelined requests).
    pub cb: Vec<u8>,
    /// Bytes from the real server.
    pub sb: Vec<u8>,
    /// The forwarded request head, then the response head for the client.
    pub out: Vec<u8>,
}

pub async fn serve_client(w: Rc<Worker>, svc: Rc<ServiceRt>, stream: TcpStream, peer: SocketAddr) {
    w.active.set(w.active.get() + 1);
    let client = Rc::new(stream);
    let mut bufs = Bufs {
        cb: w.take_buf(),
        sb: w.take_buf(),
        out: w.take_buf(),
    };
    // The access log's per-connection scratch space (request line and
    // headers while the request runs); pooled, and only when logging.
    let mut scratch = if w.alog.is_some() {
        w.take_buf()
    } else {
        Vec::new()
    };
    crate::obs::scope(client_loop(&w, svc, &client, peer, &mut bufs, &mut scratch)).await;
    if w.alog.is_some() {
        w.give_buf(scratch);
    }
    // A read abandoned on a timeout or on shutdown still holds the socket
    // (the kernel owns the operation, and its data holds a reference,
    // until it completes): shutting the socket down completes it and sends
    // the FIN now, not whenever the client next speaks. Otherwise dropping
    // the last reference closes the socket (an io_uring close, which sends
    // the FIN) and the shutdown syscall is saved.
    if Rc::strong_count(&client) > 1 {
        let _ = client.shutdown(std::net::Shutdown::Both);
    }
    w.give_buf(bufs.cb);
    w.give_buf(bufs.sb);
    w.give_buf(bufs.out);
    w.active.set(w.active.get() - 1);
}

async fn client_loop(
    w: &Rc<Worker>,
    mut s: Rc<ServiceRt>,
    client: &Rc<TcpStream>,
    peer: SocketAddr,
    bufs: &mut Bufs,
    scratch: &mut Vec<u8>,
) {
    // The generation `s` is from; a runtime change is picked up between
    // requests (a relaxed atomic load when nothing changed).
    let mut seen = w.seen.get();
    let lim = &w.cfg.limits;
    let mut ipbuf = [0u8; 48];
    let peer_ip = ip_text(peer, &mut ipbuf);
    let mut sd = w.shutdown.clone();
    // The first read of a new connection: its request has usually arrived
    // by the time the connection is accepted.
    let mut fresh = true;
    loop {
        w.current(&mut s, &mut seen);
        // 1. A whole request head.
        let mut head_deadline: Option<std::time::Instant> = None;
        let head = loop {
            if !bufs.cb.is_empty() {
                let ctx = ForwardCtx {
                    fw: s.cfg.forwarding,
                    peer_ip,
                    default_host: &s.default_host,
                };
                let refuse = match request::parse(&bufs.cb, lim.max_headers, &ctx, &mut bufs.out) {
                    Ok(Some(h)) if h.head_len > lim.max_header_bytes => {
                        too_large(&bufs.cb, lim.max_header_bytes)
                    }
                    Ok(Some(h)) => break h,
                    Ok(None) if bufs.cb.len() >= lim.max_header_bytes => {
                        too_large(&bufs.cb, lim.max_header_bytes)
                    }
                    Ok(None) => 0,
                    Err(e) => {
                        debug!(%peer, error = %e, "refusing request");
                        e.status()
                    }
                };
                if refuse != 0 && bufs.cb.starts_with(H2_PREFACE) {
                    // An HTTP/2 client with prior knowledge: answer in its
                    // framing that HTTP/1.1 is required (an HTTP/1.1 400
                    // would read to it as garbage).
                    refuse_h2(w, client).await;
                    return;
                }
                if refuse != 0 {
                    refuse_request(w, client, peer_ip, &bufs.cb, scratch, refuse).await;
                    return;
                }
            }
            let idle = bufs.cb.is_empty();
            // Shutting down: no waiting for a next request (a connection
            // taken from the accept queue at shutdown still has its first
            // one read, if it has arrived).
            if idle && w.shutting_down() && !fresh {
                return;
            }
            let limit = if idle {
                lim.client_idle_timeout
            } else {
                // The whole head within `client_header_timeout` of its
                // first byte, not per read: a client trickling a byte at a
                // time (slowloris) cannot hold the connection for longer.
                // (A clock read only when a head comes in pieces.)
                let now = std::time::Instant::now();
                let until = *head_deadline.get_or_insert(now + lim.client_header_timeout);
                let left = until.saturating_duration_since(now);
                if left.is_zero() {
                    refuse_request(w, client, peer_ip, &bufs.cb, scratch, 408).await;
                    return;
                }
                left
            };
            if std::mem::take(&mut fresh) {
                // One non-blocking recv takes it without an io_uring
                // round trip (arming a poll that is ready at once).
                match recv_now(client, &mut bufs.cb, 4096) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if w.shutting_down() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            let cb = std::mem::take(&mut bufs.cb);
            let (res, cb) = if idle {
                // An idle keep-alive connection waits with one small
                // buffer; its three large ones go back to the worker's pool
                // until a request arrives (with many idle clients they
                // would be most of the memory: bench/idle_memory.py).
                w.give_buf(cb);
                w.give_buf(std::mem::take(&mut bufs.sb));
                w.give_buf(std::mem::take(&mut bufs.out));
                let small = w.take_small();
                let (res, small) = tokio::select! {
                    biased;
                    // The emptied buffers are dropped by `serve_client`.
                    _ = sd.changed() => return,
                    r = read_append(client, small, 0, Some(limit)) => r,
                };
                bufs.sb = w.take_buf();
                bufs.out = w.take_buf();
                let mut cb = w.take_buf();
                cb.extend_from_slice(&small);
                w.give_small(small);
                (res, cb)
            } else {
                read_append(client, cb, 4096, Some(limit)).await
            };
            bufs.cb = cb;
            match res {
                Ok(0) => return, // closed (mid-head: nothing to answer)
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !idle => {
                    refuse_request(w, client, peer_ip, &bufs.cb, scratch, 408).await;
                    return;
                }
                Err(_) => return,
            }
        };
        // 2. Forward it and relay the answer (scheduled on the newest
        // version of the service: the connection may have been idle
        // across a change).
        w.current(&mut s, &mut seen);
        let seq = w.seq.get() + 1;
        w.seq.set(seq);
        if s.cfg.forwarding.request_id {
            crate::obs::add_request_id(&bufs.cb[..head.head_len], &mut bufs.out, w.id, seq);
        }
        let log = w.alog.is_some().then(|| {
            let f = capture(&bufs.cb[..head.head_len], scratch);
            {
                let t0 = std::time::Instant::now();
                (
                    f,
                    w.alog
                        .as_ref()
                        .map_or_else(std::time::SystemTime::now, |l| l.wall(t0)),
                    t0,
                )
            }
        });
        let span = tracing::debug_span!("req", id = %ReqId(w.id, seq));
        let keep = crate::proxy::exchange(w, &s, client, bufs, &head, peer.ip())
            .instrument(span)
            .await;
        end_request(w, peer_ip, scratch, log, seq, head.head_len);
        if !keep || w.shutting_down() {
            return;
        }
    }
}

/// The start of an HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// An empty SETTINGS frame (the server's preface), then GOAWAY with last
/// stream 0 and HTTP_1_1_REQUIRED (0xd, RFC 9113 §7): the client can
/// tell why (curl: "received GOAWAY, error=13") and retry over HTTP/1.1.
const H2_GOAWAY_HTTP11: &[u8] = &[
    0, 0, 0, 4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 0x0d, // HTTP_1_1_REQUIRED
];

async fn refuse_h2(w: &Rc<Worker>, client: &Rc<TcpStream>) {
    w.stats.bad_requests_total.fetch_add(1, Relaxed);
    w.stats.error(ErrorKind::Parse);
    debug!("HTTP/2 preface: answered GOAWAY HTTP_1_1_REQUIRED");
    if write_static(w, client, H2_GOAWAY_HTTP11).await {
        lingering_close(client).await;
    }
}

/// Writes a canned answer through a pooled buffer (5 s at most); false if
/// the client is gone.
async fn write_static(w: &Worker, client: &Rc<TcpStream>, bytes: &[u8]) -> bool {
    let mut b = w.take_buf();
    b.extend_from_slice(bytes);
    let (r, b) = write_range(client, b, 0, bytes.len(), Duration::from_secs(5)).await;
    w.give_buf(b);
    r.is_ok()
}

/// A request id: worker and per-worker sequence number (`3-17`).
struct ReqId(usize, u64);

impl std::fmt::Display for ReqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A request head refused before forwarding (400, 408, 417, 431, 501): the
/// reply, then its metrics and access-log line (the request line as far
/// as it came).
async fn refuse_request(
    w: &Rc<Worker>,
    client: &Rc<TcpStream>,
    peer_ip: &[u8],
    cb: &[u8],
    scratch: &mut Vec<u8>,
    status: u16,
) {
    let seq = w.seq.get() + 1;
    w.seq.set(seq);
    let log = w.alog.is_some().then(|| {
        let f = capture(cb, scratch);
        {
            let t0 = std::time::Instant::now();
            (
                f,
                w.alog
                    .as_ref()
                    .map_or_else(std::time::SystemTime::now, |l| l.wall(t0)),
                t0,
            )
        }
    });
    let span = tracing::debug_span!("req", id = %ReqId(w.id, seq));
    reply_error(w, client, status).instrument(span).await;
    end_request(w, peer_ip, scratch, log, seq, cb.len());
}

/// When a request is over: its bytes and status class into the worker's
/// counters, its line into the access log.
fn end_request(
    w: &Worker,
    peer_ip: &[u8],
    scratch: &[u8],
    log: Option<(Fields, std::time::SystemTime, std::time::Instant)>,
    seq: u64,
    head_in: usize,
) {
    let r = crate::obs::take();
    let st = &w.stats;
    if r.status != 0 {
        st.status(r.status);
    }
    st.client_bytes_received_total
        .fetch_add(head_in as u64 + r.body_in, Relaxed);
    st.client_bytes_sent_total
        .fetch_add(r.head_out + r.body_out, Relaxed);
    st.server_bytes_sent_total.fetch_add(r.server_out, Relaxed);
    st.server_bytes_received_total
        .fetch_add(r.server_in, Relaxed);
    if let (Some(l), Some((f, at, t0))) = (&w.alog, log) {
        let end = End {
            status: r.status,
            body_bytes: r.body_out,
            server: r.server,
            micros: t0.elapsed().as_micros() as u64,
            worker: w.id,
            seq,
        };
        l.log(peer_ip, at, scratch, &f, &end);
    }
}

/// The answer to a head over `limit` bytes: 414 when the request line
/// alone is (the URI, as nginx and HAProxy answer), else 431.
fn too_large(head: &[u8], limit: usize) -> u16 {
    match head.iter().take(limit).position(|&b| b == b'\n') {
        None => 414,
        Some(_) => 431,
    }
}

/// A canned error response, then a lingering close: the write side is shut
/// and unread input drained briefly, so the client is not sent a reset
/// that could destroy the response before it reads it.
pub async fn reply_error(w: &Worker, client: &Rc<TcpStream>, status: u16) {
    let (counter, body): (_, &'static [u8]) = match status {
        400 => (&w.stats.bad_requests_total, b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n"),
        408 => (&w.stats.bad_requests_total, b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n"),
        417 => (&w.stats.bad_requests_total, b"HTTP/1.1 417 Expectation Failed\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nexpectation failed\n"),
        431 => (&w.stats.header_too_large_total, b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\nrequest header fields too large\n"),
        414 => (&w.stats.header_too_large_total, b"HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\nuri too long\n"),
        501 => (&w.stats.bad_requests_total, b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nnot implemented\n"),
        503 => (&w.stats.no_server_total, b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\nRetry-After: 1\r\n\r\nno server available\n"),
        504 => (&w.stats.bad_gateway_total, b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\ngateway timeout\n"),
        _ => (&w.stats.bad_gateway_total, b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad gateway\n"),
    };
    counter.fetch_add(1, Relaxed);
    match status {
        400 | 417 | 501 => w.stats.error(ErrorKind::Parse),
        408 => w.stats.error(ErrorKind::HeaderTimeout),
        414 | 431 => w.stats.error(ErrorKind::TooLarge),
        503 => w.stats.error(ErrorKind::NoServer),
        _ => {} // 502/504: counted by cause where they arise
    }
    if !write_static(w, client, body).await {
        return;
    }
    let head = body
        .windows(4)
        .position(|x| x == b"\r\n\r\n")
        .map_or(body.len(), |p| p + 4);
    crate::obs::note(|r| {
        r.status = status;
        r.head_out += head as u64;
        r.body_out += (body.len() - head) as u64;
    });
    lingering_close(client).await;
}

/// Shuts the write side and discards input for up to a second / 256 KiB.
pub async fn lingering_close(client: &Rc<TcpStream>) {
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut total = 0;
    while total < 256 * 1024 {
        buf.clear();
        let (r, b) = read_append(client, buf, 0, Some(Duration::from_secs(1))).await;
        buf = b;
        match r {
            Ok(n) if n > 0 => total += n,
            _ => break,
        }
    }
}
