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
    processor_with(method, "").0
}

/// A processor and the tables it shares; `extra` is appended to the
/// `[director]` section's configuration.
fn processor_with(method: &str, extra: &str) -> (Processor, Arc<Shared>) {
    let cfg = Config::parse(&format!(
        r#"
[director]
interface = "d0"
{extra}
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
    (Processor::new(shared.clone(), st), shared)
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

/// The SYN-flood benchmark's steady state: new connections from random
/// sources at `RATE` per simulated second, half-open entries expiring after
/// 5 s, so the table holds ~4 × RATE entries and every SYN pays an insert
/// into a large, cold table plus (via the slow timer, run every simulated
/// second as the director's main thread does) one expiry. The figure is
/// processing plus expiry time per packet, frames taken one at a time and
/// in batches of 64 prefetched first (as the AF_XDP worker does).
#[test]
#[ignore]
fn steady_state_syn_flood() {
    for batched in [false, true, false, true] {
        steady(batched);
    }
}

fn steady(batched: bool) {
    const RATE: u32 = 300_000;
    const SECONDS: u32 = 20;
    const BATCH: usize = 64;
    let (mut p, shared) =
        processor_with("dr", "max_connections = 2000000\n[timeouts]\ntcp_syn = 5\n");
    let template = tcp_frame(TcpSpec::syn());
    let mut frames = vec![template.clone(); BATCH];
    let mut out = vec![0u8; 10_000];
    // xorshift: random sources, as testlvs sends.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = 0u64;
    let mut expired = 0usize;
    let mut measured = std::time::Duration::ZERO;
    for now in 0..SECONDS {
        let t = Instant::now();
        for _ in 0..RATE as usize / BATCH {
            for frame in frames.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // DR rewrote the MAC addresses of the previous one.
                frame[..12].copy_from_slice(&template[..12]);
                let src = (x as u32) | 0x0100_0000;
                frame[26..30].copy_from_slice(&src.to_be_bytes());
                frame[34..36].copy_from_slice(&((x >> 32) as u16 | 1024).to_be_bytes());
                frame[24..26].copy_from_slice(&[0, 0]);
                let c = l4_front::packet::checksum::checksum(&frame[14..34]);
                frame[24..26].copy_from_slice(&c.to_be_bytes());
            }
            if batched {
                p.prefetch_batch(frames.iter().map(|f| &f[..]));
            }
            for frame in frames.iter_mut() {
                if !matches!(
                    p.process_into(frame, false, now, &mut out),
                    Verdict::Drop(_) | Verdict::Pass
                ) {
                    sent += 1;
                }
            }
        }
        let view = shared.services();
        expired += shared
            .table
            .expire(now + 1, |c| shared.on_expire_in(&view, c));
        // The first 5 s fill the table; measure once it is in steady state.
        if now >= 5 {
            measured += t.elapsed();
        }
    }
    let n = (SECONDS - 5) as usize * (RATE as usize / BATCH * BATCH);
    let ns = measured.as_nanos() as f64 / n as f64;
    let name = if batched {
        "prefetched batches of 64"
    } else {
        "one at a time"
    };
    eprintln!(
        "steady SYN flood, {name:<24} {ns:>7.0} ns/packet  {:>6.2} Mpps/core  ({} entries, {sent} forwarded, {expired} expired)",
        1e3 / ns,
        shared.table.len(),
    );
    assert!(sent as usize >= SECONDS as usize * (RATE as usize / BATCH * BATCH) * 99 / 100);
    assert!(expired > 0);
}
