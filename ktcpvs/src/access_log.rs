//! The access log (`global.access_log`): one line per request in the
//! combined log format, plus three fields of our own:
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:06:00:00 +0000] "GET /a HTTP/1.1" 200 12 "-" "curl/8.5" 127.0.0.1:9001 347 0-17
//! ```
//!
//! i.e. client IP, `-`, `-`, the time the request head was complete (UTC),
//! the request line, the status sent to the client (`-` if none was, e.g.
//! the client left), the response body bytes sent, Referer, User-Agent,
//! then the real server the request went to (`-` if none), the request's
//! duration in microseconds and its request id (worker id `-` per-worker
//! sequence number, the id of the `req` tracing span).
//!
//! The request path never blocks and never allocates: each worker formats
//! lines into a buffer of its own (a per-connection scratch buffer from
//! the worker's pool holds the request line and headers while the request
//! runs) and hands the buffer to the writer thread over a bounded channel
//! when it is nearly full or at the latest every [`FLUSH_EVERY`]. Written
//! buffers come back through a free list for reuse. If the writer falls
//! behind (the channel is full) the buffer's lines are dropped and counted
//! (`ktcpvs_access_log_dropped_total`). The writer re-opens the file when
//! asked ([`AccessLog::reopen`], on SIGHUP and `tcpvsadm reload`), so that
//! logrotate can rename the file and signal the switch.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::warn;

/// Size of a worker's line buffer; it is handed over before it would grow.
pub const BUF_CAP: usize = 64 * 1024;
/// Buffers in flight to the writer at most (bounds the memory to
/// `QUEUE * BUF_CAP` plus one buffer per worker).
const QUEUE: usize = 64;
/// The longest a line waits in a worker's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Longest request line, Referer or User-Agent logged (longer ones are cut).
const MAX_FIELD: usize = 2048;

