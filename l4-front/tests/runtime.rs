//! Run-time changes (`l4adm`'s ipvsadm commands, through the control
//! socket's request handler) and all-ports persistence (§5.2.6), driven
//! through the real per-packet pipeline: new services and real servers take
//! new connections; deleted or edited ones leave existing connections
//! where they were.

use std::sync::Arc;

use l4_front::config::Config;
use l4_front::control::handle;
use l4_front::datapath::{Processor, Verdict};
use l4_front::packet::build::{tcp_frame, TcpSpec, DIRECTOR_MAC};
use l4_front::packet::parse::{TCP_ACK, TCP_SYN};
use l4_front::service::Shared;
use l4_front::stats::WorkerStats;

const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const MAC_D: [u8; 6] = [2, 0, 0, 0, 0, 0x0d];

fn setup(extra: &str) -> (Arc<Shared>, Processor) {
    let cfg = Config::parse(&format!(
        r#"
[director]
interface = "d0"
[[service]]
vip = "10.201.2.100"
port = 80
scheduler = "rr"
[[service.real_server]]
address = "10.201.2.11"
mac = "02:00:00:00:00:0b"
[[service.real_server]]
address = "10.201.2.12"
mac = "02:00:00:00:00:0c"
{extra}
"#
    ))
    .unwrap();
    let shared = Arc::new(Shared::new(&cfg, DIRECTOR_MAC, 0x0ac9_0202, 1));
    let st = Arc::new(WorkerStats::new(&shared.shape()));
    (shared.clone(), Processor::new(shared, st))
}

fn cmd(shared: &Shared, line: &str) -> String {
    handle(shared, &String::new, line)
}

fn ok(shared: &Shared, line: &str) {
    let r = cmd(shared, line);
    assert_eq!(r, "ok\n", "{line}: {r}");
}

/// Sets the MAC of real server `rs` of service `svc` (what the director's
/// neighbour resolution does for a server added at run time).
fn learn(shared: &Shared, svc: usize, rs: usize, mac: [u8; 6]) {
    shared.services().list[svc].set_mac(rs, mac);
}

fn packet(p: &mut Processor, sport: u16, dport: u16, flags: u8, src: [u8; 4]) -> Verdict {
    let mut f = tcp_frame(TcpSpec {
        src,
        sport,
        dport,
        flags,
        ..TcpSpec::syn()
    });
    let v = p.process(&mut f, false, 0);
    LAST.with(|l| *l.borrow_mut() = f);
    v
}

