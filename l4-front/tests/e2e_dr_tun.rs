//! End to end through the real `l4-front` binary in network namespaces the
//! test builds: a real HTTP request from the client namespace to the VIP,
//! through the router and the director, to real servers on the LAN; the
//! replies go straight back to the router (a sniffer on the director's port
//! counts none). Needs root and `ip netns`; otherwise skipped with a reason.

mod common;

use common::{http_get, stats, Lab, Sniffer, VIP};
use std::time::Duration;

fn director_config(
    lab: &Lab,
    method: &str,
    n_rs: usize,
    rport: u16,
    extra: &str,
) -> std::path::PathBuf {
    let mut t = format!(
        "[director]\ninterface = \"d0\"\nworkers = 2\nstats_file = \"{}\"\nstats_interval_ms = 100\n\n\
         [[service]]\nvip = \"{VIP}\"\nport = 80\nscheduler = \"rr\"\n{extra}\n",
        lab.dir.join("stats").display()
    );
    for i in 1..=n_rs {
        t += &format!(
            "[[service.real_server]]\naddress = \"10.201.2.{}\"\nmethod = \"{method}\"\nport = {rport}\n",
            10 + i
        );
    }
    let p = lab.dir.join("l4-front.toml");
    std::fs::write(&p, t).expect("write config");
    p
}

/// Turns the AF_XDP data path on in a written configuration.
fn with_xdp(cfg: &std::path::Path) {
    let t = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, t.replace("[director]\n", "[director]\nxdp = true\n")).unwrap();
}

fn run_case(method: &str, xdp: bool) {
    run_case_with(method, xdp, false)
}

