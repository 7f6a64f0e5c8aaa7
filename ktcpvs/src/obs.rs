//! What one request did, recorded as it runs, for the byte and status
//! metrics and the access log. The record is a task-local of the client
//! connection's task (set up by `conn::serve_client`), so the places that
//! learn something — the error replies, the relay loops — note it without
//! a parameter threaded through every call; outside such a task (health
//! probes, tests) the notes are no-ops.

use std::cell::Cell;
use std::net::SocketAddr;

/// One request's record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rec {
    /// Status of the final response sent to the client; 0 if none was.
    pub status: u16,
    /// Response head bytes sent to the client.
    pub head_out: u64,
    /// Response body bytes sent to the client.
    pub body_out: u64,
    /// Request body bytes read from the client and forwarded.
    pub body_in: u64,
    /// Request bytes sent to real servers (heads and bodies, every attempt).
    pub server_out: u64,
    /// Response bytes read from real servers.
    pub server_in: u64,
    /// The real server of the last attempt.
    pub server: Option<SocketAddr>,
}

tokio::task_local! {
    static REC: Cell<Rec>;
}

/// Runs `f` (a connection's task) with a request record.
pub async fn scope<F: std::future::Future>(f: F) -> F::Output {
    REC.scope(Cell::new(Rec::default()), f).await
}

/// Updates the current request's record (no-op outside [`scope`]).
#[inline]
pub fn note(f: impl FnOnce(&mut Rec)) {
    let _ = REC.try_with(|c| {
        let mut r = c.get();
        f(&mut r);
        c.set(r);
    });
}

/// Whether anything of a response (interim ones included) has been sent
/// to the client for the current request (false outside [`scope`]).
#[inline]
pub fn responding() -> bool {
    REC.try_with(|c| {
        let r = c.get();
        r.status != 0 || r.head_out != 0
    })
    .unwrap_or(false)
}

/// Takes the current record, leaving a fresh one for the next request.
#[inline]
pub fn take() -> Rec {
    REC.try_with(|c| c.take()).unwrap_or_default()
}

/// Whether the raw request head `head` has a header `name` (ASCII,
/// case-insensitive).
pub fn has_header(head: &[u8], name: &[u8]) -> bool {
    head.split(|&c| c == b'\n').skip(1).any(|l| {
        l.len() > name.len() && l[name.len()] == b':' && l[..name.len()].eq_ignore_ascii_case(name)
    })
}

/// Adds `X-Request-Id: <worker>-<seq>` to the forwarded head `out` (which
/// ends with its empty line) unless the client's head `head` has one.
pub fn add_request_id(head: &[u8], out: &mut Vec<u8>, worker: usize, seq: u64) {
    use std::io::Write as _;
    if has_header(head, b"x-request-id") || !out.ends_with(b"\r\n\r\n") {
        return;
    }
    out.truncate(out.len() - 2);
    let _ = write!(out, "X-Request-Id: {worker}-{seq}\r\n\r\n");
}

/// For warnings that must not flood the log: true (and `last` set to now)
/// when `last` is unset or `every` has passed since it.
pub fn due(last: &mut Option<std::time::Instant>, every: std::time::Duration) -> bool {
    if last.is_some_and(|t| t.elapsed() < every) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_added_unless_present() {
        let mut out = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        add_request_id(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &mut out, 2, 9);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: 2-9\r\n\r\n"
        );
        let head = b"GET / HTTP/1.1\r\nx-request-ID: abc\r\n\r\n";
        let mut out = b"GET / HTTP/1.1\r\nx-request-ID: abc\r\n\r\n".to_vec();
        add_request_id(head, &mut out, 2, 9);
        assert_eq!(&out[..], &head[..]);
        assert!(!has_header(
            b"GET /x-request-id: HTTP/1.1\r\n\r\n",
            b"x-request-id"
        ));
    }
}
