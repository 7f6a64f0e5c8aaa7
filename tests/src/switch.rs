//! Running the real `ktcpvs` binary.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::RawClient;
use crate::config::Config;
use crate::ports::{free_addr, free_port_run};

/// How long the switch may take to accept its first connection.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test: `$KTCPVS_BIN`, else `ktcpvs` next to the
/// `deps/` directory holding this test executable
/// (`target/<profile>/deps/test-xxx` → `target/<profile>/ktcpvs`). Panics with
/// a clear message when it does not exist: a missing binary is a failure,
/// never a skip.
pub fn ktcpvs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KTCPVS_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "KTCPVS_BIN={} does not name a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("ktcpvs");
    assert!(
        bin.is_file(),
        "ktcpvs binary not found at {}: build it first (`cargo build --workspace --bins --release`) \
         or set KTCPVS_BIN",
        bin.display()
    );
    bin
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "ktcpvs-e2e-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A running `ktcpvs`. Dropping it sends SIGTERM and waits (then SIGKILL); if
/// the test is failing, the config and the captured stderr are printed.
pub struct Ktcpvs {
    child: Option<Child>,
    status: Option<ExitStatus>,
    addr: SocketAddr,
    dir: PathBuf,
    what: String,
}

impl Ktcpvs {
    /// Writes `cfg` (the first service gets a free port unless it has one),
    /// runs `ktcpvs --config FILE`, waits until the port accepts.
    pub fn start(cfg: &Config) -> Ktcpvs {
        let fixed = cfg.services.first().and_then(|s| s.listen);
        let mut last = String::new();
        for _ in 0..3 {
            let listen = fixed.unwrap_or_else(free_addr);
            let dir = scratch_dir();
            let mut cfg = cfg.clone();
            if cfg.admin_socket.is_none() {
                cfg.admin_socket = Some(dir.join("admin.sock").display().to_string());
            }
            let text = cfg.to_toml(listen);
            let path = dir.join("ktcpvs.toml");
            std::fs::write(&path, &text).expect("write config");
            let args = vec!["--config".to_string(), path.display().to_string()];
            match Self::spawn(&args, listen, dir, text) {
                Ok(k) => return k,
                Err(e) if fixed.is_none() && e.contains("in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    /// Runs `ktcpvs ARGS…` and waits until `listen` accepts (e.g. a
    /// configuration file of the test's own, or `ktcpvs origins`).
    pub fn run(args: &[&str], listen: SocketAddr) -> Result<Ktcpvs, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(&args, listen, scratch_dir(), String::new())
    }

    /// Runs `ktcpvs quickstart --listen ADDR` (origins on the next three ports).
    /// Retried on a new port run if a port turned out to be taken.
    pub fn quickstart() -> Ktcpvs {
        let mut last = String::new();
        for _ in 0..3 {
            let listen = free_port_run(4);
            let args = vec![
                "quickstart".to_string(),
                "--listen".to_string(),
                listen.to_string(),
            ];
            match Self::spawn(&args, listen, scratch_dir(), "(quickstart)".into()) {
                Ok(k) => return k,
                Err(e) if e.contains("in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    fn spawn(
        args: &[String],
        listen: SocketAddr,
        dir: PathBuf,
        what: String,
    ) -> Result<Ktcpvs, String> {
        let bin = ktcpvs_bin();
        let err = File::create(dir.join("stderr.log")).expect("stderr file");
        let out = File::create(dir.join("stdout.log")).expect("stdout file");
        let child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut k = Ktcpvs {
            child: Some(child),
            status: None,
            addr: listen,
            dir,
            what: format!("{} {}\n{what}", bin.display(), args.join(" ")),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = k.try_wait() {
                let msg = format!(
                    "ktcpvs exited with {st} before accepting on {listen}\n--- command: {}\n--- stderr:\n{}",
                    k.what,
                    k.stderr()
                );
                k.child = None;
                return Err(msg);
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                return Ok(k);
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "ktcpvs did not accept on {listen} within {READY_TIMEOUT:?}\n--- command: {}\n--- stderr:\n{}",
                    k.what,
                    k.stderr()
                );
                return Err(msg);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new client connection to the switch.
    pub fn client(&self) -> RawClient {
        RawClient::connect(self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the switch wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.status = c.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Panics (showing stderr) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_wait() {
            panic!(
                "ktcpvs is no longer running: {st}\n--- stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// Waits up to `timeout` for exit; None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait up to `timeout` for exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            self.signal(libc::SIGTERM);
        }
        self.wait_exit(timeout)
    }

    fn scratch(&self) -> &Path {
        &self.dir
    }

    /// The configuration file the switch was started with (rewrite it and
    /// send SIGHUP or `tcpvsadm reload`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("ktcpvs.toml")
    }

    /// The admin socket of a switch from [`Ktcpvs::start`] (unless the
    /// config named another).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Runs `tcpvsadm -S <admin socket> ARGS` to completion (10 s bound).
    pub fn tcpvsadm(&self, args: &[&str]) -> CheckOutput {
        let mut all = vec!["-S".to_string(), self.admin_socket().display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        run_program(&tcpvsadm_bin(), &all, Duration::from_secs(10))
    }

    /// [`Ktcpvs::tcpvsadm`], asserting success; returns stdout.
    pub fn adm(&self, args: &[&str]) -> String {
        let out = self.tcpvsadm(args);
        assert!(out.success(), "tcpvsadm {args:?} failed: {out:?}");
        out.stdout
    }
}

/// Path of `tcpvsadm`: `$TCPVSADM_BIN`, else next to the ktcpvs binary.
pub fn tcpvsadm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TCPVSADM_BIN") {
        return PathBuf::from(p);
    }
    let bin = ktcpvs_bin().with_file_name("tcpvsadm");
    assert!(
        bin.is_file(),
        "tcpvsadm binary not found at {}: build it first (`cargo build --workspace --bins`) \
         or set TCPVSADM_BIN",
        bin.display()
    );
    bin
}

impl Drop for Ktcpvs {
    fn drop(&mut self) {
        if self.try_wait().is_none() && self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "=== ktcpvs ({}) exit={:?}\n--- command / config:\n{}\n--- stderr:\n{}=== end ktcpvs",
                self.scratch().display(),
                self.status,
                self.what,
                self.stderr()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What `ktcpvs --check FILE` did.
#[derive(Debug)]
pub struct CheckOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CheckOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `ktcpvs --check FILE` on a file holding `toml`, with a 10 s bound.
pub fn run_check(toml: &str) -> CheckOutput {
    let dir = scratch_dir();
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).expect("write config");
    let out = run_check_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Runs `ktcpvs --check PATH`, with a 10 s bound.
pub fn run_check_file(path: &Path) -> CheckOutput {
    run_bin(
        &["--check".into(), path.display().to_string()],
        Duration::from_secs(10),
    )
}

/// Runs the binary with `args` to completion (killed after `timeout`).
pub fn run_bin(args: &[String], timeout: Duration) -> CheckOutput {
    run_program(&ktcpvs_bin(), args, timeout)
}

/// Runs `program` with `args` to completion (killed after `timeout`).
pub fn run_program(program: &Path, args: &[String], timeout: Duration) -> CheckOutput {
    let dir = scratch_dir();
    let (o, e) = (dir.join("out"), dir.join("err"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&o).expect("out file"))
        .stderr(File::create(&e).expect("err file"))
        .spawn()
        .expect("spawn program");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = CheckOutput {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&o).unwrap_or_default(),
        stderr: std::fs::read_to_string(&e).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.is_some(),
        "{} {args:?} did not exit within {timeout:?}: {out:?}",
        program.display()
    );
    out
}
