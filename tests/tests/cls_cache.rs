//! ktcpvs with the real `cls-server` binary (issue 4): placement by the
//! CLS, cache mode (bypass, ORIGIN), co-located mode, and the CLS crashing
//! under load. The "caches" are hyper origins named c1, c2, c3; the origin
//! server is a hyper origin named `origin`. The local scheduler is `rr`, so
//! without the CLS the same target would rotate over the caches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::{
    dead_addr, fetch, request, wait_until, ClsServer, Config, Ktcpvs, Origin, RawBehaviour,
    RawOrigin, Server,
};

fn caches() -> Vec<Origin> {
    (1..=3).map(|i| Origin::start(&format!("c{i}"))).collect()
}

fn cls_body(mode: &str, servers: &[SocketAddr], probe: &str) -> String {
    let mut t = format!(
        "[scheduler]\nmode = \"{mode}\"\nthreshold = 1000\n\n[monitor]\nenabled = {}\ninterval_ms = 100\nprobe_timeout_ms = 50\nfail_after = 1\n\n",
        probe != "none"
    );
    for s in servers {
        t.push_str(&format!("[[servers]]\naddr = \"{s}\"\n{probe}\n\n"));
    }
    t
}

/// A cache-mode switch over `caches` asking `cls`, with `origin.test` →
/// `origin`.
fn cache_switch(caches: &[Origin], cls: SocketAddr, origin: &Origin) -> Ktcpvs {
    let mut cfg = Config::new("rr", &tests::addrs(caches));
    cfg.svc().keys = "mode = \"cache\"\n".into();
    cfg.svc().extra = format!(
        "[service.cls]\naddress = \"{cls}\"\ntimeout_ms = 50\n\n[service.cache]\nbypass = [\"/cgi-bin/\"]\n\n[service.cache.origins]\n\"origin.test\" = \"{}\"\n",
        origin.addr()
    );
    Ktcpvs::start(&cfg)
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> tests::Response {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: origin.test\r\n{extra}Connection: close\r\n\r\n");
    fetch(addr, req.as_bytes()).unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
}

/// Which server answered each of `n` requests for `path` (new connection
/// each, so both workers take part).
fn servers_for(addr: SocketAddr, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(addr, path, "");
            assert_eq!(r.status, 200, "{path}");
            r.origin().to_string()
        })
        .collect()
}

fn all_same(v: &[String]) -> bool {
    v.windows(2).all(|w| w[0] == w[1])
}

/// Waits until both workers' CLS clients are connected: placements stop
/// rotating.
fn wait_placing(addr: SocketAddr) {
    let mut k = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            k += 1;
            all_same(&servers_for(addr, &format!("/warm/{k}"), 6))
        }),
        "the switch never placed requests through the CLS"
    );
}

#[test]
fn cls_places_each_target_on_one_cache() {
    let caches = caches();
    let origin = Origin::start("origin");
    let cls = ClsServer::start(&cls_body(
        "cache",
        &tests::addrs(&caches),
        "probe = \"none\"",
    ));
    let k = cache_switch(&caches, cls.addr(), &origin);
    wait_placing(k.addr());
    for t in 0..8 {
        let path = format!("/obj/{t}.html");
        let seen = servers_for(k.addr(), &path, 6);
        assert!(all_same(&seen), "{path} went to {seen:?}");
        assert!(seen[0].starts_with('c'), "{path} went to {seen:?}");
    }
    assert_eq!(
        origin.requests(),
        0,
        "cacheable requests reached the origin"
    );
}

