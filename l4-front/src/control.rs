//! The control socket `l4adm` talks to: a Unix stream socket, one request
//! line per connection, a text answer. Requests:
//!
//! - `list` — services and real servers with method, weight, state and the
//!   live active/inactive connection counts (ipvsadm `-L -n`);
//! - `stats` — the statistics snapshot (`name value` lines);
//! - `weight <vip:port> <rip:port> <w>` — set a real server's weight (0
//!   drains it) and rebuild the scheduler (ipvsadm `-e -w`).
//!
//! Answers start with `ok` or `error: …`. The data path never sees this:
//! the control thread only writes atomics and rebuilds scheduler tables.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::packet::parse::PROTO_UDP;
use crate::service::Shared;

/// Renders the ipvsadm-style listing.
pub fn list(shared: &Shared) -> String {
    let mut o = String::from("ok\n");
    let _ = writeln!(
        o,
        "IP Virtual Server (l4-front) connections={}",
        shared.table.len()
    );
    let _ = writeln!(o, "Prot LocalAddress:Port Scheduler Flags");
    let _ = writeln!(
        o,
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State"
    );
    for s in &shared.services {
        let proto = if s.cfg.proto == PROTO_UDP {
            "UDP"
        } else {
            "TCP"
        };
        let mut flags = String::new();
        if s.cfg.persistence > 0 {
            let _ = write!(
                flags,
                "persistent {} mask /{}",
                s.cfg.persistence, s.cfg.persistence_netmask
            );
        }
        let _ = writeln!(
            o,
            "{proto}  {}:{} {} {flags}",
            s.cfg.vip, s.cfg.port, s.cfg.scheduler
        );
        for (j, rs) in s.servers.iter().enumerate() {
            let fwd = match s.methods[j] {
                crate::config::Method::Dr => "Route",
                crate::config::Method::Tun => "Tunnel",
                crate::config::Method::Nat => "Masq",
            };
            let addr = format!("{}:{}", Ipv4Addr::from(rs.addr), rs.port);
            let _ = writeln!(
                o,
                "  -> {addr:<28}{fwd:<8}{:<7}{:<11}{:<10}{}",
                rs.weight(),
                rs.active.load(Ordering::Relaxed),
                rs.inactive.load(Ordering::Relaxed),
                if rs.is_up() { "up" } else { "down" }
            );
        }
    }
    o
}

/// Handles one request line.
pub fn handle(shared: &Shared, stats: &dyn Fn() -> String, line: &str) -> String {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["list"] => list(shared),
        ["stats"] => format!("ok\n{}", stats()),
        ["weight", vs, rs, weight] => {
            let (Ok(vs), Ok(rs), Ok(weight)) = (
                vs.parse::<SocketAddrV4>(),
                rs.parse::<SocketAddrV4>(),
                weight.parse::<u32>(),
            ) else {
                return "error: usage: weight VIP:PORT RIP:PORT WEIGHT\n".into();
            };
            if weight > 65535 {
                return "error: weight outside 0-65535\n".into();
            }
            for s in &shared.services {
                if s.cfg.vip != *vs.ip() || s.cfg.port != vs.port() {
                    continue;
                }
                for r in &s.servers {
                    if r.addr == u32::from(*rs.ip()) && r.port == rs.port() {
                        r.set_weight(weight);
                        s.rebuild();
                        tracing::info!(service = %s.label(), real_server = %rs, weight, "weight changed");
                        return "ok\n".into();
                    }
                }
                return format!("error: no real server {rs} in {vs}\n");
            }
            format!("error: no service {vs}\n")
        }
        _ => "error: unknown request (list, stats, weight)\n".into(),
    }
}

/// Serves `path` until `stop`.
pub fn serve(
    path: &Path,
    shared: Arc<Shared>,
    stats: Box<dyn Fn() -> String + Send>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                let _ = answer(s, &shared, &*stats);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

fn answer(s: UnixStream, shared: &Shared, stats: &dyn Fn() -> String) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s.try_clone()?, 4096)).read_line(&mut line)?;
    let mut s = s;
    s.write_all(handle(shared, stats, line.trim()).as_bytes())
}

/// Client side: sends one request and returns the answer.
pub fn request(path: &Path, req: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req.as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn list_and_weight() {
        let cfg = Config::parse(
            r#"
            [director]
            interface = "d0"
            [[service]]
            vip = "10.201.2.100"
            port = 80
            scheduler = "wrr"
            [[service.real_server]]
            address = "10.201.2.11"
            weight = 3
            "#,
        )
        .unwrap();
        let sh = Shared::new(&cfg, [2, 0, 0, 0, 0, 2], 1, 1);
        let l = handle(&sh, &|| String::new(), "list");
        assert!(l.contains("TCP  10.201.2.100:80 wrr"), "{l}");
        assert!(l.contains("10.201.2.11:80"), "{l}");
        assert!(l.contains("Route   3"), "{l}");
        let r = handle(
            &sh,
            &|| String::new(),
            "weight 10.201.2.100:80 10.201.2.11:80 0",
        );
        assert_eq!(r, "ok\n");
        assert_eq!(sh.services[0].servers[0].weight(), 0);
        assert!(
            handle(&sh, &|| String::new(), "weight 1.2.3.4:80 10.201.2.11:80 0")
                .starts_with("error")
        );
        assert!(handle(&sh, &|| String::new(), "bogus").starts_with("error"));
    }
}
