//! The three IPVS forwarding methods as in-place frame rewrites, plus the
//! packets the director originates (ARP replies, ICMP fragmentation needed).
//!
//! - VS/DR ([`dr`]): only the Ethernet addresses change.
//! - VS/TUN ([`tun`]): the IP packet is wrapped in an outer IPv4 header,
//!   protocol 4 (IP-in-IP), addressed to the real server.
//! - VS/NAT ([`nat`]): the destination (requests) or source (replies) address
//!   and port change; IP and TCP/UDP checksums are updated incrementally
//!   (RFC 1624), never recomputed.

use super::build;
use super::checksum;
use super::parse::{Arp, DropReason, Ipv4, ETHERTYPE_IPV4, L4, PROTO_ICMP, PROTO_IPIP};

/// Size of the outer header VS/TUN adds.
pub const TUN_OVERHEAD: usize = 20;

/// VS/DR: re-address the frame at layer 2.
pub fn dr(frame: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6]) {
    if frame.len() >= 12 {
        frame[0..6].copy_from_slice(&dst_mac);
        frame[6..12].copy_from_slice(&src_mac);
    }
}

/// The outer headers of a VS/TUN packet.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The director's address and the real server's.
    pub outer_src: u32,
    pub outer_dst: u32,
    pub id: u16,
}

impl Tunnel {
    /// Ethernet + outer IPv4 header for `payload` bytes of inner packet.
    fn headers(&self, o: &mut [u8], payload: usize, df: bool) {
        build::eth(o, self.dst_mac, self.src_mac, ETHERTYPE_IPV4);
        build::ipv4_header(
            &mut o[14..34],
            (TUN_OVERHEAD + payload) as u16,
            self.id,
            df,
            64,
            PROTO_IPIP,
            self.outer_src,
            self.outer_dst,
        );
    }
}

/// VS/TUN: writes Ethernet + outer IPv4 (protocol 4) + the inner IP packet
/// of `frame` into `out`; returns the frame length. The outer header copies
/// the inner DF bit (so path-MTU discovery keeps working) and TTL 64.
pub fn tun(frame: &[u8], ip: &Ipv4, out: &mut [u8], t: &Tunnel) -> Result<usize, DropReason> {
    let inner = frame
        .get(ip.l3..ip.frame_len())
        .ok_or(DropReason::TruncatedIp)?;
    let total = TUN_OVERHEAD + inner.len();
    let len = 14 + total;
    if total > u16::MAX as usize || len > out.len() {
        return Err(DropReason::Oversize);
    }
    t.headers(out, inner.len(), ip.df);
    out[34..len].copy_from_slice(inner);
    Ok(len)
}

/// VS/TUN for a packet without DF that no longer fits `mtu` once
/// encapsulated: the outer packet is sent in two fragments, as the kernel
/// fragments IPVS' tunnel packets. Both frames are written to `out`, the
/// second right after the first; returns their lengths. (The inner packet
/// is at most `mtu` long — longer frames are refused before — so two
/// fragments always suffice.)
pub fn tun_fragments(
    frame: &[u8],
    ip: &Ipv4,
    out: &mut [u8],
    t: &Tunnel,
    mtu: usize,
) -> Result<(usize, usize), DropReason> {
    let inner = frame
        .get(ip.l3..ip.frame_len())
        .ok_or(DropReason::TruncatedIp)?;
    // Payload of the first fragment: what fits, in 8-byte units.
    let first = (mtu.saturating_sub(TUN_OVERHEAD)) & !7;
    let rest = inner.len().saturating_sub(first);
    if first == 0 || rest == 0 || rest + TUN_OVERHEAD > mtu {
        return Err(DropReason::Oversize);
    }
    let (n1, n2) = (14 + TUN_OVERHEAD + first, 14 + TUN_OVERHEAD + rest);
    if n1 + n2 > out.len() {
        return Err(DropReason::Oversize);
    }
    for (at, part, offset, more) in [
        (0, &inner[..first], 0, true),
        (n1, &inner[first..], first, false),
    ] {
        let o = &mut out[at..at + 14 + TUN_OVERHEAD + part.len()];
        t.headers(o, part.len(), false);
        let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        o[20..22].copy_from_slice(&frag.to_be_bytes());
        o[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&o[14..34]);
        o[24..26].copy_from_slice(&c.to_be_bytes());
        o[34..].copy_from_slice(part);
    }
    Ok((n1, n2))
}

