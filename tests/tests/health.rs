//! Health checking (thesis §6.2.3), passive failure handling, drain and
//! dynamic-feedback weights (§4.2), through the real binary. The switch's
//! view is read from its Prometheus endpoint; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tests::*;

const WAIT: Duration = Duration::from_secs(15);

/// The metrics page of the switch.
fn scrape(m: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&m, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of `ktcpvs_<name>{service="web",server="<server>"}`.
fn metric(m: SocketAddr, name: &str, server: SocketAddr) -> Option<f64> {
    let key = format!("ktcpvs_{name}{{service=\"web\",server=\"{server}\"}} ");
    scrape(m)
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
}

fn healthy(m: SocketAddr, server: SocketAddr) -> Option<f64> {
    metric(m, "server_healthy", server)
}

/// A config with metrics on and `extra` as the service's extra tables.
fn cfg_with(servers: Vec<Server>, extra: &str) -> (Config, SocketAddr) {
    let mut cfg = Config::with_servers("rr", servers);
    let m = free_addr();
    cfg.metrics = Some(m);
    cfg.svc().extra = extra.to_string();
    (cfg, m)
}

const TCP_PROBES: &str =
    "[service.health]\nenabled = true\ninterval_ms = 100\ntimeout_ms = 300\nrise = 3\nfall = 2\n";

/// Restarts an origin on the port it had (bounded retries while the port
/// is released).
fn restart(name: &str, addr: SocketAddr) -> Origin {
    let deadline = Instant::now() + WAIT;
    loop {
        match Origin::try_start_at(name, addr) {
            Ok(o) => return o,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot restart {name} on {addr}: {e}"),
        }
    }
}

#[test]
fn probes_take_a_stopped_origin_out_and_bring_it_back_after_rise_successes() {
    let o1 = Origin::start("o1");
    let o2 = Origin::start("o2");
    let a2 = o2.addr();
    let (cfg, m) = cfg_with(vec![Server::new(o1.addr()), Server::new(a2)], TCP_PROBES);
    let mut k = Ktcpvs::start(&cfg);
    assert!(
        wait_until(WAIT, || metric(m, "server_probe_latency_seconds", a2)
            .is_some()),
        "no probe of {a2} recorded:\n{}",
        scrape(m)
    );
    assert_eq!(healthy(m, a2), Some(1.0));

    // No traffic at all: only the probes can notice.
    let stopped = Instant::now();
    o2.stop();
    assert!(
        wait_until(WAIT, || healthy(m, a2) == Some(0.0)),
        "stopped origin not marked down:\n{}",
        k.stderr()
    );
    // Informational (interval 100 ms, timeout 300 ms, fall 2, rise 3).
    eprintln!("marked down {:?} after the stop", stopped.elapsed());
    let log = k.stderr();
    let down = log
        .lines()
        .find(|l| l.contains("real server down") && l.contains(&a2.to_string()))
        .unwrap_or_else(|| panic!("no transition line for {a2}:\n{log}"));
    assert!(down.contains("probes failed"), "{down}");
    for i in 0..20 {
        let r = fetch(k.addr(), &get(&format!("/while-down/{i}"))).expect("response");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.origin(), "o1", "a request went to the down server");
    }

    let restarted = Instant::now();
    let o2 = restart("o2", a2);
    assert!(
        wait_until(WAIT, || healthy(m, a2) == Some(1.0)),
        "restarted origin not back:\n{}",
        k.stderr()
    );
    eprintln!("back up {:?} after the restart", restarted.elapsed());
    let log = k.stderr();
    let up = log
        .lines()
        .find(|l| l.contains("real server up") && l.contains(&a2.to_string()))
        .unwrap_or_else(|| panic!("no up transition for {a2}:\n{log}"));
    assert!(up.contains("3 consecutive probes passed"), "{up}");
    assert!(
        wait_until(WAIT, || {
            let _ = fetch(k.addr(), &get("/after"));
            o2.requests_to("/after") > 0
        }),
        "the restarted origin got no request"
    );
    assert_eq!(
        metric(m, "server_health_transitions_total", a2),
        Some(2.0),
        "{}",
        scrape(m)
    );
    k.assert_running();
}

/// When a request was sent, and its origin or what went wrong.
type Outcome = (Instant, Result<String, String>);

