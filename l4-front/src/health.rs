//! Health checks: a control-plane thread connects to every real server of
//! the services that ask for it (`health_check = "tcp"`), takes a server
//! out after `fall` consecutive failures and puts it back after `rise`
//! successes. Down servers get no new connections (their effective weight
//! is 0); the scheduler tables are rebuilt on every change. With
//! `feedback = true` the probes' response times also drive the servers'
//! dynamic-feedback weights (§4.2, `sched::feedback`).

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

/// Per-service state of the prober, by real-server slot.
#[derive(Default)]
struct Track {
    /// Consecutive successes (>0) or failures (<0).
    streak: Vec<i64>,
    /// Dynamic-feedback weight (real-valued between rounds).
    dyn_weight: Vec<f64>,
    /// `RealServer::created` at the previous round.
    created: Vec<u64>,
    next: Option<Instant>,
}

/// Runs until `stop`; probes each service at its own interval. Services
/// and real servers added at run time are picked up from the current
/// snapshot each round.
pub fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut track: Vec<Track> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let view = shared.services();
        if track.len() < view.list.len() {
            track.resize_with(view.list.len(), Track::default);
        }
        for (i, svc) in view.list.iter().enumerate() {
            let h = &svc.cfg.health;
            let t = &mut track[i];
            if h.kind == HealthCheck::None || svc.deleted || matches!(t.next, Some(n) if now < n) {
                continue;
            }
            t.next = Some(now + Duration::from_millis(h.interval_ms));
            let n = svc.servers.len();
            t.streak.resize(n, 0);
            t.created.resize(n, 0);
            t.dyn_weight.resize(n, f64::NAN);
            let mut changed = false;
            let mut rts = vec![None; n];
            for (j, rs) in svc.servers.iter().enumerate() {
                if rs.is_removed() {
                    continue;
                }
                let timeout = Duration::from_millis(h.timeout_ms);
                let start = Instant::now();
                let port = h.port.unwrap_or(rs.port);
                let ok = match h.kind {
                    HealthCheck::Http => probe_http(rs.addr, port, &h.path, timeout),
                    _ => probe_tcp(rs.addr, port, timeout),
                };
                if ok {
                    rts[j] = Some(start.elapsed().as_secs_f64() * 1000.0);
                }
                let s = &mut t.streak[j];
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
            if let Some(fb) = svc.cfg.feedback {
                changed |= feedback_round(svc, t, &rts, fb);
            }
            if changed {
                svc.rebuild();
            }
        }
        drop(view);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One dynamic-feedback round (§4.2) over the servers that answered;
/// returns whether an integer weight changed.
fn feedback_round(
    svc: &crate::service::Service,
    t: &mut Track,
    rts: &[Option<f64>],
    fb: crate::config::FeedbackConfig,
) -> bool {
    use crate::sched::feedback;
    // Input index over the live, answering servers.
    let live: Vec<usize> = (0..svc.servers.len())
        .filter(|&j| rts[j].is_some() && svc.servers[j].weight() > 0)
        .collect();
    let news: Vec<u64> = live
        .iter()
        .map(|&j| {
            let c = svc.servers[j].created.load(Ordering::Relaxed);
            c.saturating_sub(t.created[j])
        })
        .collect();
    for (j, rs) in svc.servers.iter().enumerate() {
        t.created[j] = rs.created.load(Ordering::Relaxed);
    }
    let inputs = feedback::input_indices(&news);
    let mut changed = false;
    for (k, &j) in live.iter().enumerate() {
        let rs = &svc.servers[j];
        let default = rs.weight();
        let cur = match t.dyn_weight[j] {
            w if w.is_finite() => w,
            _ => rs.dynamic_weight().unwrap_or(default) as f64,
        };
        let load = feedback::aggregate(
            inputs[k],
            feedback::response_index(rts[j].unwrap_or(0.0), fb.response_ms),
            fb.input_percent,
        );
        let Some(w) = feedback::next_weight(cur, load, fb.gain as f64, default, fb.scale) else {
            continue;
        };
        t.dyn_weight[j] = w;
        let wi = w.round().max(1.0) as u32;
        if rs.dynamic_weight() != Some(wi) {
            tracing::debug!(service = %svc.label(), real_server = %Ipv4Addr::from(rs.addr), load, weight = wi, "dynamic feedback");
            rs.set_dynamic_weight(Some(wi));
            changed = true;
        }
    }
    changed
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

    #[test]
    fn feedback_rounds_move_weights_by_response_time() {
        let cfg = crate::config::Config::parse(
            r#"
            [director]
            interface = "d0"
            [[service]]
            vip = "10.201.2.100"
            port = 80
            scheduler = "wrr"
            health_check = "tcp"
            feedback = true
            feedback_response_ms = 100
            [[service.real_server]]
            address = "10.201.2.11"
            weight = 5
            [[service.real_server]]
            address = "10.201.2.12"
            weight = 5
            [[service.real_server]]
            address = "10.201.2.13"
            weight = 0
            "#,
        )
        .unwrap();
        let sh = Shared::new(&cfg, [2, 0, 0, 0, 0, 2], 1, 1);
        let view = sh.services();
        let svc = &view.list[0];
        let fb = svc.cfg.feedback.unwrap();
        let mut t = Track::default();
        t.streak.resize(3, 0);
        t.created.resize(3, 0);
        t.dyn_weight.resize(3, f64::NAN);
        // .11 answers in 20 ms, .12 in 400 ms, .13 (draining) in 1 ms.
        let rts = [Some(20.0), Some(400.0), Some(1.0)];
        for _ in 0..4 {
            for rs in &svc.servers {
                rs.created.fetch_add(10, Ordering::Relaxed);
            }
            feedback_round(svc, &mut t, &rts, fb);
        }
        let (fast, slow) = (
            svc.servers[0].dynamic_weight().unwrap(),
            svc.servers[1].dynamic_weight().unwrap(),
        );
        assert!(fast > 5 && slow < 5, "fast {fast} slow {slow}");
        assert_eq!(svc.servers[2].dynamic_weight(), None, "weight 0 untouched");
        assert_eq!(svc.servers[2].effective_weight(), 0);
        // The scheduler follows the dynamic weights.
        svc.rebuild();
        let mut n = [0usize; 3];
        for i in 0..1000u32 {
            if let Some(k) = svc.pick(i, 1000) {
                n[k] += 1;
            }
        }
        assert!(n[0] > 2 * n[1] && n[2] == 0, "{n:?}");
    }
}
