//! Failover with connection sync (§5.2.10) through the real binaries: a
//! master and a backup `l4-front` on the LAN; a long DR download starts
//! through the master, the master is killed mid-way, the backup notices the
//! silence, takes the VIP over with gratuitous ARP and forwards the client's
//! packets of the already-synchronised connection to the same real server:
//! the download completes.

mod common;

use common::{http_get, stats, Lab, VIP};
use std::time::Duration;

fn config(lab: &Lab, name: &str, sync: &str) -> std::path::PathBuf {
    config_with(lab, name, sync, false)
}

fn config_with(lab: &Lab, name: &str, sync: &str, xdp: bool) -> std::path::PathBuf {
    let t = format!(
        "[director]\ninterface = \"d0\"\nworkers = 1\nxdp = {xdp}\nstats_file = \"{}\"\nstats_interval_ms = 100\n\
         [sync]\n{sync}\n\
         [[service]]\nvip = \"{VIP}\"\nport = 80\nscheduler = \"rr\"\n\
         [[service.real_server]]\naddress = \"10.201.2.11\"\nmethod = \"dr\"\n",
        lab.dir.join(format!("{name}.stats")).display()
    );
    let p = lab.dir.join(format!("{name}.toml"));
    std::fs::write(&p, t).expect("config");
    p
}

#[test]
fn dr_download_survives_master_failure() {
    skip_unless_lab!();
    failover_case(false);
}

/// The same with both directors on the AF_XDP data path.
#[test]
fn dr_download_survives_master_failure_through_af_xdp() {
    skip_unless_lab!();
    failover_case(true);
}

fn failover_case(xdp: bool) {
    let mut lab = Lab::new(if xdp { "fx" } else { "f" });
    lab.build(1);
    lab.add_backup_director();
    // 240 kB over ~3 s.
    let body: String = "0123456789abcdef".repeat(15_000);
    lab.http_server_paced("rs1", 80, &body, 8_000, Duration::from_millis(100));
    let master = config_with(
        &lab,
        "master",
        "role = \"master\"\npeer = \"10.201.2.3:8848\"\ninterval_ms = 100",
        xdp,
    );
    let backup = config_with(
        &lab,
        "backup",
        "role = \"backup\"\nlisten = \"10.201.2.3:8848\"\ninterval_ms = 100\ndead_ms = 500",
        xdp,
    );
    lab.spawn(
        "dir2",
        "backup",
        &[
            env!("CARGO_BIN_EXE_l4-front"),
            "--config",
            backup.to_str().unwrap(),
        ],
        &[],
    );
    lab.spawn(
        "dir",
        "master",
        &[
            env!("CARGO_BIN_EXE_l4-front"),
            "--config",
            master.to_str().unwrap(),
        ],
        &[],
    );
    lab.wait_for_file(&lab.dir.join("master.stats"), "master", "master");
    lab.wait_for_file(&lab.dir.join("backup.stats"), "backup", "backup");
    if xdp {
        skip_unless_xdp!(lab, "master");
    }
    std::thread::sleep(Duration::from_millis(300));

    let ns = lab.ns("cl");
    let download = std::thread::spawn(move || http_get(&ns, format!("{VIP}:80").parse().unwrap()));
    std::thread::sleep(Duration::from_millis(1000));
    lab.kill("master");
    let r = download.join().expect("client thread");
    let r = r.unwrap_or_else(|e| {
        panic!(
            "download broke at failover: {e}\n--- backup log:\n{}\n--- backup stats {:?}",
            lab.log("backup"),
            stats(&lab.dir.join("backup.stats"))
        )
    });
    assert!(
        r.ends_with(&body),
        "download incomplete ({} bytes)\n--- backup log:\n{}",
        r.len(),
        lab.log("backup")
    );
    std::thread::sleep(Duration::from_millis(250));
    let log = lab.log("backup");
    assert!(log.contains("taking over"), "{log}");
    let st = stats(&lab.dir.join("backup.stats"));
    let svc = "service.10.201.2.100:80/tcp";
    assert!(
        st.get(&format!("{svc}.packets")).copied().unwrap_or(0) > 0,
        "backup forwarded nothing: {st:?}"
    );
    assert_eq!(
        st.get(&format!("{svc}.conns")),
        Some(&0),
        "the connection came from sync, not scheduling: {st:?}"
    );
    let via_xdp = st.get("xdp_rx_frames").copied().unwrap_or(0);
    assert_eq!(via_xdp > 0, xdp, "backup frames through AF_XDP: {st:?}");
}

