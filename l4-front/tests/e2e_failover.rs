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
    let t = format!(
        "[director]\ninterface = \"d0\"\nworkers = 1\nstats_file = \"{}\"\nstats_interval_ms = 100\n\
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
    let mut lab = Lab::new("f");
    lab.build(1);
    lab.add_backup_director();
    // 240 kB over ~3 s.
    let body: String = "0123456789abcdef".repeat(15_000);
    lab.http_server_paced("rs1", 80, &body, 8_000, Duration::from_millis(100));
    let master = config(
        &lab,
        "master",
        "role = \"master\"\npeer = \"10.201.2.3:8848\"\ninterval_ms = 100",
    );
    let backup = config(
        &lab,
        "backup",
        "role = \"backup\"\nlisten = \"10.201.2.3:8848\"\ninterval_ms = 100\ndead_ms = 500",
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
}
