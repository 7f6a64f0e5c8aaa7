//! Next-hop MAC resolution for real servers through the director kernel's
//! neighbour table: a datagram to the discard port makes the kernel ARP,
//! then `/proc/net/arp` has the answer. Control plane only.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

/// Looks `ip` up in `/proc/net/arp` (complete entries only).
pub fn lookup(ip: Ipv4Addr) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_proc_arp(&text, ip)
}

fn parse_proc_arp(text: &str, ip: Ipv4Addr) -> Option<[u8; 6]> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[0].parse::<Ipv4Addr>().ok()? != ip {
            continue;
        }
        // Flags 0x2 = ATF_COM (complete).
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & 0x2 == 0 {
            continue;
        }
        let m = crate::packet::parse_mac(f[3])?;
        if m != [0; 6] {
            return Some(m);
        }
    }
    None
}

/// Makes the kernel resolve `ip` (sends one empty UDP datagram to port 9).
pub fn provoke(ip: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
        let _ = s.send_to(&[], SocketAddrV4::new(ip, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_arp() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.201.2.11      0x1         0x2         02:aa:bb:cc:dd:0b     *        d0\n\
                 10.201.2.12      0x1         0x0         00:00:00:00:00:00     *        d0\n";
        assert_eq!(
            parse_proc_arp(t, "10.201.2.11".parse().unwrap()),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0b])
        );
        assert_eq!(parse_proc_arp(t, "10.201.2.12".parse().unwrap()), None);
    }
}
