//! Runtime administration (issue 3, item 3): `tcpvsadm` against a running
//! switch — servers and services added, edited and deleted under load
//! with zero failed requests, SIGHUP / `tcpvsadm reload` with a valid and
//! an invalid file, `-L -n --stats` counters, and the admin socket's
//! owner-only access.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tests::*;

/// Bound of every wait in this file.
const WAIT: Duration = Duration::from_secs(20);

/// A few client threads, each doing keep-alive `GET path` in a loop and
/// checking every response (status 200, the origin's exact body).
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<Vec<AtomicU64>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|t| {
                let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut c = RawClient::connect(addr);
                    c.set_timeout(Duration::from_secs(10));
                    let req = get(path);
                    while !stop.load(Relaxed) {
                        let r = c
                            .try_send(&req)
                            .map_err(|e| e.to_string())
                            .and_then(|_| c.read_response().map_err(|e| e.to_string()));
                        let n = done[t].load(Relaxed);
                        match r {
                            Ok(r)
                                if r.status == 200
                                    && r.body_str() == format!("{} {path}\n", r.origin()) =>
                            {
                                if r.header_has_token("connection", "close") {
                                    failures
                                        .lock()
                                        .unwrap()
                                        .push(format!("client {t} request {n}: connection: close"));
                                    c = RawClient::connect(addr);
                                }
                            }
                            Ok(r) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("client {t} request {n}: {r:?}"));
                                c = RawClient::connect(addr);
                            }
                            Err(e) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("client {t} request {n}: {e}"));
                                c = RawClient::connect(addr);
                            }
                        }
                        done[t].fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            threads,
        }
    }

    /// Waits until every client has completed `n` more requests.
    fn each_more(&self, n: u64) {
        let from: Vec<u64> = self.done.iter().map(|d| d.load(Relaxed)).collect();
        assert!(
            wait_until(WAIT, || self
                .done
                .iter()
                .zip(&from)
                .all(|(d, f)| d.load(Relaxed) >= f + n)),
            "load stalled: {:?} (failures {:?})",
            self.done,
            self.failures.lock().unwrap()
        );
    }

    /// Stops the clients; asserts that no request failed.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().expect("load thread");
        }
        let total = self.done.iter().map(|d| d.load(Relaxed)).sum();
        let f = self.failures.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} of {total} requests failed: {:?}",
            f.len(),
            &f[..f.len().min(10)]
        );
        total
    }
}

impl Drop for Load {
    /// A failing test stops its clients too.
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn counts(os: &[Origin], path: &str) -> Vec<usize> {
    os.iter().map(|o| o.requests_to(path)).collect()
}

/// Requests that reached each origin while every client did `n` more.
fn growth(load: &Load, os: &[Origin], path: &str, n: u64) -> Vec<usize> {
    let a = counts(os, path);
    load.each_more(n);
    let b = counts(os, path);
    a.iter().zip(b).map(|(a, b)| b - a).collect()
}

#[test]
fn added_server_receives_requests_and_nothing_fails() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new("rr", &[os[0].addr()]));
    let load = Load::start(k.addr(), 4, "/add");
    load.each_more(20);
    assert_eq!(os[1].requests_to("/add"), 0);
    let o1_conns = os[0].connections();
    let out = k.adm(&[
        "-a",
        "-t",
        "web",
        "-r",
        &os[1].addr().to_string(),
        "-w",
        "1",
    ]);
    assert!(out.contains("added server"), "{out}");
    // Let requests scheduled on the old list finish, then both get work.
    load.each_more(5);
    let g = growth(&load, &os, "/add", 50);
    assert!(g[0] > 0 && g[1] > 0, "rr over both servers after -a: {g:?}");
    // o1's pooled keep-alive connections survived the change (it now has
    // less work in parallel, so it needed no new one).
    assert_eq!(
        os[0].connections(),
        o1_conns,
        "connections to o1 were reopened"
    );
    let total = load.finish();
    assert!(total > 0);
}

