//! Policies through the real per-packet pipeline: persistence templates
//! (§5.2.6) — clients of one /24 stick to one real server while the template
//! lives, and the template outlives its timeout while connections still use
//! it — and the drop_packet DoS defence (§5.2.9).

use std::sync::Arc;

use l4_front::config::Config;
use l4_front::datapath::{Processor, Verdict};
use l4_front::packet::build::{tcp_frame, TcpSpec, DIRECTOR_MAC};
use l4_front::service::Shared;
use l4_front::stats::WorkerStats;

fn setup(persistence: u32) -> (Arc<Shared>, Processor) {
    let cfg = Config::parse(&format!(
        r#"
[director]
interface = "d0"
[timeouts]
tcp_syn = 30
[[service]]
vip = "10.201.2.100"
port = 80
scheduler = "rr"
persistence = {persistence}
persistence_netmask = 24
[[service.real_server]]
address = "10.201.2.11"
mac = "02:00:00:00:00:0b"
[[service.real_server]]
address = "10.201.2.12"
mac = "02:00:00:00:00:0c"
"#
    ))
    .unwrap();
    let shared = Arc::new(Shared::new(&cfg, DIRECTOR_MAC, 0x0ac9_0202, 1));
    let st = Arc::new(WorkerStats::new(&shared.shape()));
    (shared.clone(), Processor::new(shared, st))
}

/// The last MAC byte of the real server a SYN from `src:sport` went to.
fn syn(p: &mut Processor, src: [u8; 4], sport: u16, now: u32) -> u8 {
    let mut f = tcp_frame(TcpSpec {
        src,
        sport,
        ..TcpSpec::syn()
    });
    match p.process(&mut f, false, now) {
        Verdict::SendInput(_) => f[5],
        v => panic!("{v:?}"),
    }
}

#[test]
fn without_persistence_rr_alternates() {
    let (_, mut p) = setup(0);
    let a = syn(&mut p, [10, 1, 1, 2], 1000, 0);
    let b = syn(&mut p, [10, 1, 1, 3], 1000, 0);
    assert_ne!(a, b);
}

#[test]
fn same_netmask_sticks_and_template_is_held_open() {
    let (shared, mut p) = setup(60);
    let a = syn(&mut p, [10, 1, 1, 2], 1000, 0);
    assert_eq!(syn(&mut p, [10, 1, 1, 3], 1001, 0), a, "same /24");
    assert_eq!(syn(&mut p, [10, 1, 1, 200], 1002, 1), a, "same /24");
    let other = syn(&mut p, [10, 1, 2, 2], 1003, 1);
    assert_ne!(other, a, "another /24 is scheduled afresh (rr)");
    // 3 + 1 connections and 2 templates.
    assert_eq!(shared.table.len(), 6);
    // Keep one connection alive past the template's 60 s by refreshing it
    // (ACKs establish it: 900 s).
    let mut ack = tcp_frame(TcpSpec {
        src: [10, 1, 1, 2],
        sport: 1000,
        flags: l4_front::packet::parse::TCP_ACK,
        ..TcpSpec::syn()
    });
    p.process(&mut ack, false, 10);
    // The slow timer runs every second, as the director's runs it: a
    // connection ending releases its template in the second it expires,
    // before the template's own deadline is checked.
    for now in 11..=100 {
        shared.table.expire(now, |c| shared.on_expire(c));
    }
    // SYN_RECV ones (30 s) are gone, the template of the /24 is held open
    // by the established connection; the other /24's template expired.
    assert_eq!(shared.table.len(), 2);
    assert_eq!(syn(&mut p, [10, 1, 1, 9], 1004, 101), a);
}

