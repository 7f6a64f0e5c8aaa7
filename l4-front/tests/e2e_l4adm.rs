//! `l4adm` changing the RUNNING director, end to end in network
//! namespaces: while a long DR download runs through real server rs1, the
//! operator adds rs2, deletes rs1 (the server of that download), switches
//! the scheduler, adds a second service with its own server and changes the
//! timeouts. The download completes (existing connections keep their real
//! server), new connections go where the new table says, and the listing
//! shows the new table.

mod common;

use common::{http_get, Lab, VIP};
use std::time::Duration;

#[test]
fn l4adm_changes_the_running_director_without_breaking_connections() {
    skip_unless_lab!();
    let mut lab = Lab::new("m");
    lab.build(3);
    // rs1: 240 kB over ~3 s; rs2 on 80; rs3 on 8080.
    let body: String = "0123456789abcdef".repeat(15_000);
    lab.http_server_paced("rs1", 80, &body, 8_000, Duration::from_millis(100));
    lab.http_server_on("rs2", 80, "hello from rs2\n");
    lab.http_server_on("rs3", 8080, "hello from rs3\n");
    let sock = lab.dir.join("ctl.sock");
    let cfg = lab.dir.join("l4-front.toml");
    std::fs::write(
        &cfg,
        format!(
            "[director]\ninterface = \"d0\"\nworkers = 2\ncontrol_socket = \"{}\"\n\
             stats_file = \"{}\"\nstats_interval_ms = 100\n\n\
             [[service]]\nvip = \"{VIP}\"\nport = 80\nscheduler = \"rr\"\n\
             [[service.real_server]]\naddress = \"10.201.2.11\"\n",
            sock.display(),
            lab.dir.join("stats").display()
        ),
    )
    .unwrap();
    lab.start_director(&cfg, &lab.dir.join("stats"));
    lab.wait_for_file(&sock, "control socket", "l4-front");
    let l4adm = |args: &[&str]| common::l4adm(&sock, args);
    let ok = |args: &[&str]| {
        l4adm(args).unwrap_or_else(|e| panic!("l4adm {args:?}: {e}"));
    };

    // The director keeps its own kernel out of the services' traffic
    // (nftables netdev ingress), and the rule follows run-time changes.
    let drop_set = || {
        lab.output(
            "dir",
            &["nft", "list", "set", "netdev", "l4front_d0", "svc"],
        )
    };
    let wait_set = |want: &str, present: bool| {
        for _ in 0..100 {
            if drop_set().contains(want) == present {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "ingress drop set: {want} present={present}?\n{}",
            drop_set()
        );
    };
    wait_set("10.201.2.100 . tcp . 80", true);

    let ns = lab.ns("cl");
    let vip80 = format!("{VIP}:80").parse().unwrap();
    let download = std::thread::spawn(move || http_get(&ns, vip80));
    std::thread::sleep(Duration::from_millis(500));

    ok(&[
        "-a",
        "-t",
        "10.201.2.100:80",
        "-r",
        "10.201.2.12",
        "-g",
        "-w",
        "2",
    ]);
    ok(&["-d", "-t", "10.201.2.100:80", "-r", "10.201.2.11"]);
    ok(&["-E", "-t", "10.201.2.100:80", "-s", "wrr"]);
    ok(&["-A", "-t", "10.201.2.100:8080", "-s", "rr"]);
    ok(&[
        "-a",
        "-t",
        "10.201.2.100:8080",
        "-r",
        "10.201.2.13:8080",
        "-g",
    ]);
    ok(&["--set", "600", "60", "120"]);
    // Mistakes are refused with the reason, and change nothing.
    let e = l4adm(&["-a", "-t", "10.201.2.100:80", "-r", "10.201.2.12"]).unwrap_err();
    assert!(e.contains("exists"), "{e}");
    let e = l4adm(&["-D", "-t", "10.201.2.100:9"]).unwrap_err();
    assert!(e.contains("no service"), "{e}");

    for _ in 0..3 {
        let r = http_get(&lab.ns("cl"), vip80).expect("request to :80");
        assert!(
            r.ends_with("hello from rs2\n"),
            "rs1 deleted, rs2 added: {r}"
        );
    }
    wait_set("10.201.2.100 . tcp . 8080", true);
    let r = http_get(&lab.ns("cl"), format!("{VIP}:8080").parse().unwrap())
        .expect("request to the new service");
    assert!(r.ends_with("hello from rs3\n"), "{r}");

    let r = download.join().expect("client thread").unwrap_or_else(|e| {
        panic!(
            "the download through the deleted real server broke: {e}\n{}",
            lab.log("l4-front")
        )
    });
    assert!(
        r.ends_with(&body),
        "download incomplete ({} bytes)",
        r.len()
    );

    let l = l4adm(&["-L", "-n"]).unwrap();
    assert!(l.contains("TCP  10.201.2.100:80 wrr"), "{l}");
    assert!(
        l.contains("10.201.2.12:80") && !l.contains("10.201.2.11:80"),
        "{l}"
    );
    assert!(l.contains("TCP  10.201.2.100:8080 rr"), "{l}");
    assert!(l.contains("10.201.2.13:8080"), "{l}");
    let t = l4adm(&["-L", "--timeout"]).unwrap();
    assert!(t.contains("600 60 120"), "{t}");
    // The deleted service is gone from the listing.
    ok(&["-D", "-t", "10.201.2.100:8080"]);
    let l = l4adm(&["-L", "-n"]).unwrap();
    assert!(!l.contains(":8080"), "{l}");
    wait_set("10.201.2.100 . tcp . 8080", false);
    wait_set("10.201.2.100 . tcp . 80", true);
}

/// With the AF_XDP data path, a VIP added at run time is steered to the
/// sockets too (the program's service map follows `l4adm`): a request to the
/// new VIP is answered and counted as received through AF_XDP.
#[test]
fn l4adm_new_vip_is_steered_through_af_xdp() {
    skip_unless_lab!();
    let mut lab = Lab::new("mx");
    lab.build(1);
    lab.http_server_on("rs1", 80, "hello from rs1\n");
    // The real server accepts the second VIP too (DR: on its loopback).
    lab.run(
        "rs1",
        &["ip", "addr", "add", "10.201.2.101/32", "dev", "lo"],
    );
    let sock = lab.dir.join("ctl.sock");
    let cfg = lab.dir.join("l4-front.toml");
    let stats_path = lab.dir.join("stats");
    std::fs::write(
        &cfg,
        format!(
            "[director]\ninterface = \"d0\"\nworkers = 1\nxdp = true\ncontrol_socket = \"{}\"\n\
             stats_file = \"{}\"\nstats_interval_ms = 100\n\n\
             [[service]]\nvip = \"{VIP}\"\nport = 80\nscheduler = \"rr\"\n\
             [[service.real_server]]\naddress = \"10.201.2.11\"\n",
            sock.display(),
            stats_path.display()
        ),
    )
    .unwrap();
    lab.start_director(&cfg, &stats_path);
    lab.wait_for_file(&sock, "control socket", "l4-front");
    skip_unless_xdp!(lab, "l4-front");
    let l4adm = |args: &[&str]| {
        common::l4adm(&sock, args).unwrap_or_else(|e| panic!("l4adm {args:?}: {e}"));
    };
    let xdp_frames = || {
        std::thread::sleep(Duration::from_millis(250));
        common::stats(&stats_path)
            .get("xdp_rx_frames")
            .copied()
            .unwrap_or(0)
    };
    let r = http_get(&lab.ns("cl"), format!("{VIP}:80").parse().unwrap()).expect("first VIP");
    assert!(r.ends_with("hello from rs1\n"), "{r}");
    let before = xdp_frames();
    assert!(before >= 3, "first VIP not through AF_XDP: {before}");

    l4adm(&["-A", "-t", "10.201.2.101:80", "-s", "rr"]);
    l4adm(&["-a", "-t", "10.201.2.101:80", "-r", "10.201.2.11", "-g"]);
    std::thread::sleep(Duration::from_millis(300));
    let r = http_get(&lab.ns("cl"), "10.201.2.101:80".parse().unwrap()).unwrap_or_else(|e| {
        panic!(
            "request to the VIP added at run time: {e}\n{}",
            lab.log("l4-front")
        )
    });
    assert!(r.ends_with("hello from rs1\n"), "{r}");
    let after = xdp_frames();
    assert!(
        after >= before + 3,
        "new VIP not through AF_XDP: {before} → {after}"
    );
}
