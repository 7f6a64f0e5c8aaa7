//! The VS/TUN real-server side (`l4-decap`): this kernel has no `ipip`
//! module, so a raw IPPROTO_IPIP socket receives the director's IP-in-IP
//! packets (its mere existence also stops the kernel answering each one with
//! ICMP protocol-unreachable) and the inner packets addressed to a VIP are
//! written to a TUN device, from where the kernel delivers them locally (the
//! VIP is on `lo`). Only VIP-addressed packets are injected: anything else
//! would turn the real server into an open relay. `rp_filter` must be 0 on
//! the TUN device (set here) and on `all` (set by the operator), since the
//! route back to the client leaves by the LAN port.

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::packet::parse::{parse_ipv4, PROTO_IPIP};

/// Why an IPIP packet was not injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapDrop {
    #[error("malformed outer header")]
    BadOuter,
    #[error("not IP-in-IP")]
    NotIpip,
    #[error("malformed inner packet")]
    BadInner,
    #[error("inner destination is not a VIP")]
    NotVip,
}

/// The inner packet of an IP-in-IP datagram (as a raw socket returns it,
/// outer header included), if it is well formed and addressed to a VIP.
pub fn inner_for_vip<'a>(outer: &'a [u8], vips: &[u32]) -> Result<&'a [u8], DecapDrop> {
    let o = parse_ipv4(outer, 0, true).map_err(|_| DecapDrop::BadOuter)?;
    if o.proto != PROTO_IPIP {
        return Err(DecapDrop::NotIpip);
    }
    let inner = outer.get(o.ihl..o.total_len).ok_or(DecapDrop::BadOuter)?;
    let i = parse_ipv4(inner, 0, true).map_err(|_| DecapDrop::BadInner)?;
    if !vips.contains(&i.dst) {
        return Err(DecapDrop::NotVip);
    }
    Ok(&inner[..i.total_len])
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (i, &c) in b.iter().enumerate() {
        ifr.ifr_name[i] = c as libc::c_char;
    }
    Ok(ifr)
}

/// Creates (or attaches to) TUN device `name`, without packet info, and
/// brings it up.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: open on a constant path; the fd is owned below.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) })?;
    // SAFETY: plain socket + SIOC[GS]IFFLAGS ioctls on a valid ifreq.
    unsafe {
        let s = OwnedFd::from_raw_fd(cvt(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0))?);
        let mut ifr = ifreq(name)?;
        cvt(libc::ioctl(
            s.as_raw_fd(),
            libc::SIOCGIFFLAGS as _,
            &mut ifr,
        ))?;
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        cvt(libc::ioctl(
            s.as_raw_fd(),
            libc::SIOCSIFFLAGS as _,
            &mut ifr,
        ))?;
    }
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0");
    Ok(fd)
}

/// A raw socket receiving every IP-in-IP packet addressed to this host.
pub fn open_ipip() -> io::Result<OwnedFd> {
    // SAFETY: socket() returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            PROTO_IPIP as libc::c_int,
        )
    })?;
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Counters of the decapsulator.
#[derive(Debug, Default, Clone, Copy)]
pub struct DecapStats {
    pub injected: u64,
    pub dropped: u64,
}

/// Receives from `raw` and injects into `tun` forever (or until an I/O
/// error other than EINTR).
pub fn run(raw: &OwnedFd, tun: &OwnedFd, vips: &[u32]) -> io::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut st = DecapStats::default();
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(raw.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        match inner_for_vip(&buf[..n as usize], vips) {
            Ok(inner) => {
                // SAFETY: inner is a valid slice.
                let w = unsafe { libc::write(tun.as_raw_fd(), inner.as_ptr().cast(), inner.len()) };
                if w < 0 {
                    st.dropped += 1;
                    tracing::debug!(error = %io::Error::last_os_error(), "tun write");
                } else {
                    st.injected += 1;
                }
            }
            Err(e) => {
                st.dropped += 1;
                tracing::debug!(reason = %e, "not injected");
            }
        }
        if (st.injected + st.dropped) % 10_000 == 0 {
            tracing::info!(injected = st.injected, dropped = st.dropped, "decap");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::{tcp_frame, TcpSpec};
    use crate::packet::parse::{parse, Frame};
    use crate::packet::rewrite::{tun, Tunnel};

    #[test]
    fn only_vip_packets_come_out() {
        let f = tcp_frame(TcpSpec::syn());
        let Ok(Frame::Ipv4(ip)) = parse(&f) else {
            panic!()
        };
        let mut out = [0u8; 200];
        let t = Tunnel {
            src_mac: [1; 6],
            dst_mac: [2; 6],
            outer_src: 0x0ac9_0202,
            outer_dst: 0x0ac9_020b,
            id: 7,
        };
        let n = tun(&f, &ip, &mut out, &t).unwrap();
        let outer = &out[14..n];
        let vip = u32::from_be_bytes([10, 201, 2, 100]);
        assert_eq!(inner_for_vip(outer, &[vip]).unwrap(), &f[14..]);
        assert_eq!(inner_for_vip(outer, &[1]), Err(DecapDrop::NotVip));
        assert_eq!(inner_for_vip(&f[14..], &[vip]), Err(DecapDrop::NotIpip));
        for k in 0..outer.len() {
            let _ = inner_for_vip(&outer[..k], &[vip]);
        }
    }
}