/// Which side of the packet VS/NAT rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatSide {
    /// Client → VIP becomes client → real server.
    Destination,
    /// Real server → client becomes VIP → client.
    Source,
}

/// VS/NAT: rewrites one address and port of a TCP/UDP packet in place and
/// updates the checksums incrementally. ICMP and other protocols only get
/// the address changed.
pub fn nat(
    frame: &mut [u8],
    ip: &Ipv4,
    side: NatSide,
    new_addr: u32,
    new_port: u16,
) -> Result<(), DropReason> {
    let l3 = ip.l3;
    let l4 = ip.l4_off();
    if frame.len() < ip.frame_len() || frame.len() < l4 {
        return Err(DropReason::TruncatedIp);
    }
    let (addr_off, old_addr, port_off, old_port) = match side {
        NatSide::Destination => (l3 + 16, ip.dst, l4 + 2, ip.ports().1),
        NatSide::Source => (l3 + 12, ip.src, l4, ip.ports().0),
    };
    // IP header checksum.
    let ipc = u16::from_be_bytes([frame[l3 + 10], frame[l3 + 11]]);
    let ipc = checksum::update32(ipc, old_addr, new_addr);
    frame[l3 + 10..l3 + 12].copy_from_slice(&ipc.to_be_bytes());
    frame[addr_off..addr_off + 4].copy_from_slice(&new_addr.to_be_bytes());
    // Transport checksum covers the pseudo-header (addresses) and the port.
    let csum_off = match ip.l4 {
        L4::Tcp { .. } => Some(l4 + 16),
        L4::Udp { .. } => Some(l4 + 6),
        _ => None,
    };
    if let Some(c) = csum_off {
        if frame.len() < c + 2 {
            return Err(DropReason::TruncatedL4);
        }
        let old = u16::from_be_bytes([frame[c], frame[c + 1]]);
        let udp_zero = matches!(ip.l4, L4::Udp { .. }) && old == 0;
        if !udp_zero {
            let mut n = checksum::update32(old, old_addr, new_addr);
            n = checksum::update16(n, old_port, new_port);
            if matches!(ip.l4, L4::Udp { .. }) && n == 0 {
                n = 0xffff;
            }
            frame[c..c + 2].copy_from_slice(&n.to_be_bytes());
        }
        frame[port_off..port_off + 2].copy_from_slice(&new_port.to_be_bytes());
    }
    Ok(())
}

