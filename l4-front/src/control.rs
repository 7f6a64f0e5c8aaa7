//! The control socket `l4adm` talks to: a Unix stream socket, one request
//! line per connection, a text answer. Requests:
//!
//! - `list` — services and real servers with method, weight, state and the
//!   live active/inactive connection counts (ipvsadm `-L -n`);
//! - `stats` — the statistics snapshot (`name value` lines);
//! - `timeout` — the TCP, TCP FIN and UDP timeouts;
//! - `ipvsadm ARGS…` — a change with ipvsadm's flags: `-A/-E/-D -t|-u
//!   VIP:PORT [-s SCHED] [-p [SECS]] [-M MASK]` for services, `-a/-e/-d -t|-u
//!   VIP:PORT -r RIP[:PORT] [-g|-i|-m] [-w W]` for real servers, `--set TCP
//!   TCPFIN UDP` for timeouts (see [`parse_command`]);
//! - `weight <vip:port> <rip:port> <w>` — the older form of `-e -w`.
//!
//! Answers start with `ok` or `error: …`. The data path never waits for
//! this: changes publish a new service snapshot ([`Shared::apply`]) that
//! the workers pick up by generation, and existing connections keep their
//! real server and forwarding method.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{HealthCheck, HealthConfig, Method, RealServerConfig, ServiceConfig};
use crate::packet::parse::{PROTO_TCP, PROTO_UDP};
use crate::service::{Change, ServiceKey, Shared};

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
    let view = shared.services();
    for s in view.list.iter().filter(|s| !s.deleted) {
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
            if rs.is_removed() {
                continue;
            }
            let fwd = match s.methods[j] {
                crate::config::Method::Dr => "Route",
                crate::config::Method::Tun => "Tunnel",
                crate::config::Method::Nat => "Masq",
            };
            let addr = format!("{}:{}", Ipv4Addr::from(rs.addr), rs.port);
            let _ = writeln!(
                o,
                "  -> {addr:<28}{fwd:<8}{:<7}{:<11}{:<10}{}{}",
                rs.weight(),
                rs.active.load(Ordering::Relaxed),
                rs.inactive.load(Ordering::Relaxed),
                if rs.is_up() { "up" } else { "down" },
                match rs.dynamic_weight() {
                    Some(d) => format!(" dynamic-weight {d}"),
                    None => String::new(),
                }
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
        ["timeout"] => {
            let t = shared.table.timeouts();
            format!(
                "ok\nTimeout (tcp tcpfin udp): {} {} {}\n",
                t.tcp_established, t.tcp_fin, t.udp
            )
        }
        ["weight", vs, rs, weight] => run(shared, &["-e", "-t", vs, "-r", rs, "-w", weight]),
        ["ipvsadm", args @ ..] => run(shared, args),
        _ => "error: unknown request (list, stats, timeout, ipvsadm ARGS)\n".into(),
    }
}

/// Runs one ipvsadm-style command (the arguments after `l4adm`'s socket
/// option): `-A/-E/-D` services, `-a/-e/-d` real servers, `--set`.
fn run(shared: &Shared, args: &[&str]) -> String {
    match parse_command(args).and_then(|c| match c {
        Command::Change(ch) => {
            let what = format!("{ch:?}");
            shared.apply(ch)?;
            tracing::info!(change = %what, "service table changed");
            Ok(())
        }
        Command::SetTimeouts { tcp, tcpfin, udp } => {
            let mut t = shared.table.timeouts();
            // ipvsadm: 0 leaves a value unchanged.
            if tcp > 0 {
                t.tcp_established = tcp;
            }
            if tcpfin > 0 {
                t.tcp_fin = tcpfin;
            }
            if udp > 0 {
                t.udp = udp;
            }
            shared.table.set_timeouts(t);
            tracing::info!(tcp, tcpfin, udp, "timeouts changed");
            Ok(())
        }
    }) {
        Ok(()) => "ok\n".into(),
        Err(e) => format!("error: {e}\n"),
    }
}

/// A parsed ipvsadm-style command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Change(Change),
    SetTimeouts { tcp: u32, tcpfin: u32, udp: u32 },
}

