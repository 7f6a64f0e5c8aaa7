//! Builders for whole frames with correct checksums: used by the unit tests,
//! the golden fixtures and the data path's own replies (ARP).

use super::checksum;
use super::parse::{ETHERTYPE_ARP, ETHERTYPE_IPV4, PROTO_TCP, PROTO_UDP};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A TCP segment to build.
#[derive(Debug, Clone)]
pub struct TcpSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ttl: u8,
    pub df: bool,
    pub payload: Vec<u8>,
}

impl TcpSpec {
    /// A SYN from the client 10.201.1.2:40000 to the VIP 10.201.2.100:80.
    pub fn syn() -> Self {
        TcpSpec {
            src_mac: CLIENT_MAC,
            dst_mac: DIRECTOR_MAC,
            src: [10, 201, 1, 2],
            dst: [10, 201, 2, 100],
            sport: 40000,
            dport: 80,
            flags: super::parse::TCP_SYN,
            seq: 0x0102_0304,
            ttl: 63,
            df: true,
            payload: Vec::new(),
        }
    }
}

/// Writes an Ethernet header.
pub fn eth(out: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes a 20-byte IPv4 header with its checksum.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_header(
    out: &mut [u8],
    total_len: u16,
    id: u16,
    df: bool,
    ttl: u8,
    proto: u8,
    src: u32,
    dst: u32,
) {
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&total_len.to_be_bytes());
    out[4..6].copy_from_slice(&id.to_be_bytes());
    out[6..8].copy_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
    out[8] = ttl;
    out[9] = proto;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.to_be_bytes());
    out[16..20].copy_from_slice(&dst.to_be_bytes());
    let c = checksum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A complete Ethernet/IPv4/TCP frame.
pub fn tcp_frame(s: TcpSpec) -> Vec<u8> {
    let tcp_len = 20 + s.payload.len();
    let total = 20 + tcp_len;
    let mut f = vec![0u8; 14 + total];
    eth(&mut f, s.dst_mac, s.src_mac, ETHERTYPE_IPV4);
    let src = u32::from_be_bytes(s.src);
    let dst = u32::from_be_bytes(s.dst);
    ipv4_header(
        &mut f[14..],
        total as u16,
        0x1c46,
        s.df,
        s.ttl,
        PROTO_TCP,
        src,
        dst,
    );
    let t = &mut f[34..];
    t[0..2].copy_from_slice(&s.sport.to_be_bytes());
    t[2..4].copy_from_slice(&s.dport.to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = s.flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..].copy_from_slice(&s.payload);
    let c = checksum::l4_checksum(src, dst, PROTO_TCP, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

/// A complete Ethernet/IPv4/UDP frame (client MAC → director MAC).
pub fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = vec![0u8; 14 + total];
    eth(&mut f, DIRECTOR_MAC, CLIENT_MAC, ETHERTYPE_IPV4);
    let s = u32::from_be_bytes(src);
    let d = u32::from_be_bytes(dst);
    ipv4_header(
        &mut f[14..],
        total as u16,
        0x0101,
        false,
        64,
        PROTO_UDP,
        s,
        d,
    );
    let u = &mut f[34..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[8..].copy_from_slice(payload);
    let c = checksum::l4_checksum(s, d, PROTO_UDP, u);
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    f
}

/// An ARP packet (request when `op` is 1, reply when 2).
pub fn arp(
    out: &mut [u8],
    op: u16,
    eth_dst: [u8; 6],
    sha: [u8; 6],
    spa: u32,
    tha: [u8; 6],
    tpa: u32,
) -> usize {
    eth(out, eth_dst, sha, ETHERTYPE_ARP);
    let p = &mut out[14..42];
    p[0..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&sha);
    p[14..18].copy_from_slice(&spa.to_be_bytes());
    p[18..24].copy_from_slice(&tha);
    p[24..28].copy_from_slice(&tpa.to_be_bytes());
    // Pad to the 60-byte Ethernet minimum.
    out[42..60].fill(0);
    60
}

/// An ARP request "who has `tpa`, tell `spa`" broadcast from `sha`.
pub fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    arp(
        &mut f,
        1,
        [0xff; 6],
        sha,
        u32::from_be_bytes(spa),
        [0; 6],
        u32::from_be_bytes(tpa),
    );
    f
}
