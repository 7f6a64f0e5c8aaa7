//! Transparent cache-cluster front in network namespaces the test builds
//! itself (issue 4, §7.5):
//!
//! ```text
//!  client ns ──(10.77.1.0/24)── front ns ──(10.77.2.0/24)── cache1 ns (nginx proxy_cache)
//!  10.77.1.2                    ktcpvs    ──(10.77.3.0/24)── cache2 ns (nginx proxy_cache)
//!                               cls-server──(10.77.4.0/24)── origin ns (nginx, static files)
//! ```
//!
//! The client asks the origin (10.77.4.2:80) directly; the front's nftables
//! REDIRECT (or TPROXY, second test) hands the connection to ktcpvs
//! (`mode = "cache"`, `transparent = "redirect"` / `"tproxy"`), which reads
//! the original destination with SO_ORIGINAL_DST (or, TPROXY, the accepted
//! socket's local address on its IP_TRANSPARENT listener), asks the CLS which cache holds each object, and sends
//! non-cacheable requests straight to the origin. The front also routes
//! (caches → origin). Skipped, with a message, only when not root or
//! without `ip netns` / `nft` / `nginx`.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tests::{cls_server_bin, fetch, ktcpvs_bin, wait_until, RawClient, Response};

const ORIGIN: &str = "10.77.4.2";
const CACHES: [&str; 2] = ["10.77.2.2", "10.77.3.2"];

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for t in ["ip", "nft", "nginx"] {
        if !have(t) {
            return Some(format!("`{t}` not found"));
        }
    }
    let probe = format!("kcprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("`ip` not runnable: {e}")),
    }
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The namespaces and processes of one lab; `Drop` kills the processes by
/// their own PIDs and deletes the namespaces (and with them the veths).
struct Lab {
    prefix: String,
    ns: Vec<String>,
    children: Vec<(String, Child)>,
    dir: PathBuf,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn exec(&self, role: &str, cmd: &[&str]) {
        let ns = self.ns(role);
        let mut v = vec!["ip", "netns", "exec", &ns];
        v.extend_from_slice(cmd);
        sh(&v);
    }

    fn spawn(&mut self, role: &str, name: &str, cmd: &[&str]) {
        let log = File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.children.push((name.to_string(), child));
    }

