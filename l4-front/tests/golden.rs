//! Golden packet fixtures (Katran style): input frame → expected output
//! frame → verdict, for the parser and each rewrite, run in order through
//! one `Processor` (so later records see the connections earlier ones made).
//!
//! The fixtures live in `tests/fixtures/golden.txt` and are the source of
//! truth; `L4_BLESS=1 cargo test -p l4-front --test golden` regenerates them
//! from the cases below after a deliberate change. Independently of the
//! file, every output frame is checked for valid IP and TCP/UDP/ICMP
//! checksums.

use std::fmt::Write as _;
use std::sync::Arc;

use l4_front::config::Config;
use l4_front::datapath::{Processor, Verdict};
use l4_front::packet::build::{self, tcp_frame, udp_frame, TcpSpec, DIRECTOR_MAC};
use l4_front::packet::checksum;
use l4_front::packet::parse::{self, Frame, TCP_ACK, TCP_SYN};
use l4_front::service::Shared;
use l4_front::stats::WorkerStats;

const CONFIG: &str = r#"
[director]
interface = "d0"
mtu = 1500
[[service]]
vip = "10.201.2.100"
port = 80
scheduler = "rr"
[[service.real_server]]
address = "10.201.2.11"
method = "dr"
mac = "02:00:00:00:00:0b"
[[service]]
vip = "10.201.2.101"
port = 80
scheduler = "rr"
[[service.real_server]]
address = "10.201.2.12"
method = "tun"
mac = "02:00:00:00:00:0c"
[[service]]
vip = "10.201.2.102"
port = 80
scheduler = "rr"
[[service.real_server]]
address = "10.201.2.13"
port = 8080
method = "nat"
mac = "02:00:00:00:00:0d"
[[service]]
vip = "10.201.2.103"
port = 53
protocol = "udp"
scheduler = "rr"
[[service.real_server]]
address = "10.201.2.11"
method = "dr"
mac = "02:00:00:00:00:0b"
"#;

const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const RS_NAT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0d];
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden.txt");

struct Case {
    name: &'static str,
    input: Vec<u8>,
    csum_partial: bool,
}

