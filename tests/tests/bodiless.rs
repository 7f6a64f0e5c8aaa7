//! Responses that never have a body: HEAD, 204, 304 (and 1xx, see
//! `expect_continue.rs`). The switch must not wait for, or invent, a body.

use std::time::Duration;
use tests::*;

fn switch() -> (Origin, Ktcpvs) {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    (o, k)
}

#[test]
fn head_keeps_content_length_sends_no_body_and_connection_stays_in_sync() {
    let (o, k) = switch();
    let mut c = k.client();
    c.send(&request("HEAD", "/size/5000", &[], b""));
    let r = c.read_response_to("HEAD").expect("HEAD response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-length"), Some("5000"), "{r:?}");
    // A body after the HEAD response would be read as the next response.
    let r = c.roundtrip(&get("/size/10"));
    assert_eq!((r.status, r.body.clone()), (200, pattern(10)), "{r:?}");
    assert_eq!(
        o.seen()[0].method,
        "HEAD",
        "HEAD must reach the origin as HEAD"
    );
}

#[test]
fn head_of_a_chunked_resource_has_no_body() {
    let (_o, k) = switch();
    let mut c = k.client();
    c.send(&request("HEAD", "/chunked/5000", &[], b""));
    c.send(&get("/size/11"));
    let r = c.read_response_to("HEAD").expect("HEAD response");
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.read_response().expect("GET after HEAD");
    assert_eq!(r.body, pattern(11), "{r:?}");
}

#[test]
fn status_204_and_304_have_no_body_and_do_not_block_the_connection() {
    let (_o, k) = switch();
    let mut c = k.client();
    for round in 0..3 {
        let r = c.roundtrip(&get("/status/204"));
        assert_eq!((r.status, r.body.len()), (204, 0), "round {round}: {r:?}");
        assert!(r.raw.ends_with(b"\r\n\r\n"));
        let r = c.roundtrip(&get("/status/304"));
        assert_eq!((r.status, r.body.len()), (304, 0), "round {round}: {r:?}");
        assert_eq!(r.header("etag"), Some("\"e2e\""));
        let r = c.roundtrip(&get("/size/64"));
        assert_eq!(r.body, pattern(64), "round {round}");
    }
    assert!(
        c.stays_open_silent(Duration::from_millis(200)),
        "stray bytes after a bodiless response"
    );
}
