//! The AF_XDP data path (`director.xdp = true`): an XDP program on the
//! director's port steers IPv4 packets addressed to a VIP into one AF_XDP
//! socket per receive queue, before the kernel builds any socket buffer
//! for them, runs its packet taps, its nftables ingress hook or its IP
//! layer; everything else (ARP, NAT replies, the host's own traffic) goes
//! on to the kernel (`XDP_PASS`), where the slow-path packet socket sees it
//! as before.
//!
//! The program is ~50 instructions assembled here (no compiler, no libbpf):
//!
//! ```text
//!  if the frame is shorter than Ethernet + IPv4 headers  → pass
//!  if it is longer than a UMEM chunk holds (3,840 B)      → pass
//!  if not IPv4, a fragment, or neither TCP nor UDP        → pass
//!  if no room for the ports after the IPv4 header         → pass
//!  if svcs[{daddr, dport, proto}] or svcs[{daddr, 0, proto}] exists
//!      return bpf_redirect_map(xsks, ctx->rx_queue_index, XDP_PASS)
//!  pass: return XDP_PASS
//! ```
//!
//! So only the services' traffic is taken: other ports of a VIP, ICMP
//! errors about a service (relayed by the packet-socket worker) and
//! fragments reach the kernel as before.
//!
//! `bpf_redirect_map` falls back to `XDP_PASS` when no socket is bound on
//! the queue. The program is attached with a BPF link (`BPF_LINK_CREATE`),
//! native (driver) mode first, generic mode if the driver has none; the
//! kernel detaches it when the link's descriptor closes, so a crashed
//! director leaves nothing attached.
//!
//! Each socket has its own UMEM of [`FRAMES`] chunks of [`CHUNK`] bytes,
//! as many in the fill ring as it holds, the rest in a free list. A
//! received frame is processed in place and the chunk it arrived in is
//! transmitted: as it is for a `SendInput` verdict (DR: only the MACs
//! change), overwritten by the built frame for a `SendOutput` (TUN, NAT,
//! ARP, ICMP). Chunks come back through the completion ring. Copy mode
//! (`XDP_COPY`): veth and most virtual devices have no zero-copy support,
//! and copy mode works on every driver.
//!
//! The service map holds 4,096 entries; services beyond it (or any the map
//! refuses) are not steered and reach the packet-socket worker instead.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::process::{Processor, Verdict, OUT_BUF};
use crate::stats::Counter;

/// Bytes per UMEM chunk (a page: the kernel's copy-mode frames start
/// 256 bytes in, leaving [`MAX_FRAME`] bytes of frame).
pub const CHUNK: usize = 4096;
/// The longest frame a chunk holds; longer ones (jumbo frames) the program
/// passes to the kernel, where the packet-socket worker takes them.
pub const MAX_FRAME: i32 = (CHUNK - 256) as i32;
/// Chunks per socket (16 MiB of UMEM).
pub const FRAMES: usize = 4096;
/// Entries per ring (fill, completion, receive, transmit).
const RING: u32 = 2048;
/// Services the program's map holds (the rest reach the packet-socket
/// worker instead).
const MAX_STEERED: u32 = 4096;
/// Frames taken from the receive ring per turn.
const BATCH: usize = 64;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_REDIRECT_MAP: i32 = 51;

/// `union bpf_attr`, as much of it as the commands here use; zero beyond.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed;
    // every pointer stored in it outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)? as RawFd;
    // SAFETY: the command returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn map_create(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, kind).u32(4, key).u32(8, value).u32(12, entries);
    bpf_fd(BPF_MAP_CREATE, &mut a)
}

fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

fn map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).u64(8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut a).map(|_| ())
}

/// One eBPF instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst as u64) | ((src as u64) << 4)) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// Labels of the steering program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Ports,
    Redirect,
    Pass,
}

