//! Coarse deadlines for socket operations, one wheel per worker thread.
//!
//! Every read of a request or a response runs under a deadline (idle,
//! header and response timeouts of seconds). With `tokio::time::timeout`
//! each one reads the clock, clones the runtime handle (two atomic
//! operations) and inserts into and removes from tokio's timer wheel
//! under its lock — a few hundred nanoseconds per operation, two
//! operations per keep-alive request. Here a deadline is a slot in a
//! thread-local slab, keyed by a tick counter: arming it is a slab insert,
//! disarming a slab remove, and no clock is read. A ticker task
//! ([`run`], one per worker) advances the counter every [`TICK`] and wakes
//! the operations whose time ran out, looking only at that tick's bucket of
//! a hashed wheel (so a million idle connections cost nothing per tick), and
//! a deadline fires between its duration and its duration plus two ticks
//! (plus up to 250 ms on a worker that has been quiet long enough to slow
//! its ring tick, vendor/tokio-uring/PATCHED.md) — good for timeouts of
//! seconds, not for precise timers.
//!
//! Threads without a ticker (tests, helper threads) get
//! `tokio::time::timeout` instead: [`timeout`] never waits forever.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// Granularity of the wheel.
pub const TICK: Duration = Duration::from_millis(50);

/// Buckets of the hashed wheel: a deadline is filed under `due % SLOTS`
/// (12.8 s of ticks); one further away is looked at once per turn.
const SLOTS: usize = 256;

struct Entry {
    due: u64,
    /// Tells this arming from an earlier one that used the same slab key.
    seq: u32,
    waker: Option<Waker>,
    fired: bool,
}

/// A hashed timing wheel: arming is a slab insert plus a push onto the
/// bucket of its tick, disarming a slab remove (the bucket's record goes
/// stale and is skipped); a tick looks only at its own bucket.
struct Wheel {
    entries: Slab<Entry>,
    buckets: Vec<Vec<(usize, u32)>>,
    seq: u32,
    /// Last tick whose bucket was processed.
    done: u64,
}

impl Wheel {
    const fn new() -> Wheel {
        Wheel {
            entries: Slab::new(),
            buckets: Vec::new(),
            seq: 0,
            done: 0,
        }
    }

    fn arm(&mut self, due: u64, waker: Waker) -> usize {
        if self.buckets.is_empty() {
            self.buckets = (0..SLOTS).map(|_| Vec::new()).collect();
        }
        self.seq = self.seq.wrapping_add(1);
        let k = self.entries.insert(Entry {
            due,
            seq: self.seq,
            waker: Some(waker),
            fired: false,
        });
        self.buckets[(due % SLOTS as u64) as usize].push((k, self.seq));
        k
    }

    /// Fires every deadline due at `now`, collecting the wakers.
    fn advance(&mut self, now: u64, out: &mut Vec<Waker>) {
        if self.buckets.is_empty() {
            self.done = now;
            return;
        }
        // Each bucket once is enough, however long the ticker was late.
        let from = (self.done + 1).max((now + 1).saturating_sub(SLOTS as u64));
        for t in from..=now {
            let i = (t % SLOTS as u64) as usize;
            let mut b = std::mem::take(&mut self.buckets[i]);
            for (k, seq) in b.drain(..) {
                let Some(e) = self.entries.get_mut(k) else {
                    continue;
                };
                if e.seq != seq || e.fired {
                    continue;
                }
                if e.due <= now {
                    e.fired = true;
                    out.extend(e.waker.take());
                } else {
                    // A later turn of the wheel.
                    self.buckets[(e.due % SLOTS as u64) as usize].push((k, seq));
                }
            }
            // Keep the bucket's capacity (and anything re-filed into it).
            let refiled = std::mem::replace(&mut self.buckets[i], b);
            self.buckets[i].extend(refiled);
        }
        self.done = now;
    }
}

thread_local! {
    /// Ticks since this thread's ticker started; `u64::MAX`: no ticker.
    static NOW: Cell<u64> = const { Cell::new(u64::MAX) };
    static WHEEL: RefCell<Wheel> = const { RefCell::new(Wheel::new()) };
}

/// The operation did not finish before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Drives this thread's wheel until the runtime stops. Spawn once per
/// worker, before any timed operation.
pub async fn run() {
    /// Back to "no ticker" when the task ends with its runtime: later
    /// deadlines on this thread then use tokio's timer, never a dead wheel.
    struct Stopped;
    impl Drop for Stopped {
        fn drop(&mut self) {
            NOW.with(|n| n.set(u64::MAX));
        }
    }
    let _stopped = Stopped;
    let start = Instant::now();
    NOW.with(|n| n.set(0));
    WHEEL.with(|w| w.borrow_mut().done = 0);
    let mut due = Vec::new();
    loop {
        tokio::time::sleep(TICK).await;
        let now = (start.elapsed().as_millis() / TICK.as_millis()) as u64;
        NOW.with(|n| n.set(now));
        WHEEL.with(|w| w.borrow_mut().advance(now, &mut due));
        // Woken outside the borrow (a wake only schedules the task).
        for wk in due.drain(..) {
            wk.wake();
        }
    }
}

