//! Running the real `cls-server` binary (the Content Location Service).

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_addr;
use crate::switch::{ktcpvs_bin, scratch_dir};

/// Path of the `cls-server` binary: `$CLS_SERVER_BIN`, else next to ktcpvs.
pub fn cls_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let bin = ktcpvs_bin().with_file_name("cls-server");
    assert!(
        bin.is_file(),
        "cls-server binary not found at {}: build it first (`cargo build --workspace --bins`) \
         or set CLS_SERVER_BIN",
        bin.display()
    );
    bin
}

/// A running `cls-server`; killed on drop. [`ClsServer::kill`] and
/// [`ClsServer::restart`] simulate a crash and a recovery on the same port.
pub struct ClsServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    body: String,
}

impl ClsServer {
    /// Starts the CLS on a free loopback port; `body` is the configuration
    /// without its `[server]` table (`[scheduler]`, `[monitor]`,
    /// `[[servers]]`).
    pub fn start(body: &str) -> ClsServer {
        let mut c = ClsServer {
            child: None,
            addr: free_addr(),
            dir: scratch_dir(),
            body: body.to_string(),
        };
        c.restart();
        c
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// (Re)starts the process on the same address and waits until it accepts.
    pub fn restart(&mut self) {
        self.kill();
        let path = self.dir.join("cls-server.toml");
        let text = format!("[server]\nlisten = \"{}\"\n\n{}", self.addr, self.body);
        std::fs::write(&path, &text).expect("write cls config");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("cls-stderr.log"))
            .expect("cls log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new(cls_server_bin())
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("dup log"))
                .spawn()
                .expect("spawn cls-server");
            self.child = Some(child);
            loop {
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                    return;
                }
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break; // exited (port still in TIME_WAIT?): try again
                }
                assert!(
                    Instant::now() < deadline,
                    "cls-server did not accept on {} within 10 s:\n{}\n{}",
                    self.addr,
                    text,
                    self.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "cls-server kept exiting:\n{text}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a crash), and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the process (e.g. SIGSTOP to make the CLS hang).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("cls-stderr.log")).unwrap_or_default()
    }
}

impl Drop for ClsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- cls-server stderr:\n{}", self.stderr());
        }
        self.kill();
    }
}
