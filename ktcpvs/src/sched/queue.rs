//! The per-worker wait queue of the in-flight cap (lblc, lblcr; thesis
//! §6.3.5): when every allowed server is at its high threshold (Σhigh of
//! the service is in flight), a request waits here — at most `max` of them
//! per worker, each for at most `timeout` — and is answered 503 when the
//! queue is full or its wait runs out.
//!
//! A waiter sleeps on a [`Notify`] that the worker signals each time one of
//! its requests finishes (the proxy's load guard), and re-checks the cap
//! when woken. Work finishing on *other* workers cannot signal it (the
//! Notify is the worker's own, and a cross-thread wake per finished request
//! would cost every request), so a waiter also re-checks every
//! [`RECHECK`]: room made by another worker admits it within 10 ms.

use std::cell::Cell;
use std::time::Duration;

use tokio::sync::Notify;

/// Defaults of `[service.lblc] queue` and `queue_timeout_ms`.
pub const DEFAULT_QUEUE: usize = 1024;
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 5_000;
/// How often a waiter looks at the cap without being woken.
pub const RECHECK: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct WaitQueue {
    max: usize,
    timeout: Duration,
    waiting: Cell<usize>,
    notify: Notify,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Below the cap now: schedule the request.
    Go,
    /// The queue was full: answer 503 at once.
    Full,
    /// Waited `timeout` without room: answer 503.
    TimedOut,
}

impl WaitQueue {
    pub fn new(max: usize, timeout: Duration) -> WaitQueue {
        WaitQueue {
            max,
            timeout,
            waiting: Cell::new(0),
            notify: Notify::new(),
        }
    }

    /// Requests waiting now.
    /// (max waiters, timeout) it was built with.
    pub fn settings(&self) -> (usize, Duration) {
        (self.max, self.timeout)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// A request of this worker finished: wake one waiter to re-check.
    #[inline]
    pub fn finished(&self) {
        if self.waiting.get() > 0 {
            self.notify.notify_one();
        }
    }

    /// Waits until `at_capacity()` turns false, the queue is full, or the
    /// timeout passes. Call only when `at_capacity()` was true.
    pub async fn wait(&self, mut at_capacity: impl FnMut() -> bool) -> Admit {
        if self.waiting.get() >= self.max {
            return Admit::Full;
        }
        self.waiting.set(self.waiting.get() + 1);
        let _leave = Leave(&self.waiting);
        // Rechecks every 10 ms, also on a worker that is otherwise quiet.
        let _precise = tokio_uring::precise_timers();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let until = deadline.min(tokio::time::Instant::now() + RECHECK);
            let _ = tokio::time::timeout_at(until, self.notify.notified()).await;
            if !at_capacity() {
                return Admit::Go;
            }
            if tokio::time::Instant::now() >= deadline {
                return Admit::TimedOut;
            }
        }
    }
}

/// Leaves the queue however the wait ends (also when the future is dropped).
struct Leave<'a>(&'a Cell<usize>);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_finished_request_admits_a_waiter() {
        rt().block_on(async {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    // Long timeout: only the notification can end the wait.
                    let q = Rc::new(WaitQueue::new(2, Duration::from_secs(3600)));
                    let full = Rc::new(Cell::new(true));
                    let (q2, f2) = (q.clone(), full.clone());
                    let h = tokio::task::spawn_local(async move { q2.wait(|| f2.get()).await });
                    tokio::task::yield_now().await;
                    assert_eq!(q.waiting(), 1);
                    // Woken while still full: keeps waiting.
                    q.finished();
                    tokio::task::yield_now().await;
                    assert_eq!(q.waiting(), 1);
                    full.set(false);
                    q.finished();
                    assert_eq!(h.await.unwrap(), Admit::Go);
                    assert_eq!(q.waiting(), 0);
                })
                .await
        });
    }

    #[test]
    fn room_made_by_another_worker_admits_the_waiters() {
        rt().block_on(async {
            // Nothing on this worker finishes: only the re-check can see
            // the room another worker made.
            let q = WaitQueue::new(4, Duration::from_secs(3600));
            let full = Cell::new(true);
            let wait = q.wait(|| full.get());
            let free = async {
                tokio::time::sleep(RECHECK * 3).await;
                full.set(false);
            };
            let (admit, ()) =
                tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(wait, free) })
                    .await
                    .expect("the waiter was never admitted");
            assert_eq!(admit, Admit::Go);
            assert_eq!(q.waiting(), 0);
        });
    }

    #[test]
    fn bounded_queue_and_timeout() {
        rt().block_on(async {
            let q = WaitQueue::new(0, Duration::from_millis(1));
            assert_eq!(q.wait(|| true).await, Admit::Full);
            let q = WaitQueue::new(1, Duration::from_millis(1));
            assert_eq!(q.wait(|| true).await, Admit::TimedOut);
            assert_eq!(q.waiting(), 0);
        });
    }
}