/// The shared part: the channel to the writer thread and the free list.
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    reopen: Arc<AtomicBool>,
    /// Lines dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Buffers handed over and not yet written.
    pending: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens (creates, appends to) `path` and starts the writer thread.
    pub fn start(path: &Path) -> std::io::Result<Arc<AccessLog>> {
        let file = open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let free = Arc::new(Mutex::new(Vec::new()));
        let reopen = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicU64::new(0));
        let (f2, r2, p, p2) = (
            free.clone(),
            reopen.clone(),
            path.to_path_buf(),
            pending.clone(),
        );
        std::thread::Builder::new()
            .name("ktcpvs-accesslog".into())
            .spawn(move || writer(rx, file, p, f2, r2, p2))?;
        Ok(Arc::new(AccessLog {
            tx,
            free,
            reopen,
            dropped: AtomicU64::new(0),
            pending,
        }))
    }

    /// Waits (at most `limit`) until every buffer handed over is written;
    /// for shutdown, after the workers flushed.
    pub fn drain(&self, limit: Duration) {
        let end = std::time::Instant::now() + limit;
        while self.pending.load(Relaxed) > 0 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asks the writer to re-open the file (after its next buffer, or
    /// within a flush interval).
    pub fn reopen(&self) {
        self.reopen.store(true, Relaxed);
        // Wake the writer even if no request comes.
        let _ = self.tx.try_send(Vec::new());
    }

    fn take_free(&self) -> Vec<u8> {
        let b = self.free.lock().ok().and_then(|mut f| f.pop());
        b.unwrap_or_else(|| Vec::with_capacity(BUF_CAP))
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn writer(
    rx: Receiver<Vec<u8>>,
    mut file: File,
    path: PathBuf,
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    reopen: Arc<AtomicBool>,
    pending: Arc<AtomicU64>,
) {
    // Ends when every sender (the AccessLog and the workers) is gone.
    while let Ok(mut b) = rx.recv() {
        if reopen.swap(false, Relaxed) {
            let _ = file.flush();
            match open(&path) {
                Ok(f) => file = f,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot re-open the access log; writing to the old file")
                }
            }
        }
        if b.is_empty() {
            continue;
        }
        if let Err(e) = file.write_all(&b) {
            warn!(path = %path.display(), error = %e, "cannot write the access log");
        }
        pending.fetch_sub(1, Relaxed);
        b.clear();
        if let Ok(mut f) = free.lock() {
            if f.len() < QUEUE {
                f.push(b);
            }
        }
    }
}

/// One worker's side of the log.
pub struct WorkerLog {
    shared: Arc<AccessLog>,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    /// Cached `[time]` text and the second it is for.
    time: Cell<(u64, [u8; 28])>,
    /// A monotonic instant and the wall-clock time then (re-read at most
    /// once a second): wall-clock times of requests without a clock read.
    base: Cell<(std::time::Instant, SystemTime)>,
}

impl WorkerLog {
    pub fn new(shared: Arc<AccessLog>) -> WorkerLog {
        WorkerLog {
            buf: RefCell::new(shared.take_free()),
            shared,
            lines: Cell::new(0),
            time: Cell::new((u64::MAX, [0; 28])),
            base: Cell::new((std::time::Instant::now(), SystemTime::now())),
        }
    }

    /// The wall-clock time at monotonic instant `t`.
    pub fn wall(&self, t: std::time::Instant) -> SystemTime {
        let (i, s) = self.base.get();
        match t.checked_duration_since(i) {
            Some(d) if d < Duration::from_secs(1) => s + d,
            _ => {
                let now = (std::time::Instant::now(), SystemTime::now());
                self.base.set(now);
                now.1
                    .checked_sub(now.0.saturating_duration_since(t))
                    .unwrap_or(now.1)
            }
        }
    }

    /// Hands the buffer to the writer if it holds anything.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let next = self.shared.take_free();
        let full = std::mem::replace(&mut *buf, next);
        let n = self.lines.replace(0);
        self.shared.pending.fetch_add(1, Relaxed);
        match self.shared.tx.try_send(full) {
            Ok(()) => {}
            Err(TrySendError::Full(mut b)) | Err(TrySendError::Disconnected(mut b)) => {
                self.shared.pending.fetch_sub(1, Relaxed);
                self.shared.dropped.fetch_add(n, Relaxed);
                b.clear();
                // Keep the old buffer; the new one goes back to the free list.
                let next = std::mem::replace(&mut *buf, b);
                if let Ok(mut f) = self.shared.free.lock() {
                    if f.len() < QUEUE {
                        f.push(next);
                    }
                }
            }
        }
    }

    /// Appends one line (`fields` as captured by [`capture`] at the start
    /// of the request).
    pub fn log(&self, ip: &[u8], started: SystemTime, scratch: &[u8], f: &Fields, end: &End) {
        if self.buf.borrow().len() + ip.len() + scratch.len() + 160 > BUF_CAP {
            self.flush();
        }
        let secs = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (at, mut text) = self.time.get();
        if at != secs {
            format_time(secs, &mut text);
            self.time.set((secs, text));
        }
        let mut b = self.buf.borrow_mut();
        write_line(&mut b, ip, &text, scratch, f, end);
        self.lines.set(self.lines.get() + 1);
    }
}

/// Hands worker `w`'s lines over at least every [`FLUSH_EVERY`] (stops
/// with the worker's shutdown, which flushes once more).
pub async fn flusher(w: std::rc::Rc<crate::worker::Worker>) {
    let mut sd = w.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = sd.changed() => break,
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
        }
        if let Some(l) = &w.alog {
            l.flush();
        }
    }
}

/// Where the captured request line, Referer and User-Agent are in the
/// scratch buffer (already escaped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields {
    pub request: (usize, usize),
    pub referer: (usize, usize),
    pub agent: (usize, usize),
}

/// What is known when the request ends.
#[derive(Debug, Clone, Copy)]
pub struct End {
    pub status: u16,
    pub body_bytes: u64,
    pub server: Option<SocketAddr>,
    pub micros: u64,
    pub worker: usize,
    pub seq: u64,
}

/// Captures the request line and the Referer and User-Agent headers of
/// the request head `head` (escaped) into `scratch`. A head that did not
/// parse is captured by its first line.
pub fn capture(head: &[u8], scratch: &mut Vec<u8>) -> Fields {
    scratch.clear();
    let line_end = head.iter().position(|&c| c == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let request = push_escaped(scratch, line);
    let (mut referer, mut agent) = ((0, 0), (0, 0));
    let mut rest = head.get(line_end + 1..).unwrap_or(&[]);
    while !rest.is_empty() {
        let e = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        let l = rest[..e].strip_suffix(b"\r").unwrap_or(&rest[..e]);
        if l.is_empty() {
            break;
        }
        if let Some(c) = l.iter().position(|&c| c == b':') {
            let (name, value) = (&l[..c], trim(&l[c + 1..]));
            if name.eq_ignore_ascii_case(b"referer") && referer == (0, 0) {
                referer = push_escaped(scratch, value);
            } else if name.eq_ignore_ascii_case(b"user-agent") && agent == (0, 0) {
                agent = push_escaped(scratch, value);
            }
        }
        rest = rest.get(e + 1..).unwrap_or(&[]);
    }
    Fields {
        request,
        referer,
        agent,
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e.max(s)]
}

/// Appends `v` escaped (`"`, `\`, controls and non-ASCII as `\xHH`), cut
/// at [`MAX_FIELD`]; returns its range.
fn push_escaped(out: &mut Vec<u8>, v: &[u8]) -> (usize, usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let start = out.len();
    for &c in &v[..v.len().min(MAX_FIELD)] {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
        } else {
            out.push(c);
        }
    }
    (start, out.len())
}

