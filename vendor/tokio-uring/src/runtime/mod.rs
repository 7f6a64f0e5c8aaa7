use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::task::Waker;
use tokio::io::unix::AsyncFd;
use tokio::task::LocalSet;

mod context;
pub(crate) mod driver;

pub(crate) use context::RuntimeContext;

thread_local! {
    pub(crate) static CONTEXT: RuntimeContext = RuntimeContext::new();
}

/// The Runtime Executor
///
/// This is the Runtime for `tokio-uring`.
/// It wraps the default [`Runtime`] using the platform-specific Driver.
///
/// This executes futures and tasks within the current-thread only.
///
/// [`Runtime`]: tokio::runtime::Runtime
pub struct Runtime {
    /// Tokio runtime, always current-thread
    tokio_rt: ManuallyDrop<tokio::runtime::Runtime>,

    /// LocalSet for !Send tasks
    local: ManuallyDrop<LocalSet>,

    /// Strong reference to the driver.
    driver: driver::Handle,
}

/// Spawns a new asynchronous task, returning a [`JoinHandle`] for it.
///
/// Spawning a task enables the task to execute concurrently to other tasks.
/// There is no guarantee that a spawned task will execute to completion. When a
/// runtime is shutdown, all outstanding tasks are dropped, regardless of the
/// lifecycle of that task.
///
/// This function must be called from the context of a `tokio-uring` runtime.
///
/// [`JoinHandle`]: tokio::task::JoinHandle
///
/// # Examples
///
/// In this example, a server is started and `spawn` is used to start a new task
/// that processes each received connection.
///
/// ```no_run
/// tokio_uring::start(async {
///     let handle = tokio_uring::spawn(async {
///         println!("hello from a background task");
///     });
///
///     // Let the task complete
///     handle.await.unwrap();
/// });
/// ```
pub fn spawn<T: Future + 'static>(task: T) -> tokio::task::JoinHandle<T::Output> {
    tokio::task::spawn_local(task)
}