/// A few lines of eBPF assembler: instructions, and jumps to labels
/// patched once every label is placed.
struct Asm {
    code: Vec<u64>,
    jumps: Vec<(usize, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn i(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Self {
        self.code.push(insn(code, dst, src, off, imm));
        self
    }
    /// A conditional jump to `to`.
    fn j(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) -> &mut Self {
        self.jumps.push((self.code.len(), to));
        self.i(code, dst, src, 0, imm)
    }
    /// `r{dst} = map` (`BPF_LD_IMM64` with `BPF_PSEUDO_MAP_FD`: two slots).
    fn map(&mut self, dst: u8, fd: RawFd) -> &mut Self {
        self.i(0x18, dst, 1, 0, fd).i(0, 0, 0, 0, 0)
    }
    fn label(&mut self, l: Label) -> &mut Self {
        self.labels.push((l, self.code.len()));
        self
    }
    fn finish(mut self) -> Vec<u64> {
        for &(at, to) in &self.jumps {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .map(|&(_, pc)| pc)
                .expect("label placed");
            let off = (target as i64 - at as i64 - 1) as i16 as u16 as u64;
            self.code[at] = (self.code[at] & !(0xffff << 16)) | (off << 16);
        }
        self.code
    }
}

/// The steering program, with the two maps' descriptors patched in:
/// IPv4 TCP/UDP (unfragmented) to a (VIP, protocol, port) in `svcs` — or
/// to (VIP, protocol, 0), an all-ports service — is redirected to the
/// socket of its receive queue; everything else passes to the kernel.
fn program(svcs: RawFd, xsks: RawFd) -> Vec<u64> {
    const LDXW: u8 = 0x61;
    const LDXH: u8 = 0x69;
    const LDXB: u8 = 0x71;
    const STXW: u8 = 0x63;
    const STXH: u8 = 0x6b;
    const STXB: u8 = 0x73;
    const STH: u8 = 0x6a;
    const STB: u8 = 0x72;
    const MOV64X: u8 = 0xbf;
    const MOV64K: u8 = 0xb7;
    const ADD64K: u8 = 0x07;
    const ADD64X: u8 = 0x0f;
    const AND64K: u8 = 0x57;
    const LSH64K: u8 = 0x67;
    const JGTX: u8 = 0x2d;
    const JGEX: u8 = 0x3d;
    const JNEK: u8 = 0x55;
    const JEQK: u8 = 0x15;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    use Label::*;
    let mut a = Asm {
        code: Vec::new(),
        jumps: Vec::new(),
        labels: Vec::new(),
    };
    a.i(MOV64X, 6, 1, 0, 0) // r6 = ctx
        .i(LDXW, 2, 6, 0, 0) // r2 = ctx->data
        .i(LDXW, 3, 6, 4, 0) // r3 = ctx->data_end
        .i(MOV64X, 4, 2, 0, 0)
        .i(ADD64K, 4, 0, 0, 34)
        .j(JGTX, 4, 3, 0, Pass) // shorter than Ethernet + IPv4 headers
        .i(MOV64X, 4, 2, 0, 0)
        .i(ADD64K, 4, 0, 0, MAX_FRAME + 1)
        .j(JGEX, 3, 4, 0, Pass) // too long for a chunk
        .i(LDXH, 5, 2, 12, 0)
        .j(JNEK, 5, 0, 0x0008, Pass) // not IPv4 (0x0800, big-endian)
        .i(LDXH, 7, 2, 20, 0) // flags and fragment offset, as loaded
        .i(AND64K, 7, 0, 0, 0xff3f) // MF and the offset
        .j(JNEK, 7, 0, 0, Pass) // a fragment: no ports (or not all)
        .i(LDXB, 5, 2, 23, 0) // r5 = protocol
        .j(JEQK, 5, 0, 6, Ports)
        .j(JNEK, 5, 0, 17, Pass) // neither TCP nor UDP
        .label(Ports)
        .i(LDXB, 7, 2, 14, 0)
        .i(AND64K, 7, 0, 0, 0x0f)
        .i(LSH64K, 7, 0, 0, 2) // r7 = IPv4 header length (≤ 60)
        .i(MOV64X, 8, 2, 0, 0)
        .i(ADD64X, 8, 7, 0, 0)
        .i(ADD64K, 8, 0, 0, 14) // r8 = the TCP/UDP header
        .i(MOV64X, 9, 8, 0, 0)
        .i(ADD64K, 9, 0, 0, 4)
        .j(JGTX, 9, 3, 0, Pass) // no room for the ports
        .i(LDXH, 7, 8, 2, 0) // destination port (network order)
        .i(LDXW, 8, 2, 30, 0) // destination address (network order)
        // key = {daddr, dport, protocol, 0} on the stack
        .i(STXW, 10, 8, -8, 0)
        .i(STXH, 10, 7, -4, 0)
        .i(STXB, 10, 5, -2, 0)
        .i(STB, 10, 0, -1, 0)
        .i(MOV64X, 2, 10, 0, 0)
        .i(ADD64K, 2, 0, 0, -8)
        .map(1, svcs)
        .i(CALL, 0, 0, 0, HELPER_MAP_LOOKUP)
        .j(JNEK, 0, 0, 0, Redirect) // a service on this port
        .i(STH, 10, 0, -4, 0) // port 0: an all-ports service?
        .i(MOV64X, 2, 10, 0, 0)
        .i(ADD64K, 2, 0, 0, -8)
        .map(1, svcs)
        .i(CALL, 0, 0, 0, HELPER_MAP_LOOKUP)
        .j(JEQK, 0, 0, 0, Pass)
        .label(Redirect)
        .i(LDXW, 2, 6, 16, 0) // ctx->rx_queue_index
        .map(1, xsks)
        .i(MOV64K, 3, 0, 0, XDP_PASS) // fallback action: no socket bound
        .i(CALL, 0, 0, 0, HELPER_REDIRECT_MAP)
        .i(EXIT, 0, 0, 0, 0)
        .label(Pass)
        .i(MOV64K, 0, 0, 0, XDP_PASS)
        .i(EXIT, 0, 0, 0, 0);
    a.finish()
}

fn prog_load(insns: &[u64]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 16 * 1024];
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, BPF_XDP);
    a.0[48..56].copy_from_slice(b"l4_steer");
    bpf_fd(BPF_PROG_LOAD, &mut a).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("{e}; verifier: {}", text.trim()))
    })
}

