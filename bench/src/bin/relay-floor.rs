//! `relay-floor`: the least work a proxy in front of HTTP origins can do,
//! as a yardstick for the benchmark's CPU ratios (bench/RESULTS.md,
//! "Fifth session"). One thread, epoll, no HTTP at all: each accepted
//! client gets its own origin connection (round-robin over the origins,
//! connected once), and bytes are copied as they come, read → write, in
//! both directions. A keep-alive HTTP/1.1 client works through it because
//! it forwards everything unchanged; it adds no header, parses nothing,
//! pools nothing and never retries — so no HTTP proxy can use less CPU per
//! request on the same kernel.
//!
//!     relay-floor LISTEN_ADDR ORIGIN_ADDR[,ORIGIN_ADDR...]
//!
//! Not a product: a measuring stick. Errors close the pair.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: relay-floor LISTEN_ADDR ORIGIN_ADDR[,ORIGIN_ADDR...]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1]
        .parse()
        .unwrap_or_else(|e| die(&format!("{}: {e}", args[1])));
    let origins: Vec<SocketAddr> = args[2]
        .split(',')
        .map(|a| a.parse().unwrap_or_else(|e| die(&format!("{a}: {e}"))))
        .collect();
    if let Err(e) = run(listen, &origins) {
        die(&format!("relay-floor: {e}"));
    }
}

fn die(msg: &str) -> ! {
    eprintln!("relay-floor: {msg}");
    std::process::exit(1);
}

/// One client and its origin connection.
struct Pair {
    client: TcpStream,
    origin: TcpStream,
}

fn run(listen: SocketAddr, origins: &[SocketAddr]) -> io::Result<()> {
    let l = TcpListener::bind(listen)?;
    l.set_nonblocking(true)?;
    // SAFETY: plain system calls on descriptors this function owns.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    const LISTENER: u64 = u64::MAX;
    add(ep, l.as_raw_fd(), LISTENER)?;
    let mut pairs: HashMap<u64, Pair> = HashMap::new();
    let mut next_id = 0u64;
    let mut rr = 0usize;
    let mut buf = vec![0u8; 65536];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    eprintln!("relay-floor: {listen} -> {origins:?}");
    loop {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let key = ev.u64;
            if key == LISTENER {
                while let Ok((c, _)) = l.accept() {
                    let o = match TcpStream::connect(origins[rr % origins.len()]) {
                        Ok(o) => o,
                        Err(_) => continue, // drops the client: a floor, not a product
                    };
                    rr += 1;
                    for s in [&c, &o] {
                        s.set_nodelay(true)?;
                        s.set_nonblocking(true)?;
                    }
                    let id = next_id;
                    next_id += 1;
                    add(ep, c.as_raw_fd(), id << 1)?;
                    add(ep, o.as_raw_fd(), id << 1 | 1)?;
                    pairs.insert(
                        id,
                        Pair {
                            client: c,
                            origin: o,
                        },
                    );
                }
                continue;
            }
            let id = key >> 1;
            let Some(p) = pairs.get_mut(&id) else {
                continue;
            };
            let (from, to) = if key & 1 == 0 {
                (&p.client, &p.origin)
            } else {
                (&p.origin, &p.client)
            };
            let done = match (&*from).read(&mut buf) {
                Ok(0) => true,
                Ok(k) => write_all(to, &buf[..k]).is_err(),
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            };
            if done {
                // Closing both descriptors also takes them out of the epoll set.
                pairs.remove(&id);
            }
        }
    }
}

fn add(ep: RawFd, fd: RawFd, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: key,
    };
    // SAFETY: valid epoll and socket descriptors, a valid event.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes everything, waiting (poll) while the socket is full.
fn write_all(mut s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 5000) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