/// Waits (at most 10 s) until `log` contains `what`.
fn wait_log(lab: &Lab, log: &str, what: &str) {
    let t = std::time::Instant::now();
    while !lab.log(log).contains(what) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{log}: no {what:?} in 10 s:\n{}",
            lab.log(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fail-back: the master dies, the backup takes over, a long download
/// starts through the backup (so only the backup knows the connection);
/// the master returns, receives the backup's table, takes the VIP back
/// after `failback_delay_ms`, the backup steps down — and the download
/// completes through the returned master.
#[test]
fn master_returns_takes_the_vip_back_and_the_download_goes_on() {
    skip_unless_lab!();
    let mut lab = Lab::new("b");
    lab.build(1);
    lab.add_backup_director();
    // 320 kB over ~4 s.
    let body: String = "0123456789abcdef".repeat(20_000);
    lab.http_server_paced("rs1", 80, &body, 8_000, Duration::from_millis(100));
    let master = config(
        &lab,
        "master",
        "role = \"master\"\npeer = \"10.201.2.3:8848\"\nlisten = \"10.201.2.2:8848\"\n\
         interval_ms = 100\ndead_ms = 500\nfailback = true\nfailback_delay_ms = 1000",
    );
    let backup = config(
        &lab,
        "backup",
        "role = \"backup\"\nlisten = \"10.201.2.3:8848\"\npeer = \"10.201.2.2:8848\"\n\
         interval_ms = 100\ndead_ms = 500",
    );
    let start = |lab: &mut Lab, log: &str, cfg: &std::path::Path| {
        lab.spawn(
            if log == "backup" { "dir2" } else { "dir" },
            log,
            &[
                env!("CARGO_BIN_EXE_l4-front"),
                "--config",
                cfg.to_str().unwrap(),
            ],
            &[],
        );
    };
    start(&mut lab, "backup", &backup);
    start(&mut lab, "master", &master);
    wait_log(&lab, "master", "taking over");
    lab.kill("master");
    wait_log(&lab, "backup", "taking over");
    let _ = std::fs::remove_file(lab.dir.join("master.stats"));

    let ns = lab.ns("cl");
    let download = std::thread::spawn(move || http_get(&ns, format!("{VIP}:80").parse().unwrap()));
    std::thread::sleep(Duration::from_millis(500));
    start(&mut lab, "master2", &master);
    wait_log(&lab, "master2", "taking over");
    wait_log(&lab, "backup", "stepping down");
    let r = download.join().expect("client thread").unwrap_or_else(|e| {
        panic!(
            "download broke at fail-back: {e}\n--- master2 log:\n{}\n--- backup log:\n{}",
            lab.log("master2"),
            lab.log("backup")
        )
    });
    assert!(
        r.ends_with(&body),
        "download incomplete ({} bytes)",
        r.len()
    );
    assert!(
        lab.log("backup").contains("sending it the table"),
        "{}",
        lab.log("backup")
    );
    std::thread::sleep(Duration::from_millis(250));
    let st = stats(&lab.dir.join("master.stats"));
    let svc = "service.10.201.2.100:80/tcp";
    assert!(
        st.get(&format!("{svc}.packets")).copied().unwrap_or(0) > 0,
        "the returned master forwarded nothing: {st:?}"
    );
    assert_eq!(
        st.get(&format!("{svc}.conns")),
        Some(&0),
        "the connection came from the backup's table: {st:?}"
    );
}
