//! Cache-cluster front (thesis §7.5, issue 4): a service with
//! `mode = "cache"` has cache servers as its `[[service.server]]`s.
//!
//! * [`classify`] decides, without allocating, whether a request may be
//!   served by a cache: only GET/HEAD, no query string, no `Cookie` or
//!   `Authorization`, no `Cache-Control: no-store/no-cache/private`, no
//!   `Pragma: no-cache`, and no configured `bypass` pattern in the path.
//! * Non-cacheable requests go straight to the **origin**; cacheable ones
//!   go where the CLS says (`crate::cls`), to the origin when it answers
//!   ORIGIN, else to the worker's own scheduler over the caches.
//! * **The origin** of a request is, in order: in transparent mode the
//!   connection's original destination (`transparent = "redirect"`:
//!   nftables REDIRECT, read with `getsockopt(SO_ORIGINAL_DST)`;
//!   `"tproxy"`: nftables TPROXY to an `IP_TRANSPARENT` listener, where the
//!   accepted socket's local address *is* the original destination); else
//!   the authority of an absolute URI or the `Host` header, if it is an IP
//!   literal (port `origin_port` unless given) or a name listed in
//!   `[service.cache.origins]`. Names are never resolved with DNS: that
//!   would block the worker. A request whose origin cannot be found this way
//!   is answered 502.
//! * Origin connections are kept alive per worker and origin address in a
//!   [`crate::pool::Pool`] keyed by `SocketAddr` (`ServiceRt::origins`):
//!   at most `pool.max_idle_per_server` idle connections per origin, at
//!   most `cache.max_origins` origins, closed after `pool.idle_timeout_ms`,
//!   probed before reuse like the server pool. An idempotent request whose
//!   reused connection fails before any response byte is sent once more on
//!   a fresh connection.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Deserialize;
use tokio_uring::net::TcpStream;

use crate::config::{field_err, ConfigError};
use crate::conn::{reply_error, Bufs};
use crate::http::request::{Method, RequestHead};
use crate::http::response::ClientView;
use crate::http::Body;
use crate::worker::{ServiceRt, Worker};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub transparent: Option<String>,
    pub origin_port: Option<u16>,
    #[serde(default)]
    pub bypass: Vec<String>,
    #[serde(default)]
    pub origins: std::collections::BTreeMap<String, String>,
    pub max_origins: Option<usize>,
}

/// How the origin of a connection is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transparent {
    /// From the request (absolute URI / Host).
    Off,
    /// nftables REDIRECT: `getsockopt(SO_ORIGINAL_DST)`.
    Redirect,
    /// nftables TPROXY: the accepted socket's local address; the listener
    /// is bound with `IP_TRANSPARENT`.
    Tproxy,
}

/// Checked cache-mode settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub transparent: Transparent,
    pub origin_port: u16,
    /// A request whose path contains one of these is not cacheable.
    pub bypass: Vec<Vec<u8>>,
    /// Host (lower case, with or without `:port`) → origin address.
    pub origins: Vec<(Vec<u8>, SocketAddr)>,
    /// Most origins with idle keep-alive connections, per worker.
    pub max_origins: usize,
}

