//! The configured timeouts: client header, client idle, backend pool idle,
//! backend response.

use std::time::{Duration, Instant};
use tests::*;

#[test]
fn idle_client_connection_is_closed_after_client_idle_timeout() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.client_idle_timeout_ms = 500;
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    let r = c.roundtrip(&get("/size/10"));
    assert_eq!(r.status, 200, "{r:?}");
    let t = Instant::now();
    assert!(
        c.stays_open_silent(Duration::from_millis(150)),
        "closed well before the idle timeout"
    );
    c.expect_closed(Duration::from_secs(3))
        .expect("closed after the idle timeout");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed after {:?}",
        t.elapsed()
    );
}

/// The header timeout bounds the whole head, not each read: a client
/// trickling one byte every 100 ms (slowloris) is answered 408 while it is
/// still sending its head (500 ms after the first byte; the head takes
/// 5.7 s), not kept as long as it keeps trickling.
#[test]
fn a_trickled_head_is_cut_off_after_client_header_timeout_in_all() {
    use std::io::{Read, Write};
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.client_header_timeout_ms = 500;
    let k = Ktcpvs::start(&cfg);
    let mut c = std::net::TcpStream::connect(k.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let head = b"GET /trickle HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaa\r\n\r\n";
    let mut got = Vec::new();
    let mut sent = 0;
    for b in head {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        // Doubles as the 100 ms pause between bytes.
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(n) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "no 408 while the head was trickling ({sent} of {} bytes sent): {:?}",
        head.len(),
        String::from_utf8_lossy(&got)
    );
    assert!(sent < head.len(), "the whole head went out first");
    assert_eq!(o.requests(), 0);
}

#[test]
fn slow_request_head_is_cut_off_after_client_header_timeout() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.client_header_timeout_ms = 500;
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    c.send(b"GET /size/10 HTTP/1.1\r\nHost: a\r\n");
    let t = Instant::now();
    let (bytes, closed) = c.read_until_close(Duration::from_secs(3));
    assert!(
        closed,
        "an incomplete head was kept open for {:?}",
        t.elapsed()
    );
    assert!(
        bytes.is_empty()
            || bytes.starts_with(b"HTTP/1.1 408")
            || bytes.starts_with(b"HTTP/1.0 408"),
        "unexpected reply to a timed-out head: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "cut off after only {:?}",
        t.elapsed()
    );
    assert_eq!(o.requests(), 0);
}

#[test]
fn idle_backend_connections_are_closed_after_pool_idle_timeout() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.svc().idle_timeout_ms = 300;
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    let r = c.roundtrip(&get("/size/10"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        o.open_connections() >= 1,
        "no pooled backend connection kept open"
    );
    assert!(
        wait_until(Duration::from_secs(3), || o.open_connections() == 0),
        "{} backend connections still open 3 s after a 300 ms pool idle timeout",
        o.open_connections()
    );
    // And the pool reconnects on demand.
    let r = c.roundtrip(&get("/size/11"));
    assert_eq!(r.body, pattern(11));
}

#[test]
fn backend_response_timeout_answers_with_an_error_or_closes() {
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.svc().response_timeout_ms = 500;
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    c.set_timeout(Duration::from_secs(4));
    c.send(&get("/slow/5000"));
    let t = Instant::now();
    match c.read_response() {
        Ok(r) => assert!((502..=504).contains(&r.status), "{r:?}"),
        Err(e) => assert!(e.is_closed(), "neither an error response nor a close: {e}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a 500 ms response timeout took {:?}",
        t.elapsed()
    );
}