/// Runs `fut` with a deadline `d` from now, on this thread's wheel, or
/// on tokio's timer where no ticker runs.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let now = NOW.with(|n| n.get());
    if now == u64::MAX {
        return tokio::time::timeout(d, fut).await.map_err(|_| Elapsed);
    }
    let ticks = d.as_millis().div_ceil(TICK.as_millis()) as u64;
    Deadline {
        fut,
        due: now.saturating_add(ticks + 1),
        key: None,
    }
    .await
}

struct Deadline<F> {
    fut: F,
    due: u64,
    key: Option<usize>,
}

impl<F> Deadline<F> {
    fn disarm(&mut self) {
        if let Some(k) = self.key.take() {
            WHEEL.with(|w| {
                w.borrow_mut().entries.try_remove(k);
            });
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is never moved out of the pinned struct (structural
        // pinning); the other fields are plain data and not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        if let Poll::Ready(v) = fut.poll(cx) {
            this.disarm();
            return Poll::Ready(Ok(v));
        }
        let fired = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            match this.key.and_then(|k| w.entries.get_mut(k)) {
                Some(e) if e.fired => true,
                Some(e) => {
                    if !e.waker.as_ref().is_some_and(|x| x.will_wake(cx.waker())) {
                        e.waker = Some(cx.waker().clone());
                    }
                    false
                }
                None => {
                    this.key = Some(w.arm(this.due, cx.waker().clone()));
                    false
                }
            }
        });
        if fired {
            this.disarm();
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

impl<F> Drop for Deadline<F> {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Deadlines armed now on this thread (a test aid).
pub fn armed() -> usize {
    WHEEL.with(|w| w.borrow().entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local<T>(f: impl Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn fires_late_never_early_and_disarms() {
        local(async {
            tokio::task::spawn_local(run());
            tokio::task::yield_now().await;
            let t0 = Instant::now();
            let r = timeout(Duration::from_millis(120), std::future::pending::<()>()).await;
            let took = t0.elapsed();
            assert_eq!(r, Err(Elapsed));
            assert!(took >= Duration::from_millis(120), "{took:?}");
            assert!(took < Duration::from_millis(120) + 4 * TICK, "{took:?}");
            assert_eq!(armed(), 0);
            // Finishing first: the value, and nothing left armed.
            let r = timeout(Duration::from_secs(60), async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                7
            })
            .await;
            assert_eq!(r, Ok(7));
            assert_eq!(armed(), 0);
            // Dropped while pending: disarmed too.
            let f = timeout(Duration::from_secs(60), std::future::pending::<()>());
            let _ = tokio::time::timeout(Duration::from_millis(5), f).await;
            assert_eq!(armed(), 0);
        });
    }

    fn waker() -> Waker {
        std::task::Waker::noop().clone()
    }

    #[test]
    fn wheel_fires_on_time_across_turns_and_skips_disarmed() {
        let mut w = Wheel::new();
        let mut out = Vec::new();
        let a = w.arm(3, waker());
        let far = w.arm(3 + SLOTS as u64 * 4, waker()); // same bucket, four turns on
        let gone = w.arm(5, waker());
        w.entries.remove(gone);
        let reused = w.arm(700, waker()); // may take `gone`'s key
        w.advance(2, &mut out);
        assert!(out.is_empty());
        w.advance(3, &mut out);
        assert_eq!(out.len(), 1);
        assert!(w.entries[a].fired && !w.entries[far].fired);
        out.clear();
        w.advance(699, &mut out);
        assert!(out.is_empty(), "the stale record of `gone` fired nothing");
        w.advance(700, &mut out);
        assert_eq!(out.len(), 1);
        assert!(w.entries[reused].fired);
        out.clear();
        // A ticker late by more than a turn still fires what is due, once.
        w.advance(3 + SLOTS as u64 * 5, &mut out);
        assert_eq!(out.len(), 1);
        assert!(w.entries[far].fired);
        // Records do not pile up: each live deadline is filed once.
        let filed: usize = w.buckets.iter().map(Vec::len).sum();
        assert!(filed <= 1, "{filed}");
    }

    #[test]
    fn without_a_ticker_tokio_times_it_out() {
        local(async {
            let r = timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
        });
    }
}
