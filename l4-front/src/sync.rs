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
//! Fail-back (`failback = true` on the master, `peer` on the backup): a
//! director that owns the VIPs and hears its peer come back idle sends it
//! its whole table (paced); the backup, once active, also sends its new and
//! changed connections. A returning master listens first: when the backup
//! is active it takes its table for `failback_delay_ms`, then takes the VIPs
//! back with gratuitous ARP, and the backup steps down when it hears the
//! master active again. The whole state machine is [`Failover`].
//!
//! Wire format (big endian): `b"L4S2"`, `u16` record count, `u8` flags
//! (1 = the sender owns the VIPs), a pad byte, then 32-byte records: caddr u32, vaddr u32, cport u16, vport u16, proto u8, state u8,
//! flags u8 (1 = nat, 2 = persistent, 4 = tun), pad u8, raddr u32, rport u16, svc u16,
//! rs u16, client MAC [u8; 6].

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::{Conn, ConnKey, ConnState};

pub const MAGIC: &[u8; 4] = b"L4S2";
/// Bytes before the first record.
pub const HEADER: usize = 8;
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

/// Encodes up to [`PER_DATAGRAM`] connections into one datagram; `active`
/// says the sender owns the VIPs.
pub fn encode(conns: &[Conn], active: bool, out: &mut Vec<u8>) {
    out.clear();
    let n = conns.len().min(PER_DATAGRAM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.push(active as u8);
    out.push(0);
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

/// Decodes a datagram into (sender owns the VIPs, records); `None` if
/// malformed (never panics).
pub fn decode(b: &[u8]) -> Option<(bool, Vec<Conn>)> {
    if b.len() < HEADER || &b[..4] != MAGIC {
        return None;
    }
    let n = u16::from_be_bytes([b[4], b[5]]) as usize;
    let active = b[6] & 1 != 0;
    let body = b.get(HEADER..HEADER + n.checked_mul(RECORD)?)?;
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
                expires: 0,
                refs: 0,
                timeout: 0,
            })
        })
        .collect::<Option<Vec<Conn>>>()
        .map(|v| (active, v))
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
            buf: Vec::with_capacity(HEADER + PER_DATAGRAM * RECORD),
        })
    }

    /// Sends `conns` (or an empty heartbeat); `active`: this director owns
    /// the VIPs.
    pub fn send(&mut self, conns: &[Conn], active: bool) {
        let mut chunks: Vec<&[Conn]> = conns.chunks(PER_DATAGRAM).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for c in chunks {
            encode(c, active, &mut self.buf);
            if let Err(e) = self.sock.send_to(&self.buf, self.peer) {
                tracing::debug!(error = %e, "sync send");
            }
        }
    }
}

/// What the failover state machine asks the director to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// Own the VIPs: answer ARP, send gratuitous ARP, queue sync records.
    TakeOver,
    /// Stop answering ARP (the master is back and active).
    StepDown,
}

/// The failover state machine of one director (no I/O; unit tested).
#[derive(Debug)]
pub struct Failover {
    master: bool,
    failback: bool,
    dead: Duration,
    failback_delay: Duration,
    active: bool,
    /// When the peer was last heard (start-up counts as heard, so a
    /// director waits `dead` before taking over an unknown situation).
    last_heard: Instant,
    /// Since when the peer has been heard without a `dead` gap.
    present_since: Option<Instant>,
}

