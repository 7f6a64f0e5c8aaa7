//! `Expect: 100-continue`: the client gets `100 Continue` before sending the
//! body, then the final response; no stray interim response afterwards.

use std::time::Duration;
use tests::*;

#[test]
fn expect_100_continue_gets_the_interim_response_then_the_final_one() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let mut c = k.client();
    c.send(&request(
        "POST",
        "/echo",
        &[("Expect", "100-continue"), ("Content-Length", "11")],
        b"",
    ));
    c.set_timeout(Duration::from_secs(5));
    let interim = c
        .read_response()
        .expect("100 Continue before the body is sent");
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(b"hello world");
    let r = c.read_response().expect("final response");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "hello world"),
        "{r:?}"
    );
    let r = c.roundtrip(&get("/size/10"));
    assert_eq!((r.status, r.body.clone()), (200, pattern(10)), "{r:?}");
}

#[test]
fn expect_100_continue_with_the_body_sent_at_once_keeps_the_connection_in_sync() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let mut c = k.client();
    let body = pattern(30_000);
    let mut bytes = request("POST", "/echo", &[("Expect", "100-continue")], &body);
    bytes.extend(request("GET", "/size/10", &[("X-Req-Id", "next")], b""));
    c.send(&bytes);
    let r = c.read_final_response().expect("final response");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body == body, "echoed body differs");
    let r = c.read_response().expect("next response");
    assert_eq!(
        r.status, 200,
        "an interim response leaked after the final one: {r:?}"
    );
    assert_eq!(r.header("x-req-id"), Some("next"));
    assert_eq!(r.body, pattern(10));
}
