//! A switched-protocol tunnel (RFC 9110 §7.8, WebSocket's RFC 6455 §4):
//! after a real server answered 101 to a client's `Upgrade`, the two
//! connections carry the new protocol and the switch relays bytes both
//! ways without reading them.
//!
//! Each direction waits for readiness with an io_uring poll and then reads
//! with one non-blocking `recv`: a wait that is abandoned (idle deadline,
//! shutdown) holds no buffer and so can lose no byte. An end of stream is
//! passed on as a half-close (`shutdown(SHUT_WR)`) and the other direction
//! goes on until it ends too. The tunnel ends when both directions have
//! ended, when either side fails, after `limits.tunnel_idle_timeout` with
//! no byte either way, or when the worker shuts down.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;
use tracing::debug;

use crate::conn::Bufs;
use crate::obs::note;
use crate::uring::{poll, recv_now, write_range};
use crate::worker::Worker;

/// Bytes one read takes at most.
const READ_ROOM: usize = 16 * 1024;

/// Why one direction stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source closed its sending side (passed on as a half-close).
    Eof,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// Reading the source failed.
    ReadError,
    /// Writing to the destination failed or stalled.
    WriteError,
}

/// Counts an open tunnel for as long as it lives (also if its task is
/// dropped).
struct Active<'a>(&'a AtomicU64);

impl<'a> Active<'a> {
    fn new(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Relaxed);
        Active(g)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Relays between `client` and `server` until the tunnel ends. `bufs.cb`
/// holds client bytes that followed the upgrade request (already the new
/// protocol); they go to the server first. Both sockets are shut down on
/// return.
pub(crate) async fn run(
    w: &Rc<Worker>,
    client: &Rc<TcpStream>,
    server: &Rc<TcpStream>,
    bufs: &mut Bufs,
) {
    w.stats.tunnels_total.fetch_add(1, Relaxed);
    let _active = Active::new(&w.stats.tunnels_active);
    let idle = w.cfg.limits.tunnel_idle_timeout;
    let last = Cell::new(Instant::now());
    let (mut up_bytes, mut down_bytes) = (0u64, 0u64);
    let mut sd = w.shutdown.clone();
    let ends = {
        let up = relay(client, server, &mut bufs.cb, &last, idle, &mut up_bytes);
        let down = relay(server, client, &mut bufs.sb, &last, idle, &mut down_bytes);
        tokio::pin!(up, down);
        let (mut up_end, mut down_end) = (None, None);
        while !w.shutting_down() {
            tokio::select! {
                biased;
                r = sd.changed() => if r.is_err() { break },
                e = &mut up, if up_end.is_none() => up_end = Some(e),
                e = &mut down, if down_end.is_none() => down_end = Some(e),
            }
            let failed = |e: Option<End>| e.is_some_and(|e| e != End::Eof);
            if failed(up_end) || failed(down_end) || (up_end.is_some() && down_end.is_some()) {
                break;
            }
        }
        (up_end, down_end)
    };
    bufs.cb.clear();
    bufs.sb.clear();
    debug!(
        client_to_server = up_bytes,
        server_to_client = down_bytes,
        ends = ?ends,
        "tunnel closed"
    );
    note(|r| {
        r.body_in += up_bytes;
        r.server_out += up_bytes;
        r.body_out += down_bytes;
        r.server_in += down_bytes;
    });
    // A poll still pending holds a reference to its socket: shut both down
    // now so the peers see the end at once.
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// One direction: `from` → `to`, starting with what `buf` already holds.
/// `last` is the time of the latest byte either way (shared by both
/// directions, so a quiet direction does not end a busy tunnel).
async fn relay(
    from: &Rc<TcpStream>,
    to: &Rc<TcpStream>,
    buf: &mut Vec<u8>,
    last: &Cell<Instant>,
    idle: Duration,
    moved: &mut u64,
) -> End {
    loop {
        if !buf.is_empty() {
            let n = buf.len();
            let (r, b) = write_range(to, std::mem::take(buf), 0, n, idle).await;
            *buf = b;
            if r.is_err() {
                return End::WriteError;
            }
            *moved += n as u64;
            last.set(Instant::now());
            buf.clear();
        }
        match recv_now(from, buf, READ_ROOM) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return End::Eof;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return End::ReadError,
        }
        // Nothing queued: wait for the source, within the idle deadline.
        loop {
            let left = idle.saturating_sub(last.get().elapsed());
            if left.is_zero() {
                return End::Idle;
            }
            match crate::timer::timeout(left, poll(from, libc::POLLIN)).await {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => return End::ReadError,
                // The other direction may have moved meanwhile.
                Err(_) => continue,
            }
        }
    }
}