std::thread_local! {
    static PRECISE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// (ktcpvs patch) While a value of this type lives, the thread's ring tick
/// keeps its short period (4 ms) even when the thread is quiet, so tokio
/// timers of a few milliseconds fire on time while the thread sleeps in
/// io_uring. Without one, a thread that has completed no I/O for ~256 ms
/// slows its tick to 250 ms (see PATCHED.md); hold one around a wait whose
/// short timer matters.
#[derive(Debug)]
pub struct PreciseTimers(());

/// (ktcpvs patch) Asks for precise timers on this thread until the value
/// is dropped ([`PreciseTimers`]).
pub fn precise_timers() -> PreciseTimers {
    PRECISE.with(|c| c.set(c.get() + 1));
    PreciseTimers(())
}

impl Drop for PreciseTimers {
    fn drop(&mut self) {
        PRECISE.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// (ktcpvs patch) This thread's ring tick, for diagnostics and tests:
/// whether it runs at its slow period, and how many expiries the runtime
/// has seen. `None` outside a runtime or where the tick is not armed.
pub fn ring_tick() -> Option<(bool, u64)> {
    CONTEXT.with(|x| x.handle())?.tick_state()
}

pub(crate) fn precise_timers_held() -> bool {
    PRECISE.with(|c| c.get() > 0)
}

impl Runtime {
    /// Creates a new tokio_uring runtime on the current thread.
    ///
    /// This takes the tokio-uring [`Builder`](crate::Builder) as a parameter.
    pub fn new(b: &crate::Builder) -> io::Result<Runtime> {
        let ring_only = b.ring_only;
        let mut tb = tokio::runtime::Builder::new_current_thread();
        tb.on_thread_park(move || {
            CONTEXT.with(|x| {
                let h = x
                    .handle()
                    .expect("Internal error, driver context not present when invoking hooks");
                if ring_only {
                    park_ring_only(&h);
                } else {
                    let _ = h.flush_and_wait(false);
                }
            });
        });
        if ring_only {
            tb.enable_time();
        } else {
            tb.enable_all();
        }
        let rt = tb.build()?;

        let tokio_rt = ManuallyDrop::new(rt);
        let local = ManuallyDrop::new(LocalSet::new());
        let driver = driver::Handle::new(b)?;

        if !ring_only {
            start_uring_wakes_task(&tokio_rt, &local, driver.clone());
        }

        Ok(Runtime {
            local,
            tokio_rt,
            driver,
        })
    }

    /// Runs a future to completion on the tokio-uring runtime. This is the
    /// runtime's entry point.
    ///
    /// This runs the given future on the current thread, blocking until it is
    /// complete, and yielding its resolved result. Any tasks, futures, or timers
    /// which the future spawns internally will be executed on this runtime.
    ///
    /// Any spawned tasks will be suspended after `block_on` returns. Calling
    /// `block_on` again will resume previously spawned tasks.
    ///
    /// # Panics
    ///
    /// This function panics if the provided future panics, or if called within an
    /// asynchronous execution context.
    /// Runs a future to completion on the current runtime.
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future,
    {
        struct ContextGuard;

        impl Drop for ContextGuard {
            fn drop(&mut self) {
                RING_WAKER.with(|w| w.borrow_mut().take());
                CONTEXT.with(|cx| cx.unset_driver());
            }
        }

        CONTEXT.with(|cx| cx.set_handle(self.driver.clone()));

        let _guard = ContextGuard;

        tokio::pin!(future);

        let run = self
            .local
            .run_until(std::future::poll_fn(|cx| future.as_mut().poll(cx)));
        tokio::pin!(run);
        self.tokio_rt.block_on(std::future::poll_fn(|cx| {
            // The ring-only park hook wakes this future: keep its waker.
            RING_WAKER.with(|w| {
                let mut w = w.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            });
            run.as_mut().poll(cx)
        }))
    }
}

std::thread_local! {
    /// (ktcpvs patch) The waker of the `block_on` future running on this thread.
    static RING_WAKER: std::cell::RefCell<Option<Waker>> = const { std::cell::RefCell::new(None) };
}

/// (ktcpvs patch) The park hook of a ring-only runtime (`Builder::ring_only`).
/// tokio calls it only when it has nothing to run (otherwise it polls its
/// drivers without parking: `has_pending_work`). It submits and sleeps in
/// `io_uring_enter` until an operation completes (or the ring tick
/// expires), completes the finished operations (waking their tasks), then
/// wakes the `block_on` future: tokio, which has no reactor to sleep in
/// here, then only runs its due timers and polls again instead of blocking
/// in its own park.
fn park_ring_only(h: &driver::Handle) {
    let _ = h.flush_and_wait(true);
    h.dispatch_completions();
    RING_WAKER.with(|w| {
        if let Some(w) = w.borrow().as_ref() {
            w.wake_by_ref();
        }
    });
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // drop tasks in correct order
        unsafe {
            ManuallyDrop::drop(&mut self.local);
            ManuallyDrop::drop(&mut self.tokio_rt);
        }
    }
}

fn start_uring_wakes_task(
    tokio_rt: &tokio::runtime::Runtime,
    local: &LocalSet,
    driver: driver::Handle,
) {
    let _guard = tokio_rt.enter();
    let async_driver_handle = AsyncFd::new(driver).unwrap();

    local.spawn_local(drive_uring_wakes(async_driver_handle));
}

async fn drive_uring_wakes(driver: AsyncFd<driver::Handle>) {
    loop {
        // Wait for read-readiness
        let mut guard = driver.readable().await.unwrap();

        guard.get_inner().dispatch_completions();

        guard.clear_ready();
    }
}

#[cfg(test)]
mod test {

    use super::*;
    use crate::builder;

    #[test]
    fn block_on() {
        let rt = Runtime::new(&builder()).unwrap();
        rt.block_on(async move { () });
    }

    #[test]
    fn block_on_twice() {
        let rt = Runtime::new(&builder()).unwrap();
        rt.block_on(async move { () });
        rt.block_on(async move { () });
    }
}
