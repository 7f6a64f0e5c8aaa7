//! Backends that die, refuse, or misbehave.

use std::time::Duration;
use tests::*;

#[test]
fn backend_closing_mid_response_closes_the_client_connection() {
    let raw = RawOrigin::start(RawBehaviour::Truncate {
        declared: 100_000,
        sent: 1000,
    });
    let mut k = Ktcpvs::start(&Config::new("rr", &[raw.addr()]));
    let mut c = k.client();
    c.send(&get("/big"));
    match c.read_response() {
        Ok(r) => panic!("a truncated backend response was completed: {r:?}"),
        Err(ReadError::Closed { partial }) => {
            assert!(partial.len() < 100_000, "received {} bytes", partial.len());
            let heads = partial.windows(8).filter(|w| w == b"HTTP/1.1").count();
            assert!(heads <= 1, "a second response head inside a truncated body");
        }
        Err(e) => panic!("expected the client connection to be closed, got {e}"),
    }
    assert!(raw.connections() >= 1);
    k.assert_running();
}

#[test]
fn truncated_response_never_corrupts_a_pipelined_next_response() {
    let raw = RawOrigin::start(RawBehaviour::Truncate {
        declared: 2000,
        sent: 700,
    });
    let good = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[raw.addr(), good.addr()]));
    let mut c = k.client();
    let mut all = Vec::new();
    for i in 0..4 {
        all.extend(request(
            "GET",
            "/size/2000",
            &[("X-Req-Id", &i.to_string())],
            b"",
        ));
    }
    c.send(&all);
    let mut complete = 0;
    let outcome = loop {
        match c.read_response() {
            Ok(r) => {
                // A complete response must be the real one, whole and in order.
                assert_eq!(r.status, 200, "{r:?}");
                assert_eq!(
                    r.origin(),
                    "o1",
                    "a truncated response was passed off as complete: {r:?}"
                );
                assert_eq!(
                    r.header("x-req-id"),
                    Some(complete.to_string().as_str()),
                    "{r:?}"
                );
                assert!(r.body == pattern(2000), "response {complete}: body differs");
                complete += 1;
                if complete == 4 {
                    break None;
                }
            }
            Err(e) => break Some(e),
        }
    };
    match outcome {
        // All four served by the good backend (retried): fine.
        None => {}
        Some(ReadError::Closed { partial }) => {
            let heads = partial.windows(8).filter(|w| w == b"HTTP/1.").count();
            assert!(
                heads <= 1,
                "response bytes spliced into a truncated body: {partial:?}"
            );
        }
        Some(e) => panic!("after {complete} responses: expected close, got {e}"),
    }
    assert!(raw.connections() >= 1, "rr never tried the raw backend");
    k.assert_running();
    // The switch still serves new clients (half of them reach the good backend).
    let ok = (0..4)
        .filter(|_| {
            let mut c2 = k.client();
            c2.send(&get("/size/2000"));
            matches!(c2.read_response(), Ok(r) if r.status == 200 && r.body == pattern(2000))
        })
        .count();
    assert!(ok >= 1, "no healthy response after the truncation");
}

#[test]
fn close_delimited_backend_response_is_relayed_then_client_closed() {
    let raw = RawOrigin::start(RawBehaviour::CloseDelimited {
        body: pattern(5000),
    });
    let k = Ktcpvs::start(&Config::new("rr", &[raw.addr()]));
    let mut c = k.client();
    let r = c.roundtrip(&get("/close-delimited"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body == pattern(5000),
        "body differs: len {}",
        r.body.len()
    );
    c.expect_closed(Duration::from_secs(3))
        .expect("a close-delimited response ends the client connection");
}

#[test]
fn dead_backend_is_skipped_and_requests_succeed_elsewhere() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new(
        "rr",
        &[dead_addr(), os[0].addr(), os[1].addr()],
    ));
    let mut c = k.client();
    for i in 0..30 {
        let r = c.roundtrip(&get(&format!("/size/{}", 10 + i)));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, pattern(10 + i));
    }
    let total: usize = os.iter().map(|o| o.requests_to("/size/")).sum();
    assert_eq!(total, 30);
}

#[test]
fn backend_stopped_between_requests_is_retried_elsewhere() {
    let mut os = origins(2);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let mut c = k.client();
    for i in 0..10 {
        let r = c.roundtrip(&get("/size/50"));
        assert_eq!(r.status, 200, "warm-up {i}: {r:?}");
    }
    assert!(os[0].requests() > 0 && os[1].requests() > 0);
    // o1 dies: its pooled connections are closed under the switch.
    os.remove(0).stop();
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..20 {
        let r = c.roundtrip(&get(&format!("/size/{}", 60 + i)));
        assert_eq!(r.status, 200, "after o1 stopped, request {i}: {r:?}");
        assert_eq!(r.origin(), "o2");
        assert_eq!(r.body, pattern(60 + i));
    }
}

#[test]
fn all_backends_down_gives_502_or_503() {
    let refusing = RawOrigin::start(RawBehaviour::AcceptAndClose);
    let mut k = Ktcpvs::start(&Config::new("rr", &[dead_addr(), refusing.addr()]));
    for i in 0..3 {
        let mut c = k.client();
        let r = c.roundtrip(&get("/nowhere"));
        assert!(
            r.status == 502 || r.status == 503,
            "attempt {i}: all backends down gave {r:?}"
        );
    }
    k.assert_running();
}
