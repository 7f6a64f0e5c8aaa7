//! AF_PACKET sockets: one per worker, all in one PACKET_FANOUT group hashed
//! per flow, ignoring the director's own transmitted frames
//! (PACKET_IGNORE_OUTGOING) and asking for PACKET_AUXDATA so a frame whose
//! TCP/UDP checksum the sending kernel left partial (veth offload) is
//! recognised and completed before it is forwarded.
//!
//! Plain `recvmsg`/`send` for now; TPACKET_V3 rings are the next step.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) const SOL_PACKET: libc::c_int = 263;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_FANOUT: libc::c_int = 18;
pub(crate) const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT_HASH: u32 = 0;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const ETH_P_ALL: u16 = 0x0003;

#[repr(C)]
#[derive(Clone, Copy)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// A received frame's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    pub len: usize,
    /// The L4 checksum is partial (CHECKSUM_PARTIAL on the sender side).
    pub csum_partial: bool,
    /// The frame was larger than the buffer.
    pub truncated: bool,
}

/// A packet socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Maps the `size`-byte packet ring the kernel allocated for `fd`.
pub(crate) fn map_ring(fd: libc::c_int, size: usize) -> io::Result<*mut u8> {
    // SAFETY: a shared mapping of the socket's ring; checked for failure.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(base.cast())
}

pub(crate) fn setopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: v points to a live T of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        let e = io::Error::last_os_error();
        Err(match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ENOENT) => {
                io::Error::new(io::ErrorKind::NotFound, "no such network interface")
            }
            _ => e,
        })
    } else {
        Ok(i)
    }
}

/// The MAC address of `name` (from sysfs).
pub fn if_mac(name: &str) -> io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    crate::packet::parse_mac(s.trim())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad MAC in sysfs"))
}

/// The first IPv4 address of `name` (SIOCGIFADDR).
pub fn if_ipv4(name: &str) -> io::Result<u32> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name is
    // bounded by IFNAMSIZ - 1; the fd is closed by OwnedFd.
    unsafe {
        let fd = OwnedFd::from_raw_fd(cvt(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0))?);
        let mut ifr: libc::ifreq = zeroed();
        let b = name.as_bytes();
        if b.len() >= libc::IFNAMSIZ {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        for (i, &c) in b.iter().enumerate() {
            ifr.ifr_name[i] = c as libc::c_char;
        }
        cvt(libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFADDR as _,
            &mut ifr,
        ))?;
        let sin = &*((&ifr.ifr_ifru) as *const _ as *const libc::sockaddr_in);
        Ok(u32::from_be(sin.sin_addr.s_addr))
    }
}

impl PacketSocket {
    /// Opens a socket on `ifname` (ETH_P_ALL, so it also gets frames an
    /// nftables netdev-ingress rule would drop) and joins fanout group
    /// `group` when given.
    pub fn open(ifname: &str, group: Option<u16>) -> io::Result<PacketSocket> {
        Self::open_inner(ifname, group, None).map(|(s, _)| s)
    }