#[test]
fn deleted_server_gets_nothing_more_and_nothing_fails() {
    let os = origins(3);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let load = Load::start(k.addr(), 4, "/del");
    load.each_more(20);
    assert!(os[2].requests_to("/del") > 0);
    k.adm(&[
        "-d",
        "-t",
        &k.addr().to_string(),
        "-r",
        &os[2].addr().to_string(),
    ]);
    load.each_more(5);
    let g = growth(&load, &os, "/del", 50);
    assert_eq!(g[2], 0, "a deleted server was scheduled: {g:?}");
    assert!(g[0] > 0 && g[1] > 0, "{g:?}");
    // The pooled keep-alive connections to it are closed too.
    assert!(
        wait_until(WAIT, || os[2].open_connections() == 0),
        "{} connections to the deleted server stay open",
        os[2].open_connections()
    );
    load.finish();
    let list = k.adm(&["-L", "-n"]);
    assert!(!list.contains(&os[2].addr().to_string()), "{list}");
}

#[test]
fn weight_and_scheduler_changes_apply_under_load() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let load = Load::start(k.addr(), 4, "/ws");
    let g = growth(&load, &os, "/ws", 20);
    assert!(g[0] > 0 && g[1] > 0, "{g:?}");
    let o2 = os[1].addr().to_string();
    // Weight 0 drains o2.
    k.adm(&["-e", "-t", "web", "-r", &o2, "-w", "0"]);
    load.each_more(5);
    let g = growth(&load, &os, "/ws", 50);
    assert_eq!(g[1], 0, "weight 0 server still scheduled: {g:?}");
    k.adm(&["-e", "-t", "web", "-r", &o2, "-w", "2"]);
    load.each_more(5);
    let g = growth(&load, &os, "/ws", 50);
    assert!(g[1] > 0, "weight restored but o2 idle: {g:?}");
    // lblc: one target, one server (locality), where rr alternated.
    k.adm(&["-E", "-t", "web", "-s", "lblc"]);
    load.each_more(5);
    let g = growth(&load, &os, "/ws", 50);
    assert!(
        g[0] == 0 || g[1] == 0,
        "lblc spread one target over both servers: {g:?}"
    );
    assert!(g[0] + g[1] > 0);
    let list = k.adm(&["-L", "-n"]);
    assert!(list.contains("lblc"), "{list}");
    load.finish();
}

#[test]
fn services_are_added_and_deleted_at_runtime() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new("rr", &[os[0].addr()]));
    let load = Load::start(k.addr(), 2, "/svc");
    let api = free_addr();
    let out = k.adm(&["-A", "-t", &api.to_string(), "-s", "rr", "--name", "api"]);
    assert!(out.contains("api"), "{out}");
    // A service without servers answers 503.
    let r = fetch(api, &get("/api")).expect("response from the new service");
    assert_eq!(r.status, 503, "{r:?}");
    k.adm(&["-a", "-t", "api", "-r", &os[1].addr().to_string()]);
    let mut c = RawClient::connect(api);
    for _ in 0..5 {
        let r = c.roundtrip(&get("/api"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.origin(), "o2");
    }
    let api_load = Load::start(api, 2, "/api");
    api_load.each_more(20);
    k.adm(&["-D", "-t", &api.to_string()]);
    // No longer accepting…
    assert!(
        wait_until(WAIT, || std::net::TcpStream::connect_timeout(
            &api,
            Duration::from_millis(200)
        )
        .is_err()),
        "deleted service still accepts"
    );
    // …but open connections finish (here: keep being served).
    let r = c.roundtrip(&get("/api"));
    assert_eq!(r.status, 200, "{r:?}");
    api_load.each_more(5);
    api_load.finish();
    load.each_more(5);
    load.finish();
    let list = k.adm(&["-L", "-n"]);
    assert!(!list.contains("api"), "{list}");
    assert!(list.contains("web"), "{list}");
}

#[test]
fn refused_changes_exit_non_zero_with_the_reason() {
    let os = origins(1);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let o1 = os[0].addr().to_string();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["-a", "-t", "nope", "-r", "127.0.0.1:9"], 1, "no service"),
        (&["-a", "-t", "web", "-r", &o1], 1, "exists already"),
        (
            &["-e", "-t", "web", "-r", &o1, "-x", "10", "-y", "20"],
            1,
            "low: must not exceed high",
        ),
        (
            &["-e", "-t", "web", "-r", &o1, "-w", "70000"],
            1,
            "weight: must be at most 65535",
        ),
        (
            &["-E", "-t", "web", "-s", "fastest"],
            1,
            "unknown scheduler",
        ),
        (&["-d", "-t", "web", "-r", "127.0.0.1:9"], 1, "no server"),
        (&["-a", "-t", "web", "-r", "nowhere"], 1, "not an address"),
        (&["-A", "-t", &k.addr().to_string()], 1, "already"),
        (&["-a", "-t", "web"], 2, "needs -r"),
        (&["--frobnicate"], 2, "unknown argument"),
    ];
    for (args, code, msg) in cases {
        let out = k.tcpvsadm(args);
        assert_eq!(out.code, Some(*code), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(msg),
            "{args:?}: expected {msg:?} in {out:?}"
        );
    }
    // Nothing changed: still one server, weight 1, generation 1.
    let json = k.adm(&["-L", "--json"]);
    assert!(json.starts_with("{\"generation\":1,"), "{json}");
    assert!(json.contains("\"weight\":1,"), "{json}");
    let r = k.client().roundtrip(&get("/still"));
    assert_eq!(r.status, 200);
    // An unreachable socket is its own exit status.
    let out = run_program(
        &tcpvsadm_bin(),
        &["-S".into(), "/nonexistent/ktcpvs.sock".into(), "-L".into()],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(3), "{out:?}");
}