/// drop_packet = 3 (always): one new connection in drop_rate is refused
/// before scheduling; existing connections are not affected.
#[test]
fn drop_packet_refuses_one_new_connection_in_rate() {
    let cfg = Config::parse(
        r#"
[director]
interface = "d0"
[defense]
drop_packet = 3
drop_rate = 4
[[service]]
vip = "10.201.2.100"
port = 80
[[service.real_server]]
address = "10.201.2.11"
mac = "02:00:00:00:00:0b"
"#,
    )
    .unwrap();
    let shared = Arc::new(Shared::new(&cfg, DIRECTOR_MAC, 0x0ac9_0202, 1));
    let st = Arc::new(WorkerStats::new(&shared.shape()));
    let mut p = Processor::new(shared.clone(), st.clone());
    let mut refused = 0;
    for port in 0..40u16 {
        let mut f = tcp_frame(TcpSpec {
            sport: 2000 + port,
            ..TcpSpec::syn()
        });
        if let Verdict::Drop(r) = p.process(&mut f, false, 0) {
            assert_eq!(r.name(), "rate_limited");
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    assert_eq!(shared.table.len(), 30);
}

/// secure_tcp = 3 (always), with packets through the pipeline: a spoofed
/// ACK (wrong sequence number) neither establishes the entry nor extends
/// it; the handshake's ACK (ISN + 1) does; invalid flag combinations and
/// out-of-window RSTs change nothing; half-open entries get the short
/// timeout.
#[test]
fn secure_tcp_changes_state_only_on_valid_sequences() {
    use l4_front::conn::{ConnKey, ConnState};
    use l4_front::packet::parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    let cfg = Config::parse(
        r#"
[director]
interface = "d0"
[defense]
secure_tcp = 3
secure_syn_timeout = 5
[[service]]
vip = "10.201.2.100"
port = 80
[[service.real_server]]
address = "10.201.2.11"
mac = "02:00:00:00:00:0b"
"#,
    )
    .unwrap();
    let shared = Arc::new(Shared::new(&cfg, DIRECTOR_MAC, 0x0ac9_0202, 1));
    shared.defend(0); // switches secure_tcp on
    let st = Arc::new(WorkerStats::new(&shared.shape()));
    let mut p = Processor::new(shared.clone(), st);
    let isn = 0x1000_0000u32;
    let mut send = |sport: u16, flags: u8, seq: u32, now: u32| {
        let mut f = tcp_frame(TcpSpec {
            sport,
            flags,
            seq,
            ..TcpSpec::syn()
        });
        p.process(&mut f, false, now)
    };
    let key = |cport| ConnKey {
        caddr: 0x0ac9_0102,
        vaddr: 0x0ac9_0264,
        cport,
        vport: 80,
        proto: 6,
    };
    let state = |cport| shared.table.get(&key(cport)).map(|c| c.state);
    assert!(matches!(send(1000, TCP_SYN, isn, 0), Verdict::SendInput(_)));
    // Spoofed ACK: forwarded (the real server drops it), entry unchanged.
    assert!(matches!(
        send(1000, TCP_ACK, 12345, 1),
        Verdict::SendInput(_)
    ));
    assert_eq!(state(1000), Some(ConnState::SynRecv));
    let deadline = shared.table.get(&key(1000)).unwrap().expires;
    assert_eq!(
        deadline, 5,
        "secure_syn_timeout, not refreshed by the spoof"
    );
    // The handshake's ACK establishes it.
    send(1000, TCP_ACK, isn + 1, 2);
    assert_eq!(state(1000), Some(ConnState::Established));
    // Data moves the window; SYN+FIN and an out-of-window RST are ignored.
    let mut f = tcp_frame(TcpSpec {
        sport: 1000,
        flags: TCP_ACK,
        seq: isn + 1,
        payload: vec![b'x'; 100],
        ..TcpSpec::syn()
    });
    p.process(&mut f, false, 3);
    let mut send = |sport: u16, flags: u8, seq: u32, now: u32| {
        let mut f = tcp_frame(TcpSpec {
            sport,
            flags,
            seq,
            ..TcpSpec::syn()
        });
        p.process(&mut f, false, now)
    };
    assert_eq!(shared.table.get(&key(1000)).unwrap().seq_next, isn + 101);
    send(1000, TCP_SYN | TCP_FIN, isn + 101, 4);
    send(1000, TCP_RST, isn.wrapping_add(1 << 30), 4);
    assert_eq!(state(1000), Some(ConnState::Established));
    // A FIN in the window half-closes it, with the short timeout.
    send(1000, TCP_FIN | TCP_ACK, isn + 101, 5);
    assert_eq!(state(1000), Some(ConnState::FinWait));
    assert_eq!(shared.table.get(&key(1000)).unwrap().expires, 10);
    // A second half-open entry, never completed, is gone after 5 s.
    send(2000, TCP_SYN, 7, 10);
    shared.table.expire(16, |c| shared.on_expire(c));
    assert_eq!(state(2000), None);
    assert_eq!(state(1000), None, "FIN_WAIT with the short timeout too");
}
