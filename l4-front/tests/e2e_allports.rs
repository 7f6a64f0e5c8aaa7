//! All-ports persistence (§5.2.6) end to end in network namespaces: a
//! port-0 DR service with persistence; both real servers serve ports 80 and
//! 8080. Every request of the client, on either port, reaches the same real
//! server (one template for its network covers all ports), although the
//! scheduler is round robin.

mod common;

use common::{http_get, Lab, VIP};

/// A lab with two real servers serving ports 80 and 8080 behind a
/// persistent all-ports DR service (`extra`: more of its settings), its
/// director started.
fn start(name: &str, extra: &str) -> Lab {
    let mut lab = Lab::new(name);
    lab.build(2);
    for i in 1..=2 {
        let role = format!("rs{i}");
        lab.http_server_on(&role, 80, &format!("rs{i} port 80\n"));
        lab.http_server_on(&role, 8080, &format!("rs{i} port 8080\n"));
    }
    let cfg = lab.dir.join("l4-front.toml");
    std::fs::write(
        &cfg,
        format!(
            "[director]\ninterface = \"d0\"\nworkers = 2\nstats_file = \"{}\"\n\
             stats_interval_ms = 100\n\n\
             [[service]]\nvip = \"{VIP}\"\nport = 0\nscheduler = \"rr\"\n\
             persistence = 300\npersistence_netmask = 24\n{extra}\
             [[service.real_server]]\naddress = \"10.201.2.11\"\n\
             [[service.real_server]]\naddress = \"10.201.2.12\"\n",
            lab.dir.join("stats").display()
        ),
    )
    .unwrap();
    lab.start_director(&cfg, &lab.dir.join("stats"));
    lab
}

#[test]
fn all_ports_service_sticks_a_client_to_one_server_on_every_port() {
    skip_unless_lab!();
    let lab = start("p", "");
    let mut seen = Vec::new();
    for port in [80u16, 8080, 80, 8080, 8080, 80] {
        let r = http_get(&lab.ns("cl"), format!("{VIP}:{port}").parse().unwrap())
            .unwrap_or_else(|e| panic!("port {port}: {e}\n{}", lab.log("l4-front")));
        let last = r.lines().last().unwrap_or_default().to_string();
        assert!(last.ends_with(&format!("port {port}")), "{r}");
        seen.push(last[..3].to_string());
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "one real server for every port: {seen:?}");
}

/// A persistent all-ports service with health checks on `health_port`:
/// when the server a client sticks to fails its probe, the client's next
/// connections, on every port, go to the other server at once — the
/// template is pointed elsewhere instead of sending them to a dead server
/// for the rest of the persistence period.
#[test]
fn all_ports_health_check_moves_a_sticky_client_off_a_dead_server() {
    skip_unless_lab!();
    let mut lab = start(
        "q",
        "health_check = \"http\"\nhealth_port = 8080\nhealth_interval_ms = 150\n\
         health_timeout_ms = 100\nhealth_fall = 1\nhealth_rise = 1\n",
    );
    let get = |lab: &Lab, port: u16| -> String {
        let r = http_get(&lab.ns("cl"), format!("{VIP}:{port}").parse().unwrap())
            .unwrap_or_else(|e| panic!("port {port}: {e}\n{}", lab.log("l4-front")));
        let last = r.lines().last().unwrap_or_default().to_string();
        assert!(last.ends_with(&format!("port {port}")), "{r}");
        last[..3].to_string()
    };
    let sticky = get(&lab, 80);
    assert_eq!(get(&lab, 8080), sticky);
    let other = if sticky == "rs1" { "rs2" } else { "rs1" };

    lab.stop_http_server(&sticky);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        lab.log("l4-front").contains("real server down"),
        "{}",
        lab.log("l4-front")
    );
    for port in [80u16, 8080, 80] {
        assert_eq!(get(&lab, port), other, "moved off the dead {sticky}");
    }
}