impl Failover {
    pub fn new(cfg: &crate::config::SyncConfig, now: Instant) -> Failover {
        let master = cfg.role == crate::config::SyncRole::Master;
        Failover {
            master,
            failback: cfg.failback,
            dead: Duration::from_millis(cfg.dead_ms),
            failback_delay: Duration::from_millis(cfg.failback_delay_ms),
            // A master without fail-back owns the VIPs from the start; a
            // fail-back master first listens for an active backup.
            active: master && !cfg.failback,
            last_heard: now,
            present_since: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A datagram from the peer; `peer_active`: it owns the VIPs. Returns
    /// the action and whether to send the peer the whole table (it has just
    /// appeared, e.g. restarted with an empty one).
    pub fn on_datagram(&mut self, now: Instant, peer_active: bool) -> (Action, bool) {
        self.last_heard = now;
        let appeared = self.present_since.is_none();
        let since = *self.present_since.get_or_insert(now);
        let action = match (self.active, peer_active) {
            (true, true) if !self.master => {
                // The master is back and has taken the VIPs.
                self.active = false;
                Action::StepDown
            }
            (false, _) if self.master && self.failback => {
                // Returning master: take the peer's table for a while,
                // then the VIPs.
                if now.duration_since(since) >= self.failback_delay {
                    self.active = true;
                    Action::TakeOver
                } else {
                    Action::None
                }
            }
            _ => Action::None,
        };
        (action, appeared)
    }

    /// Called periodically: takes over after `dead` of silence.
    pub fn tick(&mut self, now: Instant) -> Action {
        if now.duration_since(self.last_heard) < self.dead {
            return Action::None;
        }
        self.present_since = None;
        if self.active {
            return Action::None;
        }
        self.active = true;
        Action::TakeOver
    }
}

/// Receives on `listen` until `stop`: datagrams from `peer_ip` only (when
/// given) go through `on_datagram(peer_active, records)`; `tick` runs
/// every 50 ms.
pub fn receive(
    listen: SocketAddr,
    peer_ip: Option<std::net::IpAddr>,
    stop: Arc<AtomicBool>,
    mut on_datagram: impl FnMut(bool, Vec<Conn>),
    mut tick: impl FnMut(),
) -> std::io::Result<()> {
    let sock = UdpSocket::bind(listen)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 2048];
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if peer_ip.is_some_and(|ip| ip != from.ip()) {
                    tracing::debug!(%from, "sync datagram from a stranger ignored");
                } else if let Some((active, conns)) = decode(&buf[..n]) {
                    on_datagram(active, conns);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if last_tick.elapsed() >= Duration::from_millis(50) {
            last_tick = Instant::now();
            tick();
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
        };
        let mut b = Vec::new();
        encode(&[c, c], true, &mut b);
        let (active, d) = decode(&b).unwrap();
        assert!(active);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].key, c.key);
        assert_eq!((d[0].state, d[0].nat, d[0].cmac), (c.state, c.nat, c.cmac));
        for k in 0..b.len() {
            let _ = decode(&b[..k]);
        }
        b[HEADER + 13] = 99;
        assert!(decode(&b).is_none());
        assert!(decode(b"L4S1\xff\xff").is_none());
    }

    fn cfg(master: bool, failback: bool) -> crate::config::SyncConfig {
        crate::config::SyncConfig {
            role: if master {
                crate::config::SyncRole::Master
            } else {
                crate::config::SyncRole::Backup
            },
            listen: None,
            peer: None,
            interval_ms: 100,
            dead_ms: 500,
            failback,
            failback_delay_ms: 2000,
        }
    }

    #[test]
    fn backup_takes_over_on_silence_and_steps_down_for_the_master() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = Failover::new(&cfg(false, false), t0);
        assert!(!b.is_active());
        assert_eq!(b.on_datagram(ms(100), true), (Action::None, true));
        assert_eq!(b.on_datagram(ms(200), true), (Action::None, false));
        assert_eq!(b.tick(ms(600)), Action::None);
        assert_eq!(b.tick(ms(700)), Action::TakeOver);
        assert!(b.is_active());
        assert_eq!(b.tick(ms(5000)), Action::None);
        // The master returns idle: send it the table, keep the VIPs.
        assert_eq!(b.on_datagram(ms(6000), false), (Action::None, true));
        assert_eq!(b.on_datagram(ms(6100), false), (Action::None, false));
        // The master has taken the VIPs back.
        assert_eq!(b.on_datagram(ms(8100), true), (Action::StepDown, false));
        assert!(!b.is_active());
    }

    #[test]
    fn failback_master_waits_for_the_table_then_takes_the_vips_back() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut m = Failover::new(&cfg(true, true), t0);
        assert!(!m.is_active(), "listens first");
        assert_eq!(m.on_datagram(ms(100), true), (Action::None, true));
        assert_eq!(m.on_datagram(ms(1100), true), (Action::None, false));
        assert_eq!(m.on_datagram(ms(2100), true), (Action::TakeOver, false));
        assert!(m.is_active());
        // Alone (no backup heard): takes over after dead_ms.
        let mut alone = Failover::new(&cfg(true, true), t0);
        assert_eq!(alone.tick(ms(400)), Action::None);
        assert_eq!(alone.tick(ms(500)), Action::TakeOver);
        // Without fail-back a master owns the VIPs at once and keeps them.
        let mut plain = Failover::new(&cfg(true, false), t0);
        assert!(plain.is_active());
        assert_eq!(plain.on_datagram(ms(100), true), (Action::None, true));
        assert!(plain.is_active());
    }
}
