//! `ktcpvs quickstart --listen ADDR`: the switch on ADDR in front of three
//! built-in origins on the next three ports.

use std::collections::HashSet;
use std::net::SocketAddr;
use tests::*;

#[test]
fn quickstart_answers_from_its_three_builtin_origins() {
    let k = Ktcpvs::quickstart();
    let listen = k.addr();
    let mut c = k.client();
    for i in 0..9 {
        let r = c.roundtrip(&get("/"));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let name = r.origin().to_string();
        assert!(
            ["origin-1", "origin-2", "origin-3"].contains(&name.as_str()),
            "request {i}: X-Origin {name:?}: {r:?}"
        );
        assert_eq!(r.body_str(), format!("hello from {name}\n"), "request {i}");
    }

    // The origins themselves listen on the next three ports.
    let mut direct = HashSet::new();
    for k in 1..=3u16 {
        let a = SocketAddr::from(([127, 0, 0, 1], listen.port() + k));
        let r = fetch(a, &get("/")).unwrap_or_else(|e| panic!("origin on {a}: {e}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body_str(), format!("hello from {}\n", r.origin()));
        direct.insert(r.origin().to_string());
    }
    assert_eq!(direct.len(), 3, "{direct:?}");

    // Uploads, one connection: the origins read (and count) request
    // bodies, so keep-alive uploads through the quickstart all succeed.
    let body = vec![b'b'; 200_000];
    for i in 0..6 {
        let r = c.roundtrip(&request("POST", "/up", &[], &body));
        assert_eq!(r.status, 200, "upload {i}: {r:?}");
        assert_eq!(
            r.body_str(),
            format!("hello from {} (received 200000 bytes)\n", r.origin()),
            "upload {i}"
        );
    }
}