/// `partial`: the router's LAN port keeps transmit checksum offload on, so
/// the client's frames reach the director with their TCP checksums left
/// partial, as from a local VM or container behind a veth.
fn run_case_with(method: &str, xdp: bool, partial: bool) {
    let nat = method == "nat";
    let rport = if nat { 8080 } else { 80 };
    let mut lab = Lab::new(&format!(
        "{}{}{}",
        &method[..1],
        if xdp { "x" } else { "" },
        if partial { "p" } else { "" }
    ));
    lab.build_with(2, nat);
    if partial {
        lab.run("rt", &["ethtool", "-K", "r1", "tx", "on"]);
    }
    for i in 1..=2 {
        let role = format!("rs{i}");
        lab.http_server_on(&role, rport, &format!("hello from rs{i}\n"));
        if method == "tun" {
            lab.spawn(
                &role,
                &format!("decap{i}"),
                &[env!("CARGO_BIN_EXE_l4-decap"), "--vip", VIP],
                &[],
            );
        }
    }
    let cfg = director_config(&lab, method, 2, rport, "");
    if xdp {
        with_xdp(&cfg);
    } else if nat {
        // Exercise the recvmmsg receive path too (the others use the ring).
        let t = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(
            &cfg,
            t.replace("[director]\n", "[director]\nrx_ring = false\n"),
        )
        .unwrap();
    }
    let sniff = Sniffer::start(&lab.ns("dir"), "d0", [10, 201, 2, 100]);
    lab.spawn(
        "dir",
        "l4-front",
        &[
            env!("CARGO_BIN_EXE_l4-front"),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")],
    );
    let stats_path = lab.dir.join("stats");
    lab.wait_for_file(&stats_path, "l4-front", "l4-front");
    if xdp {
        skip_unless_xdp!(lab, "l4-front");
    }
    if method == "tun" {
        // Let the decapsulators open their sockets.
        std::thread::sleep(Duration::from_millis(300));
    }

    let vip = format!("{VIP}:80").parse().unwrap();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let r = http_get(&lab.ns("cl"), vip).unwrap_or_else(|e| {
            panic!(
                "{method}: HTTP through the director failed: {e}\n--- l4-front log:\n{}\n--- stats:\n{:?}",
                lab.log("l4-front"),
                stats(&stats_path)
            )
        });
        assert!(r.starts_with("HTTP/1.0 200 OK"), "{r}");
        bodies.push(r.lines().last().unwrap_or_default().to_string());
    }
    bodies.sort();
    assert_eq!(bodies, ["hello from rs1", "hello from rs2"], "rr over both");

    std::thread::sleep(Duration::from_millis(250));
    let st = stats(&stats_path);
    let from_vip = sniff.from_vip.load(std::sync::atomic::Ordering::Relaxed);
    let to_vip = sniff.to_vip.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{method}: director port saw {to_vip} frames to the VIP, {from_vip} from it; stats {st:?}"
    );
    // With AF_XDP the program takes VIP frames before the packet taps.
    if !xdp {
        assert!(to_vip >= 6, "requests must reach the director ({to_vip})");
    }
    if nat {
        // Replies come back through the director, rewritten to the VIP.
        assert!(st.get("nat_replies").copied().unwrap_or(0) >= 4, "{st:?}");
        assert!(st.get("tx_frames").copied().unwrap_or(0) >= 10, "{st:?}");
    } else {
        assert_eq!(from_vip, 0, "replies must bypass the director");
    }
    assert!(st.get("tx_frames").copied().unwrap_or(0) >= 6, "{st:?}");
    assert!(st.get("arp_replies").copied().unwrap_or(0) >= 1, "{st:?}");
    let via_xdp = st.get("xdp_rx_frames").copied().unwrap_or(0);
    if xdp {
        // Every client frame to the VIP came through the AF_XDP socket.
        assert!(via_xdp >= 6, "{st:?}\n{}", lab.log("l4-front"));
        // Only the services' traffic is steered: datagrams to another
        // port of the VIP reach the kernel (and the packet-socket worker,
        // which counts them as for no service).
        let no_service = st.get("drop.no_service").copied().unwrap_or(0);
        common::udp_send(&lab.ns("cl"), format!("{VIP}:9").parse().unwrap(), b"x", 5)
            .expect("udp send");
        std::thread::sleep(Duration::from_millis(300));
        let st = stats(&stats_path);
        assert_eq!(st.get("xdp_rx_frames").copied(), Some(via_xdp), "{st:?}");
        assert!(
            st.get("drop.no_service").copied().unwrap_or(0) >= no_service + 4,
            "{st:?}"
        );
    } else {
        assert_eq!(via_xdp, 0, "{st:?}");
    }
    assert_eq!(
        st.get("service.10.201.2.100:80/tcp.conns"),
        Some(&2),
        "{st:?}"
    );
    let completed = st.get("checksums_completed").copied().unwrap_or(0);
    if partial {
        // SYN, ACK, request, ACKs, FIN: each arrived partial, was
        // completed, and the real server accepted it.
        assert!(completed >= 6, "{st:?}");
    } else if !nat {
        // (VS/NAT replies come from the real servers' own veths, whose
        // checksum offload is on: those are completed.)
        assert_eq!(completed, 0, "{st:?}");
    }
    if xdp {
        // Killed, the director leaves no XDP program behind (BPF link):
        // one would steer the VIP traffic into a socket nobody reads.
        let link = |lab: &Lab| lab.output("dir", &["ip", "link", "show", "d0"]);
        assert!(link(&lab).contains("prog/xdp"), "{}", link(&lab));
        lab.kill("l4-front");
        std::thread::sleep(Duration::from_millis(300));
        assert!(!link(&lab).contains("xdp"), "{}", link(&lab));
    }
}

#[test]
fn dr_http_through_director_replies_bypass() {
    skip_unless_lab!();
    run_case("dr", false);
}

#[test]
fn tun_http_through_director_replies_bypass() {
    skip_unless_lab!();
    run_case("tun", false);
}

#[test]
fn nat_http_through_director_both_ways() {
    skip_unless_lab!();
    run_case("nat", false);
}

/// AF_XDP carries no checksum metadata: partial checksums are recognised by
/// value and completed (without that, the real servers drop every frame).
#[test]
fn dr_http_through_af_xdp_with_partial_checksums() {
    skip_unless_lab!();
    run_case_with("dr", true, true);
}

#[test]
fn dr_http_through_packet_socket_with_partial_checksums() {
    skip_unless_lab!();
    run_case_with("dr", false, true);
}