#[test]
fn reload_applies_a_valid_file_and_refuses_an_invalid_one() {
    let os = origins(3);
    let mut cfg = Config::new("rr", &[os[0].addr(), os[1].addr()]);
    let k = Ktcpvs::start(&cfg);
    cfg.svc().listen = Some(k.addr());
    cfg.admin_socket = Some(k.admin_socket().display().to_string());
    let load = Load::start(k.addr(), 4, "/rl");
    let g = growth(&load, &os, "/rl", 20);
    assert!(g[0] > 0 && g[1] > 0 && g[2] == 0, "{g:?}");

    // Valid file, by SIGHUP: o1 out, o3 in, o2 kept (weight 3).
    cfg.svc().servers = vec![
        Server::new(os[1].addr()).weight(3),
        Server::new(os[2].addr()),
    ];
    std::fs::write(k.config_path(), cfg.to_toml(k.addr())).unwrap();
    k.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || k.stderr().contains("reloaded")),
        "no reload logged:\n{}",
        k.stderr()
    );
    load.each_more(5);
    let g = growth(&load, &os, "/rl", 50);
    assert!(g[0] == 0 && g[1] > 0 && g[2] > 0, "after reload: {g:?}");
    let json = k.adm(&["-L", "--json"]);
    assert!(
        json.contains(&format!("\"address\":\"{}\",\"weight\":3,", os[1].addr())),
        "{json}"
    );
    let generation = json.split(',').next().unwrap().to_string();

    // Invalid file: refused with the field named, by tcpvsadm and SIGHUP.
    let bad = cfg
        .to_toml(k.addr())
        .replace("weight = 3", "weight = 70000");
    std::fs::write(k.config_path(), bad).unwrap();
    let out = k.tcpvsadm(&["reload"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("service[0].server[0].weight"),
        "{out:?}"
    );
    k.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || k.stderr().matches("reload refused").count() >= 2),
        "SIGHUP refusal not logged:\n{}",
        k.stderr()
    );
    // The old configuration keeps serving, unchanged.
    let g = growth(&load, &os, "/rl", 50);
    assert!(
        g[0] == 0 && g[1] > 0 && g[2] > 0,
        "after refused reload: {g:?}"
    );
    let json = k.adm(&["-L", "--json"]);
    assert!(json.starts_with(&generation), "{generation} vs {json}");

    // A valid file again, by tcpvsadm, adding a second service.
    cfg.svc().servers = vec![Server::new(os[1].addr()), Server::new(os[2].addr())];
    let mut api = cfg.services[0].clone();
    api.name = "api".into();
    let api_addr = free_addr();
    api.listen = Some(api_addr);
    api.servers = vec![Server::new(os[0].addr())];
    cfg.services.push(api);
    std::fs::write(k.config_path(), cfg.to_toml(k.addr())).unwrap();
    let out = k.adm(&["reload"]);
    assert!(out.contains("1 added"), "{out}");
    let r = fetch(api_addr, &get("/api")).expect("new service answers");
    assert_eq!(r.origin(), "o1");
    load.each_more(5);
    load.finish();
}

