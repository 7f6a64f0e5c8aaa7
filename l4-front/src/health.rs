//! Health checks: a control-plane thread connects to every real server of
//! the services that ask for it (`health_check = "tcp"`), takes a server
//! out after `fall` consecutive failures and puts it back after `rise`
//! successes. Down servers get no new connections (their effective weight
//! is 0); the scheduler tables are rebuilt on every change.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::HealthCheck;
use crate::service::Shared;

/// One probe.
pub fn probe_tcp(addr: u32, port: u16, timeout: Duration) -> bool {
    let sa = SocketAddr::from((Ipv4Addr::from(addr), port));
    TcpStream::connect_timeout(&sa, timeout).is_ok()
}

/// One HTTP probe: `GET path HTTP/1.0`, success on a 2xx or 3xx status.
pub fn probe_http(addr: u32, port: u16, path: &str, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let sa = SocketAddr::from((Ipv4Addr::from(addr), port));
    let Ok(mut s) = TcpStream::connect_timeout(&sa, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: l4-front-health\r\n\r\n",
        Ipv4Addr::from(addr)
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    status_ok(&buf[..n])
}

/// Is this the start of an HTTP/1.x 2xx or 3xx status line?
fn status_ok(b: &[u8]) -> bool {
    b.len() >= 12 && b.starts_with(b"HTTP/1.") && b[8] == b' ' && matches!(b[9], b'2' | b'3')
}

/// Runs until `stop`; probes each service at its own interval.
pub fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    // Per service, per server: consecutive successes (>0) or failures (<0).
    let mut streak: Vec<Vec<i64>> = shared
        .services
        .iter()
        .map(|s| vec![0; s.servers.len()])
        .collect();
    let mut next: Vec<Instant> = shared.services.iter().map(|_| Instant::now()).collect();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (i, svc) in shared.services.iter().enumerate() {
            let h = &svc.cfg.health;
            if h.kind == HealthCheck::None || now < next[i] {
                continue;
            }
            next[i] = now + Duration::from_millis(h.interval_ms);
            let mut changed = false;
            for (j, rs) in svc.servers.iter().enumerate() {
                let timeout = Duration::from_millis(h.timeout_ms);
                let ok = match h.kind {
                    HealthCheck::Http => probe_http(rs.addr, rs.port, &h.path, timeout),
                    _ => probe_tcp(rs.addr, rs.port, timeout),
                };
                let s = &mut streak[i][j];
                *s = match (ok, *s > 0) {
                    (true, true) => *s + 1,
                    (true, false) => 1,
                    (false, true) => -1,
                    (false, false) => *s - 1,
                };
                let up = rs.is_up();
                if up && *s <= -(h.fall as i64) {
                    rs.set_up(false);
                    changed = true;
                    tracing::warn!(service = %svc.label(), real_server = %Ipv4Addr::from(rs.addr), "real server down");
                } else if !up && *s >= h.rise as i64 {
                    rs.set_up(true);
                    changed = true;
                    tracing::info!(service = %svc.label(), real_server = %Ipv4Addr::from(rs.addr), "real server up");
                }
            }
            if changed {
                svc.rebuild();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert!(status_ok(b"HTTP/1.1 200 OK"));
        assert!(status_ok(b"HTTP/1.0 302 Found"));
        assert!(!status_ok(b"HTTP/1.1 503 Service Unavailable"));
        assert!(!status_ok(b"SSH-2.0-Open"));
        assert!(!status_ok(b"HTTP/1.1 2"));
    }

    #[test]
    fn http_probe_against_a_local_server() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for code in ["200 OK", "500 Oops"] {
                let (mut s, _) = l.accept().unwrap();
                let mut b = [0u8; 256];
                let _ = s.read(&mut b);
                let _ = s.write_all(format!("HTTP/1.0 {code}\r\n\r\n").as_bytes());
            }
        });
        let lo = u32::from(Ipv4Addr::LOCALHOST);
        assert!(probe_http(lo, port, "/", Duration::from_secs(2)));
        assert!(!probe_http(lo, port, "/", Duration::from_secs(2)));
        t.join().unwrap();
    }
}
