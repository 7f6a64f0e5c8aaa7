//! Persistent connections: the switch keeps per-worker keep-alive pools to
//! the backends, so many client requests ride on few backend connections
//! (SPEC §1, "Per request"; thesis §6.5.3).

use std::time::Duration;
use tests::*;

#[test]
fn sequential_requests_on_one_client_connection_reuse_backend_connections() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let mut c = k.client();
    for i in 0..200 {
        let r = c.roundtrip(&get(&format!("/size/{}", 100 + i)));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, pattern(100 + i), "request {i}");
        assert_eq!(r.origin(), "o1");
    }
    assert_eq!(o.requests_to("/size/"), 200);
    let used = o.connections_used();
    assert!(
        used <= 4,
        "200 sequential requests used {used} backend connections (expected a reused pooled one)"
    );
}

#[test]
fn one_request_per_client_connection_still_reuses_backend_connections() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    for i in 0..60 {
        let mut c = k.client();
        let r = c.roundtrip(&request(
            "GET",
            &format!("/ka/{i}"),
            &[("Connection", "close")],
            b"",
        ));
        assert_eq!(r.status, 200, "client {i}: {r:?}");
        assert!(
            r.body_str().ends_with(&format!(" /ka/{i}\n")),
            "client {i}: {r:?}"
        );
        c.expect_closed(Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("client {i} with Connection: close: {e}"));
    }
    let total: usize = os.iter().map(|o| o.requests_to("/ka/")).sum();
    assert_eq!(total, 60);
    let used: usize = os.iter().map(|o| o.connections_used()).sum();
    // At most one idle connection per (worker, backend) is ever needed here.
    assert!(
        used <= 12,
        "60 one-shot clients used {used} backend connections; the pool is not reused"
    );
}

#[test]
fn concurrent_keepalive_clients_share_a_bounded_set_of_backend_connections() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let addr = k.addr();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr);
                for i in 0..50 {
                    let n = 1 + (t * 50 + i) % 3000;
                    let r = c.roundtrip(&get(&format!("/size/{n}")));
                    assert_eq!(r.status, 200, "thread {t} request {i}: {r:?}");
                    assert_eq!(r.body, pattern(n), "thread {t} request {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let total: usize = os.iter().map(|o| o.requests_to("/size/")).sum();
    assert_eq!(total, 400);
    let used: usize = os.iter().map(|o| o.connections_used()).sum();
    // 8 clients with one request in flight each need at most 8 connections
    // per backend; allow some slack for hand-over races.
    assert!(
        used <= 30,
        "400 requests from 8 keep-alive clients used {used} backend connections"
    );
}