/// Checks `mode` and `[service.cache]`; `prefix` is e.g. `service[0].`.
pub fn check_mode(
    prefix: &str,
    mode: Option<&str>,
    raw: Option<RawCache>,
) -> Result<Option<CacheConfig>, ConfigError> {
    let f = |n: &str| format!("{prefix}{n}");
    match mode {
        None | Some("proxy") => {
            if raw.is_some() {
                return Err(field_err(f("cache"), "needs mode = \"cache\""));
            }
            return Ok(None);
        }
        Some("cache") => {}
        Some(other) => {
            return Err(field_err(
                f("mode"),
                format!("unknown mode {other:?} (known: proxy, cache)"),
            ))
        }
    }
    let raw = raw.unwrap_or_default();
    let transparent = match raw.transparent.as_deref() {
        None | Some("off") => Transparent::Off,
        Some("redirect") => Transparent::Redirect,
        Some("tproxy") => Transparent::Tproxy,
        Some(other) => {
            return Err(field_err(
                f("cache.transparent"),
                format!("unknown value {other:?} (known: off, redirect, tproxy)"),
            ))
        }
    };
    let origin_port = raw.origin_port.unwrap_or(80);
    if origin_port == 0 {
        return Err(field_err(f("cache.origin_port"), "must not be 0"));
    }
    let max_origins = raw.max_origins.unwrap_or(256);
    if !(1..=65_536).contains(&max_origins) {
        return Err(field_err(f("cache.max_origins"), "must be 1-65536"));
    }
    let mut bypass = Vec::with_capacity(raw.bypass.len());
    for (i, p) in raw.bypass.into_iter().enumerate() {
        if p.is_empty() {
            return Err(field_err(
                f(&format!("cache.bypass[{i}]")),
                "must not be empty",
            ));
        }
        bypass.push(p.into_bytes());
    }
    let mut origins = Vec::with_capacity(raw.origins.len());
    for (name, a) in raw.origins {
        let a = a.parse::<SocketAddr>().map_err(|e| {
            field_err(
                f(&format!("cache.origins.{name}")),
                format!("not an address ip:port ({e})"),
            )
        })?;
        origins.push((name.to_ascii_lowercase().into_bytes(), a));
    }
    Ok(Some(CacheConfig {
        transparent,
        origin_port,
        bypass,
        origins,
        max_origins,
    }))
}

/// What [`classify`] found out about a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub cacheable: bool,
    /// Where the request names its origin: the absolute URI's authority,
    /// else the Host header (a byte range of the head).
    pub authority: Option<(usize, usize)>,
}

const MAX_HEADERS: usize = 128;

/// Classifies the request whose (already validated) head is at the start of
/// `buf`. Allocates nothing: the head is re-read with httparse into a stack
/// array.
pub fn classify(buf: &[u8], head: &RequestHead, bypass: &[Vec<u8>]) -> Class {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
        return Class {
            cacheable: false,
            authority: None,
        };
    }
    // A protocol switch (WebSocket) is never a cache's business: it goes
    // to the origin, which can answer 101.
    let mut cacheable = matches!(head.method, Method::Get | Method::Head)
        && !head.dynamic
        && !head.upgrade
        && head.body == Body::None;
    let path = buf.get(head.target.0..head.target.1).unwrap_or(&[]);
    if bypass.iter().any(|p| contains(path, p)) {
        cacheable = false;
    }
    let mut authority = None;
    let uri = req.path.unwrap_or("").as_bytes();
    if let Some(p) = uri.windows(3).position(|w| w == b"://") {
        let a = &uri[p + 3..];
        let end = a
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(a.len());
        let a = &a[..end];
        // userinfo@host is not forwarded to an address
        let a = match a.iter().rposition(|&b| b == b'@') {
            Some(at) => &a[at + 1..],
            None => a,
        };
        if !a.is_empty() {
            authority = Some(range(a));
        }
    }
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        let v = h.value;
        if n.eq_ignore_ascii_case(b"host") {
            if authority.is_none() {
                let t = trim(v);
                if !t.is_empty() {
                    authority = Some(range(t));
                }
            }
        } else if n.eq_ignore_ascii_case(b"cookie") || n.eq_ignore_ascii_case(b"authorization") {
            cacheable = false;
        } else if n.eq_ignore_ascii_case(b"cache-control") {
            for tok in v.split(|&b| b == b',') {
                let t = trim(tok);
                let t = &t[..t.iter().position(|&b| b == b'=').unwrap_or(t.len())];
                let t = trim(t);
                if t.eq_ignore_ascii_case(b"no-store")
                    || t.eq_ignore_ascii_case(b"no-cache")
                    || t.eq_ignore_ascii_case(b"private")
                {
                    cacheable = false;
                }
            }
        } else if n.eq_ignore_ascii_case(b"pragma")
            && v.split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"no-cache"))
        {
            cacheable = false;
        }
    }
    Class {
        cacheable,
        authority,
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The origin address named by an authority (`host[:port]`): an IP literal,
/// or a configured name. No DNS (it would block the worker).
pub fn resolve(auth: &[u8], cfg: &CacheConfig) -> Option<SocketAddr> {
    let text = std::str::from_utf8(auth).ok()?;
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, cfg.origin_port));
    }
    if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if let Ok(ip) = v6.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, cfg.origin_port));
        }
    }
    // configured names: exact (with port) first, then the host part
    let host = match auth.iter().rposition(|&b| b == b':') {
        Some(c) if !auth.contains(&b']') || c > auth.iter().rposition(|&b| b == b']')? => {
            &auth[..c]
        }
        _ => auth,
    };
    cfg.origins
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(auth))
        .or_else(|| {
            cfg.origins
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(host))
        })
        .map(|(_, a)| *a)
}

