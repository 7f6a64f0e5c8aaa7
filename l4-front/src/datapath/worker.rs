//! One worker thread: receive → [`Processor::process`] → send, until told
//! to stop. The clock is a shared seconds counter the control thread
//! advances, so the loop makes no time system call per packet.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::afpacket::PacketSocket;
use super::process::{Processor, Verdict};
use crate::packet::DropReason;
use crate::stats::Counter;

/// Receive buffer: large enough for any frame the kernel may hand over
/// (GRO super-frames included, which are then dropped as oversize).
const RX_BUF: usize = 65_536 + 256;

pub fn run(sock: PacketSocket, mut proc: Processor, clock: Arc<AtomicU32>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; RX_BUF];
    while !stop.load(Ordering::Relaxed) {
        let meta = match sock.recv(&mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "packet socket receive failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        if meta.truncated {
            proc.stats().count_drop(DropReason::Oversize);
            continue;
        }
        let now = clock.load(Ordering::Relaxed);
        let frame = &mut buf[..meta.len];
        let v = proc.process(frame, meta.csum_partial, now);
        let out: &[u8] = match v {
            Verdict::SendInput(n) => &buf[..n],
            Verdict::SendOutput(n) => &proc.output()[..n],
            Verdict::Pass | Verdict::Drop(_) => continue,
        };
        let len = out.len() as u64;
        match sock.send(out) {
            Ok(()) => {
                proc.stats().add(Counter::TxFrames, 1);
                proc.stats().add(Counter::TxBytes, len);
            }
            Err(e) => {
                proc.stats().add(Counter::TxErrors, 1);
                tracing::debug!(error = %e, len, "send failed");
            }
        }
    }
}
