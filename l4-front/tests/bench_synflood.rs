//! The §5.3 benchmark, short: SYNs from random sources (`l4-synflood`)
//! sent from the router's LAN port to the director, which forwards them to a
//! real server that drops them (nftables netdev ingress). The director's
//! forwarding rate is read from its port's `tx_packets`, first with the
//! director's own kernel forwarding (ip_forward=1, packets addressed to the
//! real server), then with `l4-front` (one worker) in DR and in TUN.
//!
//! Ignored by default (it saturates both cores for ~10 s); run it with
//! `cargo test --release -p l4-front --test bench_synflood -- --ignored --nocapture`.

mod common;

use common::{Lab, VIP};
use std::time::{Duration, Instant};

const SECONDS: f64 = 3.0;

fn tx_packets(lab: &Lab) -> u64 {
    lab.output("dir", &["cat", "/sys/class/net/d0/statistics/tx_packets"])
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Floods `dst` through the director; returns (generator pps, director pps).
fn flood(lab: &Lab, dst: &str) -> (f64, f64) {
    let mac = lab.output("dir", &["cat", "/sys/class/net/d0/address"]);
    let before = tx_packets(lab);
    let t = Instant::now();
    let out = lab.output(
        "rt",
        &[
            env!("CARGO_BIN_EXE_l4-synflood"),
            "--iface",
            "r1",
            "--dst-mac",
            mac.trim(),
            "--dst",
            dst,
            "--seconds",
            &SECONDS.to_string(),
        ],
    );
    // Let the director drain its queue.
    std::thread::sleep(Duration::from_millis(200));
    let secs = t.elapsed().as_secs_f64() - 0.2;
    let fwd = (tx_packets(lab) - before) as f64 / secs;
    let gen: f64 = out
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    (gen, fwd)
}

#[test]
#[ignore]
fn synflood_director_vs_kernel_forwarding() {
    skip_unless_lab!();
    let mut lab = Lab::new("b");
    lab.build(1);
    // The real server drops everything addressed to the VIP or tunnelled.
    lab.run("rs1", &["nft", "add", "table", "netdev", "l4b"]);
    lab.run(
        "rs1",
        &[
            "nft",
            "add",
            "chain",
            "netdev",
            "l4b",
            "in",
            "{ type filter hook ingress device e0 priority 0 ; }",
        ],
    );
    lab.run(
        "rs1",
        &[
            "nft",
            "add",
            "rule",
            "netdev",
            "l4b",
            "in",
            "ip",
            "saddr",
            "10.202.0.0/16",
            "drop",
        ],
    );
    lab.run(
        "rs1",
        &[
            "nft", "add", "rule", "netdev", "l4b", "in", "ip", "protocol", "4", "drop",
        ],
    );
    lab.run(
        "dir",
        &[
            "ethtool", "-K", "d0", "tx", "off", "tso", "off", "gso", "off",
        ],
    );

    // 1. Kernel forwarding over the same path (in and out of d0).
    lab.sysctl("dir", "net.ipv4.ip_forward=1");
    lab.sysctl("dir", "net.ipv4.conf.all.send_redirects=0");
    lab.sysctl("dir", "net.ipv4.conf.d0.send_redirects=0");
    lab.sysctl("dir", "net.ipv4.conf.all.rp_filter=0");
    lab.sysctl("dir", "net.ipv4.conf.d0.rp_filter=0");
    let (kg, kernel) = flood(&lab, "10.201.2.11");
    lab.sysctl("dir", "net.ipv4.ip_forward=0");

    let mut results = vec![("kernel forwarding", kg, kernel)];
    for method in ["dr", "tun"] {
        let cfg = lab.dir.join(format!("{method}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[director]\ninterface = \"d0\"\nworkers = 1\nstats_file = \"{}\"\n\
                 [[service]]\nvip = \"{VIP}\"\nport = 80\nscheduler = \"rr\"\n\
                 [[service.real_server]]\naddress = \"10.201.2.11\"\nmethod = \"{method}\"\n",
                lab.dir.join(format!("{method}.stats")).display()
            ),
        )
        .unwrap();
        lab.spawn(
            "dir",
            method,
            &[
                env!("CARGO_BIN_EXE_l4-front"),
                "--config",
                cfg.to_str().unwrap(),
            ],
            &[],
        );
        lab.wait_for_file(&lab.dir.join(format!("{method}.stats")), "l4-front", method);
        let (g, f) = flood(&lab, VIP);
        results.push((
            if method == "dr" {
                "l4-front DR"
            } else {
                "l4-front TUN"
            },
            g,
            f,
        ));
        let st = common::stats(&lab.dir.join(format!("{method}.stats")));
        eprintln!(
            "{method}: connections {:?}, table_full {:?}, tx_errors {:?}",
            st.get("connections"),
            st.get("drop.table_full"),
            st.get("tx_errors")
        );
        lab.stop_children();
    }
    eprintln!(
        "\n{:<20} {:>14} {:>14} {:>8}",
        "path", "offered pps", "forwarded pps", "vs kernel"
    );
    for (name, g, f) in &results {
        eprintln!(
            "{name:<20} {g:>14.0} {f:>14.0} {:>7.0}%",
            100.0 * f / kernel
        );
    }
}
