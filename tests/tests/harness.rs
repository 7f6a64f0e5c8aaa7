//! Checks of the harness itself, without ktcpvs: the raw client against the
//! origins directly. If these fail, the other failures are not the switch's.

use std::time::Duration;
use tests::*;

#[test]
fn origin_serves_every_route_to_the_raw_client() {
    let o = Origin::start("h");
    let mut c = RawClient::connect(o.addr());

    let r = c.roundtrip(&request("GET", "/size/70000", &[("X-Req-Id", "7")], b""));
    assert_eq!((r.status, r.framing), (200, Framing::Length(70000)));
    assert_eq!(r.body, pattern(70000));
    assert_eq!(r.origin(), "h");
    assert_eq!(r.header("x-req-id"), Some("7"));

    let r = c.roundtrip(&get("/chunked/10000"));
    assert_eq!((r.status, r.framing), (200, Framing::Chunked));
    assert_eq!(r.body, pattern(10000));

    c.send(&request("HEAD", "/size/1234", &[], b""));
    let r = c.read_response_to("HEAD").unwrap();
    assert_eq!((r.status, r.framing), (200, Framing::None));
    assert_eq!(r.header("content-length"), Some("1234"));

    let body = pattern(5000);
    let r = c.roundtrip(&request("POST", "/echo", &[], &body));
    assert_eq!(r.body, body);
    assert_eq!(r.header("x-body-md5"), Some(md5_hex(&body).as_str()));

    let r = c.roundtrip(&request(
        "POST",
        "/sink",
        &[("Transfer-Encoding", "chunked")],
        &chunked(&body, 777),
    ));
    assert_eq!(r.header("x-body-md5"), Some(md5_hex(&body).as_str()));
    assert_eq!(r.header("x-body-len"), Some("5000"));

    for code in [204u16, 304] {
        let r = c.roundtrip(&get(&format!("/status/{code}")));
        assert_eq!((r.status, r.framing), (code, Framing::None));
    }
    let r = c.roundtrip(&get("/slow/50"));
    assert_eq!(r.body_str(), "slow 50\n");

    assert_eq!(o.connections(), 1);
    assert_eq!(o.connections_used(), 1);
    assert_eq!(o.requests(), 8);
    assert_eq!(o.seen()[0].header("x-req-id"), Some("7"));
}

#[test]
fn raw_client_reads_pipelined_responses_in_order() {
    let o = Origin::start("h");
    let mut c = RawClient::connect(o.addr());
    let mut all = Vec::new();
    for i in 0..50 {
        all.extend(request(
            "GET",
            &format!("/size/{}", 100 + i),
            &[("X-Req-Id", &i.to_string())],
            b"",
        ));
    }
    c.send(&all);
    for i in 0..50 {
        let r = c.read_response().unwrap();
        assert_eq!(r.header("x-req-id"), Some(i.to_string().as_str()));
        assert_eq!(r.body, pattern(100 + i));
    }
}

#[test]
fn raw_client_sees_truncation_and_close_delimited_bodies() {
    let t = RawOrigin::start(RawBehaviour::Truncate {
        declared: 100_000,
        sent: 1000,
    });
    let mut c = RawClient::connect(t.addr());
    c.send(&get("/x"));
    let e = c.read_response().unwrap_err();
    assert!(e.is_closed(), "{e:?}");
    assert!(e.partial().len() < 2000);

    let d = RawOrigin::start(RawBehaviour::CloseDelimited {
        body: pattern(3000),
    });
    let mut c = RawClient::connect(d.addr());
    let r = c.roundtrip(&get("/x"));
    assert_eq!((r.framing, r.body.len()), (Framing::Close, 3000));
    assert_eq!(r.body, pattern(3000));
    assert!(c.expect_closed(Duration::from_secs(1)).is_ok());

    let a = RawOrigin::start(RawBehaviour::AcceptAndClose);
    let mut c = RawClient::connect(a.addr());
    let _ = c.try_send(&get("/x"));
    assert!(c.read_response().unwrap_err().is_closed());
}

#[test]
fn pattern_digest_matches_generated_bytes() {
    assert_eq!(pattern_md5(200_000), md5_hex(&pattern(200_000)));
    assert_ne!(pattern(100)[1..], pattern(101)[..99]);
}