#[test]
fn list_stats_shows_counters_and_zero_clears_them() {
    let os = origins(2);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    // From zero: the harness's readiness probe is a connection too, which
    // the switch may accept a little later; let it, then zero.
    assert!(
        wait_until(WAIT, || k
            .adm(&["-L", "--json"])
            .contains("\"connections\":1,")),
        "the readiness probe was never counted: {}",
        k.adm(&["-L", "--json"])
    );
    k.adm(&["-Z"]);
    let mut c = k.client();
    for _ in 0..10 {
        assert_eq!(c.roundtrip(&get("/n")).status, 200);
    }
    let table = k.adm(&["-L", "-n", "--stats"]);
    let line = |t: &str, needle: &str| -> Vec<String> {
        t.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in\n{t}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert!(
        table.contains("Conns") && table.contains("Requests"),
        "{table}"
    );
    // web  addr  rr  Conns Requests
    let svc = line(&table, "web");
    assert_eq!(svc[3..], ["1", "10"], "{table}");
    for o in &os {
        let l = line(&table, &format!("-> {}", o.addr()));
        assert_eq!(
            l.last().unwrap(),
            &o.requests_to("/n").to_string(),
            "{table}"
        );
        assert_eq!(o.requests_to("/n"), 5);
    }
    let json = k.adm(&["-L", "--json"]);
    assert!(
        json.contains("\"connections\":1,\"requests\":10,"),
        "{json}"
    );
    k.adm(&["-Z"]);
    let table = k.adm(&["-L", "-n", "--stats"]);
    assert_eq!(line(&table, "web")[3..], ["0", "0"], "{table}");
    for o in &os {
        assert_eq!(
            line(&table, &format!("-> {}", o.addr())).last().unwrap(),
            "0",
            "{table}"
        );
    }
    // The connection is still served after all this.
    assert_eq!(c.roundtrip(&get("/n")).status, 200);
}

#[test]
fn admin_socket_is_for_its_owner_only() {
    let os = origins(1);
    let k = Ktcpvs::start(&Config::new("rr", &addrs(&os)));
    let sock = k.admin_socket();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode {mode:o}");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return; // the rest needs to run a client as another user
    }
    // Another user: the mode keeps it out…
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let mut all = vec!["-S".to_string(), sock.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        std::process::Command::new(tcpvsadm_bin())
            .args(&all)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run tcpvsadm as nobody")
    };
    let out = as_nobody(&["-L"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{out:?}"
    );
    // …and if the mode is opened up, the switch itself refuses the peer
    // (SO_PEERCRED).
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["-a", "-t", "web", "-r", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the switch's owner"),
        "{out:?}"
    );
    let list = k.adm(&["-L", "-n"]);
    assert!(!list.contains("127.0.0.1:9 "), "{list}");
}

/// A second switch started on a port the first one listens on is refused
/// with a clear message (SO_REUSEPORT would otherwise let it bind and take
/// part of the first one's connections), and the first serves on. A
/// reload that renames a service on the same address (old and new
/// listener in one process for a moment) still works.
#[test]
fn a_second_switch_on_the_same_port_is_refused_and_a_rename_reload_works() {
    let os = origins(1);
    let mut cfg = Config::new("rr", &[os[0].addr()]);
    let k = Ktcpvs::start(&cfg);
    cfg.svc().listen = Some(k.addr());

    let dir = tests::switch::scratch_dir();
    let mut other = cfg.clone();
    other.admin_socket = Some(dir.join("admin.sock").display().to_string());
    let path = dir.join("second.toml");
    std::fs::write(&path, other.to_toml(k.addr())).unwrap();
    let out = run_bin(
        &["--config".into(), path.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(1), "the second switch started: {out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot listen on {}", k.addr()))
            && out.stderr.contains("another process listens on it"),
        "{out:?}"
    );
    for _ in 0..20 {
        let r = fetch(k.addr(), &get("/first")).expect("the first switch answers");
        assert_eq!(r.status, 200);
    }
    assert_eq!(os[0].requests_to("/first"), 20);

    // Same address, new name: the service keeps its listeners, so no
    // connection the kernel is completing is reset; a stream of new
    // connections across a dozen renames loses none.
    cfg.admin_socket = Some(k.admin_socket().display().to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let addr = k.addr();
    let conns = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let req = request("GET", "/conn", &[("Connection", "close")], b"");
            while !stop.load(Relaxed) {
                match fetch(addr, &req) {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..12 {
        cfg.svc().name = format!("renamed{i}");
        std::fs::write(k.config_path(), cfg.to_toml(k.addr())).unwrap();
        let out = k.adm(&["reload"]);
        assert!(
            out.contains("1 renamed") && out.contains("0 deleted"),
            "{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Relaxed);
    let (ok, failed) = conns.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );
    assert!(ok > 12, "{ok}");
    let json = k.adm(&["-L", "--json"]);
    assert!(json.contains("\"name\":\"renamed11\""), "{json}");
}
