//! Pipelined requests: each one scheduled on its own, possibly to a
//! different backend, responses returned byte-exact in request order
//! (SPEC §1; thesis §6.5.3).

use std::time::Duration;
use tests::*;

fn size_of(i: usize) -> usize {
    500 + 37 * i
}

#[test]
fn hundred_pipelined_requests_across_three_backends_in_order_byte_exact() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let mut c = k.client();
    let mut all = Vec::new();
    for i in 0..100 {
        all.extend(request(
            "GET",
            &format!("/size/{}", size_of(i)),
            &[("X-Req-Id", &i.to_string())],
            b"",
        ));
    }
    c.send(&all);
    for i in 0..100 {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {i} of 100: {e}"));
        assert_eq!(r.status, 200, "response {i}: {r:?}");
        assert_eq!(
            r.header("x-req-id"),
            Some(i.to_string().as_str()),
            "response {i} out of order: {r:?}"
        );
        assert_eq!(r.body.len(), size_of(i), "response {i}");
        assert!(
            r.body == pattern(size_of(i)),
            "response {i}: body bytes differ"
        );
    }
    // Nothing extra after the 100th response; a final request closes cleanly.
    let r = c.roundtrip(&request("GET", "/size/10", &[("Connection", "close")], b""));
    assert_eq!(r.body, pattern(10));
    c.expect_closed(Duration::from_secs(3))
        .expect("close after Connection: close");

    let per: Vec<usize> = os.iter().map(|o| o.requests_to("/size/")).collect();
    assert_eq!(per.iter().sum::<usize>(), 101, "per origin {per:?}");
    assert!(
        per.iter().all(|&n| n >= 25),
        "rr should spread pipelined requests over all three backends, got {per:?}"
    );
}

#[test]
fn a_slow_first_request_does_not_let_later_responses_overtake_it() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let mut c = k.client();
    let mut all = request("GET", "/slow/400", &[("X-Req-Id", "0")], b"");
    for i in 1..20 {
        all.extend(request(
            "GET",
            &format!("/size/{}", size_of(i)),
            &[("X-Req-Id", &i.to_string())],
            b"",
        ));
    }
    c.send(&all);
    let r = c.read_response().expect("slow response");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "slow 400\n"),
        "{r:?}"
    );
    assert_eq!(r.header("x-req-id"), Some("0"));
    for i in 1..20 {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(r.header("x-req-id"), Some(i.to_string().as_str()), "{r:?}");
        assert_eq!(r.body, pattern(size_of(i)), "response {i}");
    }
}

#[test]
fn pipelined_mix_of_methods_bodies_and_bodiless_responses_stays_in_sync() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let mut c = k.client();
    let post = pattern(3001);
    let chunk_body = pattern(4321);
    let mut all = Vec::new();
    all.extend(request("GET", "/size/1000", &[("X-Req-Id", "0")], b""));
    all.extend(request("HEAD", "/size/2000", &[("X-Req-Id", "1")], b""));
    all.extend(request("POST", "/echo", &[("X-Req-Id", "2")], &post));
    all.extend(request("GET", "/status/204", &[("X-Req-Id", "3")], b""));
    all.extend(request("GET", "/chunked/9000", &[("X-Req-Id", "4")], b""));
    all.extend(request(
        "POST",
        "/echo",
        &[("X-Req-Id", "5"), ("Transfer-Encoding", "chunked")],
        &chunked(&chunk_body, 1000),
    ));
    all.extend(request("GET", "/status/304", &[("X-Req-Id", "6")], b""));
    all.extend(request("GET", "/size/77", &[("X-Req-Id", "7")], b""));
    c.send(&all);

    let methods = ["GET", "HEAD", "POST", "GET", "GET", "POST", "GET", "GET"];
    let mut rs = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let r = c
            .read_response_to(m)
            .unwrap_or_else(|e| panic!("response {i} ({m}): {e}"));
        assert_eq!(r.header("x-req-id"), Some(i.to_string().as_str()), "{r:?}");
        rs.push(r);
    }
    assert_eq!(rs[0].body, pattern(1000));
    assert_eq!((rs[1].status, rs[1].body.len()), (200, 0));
    assert_eq!(rs[1].header("content-length"), Some("2000"));
    assert_eq!(rs[2].body, post);
    assert_eq!((rs[3].status, rs[3].body.len()), (204, 0));
    assert_eq!(rs[4].body, pattern(9000));
    assert_eq!(rs[5].body, chunk_body);
    assert_eq!((rs[6].status, rs[6].body.len()), (304, 0));
    assert_eq!(rs[7].body, pattern(77));
    assert!(
        c.stays_open_silent(Duration::from_millis(200)),
        "stray bytes after the last response"
    );
}

#[test]
fn pipelined_requests_arriving_in_tiny_pieces_are_parsed_correctly() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let mut c = k.client();
    let mut all = Vec::new();
    for i in 0..20 {
        all.extend(request(
            "GET",
            &format!("/size/{}", size_of(i)),
            &[("X-Req-Id", &i.to_string()), ("User-Agent", "e2e-split")],
            b"",
        ));
    }
    for (n, piece) in all.chunks(13).enumerate() {
        c.send(piece);
        if n % 16 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for i in 0..20 {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(r.header("x-req-id"), Some(i.to_string().as_str()), "{r:?}");
        assert_eq!(r.body, pattern(size_of(i)), "response {i}");
    }
}
