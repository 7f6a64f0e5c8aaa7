//! A raw-TCP origin that misbehaves on purpose. Each accepted connection is
//! served on its own thread: read one request head (bounded wait), answer
//! according to [`RawBehaviour`], close.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::pattern::pattern;

/// What the raw origin does with each connection.
#[derive(Clone, Debug)]
pub enum RawBehaviour {
    /// Head with `Content-Length: declared`, then `sent` pattern bytes, then
    /// close (the backend dies mid-response).
    Truncate { declared: usize, sent: usize },
    /// `HTTP/1.1 200` without Content-Length or Transfer-Encoding, the body,
    /// then close: the response is delimited by the close.
    CloseDelimited { body: Vec<u8> },
    /// Accept, then close at once without reading or answering.
    AcceptAndClose,
    /// Read the request head, then send these exact bytes and close.
    Script(Vec<u8>),
}

/// A running raw origin; stops when dropped.
pub struct RawOrigin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl RawOrigin {
    pub fn start(behaviour: RawBehaviour) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("raw origin bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, a, r) = (stop.clone(), accepted.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let b = behaviour.clone();
                        let r = r.clone();
                        std::thread::spawn(move || serve(tcp, b, r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawOrigin {
            addr,
            stop,
            accepted,
            requests,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Raw request heads received so far.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut tcp: TcpStream, b: RawBehaviour, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let _ = tcp.set_nonblocking(false);
    if let RawBehaviour::AcceptAndClose = b {
        return;
    }
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut tmp = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 20 {
        match tcp.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&tmp[..n]),
        }
    }
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(head);
    let out = match b {
        RawBehaviour::Truncate { declared, sent } => {
            let mut v =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nX-Origin: raw\r\n\r\n")
                    .into_bytes();
            v.extend_from_slice(&pattern(sent));
            v
        }
        RawBehaviour::CloseDelimited { body } => {
            let mut v = b"HTTP/1.1 200 OK\r\nX-Origin: raw\r\nConnection: close\r\n\r\n".to_vec();
            v.extend_from_slice(&body);
            v
        }
        RawBehaviour::Script(bytes) => bytes,
        RawBehaviour::AcceptAndClose => unreachable!(),
    };
    let _ = tcp.write_all(&out);
    let _ = tcp.flush();
    // Let the bytes leave before the FIN; drop closes.
    std::thread::sleep(Duration::from_millis(20));
    let _ = tcp.shutdown(Shutdown::Both);
}
