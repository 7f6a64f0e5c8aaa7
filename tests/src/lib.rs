//! End-to-end harness for `ktcpvs`.
//!
//! The tests in `tests/tests/*.rs` run the REAL `ktcpvs` binary (see
//! [`switch::ktcpvs_bin`]) in front of REAL HTTP origins on the loopback
//! interface:
//!
//! * [`origin::Origin`] — an in-process hyper 1 HTTP/1.1 server with its own
//!   tokio runtime thread. It counts accepted TCP connections and requests and
//!   records every request head it saw.
//! * [`raw_origin::RawOrigin`] — a raw TCP "server" that misbehaves on purpose
//!   (truncated bodies, close-delimited responses, accept-and-close).
//! * [`client::RawClient`] — a blocking client over `std::net::TcpStream` that
//!   sends exact bytes and parses responses incrementally, so pipelining and
//!   framing can be checked byte for byte.
//! * [`switch::Ktcpvs`] — a guard that writes a config, spawns the binary,
//!   waits until it accepts, and on drop sends SIGTERM and prints the captured
//!   stderr if the test failed.
//!
//! Every wait is bounded; every address is `127.0.0.1`.

pub mod client;
pub mod cls;
pub mod config;
pub mod origin;
pub mod pattern;
pub mod ports;
pub mod raw_origin;
pub mod switch;

pub use client::{fetch, Framing, RawClient, ReadError, Response};
pub use cls::{cls_server_bin, ClsServer};
pub use config::{Config, Server, Service};
pub use origin::{Origin, SeenRequest};
pub use pattern::{md5_hex, pattern, pattern_md5};
pub use ports::{dead_addr, free_addr, free_port_run};
pub use raw_origin::{RawBehaviour, RawOrigin};
pub use switch::{
    ktcpvs_bin, run_bin, run_check, run_check_file, run_program, tcpvsadm_bin, CheckOutput, Ktcpvs,
};

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns the
/// last value of `cond`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `n` origins named `o1`, `o2`, ….
pub fn origins(n: usize) -> Vec<Origin> {
    (1..=n).map(|i| Origin::start(&format!("o{i}"))).collect()
}

/// The addresses of `origins`.
pub fn addrs(origins: &[Origin]) -> Vec<std::net::SocketAddr> {
    origins.iter().map(|o| o.addr()).collect()
}

/// A minimal HTTP/1.1 GET request with a `Host` header.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").into_bytes()
}

/// A request with the given method, extra header lines and body. A
/// `Content-Length` header is added when `body` is not empty and no
/// `Content-Length`/`Transfer-Encoding` header was given.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\n");
    let mut framed = false;
    for (name, value) in headers {
        let lname = name.to_ascii_lowercase();
        framed |= lname == "content-length" || lname == "transfer-encoding";
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !framed && (!body.is_empty() || method == "POST" || method == "PUT") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Encodes `body` with chunked transfer coding, in chunks of `chunk` bytes.
pub fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk.max(1) * 8 + 16);
    for piece in body.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