#[test]
fn dr_http_through_af_xdp() {
    skip_unless_lab!();
    run_case("dr", true);
}

#[test]
fn tun_http_through_af_xdp() {
    skip_unless_lab!();
    run_case("tun", true);
}

/// NAT with AF_XDP: requests come through the socket, the real servers'
/// replies (not addressed to a VIP) through the packet-socket worker.
#[test]
fn nat_http_through_af_xdp_and_packet_socket() {
    skip_unless_lab!();
    run_case("nat", true);
}

/// Health checks (HTTP): a real server whose service stops is taken out
/// (all new connections go to the other) and put back when it returns.
#[test]
fn dr_real_server_fails_and_returns() {
    skip_unless_lab!();
    let mut lab = Lab::new("h");
    lab.build(2);
    lab.http_server("rs1", "hello from rs1\n");
    lab.http_server("rs2", "hello from rs2\n");
    let cfg = director_config(
        &lab,
        "dr",
        2,
        80,
        "health_check = \"http\"\nhealth_interval_ms = 150\nhealth_timeout_ms = 100\nhealth_fall = 1\nhealth_rise = 1",
    );
    let stats_path = lab.dir.join("stats");
    lab.start_director(&cfg, &stats_path);
    let vip = format!("{VIP}:80").parse().unwrap();
    let get = |lab: &Lab| -> String {
        let r =
            http_get(&lab.ns("cl"), vip).unwrap_or_else(|e| panic!("{e}\n{}", lab.log("l4-front")));
        r.lines().last().unwrap_or_default().to_string()
    };
    let mut seen: Vec<String> = (0..2).map(|_| get(&lab)).collect();
    seen.sort();
    assert_eq!(seen, ["hello from rs1", "hello from rs2"]);

    lab.stop_http_server("rs2");
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..4 {
        assert_eq!(get(&lab), "hello from rs1", "rs2 is down");
    }
    assert!(lab.log("l4-front").contains("real server down"));

    lab.http_server("rs2", "hello from rs2\n");
    std::thread::sleep(Duration::from_millis(600));
    let mut seen: Vec<String> = (0..2).map(|_| get(&lab)).collect();
    seen.sort();
    assert_eq!(seen, ["hello from rs1", "hello from rs2"], "rs2 is back");
}