#[test]
fn origin_killed_under_load_no_request_fails_once_it_is_marked_down() {
    let o1 = Origin::start("o1");
    let o2 = Origin::start("o2");
    let a2 = o2.addr();
    let (cfg, m) = cfg_with(vec![Server::new(o1.addr()), Server::new(a2)], TCP_PROBES);
    let mut k = Ktcpvs::start(&cfg);
    let addr = k.addr();

    // Four keep-alive clients in a loop; each result is recorded with the
    // time its request was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let load: Vec<JoinHandle<()>> = (0..4)
        .map(|t| {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                let mut c: Option<RawClient> = None;
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let cl = c.get_or_insert_with(|| RawClient::connect(addr));
                    let sent = Instant::now();
                    i += 1;
                    let r = match cl.try_send(&get(&format!("/load/{t}/{i}"))) {
                        Err(e) => Err(format!("send: {e}")),
                        Ok(()) => match cl.read_response() {
                            Ok(r) if r.status == 200 => Ok(r.origin().to_string()),
                            Ok(r) => Err(format!("status {}", r.status)),
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    if r.is_err() {
                        c = None;
                    }
                    results.lock().unwrap().push((sent, r));
                }
            })
        })
        .collect();
    assert!(
        wait_until(WAIT, || o2.requests() >= 20),
        "load does not reach o2"
    );
    o2.stop();
    assert!(
        wait_until(WAIT, || healthy(m, a2) == Some(0.0)),
        "killed origin not marked down:\n{}",
        k.stderr()
    );
    let marked = Instant::now();
    let count_after = |results: &Mutex<Vec<Outcome>>| {
        results
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > marked)
            .count()
    };
    assert!(wait_until(WAIT, || count_after(&results) >= 200));

    let o2 = restart("o2", a2);
    assert!(
        wait_until(WAIT, || healthy(m, a2) == Some(1.0)),
        "restarted origin not back:\n{}",
        k.stderr()
    );
    assert!(
        wait_until(WAIT, || o2.requests_to("/load/") >= 20),
        "the restarted origin is not back in rotation"
    );
    stop.store(true, Ordering::SeqCst);
    for h in load {
        h.join().expect("load thread");
    }
    let results = results.lock().unwrap();
    let after: Vec<_> = results.iter().filter(|(t, _)| *t > marked).collect();
    let failed: Vec<_> = after.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    // Informational: failures before the mark (idempotent GETs are retried,
    // so normally none either).
    eprintln!(
        "{} requests, {} failed before the server was marked down, {} sent after",
        results.len(),
        results.iter().filter(|(_, r)| r.is_err()).count() - failed.len(),
        after.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests sent after the server was marked down failed: {:?}",
        failed.len(),
        after.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(after.len() >= 200);
    k.assert_running();
}

#[test]
fn http_probe_with_an_unexpected_status_marks_the_server_down() {
    let bad = RawOrigin::start(RawBehaviour::Script(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec(),
    ));
    let o1 = Origin::start("o1");
    let (cfg, m) = cfg_with(
        vec![Server::new(bad.addr()), Server::new(o1.addr())],
        "[service.health]\nenabled = true\ntype = \"http\"\npath = \"/healthz\"\nhost = \"health.local\"\nexpect_status = \"200-299\"\ninterval_ms = 100\ntimeout_ms = 500\nrise = 2\nfall = 2\n",
    );
    let mut k = Ktcpvs::start(&cfg);
    assert!(
        wait_until(WAIT, || healthy(m, bad.addr()) == Some(0.0)),
        "a server answering 500 to the probe stayed up:\n{}",
        k.stderr()
    );
    assert!(wait_until(WAIT, || o1.requests_to("/healthz") >= 3));
    assert_eq!(healthy(m, o1.addr()), Some(1.0), "{}", k.stderr());
    assert!(k.stderr().contains("status 500"), "{}", k.stderr());
    for i in 0..20 {
        let r = fetch(k.addr(), &get(&format!("/page/{i}"))).expect("response");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.origin(), "o1");
    }
    // Everything the bad server received was a probe.
    let heads = bad.requests();
    assert!(!heads.is_empty());
    for h in &heads {
        let text = String::from_utf8_lossy(h);
        assert!(text.starts_with("GET /healthz HTTP/1.1\r\n"), "{text:?}");
        assert!(text.contains("\r\nHost: health.local\r\n"), "{text:?}");
    }
    k.assert_running();
}