/// The original destination of a redirected (REDIRECT) or intercepted
/// (TPROXY) connection; `None` when it is just our own listening address.
pub fn original_dst(
    client: &TcpStream,
    mode: Transparent,
    listen: SocketAddr,
) -> Option<SocketAddr> {
    // SAFETY: the descriptor stays open for the borrow (we hold the stream).
    let fd = unsafe { BorrowedFd::borrow_raw(client.as_raw_fd()) };
    let sock = socket2::SockRef::from(&fd);
    let a = match mode {
        Transparent::Off => return None,
        Transparent::Redirect => sock
            .original_dst()
            .or_else(|_| sock.original_dst_ipv6())
            .ok()?
            .as_socket()?,
        Transparent::Tproxy => sock.local_addr().ok()?.as_socket()?,
    };
    let ours = a.port() == listen.port() && (listen.ip().is_unspecified() || a.ip() == listen.ip());
    (!ours).then_some(a)
}

/// What to do with a request in cache mode (or with a CLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The worker's scheduler picks (also the fallback of every CLS problem).
    Sched,
    /// This server index, as placed by the CLS.
    Server(usize),
    /// Straight to this origin.
    Origin(SocketAddr),
    /// Must go to the origin but none can be named: 502.
    NoOrigin,
}

/// Decides where the request at the start of `bufs.cb` goes.
pub async fn route(
    w: &Worker,
    s: &ServiceRt,
    client: &TcpStream,
    buf: &[u8],
    head: &RequestHead,
) -> Route {
    use cls_server::proto::flags;
    let target = buf.get(head.target.0..head.target.1).unwrap_or(&[]);
    let dyn_flag = if head.dynamic { flags::DYNAMIC } else { 0 };
    let Some(cache) = &s.cfg.cache else {
        // Plain proxy mode with a CLS: every request is placed by it.
        let Some(cls) = &s.cls else {
            return Route::Sched;
        };
        return match cls
            .place(&s.servers, target, dyn_flag, Default::default())
            .await
        {
            crate::cls::Placement::Server(i) => {
                w.stats.cls_placed_total.fetch_add(1, Relaxed);
                Route::Server(i)
            }
            _ => {
                w.stats.cls_local_total.fetch_add(1, Relaxed);
                Route::Sched
            }
        };
    };
    let class = classify(buf, head, &cache.bypass);
    let origin = || {
        original_dst(client, cache.transparent, s.cfg.listen)
            .or_else(|| {
                class
                    .authority
                    .and_then(|(a, b)| resolve(&buf[a..b], cache))
            })
            .map_or(Route::NoOrigin, Route::Origin)
    };
    if !class.cacheable {
        w.stats.cache_bypass_total.fetch_add(1, Relaxed);
        return origin();
    }
    let Some(cls) = &s.cls else {
        return Route::Sched;
    };
    match cls
        .place(
            &s.servers,
            target,
            flags::CACHEABLE | dyn_flag,
            Default::default(),
        )
        .await
    {
        crate::cls::Placement::Server(i) => {
            w.stats.cls_placed_total.fetch_add(1, Relaxed);
            Route::Server(i)
        }
        crate::cls::Placement::Origin => {
            w.stats.cls_origin_total.fetch_add(1, Relaxed);
            origin()
        }
        crate::cls::Placement::Local => {
            w.stats.cls_local_total.fetch_add(1, Relaxed);
            Route::Sched
        }
    }
}

