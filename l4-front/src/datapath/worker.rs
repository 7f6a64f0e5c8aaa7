//! One worker thread: receive a batch (`recvmmsg`) → [`Processor`] per
//! frame → send the batch (`sendmmsg`), until told to stop. The clock is a
//! shared seconds counter the control thread advances, so the loop makes no
//! time system call per packet.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::afpacket::{PacketSocket, RxMeta};
use super::process::{Processor, Verdict, OUT_BUF};
use super::txring::TxRing;
use crate::packet::DropReason;
use crate::stats::Counter;

/// Receive buffer per frame: jumbo frames fit; GRO super-frames arrive
/// truncated and are dropped as oversize.
const RX_BUF: usize = 9216 + 256;
/// Frames per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 32;

pub fn run(
    sock: PacketSocket,
    mut txr: Option<TxRing>,
    mut proc: Processor,
    clock: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) {
    let mut rx: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; RX_BUF]).collect();
    let mut tx: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; OUT_BUF]).collect();
    let mut meta = [RxMeta {
        len: 0,
        csum_partial: false,
        truncated: false,
    }; BATCH];
    let mut verdicts = [Verdict::Pass; BATCH];
    let mut turns = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv_batch(&mut rx, &mut meta) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "packet socket receive failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let now = clock.load(Ordering::Relaxed);
        // Checked once per 1,024 batches: a syscall per batch would cost.
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(1024) {
            let dropped = sock.take_drops();
            if dropped > 0 {
                proc.stats().add(Counter::RxDropped, dropped);
            }
        }
        proc.prefetch_batch((0..n).map(|i| &rx[i][..meta[i].len.min(rx[i].len())]));
        for i in 0..n {
            verdicts[i] = if meta[i].truncated {
                proc.stats().count_drop(DropReason::Oversize);
                Verdict::Drop(DropReason::Oversize)
            } else {
                let len = meta[i].len;
                proc.process_into(&mut rx[i][..len], meta[i].csum_partial, now, &mut tx[i])
            };
        }
        let mut out: [&[u8]; 2 * BATCH] = [&[]; 2 * BATCH];
        let mut k = 0;
        let mut bytes = 0u64;
        for i in 0..n {
            for s in to_send(verdicts[i], &rx[i], &tx[i]) {
                if !s.is_empty() {
                    bytes += s.len() as u64;
                    out[k] = s;
                    k += 1;
                }
            }
        }
        if k == 0 {
            continue;
        }
        send_counted(&sock, &mut txr, &proc, &out[..k], bytes);
    }
}

/// The same loop over a TPACKET_V3 receive ring: frames are processed in
/// place in the ring and sent (`sendmmsg`) before their block is released.
pub fn run_ring(
    sock: PacketSocket,
    mut ring: super::ring::RxRing,
    mut txr: Option<TxRing>,
    mut proc: Processor,
    clock: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) {
    let mut frames = Vec::with_capacity(1024);
    let mut tx: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; OUT_BUF]).collect();
    let mut verdicts = [Verdict::Pass; BATCH];
    while !stop.load(Ordering::Relaxed) {
        match ring.next_block(&sock, 100, &mut frames) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "ring poll failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        }
        let now = clock.load(Ordering::Relaxed);
        // One getsockopt per block (a block is ≥ 1 ms of traffic).
        let dropped = sock.take_drops();
        if dropped > 0 {
            proc.stats().add(Counter::RxDropped, dropped);
        }
        for chunk in frames.chunks(BATCH) {
            // SAFETY: as below; only read, before the frames are processed.
            proc.prefetch_batch(
                chunk
                    .iter()
                    .map(|f| unsafe { std::slice::from_raw_parts(f.ptr.cast_const(), f.len) }),
            );
            for (i, f) in chunk.iter().enumerate() {
                verdicts[i] = if f.truncated {
                    proc.stats().count_drop(DropReason::Oversize);
                    Verdict::Drop(DropReason::Oversize)
                } else {
                    // SAFETY: the frame lies inside a block the kernel
                    // handed to us; nothing else aliases it until release.
                    let frame = unsafe { std::slice::from_raw_parts_mut(f.ptr, f.len) };
                    proc.process_into(frame, f.csum_partial, now, &mut tx[i])
                };
            }
            let mut out: [&[u8]; 2 * BATCH] = [&[]; 2 * BATCH];
            let mut k = 0;
            let mut bytes = 0u64;
            for (i, f) in chunk.iter().enumerate() {
                // SAFETY: as above; read-only view for sending.
                let input = unsafe { std::slice::from_raw_parts(f.ptr, f.len) };
                for s in to_send(verdicts[i], input, &tx[i]) {
                    if !s.is_empty() {
                        bytes += s.len() as u64;
                        out[k] = s;
                        k += 1;
                    }
                }
            }
            if k == 0 {
                continue;
            }
            send_counted(&sock, &mut txr, &proc, &out[..k], bytes);
        }
        ring.release();
    }
}

/// The frames a verdict sends (empty slices for none): the input frame,
/// or one or two frames of the processor's output buffer.
fn to_send<'a>(v: Verdict, input: &'a [u8], output: &'a [u8]) -> [&'a [u8]; 2] {
    let part = |b: &'a [u8], from: usize, n: usize| b.get(from..from + n).unwrap_or_default();
    match v {
        Verdict::SendInput(len) => [&input[..len.min(input.len())], &[]],
        Verdict::SendOutput(len) => [part(output, 0, len), &[]],
        Verdict::SendOutputs(a, b) => [part(output, 0, a), part(output, a, b)],
        Verdict::Pass | Verdict::Drop(_) => [&[], &[]],
    }
}

/// Sends a batch — through the transmit ring when there is one, the rest
/// (frames too large for a slot, or a ring still full) with `sendmmsg` —
/// and counts frames, bytes and failures.
fn send_counted(
    sock: &PacketSocket,
    txr: &mut Option<TxRing>,
    proc: &Processor,
    out: &[&[u8]],
    bytes: u64,
) {
    let mut rest = out;
    if let Some(r) = txr {
        let mut k = 0;
        while k < out.len() && r.queue(out[k]) {
            k += 1;
        }
        match r.flush() {
            Ok(n) => proc.stats().add(Counter::TxFrames, n as u64),
            Err(e) => {
                proc.stats().add(Counter::TxErrors, k as u64);
                tracing::debug!(error = %e, "ring send failed");
            }
        }
        rest = &out[k..];
    }
    proc.stats().add(Counter::TxBytes, bytes);
    if rest.is_empty() {
        return;
    }
    let k = rest.len();
    match sock.send_batch(rest) {
        Ok(sent) => {
            proc.stats().add(Counter::TxFrames, sent as u64);
            if sent < k {
                proc.stats().add(Counter::TxErrors, (k - sent) as u64);
            }
        }
        Err(e) => {
            proc.stats().add(Counter::TxErrors, k as u64);
            tracing::debug!(error = %e, "send failed");
        }
    }
}