thread_local! {
    static LAST: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The last MAC byte of the real server a DR packet went to.
fn dr_to(p: &mut Processor, sport: u16, dport: u16, flags: u8) -> u8 {
    dr_from(p, sport, dport, flags, [10, 201, 1, 2])
}

fn dr_from(p: &mut Processor, sport: u16, dport: u16, flags: u8, src: [u8; 4]) -> u8 {
    match packet(p, sport, dport, flags, src) {
        Verdict::SendInput(_) => LAST.with(|l| l.borrow()[5]),
        v => panic!("port {sport}: {v:?}"),
    }
}

#[test]
fn a_service_and_its_servers_added_at_run_time_take_connections() {
    let (shared, mut p) = setup("");
    assert!(matches!(
        packet(&mut p, 1000, 443, TCP_SYN, [10, 201, 1, 2]),
        Verdict::Drop(_)
    ));
    ok(&shared, "ipvsadm -A -t 10.201.2.100:443 -s wrr");
    ok(
        &shared,
        "ipvsadm -a -t 10.201.2.100:443 -r 10.201.2.13 -g -w 2",
    );
    ok(
        &shared,
        "ipvsadm -a -t 10.201.2.100:443 -r 10.201.2.11:443 -w 1",
    );
    learn(&shared, 1, 0, MAC_D);
    learn(&shared, 1, 1, MAC_B);
    let got: Vec<u8> = (0..6)
        .map(|i| dr_to(&mut p, 2000 + i, 443, TCP_SYN))
        .collect();
    // wrr 2:1 → D D B D D B.
    assert_eq!(got, vec![0x0d, 0x0d, 0x0b, 0x0d, 0x0d, 0x0b]);
    let l = cmd(&shared, "list");
    assert!(l.contains("TCP  10.201.2.100:443 wrr"), "{l}");
    assert!(l.contains("10.201.2.13:443"), "{l}");
    // Duplicates and unknown services are refused, naming the problem.
    assert!(cmd(&shared, "ipvsadm -A -t 10.201.2.100:443").contains("exists"));
    assert!(cmd(&shared, "ipvsadm -a -t 10.201.2.100:443 -r 10.201.2.13").contains("exists"));
    assert!(cmd(&shared, "ipvsadm -a -t 10.9.9.9:1 -r 10.201.2.13").contains("no service"));
    assert!(cmd(&shared, "ipvsadm -A -t 10.201.2.100:444 -s nope").contains("scheduler"));
}

#[test]
fn deleting_a_real_server_keeps_its_connections_and_readding_revives_it() {
    let (shared, mut p) = setup("");
    let first = dr_to(&mut p, 1000, 80, TCP_SYN);
    assert_eq!(first, 0x0b);
    ok(&shared, "ipvsadm -d -t 10.201.2.100:80 -r 10.201.2.11");
    // The existing connection goes on to .11 …
    assert_eq!(dr_to(&mut p, 1000, 80, TCP_ACK), 0x0b);
    // … new ones only to .12.
    for i in 0..4 {
        assert_eq!(dr_to(&mut p, 1100 + i, 80, TCP_SYN), 0x0c);
    }
    let l = cmd(&shared, "list");
    assert!(!l.contains("10.201.2.11:80"), "{l}");
    assert!(
        cmd(&shared, "ipvsadm -e -t 10.201.2.100:80 -r 10.201.2.11 -w 3")
            .contains("no real server")
    );
    ok(&shared, "ipvsadm -a -t 10.201.2.100:80 -r 10.201.2.11 -w 1");
    let got: Vec<u8> = (0..4)
        .map(|i| dr_to(&mut p, 1200 + i, 80, TCP_SYN))
        .collect();
    assert!(got.contains(&0x0b) && got.contains(&0x0c), "{got:?}");
    // Its old connection is still counted on the revived slot.
    assert_eq!(dr_to(&mut p, 1000, 80, TCP_ACK), 0x0b);
}

#[test]
fn editing_the_method_applies_to_new_connections_only() {
    let (shared, mut p) = setup("");
    ok(&shared, "ipvsadm -d -t 10.201.2.100:80 -r 10.201.2.12");
    assert_eq!(dr_to(&mut p, 1000, 80, TCP_SYN), 0x0b);
    ok(&shared, "ipvsadm -e -t 10.201.2.100:80 -r 10.201.2.11 -i");
    assert!(cmd(&shared, "list").contains("Tunnel"));
    // The established connection stays VS/DR (the frame itself, MAC
    // rewritten) …
    assert_eq!(dr_to(&mut p, 1000, 80, TCP_ACK), 0x0b);
    // … a new one is encapsulated (a new frame, 20 bytes longer).
    match packet(&mut p, 1001, 80, TCP_SYN, [10, 201, 1, 2]) {
        Verdict::SendOutput(n) => {
            let input = LAST.with(|l| l.borrow().len());
            assert_eq!(n, input + 20);
        }
        v => panic!("{v:?}"),
    }
    // Weight edits take effect without a new snapshot: weight 0 drains.
    ok(&shared, "ipvsadm -e -t 10.201.2.100:80 -r 10.201.2.11 -w 0");
    assert!(matches!(
        packet(&mut p, 1002, 80, TCP_SYN, [10, 201, 1, 2]),
        Verdict::Drop(_)
    ));
}

#[test]
fn a_deleted_service_takes_no_new_connections_but_finishes_its_own() {
    let (shared, mut p) = setup("");
    let to = dr_to(&mut p, 1000, 80, TCP_SYN);
    ok(&shared, "ipvsadm -D -t 10.201.2.100:80");
    assert_eq!(dr_to(&mut p, 1000, 80, TCP_ACK), to);
    assert!(matches!(
        packet(&mut p, 1001, 80, TCP_SYN, [10, 201, 1, 2]),
        Verdict::Drop(_)
    ));
    assert!(!cmd(&shared, "list").contains("10.201.2.100:80"));
    assert!(
        shared.services().arp_vips.is_empty(),
        "no ARP for a gone VIP"
    );
    // Added again: the same slot, with its servers to be added anew.
    ok(&shared, "ipvsadm -A -t 10.201.2.100:80 -s rr");
    assert!(matches!(
        packet(&mut p, 1002, 80, TCP_SYN, [10, 201, 1, 2]),
        Verdict::Drop(_)
    ));
    ok(&shared, "ipvsadm -a -t 10.201.2.100:80 -r 10.201.2.12");
    assert_eq!(dr_to(&mut p, 1003, 80, TCP_SYN), 0x0c);
}

#[test]
fn set_changes_the_timeouts_and_edit_service_the_scheduler() {
    let (shared, _p) = setup("");
    ok(&shared, "ipvsadm --set 120 30 0");
    let t = shared.table.timeouts();
    assert_eq!((t.tcp_established, t.tcp_fin, t.udp), (120, 30, 300));
    assert!(cmd(&shared, "timeout").contains("120 30 300"));
    ok(
        &shared,
        "ipvsadm -E -t 10.201.2.100:80 -s sh -p 60 -M 255.255.0.0",
    );
    let l = cmd(&shared, "list");
    assert!(l.contains(":80 sh persistent 60 mask /16"), "{l}");
    assert!(cmd(&shared, "ipvsadm -E -t 10.201.2.100:80 -M 255.0.255.0").starts_with("error"));
}

/// §5.2.6 all-ports persistence: a port-0 service takes every port of its
/// VIP (that no port-specific service claims); a client's /24 sticks to one
/// real server across ports; a NAT connection keeps its own port.
#[test]
fn all_ports_templates_stick_across_ports_per_netmask() {
    let (shared, mut p) = setup(
        r#"
[[service]]
vip = "10.201.2.100"
port = 0
scheduler = "rr"
persistence = 60
persistence_netmask = 24
[[service.real_server]]
address = "10.201.2.13"
mac = "02:00:00:00:00:0d"
[[service.real_server]]
address = "10.201.2.12"
mac = "02:00:00:00:00:0c"
"#,
    );
    let a = dr_from(&mut p, 1000, 443, TCP_SYN, [10, 1, 1, 2]);
    assert_eq!(dr_from(&mut p, 1001, 21, TCP_SYN, [10, 1, 1, 2]), a);
    assert_eq!(dr_from(&mut p, 1002, 8443, TCP_SYN, [10, 1, 1, 77]), a);
    let b = dr_from(&mut p, 1003, 443, TCP_SYN, [10, 1, 2, 2]);
    assert_ne!(a, b, "another /24 is scheduled afresh (rr)");
    assert_eq!(dr_from(&mut p, 1004, 22, TCP_SYN, [10, 1, 2, 9]), b);
    // Port 80 has its own service (no persistence, rr over .11/.12).
    let c1 = dr_from(&mut p, 1005, 80, TCP_SYN, [10, 1, 1, 2]);
    let c2 = dr_from(&mut p, 1006, 80, TCP_SYN, [10, 1, 1, 2]);
    assert_ne!(c1, c2);
    // One template per /24 (2) and 5 connections on the all-ports
    // service, 2 on port 80.
    assert_eq!(shared.table.len(), 9);
    // All-ports services need persistence and take no real-server port.
    assert!(cmd(&shared, "ipvsadm -A -t 10.201.2.101:0").contains("persistence"));
    ok(&shared, "ipvsadm -A -t 10.201.2.101:0 -p 30 -M 24");
    assert!(cmd(&shared, "ipvsadm -a -t 10.201.2.101:0 -r 10.201.2.11:80").starts_with("error"));
    ok(&shared, "ipvsadm -a -t 10.201.2.101:0 -r 10.201.2.11");
}

#[test]
fn all_ports_needs_persistence_in_the_file_too() {
    let e = Config::parse(
        r#"
[director]
interface = "d0"
[[service]]
vip = "10.201.2.100"
port = 0
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("service[0].port"), "{e}");
}
