//! Header rewriting: hop-by-hop headers stripped both ways; X-Forwarded-For,
//! X-Forwarded-Proto and Via added (and only when configured).

use tests::*;

#[test]
fn hop_by_hop_request_headers_are_stripped_end_to_end_kept() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let r = k.client().roundtrip(&request(
        "GET",
        "/fwd",
        &[
            ("Connection", "keep-alive, X-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Hop", "secret"),
            ("TE", "trailers"),
            ("X-End", "kept"),
        ],
        b"",
    ));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &o.seen()[0];
    assert_eq!(seen.header("x-end"), Some("kept"), "{seen:?}");
    assert_eq!(
        seen.header("keep-alive"),
        None,
        "Keep-Alive forwarded: {seen:?}"
    );
    assert_eq!(
        seen.header("x-hop"),
        None,
        "a header named in Connection was forwarded: {seen:?}"
    );
    assert_eq!(seen.header("te"), None, "TE forwarded: {seen:?}");
    let conn = seen
        .headers_named("connection")
        .join(",")
        .to_ascii_lowercase();
    assert!(
        !conn.contains("x-hop"),
        "client's Connection tokens forwarded: {conn:?}"
    );
}

#[test]
fn forwarding_headers_are_added() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let r = k.client().roundtrip(&get("/fwd"));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &o.seen()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
    let via = seen
        .header("via")
        .unwrap_or_else(|| panic!("no Via: {seen:?}"));
    assert!(
        via.contains("1.1"),
        "Via should name the received protocol 1.1: {via:?}"
    );
    // Host is end-to-end.
    assert_eq!(seen.header("host"), Some("test.local"));
}

#[test]
fn existing_x_forwarded_for_is_appended_to() {
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let r = k.client().roundtrip(&request(
        "GET",
        "/fwd",
        &[("X-Forwarded-For", "203.0.113.9")],
        b"",
    ));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &o.seen()[0];
    let all: Vec<String> = seen
        .headers_named("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(all, ["203.0.113.9", "127.0.0.1"], "{seen:?}");
}

#[test]
fn forwarding_headers_are_not_added_when_disabled() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.svc().x_forwarded_for = false;
    cfg.svc().x_forwarded_proto = false;
    cfg.svc().via = false;
    let k = Ktcpvs::start(&cfg);
    let r = k.client().roundtrip(&get("/fwd"));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &o.seen()[0];
    assert_eq!(seen.header("x-forwarded-for"), None, "{seen:?}");
    assert_eq!(seen.header("x-forwarded-proto"), None, "{seen:?}");
    assert_eq!(seen.header("via"), None, "{seen:?}");
}

#[test]
fn hop_by_hop_response_headers_are_stripped() {
    let raw = RawOrigin::start(RawBehaviour::Script(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=99\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\nX-Resp-End: 1\r\n\r\nok"
            .to_vec(),
    ));
    let k = Ktcpvs::start(&Config::new("rr", &[raw.addr()]));
    let r = k.client().roundtrip(&get("/resp"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok"), "{r:?}");
    assert_eq!(r.header("x-resp-end"), Some("1"), "{r:?}");
    assert_eq!(r.header("x-resp-hop"), None, "{r:?}");
    assert!(
        r.headers_named("keep-alive")
            .iter()
            .all(|v| !v.contains("99")),
        "backend's Keep-Alive forwarded: {r:?}"
    );
    assert!(!r.header_has_token("connection", "x-resp-hop"), "{r:?}");
}