/// An origin that holds each request until released, then answers
/// `held!` and closes (a long request in flight, under the test's control).
struct Gate {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Gate {
    fn start() -> Gate {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let held = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, r, st) = (held.clone(), release.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (h, r) = (h.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut tmp) {
                            Ok(0) | Err(_) => return, // a TCP probe
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !r.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = c.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Origin: gate\r\nConnection: close\r\n\r\nheld!",
                    );
                });
            }
        });
        Gate {
            addr,
            held,
            release,
            stop,
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A load agent answering `GET /load` with the current body.
fn start_agent(body: Arc<Mutex<String>>, stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut tmp = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let b = body.lock().unwrap().clone();
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
        }
    });
    addr
}

#[test]
fn weight_zero_drains_new_requests_while_in_flight_ones_finish() {
    // The load agent of `gate` reports overload; dynamic feedback drives its
    // weight to 0 while requests are held in flight on it.
    let gate = Gate::start();
    let o2 = Origin::start("o2");
    let body = Arc::new(Mutex::new("cpu=0.2 mem=0.3 disk=0.1 proc=0.2".to_string()));
    let agent_stop = Arc::new(AtomicBool::new(false));
    let agent = start_agent(body.clone(), agent_stop.clone());
    let mut g = Server::new(gate.addr);
    g.agent = Some(agent);
    let (cfg, m) = cfg_with(
        vec![g, Server::new(o2.addr())],
        &format!("{TCP_PROBES}\n[service.feedback]\nenabled = true\ninterval_ms = 200\n"),
    );
    let mut k = Ktcpvs::start(&cfg);
    assert!(
        wait_until(WAIT, || metric(m, "server_aggregate_load", gate.addr)
            .is_some()),
        "no feedback round for the gate:\n{}\n{}",
        scrape(m),
        k.stderr()
    );

    // Requests in flight on the gate (the others are answered by o2).
    let addr = k.addr();
    let clients: Vec<JoinHandle<Result<Response, String>>> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr);
                c.set_timeout(Duration::from_secs(40));
                c.send(&get(&format!("/held/{i}")));
                c.read_response().map_err(|e| e.to_string())
            })
        })
        .collect();
    assert!(
        wait_until(WAIT, || gate.held.load(Ordering::SeqCst) >= 1),
        "no request reached the gate"
    );

    *body.lock().unwrap() = "cpu=100 mem=100 disk=100 proc=100".to_string();
    assert!(
        wait_until(WAIT, || metric(m, "server_weight", gate.addr) == Some(0.0)),
        "feedback did not drain the overloaded server:\n{}",
        scrape(m)
    );
    assert_eq!(healthy(m, gate.addr), Some(1.0), "drained, not down");
    let held = gate.held.load(Ordering::SeqCst);
    for i in 0..20 {
        let r = fetch(addr, &get(&format!("/new/{i}"))).expect("response");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.origin(), "o2", "a new request went to the drained server");
    }
    assert_eq!(gate.held.load(Ordering::SeqCst), held);

    // The requests in flight on the drained server finish normally.
    gate.release.store(true, Ordering::SeqCst);
    let mut on_gate = 0;
    for c in clients {
        let r = c
            .join()
            .expect("client thread")
            .expect("held request failed");
        assert_eq!(r.status, 200, "{r:?}");
        if r.origin() == "gate" {
            assert_eq!(r.body, b"held!");
            on_gate += 1;
        }
    }
    assert_eq!(on_gate, held);
    agent_stop.store(true, Ordering::SeqCst);
    k.assert_running();
}

fn req_id(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("X-Req-Id: ")
                .or_else(|| l.strip_prefix("x-req-id: "))
        })
        .map(|v| v.trim().to_string())
}

