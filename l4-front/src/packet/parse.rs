//! Ethernet / ARP / IPv4 / TCP / UDP / ICMP parsing.
//!
//! Every function here takes untrusted bytes: all offsets are checked before
//! use and malformed input yields a [`DropReason`] (counted by the caller),
//! never a panic. Parsing reads only what the data path needs; it returns
//! offsets so the rewrite functions can patch the frame in place.

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a frame was dropped. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    TruncatedEthernet,
    TruncatedIp,
    BadIpVersion,
    BadIpHeaderLength,
    BadIpTotalLength,
    BadIpChecksum,
    TruncatedL4,
    BadArp,
    Fragment,
    NoConnection,
    NoRealServer,
    Oversize,
    TtlExpired,
    IcmpNoMatch,
    TableFull,
    RateLimited,
    NoService,
}

impl DropReason {
    pub const COUNT: usize = 17;
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::TruncatedEthernet,
        Self::TruncatedIp,
        Self::BadIpVersion,
        Self::BadIpHeaderLength,
        Self::BadIpTotalLength,
        Self::BadIpChecksum,
        Self::TruncatedL4,
        Self::BadArp,
        Self::Fragment,
        Self::NoConnection,
        Self::NoRealServer,
        Self::Oversize,
        Self::TtlExpired,
        Self::IcmpNoMatch,
        Self::TableFull,
        Self::RateLimited,
        Self::NoService,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::TruncatedEthernet => "truncated_ethernet",
            Self::TruncatedIp => "truncated_ip",
            Self::BadIpVersion => "bad_ip_version",
            Self::BadIpHeaderLength => "bad_ip_header_length",
            Self::BadIpTotalLength => "bad_ip_total_length",
            Self::BadIpChecksum => "bad_ip_checksum",
            Self::TruncatedL4 => "truncated_l4",
            Self::BadArp => "bad_arp",
            Self::Fragment => "fragment",
            Self::NoConnection => "no_connection",
            Self::NoRealServer => "no_real_server",
            Self::Oversize => "oversize",
            Self::TtlExpired => "ttl_expired",
            Self::IcmpNoMatch => "icmp_no_match",
            Self::TableFull => "table_full",
            Self::RateLimited => "rate_limited",
            Self::NoService => "no_service",
        }
    }
}

/// Transport header summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        ty: u8,
        code: u8,
    },
    /// A non-first fragment, or a first fragment (ports may be present but
    /// the data path does not track fragments).
    Fragment,
    Other,
}

/// A parsed IPv4 packet inside an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    /// Offset of the IP header in the frame (always [`ETH_HLEN`]).
    pub l3: usize,
    /// IP header length in bytes.
    pub ihl: usize,
    /// IP total length (the frame may carry Ethernet padding beyond it).
    pub total_len: usize,
    pub proto: u8,
    pub ttl: u8,
    pub df: bool,
    pub src: u32,
    pub dst: u32,
    pub l4: L4,
}

impl Ipv4 {
    /// Offset of the transport header in the frame.
    pub fn l4_off(&self) -> usize {
        self.l3 + self.ihl
    }
    /// Length of the frame up to the end of the IP packet (no padding).
    pub fn frame_len(&self) -> usize {
        self.l3 + self.total_len
    }
    /// Source and destination ports (0 for portless protocols).
    pub fn ports(&self) -> (u16, u16) {
        match self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
            _ => (0, 0),
        }
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: u32,
    pub tha: [u8; 6],
    pub tpa: u32,
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Ipv4(Ipv4),
    Arp(Arp),
    /// Any other EtherType (IPv6, VLAN, LLDP…): not ours.
    Other(u16),
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn mac(b: &[u8], off: usize) -> Option<[u8; 6]> {
    let s = b.get(off..off + 6)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(s);
    Some(m)
}

/// Parses an Ethernet frame.
pub fn parse(frame: &[u8]) -> Result<Frame, DropReason> {
    let ethertype = be16(frame, 12).ok_or(DropReason::TruncatedEthernet)?;
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, ETH_HLEN, true).map(Frame::Ipv4),
        ETHERTYPE_ARP => parse_arp(frame).map(Frame::Arp),
        other => Ok(Frame::Other(other)),
    }
}

fn parse_arp(frame: &[u8]) -> Result<Arp, DropReason> {
    let p = frame
        .get(ETH_HLEN..ETH_HLEN + 28)
        .ok_or(DropReason::BadArp)?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
    if p[0..6] != [0, 1, 8, 0, 6, 4] {
        return Err(DropReason::BadArp);
    }
    let bad = DropReason::BadArp;
    Ok(Arp {
        op: be16(p, 6).ok_or(bad)?,
        sha: mac(p, 8).ok_or(bad)?,
        spa: be32(p, 14).ok_or(bad)?,
        tha: mac(p, 18).ok_or(bad)?,
        tpa: be32(p, 24).ok_or(bad)?,
    })
}