fn syn_to(vip: [u8; 4], sport: u16) -> TcpSpec {
    TcpSpec {
        dst: vip,
        sport,
        ..TcpSpec::syn()
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add = |name, input, csum_partial| {
        v.push(Case {
            name,
            input,
            csum_partial,
        })
    };
    // Parser verdicts.
    let syn = tcp_frame(TcpSpec::syn());
    add("parse_truncated_ethernet", syn[..10].to_vec(), false);
    add("parse_truncated_ip", syn[..30].to_vec(), false);
    let mut f = syn.clone();
    f[14 + 10] ^= 0x55;
    add("parse_bad_ip_checksum", f, false);
    let mut f = syn.clone();
    f[14 + 2] = 0x05;
    add("parse_bad_total_length", f, false);
    let mut f = tcp_frame(TcpSpec::syn());
    f[12] = 0x86;
    f[13] = 0xdd;
    add("parse_ipv6_passes", f, false);
    add(
        "parse_not_vip_passes",
        tcp_frame(syn_to([10, 201, 2, 2], 40000)),
        false,
    );
    add(
        "vip_frame_for_another_mac_passes",
        tcp_frame(TcpSpec {
            dst_mac: [0x02, 0, 0, 0, 0, 0x99],
            ..TcpSpec::syn()
        }),
        false,
    );
    add(
        "vip_unknown_port",
        tcp_frame(TcpSpec {
            dport: 443,
            ..TcpSpec::syn()
        }),
        false,
    );
    // ARP for a VIP is answered by the director; for anything else passed.
    add(
        "arp_request_vip",
        build::arp_request(ROUTER_MAC, [10, 201, 2, 1], [10, 201, 2, 100]),
        false,
    );
    add(
        "arp_request_other",
        build::arp_request(ROUTER_MAC, [10, 201, 2, 1], [10, 201, 2, 2]),
        false,
    );
    // A stray ACK schedules nothing.
    add(
        "tcp_ack_without_connection",
        tcp_frame(TcpSpec {
            flags: TCP_ACK,
            sport: 40001,
            ..TcpSpec::syn()
        }),
        false,
    );
    // VS/DR.
    add("dr_syn", tcp_frame(TcpSpec::syn()), false);
    add(
        "dr_ack_data",
        tcp_frame(TcpSpec {
            flags: TCP_ACK | 0x08,
            payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            ..TcpSpec::syn()
        }),
        false,
    );
    // Partial checksum from a veth with tx offload: completed, then DR.
    let mut f = tcp_frame(TcpSpec {
        flags: TCP_ACK,
        ..TcpSpec::syn()
    });
    f[34 + 16] = 0x00;
    f[34 + 17] = 0x42;
    add("dr_partial_checksum_completed", f, true);
    add(
        "dr_udp",
        udp_frame([10, 201, 1, 2], [10, 201, 2, 103], 5353, 53, b"query"),
        false,
    );
    // VS/TUN.
    add(
        "tun_syn",
        tcp_frame(syn_to([10, 201, 2, 101], 40002)),
        false,
    );
    add(
        "tun_full_size_df_gets_frag_needed",
        tcp_frame(TcpSpec {
            flags: TCP_ACK,
            payload: vec![0x61; 1460],
            ..syn_to([10, 201, 2, 101], 40002)
        }),
        false,
    );
    add(
        "tun_full_size_no_df_fragmented",
        tcp_frame(TcpSpec {
            flags: TCP_ACK,
            df: false,
            payload: vec![0x62; 1460],
            ..syn_to([10, 201, 2, 101], 40002)
        }),
        false,
    );
    // VS/NAT: request rewritten to the real server, reply back to the VIP.
    add(
        "nat_syn",
        tcp_frame(syn_to([10, 201, 2, 102], 40003)),
        false,
    );
    add(
        "nat_reply_synack",
        tcp_frame(TcpSpec {
            src_mac: RS_NAT_MAC,
            dst_mac: DIRECTOR_MAC,
            src: [10, 201, 2, 13],
            dst: [10, 201, 1, 2],
            sport: 8080,
            dport: 40003,
            flags: TCP_SYN | TCP_ACK,
            ..TcpSpec::syn()
        }),
        false,
    );
    // ICMP fragmentation needed from a router on the reply path, quoting a
    // DR reply VIP:80 → client:40000: relayed to that connection's server.
    let icmp = frag_needed_quoting([10, 201, 2, 100], 40000);
    add("icmp_frag_needed_relayed_dr", icmp.clone(), false);
    let mut stray = icmp;
    stray[14 + 20 + 8 + 20 + 2] = 0x12; // quoted dport: no such connection
    add("icmp_frag_needed_no_match", stray, false);
    // The same for the NAT connection: outer destination, quoted source
    // address/port and the checksums rewritten for the real server.
    add(
        "icmp_frag_needed_relayed_nat",
        frag_needed_quoting([10, 201, 2, 102], 40003),
        false,
    );
    v
}

/// An ICMP "fragmentation needed" from the router (10.201.1.1) to `vip`,
/// quoting a 1,440-byte reply `vip`:80 → 10.201.1.2:`cport`.
fn frag_needed_quoting(vip: [u8; 4], cport: u16) -> Vec<u8> {
    let reply = tcp_frame(TcpSpec {
        src: vip,
        dst: [10, 201, 1, 2],
        sport: 80,
        dport: cport,
        flags: TCP_ACK,
        payload: vec![0x62; 1400],
        ..TcpSpec::syn()
    });
    let Ok(Frame::Ipv4(rip)) = parse::parse(&reply) else {
        unreachable!()
    };
    let mut icmp = vec![0u8; 128];
    let n = l4_front::packet::rewrite::icmp_frag_needed(
        &mut icmp,
        &reply,
        &rip,
        ROUTER_MAC,
        u32::from_be_bytes([10, 201, 1, 1]),
        1400,
    )
    .unwrap();
    icmp.truncate(n);
    // Addressed to the VIP, as routers do; from the router to the director.
    icmp[0..6].copy_from_slice(&DIRECTOR_MAC);
    icmp[30..34].copy_from_slice(&vip);
    icmp[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&icmp[14..34]);
    icmp[24..26].copy_from_slice(&c.to_be_bytes());
    icmp
}

fn processor() -> Processor {
    let cfg = Config::parse(CONFIG).expect("config");
    let shared = Arc::new(Shared::new(
        &cfg,
        DIRECTOR_MAC,
        u32::from_be_bytes([10, 201, 2, 2]),
        42,
    ));
    let stats = Arc::new(WorkerStats::new(&shared.shape()));
    Processor::new(shared, stats)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn verdict_name(v: Verdict) -> String {
    match v {
        Verdict::SendInput(_) => "send_input".into(),
        Verdict::SendOutput(_) => "send_output".into(),
        Verdict::SendOutputs(..) => "send_outputs".into(),
        Verdict::Pass => "pass".into(),
        Verdict::Drop(r) => format!("drop:{}", r.name()),
    }
}

/// Runs one input; returns verdict and output frame (empty if none).
fn step(p: &mut Processor, input: &[u8], partial: bool) -> (String, Vec<u8>) {
    let mut f = input.to_vec();
    let v = p.process(&mut f, partial, 1);
    let out = match v {
        Verdict::SendInput(n) => f[..n].to_vec(),
        Verdict::SendOutput(n) => p.output()[..n].to_vec(),
        Verdict::SendOutputs(a, b) => p.output()[..a + b].to_vec(),
        _ => Vec::new(),
    };
    (verdict_name(v), out)
}

/// Independent checks on any frame the director sends.
fn check_frame(name: &str, out: &[u8]) {
    let Ok(Frame::Ipv4(ip)) = parse::parse(out) else {
        return; // ARP
    };
    assert_eq!(
        checksum::checksum(&out[14..14 + ip.ihl]),
        0,
        "{name}: IP csum"
    );
    let seg = &out[ip.l4_off()..ip.frame_len()];
    match ip.proto {
        6 | 17 => {
            let s = checksum::sum(
                seg,
                checksum::pseudo_header(ip.src, ip.dst, ip.proto, seg.len() as u16),
            );
            assert_eq!(checksum::finish(s), 0, "{name}: L4 csum");
        }
        1 => assert_eq!(checksum::checksum(seg), 0, "{name}: ICMP csum"),
        // The inner packet, unless this is one fragment of it.
        4 if u16::from_be_bytes([out[20], out[21]]) & 0x3fff == 0 => {
            check_frame(name, &[&out[..14], seg].concat())
        }
        _ => {}
    }
}

#[test]
fn golden_fixtures() {
    if std::env::var_os("L4_BLESS").is_some() {
        let mut p = processor();
        let mut text = String::from(
            "# Golden packet fixtures for l4-front: records run in order through one\n\
             # Processor. Regenerate with L4_BLESS=1 (see tests/golden.rs).\n",
        );
        for c in cases() {
            let (v, out) = step(&mut p, &c.input, c.csum_partial);
            let _ = write!(
                text,
                "\nname: {}\npartial: {}\nin: {}\nverdict: {v}\nout: {}\n",
                c.name,
                c.csum_partial as u8,
                hex(&c.input),
                hex(&out)
            );
        }
        std::fs::write(FIXTURE, text).expect("write fixtures");
    }
    let text = std::fs::read_to_string(FIXTURE).expect("fixtures (bless with L4_BLESS=1)");
    let mut p = processor();
    let mut n = 0;
    for rec in text.split("\nname: ").skip(1) {
        let mut name = "";
        let (mut partial, mut input, mut verdict, mut out) = (false, Vec::new(), "", Vec::new());
        for (i, line) in rec.lines().enumerate() {
            if i == 0 {
                name = line.trim();
            } else if let Some(x) = line.strip_prefix("partial: ") {
                partial = x.trim() == "1";
            } else if let Some(x) = line.strip_prefix("in: ") {
                input = unhex(x.trim());
            } else if let Some(x) = line.strip_prefix("verdict: ") {
                verdict = x.trim();
            } else if let Some(x) = line.strip_prefix("out: ") {
                out = unhex(x.trim());
            }
        }
        let (v, got) = step(&mut p, &input, partial);
        assert_eq!(v, verdict, "{name}: verdict");
        assert_eq!(hex(&got), hex(&out), "{name}: output frame");
        if !got.is_empty() {
            check_frame(name, &got);
        }
        n += 1;
    }
    assert_eq!(n, cases().len(), "every case has a fixture");
}

#[test]
fn golden_outputs_have_the_promised_shape() {
    let mut p = processor();
    let mut by_name = std::collections::HashMap::new();
    for c in cases() {
        let r = step(&mut p, &c.input, c.csum_partial);
        by_name.insert(c.name, (c.input, r));
    }
    // DR: only the MACs differ.
    let (inp, (_, out)) = &by_name["dr_syn"];
    assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 0x0b]);
    assert_eq!(&out[6..12], &DIRECTOR_MAC);
    assert_eq!(&out[12..], &inp[12..]);
    // TUN: outer header proto 4 from the director to the server, then the
    // untouched inner packet.
    let (inp, (_, out)) = &by_name["tun_syn"];
    assert_eq!(out[14 + 9], 4);
    assert_eq!(&out[14 + 12..14 + 20], &[10, 201, 2, 2, 10, 201, 2, 12]);
    assert_eq!(&out[34..], &inp[14..]);
    // TUN too big: ICMP 3/4 with MTU 1480 back to the router's MAC.
    let (_, (v, out)) = &by_name["tun_full_size_df_gets_frag_needed"];
    assert_eq!(v, "send_output");
    assert_eq!(&out[..6], &ROUTER_MAC);
    assert_eq!((out[34], out[35]), (3, 4));
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1480);
    // TUN too big without DF: two outer fragments (MF + offset 0, then
    // offset 1,480), one id, each within the MTU, their payloads the
    // inner packet.
    let (inp, (v, out)) = &by_name["tun_full_size_no_df_fragmented"];
    assert_eq!(v, "send_outputs");
    let n1 = 14 + u16::from_be_bytes([out[16], out[17]]) as usize;
    let (f1, f2) = out.split_at(n1);
    assert_eq!((n1, f2.len()), (1514, 14 + 20 + 20));
    assert_eq!(u16::from_be_bytes([f1[20], f1[21]]), 0x2000);
    assert_eq!(u16::from_be_bytes([f2[20], f2[21]]), 1480 / 8);
    assert_eq!(f1[18..20], f2[18..20], "one id");
    for f in [f1, f2] {
        assert_eq!(checksum::checksum(&f[14..34]), 0);
        assert_eq!(f[14 + 9], 4);
    }
    assert_eq!([&f1[34..], &f2[34..]].concat(), inp[14..].to_vec());
    // NAT: destination 10.201.2.13:8080; the reply leaves from VIP:80.
    let (_, (_, out)) = &by_name["nat_syn"];
    assert_eq!(&out[30..34], &[10, 201, 2, 13]);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8080);
    let (_, (_, out)) = &by_name["nat_reply_synack"];
    assert_eq!(&out[26..30], &[10, 201, 2, 102]);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 80);
    assert_eq!(&out[..6], &ROUTER_MAC);
    // ICMP relayed unchanged but for the MACs, to the DR server.
    let (inp, (v, out)) = &by_name["icmp_frag_needed_relayed_dr"];
    assert_eq!(v, "send_input");
    assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 0x0b]);
    assert_eq!(&out[12..], &inp[12..]);
    assert_eq!(
        by_name["icmp_frag_needed_no_match"].1 .0,
        "drop:icmp_no_match"
    );
    assert_eq!(
        by_name["tcp_ack_without_connection"].1 .0,
        "drop:no_connection"
    );
    assert_eq!(by_name["arp_request_other"].1 .0, "pass");
    assert_eq!(by_name["vip_frame_for_another_mac_passes"].1 .0, "pass");
}