fn link_create(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, ifindex)
        .u32(8, BPF_XDP)
        .u32(12, flags);
    bpf_fd(BPF_LINK_CREATE, &mut a)
}

/// The attached steering program and its maps. Dropping it detaches the
/// program.
pub struct Steering {
    svcs: OwnedFd,
    xsks: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// "native" or "generic".
    pub mode: &'static str,
    installed: Mutex<Vec<[u8; 8]>>,
}

impl Steering {
    /// Loads the program and attaches it to `ifindex` with room for
    /// `queues` sockets.
    pub fn attach(ifindex: u32, queues: u32) -> io::Result<Steering> {
        let svcs = map_create(BPF_MAP_TYPE_HASH, 8, 4, MAX_STEERED)
            .map_err(|e| io::Error::new(e.kind(), format!("creating the service map: {e}")))?;
        let xsks = map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, queues.max(1))
            .map_err(|e| io::Error::new(e.kind(), format!("creating the socket map: {e}")))?;
        let prog = prog_load(&program(svcs.as_raw_fd(), xsks.as_raw_fd()))
            .map_err(|e| io::Error::new(e.kind(), format!("loading the XDP program: {e}")))?;
        let (link, mode) = match link_create(&prog, ifindex, XDP_FLAGS_DRV_MODE) {
            Ok(l) => (l, "native"),
            Err(native) => match link_create(&prog, ifindex, XDP_FLAGS_SKB_MODE) {
                Ok(l) => {
                    tracing::warn!(error = %native, "native XDP refused; using generic XDP (slower)");
                    (l, "generic")
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("attaching the XDP program: {e} (native mode: {native})"),
                    ))
                }
            },
        };
        Ok(Steering {
            svcs,
            xsks,
            _prog: prog,
            _link: link,
            mode,
            installed: Mutex::new(Vec::new()),
        })
    }

    /// Makes `services` — (VIP, protocol, port), host order; port 0 for an
    /// all-ports service — the set steered to the sockets.
    pub fn set_services(&self, services: &[(u32, u8, u16)]) -> io::Result<()> {
        let keys: Vec<[u8; 8]> = services
            .iter()
            .map(|&(vip, proto, port)| {
                let (v, p) = (vip.to_be_bytes(), port.to_be_bytes());
                [v[0], v[1], v[2], v[3], p[0], p[1], proto, 0]
            })
            .collect();
        let mut have = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        for old in have.iter().filter(|k| !keys.contains(k)) {
            map_delete(&self.svcs, old)?;
        }
        for new in keys.iter().filter(|k| !have.contains(k)) {
            map_update(&self.svcs, new, &1u32.to_ne_bytes())?;
        }
        *have = keys;
        Ok(())
    }

    /// Steers queue `queue`'s VIP traffic to `sock`.
    pub fn register(&self, queue: u32, sock: &XdpSocket) -> io::Result<()> {
        map_update(
            &self.xsks,
            &queue.to_ne_bytes(),
            &(sock.fd.as_raw_fd() as u32).to_ne_bytes(),
        )
    }
}

