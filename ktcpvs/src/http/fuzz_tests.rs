//! Deterministic fuzzing of the parsers that read network input: request
//! heads, response heads and the chunked coding, fed mutations of valid
//! messages (bytes flipped, inserted, deleted, lines repeated, cut short).
//! Beyond "never panics", each checks what the proxy relies on:
//! - an accepted request head is re-parsed from the head the switch
//!   forwards with the same framing (the server sees the body the switch
//!   delimits: no smuggling through the rewrite), and never carries both
//!   Content-Length and Transfer-Encoding;
//! - a response head is relayed so that the client frames the body as the
//!   switch relays it, and parses;
//! - every range handed out lies inside the buffer;
//! - the chunked scanner gives the same answer however its input is split.

use super::chunked::ChunkedScanner;
use super::request::{self, tests::ctx};
use super::response::{self, ClientView};
use super::Body;

/// Iterations per test: `KTCPVS_FUZZ_ITERS` (default `default`), and
/// `KTCPVS_FUZZ_SEED` varies the inputs, for longer runs by hand.
fn iters(default: usize) -> usize {
    std::env::var("KTCPVS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeded(base: u64) -> Rng {
    let s: u64 = std::env::var("KTCPVS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Rng(base ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to HTTP framing, more likely than others.
const SPECIAL: &[u8] = b"\r\n :;,\t\0\x7f\xff0123456789abcdefABCDEF-";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(m.len() + 1);
        match rng.below(7) {
            0 if at < m.len() => m[at] = SPECIAL[rng.below(SPECIAL.len())],
            1 if at < m.len() => m[at] = rng.next() as u8,
            2 => m.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
            3 if at < m.len() => {
                m.remove(at);
            }
            4 => {
                // Repeat one line (a duplicated header).
                let lines: Vec<usize> = m
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| w == b"\r\n")
                    .map(|(i, _)| i + 2)
                    .collect();
                if lines.len() >= 2 {
                    let k = rng.below(lines.len() - 1);
                    let line = m[lines[k]..lines[k + 1]].to_vec();
                    let to = lines[rng.below(lines.len())];
                    m.splice(to..to, line);
                }
            }
            5 => m.truncate(at),
            _ => {
                // Change letter case (header names, tokens).
                if at < m.len() && m[at].is_ascii_alphabetic() {
                    m[at] ^= 0x20;
                }
            }
        }
    }
    m
}

/// Header names present in a head (lower-case), by a plain line scan.
fn has_field(head: &[u8], name: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|l| {
        l.iter()
            .position(|&b| b == b':')
            .is_some_and(|c| l[..c].eq_ignore_ascii_case(name))
    })
}

const REQUESTS: &[&[u8]] = &[
    b"GET /a/b.html?x=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET http://example.com:81/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade, X-A\r\nUpgrade: websocket\r\nX-A: 1\r\nX-Forwarded-For: 1.1.1.1\r\nVia: 1.1 a\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTE: trailers\r\nKeep-Alive: 5\r\n\r\n",
];

#[test]
fn request_heads_survive_mutation_and_keep_their_framing_when_forwarded() {
    let mut rng = seeded(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    let mut out = Vec::new();
    let mut out2 = Vec::new();
    let n = iters(60_000);
    for i in 0..n {
        let seed = REQUESTS[i % REQUESTS.len()];
        let m = mutate(&mut rng, seed);
        let h = match request::parse(&m, 100, &ctx(), &mut out) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                assert!([400, 417, 431, 501].contains(&e.status()), "{e:?}");
                refused += 1;
                continue;
            }
        };
        accepted += 1;
        let show = || String::from_utf8_lossy(&m).into_owned();
        assert!(h.head_len <= m.len(), "{}", show());
        for (a, b) in [h.target, h.host, h.method_name] {
            assert!(a <= b && b <= h.head_len, "range {a}..{b}: {}", show());
        }
        let head = &m[..h.head_len];
        assert!(
            !(has_field(head, b"content-length") && has_field(head, b"transfer-encoding")),
            "CL and TE accepted: {}",
            show()
        );
        assert!(out.ends_with(b"\r\n\r\n"), "{}", show());
        // What the server receives parses to the same framing.
        let again = request::parse(&out, 128, &ctx(), &mut out2);
        let h2 = match again {
            Ok(Some(h2)) => h2,
            other => panic!(
                "forwarded head not accepted ({other:?}):\n{}\nfrom:\n{}",
                String::from_utf8_lossy(&out),
                show()
            ),
        };
        assert_eq!(h2.head_len, out.len());
        assert_eq!(h2.body, h.body, "framing changed: {}", show());
        assert_eq!(h2.upgrade, h.upgrade, "{}", show());
        assert_eq!(h2.method, h.method);
    }
    // The mutations must exercise both outcomes, or this tests little.
    assert!(
        accepted > n / 12 && refused > n / 12,
        "{accepted} / {refused}"
    );
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-B\r\nX-B: 1\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"e\"\r\n\r\n",
];

