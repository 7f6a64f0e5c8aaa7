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
//! `max_idle` is what a stack keeps once demand has passed. While a server
//! is short of connections — a `get` found its stack empty (the request
//! had to connect) within the last [`SURGE_WINDOW`] — connections coming
//! back are kept beyond it, and the sweeper trims the surplus once the
//! window has passed: under a burst of concurrent requests larger than
//! `max_idle` the pool would otherwise close connections a moment before
//! the next requests open new ones, and the churn (a connect per request,
//! TIME_WAIT, an origin's listen queue overflowing) makes clients wait.
//! The surplus is bounded by the connections the burst itself opened.
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

/// How long after a stack ran dry connections are kept beyond `max_idle`.
pub const SURGE_WINDOW: Duration = Duration::from_secs(1);

struct Idle {
    conn: Rc<TcpStream>,
    since: Instant,
}

/// One server's idle connections, oldest first.
#[derive(Default)]
struct Stack {
    conns: Vec<Idle>,
    /// When a `get` last found no connection here.
    dry: Option<Instant>,
}

impl Stack {
    fn with_capacity(n: usize) -> Stack {
        Stack {
            conns: Vec::with_capacity(n),
            dry: None,
        }
    }

    /// Ran dry within the surge window before `now`.
    fn short(&self, now: Instant) -> bool {
        self.dry
            .is_some_and(|t| now.saturating_duration_since(t) < SURGE_WINDOW)
    }
}

pub struct Pool<K = u64> {
    /// Server id (or origin address) of each stack.
    ids: Vec<K>,
    idle: Vec<Stack>,
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
                .map(|_| Stack::with_capacity(max_idle.min(1024)))
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
                    None => Stack::with_capacity(max_idle.min(1024)),
                },
            )
            .collect();
        self.ids = ids.to_vec();
        self.max_idle = max_idle;
        self.idle_timeout = idle_timeout;
        for stack in &mut self.idle {
            stack.conns.truncate(max_idle);
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
        while let Some(c) = stack.conns.pop() {
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
        stack.dry = Some(Instant::now());
        (None, stale)
    }

    /// Returns a connection to server `id` (position `i` in the list the
    /// exchange used) after a complete exchange. Dropped (closed) if the
    /// server was deleted meanwhile.
    pub fn put(&mut self, i: usize, id: K, conn: Rc<TcpStream>) {
        let Some(i) = self.slot(i, id) else {
            return;
        };
        let max = self.max_idle;
        let stack = &mut self.idle[i];
        if max == 0 || Rc::strong_count(&conn) != 1 {
            return;
        }
        let now = Instant::now();
        if stack.conns.len() < max || stack.short(now) {
            stack.conns.push(Idle { conn, since: now });
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
            self.idle.push(Stack::with_capacity(self.max_idle.min(16)));
            self.ids.len() - 1
        } else if let Some(k) = self.idle.iter().position(|s| s.conns.is_empty()) {
            self.ids[k] = id;
            self.idle[k].dry = None;
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
            stack.conns.truncate(max_idle);
        }
    }

    /// Closes connections idle for longer than the timeout, and those
    /// beyond `max_idle` once their stack's surge window has passed (the
    /// longest idle first); returns how many.
    pub fn sweep(&mut self) -> usize {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&mut self, now: Instant) -> usize {
        let t = self.idle_timeout;
        let mut n = 0;
        for stack in &mut self.idle {
            let before = stack.conns.len();
            // Oldest are at the bottom of each stack.
            let mut keep_from = stack
                .conns
                .iter()
                .position(|c| now.saturating_duration_since(c.since) < t)
                .unwrap_or(before);
            if !stack.short(now) {
                keep_from = keep_from.max(before.saturating_sub(self.max_idle));
            }
            stack.conns.drain(..keep_from);
            n += before - stack.conns.len();
        }
        n
    }

    pub fn clear(&mut self) {
        for s in &mut self.idle {
            s.conns.clear();
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|s| s.conns.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` connected client sockets (their peers kept open in `keep`).
    async fn conns(n: usize, keep: &mut Vec<std::net::TcpStream>) -> Vec<Rc<TcpStream>> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            keep.push(l.accept().unwrap().0);
            out.push(Rc::new(c));
        }
        out
    }

    #[test]
    fn keeps_only_max_idle_when_not_short() {
        tokio_uring::start(async {
            let mut keep = Vec::new();
            let mut p: Pool<u64> = Pool::new(&[7], 2, Duration::from_secs(60));
            for c in conns(5, &mut keep).await {
                p.put(0, 7, c);
            }
            assert_eq!(p.idle_count(), 2);
        });
    }

    /// A server that ran dry keeps what comes back beyond `max_idle` for
    /// the surge window; the sweeper then trims back to `max_idle`,
    /// keeping the most recently used.
    #[test]
    fn a_dry_server_keeps_its_surplus_for_the_surge_window() {
        tokio_uring::start(async {
            let mut keep = Vec::new();
            let mut p: Pool<u64> = Pool::new(&[7], 2, Duration::from_secs(60));
            let (none, _) = p.get(0, 7, false);
            assert!(none.is_none());
            let cs = conns(5, &mut keep).await;
            let newest = cs[4].as_raw_fd();
            for c in cs {
                p.put(0, 7, c);
            }
            assert_eq!(p.idle_count(), 5, "surplus closed during a surge");
            let now = Instant::now();
            assert_eq!(p.sweep_at(now), 0);
            assert_eq!(p.idle_count(), 5);
            assert_eq!(
                p.sweep_at(now + SURGE_WINDOW + Duration::from_millis(10)),
                3
            );
            assert_eq!(p.idle_count(), 2);
            let (c, _) = p.get(0, 7, false);
            assert_eq!(c.unwrap().as_raw_fd(), newest);
            // Idle timeout still applies to what is left.
            assert_eq!(p.sweep_at(now + Duration::from_secs(61)), 1);
            assert_eq!(p.idle_count(), 0);
        });
    }
}
