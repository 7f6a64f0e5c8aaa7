//! The half-connection state machine (`001_…`, IPVS "input only" table).
//!
//! In VS/DR and VS/TUN the director sees only the client → server half of a
//! TCP connection, so states advance on the client's flags alone: a SYN
//! opens (SYN_RECV), the first ACK establishes, a FIN half-closes (FIN_WAIT),
//! an RST closes. Each state has its own timeout; the entry expires when no
//! packet refreshes it in time.

use crate::packet::parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Connection states (one byte in the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    SynRecv,
    Established,
    FinWait,
    Close,
    /// UDP (and other portless or connectionless protocols).
    Udp,
    /// A persistence template (§5.2.6), not a connection.
    Template,
}

impl ConnState {
    /// IPVS counts ESTABLISHED as "active", everything else "inactive"
    /// (lc/wlc weigh them 256:1).
    pub fn is_active(self) -> bool {
        self == ConnState::Established
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SynRecv => "SYN_RECV",
            Self::Established => "ESTABLISHED",
            Self::FinWait => "FIN_WAIT",
            Self::Close => "CLOSE",
            Self::Udp => "UDP",
            Self::Template => "TEMPLATE",
        }
    }
}

/// Per-state timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_fin: u32,
    pub tcp_close: u32,
    pub udp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 900,
            tcp_fin: 60,
            tcp_close: 10,
            udp: 300,
        }
    }
}

impl Timeouts {
    pub fn of(&self, s: ConnState) -> u32 {
        match s {
            ConnState::SynRecv => self.tcp_syn,
            ConnState::Established => self.tcp_established,
            ConnState::FinWait => self.tcp_fin,
            ConnState::Close => self.tcp_close,
            ConnState::Udp => self.udp,
            // Templates carry their own timeout (the service's persistence).
            ConnState::Template => self.udp,
        }
    }
}

/// [`Timeouts`] the control plane may change while workers read them
/// (`l4adm --set`): one atomic per state. Entries pick a new value up at
/// their next packet.
#[derive(Debug)]
pub struct SharedTimeouts([std::sync::atomic::AtomicU32; 5]);

impl SharedTimeouts {
    pub fn new(t: Timeouts) -> Self {
        use std::sync::atomic::AtomicU32;
        SharedTimeouts([
            AtomicU32::new(t.tcp_syn),
            AtomicU32::new(t.tcp_established),
            AtomicU32::new(t.tcp_fin),
            AtomicU32::new(t.tcp_close),
            AtomicU32::new(t.udp),
        ])
    }

    pub fn get(&self) -> Timeouts {
        let g = |i: usize| self.0[i].load(std::sync::atomic::Ordering::Relaxed);
        Timeouts {
            tcp_syn: g(0),
            tcp_established: g(1),
            tcp_fin: g(2),
            tcp_close: g(3),
            udp: g(4),
        }
    }

    pub fn set(&self, t: Timeouts) {
        let vals = [t.tcp_syn, t.tcp_established, t.tcp_fin, t.tcp_close, t.udp];
        for (a, v) in self.0.iter().zip(vals) {
            a.store(v.max(1), std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn of(&self, s: ConnState) -> u32 {
        let i = match s {
            ConnState::SynRecv => 0,
            ConnState::Established => 1,
            ConnState::FinWait => 2,
            ConnState::Close => 3,
            ConnState::Udp | ConnState::Template => 4,
        };
        self.0[i].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// May a packet with these TCP flags create a connection entry? Only a
/// plain SYN schedules a new connection (IPVS default, and the basis of the
/// SYN-flood memory bound: non-SYN strays never allocate).
pub fn tcp_may_create(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// The next state after a client packet with TCP `flags` in state `cur`.
pub fn tcp_next(cur: ConnState, flags: u8) -> ConnState {
    use ConnState::*;
    if flags & TCP_RST != 0 {
        return Close;
    }
    if flags & TCP_SYN != 0 {
        return match cur {
            Established => Established,
            _ => SynRecv,
        };
    }
    if flags & TCP_FIN != 0 {
        return match cur {
            Close => Close,
            _ => FinWait,
        };
    }
    if flags & TCP_ACK != 0 {
        return match cur {
            SynRecv => Established,
            other => other,
        };
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::ConnState::*;
    use super::*;

    #[test]
    fn normal_life() {
        let mut s = SynRecv;
        s = tcp_next(s, TCP_ACK);
        assert_eq!(s, Established);
        s = tcp_next(s, TCP_ACK | 0x08);
        assert_eq!(s, Established);
        s = tcp_next(s, TCP_FIN | TCP_ACK);
        assert_eq!(s, FinWait);
        s = tcp_next(s, TCP_ACK);
        assert_eq!(s, FinWait);
        assert_eq!(tcp_next(s, TCP_RST), Close);
        assert_eq!(tcp_next(Close, TCP_SYN), SynRecv);
    }

    #[test]
    fn only_pure_syn_creates() {
        assert!(tcp_may_create(TCP_SYN));
        assert!(tcp_may_create(TCP_SYN | 0x40)); // ECE
        assert!(!tcp_may_create(TCP_SYN | TCP_ACK));
        assert!(!tcp_may_create(TCP_ACK));
        assert!(!tcp_may_create(TCP_RST));
    }

    #[test]
    fn timeouts_defaults() {
        let t = Timeouts::default();
        assert_eq!(t.of(SynRecv), 60);
        assert_eq!(t.of(Established), 900);
        assert_eq!(t.of(FinWait), 60);
        assert_eq!(t.of(Udp), 300);
    }
}
