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

/// secure_tcp accepts a sequence number within this distance of the
/// client's next expected one (either side): retransmissions and reordering
/// pass; a spoofed packet with a random sequence number hits the window
/// with probability 2^23 / 2^32 = 1/512.
pub const SECURE_WINDOW: u32 = 1 << 22;

/// A TCP segment as secure_tcp sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Segment {
    /// The sequence number after this segment (SYN and FIN count one).
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add((self.flags & TCP_SYN != 0) as u32)
            .wrapping_add((self.flags & TCP_FIN != 0) as u32)
    }
}

/// Flag combinations no TCP sends (scans, floods): SYN with FIN or RST,
/// FIN with RST, FIN without ACK, and none of SYN/ACK/FIN/RST.
pub fn tcp_flags_invalid(flags: u8) -> bool {
    let f = flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST);
    f == 0
        || (f & TCP_SYN != 0 && f & (TCP_FIN | TCP_RST) != 0)
        || (f & TCP_FIN != 0 && f & TCP_RST != 0)
        || (f & TCP_FIN != 0 && f & TCP_ACK == 0)
}

/// Is `seq` within [`SECURE_WINDOW`] of `expected`?
pub fn seq_in_window(seq: u32, expected: u32) -> bool {
    let d = seq.wrapping_sub(expected) as i32;
    d.unsigned_abs() <= SECURE_WINDOW
}

/// secure_tcp (§5.2.9): the next state only when the packet is a valid
/// step of the client's half of the connection, else `None` (the packet is
/// forwarded, but the entry neither changes state nor lives longer, so
/// spoofed packets cannot establish entries or keep them alive). `next` is
/// the client's next expected sequence number, `None` when unknown (an
/// entry from the backup's sync, or a caller without sequence numbers):
/// then only the flags are checked.
///
/// - invalid flag combinations never count;
/// - SYN_RECV → ESTABLISHED only on the handshake's ACK: no SYN/FIN/RST and
///   the sequence number exactly ISN + 1 (IPVS' secure table keeps SYN_RECV
///   on any ACK for the same reason); a retransmitted SYN must carry the
///   same ISN;
/// - in any other state, ACK, FIN and RST must fall in the window; a SYN
///   reopens a closed or closing entry (port reuse) but not an established
///   one.
pub fn tcp_next_secure(cur: ConnState, seg: Segment, next: Option<u32>) -> Option<ConnState> {
    use ConnState::*;
    let flags = seg.flags;
    if tcp_flags_invalid(flags) {
        return None;
    }
    if flags & TCP_SYN != 0 {
        return match cur {
            SynRecv => match next {
                Some(n) if seg.seq.wrapping_add(1) != n => None,
                _ => Some(SynRecv),
            },
            Established => None,
            _ => Some(SynRecv),
        };
    }
    let in_window = match next {
        Some(n) if cur == SynRecv => seg.seq == n,
        Some(n) => seq_in_window(seg.seq, n),
        None => true,
    };
    if !in_window {
        return None;
    }
    Some(tcp_next(cur, flags))
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

    fn seg(flags: u8, seq: u32) -> Segment {
        Segment { flags, seq, len: 0 }
    }

    #[test]
    fn secure_establishes_only_on_the_handshake_ack() {
        let isn = 1000u32;
        let next = Some(isn + 1);
        assert_eq!(
            tcp_next_secure(SynRecv, seg(TCP_ACK, isn + 1), next),
            Some(Established)
        );
        // A spoofed ACK with another sequence number changes nothing.
        assert_eq!(tcp_next_secure(SynRecv, seg(TCP_ACK, 77), next), None);
        assert_eq!(tcp_next_secure(SynRecv, seg(TCP_ACK, isn + 2), next), None);
        // A retransmitted SYN keeps SYN_RECV; one with another ISN is ignored.
        assert_eq!(
            tcp_next_secure(SynRecv, seg(TCP_SYN, isn), next),
            Some(SynRecv)
        );
        assert_eq!(tcp_next_secure(SynRecv, seg(TCP_SYN, 5), next), None);
        // Without sequence numbers only the flags count.
        assert_eq!(
            tcp_next_secure(SynRecv, seg(TCP_ACK, 77), None),
            Some(Established)
        );
    }

    #[test]
    fn secure_rejects_invalid_flag_combinations() {
        for f in [
            0,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_RST,
            TCP_FIN | TCP_RST | TCP_ACK,
            TCP_FIN,
            0x08, // PSH alone
        ] {
            assert!(tcp_flags_invalid(f), "{f:#x}");
            assert_eq!(tcp_next_secure(Established, seg(f, 10), Some(10)), None);
        }
        for f in [
            TCP_SYN,
            TCP_ACK,
            TCP_ACK | TCP_FIN,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ] {
            assert!(!tcp_flags_invalid(f), "{f:#x}");
        }
    }

    #[test]
    fn secure_checks_the_window_for_ack_fin_rst() {
        let n = Some(u32::MAX - 10); // across the wrap
        assert_eq!(
            tcp_next_secure(Established, seg(TCP_ACK, 5), n),
            Some(Established)
        );
        assert_eq!(
            tcp_next_secure(Established, seg(TCP_ACK | TCP_FIN, u32::MAX - 20), n),
            Some(FinWait)
        );
        assert_eq!(tcp_next_secure(Established, seg(TCP_RST, 1 << 30), n), None);
        assert_eq!(
            tcp_next_secure(Established, seg(TCP_RST, 3), n),
            Some(Close)
        );
        // An established connection is not reopened by a SYN; a closed one is.
        assert_eq!(tcp_next_secure(Established, seg(TCP_SYN, 1), n), None);
        assert_eq!(tcp_next_secure(Close, seg(TCP_SYN, 1), n), Some(SynRecv));
        assert_eq!(seg(TCP_SYN | TCP_ACK, u32::MAX).end(), 0);
        assert_eq!(
            Segment {
                flags: TCP_ACK,
                seq: 10,
                len: 100
            }
            .end(),
            110
        );
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
