//! A blocking raw HTTP/1.x client that sends exact bytes and parses the
//! responses incrementally: status line and headers (with `httparse`), then
//! the body by `Content-Length`, chunked coding, or connection close, as
//! RFC 9112 §6.3 orders it. Every read is bounded by a timeout.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest response head accepted before the reply is called malformed.
const MAX_HEAD: usize = 1 << 20;
/// Default read/write timeout of a client socket.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the body of a response was delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    None,
    Length(usize),
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

/// One complete response.
#[derive(Clone)]
pub struct Response {
    /// Minor version: `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunked coding removed).
    pub body: Vec<u8>,
    /// The exact bytes of the message as received, head and body.
    pub raw: Vec<u8>,
    pub framing: Framing,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of the header with this name.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a comma-separated header (e.g. `Connection`) holds `token`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// `X-Origin` of the response (the origin that served it).
    pub fn origin(&self) -> &str {
        self.header("x-origin").unwrap_or("")
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HTTP/1.{} {} {} {:?} framing={:?} body_len={} body_head={:?}",
            self.version,
            self.status,
            self.reason,
            self.headers,
            self.framing,
            self.body.len(),
            String::from_utf8_lossy(&self.body[..self.body.len().min(120)])
        )
    }
}

/// Why no complete response was read.
pub enum ReadError {
    /// The peer closed (FIN or RST) before the message was complete;
    /// `partial` is everything received for it.
    Closed { partial: Vec<u8> },
    /// Nothing more arrived within the timeout.
    Timeout { partial: Vec<u8> },
    /// The bytes are not an HTTP/1.x response.
    Malformed { reason: String, partial: Vec<u8> },
}

impl ReadError {
    pub fn partial(&self) -> &[u8] {
        match self {
            ReadError::Closed { partial }
            | ReadError::Timeout { partial }
            | ReadError::Malformed { partial, .. } => partial,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self, ReadError::Closed { .. })
    }
}

impl fmt::Debug for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, p) = match self {
            ReadError::Closed { partial } => ("closed".to_string(), partial),
            ReadError::Timeout { partial } => ("timeout".to_string(), partial),
            ReadError::Malformed { reason, partial } => (format!("malformed: {reason}"), partial),
        };
        write!(
            f,
            "{kind} after {} bytes: {:?}",
            p.len(),
            String::from_utf8_lossy(&p[..p.len().min(300)])
        )
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

enum Fill {
    Data,
    Eof,
    Timeout,
}

/// A client connection.
pub struct RawClient {
    stream: TcpStream,
    /// Received, not yet consumed bytes; a message being parsed starts at 0.
    buf: Vec<u8>,
    eof: bool,
    timeout: Duration,
}