/// ipvsadm's default persistence timeout (`-p` without a value).
const DEFAULT_PERSISTENCE: u32 = 300;

fn parse_vs(s: &str) -> Result<(Ipv4Addr, u16), String> {
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: VIP:PORT (port 0: all ports)"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port"))?;
    Ok((ip, port))
}

/// `16` or `255.255.0.0` → prefix length.
fn parse_netmask(s: &str) -> Result<u8, String> {
    let err = || format!("{s:?}: a netmask (255.255.255.0) or a prefix length (24)");
    if let Ok(n) = s.trim_start_matches('/').parse::<u8>() {
        return if n <= 32 { Ok(n) } else { Err(err()) };
    }
    let m = u32::from(s.parse::<Ipv4Addr>().map_err(|_| err())?);
    if m.leading_ones() + m.trailing_zeros() != 32 {
        return Err(err());
    }
    Ok(m.leading_ones() as u8)
}

fn value<'a>(it: &mut impl Iterator<Item = &'a str>, flag: &str) -> Result<&'a str, String> {
    it.next().ok_or_else(|| format!("{flag} needs a value"))
}

/// Parses ipvsadm's flags into a command (no I/O; unit tested).
pub fn parse_command(args: &[&str]) -> Result<Command, String> {
    let mut op = None;
    let (mut vs, mut proto, mut rs) = (None, PROTO_TCP, None);
    let (mut method, mut weight, mut sched, mut persist, mut mask) = (None, None, None, None, None);
    let mut set = None;
    let mut it = args.iter().copied().peekable();
    while let Some(a) = it.next() {
        match a {
            "-A" | "--add-service" | "-E" | "--edit-service" | "-D" | "--delete-service" | "-a"
            | "--add-server" | "-e" | "--edit-server" | "-d" | "--delete-server" => {
                if op.is_some() {
                    return Err("one command at a time".into());
                }
                op = Some(match a {
                    "--add-service" => "-A",
                    "--edit-service" => "-E",
                    "--delete-service" => "-D",
                    "--add-server" => "-a",
                    "--edit-server" => "-e",
                    "--delete-server" => "-d",
                    x => x,
                });
            }
            "-t" | "--tcp-service" | "-u" | "--udp-service" => {
                proto = if a.starts_with("-u") || a == "--udp-service" {
                    PROTO_UDP
                } else {
                    PROTO_TCP
                };
                vs = Some(parse_vs(value(&mut it, a)?)?);
            }
            "-r" | "--real-server" => {
                let v = value(&mut it, a)?;
                rs = Some(match v.rsplit_once(':') {
                    Some(_) => {
                        let (ip, p) = parse_vs(v)?;
                        (ip, Some(p))
                    }
                    None => (
                        v.parse()
                            .map_err(|_| format!("{v:?} is not an IPv4 address"))?,
                        None,
                    ),
                });
            }
            "-g" | "--gatewaying" => method = Some(Method::Dr),
            "-i" | "--ipip" => method = Some(Method::Tun),
            "-m" | "--masquerading" => method = Some(Method::Nat),
            "-w" | "--weight" => {
                let v = value(&mut it, a)?;
                let w: u32 = v
                    .parse()
                    .map_err(|_| format!("-w {v:?}: a weight 0-65535"))?;
                if w > 65535 {
                    return Err(format!("-w {w}: a weight 0-65535"));
                }
                weight = Some(w);
            }
            "-s" | "--scheduler" => sched = Some(value(&mut it, a)?.to_string()),
            "-p" | "--persistent" => {
                // The timeout is optional, as in ipvsadm.
                persist = Some(match it.peek().and_then(|v| v.parse::<u32>().ok()) {
                    Some(t) => {
                        it.next();
                        t
                    }
                    None => DEFAULT_PERSISTENCE,
                });
            }
            "-M" | "--netmask" => mask = Some(parse_netmask(value(&mut it, a)?)?),
            "--set" => {
                let mut n = [0u32; 3];
                for x in &mut n {
                    let v = value(&mut it, a)?;
                    *x = v
                        .parse()
                        .map_err(|_| format!("--set TCP TCPFIN UDP: {v:?} is not seconds"))?;
                }
                set = Some(n);
            }
            "-n" | "--numeric" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some([tcp, tcpfin, udp]) = set {
        if op.is_some() {
            return Err("--set is a command of its own".into());
        }
        return Ok(Command::SetTimeouts { tcp, tcpfin, udp });
    }
    let op = op.ok_or("a command: -A -E -D -a -e -d or --set")?;
    let (vip, port) = vs.ok_or("-t VIP:PORT or -u VIP:PORT")?;
    let key = ServiceKey { proto, vip, port };
    let server = |rs: Option<(Ipv4Addr, Option<u16>)>| -> Result<(Ipv4Addr, u16), String> {
        let (ip, p) = rs.ok_or("-r RIP[:PORT]")?;
        Ok((ip, p.unwrap_or(port)))
    };
    let change = match op {
        "-A" => {
            let mut cfg = ServiceConfig {
                vip,
                port,
                proto,
                scheduler: sched.unwrap_or_else(|| "wlc".into()),
                persistence: persist.unwrap_or(0),
                persistence_netmask: mask.unwrap_or(32),
                health: HealthConfig {
                    kind: HealthCheck::None,
                    path: "/".into(),
                    port: None,
                    interval_ms: 2000,
                    timeout_ms: 1000,
                    fall: 2,
                    rise: 2,
                },
                feedback: None,
                real_servers: Vec::new(),
            };
            cfg.persistence_netmask = cfg.persistence_netmask.min(32);
            Change::AddService(cfg)
        }
        "-E" => Change::EditService {
            key,
            scheduler: sched,
            persistence: persist,
            netmask: mask,
        },
        "-D" => Change::DeleteService(key),
        "-a" => {
            let (addr, p) = server(rs)?;
            Change::AddServer(
                key,
                RealServerConfig {
                    addr,
                    port: p,
                    weight: weight.unwrap_or(1),
                    method: method.unwrap_or(Method::Dr),
                    mac: None,
                },
            )
        }
        "-e" => {
            let (addr, p) = server(rs)?;
            Change::EditServer {
                key,
                addr,
                port: p,
                weight,
                method,
            }
        }
        _ => {
            let (addr, p) = server(rs)?;
            Change::DeleteServer { key, addr, port: p }
        }
    };
    Ok(Command::Change(change))
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
        assert_eq!(sh.services().list[0].servers[0].weight(), 0);
        assert!(
            handle(&sh, &|| String::new(), "weight 1.2.3.4:80 10.201.2.11:80 0")
                .starts_with("error")
        );
        assert!(handle(&sh, &|| String::new(), "bogus").starts_with("error"));
    }

    #[test]
    fn ipvsadm_flags() {
        use crate::service::Change;
        let c = parse_command(&[
            "-A",
            "-u",
            "10.0.0.1:53",
            "-s",
            "sh",
            "-p",
            "-M",
            "255.255.255.0",
        ])
        .unwrap();
        let Command::Change(Change::AddService(cfg)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (cfg.proto, cfg.port, cfg.scheduler.as_str()),
            (PROTO_UDP, 53, "sh")
        );
        assert_eq!((cfg.persistence, cfg.persistence_netmask), (300, 24));
        let c =
            parse_command(&["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.9", "-m", "-w", "7"]).unwrap();
        let Command::Change(Change::AddServer(k, rs)) = c else {
            panic!("{c:?}")
        };
        assert_eq!((k.port, rs.port, rs.weight), (80, 80, 7));
        assert_eq!(rs.method, Method::Nat);
        assert_eq!(
            parse_command(&["--set", "900", "0", "60"]).unwrap(),
            Command::SetTimeouts {
                tcp: 900,
                tcpfin: 0,
                udp: 60
            }
        );
        for bad in [
            &["-a", "-t", "10.0.0.1:80"][..],
            &["-A"],
            &["-A", "-t", "10.0.0.1"],
            &["-e", "-t", "10.0.0.1:80", "-r", "10.0.0.9", "-w", "70000"],
            &["-A", "-D", "-t", "10.0.0.1:80"],
            &["-A", "-t", "10.0.0.1:80", "--bogus"],
            &["--set", "1", "2"],
        ] {
            assert!(parse_command(bad).is_err(), "{bad:?}");
        }
    }
}