/// VS/NAT ICMP error relay: an ICMP error addressed to the VIP quotes a
/// reply VIP:vport → client. For the real server it must read RIP:rport →
/// client: the outer destination, the quoted source address and port, the
/// quoted IP checksum and the ICMP checksum are all updated incrementally.
pub fn nat_icmp_to_real_server(
    frame: &mut [u8],
    ip: &Ipv4,
    quoted: &Ipv4,
    raddr: u32,
    rport: u16,
) -> Result<(), DropReason> {
    let q = quoted.l3;
    let icmp_c = ip.l4_off() + 2;
    if frame.len() < q + quoted.ihl + 4 || frame.len() < icmp_c + 2 {
        return Err(DropReason::TruncatedL4);
    }
    nat(frame, ip, NatSide::Destination, raddr, 0)?;
    let be16 = |f: &[u8], o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let old_qc = be16(frame, q + 10);
    let new_qc = checksum::update32(old_qc, quoted.src, raddr);
    let sport_off = q + quoted.ihl;
    let old_sport = be16(frame, sport_off);
    let mut c = be16(frame, icmp_c);
    c = checksum::update32(c, quoted.src, raddr);
    c = checksum::update16(c, old_qc, new_qc);
    c = checksum::update16(c, old_sport, rport);
    frame[q + 10..q + 12].copy_from_slice(&new_qc.to_be_bytes());
    frame[q + 12..q + 16].copy_from_slice(&raddr.to_be_bytes());
    frame[sport_off..sport_off + 2].copy_from_slice(&rport.to_be_bytes());
    frame[icmp_c..icmp_c + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Completes a TCP/UDP checksum the sender's kernel left partial (veth
/// checksum offload, `TP_STATUS_CSUMNOTREADY`): the field holds only the
/// pseudo-header sum, so recompute it over the whole segment.
pub fn complete_checksum(frame: &mut [u8], ip: &Ipv4) {
    let off = match ip.l4 {
        L4::Tcp { .. } => 16,
        L4::Udp { .. } => 6,
        _ => return,
    };
    let (l4, end) = (ip.l4_off(), ip.frame_len());
    let Some(seg) = frame.get_mut(l4..end) else {
        return;
    };
    if seg.len() < off + 2 {
        return;
    }
    seg[off..off + 2].copy_from_slice(&[0, 0]);
    let mut c = checksum::l4_checksum(ip.src, ip.dst, ip.proto, seg);
    if c == 0 && off == 6 {
        c = 0xffff;
    }
    seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether the TCP/UDP checksum looks left partial by the sender's
/// checksum offload: the field holds the folded pseudo-header sum (what
/// Linux writes for `CHECKSUM_PARTIAL`, expecting the device to finish
/// it). For receive paths with no checksum metadata (AF_XDP). A complete
/// checksum equals that value only by chance (1 in 65,536), and completing
/// such a frame rewrites the same value, so a false positive costs a sum
/// over the segment and changes nothing.
pub fn looks_partial(frame: &[u8], ip: &Ipv4) -> bool {
    let off = match ip.l4 {
        L4::Tcp { .. } => 16,
        L4::Udp { .. } => 6,
        _ => return false,
    };
    let (l4, end) = (ip.l4_off(), ip.frame_len());
    let Some(f) = frame.get(l4 + off..l4 + off + 2) else {
        return false;
    };
    let field = u16::from_be_bytes([f[0], f[1]]);
    let len = end.saturating_sub(l4) as u16;
    field != 0 && field == !checksum::finish(checksum::pseudo_header(ip.src, ip.dst, ip.proto, len))
}

/// An ARP reply to `req` saying `req.tpa` is at `our_mac`.
pub fn arp_reply(out: &mut [u8], req: &Arp, our_mac: [u8; 6]) -> usize {
    build::arp(out, 2, req.sha, our_mac, req.tpa, req.sha, req.spa)
}

/// A gratuitous ARP announcing `ip` at `mac` (sent at start and takeover).
pub fn gratuitous_arp(out: &mut [u8], mac: [u8; 6], ip: u32) -> usize {
    build::arp(out, 1, [0xff; 6], mac, ip, [0; 6], ip)
}

/// ICMP "fragmentation needed" (type 3 code 4) answering the packet in
/// `frame` (RFC 1191), sent back to its Ethernet source from `src_ip`.
pub fn icmp_frag_needed(
    out: &mut [u8],
    frame: &[u8],
    ip: &Ipv4,
    our_mac: [u8; 6],
    src_ip: u32,
    mtu: u16,
) -> Result<usize, DropReason> {
    let quote_len = (ip.ihl + 8).min(ip.total_len);
    let quote = frame
        .get(ip.l3..ip.l3 + quote_len)
        .ok_or(DropReason::TruncatedIp)?;
    let icmp_len = 8 + quote.len();
    let total = 20 + icmp_len;
    let len = 14 + total;
    if out.len() < len.max(60) || frame.len() < 12 {
        return Err(DropReason::Oversize);
    }
    let mut peer = [0u8; 6];
    peer.copy_from_slice(&frame[6..12]);
    build::eth(out, peer, our_mac, ETHERTYPE_IPV4);
    build::ipv4_header(
        &mut out[14..34],
        total as u16,
        0,
        false,
        64,
        PROTO_ICMP,
        src_ip,
        ip.src,
    );
    let m = &mut out[34..len];
    m[0] = 3;
    m[1] = 4;
    m[2..6].copy_from_slice(&[0, 0, 0, 0]);
    m[6..8].copy_from_slice(&mtu.to_be_bytes());
    m[8..].copy_from_slice(quote);
    let c = checksum::checksum(m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    if len < 60 {
        out[len..60].fill(0);
        return Ok(60);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{tcp_frame, udp_frame, TcpSpec};
    use crate::packet::parse::{parse, Frame};

    fn ip_of(f: &[u8]) -> Ipv4 {
        match parse(f).unwrap() {
            Frame::Ipv4(ip) => ip,
            other => panic!("{other:?}"),
        }
    }

    fn l4_valid(f: &[u8]) -> bool {
        let ip = ip_of(f);
        let seg = &f[ip.l4_off()..ip.frame_len()];
        checksum::finish(checksum::sum(
            seg,
            checksum::pseudo_header(ip.src, ip.dst, ip.proto, seg.len() as u16),
        )) == 0
    }

    #[test]
    fn nat_keeps_checksums_valid_both_ways() {
        let mut f = tcp_frame(TcpSpec {
            payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            ..TcpSpec::syn()
        });
        let ip = ip_of(&f);
        nat(&mut f, &ip, NatSide::Destination, 0x0ac9_020b, 8080).unwrap();
        let ip2 = ip_of(&f);
        assert_eq!(ip2.dst, 0x0ac9_020b);
        assert_eq!(ip2.ports(), (40000, 8080));
        assert!(l4_valid(&f));
        nat(&mut f, &ip2, NatSide::Source, 0x0ac9_0264, 81).unwrap();
        assert!(l4_valid(&f));
        let mut u = udp_frame([10, 201, 1, 2], [10, 201, 2, 100], 5000, 53, b"q");
        let ip = ip_of(&u);
        nat(&mut u, &ip, NatSide::Destination, 0x0ac9_020c, 5353).unwrap();
        assert!(l4_valid(&u));
    }

    #[test]
    fn complete_checksum_fixes_partial() {
        let mut f = tcp_frame(TcpSpec::syn());
        let ip = ip_of(&f);
        let c = ip.l4_off() + 16;
        f[c] = 0x12;
        f[c + 1] = 0x34;
        assert!(!l4_valid(&f));
        complete_checksum(&mut f, &ip);
        assert!(l4_valid(&f));
    }

    #[test]
    fn partial_checksums_are_recognised() {
        let mut f = tcp_frame(TcpSpec {
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            ..TcpSpec::syn()
        });
        let ip = ip_of(&f);
        assert!(!looks_partial(&f, &ip), "a complete checksum");
        // What a sender with checksum offload leaves: the folded
        // pseudo-header sum.
        let c = ip.l4_off() + 16;
        let len = (ip.frame_len() - ip.l4_off()) as u16;
        let pseudo = !checksum::finish(checksum::pseudo_header(ip.src, ip.dst, ip.proto, len));
        f[c..c + 2].copy_from_slice(&pseudo.to_be_bytes());
        assert!(!l4_valid(&f));
        assert!(looks_partial(&f, &ip));
        complete_checksum(&mut f, &ip);
        assert!(l4_valid(&f));
        assert!(!looks_partial(&f, &ip));
        // A corrupted checksum of another value is left alone (the real
        // server drops the frame, as it would without a director).
        f[c] ^= 0x40;
        assert!(!looks_partial(&f, &ip));
    }

    #[test]
    fn tun_refuses_small_buffer() {
        let f = tcp_frame(TcpSpec::syn());
        let ip = ip_of(&f);
        let mut out = [0u8; 40];
        assert_eq!(
            tun(
                &f,
                &ip,
                &mut out,
                &Tunnel {
                    src_mac: [1; 6],
                    dst_mac: [2; 6],
                    outer_src: 1,
                    outer_dst: 2,
                    id: 0
                }
            ),
            Err(DropReason::Oversize)
        );
    }
}
