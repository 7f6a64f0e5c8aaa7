//! TPACKET_V3 receive ring: the kernel writes frames into blocks of a
//! shared mmap'd area and the worker walks a whole block per wake-up — no
//! copy and no system call per frame. Frames are rewritten in place and sent
//! with `sendmmsg` straight from the ring before the block is handed back.

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};

use super::afpacket::{map_ring, setopt, PacketSocket, SOL_PACKET};

const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

#[repr(C)]
struct TpacketReq3 {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
    tp_retire_blk_tov: u32,
    tp_sizeof_priv: u32,
    tp_feature_req_word: u32,
}

/// `struct tpacket_block_desc` with its `tpacket_hdr_v1`.
#[repr(C)]
struct BlockDesc {
    version: u32,
    offset_to_priv: u32,
    block_status: u32,
    num_pkts: u32,
    offset_to_first_pkt: u32,
    blk_len: u32,
    seq_num: u64,
    ts_first: [u32; 2],
    ts_last: [u32; 2],
}

/// `struct tpacket3_hdr` (the fields used).
#[repr(C)]
struct Tp3Hdr {
    tp_next_offset: u32,
    tp_sec: u32,
    tp_nsec: u32,
    tp_snaplen: u32,
    tp_len: u32,
    tp_status: u32,
    tp_mac: u16,
    tp_net: u16,
}

/// One frame in the ring.
pub struct RingFrame {
    pub ptr: *mut u8,
    pub len: usize,
    pub csum_partial: bool,
    pub truncated: bool,
}

pub struct RxRing {
    base: *mut u8,
    size: usize,
    block_size: usize,
    blocks: usize,
    next: usize,
}

// SAFETY: the mapping is owned by one worker thread at a time.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Sets `sock` (not yet bound) to TPACKET_V3 and maps `blocks` blocks of
    /// `block_size` bytes; blocks are handed over after at most `tov_ms`.
    pub fn setup(
        sock: &PacketSocket,
        block_size: usize,
        blocks: usize,
        tov_ms: u32,
    ) -> io::Result<RxRing> {
        let fd = sock.as_raw_fd();
        setopt(fd, SOL_PACKET, PACKET_VERSION, &TPACKET_V3)?;
        let frame_size = 2048u32;
        let req = TpacketReq3 {
            tp_block_size: block_size as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: frame_size,
            tp_frame_nr: (block_size * blocks) as u32 / frame_size,
            tp_retire_blk_tov: tov_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setopt(fd, SOL_PACKET, PACKET_RX_RING, &req)?;
        let size = block_size * blocks;
        let base = map_ring(fd, size)?;
        Ok(RxRing {
            base,
            size,
            block_size,
            blocks,
            next: 0,
        })
    }

    fn desc(&self, i: usize) -> *mut BlockDesc {
        // SAFETY: i < blocks, so the offset stays inside the mapping.
        unsafe { self.base.add(i * self.block_size).cast() }
    }

    /// Waits up to `timeout_ms` for the next block; returns its frames
    /// (pointers into the ring, valid until [`RxRing::release`]).
    pub fn next_block(
        &mut self,
        sock: &PacketSocket,
        timeout_ms: i32,
        frames: &mut Vec<RingFrame>,
    ) -> io::Result<bool> {
        frames.clear();
        let d = self.desc(self.next);
        // SAFETY: d points at a block descriptor inside the mapping; the
        // status word is read volatile and fenced (the kernel writes it).
        let ready = |d: *mut BlockDesc| unsafe {
            let s = std::ptr::read_volatile(std::ptr::addr_of!((*d).block_status));
            fence(Ordering::Acquire);
            s & TP_STATUS_USER != 0
        };
        if !ready(d) {
            let mut p = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                };
            }
            if !ready(d) {
                return Ok(false);
            }
        }
        let block = self.base.wrapping_add(self.next * self.block_size);
        // SAFETY: the kernel handed the block to us (TP_STATUS_USER); every
        // offset it wrote is checked against the block before use.
        unsafe {
            let n = std::ptr::read_volatile(std::ptr::addr_of!((*d).num_pkts)) as usize;
            let mut off =
                std::ptr::read_volatile(std::ptr::addr_of!((*d).offset_to_first_pkt)) as usize;
            for _ in 0..n {
                if off + size_of::<Tp3Hdr>() > self.block_size {
                    break;
                }
                let h = block.add(off) as *const Tp3Hdr;
                let hdr = std::ptr::read_unaligned(h);
                let start = off + hdr.tp_mac as usize;
                let len = hdr.tp_snaplen as usize;
                if start + len <= self.block_size {
                    frames.push(RingFrame {
                        ptr: block.add(start),
                        len,
                        csum_partial: hdr.tp_status & TP_STATUS_CSUMNOTREADY != 0,
                        truncated: hdr.tp_len > hdr.tp_snaplen,
                    });
                }
                if hdr.tp_next_offset == 0 {
                    break;
                }
                off += hdr.tp_next_offset as usize;
            }
        }
        Ok(true)
    }

    /// Hands the current block back to the kernel and moves on.
    pub fn release(&mut self) {
        let d = self.desc(self.next);
        fence(Ordering::Release);
        // SAFETY: the descriptor is inside the mapping and ours until now.
        unsafe {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*d).block_status), TP_STATUS_KERNEL)
        };
        self.next = (self.next + 1) % self.blocks;
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what setup mapped.
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}
