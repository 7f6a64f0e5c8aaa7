//! The schedulers beyond rr/wrr/lc/wlc/lblc and content rules, as
//! observed through the real binary (issue 3, item 1): chash and maglev
//! locality, lblcr replication, sh client affinity, the lblc Σhigh cap
//! and its wait queue, `[[service.rule]]` routing to server sets, and the
//! locality table size metric.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;
use tests::*;

/// One request on a fresh connection (so both workers take part).
fn fresh(addr: SocketAddr, path: &str) -> String {
    let r = RawClient::connect(addr).roundtrip(&get(path));
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r.origin().to_string()
}

/// A slow request in a thread, returned once it is in progress at an
/// origin (`seen` counts `/slow/` requests at all origins before it).
fn slow_in_progress(k: &Ktcpvs, os: &[Origin], path: &str) -> JoinHandle<String> {
    let before: usize = os.iter().map(|o| o.requests_to("/slow/")).sum();
    let addr = k.addr();
    let p = path.to_string();
    let t = std::thread::spawn(move || {
        let r = RawClient::connect(addr).roundtrip(&get(&p));
        assert_eq!(r.status, 200, "{p}: {r:?}");
        r.origin().to_string()
    });
    assert!(
        wait_until(Duration::from_secs(5), || os
            .iter()
            .map(|o| o.requests_to("/slow/"))
            .sum::<usize>()
            == before + 1),
        "{path} never reached an origin"
    );
    t
}

#[test]
fn chash_and_maglev_send_a_target_to_one_origin_and_spread_targets() {
    for sched in ["chash", "maglev"] {
        let os = origins(3);
        let k = Ktcpvs::start(&Config::new(sched, &addrs(&os)));
        let mut homes = HashSet::new();
        // maglev ignores load: fresh connections (both workers). chash
        // looks at load, and a request's load is released just after its
        // response is written — a client on another connection can be
        // scheduled before that, see one unit in flight and (rightly, at
        // such a tiny load) spill; one keep-alive connection orders them.
        let mut c = k.client();
        let mut one = |path: &str| {
            if sched == "maglev" {
                fresh(k.addr(), path)
            } else {
                let r = c.roundtrip(&get(path));
                assert_eq!(r.status, 200, "{path}: {r:?}");
                r.origin().to_string()
            }
        };
        for t in 0..24 {
            let p = format!("/h/{t}.html");
            let seq: HashSet<String> = (0..4).map(|i| one(&format!("{p}?i={i}"))).collect();
            assert_eq!(seq.len(), 1, "{sched} moved {p}: {seq:?}");
            homes.extend(seq);
        }
        assert!(
            homes.len() >= 2,
            "{sched} put 24 targets on one origin: {homes:?}"
        );
    }
}

#[test]
fn chash_spills_a_busy_target_to_another_origin() {
    let os = origins(3);
    let mut cfg = Config::new("chash", &addrs(&os));
    let metrics = free_addr();
    cfg.metrics = Some(metrics);
    let k = Ktcpvs::start(&cfg);
    // With nothing in flight a target stays home. One request of it in
    // flight at home: L+1 = 2, cap = ceil(1.25 × 2 / 3) = 1, so the next
    // one spills to the next origin on the ring.
    let p = "/slow/1200/hot";
    let home = fresh(k.addr(), p);
    // (A request's load is released just after its response is written:
    // wait until the switch reports nothing in flight.)
    assert!(wait_until(Duration::from_secs(5), || nothing_in_flight(
        metrics
    )));
    let a = slow_in_progress(&k, &os, p);
    let b = slow_in_progress(&k, &os, p);
    assert_eq!(a.join().unwrap(), home);
    assert_ne!(
        b.join().unwrap(),
        home,
        "chash did not bound the home's load"
    );
    assert!(wait_until(Duration::from_secs(5), || nothing_in_flight(
        metrics
    )));
    assert_eq!(fresh(k.addr(), p), home, "the target came back home");
}