/// Number of receive queues of `ifname` (sysfs), at least 1.
pub fn rx_queues(ifname: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// Maps `len` bytes (a multiple of 2 MiB) of UMEM on a 2 MiB boundary
/// with transparent huge pages asked for: every frame lands on another
/// 4 KiB page otherwise, and a TLB miss per frame costs (much more so
/// under nested paging).
fn map_umem(len: usize) -> io::Result<*mut libc::c_void> {
    const HUGE: usize = 2 << 20;
    // SAFETY: anonymous private mapping, checked below.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = (raw as usize).next_multiple_of(HUGE);
    let head = start - raw as usize;
    // SAFETY: trims the unaligned head and the tail of our own mapping,
    // advises and touches the aligned middle.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if HUGE - head > 0 {
            libc::munmap((start + len) as *mut libc::c_void, HUGE - head);
        }
        let umem = start as *mut libc::c_void;
        libc::madvise(umem, len, libc::MADV_HUGEPAGE);
        for off in (0..len).step_by(4096) {
            std::ptr::write_volatile((start + off) as *mut u8, 0);
        }
        Ok(umem)
    }
}

/// One mmap'd AF_XDP ring: producer and consumer indices shared with the
/// kernel, and a local copy of ours.
struct Ring {
    map: *mut libc::c_void,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    /// Our index: the producer for fill/transmit, the consumer for
    /// receive/completion.
    local: u32,
}

