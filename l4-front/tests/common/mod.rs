//! A network-namespace lab built by the tests themselves:
//!
//! ```text
//!  client ──(c0 · r0)── router ──(r1 · br)── bridge ns ── director (d0)
//!  10.201.1.2           10.201.1.1 / 10.201.2.1        ├─ rs1 (e0) 10.201.2.11
//!                                                       └─ rs2 (e0) 10.201.2.12
//! ```
//!
//! Every namespace name starts with a per-lab unique prefix; `Drop` kills
//! the processes the lab started (by their own PIDs) and deletes the
//! namespaces, which destroys all veths and the bridge, also when a test
//! panics. Traffic only ever goes to addresses inside these namespaces.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VIP: &str = "10.201.2.100";
pub const DIRECTOR_IP: &str = "10.201.2.2";
pub const ROUTER_LAN: &str = "10.201.2.1";

/// Why the lab cannot run here, if it cannot: not root, no `ip netns`
/// (or no right to create a namespace), no `ethtool` or `sysctl`.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "ethtool", "sysctl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` not found"));
        }
    }
    let probe = format!(
        "l4probe{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
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

/// Skips the calling test (returns from it) with a printed reason.
#[macro_export]
macro_rules! skip_unless_lab {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// Why the AF_XDP path could not start on this machine (the kernel lacks
/// BPF or AF_XDP, or forbids them), read from the director's log; `None`
/// when it started or failed for another reason (a program the verifier
/// rejects is a defect, not a reason to skip).
pub fn xdp_unavailable(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("AF_XDP data path refused"))?;
    [
        "Operation not permitted",
        "Function not implemented",
        "not supported",
    ]
    .iter()
    .any(|m| line.contains(m))
    .then(|| line.to_string())
}

/// Returns from the test (printing why) when the AF_XDP path could not
/// start on this machine.
#[macro_export]
macro_rules! skip_unless_xdp {
    ($lab:expr, $log:expr) => {
        if let Some(why) = common::xdp_unavailable(&$lab.log($log)) {
            eprintln!("SKIPPED: AF_XDP unavailable here: {why}");
            return;
        }
    };
}

/// `l4adm --socket sock args…`: its output, or its error message.
pub fn l4adm(sock: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_l4adm"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("l4adm");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    child_names: Vec<String>,
    servers: Vec<(String, Arc<AtomicBool>, JoinHandle<()>)>,
    pub dir: PathBuf,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("l4t{}{}{}", tag, std::process::id() % 100_000, n);
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::create_dir_all(&dir);
        Lab {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            child_names: Vec::new(),
            servers: Vec::new(),
            dir,
        }
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn add_ns(&mut self, role: &str) {
        let ns = self.ns(role);
        sh(&["ip", "netns", "add", &ns]).expect("ip netns add");
        self.namespaces.push(ns.clone());
        self.run(role, &["ip", "link", "set", "lo", "up"]);
    }

    /// Runs a command inside namespace `role`, panicking on failure.
    pub fn run(&self, role: &str, cmd: &[&str]) {
        let ns = self.ns(role);
        let mut v = vec!["ip", "netns", "exec", &ns];
        v.extend_from_slice(cmd);
        sh(&v).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs a command inside namespace `role` and returns its stdout.
    pub fn output(&self, role: &str, cmd: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(cmd)
            .output()
            .expect("run");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Stops the processes started with [`Lab::spawn`] so far.
    pub fn stop_children(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        self.child_names.clear();
    }

    pub fn sysctl(&self, role: &str, kv: &str) {
        self.run(role, &["sysctl", "-q", "-w", kv]);
    }

    /// A veth pair `a`@`ra` — `b`@`rb`.
    fn veth(&self, ra: &str, a: &str, rb: &str, b: &str) {
        let (na, nb) = (self.ns(ra), self.ns(rb));
        sh(&[
            "ip", "-n", &na, "link", "add", a, "type", "veth", "peer", "name", b, "netns", &nb,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        self.run(ra, &["ip", "link", "set", a, "up"]);
        self.run(rb, &["ip", "link", "set", b, "up"]);
    }

    /// Builds the whole topology with `n_rs` DR/TUN real servers.
    pub fn build(&mut self, n_rs: usize) {
        self.build_with(n_rs, false)
    }

    /// Builds the topology; with `nat` the real servers route through the
    /// director and do not hold the VIP.
    pub fn build_with(&mut self, n_rs: usize, nat: bool) {
        for r in ["cl", "rt", "br", "dir"] {
            self.add_ns(r);
        }
        for i in 1..=n_rs {
            self.add_ns(&format!("rs{i}"));
        }
        self.run("br", &["ip", "link", "add", "br0", "type", "bridge"]);
        self.run("br", &["ip", "link", "set", "br0", "up"]);
        // client — router
        self.veth("cl", "c0", "rt", "r0");
        self.run("cl", &["ip", "addr", "add", "10.201.1.2/24", "dev", "c0"]);
        self.run(
            "cl",
            &["ip", "route", "add", "default", "via", "10.201.1.1"],
        );
        self.run("rt", &["ip", "addr", "add", "10.201.1.1/24", "dev", "r0"]);
        // router — LAN
        self.veth("rt", "r1", "br", "p-rt");
        self.run("rt", &["ip", "addr", "add", "10.201.2.1/24", "dev", "r1"]);
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.r1.send_redirects=0",
        ] {
            self.sysctl("rt", kv);
        }
        // Make the LAN look like a wire: no partial checksums, no super-frames.
        self.run(
            "rt",
            &[
                "ethtool", "-K", "r1", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ],
        );
        // director
        self.veth("dir", "d0", "br", "p-dir");
        self.run("dir", &["ip", "addr", "add", "10.201.2.2/24", "dev", "d0"]);
        self.sysctl("dir", "net.ipv4.ip_forward=0");
        self.run("dir", &["ethtool", "-K", "d0", "gro", "off"]);
        // real servers
        for i in 1..=n_rs {
            let role = format!("rs{i}");
            let port = format!("p-rs{i}");
            self.veth(&role, "e0", "br", &port);
            let addr = format!("10.201.2.{}/24", 10 + i);
            self.run(&role, &["ip", "addr", "add", &addr, "dev", "e0"]);
            if nat {
                self.run(
                    &role,
                    &["ip", "route", "add", "default", "via", DIRECTOR_IP],
                );
            } else {
                let vip = format!("{VIP}/32");
                self.run(&role, &["ip", "addr", "add", &vip, "dev", "lo"]);
                self.run(&role, &["ip", "route", "add", "default", "via", ROUTER_LAN]);
            }
            for kv in [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.e0.arp_ignore=1",
                "net.ipv4.conf.e0.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                self.sysctl(&role, kv);
            }
        }
        for p in ["p-rt", "p-dir"]
            .into_iter()
            .map(String::from)
            .chain((1..=n_rs).map(|i| format!("p-rs{i}")))
        {
            self.run("br", &["ip", "link", "set", &p, "master", "br0"]);
        }
    }

    /// Starts `cmd` in namespace `role`; output goes to `<dir>/<log>.log`.
    pub fn spawn(&mut self, role: &str, log: &str, cmd: &[&str], env: &[(&str, &str)]) {
        let out = File::create(self.dir.join(format!("{log}.log"))).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(cmd)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn");
        self.children.push(child);
        self.child_names.push(log.to_string());
    }

    /// Kills (SIGKILL) the process started with log name `log`.
    pub fn kill(&mut self, log: &str) {
        if let Some(i) = self.child_names.iter().position(|n| n == log) {
            let mut c = self.children.remove(i);
            self.child_names.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A second director (backup) on the LAN: namespace `dir2`, d0 at
    /// 10.201.2.3.
    pub fn add_backup_director(&mut self) {
        self.add_ns("dir2");
        self.veth("dir2", "d0", "br", "p-dir2");
        self.run("dir2", &["ip", "addr", "add", "10.201.2.3/24", "dev", "d0"]);
        self.sysctl("dir2", "net.ipv4.ip_forward=0");
        self.run("dir2", &["ethtool", "-K", "d0", "gro", "off"]);
        self.run("br", &["ip", "link", "set", "p-dir2", "master", "br0"]);
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// A tiny HTTP/1.0 server on 0.0.0.0:80 in namespace `role` answering
    /// every request with `body`.
    pub fn http_server(&mut self, role: &str, body: &str) {
        self.http_server_on(role, 80, body)
    }

    /// The same on `port`.
    pub fn http_server_on(&mut self, role: &str, port: u16, body: &str) {
        self.http_server_paced(role, port, body, usize::MAX, Duration::ZERO)
    }

    /// An HTTP server that sends its body in `chunk`-byte pieces, `delay`
    /// apart (a long download).
    pub fn http_server_paced(
        &mut self,
        role: &str,
        port: u16,
        body: &str,
        chunk: usize,
        delay: Duration,
    ) {
        let ns = self.ns(role);
        let body = body.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            enter_netns(&ns);
            let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(()).ok();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut b = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut b) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&b[..n]),
                            }
                        }
                        // A request body (uploads) is read and its size
                        // reported in an X-Received header.
                        let hend = req
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map_or(req.len(), |p| p + 4);
                        let text = String::from_utf8_lossy(&req[..hend]).to_ascii_lowercase();
                        let want: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let mut got = req.len() - hend;
                        while got < want {
                            match s.read(&mut b) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got += n,
                            }
                        }
                        let head = format!(
                            "HTTP/1.0 200 OK\r\nX-Received: {got}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes());
                        for piece in body.as_bytes().chunks(chunk.max(1)) {
                            if s.write_all(piece).is_err() {
                                break;
                            }
                            if !delay.is_zero() {
                                std::thread::sleep(delay);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
        self.servers.push((role.to_string(), stop, h));
    }

    /// A UDP echo server on `ip`:`port` in namespace `role`, answering each
    /// datagram with `<tag>:` + the datagram. (Bound to the address, as a
    /// UDP server behind a VIP must be, so answers leave from it.)
    pub fn udp_echo(&mut self, role: &str, ip: &str, port: u16, tag: &str) {
        let ip: std::net::Ipv4Addr = ip.parse().expect("ip");
        let ns = self.ns(role);
        let tag = tag.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            enter_netns(&ns);
            let s = std::net::UdpSocket::bind((ip, port)).expect("bind udp");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            tx.send(()).ok();
            let mut b = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = s.recv_from(&mut b) {
                    let mut out = format!("{tag}:").into_bytes();
                    out.extend_from_slice(&b[..n]);
                    let _ = s.send_to(&out, peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("udp server up");
        self.servers.push((role.to_string(), stop, h));
    }

    /// Stops (closes the listener of) the HTTP server in namespace `role`.
    pub fn stop_http_server(&mut self, role: &str) {
        while let Some(i) = self.servers.iter().position(|(r, _, _)| r == role) {
            let (_, s, h) = self.servers.remove(i);
            s.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }

    /// Starts `l4-front --config cfg` in the director's namespace (log
    /// "l4-front") and waits for its first statistics write to `stats`.
    pub fn start_director(&mut self, cfg: &std::path::Path, stats: &std::path::Path) {
        let cfg = cfg.to_str().expect("utf-8 path");
        self.spawn(
            "dir",
            "l4-front",
            &[env!("CARGO_BIN_EXE_l4-front"), "--config", cfg],
            &[],
        );
        self.wait_for_file(stats, "l4-front", "l4-front");
    }

    /// Waits until `file` exists (a started daemon's first stats write).
    pub fn wait_for_file(&self, file: &std::path::Path, what: &str, log: &str) {
        let t = Instant::now();
        while !file.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what} did not start; log:\n{}",
                self.log(log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("L4_KEEP_LAB").is_some() {
            eprintln!("L4_KEEP_LAB: leaving namespaces {}-*", self.prefix);
            return;
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, s, _) in &self.servers {
            s.store(true, Ordering::Relaxed);
        }
        for (_, _, h) in self.servers.drain(..) {
            let _ = h.join();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// One HTTP GET from namespace `ns` to `addr`; returns the whole response.
pub fn http_get(ns: &str, addr: SocketAddr) -> Result<String, String> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(6))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read: {e}"))?;
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// One UDP request/response from namespace `ns`; returns the answer and
/// the address it came from.
pub fn udp_query(
    ns: &str,
    addr: SocketAddr,
    payload: &[u8],
) -> Result<(String, SocketAddr), String> {
    udp_query_with(ns, addr, payload, false)
}

/// As [`udp_query`]; `no_df`: the datagrams leave without DF
/// (`IP_PMTUDISC_DONT`), so a router or director may fragment them.
pub fn udp_query_with(
    ns: &str,
    addr: SocketAddr,
    payload: &[u8],
    no_df: bool,
) -> Result<(String, SocketAddr), String> {
    let ns = ns.to_string();
    let payload = payload.to_vec();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        if no_df {
            use std::os::fd::AsRawFd;
            let v: libc::c_int = libc::IP_PMTUDISC_DONT;
            // SAFETY: a valid socket and an int option of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(format!(
                    "IP_MTU_DISCOVER: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 2048];
        // The first datagram may be lost while the router resolves the VIP.
        for _ in 0..5 {
            s.send_to(&payload, addr).map_err(|e| e.to_string())?;
            if let Ok((n, from)) = s.recv_from(&mut b) {
                return Ok((String::from_utf8_lossy(&b[..n]).into_owned(), from));
            }
        }
        Err("no UDP answer".into())
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// Sends `n` UDP datagrams from namespace `ns` to `addr`, expecting no
/// answer.
pub fn udp_send(ns: &str, addr: SocketAddr, payload: &[u8], n: usize) -> Result<(), String> {
    let ns = ns.to_string();
    let payload = payload.to_vec();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        for _ in 0..n {
            s.send_to(&payload, addr).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// An HTTP POST of `size` bytes from namespace `ns`; returns the response.
pub fn http_post(ns: &str, addr: SocketAddr, size: usize) -> Result<String, String> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(6))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(8)))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(8)))
            .map_err(|e| e.to_string())?;
        let head = format!("POST /up HTTP/1.0\r\nHost: vip\r\nContent-Length: {size}\r\n\r\n");
        s.write_all(head.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        s.write_all(&vec![b'u'; size])
            .map_err(|e| format!("upload: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read: {e}"))?;
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

/// Counts, on interface `ifname` of namespace `ns`, frames carrying IPv4
/// packets from `src` (replies) and to `dst` (requests), until stopped.
pub struct Sniffer {
    pub from_vip: Arc<AtomicU64>,
    pub to_vip: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    h: Option<JoinHandle<()>>,
}

impl Sniffer {
    pub fn start(ns: &str, ifname: &str, vip: [u8; 4]) -> Sniffer {
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let from_vip = Arc::new(AtomicU64::new(0));
        let to_vip = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, t, s) = (from_vip.clone(), to_vip.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            enter_netns(&ns);
            let sock = l4_front::datapath::afpacket::PacketSocket::open(&ifname, None)
                .expect("sniffer socket");
            tx.send(()).ok();
            let mut buf = vec![0u8; 65_600];
            while !s.load(Ordering::Relaxed) {
                let Ok(Some(m)) = sock.recv(&mut buf) else {
                    continue;
                };
                let fr = &buf[..m.len];
                if fr.len() < 34 || fr[12..14] != [8, 0] {
                    continue;
                }
                if fr[26..30] == vip {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                if fr[30..34] == vip {
                    t.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("sniffer up");
        Sniffer {
            from_vip,
            to_vip,
            stop,
            h: Some(h),
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

/// Parses a `name value` stats file.
pub fn stats(path: &std::path::Path) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}