/// Parses an IPv4 header at `l3` and its transport header. With
/// `verify_checksum` false (quoted headers inside ICMP errors) the header
/// checksum and the total length against the buffer are not checked.
pub fn parse_ipv4(buf: &[u8], l3: usize, strict: bool) -> Result<Ipv4, DropReason> {
    let h = buf.get(l3..l3 + 20).ok_or(DropReason::TruncatedIp)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::BadIpVersion);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(DropReason::BadIpHeaderLength);
    }
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    let ttl = h[8];
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let full = buf.get(l3..l3 + ihl).ok_or(DropReason::BadIpHeaderLength)?;
    if strict {
        if total_len < ihl || l3 + total_len > buf.len() {
            return Err(DropReason::BadIpTotalLength);
        }
        if super::checksum::checksum(full) != 0 {
            return Err(DropReason::BadIpChecksum);
        }
    }
    let df = frag & 0x4000 != 0;
    let is_fragment = frag & 0x3fff != 0;
    let l4_off = l3 + ihl;
    // Transport bytes available: bounded by total length when strict.
    let end = if strict { l3 + total_len } else { buf.len() };
    let l4b = buf.get(l4_off..end).unwrap_or(&[]);
    let l4 = if is_fragment {
        L4::Fragment
    } else {
        match proto {
            PROTO_TCP => {
                let need = if strict { 20 } else { 8 };
                if l4b.len() < need {
                    return Err(DropReason::TruncatedL4);
                }
                L4::Tcp {
                    sport: u16::from_be_bytes([l4b[0], l4b[1]]),
                    dport: u16::from_be_bytes([l4b[2], l4b[3]]),
                    flags: l4b.get(13).copied().unwrap_or(0),
                }
            }
            PROTO_UDP => {
                if l4b.len() < 8 {
                    return Err(DropReason::TruncatedL4);
                }
                L4::Udp {
                    sport: u16::from_be_bytes([l4b[0], l4b[1]]),
                    dport: u16::from_be_bytes([l4b[2], l4b[3]]),
                }
            }
            PROTO_ICMP => {
                if l4b.len() < 8 {
                    return Err(DropReason::TruncatedL4);
                }
                L4::Icmp {
                    ty: l4b[0],
                    code: l4b[1],
                }
            }
            _ => L4::Other,
        }
    };
    Ok(Ipv4 {
        l3,
        ihl,
        total_len,
        proto,
        ttl,
        df,
        src,
        dst,
        l4,
    })
}

/// ICMP error types whose payload quotes the offending packet.
pub fn icmp_is_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// Parses the IP header quoted by an ICMP error (at least the IP header and
/// 8 bytes of transport, RFC 792).
pub fn parse_icmp_quote(frame: &[u8], outer: &Ipv4) -> Result<Ipv4, DropReason> {
    let end = outer.frame_len().min(frame.len());
    let buf = frame.get(..end).ok_or(DropReason::TruncatedL4)?;
    parse_ipv4(buf, outer.l4_off() + 8, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build;

    #[test]
    fn parses_tcp_syn() {
        let f = build::tcp_frame(build::TcpSpec::syn());
        let Frame::Ipv4(ip) = parse(&f).unwrap() else {
            panic!("not ipv4")
        };
        assert_eq!(ip.proto, PROTO_TCP);
        assert_eq!(
            ip.l4,
            L4::Tcp {
                sport: 40000,
                dport: 80,
                flags: TCP_SYN
            }
        );
        assert!(ip.df);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = build::tcp_frame(build::TcpSpec::syn());
        for n in 0..f.len() {
            let _ = parse(&f[..n]);
        }
        let u = build::udp_frame([10, 201, 1, 2], [10, 201, 2, 100], 5353, 53, b"hello");
        for n in 0..u.len() {
            let _ = parse(&u[..n]);
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: xorshift noise over a valid frame.
        let base = build::tcp_frame(build::TcpSpec::syn());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut f = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % f.len();
                f[i] = (x >> 32) as u8;
            }
            let cut = (x >> 40) as usize % (f.len() + 1);
            if let Ok(Frame::Ipv4(ip)) = parse(&f[..cut]) {
                if let L4::Icmp { .. } = ip.l4 {
                    let _ = parse_icmp_quote(&f[..cut], &ip);
                }
            }
        }
    }

    #[test]
    fn bad_checksum_and_lengths() {
        let mut f = build::tcp_frame(build::TcpSpec::syn());
        f[ETH_HLEN + 10] ^= 0xff;
        assert_eq!(parse(&f), Err(DropReason::BadIpChecksum));
        let mut f = build::tcp_frame(build::TcpSpec::syn());
        f[ETH_HLEN] = 0x44;
        assert_eq!(parse(&f), Err(DropReason::BadIpHeaderLength));
        let mut f = build::tcp_frame(build::TcpSpec::syn());
        f[ETH_HLEN] = 0x65;
        assert_eq!(parse(&f), Err(DropReason::BadIpVersion));
        let mut f = build::tcp_frame(build::TcpSpec::syn());
        f[ETH_HLEN + 2] = 0x7f;
        assert_eq!(parse(&f), Err(DropReason::BadIpTotalLength));
    }

    #[test]
    fn parses_arp_request() {
        let f = build::arp_request([2, 0, 0, 0, 0, 1], [10, 201, 2, 1], [10, 201, 2, 100]);
        let Frame::Arp(a) = parse(&f).unwrap() else {
            panic!("not arp")
        };
        assert_eq!(a.op, 1);
        assert_eq!(a.tpa, u32::from_be_bytes([10, 201, 2, 100]));
    }
}
