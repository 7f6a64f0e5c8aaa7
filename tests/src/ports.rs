//! Loopback port helpers.
//!
//! A port is found by binding `127.0.0.1:0` and releasing it. Ports handed out
//! are remembered so one test process never hands out the same port twice;
//! [`crate::Ktcpvs::start`] retries with a new port if the switch still finds
//! its port taken.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn remember(port: u16) -> bool {
    let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashSet::new).insert(port)
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local_addr");
        if remember(addr.port()) {
            return addr;
        }
    }
    panic!("no free loopback port after 100 attempts");
}

/// A loopback address where nothing listens (connect → ECONNREFUSED).
pub fn dead_addr() -> SocketAddr {
    free_addr()
}

/// A base port `p` such that `p, p+1, p+2, p+3` were all free a moment ago
/// (for `ktcpvs quickstart`, whose origins take the next three ports).
pub fn free_port_run(n: u16) -> SocketAddr {
    for _ in 0..200 {
        let base = free_addr().port();
        if base > u16::MAX - n {
            continue;
        }
        let ok = (0..n).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok());
        if ok && (1..n).all(|k| remember(base + k)) {
            return SocketAddr::from(([127, 0, 0, 1], base));
        }
    }
    panic!("no run of {n} free loopback ports after 200 attempts");
}
