//! An in-process HTTP/1.1 origin server: hyper 1 on its own tokio runtime
//! thread, bound to `127.0.0.1:0`.
//!
//! Routes (all responses carry `X-Origin: <name>`, `X-Origin-Conn: <n>` — the
//! index of the TCP connection the request arrived on — and echo any
//! `X-Req-Id` request header):
//!
//! | path | response |
//! |---|---|
//! | `/size/N[/…]` | N pattern bytes, `Content-Length` (HEAD: the header only) |
//! | `/chunked/N[/…]` | N pattern bytes, chunked (several chunks) |
//! | `/echo` | the request body, `X-Body-Md5`, `X-Body-Len` |
//! | `/sink` | `"<len> <md5>\n"` of the request body (streamed, not stored), same headers |
//! | `/status/N` | status N, empty body (`304` adds an `ETag`) |
//! | `/slow/MS[/…]` | waits MS ms, then `slow MS\n` |
//! | `/upgrade` with `Connection: upgrade` | `101`, `Upgrade:` as asked; then the connection greets (`<name> switched\n`), echoes every byte, and on the client's half-close answers `bye <n>\n` (n = bytes echoed) and closes |
//! | anything else | `<name> <path>\n` |

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use md5::{Digest, Md5};

use crate::pattern::fill_pattern;

/// A request head as the origin saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// `"HTTP/1.1"` or `"HTTP/1.0"`.
    pub version: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Index of the TCP connection it arrived on.
    pub conn: usize,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct State {
    name: String,
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
}

/// A running origin; stops (closing every connection) when dropped.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    /// Starts an origin named `name` on a fresh loopback port.
    pub fn start(name: &str) -> Origin {
        Self::try_start_at(name, SocketAddr::from(([127, 0, 0, 1], 0))).expect("origin bind")
    }

    /// Starts an origin on a given address (e.g. to restart one that was
    /// stopped, on the same port).
    pub fn try_start_at(name: &str, addr: SocketAddr) -> std::io::Result<Origin> {
        let std_listener = StdListener::bind(addr)?;
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            name: name.to_string(),
            ..State::default()
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("origin-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("origin runtime");
                rt.block_on(accept_loop(std_listener, st, rx));
            })
            .expect("spawn origin thread");
        Ok(Origin {
            addr,
            state,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// TCP connections currently open.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Requests whose head was received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Distinct TCP connections that carried at least one request (probe
    /// connections that never sent a request are not counted).
    pub fn connections_used(&self) -> usize {
        let mut c: Vec<usize> = self.seen().iter().map(|s| s.conn).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    }

    /// Requests whose target starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.target.starts_with(prefix))
            .count()
    }

    /// Every request head received so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the origin: listener and every connection closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    std_listener: StdListener,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let conn = state.accepted.fetch_add(1, Ordering::SeqCst);
                state.open.fetch_add(1, Ordering::SeqCst);
                let st = state.clone();
                tokio::spawn(async move {
                    let svc_state = st.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, svc_state.clone(), conn)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
    // Returning drops the runtime, which cancels the connection tasks and
    // closes their sockets.
}

type RespBody = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The `/upgrade` route's new protocol: a greeting, an echo of every byte,
/// and after the peer's half-close a count of the bytes echoed.
async fn echo_protocol(upgraded: hyper::upgrade::Upgraded, name: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    if io
        .write_all(format!("{name} switched\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut echoed = 0usize;
    loop {
        match io.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                echoed += n;
            }
            Err(_) => return,
        }
    }
    let _ = io.write_all(format!("bye {echoed}\n").as_bytes()).await;
    let _ = io.shutdown().await;
}

async fn handle(
    mut req: Request<Incoming>,
    st: Arc<State>,
    conn: usize,
) -> Result<Response<RespBody>, Infallible> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let seen = SeenRequest {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        conn,
    };
    st.seen.lock().unwrap_or_else(|e| e.into_inner()).push(seen);

    let req_id = req.headers().get("x-req-id").cloned();
    let is_head = req.method() == Method::HEAD;
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let first = parts.next().unwrap_or("");
    let num: Option<u64> = parts.next().and_then(|n| n.parse().ok());

    let mut resp = match (first, num) {
        ("size", Some(n)) => {
            let body = if is_head {
                full(Bytes::new())
            } else {
                PatternBody::new(n, 64 * 1024, true)
                    .map_err(|never| match never {})
                    .boxed()
            };
            let mut r = Response::new(body);
            r.headers_mut().insert("content-length", n.into());
            r
        }
        ("chunked", Some(n)) => {
            let body = if is_head {
                full(Bytes::new())
            } else {
                PatternBody::new(n, 3000, false)
                    .map_err(|never| match never {})
                    .boxed()
            };
            Response::new(body)
        }
        ("echo", _) => {
            let data = match req.into_body().collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => return Ok(error_response()),
            };
            let md5 = format!("{:x}", Md5::digest(&data));
            let len = data.len();
            let mut r = Response::new(full(data));
            r.headers_mut()
                .insert("x-body-md5", md5.parse().expect("hex"));
            r.headers_mut().insert("x-body-len", len.into());
            r
        }
        ("sink", _) => {
            let mut body = req.into_body();
            let mut h = Md5::new();
            let mut len = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            h.update(d);
                            len += d.len();
                        }
                    }
                    Err(_) => return Ok(error_response()),
                }
            }
            let md5 = format!("{:x}", h.finalize());
            let mut r = Response::new(full(format!("{len} {md5}\n")));
            r.headers_mut()
                .insert("x-body-md5", md5.parse().expect("hex"));
            r.headers_mut().insert("x-body-len", len.into());
            r
        }
        ("status", Some(code)) => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::from_u16(code as u16).unwrap_or(StatusCode::OK);
            if code == 304 {
                r.headers_mut()
                    .insert("etag", "\"e2e\"".parse().expect("etag"));
            }
            r
        }
        ("upgrade", _)
            if req
                .headers()
                .get("connection")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) =>
        {
            let proto = req.headers().get("upgrade").cloned();
            let on = hyper::upgrade::on(&mut req);
            let name = st.name.clone();
            tokio::spawn(async move {
                if let Ok(u) = on.await {
                    echo_protocol(u, name).await;
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            if let Some(p) = proto {
                r.headers_mut().insert("upgrade", p);
            }
            r.headers_mut()
                .insert("connection", "upgrade".parse().expect("token"));
            r
        }
        ("slow", Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("slow {ms}\n")))
        }
        _ => Response::new(full(format!("{} {}\n", st.name, path))),
    };
    let h = resp.headers_mut();
    h.insert("x-origin", st.name.parse().expect("origin name"));
    h.insert("x-origin-conn", conn.into());
    if let Some(id) = req_id {
        h.insert("x-req-id", id);
    }
    Ok(resp)
}

fn error_response() -> Response<RespBody> {
    let mut r = Response::new(full("body error\n"));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// `len` pattern bytes in frames of `chunk` bytes; `sized` gives hyper an
/// exact size hint (Content-Length), otherwise hyper uses chunked coding.
struct PatternBody {
    offset: u64,
    len: u64,
    chunk: u64,
    sized: bool,
}

impl PatternBody {
    fn new(len: u64, chunk: u64, sized: bool) -> Self {
        PatternBody {
            offset: 0,
            len,
            chunk,
            sized,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let n = this.chunk.min(this.len - this.offset);
        let mut v = vec![0u8; n as usize];
        fill_pattern(this.offset, &mut v);
        this.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sized && self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.len - self.offset)
        } else {
            SizeHint::default()
        }
    }
}