#[test]
fn non_cacheable_requests_bypass_the_caches() {
    let caches = caches();
    let origin = Origin::start("origin");
    let cls = ClsServer::start(&cls_body(
        "cache",
        &tests::addrs(&caches),
        "probe = \"none\"",
    ));
    let k = cache_switch(&caches, cls.addr(), &origin);
    let a = k.addr();
    let oa = origin.addr();
    let reqs: Vec<Vec<u8>> = vec![
        request("POST", "/form", &[("Connection", "close")], b"x=1"),
        request("PUT", "/doc", &[("Connection", "close")], b"body"),
        request("DELETE", "/doc", &[("Connection", "close")], b""),
        b"GET /search?q=1 HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a HTTP/1.1\r\nHost: origin.test\r\nCookie: s=1\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a HTTP/1.1\r\nHost: origin.test\r\nAuthorization: Basic eA==\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a HTTP/1.1\r\nHost: origin.test\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a HTTP/1.1\r\nHost: origin.test\r\nCache-Control: private\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a HTTP/1.1\r\nHost: origin.test\r\nPragma: no-cache\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /cgi-bin/run HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n".to_vec(),
        // the origin named by an IP literal in Host, and by an absolute URI
        format!("GET /q?x HTTP/1.1\r\nHost: {oa}\r\nConnection: close\r\n\r\n").into_bytes(),
        format!("GET http://{oa}/q?y HTTP/1.1\r\nHost: elsewhere.invalid\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    ];
    for r in &reqs {
        // `request` sets Host: test.local; map it like origin.test
        let r = String::from_utf8_lossy(r).replace("Host: test.local", "Host: origin.test");
        let resp = fetch(a, r.as_bytes()).unwrap_or_else(|e| panic!("{r}: {e:?}"));
        assert_eq!(resp.status, 200, "{r}");
        assert_eq!(resp.origin(), "origin", "{r} was not sent to the origin");
    }
    for c in &caches {
        assert_eq!(
            c.requests(),
            0,
            "cache {} saw a non-cacheable request",
            c.name()
        );
    }
    assert_eq!(origin.requests(), reqs.len());
    // An origin that cannot be named without DNS: 502, not a guess.
    let r = fetch(
        a,
        b"GET /x?1 HTTP/1.1\r\nHost: unknown.invalid\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    // A cacheable request still goes to a cache.
    let r = get(a, "/static.css", "");
    assert!(r.origin().starts_with('c'), "went to {}", r.origin());
}

#[test]
fn origin_answers_send_cacheable_requests_to_the_origin() {
    let caches = caches();
    let origin = Origin::start("origin");
    // The CLS probes /status/503 on every cache: all fail, so in cache mode
    // it answers ORIGIN. (The caches themselves are fine: a switch deciding
    // locally would send the requests to them.)
    let cls = ClsServer::start(&cls_body(
        "cache",
        &tests::addrs(&caches),
        "probe = \"http\"\nhttp_path = \"/status/503\"",
    ));
    let k = cache_switch(&caches, cls.addr(), &origin);
    let mut n = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            n += 1;
            (0..4).all(|_| get(k.addr(), &format!("/w/{n}"), "").origin() == "origin")
        }),
        "the CLS never answered ORIGIN"
    );
    let before = origin.requests();
    for t in 0..10 {
        let r = get(k.addr(), &format!("/page/{t}.html"), "");
        assert_eq!(r.status, 200);
        assert_eq!(r.origin(), "origin", "/page/{t}.html");
    }
    assert_eq!(origin.requests(), before + 10);
}

#[test]
fn colocated_local_server_is_reached_over_loopback() {
    // This node's server is listed under a "public" address where nothing
    // listens; `local_address` is where it really is (loopback). The CLS in
    // co-located mode prefers the local node, so every request must reach
    // o-local; a switch connecting to the public address would fail over to
    // o-remote.
    let local = Origin::start("local");
    let remote = Origin::start("remote");
    let public = dead_addr();
    let cls = ClsServer::start(&cls_body(
        "colocated",
        &[public, remote.addr()],
        "probe = \"none\"",
    ));
    let mut cfg = Config::with_servers("rr", vec![Server::new(public), Server::new(remote.addr())]);
    cfg.svc().extra = format!(
        "[service.cls]\naddress = \"{}\"\nnode = 0\nlocal_server = \"{public}\"\nlocal_address = \"{}\"\n",
        cls.addr(),
        local.addr()
    );
    let k = Ktcpvs::start(&cfg);
    // Until both workers are connected (and the local server, taken out
    // when a worker deciding alone tried its public address, is back).
    let mut n = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            n += 1;
            servers_for(k.addr(), &format!("/w/{n}"), 6)
                .iter()
                .all(|s| s == "local")
        }),
        "requests never reached the local server"
    );
    for t in 0..10 {
        let seen = servers_for(k.addr(), &format!("/c/{t}"), 3);
        assert!(seen.iter().all(|s| s == "local"), "/c/{t} went to {seen:?}");
    }
}

