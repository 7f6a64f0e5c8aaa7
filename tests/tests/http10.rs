//! HTTP/1.0 clients with and without keep-alive, and `Connection: close`.

use std::time::Duration;
use tests::*;

fn switch() -> (Origin, Ktcpvs) {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    (o, k)
}

#[test]
fn http10_without_keepalive_gets_the_response_then_close() {
    let (_o, k) = switch();
    let mut c = k.client();
    let r = c.roundtrip(b"GET /size/300 HTTP/1.0\r\nHost: test.local\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, pattern(300));
    c.expect_closed(Duration::from_secs(3))
        .expect("an HTTP/1.0 request without keep-alive ends the connection");
}

#[test]
fn http10_keepalive_connection_serves_several_requests() {
    let (o, k) = switch();
    let mut c = k.client();
    for i in 0..3 {
        let n = 300 + i;
        let r = c.roundtrip(
            format!("GET /size/{n} HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, pattern(n), "request {i}");
        assert!(
            matches!(r.framing, Framing::Length(_)),
            "a kept-alive HTTP/1.0 response needs Content-Length: {r:?}"
        );
        assert!(
            r.header_has_token("connection", "keep-alive"),
            "an HTTP/1.0 client only keeps the connection if told `Connection: keep-alive`: {r:?}"
        );
    }
    assert_eq!(o.requests_to("/size/"), 3);
}

#[test]
fn http10_client_never_receives_chunked_coding() {
    let (_o, k) = switch();
    let mut c = k.client();
    let r = c.roundtrip(b"GET /chunked/20000 HTTP/1.0\r\nHost: test.local\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(
        r.framing,
        Framing::Chunked,
        "chunked coding sent to an HTTP/1.0 client: {r:?}"
    );
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert!(
        r.body == pattern(20000),
        "body differs (len {})",
        r.body.len()
    );
}

#[test]
fn http10_post_with_content_length() {
    let (_o, k) = switch();
    let mut c = k.client();
    let body = pattern(777);
    let mut req =
        b"POST /echo HTTP/1.0\r\nHost: test.local\r\nContent-Length: 777\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let r = c.roundtrip(&req);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, body);
    c.expect_closed(Duration::from_secs(3))
        .expect("HTTP/1.0 without keep-alive closes");
}

#[test]
fn http11_connection_close_gets_the_response_then_close() {
    let (o, k) = switch();
    let mut c = k.client();
    let mut two = request("GET", "/size/100", &[("Connection", "close")], b"");
    // A request after `Connection: close` must not be served.
    two.extend(get("/after-close"));
    c.send(&two);
    let r = c.read_response().expect("response");
    assert_eq!((r.status, r.body.clone()), (200, pattern(100)), "{r:?}");
    c.expect_closed(Duration::from_secs(3))
        .expect("close after Connection: close");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        o.requests_to("/after-close"),
        0,
        "a request after Connection: close was forwarded"
    );
}
