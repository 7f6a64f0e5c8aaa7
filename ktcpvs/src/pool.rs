//! Per-worker keep-alive pools of real-server connections (one LIFO stack
//! per server). Owned by one worker thread: no locks. A pooled connection
//! is checked before reuse (idle time, then a non-blocking peek that finds
//! connections the server closed meanwhile), and the sweeper closes those
//! idle longer than `idle_timeout`, which should be shorter than the
//! servers' own keep-alive timeout.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;

use crate::uring::idle_socket_alive;

/// Idle time from which a pooled connection is probed before reuse.
const PROBE_AFTER: Duration = Duration::from_millis(250);

struct Idle {
    conn: Rc<TcpStream>,
    since: Instant,
}

pub struct Pool {
    idle: Vec<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(servers: usize, max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: (0..servers)
                .map(|_| Vec::with_capacity(max_idle.min(1024)))
                .collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// A live idle connection to server `i`, most recently used first.
    /// Returns how many stale ones were discarded on the way, too.
    pub fn get(&mut self, i: usize) -> (Option<Rc<TcpStream>>, u64) {
        let mut stale = 0;
        let stack = &mut self.idle[i];
        while let Some(c) = stack.pop() {
            let idle = c.since.elapsed();
            // A connection used moments ago is not probed: the syscall would
            // cost more than the rare failure it finds, which the retry of
            // idempotent requests covers anyway.
            if idle < self.idle_timeout
                && (idle < PROBE_AFTER || idle_socket_alive(c.conn.as_raw_fd()))
            {
                return (Some(c.conn), stale);
            }
            stale += 1;
        }
        (None, stale)
    }

    /// Returns a connection after a complete exchange.
    pub fn put(&mut self, i: usize, conn: Rc<TcpStream>) {
        let stack = &mut self.idle[i];
        if stack.len() < self.max_idle && Rc::strong_count(&conn) == 1 {
            stack.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than the timeout; returns how many.
    pub fn sweep(&mut self) -> usize {
        let t = self.idle_timeout;
        let mut n = 0;
        for stack in &mut self.idle {
            let before = stack.len();
            // Oldest are at the bottom of each stack.
            let keep_from = stack
                .iter()
                .position(|c| c.since.elapsed() < t)
                .unwrap_or(stack.len());
            stack.drain(..keep_from);
            n += before - stack.len();
        }
        n
    }

    pub fn clear(&mut self) {
        for s in &mut self.idle {
            s.clear();
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(Vec::len).sum()
    }
}
