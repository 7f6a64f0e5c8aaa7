//! Requests the switch must refuse itself, never forwarding them: malformed
//! requests (400), oversized header blocks (431), request smuggling shapes
//! (Content-Length with Transfer-Encoding → 400).

use std::time::Duration;
use tests::*;

/// Sends `bytes` on a fresh connection; asserts the reply is `status` and the
/// connection is then closed; asserts the origin saw nothing.
fn refused(k: &Ktcpvs, o: &Origin, bytes: &[u8], status: u16) {
    let what = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
    let mut c = k.client();
    c.send(bytes);
    let r = c
        .read_response()
        .unwrap_or_else(|e| panic!("no {status} for {what:?}: {e}"));
    assert_eq!(r.status, status, "for {what:?}: {r:?}");
    c.expect_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connection not closed after {status} for {what:?}: {e}"));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        o.requests(),
        0,
        "the origin received {what:?}: {:?}",
        o.seen()
    );
}

fn switch(max_header_bytes: usize) -> (Origin, Ktcpvs) {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.max_header_bytes = max_header_bytes;
    let k = Ktcpvs::start(&cfg);
    (o, k)
}

#[test]
fn malformed_requests_get_400_and_close() {
    let (o, k) = switch(16384);
    let cases: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost test.local\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : test.local\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for case in cases {
        refused(&k, &o, case, 400);
    }
}

#[test]
fn conflicting_content_lengths_get_400() {
    let (o, k) = switch(16384);
    refused(
        &k,
        &o,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    );
}

#[test]
fn content_length_with_transfer_encoding_gets_400_and_is_never_forwarded() {
    let (o, k) = switch(16384);
    refused(
        &k,
        &o,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    // The classic smuggling shape, TE before CL, with a hidden request.
    refused(
        &k,
        &o,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    );
    refused(
        &k,
        &o,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\nabc",
        400,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(o.requests_to("/smuggled"), 0);
    assert_eq!(o.requests(), 0, "{:?}", o.seen());
}

#[test]
fn header_block_over_the_limit_gets_431_and_close() {
    let (o, k) = switch(4096);
    let big = "a".repeat(8000);
    refused(
        &k,
        &o,
        &request("GET", "/big", &[("X-Big", &big)], b""),
        431,
    );
}

#[test]
fn request_line_over_the_limit_gets_414_and_close() {
    let (o, k) = switch(4096);
    let uri = format!("/{}", "u".repeat(8000));
    refused(&k, &o, &request("GET", &uri, &[], b""), 414);
}

#[test]
fn header_block_over_the_limit_is_refused_before_it_ends() {
    let (o, k) = switch(4096);
    let mut c = k.client();
    // 20 KB of header lines and never the blank line: the switch must not
    // wait for the end of the head to refuse it.
    let mut head = b"GET /never HTTP/1.1\r\nHost: a\r\n".to_vec();
    while head.len() < 20_000 {
        head.extend_from_slice(
            format!("X-Filler-{}: {}\r\n", head.len(), "b".repeat(60)).as_bytes(),
        );
    }
    let _ = c.try_send(&head);
    c.set_timeout(Duration::from_secs(3));
    let r = c.read_response().expect("431 before the head is complete");
    assert_eq!(r.status, 431, "{r:?}");
    c.expect_closed(Duration::from_secs(3))
        .expect("close after 431");
    assert_eq!(o.requests(), 0);
}

#[test]
fn header_block_under_the_limit_is_forwarded_intact() {
    let (o, k) = switch(4096);
    let value = "v".repeat(3000);
    let r = k
        .client()
        .roundtrip(&request("GET", "/ok", &[("X-Big", &value)], b""));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(o.seen()[0].header("x-big"), Some(value.as_str()));
}

#[test]
fn default_limit_allows_a_10k_header_block() {
    let (o, k) = switch(16384);
    let value = "v".repeat(10_000);
    let r = k
        .client()
        .roundtrip(&request("GET", "/ok", &[("X-Big", &value)], b""));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(o.seen()[0].header("x-big").map(str::len), Some(10_000));
}

#[test]
fn an_unsupported_expectation_gets_417() {
    let (o, k) = switch(16384);
    refused(
        &k,
        &o,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\nhi",
        417,
    );
}

/// A chunked body found malformed while it streams: the head has gone to
/// the server, the body breaks off. The client gets 400 (no response has
/// begun) and the server's connection is dropped, so the server never sees
/// a complete request (nor a next one after half a body).
#[test]
fn a_malformed_chunked_body_gets_400_and_drops_the_server_connection() {
    let (o, k) = switch(16384);
    for (i, body) in [
        &b"5\r\nhelloXX0\r\n\r\n"[..],        // no CRLF after the data
        b"zz\r\nhello\r\n0\r\n\r\n",          // not a size
        b"ffffffffffffffffffff\r\nhello\r\n", // a size beyond 64 bits
    ]
    .iter()
    .enumerate()
    {
        let mut c = k.client();
        let mut req =
            b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        c.send(&req);
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("case {i}: no 400: {e}"));
        assert_eq!(r.status, 400, "case {i}: {r:?}");
        c.expect_closed(Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
    // Every server connection that carried a broken body is closed, not
    // pooled with half a request in it.
    assert!(
        wait_until(Duration::from_secs(5), || o.open_connections() == 0),
        "{} server connections still open",
        o.open_connections()
    );
}

/// An HTTP/2 client with prior knowledge gets an answer it can read: the
/// server preface (empty SETTINGS) and GOAWAY with HTTP_1_1_REQUIRED, then
/// an orderly close — not an HTTP/1.1 400 it would take for garbage.
#[test]
fn an_http2_preface_gets_goaway_http_1_1_required() {
    let (o, k) = switch(16384);
    let mut c = k.client();
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    let (got, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(closed, "still open after {got:?}");
    assert_eq!(
        got,
        [
            &[0u8, 0, 0, 4, 0, 0, 0, 0, 0][..],
            &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0d],
        ]
        .concat()
    );
    assert_eq!(o.requests_to("/"), 0);
}