impl Ring {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, entry: usize, pgoff: u64) -> io::Result<Ring> {
        let map_len = off.desc as usize + RING as usize * entry;
        // SAFETY: maps the ring the kernel set up for this socket; checked.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = map.cast::<u8>();
        // SAFETY: the offsets come from the kernel and lie inside the map.
        let (producer, consumer, desc) = unsafe {
            (
                base.add(off.producer as usize).cast::<AtomicU32>(),
                base.add(off.consumer as usize).cast::<AtomicU32>(),
                base.add(off.desc as usize),
            )
        };
        // SAFETY: as above; both indices start at the kernel's values.
        let local = unsafe { (*producer).load(Ordering::Relaxed) };
        Ok(Ring {
            map,
            map_len,
            producer,
            consumer,
            desc,
            mask: RING - 1,
            local,
        })
    }

    // --- consumer side (receive, completion)
    fn available(&self) -> u32 {
        // SAFETY: points into the live map.
        let prod = unsafe { (*self.producer).load(Ordering::Acquire) };
        prod.wrapping_sub(self.local)
    }
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // SAFETY: points into the live map.
        unsafe { (*self.consumer).store(self.local, Ordering::Release) };
    }

    // --- producer side (fill, transmit)
    fn free_slots(&self) -> u32 {
        // SAFETY: points into the live map.
        let cons = unsafe { (*self.consumer).load(Ordering::Acquire) };
        RING - self.local.wrapping_sub(cons)
    }
    fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        // SAFETY: points into the live map.
        unsafe { (*self.producer).store(self.local, Ordering::Release) };
    }
    fn pending(&self) -> bool {
        // SAFETY: points into the live map.
        let cons = unsafe { (*self.consumer).load(Ordering::Acquire) };
        cons != self.local
    }

    /// Entry `i` past our index, as a pointer to a `T`.
    fn entry<T>(&self, i: u32) -> *mut T {
        let idx = (self.local.wrapping_add(i) & self.mask) as usize;
        // SAFETY: idx < RING entries of size_of::<T>() in the map.
        unsafe { self.desc.add(idx * size_of::<T>()).cast() }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps what map() mapped.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v is a valid T of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// An AF_XDP socket bound to one queue, with its UMEM and four rings.
pub struct XdpSocket {
    fd: OwnedFd,
    umem: *mut u8,
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    /// Chunk addresses neither in a ring nor in flight.
    free: Vec<u64>,
    /// Drop counters already reported.
    dropped_seen: u64,
}

// SAFETY: the socket, its maps and its UMEM are used by one thread at a
// time (moved into the worker that owns them).
unsafe impl Send for XdpSocket {}

impl XdpSocket {
    pub fn open(ifindex: u32, queue: u32) -> io::Result<XdpSocket> {
        // SAFETY: socket() returns a new fd or -1.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = CHUNK * FRAMES;
        let umem = map_umem(len)?;
        // From here the UMEM is unmapped by Drop, once the socket exists.
        let mut reg: libc::xdp_umem_reg = unsafe { zeroed() };
        reg.addr = umem as u64;
        reg.len = len as u64;
        reg.chunk_size = CHUNK as u32;
        let setup = || -> io::Result<(Ring, Ring, Ring, Ring)> {
            setopt(raw, libc::XDP_UMEM_REG, &reg)?;
            setopt(raw, libc::XDP_UMEM_FILL_RING, &RING)?;
            setopt(raw, libc::XDP_UMEM_COMPLETION_RING, &RING)?;
            setopt(raw, libc::XDP_RX_RING, &RING)?;
            setopt(raw, libc::XDP_TX_RING, &RING)?;
            // SAFETY: zeroed offsets are valid; the kernel fills them.
            let mut off: libc::xdp_mmap_offsets = unsafe { zeroed() };
            let mut olen = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
            // SAFETY: off is writable for olen bytes.
            cvt(unsafe {
                libc::getsockopt(
                    raw,
                    libc::SOL_XDP,
                    libc::XDP_MMAP_OFFSETS,
                    (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                    &mut olen,
                )
            })?;
            let rx = Ring::map(raw, &off.rx, size_of::<libc::xdp_desc>(), 0)?;
            let tx = Ring::map(raw, &off.tx, size_of::<libc::xdp_desc>(), 0x8000_0000)?;
            let fill = Ring::map(raw, &off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING)?;
            let comp = Ring::map(raw, &off.cr, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING)?;
            Ok((rx, tx, fill, comp))
        };
        let (rx, tx, fill, comp) = match setup() {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: unmaps the UMEM mapped above.
                unsafe { libc::munmap(umem, len) };
                return Err(e);
            }
        };
        let mut s = XdpSocket {
            fd,
            umem: umem.cast(),
            rx,
            tx,
            fill,
            comp,
            free: (0..FRAMES as u64).rev().map(|i| i * CHUNK as u64).collect(),
            dropped_seen: 0,
        };
        // SAFETY: zeroed sockaddr_xdp is valid; fields set below.
        let mut sa: libc::sockaddr_xdp = unsafe { zeroed() };
        sa.sxdp_family = libc::AF_XDP as u16;
        sa.sxdp_flags = libc::XDP_COPY;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        // SAFETY: sa is a valid sockaddr_xdp of the size passed.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("binding to queue {queue}: {e}")))?;
        s.refill();
        Ok(s)
    }

    /// Tops the fill ring up from the free list.
    fn refill(&mut self) {
        let n = self.fill.free_slots().min(self.free.len() as u32);
        for i in 0..n {
            let Some(a) = self.free.pop() else { break };
            // SAFETY: entry i of the fill ring is ours until submitted.
            unsafe { *self.fill.entry::<u64>(i) = a };
        }
        if n > 0 {
            self.fill.submit(n);
        }
    }

    /// Takes the chunks the kernel has finished transmitting.
    fn reclaim(&mut self) {
        let n = self.comp.available();
        for i in 0..n {
            // SAFETY: entry i of the completion ring was produced.
            let a = unsafe { *self.comp.entry::<u64>(i) };
            self.free.push(a & !(CHUNK as u64 - 1));
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// Asks the kernel to transmit what the transmit ring holds: copy mode
    /// sends only from `sendto`, at most 32 frames per call (EAGAIN while
    /// more are left), so it is called until the ring is drained.
    fn kick(&self) {
        for _ in 0..RING / 32 {
            // SAFETY: a zero-length send on our own socket.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                return;
            }
        }
    }

    fn wait(&self, ms: i32) {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    }

    /// Frames the kernel dropped for this socket since the last call
    /// (ring full, no fill chunk, invalid descriptors).
    pub fn take_drops(&mut self) -> u64 {
        // SAFETY: zeroed statistics are valid; the kernel fills them.
        let mut st: libc::xdp_statistics = unsafe { zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: st is writable for len bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return 0;
        }
        let total = st.rx_dropped + st.rx_ring_full + st.rx_fill_ring_empty_descs;
        let d = total.saturating_sub(self.dropped_seen);
        self.dropped_seen = total;
        d
    }

    /// As [`XdpSocket::chunk`], to read.
    fn frame(&self, addr: u64, len: usize) -> &[u8] {
        let (start, n) = span(addr, len);
        // SAFETY: as in `chunk`.
        unsafe { std::slice::from_raw_parts(self.umem.add(start), n) }
    }

    fn chunk(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let (start, n) = span(addr, len);
        // SAFETY: [start, start + n) lies inside the UMEM, and the chunk is
        // owned by user space (taken from the receive ring or the free list).
        unsafe { std::slice::from_raw_parts_mut(self.umem.add(start), n) }
    }
}

/// `len` bytes at UMEM offset `addr`, clipped to the UMEM: (start, length).
fn span(addr: u64, len: usize) -> (usize, usize) {
    let end = (addr as usize).saturating_add(len).min(CHUNK * FRAMES);
    let start = (addr as usize).min(end);
    (start, end - start)
}

impl Drop for XdpSocket {
    fn drop(&mut self) {
        // The rings unmap themselves; the socket closes after this.
        // SAFETY: unmaps the UMEM mapped in open().
        unsafe { libc::munmap(self.umem.cast(), CHUNK * FRAMES) };
    }
}

/// The worker loop over an AF_XDP socket: receive a batch, process each
/// frame in place, queue the frames to send on the transmit ring, kick.
pub fn run(mut sock: XdpSocket, mut proc: Processor, clock: Arc<AtomicU32>, stop: Arc<AtomicBool>) {
    proc.infer_partial_checksums(true);
    let mut out: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; OUT_BUF]).collect();
    let mut turns = 0u32;
    while !stop.load(Ordering::Relaxed) {
        sock.reclaim();
        sock.refill();
        let n = sock.rx.available().min(BATCH as u32);
        if n == 0 {
            if sock.tx.pending() {
                sock.kick();
            }
            sock.wait(100);
            continue;
        }
        let now = clock.load(Ordering::Relaxed);
        proc.stats().add(Counter::XdpRxFrames, n as u64);
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(1024) {
            let d = sock.take_drops();
            if d > 0 {
                proc.stats().add(Counter::RxDropped, d);
            }
        }
        proc.prefetch_batch((0..n).map(|i| {
            // SAFETY: entry i of the receive ring was produced.
            let d = unsafe { *sock.rx.entry::<libc::xdp_desc>(i) };
            sock.frame(d.addr, d.len as usize)
        }));
        let mut room = sock.tx.free_slots();
        let (mut queued, mut bytes, mut failed) = (0u32, 0u64, 0u64);
        for i in 0..n {
            // SAFETY: entry i of the receive ring was produced.
            let d = unsafe { *sock.rx.entry::<libc::xdp_desc>(i) };
            let frame = sock.chunk(d.addr, d.len as usize);
            let v = proc.process_into(frame, false, now, &mut out[i as usize]);
            let base = d.addr & !(CHUNK as u64 - 1);
            let o = &out[i as usize];
            // Up to two frames to send: (chunk address, length).
            let mut send: [Option<(u64, usize)>; 2] = [None, None];
            match v {
                Verdict::SendInput(len) => send[0] = Some((d.addr, len.min(d.len as usize))),
                // The input is spent: the built frame goes into its chunk.
                Verdict::SendOutput(len) if len <= CHUNK => {
                    sock.chunk(base, len).copy_from_slice(&o[..len]);
                    send[0] = Some((base, len));
                }
                // Two fragments: the second needs a spare chunk and both
                // need room on the transmit ring, or neither is sent.
                Verdict::SendOutputs(a, b) if a.max(b) <= CHUNK && room >= 2 => {
                    match sock.free.pop() {
                        Some(spare) => {
                            sock.chunk(base, a).copy_from_slice(&o[..a]);
                            sock.chunk(spare, b).copy_from_slice(&o[a..a + b]);
                            send = [Some((base, a)), Some((spare, b))];
                        }
                        None => failed += 2,
                    }
                }
                Verdict::SendOutput(_) => failed += 1,
                Verdict::SendOutputs(..) => failed += 2,
                Verdict::Pass | Verdict::Drop(_) => {}
            }
            if send[0].is_none() {
                sock.free.push(base);
            }
            for (addr, len) in send.into_iter().flatten() {
                if room == 0 {
                    failed += 1;
                    sock.free.push(addr & !(CHUNK as u64 - 1));
                    continue;
                }
                // SAFETY: transmit entry `queued` is ours until submit.
                unsafe {
                    *sock.tx.entry::<libc::xdp_desc>(queued) = libc::xdp_desc {
                        addr,
                        len: len as u32,
                        options: 0,
                    }
                };
                queued += 1;
                room -= 1;
                bytes += len as u64;
            }
        }
        sock.rx.release(n);
        if queued > 0 {
            sock.tx.submit(queued);
            sock.kick();
            proc.stats().add(Counter::TxFrames, queued as u64);
            proc.stats().add(Counter::TxBytes, bytes);
        }
        if failed > 0 {
            proc.stats().add(Counter::TxErrors, failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r1 = r6 → bf 61 00 00 00 00 00 00
        assert_eq!(
            insn(0xbf, 1, 6, 0, 0).to_le_bytes(),
            [0xbf, 0x61, 0, 0, 0, 0, 0, 0]
        );
        // r2 += -4 → 07 02 00 00 fc ff ff ff
        assert_eq!(
            insn(0x07, 2, 0, 0, -4).to_le_bytes(),
            [0x07, 0x02, 0, 0, 0xfc, 0xff, 0xff, 0xff]
        );
        // *(u32 *)(r10 - 4) = r5 → 63 5a fc ff 00 00 00 00
        assert_eq!(
            insn(0x63, 10, 5, -4, 0).to_le_bytes(),
            [0x63, 0x5a, 0xfc, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn every_branch_lands_on_a_label() {
        let p = program(7, 8);
        let at = |code: u64| p.iter().position(|&i| i == code).expect("label");
        let labels = [
            at(insn(0x71, 7, 2, 14, 0)),       // ports: load the IHL
            at(insn(0x61, 2, 6, 16, 0)),       // redirect: load the queue
            at(insn(0xb7, 0, 0, 0, XDP_PASS)), // pass
        ];
        let mut branches = 0;
        for (pc, &i) in p.iter().enumerate() {
            let code = i as u8;
            if matches!(code, 0x2d | 0x3d | 0x55 | 0x15) {
                let off = (i >> 16) as u16 as i16;
                let to = (pc as i64 + 1 + off as i64) as usize;
                assert!(labels.contains(&to), "branch at {pc} to {to}");
                branches += 1;
            }
        }
        assert_eq!(branches, 9);
        assert_eq!(p.last(), Some(&insn(0x95, 0, 0, 0, 0)));
    }
}