#[test]
fn cls_killed_under_load_fails_no_request() {
    let caches = caches();
    let origin = Origin::start("origin");
    let mut cls = ClsServer::start(&cls_body(
        "cache",
        &tests::addrs(&caches),
        "probe = \"none\"",
    ));
    let k = cache_switch(&caches, cls.addr(), &origin);
    wait_placing(k.addr());
    let addr = k.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let path = format!("/load/{}.html", (i * 7 + c) % 50);
                    let req = format!(
                        "GET {path} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
                    );
                    match fetch(addr, req.as_bytes()) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => return Err(format!("{path}: status {}", r.status)),
                        Err(e) => return Err(format!("{path}: {e:?}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    let wait_progress = |min: usize| {
        assert!(
            wait_until(Duration::from_secs(10), || ok.load(Ordering::Relaxed)
                >= min),
            "no progress"
        );
    };
    wait_progress(50);
    for _ in 0..2 {
        cls.kill();
        let n = ok.load(Ordering::Relaxed);
        wait_progress(n + 100); // served while the CLS is down
        cls.restart();
        let n = ok.load(Ordering::Relaxed);
        wait_progress(n + 100);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("client thread")
            .expect("a client request failed");
    }
    // After the restart the workers reconnected and place through the CLS again.
    wait_placing(addr);
}

#[test]
fn hung_cls_costs_only_the_lookup_timeout() {
    // A stopped CLS keeps its connections open but never answers: every
    // lookup times out (timeout_ms = 50) and the worker decides locally.
    let caches = caches();
    let origin = Origin::start("origin");
    let cls = ClsServer::start(&cls_body(
        "cache",
        &tests::addrs(&caches),
        "probe = \"none\"",
    ));
    let k = cache_switch(&caches, cls.addr(), &origin);
    wait_placing(k.addr());
    cls.signal(libc::SIGSTOP);
    for t in 0..20 {
        let r = get(k.addr(), &format!("/hung/{t}.html"), "");
        assert_eq!(r.status, 200, "/hung/{t}.html");
        assert!(r.origin().starts_with('c'), "went to {}", r.origin());
    }
    cls.signal(libc::SIGCONT);
    // Back to placing through the CLS once it answers again (the client
    // dropped the hung connection and reconnected).
    wait_placing(k.addr());
}

/// A cache-mode switch without a CLS on one worker (so every client
/// connection finds the same origin pool), `origin.test` → `origin`.
fn one_worker_cache_front(caches: &[Origin], origin: SocketAddr) -> Ktcpvs {
    let mut cfg = Config::new("rr", &tests::addrs(caches));
    cfg.workers = 1;
    cfg.svc().keys = "mode = \"cache\"\n".into();
    cfg.svc().extra = format!(
        "[service.cache]\nmax_origins = 4\n\n[service.cache.origins]\n\"origin.test\" = \"{origin}\"\n"
    );
    Ktcpvs::start(&cfg)
}

#[test]
fn origin_connections_are_pooled() {
    let caches = caches();
    let origin = Origin::start("origin");
    let k = one_worker_cache_front(&caches, origin.addr());
    // Sequential non-cacheable requests, each on a new client connection.
    for i in 0..20 {
        let r = get(k.addr(), &format!("/search?q={i}"), "");
        assert_eq!(r.status, 200);
        assert_eq!(r.origin(), "origin");
    }
    let post = "POST /form HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let r = fetch(k.addr(), post.as_bytes()).expect("POST");
    assert_eq!(r.status, 200);
    assert_eq!(r.origin(), "origin");
    assert_eq!(origin.requests(), 21);
    assert_eq!(
        origin.connections(),
        1,
        "sequential origin requests opened more than one connection"
    );
    // Cacheable requests still go to the caches (no CLS: the scheduler).
    let r = get(k.addr(), "/a.html", "");
    assert!(r.origin().starts_with('c'), "went to {}", r.origin());
    assert_eq!(origin.requests(), 21);
}

/// A WebSocket handshake is not for a cache: it goes to the origin, whose
/// 101 turns the client connection into a tunnel to it.
#[test]
fn a_websocket_upgrade_bypasses_the_caches_and_tunnels_to_the_origin() {
    let caches = caches();
    let origin = Origin::start("origin");
    let k = one_worker_cache_front(&caches, origin.addr());
    let mut c = k.client();
    c.send(b"GET /upgrade HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let r = c.read_response().expect("the 101");
    assert_eq!(r.status, 101, "{r:?}");
    let hello = b"origin switched\n";
    assert_eq!(c.read_exact(hello.len()).expect("greeting"), hello);
    c.send(b"through the cache front");
    assert_eq!(c.read_exact(23).expect("echo"), b"through the cache front");
    assert!(
        caches.iter().all(|c| c.requests() == 0),
        "a cache was asked"
    );
}

#[test]
fn origin_closing_pooled_connections_fails_no_request() {
    // The origin answers keep-alive but closes each connection right
    // after: the next request finds a dead pooled connection (reset while
    // sending, or found stale by the probe) and is sent again on a fresh one.
    let caches = caches();
    let origin = RawOrigin::start(RawBehaviour::Script(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Origin: raw\r\n\r\nok".to_vec(),
    ));
    let k = one_worker_cache_front(&caches, origin.addr());
    for i in 0..8 {
        let r = get(k.addr(), &format!("/search?q={i}"), "");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, b"ok");
    }
    assert_eq!(origin.requests().len(), 8);
}
