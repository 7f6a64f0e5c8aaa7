//! Schedulers as observed from outside: rr, wrr, weight 0, lc, lblc
//! (SPEC §1 "Schedulers"; thesis §4.1.2, §6.3.5).

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tests::*;

fn origins_of(c: &mut RawClient, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = c.roundtrip(&get(path));
            assert_eq!(r.status, 200, "request {i} to {path}: {r:?}");
            r.origin().to_string()
        })
        .collect()
}

#[test]
fn rr_rotates_over_every_backend_evenly() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let seq = origins_of(&mut k.client(), "/rr", 30);
    for w in seq.chunks(3) {
        let distinct: HashSet<_> = w.iter().collect();
        assert_eq!(distinct.len(), 3, "rr did not rotate: {seq:?}");
    }
    for o in &os {
        assert_eq!(o.requests_to("/rr"), 10, "{} in {seq:?}", o.name());
    }
}

#[test]
fn wrr_with_weights_4_3_2_follows_the_aababcabc_cycle() {
    let os = origins(3);
    let servers = vec![
        Server::new(os[0].addr()).weight(4),
        Server::new(os[1].addr()).weight(3),
        Server::new(os[2].addr()).weight(2),
    ];
    let k = Ktcpvs::start(&Config::with_servers("wrr", servers));
    let seq = origins_of(&mut k.client(), "/wrr", 90);
    let counts: Vec<usize> = os.iter().map(|o| o.requests_to("/wrr")).collect();
    assert_eq!(counts, [40, 30, 20], "wrr 4:3:2 over 90 requests: {seq:?}");
    let letters: String = seq
        .iter()
        .map(|o| match o.as_str() {
            "o1" => 'A',
            "o2" => 'B',
            "o3" => 'C',
            _ => '?',
        })
        .collect();
    assert_eq!(
        &letters[..9],
        "AABABCABC",
        "thesis §4.1.2 cycle; got {letters}"
    );
    assert_eq!(letters, "AABABCABC".repeat(10));
}

#[test]
fn weight_zero_server_is_never_scheduled() {
    for sched in ["wrr", "wlc"] {
        let os = origins(2);
        let servers = vec![
            Server::new(os[0].addr()).weight(1),
            Server::new(os[1].addr()).weight(0),
        ];
        let k = Ktcpvs::start(&Config::with_servers(sched, servers));
        let seq = origins_of(&mut k.client(), "/w0", 20);
        assert!(
            seq.iter().all(|o| o == "o1"),
            "{sched}: weight-0 server scheduled: {seq:?}"
        );
        assert_eq!(os[1].requests_to("/w0"), 0, "{sched}");
    }
}

#[test]
fn lc_sends_new_requests_to_the_server_without_work_in_progress() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new("lc", &addrs(&os)));
    let addr = k.addr();
    let slow = std::thread::spawn(move || {
        let r = RawClient::connect(addr).roundtrip(&get("/slow/1500"));
        assert_eq!(r.status, 200, "{r:?}");
        r.origin().to_string()
    });
    // Wait until the slow request is at an origin.
    assert!(wait_until(Duration::from_secs(3), || os
        .iter()
        .any(|o| o.requests_to("/slow/") == 1)));
    let busy = if os[0].requests_to("/slow/") == 1 {
        "o1"
    } else {
        "o2"
    };
    let seq = origins_of(&mut k.client(), "/lc", 10);
    assert!(
        seq.iter().all(|o| o != busy),
        "lc scheduled onto {busy}, which has a request in progress: {seq:?}"
    );
    assert_eq!(slow.join().expect("slow client"), busy);
}

#[test]
fn lblc_sends_the_same_target_to_the_same_server() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("lblc", &addrs(&os)));
    let mut c = k.client();
    for p in ["/lb/a.html", "/lb/b.html", "/lb/c/d.jpg", "/lb/e.cgi"] {
        // The query string is not part of the target (SPEC §1, §6.3.5).
        let seq: Vec<String> = (0..10)
            .map(|i| {
                let r = c.roundtrip(&get(&format!("{p}?q={i}")));
                assert_eq!(r.status, 200, "{p}: {r:?}");
                r.origin().to_string()
            })
            .collect();
        let distinct: HashSet<_> = seq.iter().collect();
        assert_eq!(distinct.len(), 1, "lblc moved {p} between servers: {seq:?}");
    }
}

#[test]
fn lblc_spreads_distinct_targets_under_load_and_keeps_them() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("lblc", &addrs(&os)));
    let addr = k.addr();
    // Three new targets while the earlier ones are still in progress: each
    // goes to the least-connection node, i.e. a different one.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let t = std::thread::spawn(move || {
                let r = RawClient::connect(addr).roundtrip(&get(&format!("/slow/700/p{i}")));
                assert_eq!(r.status, 200, "{r:?}");
                r.origin().to_string()
            });
            // Scheduled and in progress at an origin before the next one.
            let at_origins = || os.iter().map(|o| o.requests_to("/slow/")).sum::<usize>();
            assert!(wait_until(Duration::from_secs(3), || at_origins() == i + 1));
            t
        })
        .collect();
    let first: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let distinct: HashSet<_> = first.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "lblc did not spread new targets under load: {first:?}"
    );
    // Later requests for each target return to its server.
    let mut c = k.client();
    let mut again: HashMap<usize, String> = HashMap::new();
    for i in 0..3 {
        let r = c.roundtrip(&get(&format!("/slow/700/p{i}?again=1")));
        again.insert(i, r.origin().to_string());
    }
    for (i, o) in first.iter().enumerate() {
        assert_eq!(&again[&i], o, "target /slow/700/p{i} moved");
    }
}
