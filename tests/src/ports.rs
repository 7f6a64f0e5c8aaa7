//! Loopback port helpers.
//!
//! Ports for the switch are picked at random BELOW the kernel's ephemeral
//! range (`/proc/sys/net/ipv4/ip_local_port_range`), checked free by binding,
//! and released. Ephemeral ports are avoided on purpose: on a busy machine
//! (benchmarks running) outgoing connections use them up, and one could take
//! the port between our check and the switch's bind. Ports handed out are
//! remembered so one test process never hands out the same port twice;
//! [`crate::Ktcpvs::start`] still retries with a new port if the switch
//! finds its port taken.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn remember(port: u16) -> bool {
    let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashSet::new).insert(port)
}

fn given(port: u16) -> bool {
    let g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().is_some_and(|s| s.contains(&port))
}

/// The range random ports are drawn from: [10000, start of ephemeral range).
fn range() -> (u16, u16) {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    if low > 12_000 {
        (10_000, low)
    } else {
        (low.saturating_sub(2000).max(1024), low)
    }
}

/// A small xorshift generator seeded from the clock, the pid and a counter.
fn random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = nanos ^ ((std::process::id() as u64) << 32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    free_port_run(1)
}

/// A loopback address where nothing listens (connect → ECONNREFUSED).
pub fn dead_addr() -> SocketAddr {
    free_addr()
}

/// A base port `p` such that `p, p+1, …, p+n-1` were all free a moment ago
/// (for `ktcpvs quickstart`, whose origins take the next three ports).
pub fn free_port_run(n: u16) -> SocketAddr {
    let (lo, hi) = range();
    for _ in 0..500 {
        let span = (hi - lo).saturating_sub(n) as u64;
        let base = lo + (random() % span.max(1)) as u16;
        if (0..n).any(|k| given(base + k)) {
            continue;
        }
        if (0..n).all(|k| bindable(base + k)) && (0..n).all(|k| remember(base + k)) {
            return SocketAddr::from(([127, 0, 0, 1], base));
        }
    }
    // Fall back to the kernel's choice.
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if port <= u16::MAX - n
            && (0..n).all(|k| bindable(port + k))
            && (0..n).all(|k| remember(port + k))
        {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
    panic!("no run of {n} free loopback ports");
}