impl RawClient {
    /// Connects within 5 s; panics otherwise.
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Self::from_stream(stream)
    }

    /// Connects from the loopback address `src` (any of 127.0.0.0/8), so a
    /// test can play several clients.
    pub fn connect_from(addr: SocketAddr, src: std::net::IpAddr) -> Self {
        let connect = || -> std::io::Result<Self> {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.bind(&SocketAddr::new(src, 0).into())?;
            s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            Self::from_stream(s.into())
        };
        connect().unwrap_or_else(|e| panic!("connect from {src} to {addr}: {e}"))
    }

    fn from_stream(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the timeout of each read (not of a whole response).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
        self.stream
            .set_read_timeout(Some(t))
            .expect("set_read_timeout");
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends bytes; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Half-closes the sending side (FIN).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Closes with RST instead of FIN (SO_LINGER 0).
    pub fn reset(self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: valid socket fd and a correctly sized linger struct.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(self);
    }

    /// Sends `req` and reads one response to a non-HEAD request; panics on error.
    pub fn roundtrip(&mut self, req: &[u8]) -> Response {
        self.send(req);
        self.read_response()
            .unwrap_or_else(|e| panic!("no response to {:?}: {e}", head_line(req)))
    }

    /// Reads the next response to a request that was not HEAD.
    pub fn read_response(&mut self) -> Result<Response, ReadError> {
        self.read_response_to("GET")
    }

    /// Reads the next response (including 1xx interim ones) to a request
    /// with the given method.
    pub fn read_response_to(&mut self, method: &str) -> Result<Response, ReadError> {
        let head_end = self.read_head()?;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&self.buf[..head_end]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(self.malformed("partial head")),
            Err(e) => return Err(self.malformed(&format!("head: {e}"))),
        }
        let version = parsed.version.unwrap_or(1);
        let status = parsed.code.unwrap_or(0);
        let reason = parsed.reason.unwrap_or("").to_string();
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |n: &str| {
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        let te = find("transfer-encoding");
        let cl = find("content-length");
        let bodiless = method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304;
        let mut body = Vec::new();
        let (framing, end) = if bodiless {
            (Framing::None, head_end)
        } else if !te.is_empty() {
            let last = te.join(",");
            let last = last
                .rsplit(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if last != "chunked" {
                let end = self.read_to_close(head_end, &mut body)?;
                (Framing::Close, end)
            } else {
                (Framing::Chunked, self.read_chunked(head_end, &mut body)?)
            }
        } else if !cl.is_empty() {
            let n: usize = match cl[0].trim().parse() {
                Ok(n) if cl.iter().all(|v| v.trim() == cl[0].trim()) => n,
                _ => return Err(self.malformed(&format!("content-length {cl:?}"))),
            };
            self.ensure(head_end + n)?;
            body.extend_from_slice(&self.buf[head_end..head_end + n]);
            (Framing::Length(n), head_end + n)
        } else {
            let end = self.read_to_close(head_end, &mut body)?;
            (Framing::Close, end)
        };
        let raw: Vec<u8> = self.buf.drain(..end).collect();
        Ok(Response {
            version,
            status,
            reason,
            headers,
            body,
            raw,
            framing,
        })
    }

    /// Reads the next final (non-1xx) response, skipping interim ones.
    pub fn read_final_response(&mut self) -> Result<Response, ReadError> {
        loop {
            let r = self.read_response()?;
            if !(100..200).contains(&r.status) {
                return Ok(r);
            }
        }
    }

    /// Reads exactly `n` more bytes (raw, not a message: e.g. a tunnel's).
    pub fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        self.ensure(n)?;
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads whatever arrives until close or `within`; returns the bytes and
    /// whether the connection was closed.
    pub fn read_until_close(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + within;
        let old = self.timeout;
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.fill() {
                Fill::Data => {}
                Fill::Eof => break true,
                Fill::Timeout => break false,
            }
        };
        let _ = self.stream.set_read_timeout(Some(old));
        (std::mem::take(&mut self.buf), closed)
    }

    /// Ok if the peer closes the connection within `within` without sending
    /// anything more; Err describing what happened otherwise.
    pub fn expect_closed(&mut self, within: Duration) -> Result<(), String> {
        let (extra, closed) = self.read_until_close(within);
        match (extra.is_empty(), closed) {
            (true, true) => Ok(()),
            (false, _) => Err(format!(
                "{} unexpected bytes (closed={closed}): {:?}",
                extra.len(),
                String::from_utf8_lossy(&extra[..extra.len().min(300)])
            )),
            (true, false) => Err(format!("connection still open after {within:?}")),
        }
    }

    /// True if nothing arrives and the connection stays open for `dur`.
    pub fn stays_open_silent(&mut self, dur: Duration) -> bool {
        let (extra, closed) = self.read_until_close(dur);
        let quiet = extra.is_empty() && !closed;
        self.buf = extra;
        quiet
    }

    fn malformed(&self, reason: &str) -> ReadError {
        ReadError::Malformed {
            reason: reason.to_string(),
            partial: self.buf.clone(),
        }
    }

    fn fill(&mut self) -> Fill {
        if self.eof {
            return Fill::Eof;
        }
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return Fill::Eof;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Fill::Data;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Fill::Timeout
                }
                Err(_) => {
                    // ECONNRESET and friends: the peer is gone.
                    self.eof = true;
                    return Fill::Eof;
                }
            }
        }
    }

    fn fill_or_err(&mut self) -> Result<(), ReadError> {
        match self.fill() {
            Fill::Data => Ok(()),
            Fill::Eof => Err(ReadError::Closed {
                partial: self.buf.clone(),
            }),
            Fill::Timeout => Err(ReadError::Timeout {
                partial: self.buf.clone(),
            }),
        }
    }

    /// Makes sure `self.buf` holds at least `n` bytes.
    fn ensure(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < n {
            self.fill_or_err()?;
        }
        Ok(())
    }

    /// Reads until a whole head is buffered; returns the offset just past
    /// its blank line.
    fn read_head(&mut self) -> Result<usize, ReadError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = find(&self.buf[scanned..], b"\r\n\r\n") {
                return Ok(scanned + i + 4);
            }
            scanned = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_HEAD {
                return Err(self.malformed("head too long"));
            }
            self.fill_or_err()?;
        }
    }

    /// Reads a CRLF-terminated line starting at `at`; returns (line, next).
    fn read_line(&mut self, at: usize) -> Result<(String, usize), ReadError> {
        loop {
            if let Some(i) = find(&self.buf[at..], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[at..at + i]).into_owned();
                return Ok((line, at + i + 2));
            }
            if self.buf.len() - at > 64 * 1024 {
                return Err(self.malformed("chunk line too long"));
            }
            self.fill_or_err()?;
        }
    }

    fn read_chunked(&mut self, mut at: usize, body: &mut Vec<u8>) -> Result<usize, ReadError> {
        loop {
            let (line, next) = self.read_line(at)?;
            let size_txt = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_txt, 16)
                .map_err(|_| self.malformed(&format!("chunk size line {line:?}")))?;
            at = next;
            if size == 0 {
                // Trailer section, ended by an empty line.
                loop {
                    let (line, next) = self.read_line(at)?;
                    at = next;
                    if line.is_empty() {
                        return Ok(at);
                    }
                }
            }
            self.ensure(at + size + 2)?;
            body.extend_from_slice(&self.buf[at..at + size]);
            if &self.buf[at + size..at + size + 2] != b"\r\n" {
                return Err(self.malformed("chunk data not followed by CRLF"));
            }
            at += size + 2;
        }
    }

    fn read_to_close(&mut self, at: usize, body: &mut Vec<u8>) -> Result<usize, ReadError> {
        loop {
            match self.fill() {
                Fill::Data => {}
                Fill::Eof => break,
                Fill::Timeout => {
                    return Err(ReadError::Timeout {
                        partial: self.buf.clone(),
                    })
                }
            }
        }
        body.extend_from_slice(&self.buf[at..]);
        Ok(self.buf.len())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first line of a request, for messages.
pub fn head_line(req: &[u8]) -> String {
    let end = find(req, b"\r\n").unwrap_or(req.len().min(100));
    String::from_utf8_lossy(&req[..end]).into_owned()
}

/// Connects, sends `req`, reads one response.
pub fn fetch(addr: SocketAddr, req: &[u8]) -> Result<Response, ReadError> {
    let mut c = RawClient::connect(addr);
    c.send(req);
    c.read_response()
}