    /// A socket that only sends out of `ifname`: bound with protocol 0, it
    /// is on no receive list, so the kernel clones no frame into it.
    pub fn open_tx(ifname: &str) -> io::Result<PacketSocket> {
        let idx = ifindex(ifname)?;
        // SAFETY: socket() returns a new fd or -1.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0;
        sll.sll_ifindex = idx as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket { fd })
    }

    /// The same with a TPACKET_V3 receive ring of `blocks` × `block_size`
    /// bytes (set up before binding, as the kernel requires).
    pub fn open_ring(
        ifname: &str,
        group: Option<u16>,
        block_size: usize,
        blocks: usize,
    ) -> io::Result<(PacketSocket, super::ring::RxRing)> {
        let (s, r) = Self::open_inner(ifname, group, Some((block_size, blocks)))?;
        let r = r.ok_or_else(|| io::Error::other("ring not set up"))?;
        Ok((s, r))
    }

    fn open_inner(
        ifname: &str,
        group: Option<u16>,
        ring: Option<(usize, usize)>,
    ) -> io::Result<(PacketSocket, Option<super::ring::RxRing>)> {
        let idx = ifindex(ifname)?;
        // SAFETY: socket() returns a new fd or -1.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (ETH_P_ALL.to_be()) as libc::c_int,
            )
        })?;
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = PacketSocket { fd };
        let one: libc::c_int = 1;
        setopt(raw, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one)?;
        setopt(raw, SOL_PACKET, PACKET_AUXDATA, &one)?;
        // Frames we send skip the qdisc layer (we pace nothing; a full
        // device queue is a send error we count).
        let _ = setopt(raw, SOL_PACKET, PACKET_QDISC_BYPASS, &one);
        let rcvbuf: libc::c_int = 8 << 20;
        let _ = setopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf)
            .or_else(|_| setopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf));
        // A receive timeout lets workers notice shutdown.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        setopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        let ring = match ring {
            Some((bs, n)) => Some(super::ring::RxRing::setup(&sock, bs, n, 1)?),
            None => None,
        };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = idx as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        if let Some(g) = group {
            let arg: u32 = g as u32 | (PACKET_FANOUT_HASH << 16);
            setopt(raw, SOL_PACKET, PACKET_FANOUT, &arg)?;
        }
        Ok((sock, ring))
    }

    /// Receives one frame into `buf`. `Ok(None)` on timeout or EINTR.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<RxMeta>> {
        // u64 alignment for the control buffer.
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr zeroed then pointed at live buffers.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: all pointers in msg are valid for the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        let mut csum_partial = false;
        // SAFETY: walking the control messages the kernel wrote into cbuf
        // with the CMSG_* helpers, reading the payload unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                    let aux: TpacketAuxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const TpacketAuxdata);
                    csum_partial = aux.tp_status & TP_STATUS_CSUMNOTREADY != 0;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Some(RxMeta {
            len: n.min(buf.len()),
            csum_partial,
            truncated: n > buf.len(),
        }))
    }

    /// Receives up to `bufs.len()` frames with one `recvmmsg` (waiting, up
    /// to the socket timeout, for the first only); fills `meta` and returns
    /// the count (0 on timeout or EINTR).
    pub fn recv_batch(&self, bufs: &mut [Vec<u8>], meta: &mut [RxMeta]) -> io::Result<usize> {
        const MAX: usize = 64;
        let n = bufs.len().min(meta.len()).min(MAX);
        if n == 0 {
            return Ok(0);
        }
        let mut cbufs = [[0u64; 8]; MAX];
        // SAFETY: iovec/mmsghdr are plain data; zeroed is valid, and every
        // pointer set below refers to a live buffer for the whole call.
        let mut iovs: [libc::iovec; MAX] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; MAX] = unsafe { zeroed() };
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: bufs[i].len(),
            };
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = cbufs[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = size_of::<[u64; 8]>() as _;
        }
        // SAFETY: hdrs[..n] are initialised as above.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                (libc::MSG_TRUNC | libc::MSG_WAITFORONE) as _,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let r = r as usize;
        for i in 0..r {
            let len = hdrs[i].msg_len as usize;
            let mut csum_partial = false;
            // SAFETY: walking control messages the kernel wrote into
            // cbufs[i] with the CMSG_* helpers, reading unaligned.
            unsafe {
                let msg = &hdrs[i].msg_hdr;
                let mut c = libc::CMSG_FIRSTHDR(msg);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                        let aux: TpacketAuxdata =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const TpacketAuxdata);
                        csum_partial = aux.tp_status & TP_STATUS_CSUMNOTREADY != 0;
                    }
                    c = libc::CMSG_NXTHDR(msg, c);
                }
            }
            meta[i] = RxMeta {
                len: len.min(bufs[i].len()),
                csum_partial,
                truncated: len > bufs[i].len(),
            };
        }
        Ok(r)
    }

    /// Sends the frames with `sendmmsg`; returns how many were sent.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        const MAX: usize = 64;
        let mut sent = 0;
        while sent < frames.len() {
            let chunk = &frames[sent..(sent + MAX).min(frames.len())];
            // SAFETY: as in recv_batch; the iovecs point at the caller's
            // frames, which outlive the call (the kernel only reads them).
            let mut iovs: [libc::iovec; MAX] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; MAX] = unsafe { zeroed() };
            for (i, f) in chunk.iter().enumerate() {
                iovs[i] = libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                };
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: hdrs[..chunk.len()] initialised above.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    chunk.len() as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                if sent > 0 {
                    return Ok(sent);
                }
                return Err(io::Error::last_os_error());
            }
            sent += r as usize;
        }
        Ok(sent)
    }

    /// Frames the kernel dropped on this socket since the last call
    /// (PACKET_STATISTICS; reading resets the kernel's counters).
    pub fn take_drops(&self) -> u64 {
        const PACKET_STATISTICS: libc::c_int = 6;
        // struct tpacket_stats_v3: packets, drops, freeze_q_cnt (the
        // larger of the two layouts the kernel may fill).
        let mut st = [0u32; 3];
        let mut len = size_of::<[u32; 3]>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most len bytes into st.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r < 0 {
            0
        } else {
            u64::from(st[1])
        }
    }

    /// Sends one whole frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid slice for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
