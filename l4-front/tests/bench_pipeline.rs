//! Micro-benchmarks of the per-packet pipeline, without any I/O: the cost
//! of `Processor::process` per frame for new connections (SYN flood from
//! random sources: parse, lookup miss, schedule, insert, rewrite) and for
//! packets of existing connections (parse, lookup hit, state, rewrite).
//!
//! Ignored by default; run with
//! `cargo test --release -p l4-front --test bench_pipeline -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use l4_front::config::Config;
use l4_front::datapath::{Processor, Verdict};
use l4_front::packet::build::{tcp_frame, TcpSpec, DIRECTOR_MAC};
use l4_front::packet::parse::TCP_ACK;
use l4_front::service::Shared;
use l4_front::stats::WorkerStats;

fn processor(method: &str) -> Processor {
    let cfg = Config::parse(&format!(
        r#"
[director]
interface = "d0"
[[service]]
vip = "10.201.2.100"
port = 80
scheduler = "wlc"
[[service.real_server]]
address = "10.201.2.11"
method = "{method}"
mac = "02:00:00:00:00:0b"
[[service.real_server]]
address = "10.201.2.12"
method = "{method}"
mac = "02:00:00:00:00:0c"
"#
    ))
    .unwrap();
    let shared = Arc::new(Shared::new(&cfg, DIRECTOR_MAC, 0x0ac9_0202, 7));
    let st = Arc::new(WorkerStats::new(&shared.shape()));
    Processor::new(shared, st)
}

fn run(name: &str, p: &mut Processor, frames: &[Vec<u8>]) {
    let mut buf = frames[0].clone();
    let mut out = vec![0u8; 10_000];
    let t = Instant::now();
    let mut sent = 0;
    for f in frames {
        buf.clear();
        buf.extend_from_slice(f);
        if !matches!(
            p.process_into(&mut buf, false, 0, &mut out),
            Verdict::Drop(_) | Verdict::Pass
        ) {
            sent += 1;
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / frames.len() as f64;
    eprintln!(
        "{name:<34} {ns:>7.0} ns/packet  {:>6.2} Mpps/core  ({sent} forwarded)",
        1e3 / ns
    );
    assert_eq!(sent, frames.len());
}

#[test]
#[ignore]
fn per_packet_cost() {
    const N: u32 = 1_000_000;
    let syns: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            tcp_frame(TcpSpec {
                src: (0x0aca_0000u32 + i).to_be_bytes(),
                sport: 1024 + (i % 60000) as u16,
                ..TcpSpec::syn()
            })
        })
        .collect();
    let acks: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            tcp_frame(TcpSpec {
                src: (0x0aca_0000u32 + i % 1000).to_be_bytes(),
                sport: 1024 + (i % 1000) as u16,
                flags: TCP_ACK,
                ..TcpSpec::syn()
            })
        })
        .collect();
    for method in ["dr", "tun", "nat"] {
        let mut p = processor(method);
        run(&format!("{method}: new connection (SYN)"), &mut p, &syns);
        let mut p = processor(method);
        run(
            &format!("{method}: setup 1000 connections"),
            &mut p,
            &syns[..1000],
        );
        let warm: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| {
                tcp_frame(TcpSpec {
                    src: (0x0aca_0000u32 + i).to_be_bytes(),
                    sport: 1024 + i as u16,
                    ..TcpSpec::syn()
                })
            })
            .collect();
        run(&format!("{method}: warm-up"), &mut p, &warm);
        run(
            &format!("{method}: existing connection (ACK)"),
            &mut p,
            &acks,
        );
    }
}