#[test]
fn response_heads_survive_mutation_and_forward_a_valid_head() {
    let mut rng = seeded(0x0123_4567_89ab_cdef);
    let views = [
        ClientView {
            http10: false,
            keep_alive: true,
            head_request: false,
            via: true,
            upgrade: true,
        },
        ClientView {
            http10: true,
            keep_alive: true,
            head_request: false,
            via: false,
            upgrade: false,
        },
        ClientView {
            http10: false,
            keep_alive: false,
            head_request: true,
            via: true,
            upgrade: false,
        },
    ];
    let mut out = Vec::new();
    let mut accepted = 0;
    let n = iters(60_000);
    for i in 0..n {
        let m = mutate(&mut rng, RESPONSES[i % RESPONSES.len()]);
        let view = views[rng.below(views.len())];
        let Ok(Some(h)) = response::parse(&m, view, &mut out) else {
            continue;
        };
        accepted += 1;
        let show = || String::from_utf8_lossy(&m).into_owned();
        assert!(h.head_len <= m.len(), "{}", show());
        assert!(!h.upgrade || view.upgrade, "{}", show());
        if h.upgrade || h.interim || view.head_request {
            assert_eq!(h.body, Body::None, "{}", show());
        }
        let mut hs = [httparse::EMPTY_HEADER; 160];
        let mut r = httparse::Response::new(&mut hs);
        assert!(
            matches!(r.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()),
            "the client would get a broken head:\n{}\nfrom:\n{}",
            String::from_utf8_lossy(&out),
            show()
        );
        // The client reads the body the way the switch relays it.
        let mut out2 = Vec::new();
        let seen = response::parse(&out, view, &mut out2);
        let want = if h.dechunk { Body::Close } else { h.body };
        assert!(
            matches!(seen, Ok(Some(h2)) if h2.body == want && h2.upgrade == h.upgrade),
            "the client would frame {seen:?}, the switch relays {want:?}:\n{}\nfrom:\n{}",
            String::from_utf8_lossy(&out),
            show()
        );
    }
    assert!(accepted > n / 12, "{accepted}");
}

/// Whole result of scanning `data` fed in the given pieces: bytes of the
/// message, payload, or the error.
fn scan(data: &[u8], cuts: &[usize]) -> Result<(usize, Vec<u8>, bool), ()> {
    let mut sc = ChunkedScanner::new();
    let mut payload = Vec::new();
    let mut at = 0;
    let mut used = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        if end < at {
            continue;
        }
        let piece = &data[at..end];
        let n = sc
            .feed(piece, |r| payload.extend_from_slice(&piece[r]))
            .map_err(|_| ())?;
        assert!(n <= piece.len());
        used += n;
        if sc.is_done() {
            return Ok((used, payload, true));
        }
        at = end;
    }
    Ok((used, payload, false))
}

#[test]
fn the_chunked_scanner_does_not_depend_on_how_input_is_split() {
    let mut rng = seeded(0xdead_beef_cafe_f00d);
    let seeds: &[&[u8]] = &[
        b"5\r\nhello\r\n0\r\n\r\nNEXT",
        b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n",
        b"0\r\n\r\n",
        b"A \r\n0123456789\r\n0\r\n\r\n",
    ];
    for i in 0..iters(40_000) {
        let seed = seeds[i % seeds.len()];
        let m = if i < seeds.len() {
            seed.to_vec()
        } else {
            mutate(&mut rng, seed)
        };
        let whole = scan(&m, &[]);
        let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(m.len() + 1)).collect();
        cuts.sort_unstable();
        let split = scan(&m, &cuts);
        // A split may only see an error later than the whole (or not at
        // all when the input ends first), never a different message.
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{:?} cut at {cuts:?}", String::from_utf8_lossy(&m)),
            (Err(()), Err(())) => {}
            _ => panic!(
                "whole {whole:?} vs split {split:?}: {:?} cut at {cuts:?}",
                String::from_utf8_lossy(&m)
            ),
        }
        if i < seeds.len() {
            let (used, _, done) = whole.expect("valid seed");
            assert!(done, "seed {i}");
            assert_eq!(&m[used..], if i == 0 { &b"NEXT"[..] } else { b"" });
        }
    }
}