fn field(scratch: &[u8], r: (usize, usize)) -> &[u8] {
    match scratch.get(r.0..r.1) {
        Some(v) if !v.is_empty() => v,
        _ => b"-",
    }
}

/// Formats one line (no allocation beyond `out`'s growth).
pub fn write_line(
    out: &mut Vec<u8>,
    ip: &[u8],
    time: &[u8; 28],
    scratch: &[u8],
    f: &Fields,
    e: &End,
) {
    out.extend_from_slice(ip);
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(time);
    out.extend_from_slice(b" \"");
    out.extend_from_slice(field(scratch, f.request));
    out.extend_from_slice(b"\" ");
    if e.status == 0 {
        out.push(b'-');
    } else {
        push_u64(out, e.status as u64);
    }
    out.push(b' ');
    push_u64(out, e.body_bytes);
    out.extend_from_slice(b" \"");
    out.extend_from_slice(field(scratch, f.referer));
    out.extend_from_slice(b"\" \"");
    out.extend_from_slice(field(scratch, f.agent));
    out.extend_from_slice(b"\" ");
    match e.server {
        Some(SocketAddr::V4(a)) => {
            for (k, o) in a.ip().octets().iter().enumerate() {
                if k > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push(b'-'),
    }
    out.push(b' ');
    push_u64(out, e.micros);
    out.push(b' ');
    push_u64(out, e.worker as u64);
    out.push(b'-');
    push_u64(out, e.seq);
    out.push(b'\n');
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// `[22/Nov/2026:06:00:00 +0000]` for `secs` since the epoch (UTC).
pub fn format_time(secs: u64, out: &mut [u8; 28]) {
    const MON: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as u64;
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let mut c = std::io::Cursor::new(&mut out[..]);
    let _ = c.write_all(b"[");
    let _ = c.write_all(&two(d));
    let _ = c.write_all(b"/");
    let _ = c.write_all(MON[m - 1]);
    let _ = c.write_all(b"/");
    let _ = c.write_all(&two(y / 100));
    let _ = c.write_all(&two(y % 100));
    let _ = c.write_all(b":");
    let _ = c.write_all(&two(rem / 3600));
    let _ = c.write_all(b":");
    let _ = c.write_all(&two(rem / 60 % 60));
    let _ = c.write_all(b":");
    let _ = c.write_all(&two(rem % 60));
    let _ = c.write_all(b" +0000]");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: u64) -> String {
        let mut t = [0u8; 28];
        format_time(secs, &mut t);
        String::from_utf8(t.to_vec()).unwrap()
    }

    #[test]
    fn times() {
        assert_eq!(time(0), "[01/Jan/1970:00:00:00 +0000]");
        // date -u -d @951782400 → Tue Feb 29 00:00:00 UTC 2000
        assert_eq!(time(951_782_400), "[29/Feb/2000:00:00:00 +0000]");
        // date -u -d @1795327199 → 23:59:59 on 22 Nov 2026
        assert_eq!(time(1_795_391_999), "[22/Nov/2026:23:59:59 +0000]");
        assert_eq!(time(1_798_761_600), "[01/Jan/2027:00:00:00 +0000]");
    }

    #[test]
    fn wall_clock_from_instants() {
        let al = AccessLog::start(
            &std::env::temp_dir().join(format!("ktcpvs-al-wall-{}", std::process::id())),
        )
        .unwrap();
        let w = WorkerLog::new(al);
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        let now = std::time::Instant::now();
        let a = secs(w.wall(now));
        let b = secs(SystemTime::now());
        assert!((a - b).abs() < 1.0, "{a} vs {b}");
        // An instant older than the base (re-based meanwhile) still maps back.
        let old = now.checked_sub(Duration::from_secs(5)).unwrap_or(now);
        let c = secs(w.wall(old));
        assert!((b - c) > 3.0 || old == now, "{b} vs {c}");
        let _ = std::fs::remove_file(
            std::env::temp_dir().join(format!("ktcpvs-al-wall-{}", std::process::id())),
        );
    }

    #[test]
    fn line_is_combined_plus_three_fields() {
        let head = b"GET /a?b=\"c\" HTTP/1.1\r\nHost: x\r\nuser-agent:  curl/8 \r\nReferer: http://r/\xff\r\n\r\n";
        let mut s = Vec::new();
        let f = capture(head, &mut s);
        let mut out = Vec::new();
        let mut t = [0u8; 28];
        format_time(0, &mut t);
        let e = End {
            status: 200,
            body_bytes: 1234,
            server: Some("127.0.0.1:9001".parse().unwrap()),
            micros: 56,
            worker: 3,
            seq: 17,
        };
        write_line(&mut out, b"10.0.0.1", &t, &s, &f, &e);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 1234 \"http://r/\\xFF\" \"curl/8\" 127.0.0.1:9001 56 3-17\n"
        );
    }

    #[test]
    fn missing_fields_are_dashes() {
        let mut s = Vec::new();
        let f = capture(b"garbage without newline", &mut s);
        let mut out = Vec::new();
        let mut t = [0u8; 28];
        format_time(0, &mut t);
        let e = End {
            status: 0,
            body_bytes: 0,
            server: None,
            micros: 0,
            worker: 0,
            seq: 0,
        };
        write_line(&mut out, b"::1", &t, &s, &f, &e);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "::1 - - [01/Jan/1970:00:00:00 +0000] \"garbage without newline\" - 0 \"-\" \"-\" - 0 0-0\n"
        );
    }

    #[test]
    fn a_full_channel_drops_and_counts_lines_with_bounded_buffers() {
        // A writer that never reads: the channel fills after QUEUE buffers.
        let (tx, rx) = sync_channel(QUEUE);
        let al = Arc::new(AccessLog {
            tx,
            free: Arc::new(Mutex::new(Vec::new())),
            reopen: Arc::new(AtomicBool::new(false)),
            dropped: AtomicU64::new(0),
            pending: Arc::new(AtomicU64::new(0)),
        });
        let w = WorkerLog::new(al.clone());
        let mut s = Vec::new();
        let f = capture(b"GET / HTTP/1.1\r\n\r\n", &mut s);
        let e = End {
            status: 200,
            body_bytes: 1,
            server: None,
            micros: 1,
            worker: 0,
            seq: 1,
        };
        for round in 0..QUEUE + 5 {
            for _ in 0..=round % 3 {
                w.log(b"1.2.3.4", SystemTime::now(), &s, &f, &e);
            }
            w.flush();
        }
        // The lines of the last five rounds were dropped and counted.
        let lost: u64 = (QUEUE..QUEUE + 5).map(|r| (r % 3 + 1) as u64).sum();
        assert_eq!(al.dropped.load(Relaxed), lost);
        assert_eq!(al.pending.load(Relaxed), QUEUE as u64);
        // Dropping reused buffers instead of growing the free list unboundedly.
        assert!(al.free.lock().unwrap().len() <= QUEUE);
        drop(rx);
    }

    #[test]
    fn writer_writes_and_reopens() {
        let dir = std::env::temp_dir().join(format!("ktcpvs-al-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("a.log");
        let _ = std::fs::remove_file(&p);
        let al = AccessLog::start(&p).unwrap();
        let w = WorkerLog::new(al.clone());
        let mut s = Vec::new();
        let f = capture(b"GET / HTTP/1.1\r\n\r\n", &mut s);
        let e = End {
            status: 200,
            body_bytes: 1,
            server: None,
            micros: 1,
            worker: 0,
            seq: 1,
        };
        w.log(b"1.2.3.4", SystemTime::now(), &s, &f, &e);
        w.flush();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&p)
            .unwrap_or_default()
            .lines()
            .count()
            < 1
        {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::rename(&p, dir.join("a.log.1")).unwrap();
        al.reopen();
        w.log(b"1.2.3.5", SystemTime::now(), &s, &f, &e);
        w.flush();
        while std::fs::read_to_string(&p)
            .unwrap_or_default()
            .lines()
            .count()
            < 1
        {
            assert!(std::time::Instant::now() < deadline, "not re-opened");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("1.2.3.5 "));
        assert!(std::fs::read_to_string(dir.join("a.log.1"))
            .unwrap()
            .starts_with("1.2.3.4 "));
        assert_eq!(al.dropped.load(Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
