//! Protocol upgrades (RFC 9110 §7.8; WebSocket's handshake): the switch
//! passes `Upgrade` on, relays the real server's 101 and then carries the
//! new protocol both ways, byte-exact, with half-closes passed on. A
//! declined upgrade is an ordinary exchange; a 101 nobody asked for is
//! refused; a tunnel is closed when idle and on shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tests::*;

fn upgrade_req(path: &str) -> Vec<u8> {
    request(
        "GET",
        path,
        &[
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    )
}

/// `ktcpvs_<name>` from the metrics page.
fn metric(m: SocketAddr, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&m, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let key = format!("ktcpvs_{name} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// The 101 and the origin's greeting; panics otherwise.
fn switch(c: &mut RawClient, req: &[u8], origin: &str) {
    c.send(req);
    let r = c.read_response().expect("a response to the upgrade");
    assert_eq!(r.status, 101, "{r:?}");
    assert!(r.header_has_token("upgrade", "websocket"), "{r:?}");
    assert!(r.header_has_token("connection", "upgrade"), "{r:?}");
    let hello = format!("{origin} switched\n");
    let got = c.read_exact(hello.len()).expect("the greeting");
    assert_eq!(String::from_utf8_lossy(&got), hello);
}

#[test]
fn an_upgrade_becomes_a_two_way_tunnel_with_half_close() {
    let o = Origin::start("o1");
    let m = free_addr();
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.metrics = Some(m);
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    // The first bytes of the new protocol right behind the request, in the
    // same segment: they must reach the server after the switch.
    let mut first = upgrade_req("/upgrade");
    first.extend_from_slice(b"early");
    switch(&mut c, &first, "o1");
    assert_eq!(c.read_exact(5).expect("early bytes echoed"), b"early");

    let seen = o.seen();
    let h = &seen[0];
    assert_eq!(h.header("upgrade"), Some("websocket"), "{h:?}");
    assert!(
        h.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{h:?}"
    );
    assert_eq!(
        h.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    // 2 MB each way at once (a writer thread; the echo comes back while
    // the client still sends), checked by digest.
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = md5_hex(&data);
    let mut w = c.stream().try_clone().expect("clone");
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        for part in d2.chunks(7_919) {
            w.write_all(part).expect("tunnel write");
        }
    });
    let echoed = c.read_exact(data.len()).expect("the echo");
    writer.join().expect("writer");
    assert_eq!(md5_hex(&echoed), want, "echo differs");
    assert_eq!(
        metric(m, "tunnels_active"),
        Some(1),
        "one tunnel open while it is used"
    );

    // Half-close: the server sees the end of the client's stream, answers,
    // and closes; the client reads all of it.
    c.shutdown_write();
    let (rest, closed) = c.read_until_close(Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&rest),
        format!("bye {}\n", 5 + data.len())
    );
    assert!(closed, "the tunnel did not end with the server's close");
    assert!(
        wait_until(Duration::from_secs(5), || metric(m, "tunnels_active")
            == Some(0)
            && metric(m, "tunnels_total") == Some(1)),
        "tunnel counters: total {:?}, active {:?}",
        metric(m, "tunnels_total"),
        metric(m, "tunnels_active")
    );
}

#[test]
fn a_declined_upgrade_is_an_ordinary_keep_alive_exchange() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let mut c = k.client();
    // Pipelined: the second request must be read as HTTP, not tunnelled.
    let mut two = upgrade_req("/plain");
    two.extend_from_slice(&get("/size/10"));
    c.send(&two);
    let r = c.read_response().expect("first");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "o1 /plain\n");
    assert!(r.header("upgrade").is_none(), "{r:?}");
    let r = c.read_response().expect("second");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, pattern(10));
    assert_eq!(o.seen()[0].header("upgrade"), Some("websocket"));
}

#[test]
fn upgrade_off_strips_the_proposal() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.svc().upgrade = false;
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    let r = c.roundtrip(&upgrade_req("/upgrade"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "o1 /upgrade\n");
    let h = &o.seen()[0];
    assert!(h.header("upgrade").is_none(), "{h:?}");
    assert!(h.header("connection").is_none(), "{h:?}");
}

#[test]
fn a_101_nobody_asked_for_is_refused() {
    let raw = RawOrigin::start(RawBehaviour::Script(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nSMUGGLED".to_vec(),
    ));
    let k = Ktcpvs::start(&Config::new("rr", &[raw.addr()]));
    let mut c = k.client();
    c.send(&get("/x"));
    let r = c.read_response().expect("a reply");
    assert_eq!(r.status, 502, "{r:?}");
    let (rest, _) = c.read_until_close(Duration::from_secs(3));
    assert!(
        !String::from_utf8_lossy(&rest).contains("SMUGGLED"),
        "{rest:?}"
    );
}

#[test]
fn an_idle_tunnel_is_closed_after_the_tunnel_timeout() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.limits_keys = "tunnel_idle_timeout_ms = 400\n".into();
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    switch(&mut c, &upgrade_req("/upgrade"), "o1");
    // Traffic keeps it open past the timeout…
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        let msg = format!("ping {i}");
        c.send(msg.as_bytes());
        assert_eq!(
            c.read_exact(msg.len()).expect("echo while active"),
            msg.as_bytes()
        );
    }
    // …silence closes it.
    let t0 = Instant::now();
    c.expect_closed(Duration::from_secs(5))
        .expect("idle tunnel closed");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
}

#[test]
fn shutdown_closes_open_tunnels_instead_of_waiting_for_them() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let mut c = k.client();
    switch(&mut c, &upgrade_req("/upgrade"), "o1");
    let t0 = Instant::now();
    let st = k
        .terminate(Duration::from_secs(20))
        .expect("ktcpvs exits on SIGTERM with a tunnel open");
    assert!(st.success(), "{st:?}");
    let took = t0.elapsed();
    // The grace period is 30 s; an open tunnel must not hold it.
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    c.expect_closed(Duration::from_secs(2))
        .expect("tunnel closed on shutdown");
}