/// Every `ktcpvs_server_inflight` sample of the metrics endpoint is 0.
fn nothing_in_flight(metrics: SocketAddr) -> bool {
    let body = scrape(metrics);
    let samples: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("ktcpvs_server_inflight{"))
        .collect();
    !samples.is_empty() && samples.iter().all(|l| l.ends_with(" 0"))
}

#[test]
fn lblcr_replicates_a_hot_target_onto_a_second_origin_only() {
    let os = origins(3);
    let servers = os
        .iter()
        .map(|o| Server::new(o.addr()).thresholds(1, 1))
        .collect();
    let mut cfg = Config::with_servers("lblcr", servers);
    let metrics = free_addr();
    cfg.metrics = Some(metrics);
    let k = Ktcpvs::start(&cfg);
    // Phase 1, three at once: the first two share the home (1 ≤ high);
    // the third finds it at 2 × high and grows the set.
    let p1: Vec<_> = (0..3)
        .map(|_| slow_in_progress(&k, &os, "/slow/800/hot"))
        .collect();
    let first: Vec<String> = p1.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(first[0], first[1], "{first:?}");
    assert_ne!(first[2], first[0], "set did not grow: {first:?}");
    assert!(wait_until(Duration::from_secs(5), || nothing_in_flight(
        metrics
    )));
    // Phase 2, two at once: the set's two members serve them, the third
    // origin never sees the target.
    let p2: Vec<_> = (0..2)
        .map(|_| slow_in_progress(&k, &os, "/slow/800/hot"))
        .collect();
    let second: HashSet<String> = p2.into_iter().map(|t| t.join().unwrap()).collect();
    let set: HashSet<String> = [first[0].clone(), first[2].clone()].into();
    assert_eq!(second, set, "lblcr served outside its set");
    // One target, one set: the table holds one entry, and says so.
    let body = scrape(metrics);
    assert!(
        body.contains("ktcpvs_locality_entries{service=\"web\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("ktcpvs_locality_reassigned_total{service=\"web\"} 1\n"),
        "{body}"
    );
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn sh_keeps_each_client_on_one_origin() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("sh", &addrs(&os)));
    let mut by_client: HashMap<IpAddr, HashSet<String>> = HashMap::new();
    for n in 1..=12u8 {
        let ip = IpAddr::from([127, 0, 0, n]);
        for i in 0..4 {
            let mut c = RawClient::connect_from(k.addr(), ip);
            let r = c.roundtrip(&get(&format!("/sh/{n}/{i}")));
            assert_eq!(r.status, 200, "{r:?}");
            by_client
                .entry(ip)
                .or_default()
                .insert(r.origin().to_string());
        }
    }
    for (ip, seen) in &by_client {
        assert_eq!(seen.len(), 1, "client {ip} moved: {seen:?}");
    }
    let used: HashSet<_> = by_client.values().flatten().collect();
    assert!(used.len() >= 2, "12 clients all hashed to {used:?}");
}

#[test]
fn lblc_beyond_sigma_high_waits_for_a_finishing_request() {
    let os = origins(1);
    let mut cfg = Config::with_servers("lblc", vec![Server::new(os[0].addr()).thresholds(0, 1)]);
    cfg.workers = 1; // the finishing request wakes the waiter on its worker
    cfg.svc().extra = "[service.lblc]\nqueue = 4\nqueue_timeout_ms = 20000\n".into();
    let k = Ktcpvs::start(&cfg);
    let slow = slow_in_progress(&k, &os, "/slow/1500/a");
    // At the cap (1 in flight = high): the next request waits, unseen.
    let addr = k.addr();
    let waiter = std::thread::spawn(move || RawClient::connect(addr).roundtrip(&get("/after")));
    std::thread::sleep(Duration::from_millis(300));
    if !slow.is_finished() {
        assert_eq!(os[0].requests_to("/after"), 0, "sent beyond the cap");
    }
    assert_eq!(slow.join().unwrap(), "o1");
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // It reached the origin after the slow one: the origin saw them in order.
    let seen: Vec<String> = os[0].seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/slow/1500/a", "/after"]);
}

