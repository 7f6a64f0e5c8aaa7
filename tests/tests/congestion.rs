//! `client_congestion` and `[service.pool] congestion`: the switch's own
//! sockets use the configured TCP congestion control, read back from the
//! kernel with `ss -ti` (iproute2), while other sockets keep the system's.

use std::process::Command;
use tests::*;

/// An algorithm this machine has that is not its default (so the test can
/// tell the option from the default), or None.
fn not_the_default() -> Option<String> {
    let def = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").ok()?;
    let have =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").ok()?;
    ["reno", "cubic", "bbr"]
        .into_iter()
        .find(|a| *a != def.trim() && have.split_whitespace().any(|h| h == *a))
        .map(str::to_string)
}

/// The congestion-control names `ss` reports for established TCP sockets
/// matching `filter` (e.g. `src 127.0.0.1:8080`).
fn algorithms(filter: &str) -> Vec<String> {
    let mut args = vec!["-tinH", "state", "established"];
    args.extend(filter.split_whitespace());
    let out = Command::new("ss").args(&args).output().expect("run ss");
    assert!(out.status.success(), "ss {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // `ss -ti` prints each socket's info on the line after it, starting
    // with the algorithm's name ("\t cubic wscale:7,7 rto:201 ...").
    text.lines()
        .filter(|l| l.starts_with(char::is_whitespace) && l.contains("rto:"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn client_and_server_connections_use_the_configured_congestion_control() {
    let Some(cc) = not_the_default() else {
        eprintln!("skipped: no second congestion control available on this machine");
        return;
    };
    let o = Origin::start("o1");
    let mut cfg = Config::new("rr", &[o.addr()]);
    cfg.svc().keys = format!("client_congestion = \"{cc}\"\n");
    cfg.svc().pool_keys = format!("congestion = \"{cc}\"\n");
    let k = Ktcpvs::start(&cfg);
    let mut c = k.client();
    let r = c.roundtrip(&get("/cc"));
    assert_eq!(r.status, 200, "{r:?}");
    // While `c` and the pooled server connection stay open:
    let client_side = algorithms(&format!("src {}", k.addr()));
    assert_eq!(
        client_side,
        vec![cc.clone()],
        "the switch's accepted connection (src {})",
        k.addr()
    );
    let server_side = algorithms(&format!("dst {}", o.addr()));
    assert!(
        !server_side.is_empty() && server_side.iter().all(|a| *a == cc),
        "the switch's connections to the origin use {server_side:?}, want {cc}"
    );
    // The origin's own accepted socket is not the switch's: system default.
    let origin_side = algorithms(&format!("src {}", o.addr()));
    assert!(
        !origin_side.is_empty() && origin_side.iter().all(|a| *a != cc),
        "origin-side sockets {origin_side:?} should keep the system default"
    );
}

#[test]
fn without_the_options_connections_keep_the_system_default() {
    let def = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .expect("read the system default")
        .trim()
        .to_string();
    let o = Origin::start("o1");
    let k = Ktcpvs::start(&Config::new("rr", &[o.addr()]));
    let mut c = k.client();
    let r = c.roundtrip(&get("/cc"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(algorithms(&format!("src {}", k.addr())), vec![def.clone()]);
    let server_side = algorithms(&format!("dst {}", o.addr()));
    assert!(
        !server_side.is_empty() && server_side.iter().all(|a| *a == def),
        "{server_side:?}, want {def}"
    );
}