    fn build(mode: &str) -> Lab {
        let prefix = format!(
            "kc{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tests::switch::scratch_dir();
        let mut lab = Lab {
            prefix,
            ns: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for role in ["cl", "fr", "c1", "c2", "or"] {
            let ns = lab.ns(role);
            sh(&["ip", "netns", "add", &ns]);
            lab.ns.push(ns.clone());
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        // front <-> each other namespace, one /24 each
        for (role, net) in [("cl", 1), ("c1", 2), ("c2", 3), ("or", 4)] {
            let fr = lab.ns("fr");
            let peer_ns = lab.ns(role);
            let f_if = format!("f{role}");
            sh(&[
                "ip", "-n", &fr, "link", "add", &f_if, "type", "veth", "peer", "name", "e0",
                "netns", &peer_ns,
            ]);
            sh(&[
                "ip",
                "-n",
                &fr,
                "addr",
                "add",
                &format!("10.77.{net}.1/24"),
                "dev",
                &f_if,
            ]);
            sh(&["ip", "-n", &fr, "link", "set", &f_if, "up"]);
            sh(&[
                "ip",
                "-n",
                &peer_ns,
                "addr",
                "add",
                &format!("10.77.{net}.2/24"),
                "dev",
                "e0",
            ]);
            sh(&["ip", "-n", &peer_ns, "link", "set", "e0", "up"]);
            sh(&[
                "ip",
                "-n",
                &peer_ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{net}.1"),
            ]);
        }
        lab.exec("fr", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Connections from the client to port 80 anywhere go to ktcpvs.
        let rules = if mode == "redirect" {
            "table ip kc {\n chain pre {\n  type nat hook prerouting priority dstnat;\n  iifname \"fcl\" tcp dport 80 redirect to :3128\n }\n}\n"
        } else {
            // TPROXY: marked packets are delivered locally (policy route)
            // to the IP_TRANSPARENT listener, addresses unchanged.
            lab.exec("fr", &["ip", "rule", "add", "fwmark", "1", "lookup", "100"]);
            lab.exec(
                "fr",
                &[
                    "ip",
                    "route",
                    "add",
                    "local",
                    "0.0.0.0/0",
                    "dev",
                    "lo",
                    "table",
                    "100",
                ],
            );
            "table ip kc {\n chain pre {\n  type filter hook prerouting priority mangle;\n  iifname \"fcl\" tcp dport 80 tproxy to :3128 meta mark set 1 accept\n }\n}\n"
        };
        let rf = lab.dir.join("rules.nft");
        std::fs::write(&rf, rules).expect("rules");
        lab.exec("fr", &["nft", "-f", rf.to_str().expect("path")]);
        lab
    }

    fn nginx(&mut self, role: &str, name: &str, server: &str) {
        let d = self.dir.join(name);
        for sub in ["tmp", "cache", "www"] {
            std::fs::create_dir_all(d.join(sub)).expect("nginx dirs");
        }
        let d = d.display().to_string();
        let conf = format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/tmp/b;\n proxy_temp_path {d}/tmp/p;\n\
              fastcgi_temp_path {d}/tmp/f;\n uwsgi_temp_path {d}/tmp/u;\n scgi_temp_path {d}/tmp/s;\n\
              log_format o '$remote_addr $request_uri';\n{server}\n}}\n"
        );
        let path = format!("{d}/nginx.conf");
        std::fs::write(&path, conf).expect("nginx conf");
        self.spawn(role, name, &["nginx", "-c", &path, "-p", &d]);
    }

    fn log(&self, name: &str) -> String {
        let mut s = String::new();
        for (n, _) in &self.children {
            if n == name {
                s = std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
            }
        }
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (n, _) in &self.children {
                eprintln!("--- {n}:\n{}", self.log(n));
            }
        }
        // SIGTERM first: the nginx master then stops its workers (a
        // SIGKILLed master would leave them running).
        for (_, c) in &mut self.children {
            // SAFETY: kill(2) on a child this lab started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for (_, c) in &mut self.children {
            let _ = wait_until(Duration::from_secs(3), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns` (sockets it opens
/// live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Like `fetch`, but a refused connection (lab not up yet) is `None`.
fn try_fetch(addr: SocketAddr, req: &[u8]) -> Option<Response> {
    let mut c = RawClient::try_connect(addr).ok()?;
    c.try_send(req).ok()?;
    c.read_response().ok()
}

fn get(addr: SocketAddr, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {ORIGIN}\r\nConnection: close\r\n\r\n");
    fetch(addr, req.as_bytes()).unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
}

/// Origin access-log lines `(client ip, uri)`.
fn origin_log(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("origin").join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        })
        .collect()
}

/// The origin's log once `done` holds for it: nginx writes a request's
/// line after the response has gone out, so a client that just read the
/// response may look before the line is there (bounded wait, 5 s).
fn origin_log_when(
    dir: &Path,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = origin_log(dir);
        if done(&log) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn transparent_redirect_front_with_real_caches_in_namespaces() {
    run_lab("redirect");
}

#[test]
fn transparent_tproxy_front_with_real_caches_in_namespaces() {
    run_lab("tproxy");
}

fn run_lab(mode: &str) {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut lab = Lab::build(mode);
    // The origin: static files, logged as "$remote_addr $request_uri".
    let www = lab.dir.join("origin").join("www");
    std::fs::create_dir_all(&www).expect("www");
    for i in 0..6 {
        std::fs::write(www.join(format!("obj{i}.html")), format!("object {i}\n")).expect("file");
    }
    lab.nginx(
        "or",
        "origin",
        &format!(
            " server {{ listen {ORIGIN}:80; access_log {}/origin/access.log o; root {}; \
             location / {{ add_header Cache-Control \"max-age=600\"; }} }}",
            lab.dir.display(),
            www.display()
        ),
    );
    for (i, ip) in CACHES.iter().enumerate() {
        let name = format!("cache{}", i + 1);
        let d = lab.dir.join(&name).display().to_string();
        lab.nginx(
            &format!("c{}", i + 1),
            &name,
            &format!(
                " proxy_cache_path {d}/cache levels=1 keys_zone=z:1m;\n \
                 server {{ listen {ip}:80;\n  location / {{ proxy_pass http://{ORIGIN}:80; proxy_cache z;\n  \
                 proxy_cache_valid 200 10m; add_header X-Cache-Status $upstream_cache_status always;\n  \
                 add_header X-Cache-Node {name} always; }} }}"
            ),
        );
    }
    // The CLS and ktcpvs on the front.
    let cls_conf = lab.dir.join("cls.toml");
    std::fs::write(
        &cls_conf,
        format!(
            "[server]\nlisten = \"127.0.0.1:7070\"\n[scheduler]\nmode = \"cache\"\nthreshold = 1000\n\
             [monitor]\nenabled = false\n[[servers]]\naddr = \"{}:80\"\nprobe = \"none\"\n[[servers]]\naddr = \"{}:80\"\nprobe = \"none\"\n",
            CACHES[0], CACHES[1]
        ),
    )
    .expect("cls conf");
    let cls_bin = cls_server_bin().display().to_string();
    lab.spawn(
        "fr",
        "cls",
        &[&cls_bin, "--config", cls_conf.to_str().expect("path")],
    );
    // The CLS listening before the switch starts: a worker whose first
    // connection is refused decides locally until it reconnects, and a
    // request in that window may land on the other cache (seen once in CI:
    // both workers connected 10 ms apart, the readiness check passed in
    // between).
    let fr = lab.ns("fr");
    let cls_up = in_ns(&fr, || {
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect("127.0.0.1:7070").is_ok()
        })
    });
    assert!(cls_up, "the CLS never listened:\n{}", lab.log("cls"));
    let k_conf = lab.dir.join("ktcpvs.toml");
    std::fs::write(
        &k_conf,
        format!(
            "[global]\nworkers = 2\n[[service]]\nname = \"front\"\nlisten = \"0.0.0.0:3128\"\nscheduler = \"rr\"\n\
             mode = \"cache\"\n[[service.server]]\naddress = \"{}:80\"\n[[service.server]]\naddress = \"{}:80\"\n\
             [service.cls]\naddress = \"127.0.0.1:7070\"\ntimeout_ms = 100\n[service.cache]\ntransparent = \"{mode}\"\n",
            CACHES[0], CACHES[1]
        ),
    )
    .expect("ktcpvs conf");
    let k_bin = ktcpvs_bin().display().to_string();
    lab.spawn(
        "fr",
        "ktcpvs",
        &[&k_bin, "--config", k_conf.to_str().expect("path")],
    );

    let origin: SocketAddr = format!("{ORIGIN}:80").parse().expect("addr");
    let cl = lab.ns("cl");
    // Ready: through the front, the origin answers, both caches answer, and
    // the CLS is placing (the same warm-up object keeps its cache).
    let ready = {
        let cl = cl.clone();
        in_ns(&cl, move || {
            let mut n = 0;
            wait_until(Duration::from_secs(15), || {
                n += 1;
                let nodes: Vec<Option<String>> = (0..6)
                    .map(|_| {
                        let req = format!("GET /warm{n}.html HTTP/1.1\r\nHost: {ORIGIN}\r\nConnection: close\r\n\r\n");
                        try_fetch(origin, req.as_bytes())
                            .and_then(|r| r.header("x-cache-node").map(str::to_string))
                    })
                    .collect();
                nodes[0].is_some() && nodes.windows(2).all(|w| w[0] == w[1])
            })
        })
    };
    assert!(ready, "the lab never became ready (front, caches, CLS)");
    // Every worker has its CLS connection (one line each).
    let connected = wait_until(Duration::from_secs(10), || {
        lab.log("ktcpvs").matches("connected to the CLS").count() >= 2
    });
    assert!(
        connected,
        "workers not connected to the CLS:\n{}",
        lab.log("ktcpvs")
    );

    // Cacheable objects: each lands on one cache; only the first is a MISS.
    let results = in_ns(&cl, move || {
        let mut v = Vec::new();
        for i in 0..6 {
            for _ in 0..4 {
                let r = get(origin, &format!("/obj{i}.html"));
                v.push((
                    i,
                    r.status,
                    r.body_str(),
                    r.header("x-cache-node").unwrap_or("").to_string(),
                    r.header("x-cache-status").unwrap_or("").to_string(),
                ));
            }
        }
        v
    });
    for i in 0..6 {
        let of: Vec<_> = results.iter().filter(|r| r.0 == i).collect();
        assert!(
            of.iter()
                .all(|r| r.1 == 200 && r.2 == format!("object {i}\n")),
            "{of:?}"
        );
        assert!(
            of.iter().all(|r| r.3 == of[0].3 && !r.3.is_empty()),
            "obj{i} on several caches: {of:?}"
        );
        let statuses: Vec<&str> = of.iter().map(|r| r.4.as_str()).collect();
        assert_eq!(statuses, ["MISS", "HIT", "HIT", "HIT"], "obj{i}");
    }
    // The origin saw each object once (once per cache that holds it), and
    // from a cache, not from the front.
    let log = origin_log_when(&lab.dir, |log| {
        (0..6).all(|i| {
            let uri = format!("/obj{i}.html");
            log.iter().any(|(_, u)| *u == uri)
        })
    });
    for i in 0..6 {
        let uri = format!("/obj{i}.html");
        let seen: Vec<_> = log.iter().filter(|(_, u)| *u == uri).collect();
        assert_eq!(seen.len(), 1, "{uri}: {seen:?}");
        assert!(
            CACHES.contains(&seen[0].0.as_str()),
            "{uri} fetched by {}",
            seen[0].0
        );
    }

    // Non-cacheable: straight to the origin (its address from
    // SO_ORIGINAL_DST; the Host header names no known origin), no cache.
    let r = in_ns(&cl, move || {
        let req = "GET /obj1.html?fresh=1 HTTP/1.1\r\nHost: www.example.invalid\r\nConnection: close\r\n\r\n";
        let a = fetch(origin, req.as_bytes()).expect("query request");
        let req = format!(
            "GET /obj2.html HTTP/1.1\r\nHost: {ORIGIN}\r\nCookie: s=1\r\nConnection: close\r\n\r\n"
        );
        let b = fetch(origin, req.as_bytes()).expect("cookie request");
        (a, b)
    });
    for resp in [&r.0, &r.1] {
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-cache-status"), None, "went through a cache");
    }
    assert_eq!(r.0.body_str(), "object 1\n");
    let log = origin_log_when(&lab.dir, |log| {
        ["/obj1.html?fresh=1", "/obj2.html"]
            .iter()
            .all(|want| log.iter().any(|(a, u)| a == "10.77.4.1" && u == want))
    });
    assert!(
        log.iter()
            .any(|(a, u)| a == "10.77.4.1" && u == "/obj1.html?fresh=1"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(a, u)| a == "10.77.4.1" && u == "/obj2.html"),
        "{log:?}"
    );
}