#[test]
fn idempotent_requests_on_a_dying_server_are_retried_a_post_is_not() {
    // The dying server reads each request and closes without answering.
    // (Passive detection would take it out after `fall` such connections —
    // next test; a high `fall` keeps it in rotation here.)
    let dying = RawOrigin::start(RawBehaviour::Script(Vec::new()));
    let good = Origin::start("good");
    let mut cfg = Config::new("rr", &[dying.addr(), good.addr()]);
    cfg.svc().extra = "[service.health]\nfall = 1000\n".into();
    let k = Ktcpvs::start(&cfg);

    for i in 0..8 {
        let r = fetch(
            k.addr(),
            &request("GET", "/idem", &[("X-Req-Id", &format!("g{i}"))], b""),
        )
        .expect("response");
        assert_eq!(r.status, 200, "GET g{i} was not retried: {r:?}");
        assert_eq!(r.origin(), "good");
    }
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = fetch(
            k.addr(),
            &request(
                "POST",
                "/echo",
                &[("X-Req-Id", &format!("p{i}"))],
                b"hello body",
            ),
        )
        .expect("response");
        statuses.push((format!("p{i}"), r.status));
    }
    let at_dying: Vec<String> = dying.requests().iter().filter_map(|h| req_id(h)).collect();
    let at_good: Vec<String> = good
        .seen()
        .iter()
        .filter_map(|s| s.header("x-req-id").map(str::to_string))
        .collect();
    assert!(
        at_dying.iter().any(|id| id.starts_with('g')),
        "no GET reached the dying server, the retry was not exercised: {at_dying:?}"
    );
    assert!(
        at_dying.iter().any(|id| id.starts_with('p')),
        "no POST reached the dying server: {at_dying:?}"
    );
    for (id, status) in &statuses {
        if at_dying.contains(id) {
            assert_eq!(*status, 502, "POST {id} on the dying server");
            assert!(
                !at_good.contains(id),
                "POST {id} was re-sent to another server"
            );
        } else {
            assert_eq!(*status, 200, "POST {id}");
            assert!(at_good.contains(id));
        }
    }
}

/// Passive detection: a server that closes every new connection without
/// answering is taken out after `fall` (3) of them, so later requests —
/// POSTs included, which cannot be retried — all go to the good server.
#[test]
fn a_server_that_resets_new_connections_is_taken_out_passively() {
    let dying = RawOrigin::start(RawBehaviour::Script(Vec::new()));
    let good = Origin::start("good");
    let mut cfg = Config::new("rr", &[dying.addr(), good.addr()]);
    cfg.workers = 1;
    let k = Ktcpvs::start(&cfg);
    for i in 0..8 {
        let r = fetch(k.addr(), &get(&format!("/warm{i}"))).expect("response");
        assert_eq!(r.status, 200, "GET {i} was not retried: {r:?}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || k
            .stderr()
            .contains("real server down")),
        "the dying server was not taken out:\n{}",
        k.stderr()
    );
    for i in 0..8 {
        let r = fetch(k.addr(), &request("POST", "/echo", &[], b"hello body")).expect("response");
        assert_eq!(r.status, 200, "POST {i}: {r:?}");
        assert_eq!(r.origin(), "good");
    }
}

#[test]
fn bad_health_and_feedback_settings_are_refused_naming_the_field() {
    let base = Config::new("rr", &[dead_addr()]);
    for (extra, field) in [
        ("[service.health]\nenabled = true\nrise = 0\n", "service[0].health.rise"),
        (
            "[service.health]\ntype = \"http\"\nexpect_status = \"299-200\"\n",
            "service[0].health.expect_status",
        ),
        ("[service.feedback]\nenabled = true\n", "service[0].feedback.enabled"),
        (
            "[service.health]\nenabled = true\n[service.feedback]\nenabled = true\ncoefficients = [1, 1, 0, 0, 0, 0]\n",
            "service[0].feedback.coefficients",
        ),
    ] {
        let mut cfg = base.clone();
        cfg.svc().extra = extra.to_string();
        let out = run_check(&cfg.to_toml(free_addr()));
        assert!(!out.success(), "accepted {extra:?}: {out:?}");
        assert!(out.stderr.contains(field), "{field} not named: {out:?}");
    }
    let mut cfg = base.clone();
    cfg.svc().extra = "[service.health]\nenabled = true\ntype = \"http\"\npath = \"/h\"\n[service.feedback]\nenabled = true\n".into();
    let out = run_check(&cfg.to_toml(free_addr()));
    assert!(out.success(), "{out:?}");
}
