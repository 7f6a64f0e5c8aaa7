//! Many clients at once, each verifying every byte it gets.

use tests::*;

/// A small deterministic generator per client.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn sixteen_clients_with_mixed_requests_get_correct_responses() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("wlc", &addrs(&os)));
    let addr = k.addr();
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut seed = t + 1;
                let mut c = RawClient::connect(addr);
                for i in 0..30 {
                    let n = (lcg(&mut seed) % 20_000) as usize;
                    match lcg(&mut seed) % 3 {
                        0 => {
                            let r = c.roundtrip(&get(&format!("/size/{n}")));
                            assert_eq!(r.status, 200, "client {t} req {i}: {r:?}");
                            assert!(
                                r.body == pattern(n),
                                "client {t} req {i}: /size/{n} body differs"
                            );
                        }
                        1 => {
                            let r = c.roundtrip(&get(&format!("/chunked/{n}")));
                            assert_eq!(r.status, 200, "client {t} req {i}: {r:?}");
                            assert!(
                                r.body == pattern(n),
                                "client {t} req {i}: /chunked/{n} body differs"
                            );
                        }
                        _ => {
                            let mut body = pattern(n + 7);
                            body.rotate_left((t as usize) % (n + 7));
                            let r = c.roundtrip(&request("POST", "/echo", &[], &body));
                            assert_eq!(r.status, 200, "client {t} req {i}: {r:?}");
                            assert!(
                                r.body == body,
                                "client {t} req {i}: echo of {} bytes differs",
                                n + 7
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let total: usize = os.iter().map(|o| o.requests()).sum();
    assert!(total >= 480, "origins saw {total} requests for 480 sent");
}

#[test]
fn eight_clients_pipelining_at_once_get_their_own_responses_in_order() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let addr = k.addr();
    let threads: Vec<_> = (0..8usize)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr);
                let mut all = Vec::new();
                for i in 0..25 {
                    let n = 100 + t * 1000 + i * 13;
                    let id = format!("{t}-{i}");
                    all.extend(request(
                        "GET",
                        &format!("/size/{n}"),
                        &[("X-Req-Id", &id)],
                        b"",
                    ));
                }
                c.send(&all);
                for i in 0..25 {
                    let n = 100 + t * 1000 + i * 13;
                    let r = c
                        .read_response()
                        .unwrap_or_else(|e| panic!("client {t} response {i}: {e}"));
                    assert_eq!(
                        r.header("x-req-id"),
                        Some(format!("{t}-{i}").as_str()),
                        "{r:?}"
                    );
                    assert!(
                        r.body == pattern(n),
                        "client {t} response {i}: body differs"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}
