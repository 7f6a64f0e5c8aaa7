//! Per-worker keep-alive pools of real-server connections (one LIFO stack
//! per server). Owned by one worker thread: no locks. A pooled connection
//! is checked before reuse (idle time, then a non-blocking peek that finds
//! connections the server closed meanwhile), and the sweeper closes those
//! idle longer than `idle_timeout`, which should be shorter than the
//! servers' own keep-alive timeout.
//!
//! Stacks are keyed by the servers' stable ids (the index of the server
//! in the service's current list is only a hint), so a runtime change
//! ([`Pool::remap`]) keeps the idle connections of the servers that remain
//! and closes those of deleted ones, and a connection coming back from an
//! exchange that began on an older server list finds its stack (or is
//! closed if its server is gone).
//!
//! The same code keeps the cache front's origin connections
//! (`crate::cache`): a [`Pool<SocketAddr>`] keyed by origin address, whose
//! stacks are added on demand by [`Pool::put_key`] up to a maximum number
//! of origins (an empty stack's slot is reused for a new origin).

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

pub struct Pool<K = u64> {
    /// Server id (or origin address) of each stack.
    ids: Vec<K>,
    idle: Vec<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<K: Copy + PartialEq> Pool<K> {
    /// A pool for the servers with these ids (in list order).
    pub fn new(ids: &[K], max_idle: usize, idle_timeout: Duration) -> Pool<K> {
        Pool {
            ids: ids.to_vec(),
            idle: ids
                .iter()
                .map(|_| Vec::with_capacity(max_idle.min(1024)))
                .collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// The stack of server `id`, `i` being its probable position.
    #[inline]
    fn slot(&self, i: usize, id: K) -> Option<usize> {
        if self.ids.get(i) == Some(&id) {
            return Some(i);
        }
        self.ids.iter().position(|&x| x == id)
    }

    /// Follows a change of the server list: stacks of the servers that
    /// remain move to their new positions, those of deleted servers are
    /// closed, new servers get empty stacks. Limits may change too.
    pub fn remap(&mut self, ids: &[K], max_idle: usize, idle_timeout: Duration) {
        let old_ids = std::mem::take(&mut self.ids);
        let mut old = std::mem::take(&mut self.idle);
        let mut taken = vec![false; old_ids.len()];
        self.idle = ids
            .iter()
            .map(
                |id| match (0..old_ids.len()).find(|&k| !taken[k] && old_ids[k] == *id) {
                    Some(k) => {
                        taken[k] = true;
                        std::mem::take(&mut old[k])
                    }
                    None => Vec::with_capacity(max_idle.min(1024)),
                },
            )
            .collect();
        self.ids = ids.to_vec();
        self.max_idle = max_idle;
        self.idle_timeout = idle_timeout;
        for stack in &mut self.idle {
            stack.truncate(max_idle);
        }
    }

    /// No more connections are kept (the service was deleted); the idle
    /// ones are closed now.
    pub fn close(&mut self) {
        self.max_idle = 0;
        self.clear();
    }

    /// A live idle connection to server `id` (at position `i` of the
    /// current list), most recently used first. Returns how many stale
    /// ones were discarded on the way, too.
    ///
    /// `must_work`: the request cannot be retried (a body, or not
    /// idempotent), so even a connection used moments ago is probed — a
    /// server may close right after a response (e.g. one whose handler did
    /// not read the request body), and its FIN is usually there by the
    /// time the next request comes.
    pub fn get(&mut self, i: usize, id: K, must_work: bool) -> (Option<Rc<TcpStream>>, u64) {
        let mut stale = 0;
        let Some(i) = self.slot(i, id) else {
            return (None, 0);
        };
        let stack = &mut self.idle[i];
        while let Some(c) = stack.pop() {
            let idle = c.since.elapsed();
            // A connection used moments ago is not probed: the syscall would
            // cost more than the rare failure it finds, which the retry of
            // idempotent requests covers anyway (others: `must_work`).
            if idle < self.idle_timeout
                && ((idle < PROBE_AFTER && !must_work) || idle_socket_alive(c.conn.as_raw_fd()))
            {
                return (Some(c.conn), stale);
            }
            stale += 1;
        }
        (None, stale)
    }

    /// Returns a connection to server `id` (position `i` in the list the
    /// exchange used) after a complete exchange. Dropped (closed) if the
    /// server was deleted meanwhile.
    pub fn put(&mut self, i: usize, id: K, conn: Rc<TcpStream>) {
        let Some(i) = self.slot(i, id) else {
            return;
        };
        let stack = &mut self.idle[i];
        if stack.len() < self.max_idle && Rc::strong_count(&conn) == 1 {
            stack.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Like [`Pool::put`] for pools whose keys come and go (origins): a key
    /// without a stack gets one if there are fewer than `max_keys`, else
    /// takes over the slot of an empty stack; with neither, the connection
    /// is closed.
    pub fn put_key(&mut self, id: K, conn: Rc<TcpStream>, max_keys: usize) {
        if self.ids.contains(&id) {
            return self.put(0, id, conn);
        }
        if self.max_idle == 0 || Rc::strong_count(&conn) != 1 {
            return;
        }
        let k = if self.ids.len() < max_keys {
            self.ids.push(id);
            self.idle.push(Vec::with_capacity(self.max_idle.min(16)));
            self.ids.len() - 1
        } else if let Some(k) = self.idle.iter().position(Vec::is_empty) {
            self.ids[k] = id;
            k
        } else {
            return;
        };
        self.put(k, id, conn);
    }

    /// Changes the limits (a new version of the service); stacks beyond
    /// `max_idle` are trimmed.
    pub fn set_limits(&mut self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle = max_idle;
        self.idle_timeout = idle_timeout;
        for stack in &mut self.idle {
            stack.truncate(max_idle);
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
