//! Failover with connection synchronisation (§2.3.1.3, §5.2.10).
//!
//! The master director sends the connections it creates or whose state
//! changes to the backup every `interval_ms` (100 ms), in UDP datagrams that
//! double as its heartbeat (an empty one when there is nothing new). The
//! backup inserts them into its own table and does not answer ARP for the
//! VIPs; after `dead_ms` without a datagram it takes over: it starts
//! answering ARP and announces the VIPs with gratuitous ARP, so the router
//! sends the clients' packets to it, and established connections continue
//! to the same real servers because their entries are already there.
//!
//! Wire format (big endian): `b"L4S1"`, `u16` record count, then 32-byte
//! records: caddr u32, vaddr u32, cport u16, vport u16, proto u8, state u8,
//! flags u8 (1 = nat, 2 = persistent, 4 = tun), pad u8, raddr u32, rport u16, svc u16,
//! rs u16, client MAC [u8; 6].

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::{Conn, ConnKey, ConnState};

pub const MAGIC: &[u8; 4] = b"L4S1";
pub const RECORD: usize = 32;
/// Records per datagram (stays under a 1,500-byte MTU).
pub const PER_DATAGRAM: usize = 40;

fn state_byte(s: ConnState) -> u8 {
    s as u8
}

fn state_from(b: u8) -> Option<ConnState> {
    Some(match b {
        0 => ConnState::SynRecv,
        1 => ConnState::Established,
        2 => ConnState::FinWait,
        3 => ConnState::Close,
        4 => ConnState::Udp,
        5 => ConnState::Template,
        _ => return None,
    })
}

/// Encodes up to [`PER_DATAGRAM`] connections into one datagram.
pub fn encode(conns: &[Conn], out: &mut Vec<u8>) {
    out.clear();
    let n = conns.len().min(PER_DATAGRAM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for c in &conns[..n] {
        out.extend_from_slice(&c.key.caddr.to_be_bytes());
        out.extend_from_slice(&c.key.vaddr.to_be_bytes());
        out.extend_from_slice(&c.key.cport.to_be_bytes());
        out.extend_from_slice(&c.key.vport.to_be_bytes());
        out.push(c.key.proto);
        out.push(state_byte(c.state));
        out.push(c.nat as u8 | (c.persistent as u8) << 1 | (c.tun as u8) << 2);
        out.push(0);
        out.extend_from_slice(&c.raddr.to_be_bytes());
        out.extend_from_slice(&c.rport.to_be_bytes());
        out.extend_from_slice(&c.svc.to_be_bytes());
        out.extend_from_slice(&c.rs.to_be_bytes());
        out.extend_from_slice(&c.cmac);
    }
}

/// Decodes a datagram; `None` if malformed (never panics).
pub fn decode(b: &[u8]) -> Option<Vec<Conn>> {
    if b.len() < 6 || &b[..4] != MAGIC {
        return None;
    }
    let n = u16::from_be_bytes([b[4], b[5]]) as usize;
    let body = b.get(6..6 + n.checked_mul(RECORD)?)?;
    let u32_at = |r: &[u8], o: usize| u32::from_be_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
    let u16_at = |r: &[u8], o: usize| u16::from_be_bytes([r[o], r[o + 1]]);
    body.chunks_exact(RECORD)
        .map(|r| {
            let mut cmac = [0u8; 6];
            cmac.copy_from_slice(&r[26..32]);
            Some(Conn {
                key: ConnKey {
                    caddr: u32_at(r, 0),
                    vaddr: u32_at(r, 4),
                    cport: u16_at(r, 8),
                    vport: u16_at(r, 10),
                    proto: r[12],
                },
                state: state_from(r[13])?,
                nat: r[14] & 1 != 0,
                tun: r[14] & 4 != 0,
                persistent: r[14] & 2 != 0,
                raddr: u32_at(r, 16),
                rport: u16_at(r, 20),
                svc: u16_at(r, 22),
                rs: u16_at(r, 24),
                cmac,
                seq_next: 0,
                seq_known: false,
                expires: 0,
                packets: 0,
                refs: 0,
                timeout: 0,
            })
        })
        .collect()
}

/// Master side: called every interval by the control loop.
pub struct Sender {
    sock: UdpSocket,
    peer: SocketAddr,
    buf: Vec<u8>,
}

impl Sender {
    pub fn new(peer: SocketAddr) -> std::io::Result<Sender> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        Ok(Sender {
            sock,
            peer,
            buf: Vec::with_capacity(6 + PER_DATAGRAM * RECORD),
        })
    }

    /// Sends `conns` (or an empty heartbeat).
    pub fn send(&mut self, conns: &[Conn]) {
        let mut chunks: Vec<&[Conn]> = conns.chunks(PER_DATAGRAM).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for c in chunks {
            encode(c, &mut self.buf);
            if let Err(e) = self.sock.send_to(&self.buf, self.peer) {
                tracing::debug!(error = %e, "sync send");
            }
        }
    }
}

/// Backup side: receives until `stop`, applying records through `apply`,
/// and calls `takeover` once when the master has been silent for `dead`.
pub fn receive(
    listen: SocketAddr,
    dead: Duration,
    stop: Arc<AtomicBool>,
    mut apply: impl FnMut(Conn),
    takeover: impl FnOnce(),
) -> std::io::Result<()> {
    let sock = UdpSocket::bind(listen)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 2048];
    let mut last = Instant::now();
    let mut takeover = Some(takeover);
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(conns) = decode(&buf[..n]) {
                    if takeover.is_some() {
                        last = Instant::now();
                    }
                    for c in conns {
                        apply(c);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if last.elapsed() >= dead {
            if let Some(t) = takeover.take() {
                t();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let c = Conn {
            key: ConnKey {
                caddr: 1,
                vaddr: 2,
                cport: 3,
                vport: 80,
                proto: 6,
            },
            raddr: 5,
            expires: 0,
            packets: 0,
            rport: 80,
            svc: 1,
            rs: 2,
            state: ConnState::Established,
            nat: true,
            tun: false,
            persistent: false,
            refs: 0,
            timeout: 0,
            cmac: [1, 2, 3, 4, 5, 6],
            seq_next: 0,
            seq_known: false,
        };
        let mut b = Vec::new();
        encode(&[c, c], &mut b);
        let d = decode(&b).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].key, c.key);
        assert_eq!((d[0].state, d[0].nat, d[0].cmac), (c.state, c.nat, c.cmac));
        for k in 0..b.len() {
            let _ = decode(&b[..k]);
        }
        b[6 + 13] = 99;
        assert!(decode(&b).is_none());
        assert!(decode(b"L4S1\xff\xff").is_none());
    }
}