/// `l4adm` against the running director: `-L -n` lists the service and its
/// servers; `-e … -w 0` drains one, so new connections go to the other.
#[test]
fn dr_l4adm_list_and_drain() {
    skip_unless_lab!();
    let mut lab = Lab::new("a");
    lab.build(2);
    lab.http_server("rs1", "hello from rs1\n");
    lab.http_server("rs2", "hello from rs2\n");
    let sock = lab.dir.join("ctl.sock");
    let extra = String::new();
    let cfg = director_config(&lab, "dr", 2, 80, &extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[director]\n",
        &format!("[director]\ncontrol_socket = \"{}\"\n", sock.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    lab.start_director(&cfg, &lab.dir.join("stats"));
    lab.wait_for_file(&sock, "control socket", "l4-front");
    let l4adm = |args: &[&str]| -> String {
        common::l4adm(&sock, args).unwrap_or_else(|e| panic!("l4adm {args:?}: {e}"))
    };
    let vip = format!("{VIP}:80").parse().unwrap();
    http_get(&lab.ns("cl"), vip).expect("first request");
    let l = l4adm(&["-L", "-n"]);
    assert!(l.contains("TCP  10.201.2.100:80 rr"), "{l}");
    assert!(
        l.contains("10.201.2.11:80") && l.contains("10.201.2.12:80"),
        "{l}"
    );
    assert!(l.contains("Route"), "{l}");
    l4adm(&[
        "-e",
        "-t",
        "10.201.2.100:80",
        "-r",
        "10.201.2.12:80",
        "-w",
        "0",
    ]);
    for _ in 0..3 {
        let r = http_get(&lab.ns("cl"), vip).expect("request");
        assert!(r.ends_with("hello from rs1\n"), "rs2 drained: {r}");
    }
    let s = l4adm(&["-L", "-n", "--stats"]);
    assert!(s.contains("service.10.201.2.100:80/tcp.conns 4"), "{s}");
    let r = l4adm(&["-L", "-n", "--rate"]);
    assert!(r.contains("rate.service.10.201.2.100:80/tcp.cps"), "{r}");
}

/// ICMP relay (§5.2.3) under a smaller path MTU: the router's client-side
/// link has MTU 1,200 while both ends believe in 1,500, so the real server's
/// full-size segments (DF) make the router send "fragmentation needed" to
/// the VIP — which lands on the director. Only if the director relays it to
/// the real server owning the quoted connection does a 200 kB download
/// finish.
#[test]
fn dr_icmp_frag_needed_relayed_download_completes() {
    skip_unless_lab!();
    icmp_relay_case(false);
}

#[test]
fn dr_icmp_frag_needed_relayed_through_af_xdp() {
    skip_unless_lab!();
    icmp_relay_case(true);
}

fn icmp_relay_case(xdp: bool) {
    let mut lab = Lab::new(if xdp { "ix" } else { "i" });
    lab.build(1);
    lab.run("rt", &["ip", "link", "set", "r0", "mtu", "1200"]);
    let body: String = "0123456789abcdef".repeat(200_000 / 16);
    lab.http_server("rs1", &body);
    let cfg = director_config(&lab, "dr", 1, 80, "");
    if xdp {
        with_xdp(&cfg);
    }
    let stats_path = lab.dir.join("stats");
    lab.start_director(&cfg, &stats_path);
    if xdp {
        skip_unless_xdp!(lab, "l4-front");
    }
    let r = http_get(&lab.ns("cl"), format!("{VIP}:80").parse().unwrap())
        .unwrap_or_else(|e| panic!("download: {e}\n{:?}", stats(&stats_path)));
    assert!(r.ends_with(&body), "download incomplete: {} bytes", r.len());
    std::thread::sleep(Duration::from_millis(250));
    let st = stats(&stats_path);
    assert!(st.get("icmp_relayed").copied().unwrap_or(0) >= 1, "{st:?}");
    assert_eq!(
        st.get("xdp_rx_frames").copied().unwrap_or(0) > 0,
        xdp,
        "{st:?}"
    );
}

/// VS/TUN and the 20-byte outer header: a 300 kB upload in full-size
/// segments (DF) cannot be encapsulated within the LAN MTU, so the director
/// answers with ICMP fragmentation-needed (MTU 1,480) as IPVS does; the
/// client's TCP lowers its segment size and the upload completes.
#[test]
fn tun_large_upload_gets_frag_needed_and_completes() {
    skip_unless_lab!();
    tun_upload_case(false);
}

#[test]
fn tun_large_upload_gets_frag_needed_through_af_xdp() {
    skip_unless_lab!();
    tun_upload_case(true);
}

fn tun_upload_case(xdp: bool) {
    let mut lab = Lab::new(if xdp { "ux" } else { "u" });
    lab.build(1);
    lab.http_server("rs1", "done\n");
    lab.spawn(
        "rs1",
        "decap1",
        &[env!("CARGO_BIN_EXE_l4-decap"), "--vip", VIP],
        &[],
    );
    let cfg = director_config(&lab, "tun", 1, 80, "");
    if xdp {
        with_xdp(&cfg);
    }
    let stats_path = lab.dir.join("stats");
    lab.start_director(&cfg, &stats_path);
    if xdp {
        skip_unless_xdp!(lab, "l4-front");
    }
    std::thread::sleep(Duration::from_millis(300));
    let size = 300_000;
    let r = common::http_post(&lab.ns("cl"), format!("{VIP}:80").parse().unwrap(), size)
        .unwrap_or_else(|e| panic!("upload: {e}\n{:?}", stats(&stats_path)));
    assert!(r.contains(&format!("X-Received: {size}")), "{r}");
    std::thread::sleep(Duration::from_millis(250));
    let st = stats(&stats_path);
    assert!(
        st.get("frag_needed_sent").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    assert_eq!(
        st.get("xdp_rx_frames").copied().unwrap_or(0) > 0,
        xdp,
        "{st:?}"
    );
}

/// A UDP service in DR: the datagram reaches the real server through the
/// director and the answer comes back from VIP:53 directly; the director
/// tracks the flow as one UDP connection.
/// VS/TUN, a full-size UDP datagram without DF: 20 bytes too big once
/// encapsulated, so the director sends the outer packet in two fragments
/// (as the kernel does for IPVS); the real server's stack reassembles it,
/// the decapsulator delivers it, and the answer comes back.
#[test]
fn tun_full_size_datagram_without_df_is_fragmented() {
    skip_unless_lab!();
    for xdp in [false, true] {
        let mut lab = Lab::new(if xdp { "fx" } else { "f" });
        lab.build(1);
        lab.udp_echo("rs1", VIP, 53, "rs1");
        lab.spawn(
            "rs1",
            "decap1",
            &[env!("CARGO_BIN_EXE_l4-decap"), "--vip", VIP],
            &[],
        );
        let cfg = lab.dir.join("udp.toml");
        std::fs::write(
            &cfg,
            format!(
                "[director]\ninterface = \"d0\"\nxdp = {xdp}\nstats_file = \"{}\"\nstats_interval_ms = 100\n\
                 [[service]]\nvip = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nscheduler = \"rr\"\n\
                 [[service.real_server]]\naddress = \"10.201.2.11\"\nmethod = \"tun\"\n",
                lab.dir.join("stats").display()
            ),
        )
        .unwrap();
        let stats_path = lab.dir.join("stats");
        lab.start_director(&cfg, &stats_path);
        if xdp {
            skip_unless_xdp!(lab, "l4-front");
        }
        std::thread::sleep(Duration::from_millis(300)); // decapsulator up
        let vip: std::net::SocketAddr = format!("{VIP}:53").parse().unwrap();
        // 1,472 bytes of payload: a 1,500-byte IP packet.
        let q = "q".repeat(1472);
        let (a, from) = common::udp_query_with(&lab.ns("cl"), vip, q.as_bytes(), true)
            .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", stats(&stats_path), lab.log("l4-front")));
        assert_eq!(a, format!("rs1:{q}"));
        assert_eq!(from, vip);
        std::thread::sleep(Duration::from_millis(250));
        let st = stats(&stats_path);
        assert!(
            st.get("tun_fragmented").copied().unwrap_or(0) >= 1,
            "{st:?}"
        );
        assert_eq!(
            st.get("frag_needed_sent").copied().unwrap_or(0),
            0,
            "{st:?}"
        );
    }
}

#[test]
fn dr_udp_service() {
    skip_unless_lab!();
    let mut lab = Lab::new("d");
    lab.build(1);
    lab.udp_echo("rs1", VIP, 53, "rs1");
    let cfg = lab.dir.join("udp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[director]\ninterface = \"d0\"\nstats_file = \"{}\"\nstats_interval_ms = 100\n\
             [[service]]\nvip = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nscheduler = \"rr\"\n\
             [[service.real_server]]\naddress = \"10.201.2.11\"\n",
            lab.dir.join("stats").display()
        ),
    )
    .unwrap();
    let stats_path = lab.dir.join("stats");
    lab.start_director(&cfg, &stats_path);
    let vip: std::net::SocketAddr = format!("{VIP}:53").parse().unwrap();
    for q in ["one", "two"] {
        let (a, from) = common::udp_query(&lab.ns("cl"), vip, q.as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {:?}", stats(&stats_path)));
        assert_eq!(a, format!("rs1:{q}"));
        assert_eq!(from, vip, "the answer comes from the VIP");
    }
    std::thread::sleep(Duration::from_millis(250));
    let st = stats(&stats_path);
    assert!(
        st.get("service.10.201.2.100:53/udp.packets")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{st:?}"
    );
    assert!(
        st.get("service.10.201.2.100:53/udp.conns")
            .copied()
            .unwrap_or(0)
            >= 1,
        "{st:?}"
    );
}