#[test]
fn lblc_queue_timeout_and_full_queue_answer_503() {
    let os = origins(1);
    let mut cfg = Config::with_servers("lblc", vec![Server::new(os[0].addr()).thresholds(0, 1)]);
    cfg.workers = 1;
    cfg.svc().extra = "[service.lblc]\nqueue = 1\nqueue_timeout_ms = 300\n".into();
    let k = Ktcpvs::start(&cfg);
    let slow = slow_in_progress(&k, &os, "/slow/3000/a");
    let addr = k.addr();
    // One waits (and times out); with the queue of 1 taken, another is
    // refused at once. Either way: 503 with Retry-After, origin untouched.
    let a = std::thread::spawn(move || RawClient::connect(addr).roundtrip(&get("/q/1")));
    let b = std::thread::spawn(move || RawClient::connect(addr).roundtrip(&get("/q/2")));
    for r in [a.join().unwrap(), b.join().unwrap()] {
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }
    assert_eq!(os[0].requests_to("/q/"), 0);
    assert_eq!(slow.join().unwrap(), "o1");
    // Below the cap again: served.
    assert_eq!(fresh(k.addr(), "/q/3"), "o1");
}

fn rules_config(sched: &str, os: &[Origin]) -> Config {
    let servers = vec![
        Server::new(os[0].addr()),
        Server::new(os[1].addr()).sets(&["images"]),
        Server::new(os[2].addr()).sets(&["images"]),
    ];
    let mut cfg = Config::with_servers(sched, servers);
    cfg.svc().extra = r#"
[[service.rule]]
path_prefix = "/img/"
set = "images"

[[service.rule]]
path_regex = '^/gallery/\d+\.png$'
set = "images"

[[service.rule]]
host = "static.test"
set = "images"
"#
    .into();
    cfg
}

#[test]
fn rules_route_images_to_the_image_set_and_the_rest_to_default() {
    for sched in ["lblc", "rr", "maglev"] {
        let os = origins(3);
        let k = Ktcpvs::start(&rules_config(sched, &os));
        let mut c = k.client();
        let mut image_origins = HashSet::new();
        for i in 0..12 {
            for p in [format!("/img/{i}.jpg"), format!("/gallery/{i}.png")] {
                let r = c.roundtrip(&get(&p));
                assert_eq!(r.status, 200, "{r:?}");
                assert_ne!(r.origin(), "o1", "{sched}: {p} left the image set");
                image_origins.insert(r.origin().to_string());
            }
            for p in [format!("/page/{i}.html"), format!("/gallery/x{i}.png")] {
                let r = c.roundtrip(&get(&p));
                assert_eq!(r.origin(), "o1", "{sched}: {p} left the default set");
            }
            let by_host = format!("GET /any/{i} HTTP/1.1\r\nHost: STATIC.test:80\r\n\r\n");
            let r = c.roundtrip(by_host.as_bytes());
            assert_ne!(r.origin(), "o1", "{sched}: Host rule ignored");
        }
        if sched != "lblc" {
            // (lblc gives each new, idle target the first least-loaded
            // server, so sequential requests need not spread.)
            assert_eq!(image_origins.len(), 2, "{sched}: {image_origins:?}");
        }
    }
}

#[test]
fn rules_keep_lblc_locality_inside_the_set() {
    let os = origins(3);
    let k = Ktcpvs::start(&rules_config("lblc", &os));
    for i in 0..6 {
        let p = format!("/img/{i}.jpg");
        let seen: HashSet<String> = (0..4).map(|_| fresh(k.addr(), &p)).collect();
        assert_eq!(seen.len(), 1, "{p} moved inside the set: {seen:?}");
        assert!(!seen.contains("o1"));
    }
}
