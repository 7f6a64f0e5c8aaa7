//! `l4-synflood`: the thesis' `testlvs` — TCP SYNs from random source
//! addresses, sent as fast as possible (batches of 64 with `sendmmsg`) from
//! an AF_PACKET socket, for the §5.3 benchmark. Only ever aim it at
//! addresses inside a lab's namespaces.

use std::time::{Duration, Instant};

use anyhow::Context;
use l4_front::datapath::afpacket::PacketSocket;
use l4_front::packet::build::{tcp_frame, TcpSpec};
use l4_front::packet::checksum;

const USAGE: &str =
    "usage: l4-synflood --iface IF --dst-mac MAC --dst ADDR [--dport 80] [--seconds 3] [--rate PPS]
  sources are random addresses in 10.202.0.0/16, random ports";

fn main() -> anyhow::Result<()> {
    let (mut iface, mut dst_mac, mut dst) = (None, None, None);
    let (mut dport, mut seconds) = (80u16, 3.0f64);
    // Offered rate in packets per second; 0 = as fast as possible.
    let mut rate = 0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--iface" => iface = Some(val()?),
            "--dst-mac" => dst_mac = Some(val()?),
            "--dst" => dst = Some(val()?),
            "--dport" => dport = val()?.parse()?,
            "--seconds" => seconds = val()?.parse()?,
            "--rate" => rate = val()?.parse().context("--rate")?,
            _ => anyhow::bail!("{USAGE}"),
        }
    }
    let iface = iface.context(USAGE)?;
    let mac = l4_front::packet::parse_mac(&dst_mac.context(USAGE)?).context("--dst-mac")?;
    let dst: std::net::Ipv4Addr = dst.context(USAGE)?.parse().context("--dst")?;
    let sock = PacketSocket::open_tx(&iface).context("packet socket")?;
    let src_mac = l4_front::datapath::afpacket::if_mac(&iface)?;
    let base = tcp_frame(TcpSpec {
        src_mac,
        dst_mac: mac,
        src: [10, 202, 0, 1],
        dst: dst.octets(),
        dport,
        ..TcpSpec::syn()
    });
    const B: usize = 64;
    let mut frames: Vec<Vec<u8>> = (0..B).map(|_| base.clone()).collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ std::process::id() as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if rate > 0.0 {
            // Paced: the next batch leaves when the schedule says so.
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                let wait = due - now;
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait - Duration::from_micros(100));
                }
                continue;
            }
        }
        for f in frames.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // New source address (10.202.a.b) and port; checksums updated
            // incrementally from the template frame.
            let old_src = u32::from_be_bytes([f[26], f[27], f[28], f[29]]);
            let old_port = u16::from_be_bytes([f[34], f[35]]);
            let new_src = 0x0aca_0000 | (x as u32 & 0xffff);
            let new_port = 1024 + ((x >> 16) as u16 % 60000);
            let ipc = u16::from_be_bytes([f[24], f[25]]);
            f[24..26].copy_from_slice(&checksum::update32(ipc, old_src, new_src).to_be_bytes());
            let tc = u16::from_be_bytes([f[50], f[51]]);
            let tc = checksum::update32(tc, old_src, new_src);
            let tc = checksum::update16(tc, old_port, new_port);
            f[50..52].copy_from_slice(&tc.to_be_bytes());
            f[26..30].copy_from_slice(&new_src.to_be_bytes());
            f[34..36].copy_from_slice(&new_port.to_be_bytes());
        }
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        sent += sock.send_batch(&refs).unwrap_or(0) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} SYNs in {secs:.2} s: {:.0} pps",
        sent as f64 / secs
    );
    Ok(())
}
