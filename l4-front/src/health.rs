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
            let h = svc.cfg.health;
            if h.kind == HealthCheck::None || now < next[i] {
                continue;
            }
            next[i] = now + Duration::from_millis(h.interval_ms);
            let mut changed = false;
            for (j, rs) in svc.servers.iter().enumerate() {
                let ok = probe_tcp(rs.addr, rs.port, Duration::from_millis(h.timeout_ms));
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
