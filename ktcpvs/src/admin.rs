//! The admin socket `tcpvsadm` talks to: a Unix stream socket (mode 0600,
//! and the peer's uid checked with SO_PEERCRED: only the switch's owner or
//! root), served on a thread of its own, never on a worker.
//!
//! Protocol (one exchange per connection, documented in ARCHITECTURE.md):
//! the client sends one line, `COMMAND [key=value | flag]...`, and reads
//! the reply until the switch closes: `ok` and a body, or `error: REASON`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::runtime::{AdminError, Runtime, ServerArgs};
use crate::sched::SchedulerKind;

/// Longest request line.
const MAX_LINE: u64 = 4096;

/// Binds `path` (replacing a stale socket, refusing if another switch
/// answers on it), mode 0600. Bound before the services' listeners, so
/// that once the switch accepts, tcpvsadm can reach it.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on it (a running ktcpvs?)",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    // Owner only; SO_PEERCRED below covers the moment before the chmod.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| l.set_nonblocking(true))
    {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(l)
}

/// Serves a socket from [`bind`] on a thread of its own until `stop`; the
/// socket file is removed on the way out.
pub fn serve(
    l: UnixListener,
    path: &Path,
    rt: Arc<Runtime>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("ktcpvs-admin".into())
        .spawn(move || {
            while !stop.load(Relaxed) {
                match l.accept() {
                    Ok((s, _)) => handle(s, &rt),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let _ = std::fs::remove_file(&path);
        })
}

/// The uid of the process at the other end.
fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

fn handle(s: UnixStream, rt: &Runtime) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    // The line is read in every case: closing with it unread would reset
    // the connection and lose the reply.
    let mut line = String::new();
    let mut r = BufReader::new((&s).take(MAX_LINE));
    let complete = r.read_line(&mut line).is_ok() && line.ends_with('\n');
    let reply = match peer_uid(&s) {
        Some(uid) if uid == me || uid == 0 => {
            if complete {
                debug!(request = line.trim_end(), "admin request");
                match dispatch(rt, line.trim_end()) {
                    Ok(body) => format!("ok\n{body}"),
                    Err(e) => format!("error: {e}\n"),
                }
            } else {
                "error: expected one request line\n".to_string()
            }
        }
        uid => {
            warn!(?uid, "admin socket: connection from another user refused");
            "error: permission denied (only the switch's owner may administer it)\n".to_string()
        }
    };
    let _ = (&s).write_all(reply.as_bytes());
}

/// The request's `key=value` arguments and bare flags.
struct Args<'a> {
    kv: Vec<(&'a str, &'a str)>,
    flags: Vec<&'a str>,
}

impl<'a> Args<'a> {
    fn get(&self, k: &str) -> Option<&'a str> {
        self.kv.iter().find(|(a, _)| *a == k).map(|(_, v)| *v)
    }
    fn need(&self, k: &str) -> Result<&'a str, AdminError> {
        self.get(k)
            .ok_or_else(|| AdminError(format!("{k}: is required")))
    }
    fn flag(&self, f: &str) -> bool {
        self.flags.contains(&f)
    }
    fn addr(&self, k: &str) -> Result<SocketAddr, AdminError> {
        let v = self.need(k)?;
        v.parse()
            .map_err(|e| AdminError(format!("{k}: not an address ip:port: {v:?} ({e})")))
    }
    fn num(&self, k: &str) -> Result<Option<u32>, AdminError> {
        self.get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| AdminError(format!("{k}: not a number: {v:?}")))
            })
            .transpose()
    }
    fn sched(&self) -> Result<Option<SchedulerKind>, AdminError> {
        self.get("scheduler")
            .map(|v| {
                SchedulerKind::parse(v).ok_or_else(|| {
                    AdminError(format!(
                        "scheduler: unknown scheduler {v:?} (known: {})",
                        SchedulerKind::NAMES
                    ))
                })
            })
            .transpose()
    }
    fn server_args(&self) -> Result<ServerArgs, AdminError> {
        Ok(ServerArgs {
            weight: self.num("weight")?,
            low: self.num("low")?,
            high: self.num("high")?,
        })
    }
}

/// Runs one request line; `Ok` holds the reply body.
pub fn dispatch(rt: &Runtime, line: &str) -> Result<String, AdminError> {
    let mut words = line.split_ascii_whitespace();
    let cmd = words.next().unwrap_or("");
    let mut args = Args {
        kv: Vec::new(),
        flags: Vec::new(),
    };
    for w in words {
        match w.split_once('=') {
            Some(kv) => args.kv.push(kv),
            None => args.flags.push(w),
        }
    }
    let line = |r: Result<String, AdminError>| r.map(|m| m + "\n");
    match cmd {
        "add-service" => line(rt.add_service(
            args.addr("listen")?,
            args.sched()?,
            args.get("name").map(str::to_string),
        )),
        "edit-service" => line(rt.edit_service(args.need("service")?, args.sched()?)),
        "del-service" => line(rt.del_service(args.need("service")?)),
        "add-server" => line(rt.add_server(
            args.need("service")?,
            args.addr("server")?,
            args.server_args()?,
        )),
        "edit-server" => line(rt.edit_server(
            args.need("service")?,
            args.addr("server")?,
            args.server_args()?,
        )),
        "del-server" => line(rt.del_server(args.need("service")?, args.addr("server")?)),
        "list" if args.flag("json") => rt.list_json(args.get("service")),
        "list" => rt.list(args.get("service"), args.flag("stats")),
        "zero" => line(rt.zero(args.get("service"))),
        "reload" => line(rt.reload()),
        "" => Err(AdminError("empty request".into())),
        other => Err(AdminError(format!("unknown command {other:?}"))),
    }
}