/// One exchange with an origin, on a pooled keep-alive connection when
/// one is idle. Returns whether the client connection stays open.
pub async fn exchange_origin(
    w: &Rc<Worker>,
    s: &ServiceRt,
    client: &Rc<TcpStream>,
    bufs: &mut Bufs,
    head: &RequestHead,
    view: ClientView,
    addr: SocketAddr,
) -> bool {
    w.stats.origin_requests_total.fetch_add(1, Relaxed);
    crate::obs::note(|r| r.server = Some(addr));
    let retryable = head.body == Body::None && head.method.idempotent();
    let max_origins = s.cfg.cache.as_ref().map_or(1, |c| c.max_origins);
    let mut force_fresh = false;
    loop {
        let pooled = if force_fresh {
            None
        } else {
            let (c, stale) = s.origins.borrow_mut().get(0, addr, !retryable);
            w.stats.pool_stale_total.fetch_add(stale, Relaxed);
            c
        };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => {
                w.stats.pool_reused_total.fetch_add(1, Relaxed);
                c
            }
            None => match crate::proxy::connect(addr, &s.cfg.pool).await {
                Ok(c) => {
                    w.stats.pool_new_total.fetch_add(1, Relaxed);
                    Rc::new(c)
                }
                Err(e) => {
                    w.stats.server_connect_errors_total.fetch_add(1, Relaxed);
                    w.stats.error(crate::metrics::ErrorKind::Connect);
                    tracing::debug!(origin = %addr, error = %e, "cannot connect to origin");
                    reply_error(w, client, 502).await;
                    return false;
                }
            },
        };
        w.stats.requests_total.fetch_add(1, Relaxed);
        let r = crate::proxy::forward(w, s, client, &conn, bufs, head, view).await;
        match r {
            Ok(done) => {
                if crate::proxy::completed(w, bufs, head, &done) {
                    s.origins.borrow_mut().put_key(addr, conn, max_origins);
                } else {
                    if done.upgraded {
                        crate::tunnel::run(w, client, &conn, bufs).await;
                    }
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                }
                return done.keep_client;
            }
            Err(crate::proxy::Fail::BeforeResponse) if retryable && reused => {
                // The origin had closed the idle connection: once more on a
                // fresh one (which is not retried).
                w.stats.retries_total.fetch_add(1, Relaxed);
                tracing::debug!(origin = %addr, "retrying request on a fresh origin connection");
                force_fresh = true;
            }
            Err(f) => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
                crate::proxy::fail_client(w, client, f).await;
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Forwarding;
    use crate::http::request::{parse, ForwardCtx};

    fn cfg() -> CacheConfig {
        check_mode(
            "service[0].",
            Some("cache"),
            Some(RawCache {
                transparent: None,
                origin_port: None,
                bypass: vec!["/cgi-bin/".into(), ".php".into()],
                max_origins: None,
                origins: [("Origin.test".to_string(), "10.0.0.9:8080".to_string())]
                    .into_iter()
                    .collect(),
            }),
        )
        .unwrap()
        .unwrap()
    }

    fn class(raw: &str) -> (Class, Vec<u8>) {
        let ctx = ForwardCtx {
            fw: Forwarding {
                x_forwarded_for: false,
                x_forwarded_proto: false,
                via: false,
                request_id: false,
                upgrade: true,
            },
            peer_ip: b"1.2.3.4",
            default_host: b"x",
        };
        let mut out = Vec::new();
        let h = parse(raw.as_bytes(), 100, &ctx, &mut out).unwrap().unwrap();
        (
            classify(raw.as_bytes(), &h, &cfg().bypass),
            raw.as_bytes().to_vec(),
        )
    }

    fn cacheable(raw: &str) -> bool {
        class(raw).0.cacheable
    }

    #[test]
    fn cacheable_requests() {
        assert!(cacheable("GET /a.html HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(cacheable(
            "HEAD /a.html HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=0\r\n\r\n"
        ));
        assert!(cacheable(
            "GET http://h/a HTTP/1.1\r\nHost: h\r\nPragma: x\r\n\r\n"
        ));
    }

    #[test]
    fn a_websocket_upgrade_goes_to_the_origin() {
        assert!(!cacheable(
            "GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        // An Upgrade that is not proposed (no Connection: upgrade) is ignored.
        assert!(cacheable(
            "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
        ));
    }

    #[test]
    fn non_cacheable_requests() {
        for r in [
            "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            "PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            "DELETE /a HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nCookie: s=1\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nauthorization: Basic eA==\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=5, No-Store\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nCache-Control: no-cache\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nCache-Control: private=\"x\"\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\nPragma: no-cache\r\n\r\n",
            "GET /cgi-bin/x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /index.php HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(!cacheable(r), "{r}");
        }
    }

    #[test]
    fn authority_from_absolute_uri_then_host() {
        let (c, b) = class("GET http://u@10.1.2.3:81/a HTTP/1.1\r\nHost: other\r\n\r\n");
        let (s, e) = c.authority.unwrap();
        assert_eq!(&b[s..e], b"10.1.2.3:81");
        let (c, b) = class("GET /a HTTP/1.1\r\nHost:  origin.test \r\n\r\n");
        let (s, e) = c.authority.unwrap();
        assert_eq!(&b[s..e], b"origin.test");
    }

    #[test]
    fn origins_resolve_without_dns() {
        let c = cfg();
        assert_eq!(
            resolve(b"10.1.2.3", &c),
            Some("10.1.2.3:80".parse().unwrap())
        );
        assert_eq!(
            resolve(b"10.1.2.3:81", &c),
            Some("10.1.2.3:81".parse().unwrap())
        );
        assert_eq!(resolve(b"[::1]", &c), Some("[::1]:80".parse().unwrap()));
        assert_eq!(resolve(b"[::1]:8", &c), Some("[::1]:8".parse().unwrap()));
        assert_eq!(
            resolve(b"ORIGIN.test", &c),
            Some("10.0.0.9:8080".parse().unwrap())
        );
        assert_eq!(
            resolve(b"origin.test:80", &c),
            Some("10.0.0.9:8080".parse().unwrap())
        );
        assert_eq!(resolve(b"example.com", &c), None);
        assert_eq!(resolve(b"\xff", &c), None);
    }

    #[test]
    fn mode_config_checked_with_field_names() {
        let e = |m: Option<&str>, r: Option<RawCache>| {
            check_mode("service[0].", m, r).unwrap_err().to_string()
        };
        assert!(e(Some("cash"), None).starts_with("service[0].mode:"));
        assert!(e(None, Some(RawCache::default())).starts_with("service[0].cache:"));
        let bad = RawCache {
            transparent: Some("nat".into()),
            ..Default::default()
        };
        assert!(e(Some("cache"), Some(bad)).starts_with("service[0].cache.transparent:"));
        let bad = RawCache {
            origins: [("a".to_string(), "nowhere".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        assert!(e(Some("cache"), Some(bad)).starts_with("service[0].cache.origins.a:"));
        let bad = RawCache {
            max_origins: Some(0),
            ..Default::default()
        };
        assert!(e(Some("cache"), Some(bad)).starts_with("service[0].cache.max_origins:"));
        assert!(check_mode("s.", None, None).unwrap().is_none());
    }
}
