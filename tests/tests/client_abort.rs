//! Clients that go away mid-request or mid-response must not hurt the switch
//! or later clients.

use std::time::{Duration, Instant};
use tests::*;

#[test]
fn client_resetting_mid_download_leaves_the_switch_serving() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    for round in 0..5 {
        let mut c = k.client();
        c.send(&get(&format!("/size/{}", 50 * 1024 * 1024)));
        // Until the head is there (bounded), however slow the machine.
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 12 && Instant::now() < deadline {
            let (more, closed) = c.read_until_close(Duration::from_millis(50));
            got.extend_from_slice(&more);
            if closed {
                break;
            }
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "round {round}: download did not start"
        );
        c.reset();
        let r = k.client().roundtrip(&get("/size/1000"));
        assert_eq!(
            (r.status, r.body.clone()),
            (200, pattern(1000)),
            "round {round}: {r:?}"
        );
    }
    k.assert_running();
}

#[test]
fn client_closing_mid_download_with_fin_leaves_the_switch_serving() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    for round in 0..3 {
        let mut c = k.client();
        c.send(&get(&format!("/chunked/{}", 20 * 1024 * 1024)));
        let _ = c.read_until_close(Duration::from_millis(50));
        drop(c);
        let r = k.client().roundtrip(&get("/chunked/1000"));
        assert_eq!(
            (r.status, r.body.clone()),
            (200, pattern(1000)),
            "round {round}: {r:?}"
        );
    }
    k.assert_running();
}

#[test]
fn client_closing_while_its_request_is_pending_leaves_the_switch_serving() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    for _ in 0..5 {
        let mut c = k.client();
        c.send(&get("/slow/300"));
        std::thread::sleep(Duration::from_millis(20));
        drop(c);
    }
    let t = Instant::now();
    let r = k.client().roundtrip(&get("/size/10"));
    assert_eq!((r.status, r.body.clone()), (200, pattern(10)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "next client waited {:?}",
        t.elapsed()
    );
    // Once the slow responses are done the switch is still healthy.
    std::thread::sleep(Duration::from_millis(400));
    let r = k.client().roundtrip(&get("/size/20"));
    assert_eq!(r.body, pattern(20));
    k.assert_running();
}

#[test]
fn client_sending_half_a_request_then_closing_leaves_the_switch_serving() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let partials: [&[u8]; 3] = [
        b"GET /size/10 HTTP/1.1\r\nHo",
        b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789",
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc",
    ];
    for p in partials {
        let mut c = k.client();
        c.send(p);
        std::thread::sleep(Duration::from_millis(30));
        c.reset();
        let r = k.client().roundtrip(&get("/size/10"));
        assert_eq!(
            (r.status, r.body.clone()),
            (200, pattern(10)),
            "after {:?}: {r:?}",
            String::from_utf8_lossy(p)
        );
    }
    k.assert_running();
}
