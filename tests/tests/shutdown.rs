//! SIGTERM/SIGINT: stop accepting, finish in-flight requests, close idle
//! connections, exit 0.

use std::time::{Duration, Instant};
use tests::*;

#[test]
fn sigterm_finishes_in_flight_requests_closes_idle_ones_and_exits_zero() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let addr = k.addr();

    // An idle keep-alive client.
    let mut idle = k.client();
    let r = idle.roundtrip(&get("/size/10"));
    assert_eq!(r.status, 200, "{r:?}");

    // A client whose request is in progress at the origin.
    let busy = std::thread::spawn(move || {
        let mut c = RawClient::connect(addr);
        c.send(&get("/slow/1000"));
        c.read_response()
    });
    assert!(wait_until(Duration::from_secs(3), || o
        .requests_to("/slow/")
        == 1));

    k.signal(libc::SIGTERM);
    let t = Instant::now();

    // The idle connection is closed promptly.
    idle.expect_closed(Duration::from_secs(3))
        .expect("idle keep-alive connection closed on SIGTERM");

    // No new client is served while draining.
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(mut c) = RawClient::try_connect(addr) {
        c.set_timeout(Duration::from_millis(700));
        let _ = c.try_send(&get("/size/10"));
        if let Ok(r) = c.read_response() {
            assert_ne!(
                r.status, 200,
                "a new client was served after SIGTERM: {r:?}"
            );
        }
    }

    // The in-flight request completes.
    let r = busy
        .join()
        .expect("busy client")
        .expect("in-flight request finished after SIGTERM");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "slow 1000\n"),
        "{r:?}"
    );

    let st = k
        .wait_exit(Duration::from_secs(5))
        .expect("ktcpvs exits after draining");
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(t.elapsed() < Duration::from_secs(6));
    assert!(
        RawClient::try_connect(addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigint_on_an_idle_switch_exits_zero() {
    let o = Origin::start("o1");
    let mut k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let r = k.client().roundtrip(&get("/size/10"));
    assert_eq!(r.status, 200, "{r:?}");
    k.signal(libc::SIGINT);
    let st = k
        .wait_exit(Duration::from_secs(5))
        .expect("ktcpvs exits on SIGINT");
    assert_eq!(st.code(), Some(0), "exit status {st}");
}
