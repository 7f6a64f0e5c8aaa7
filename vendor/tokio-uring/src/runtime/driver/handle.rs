//! Internal, reference-counted handle to the driver.
//!
//! The driver was previously managed exclusively by thread-local context, but this proved
//! untenable.
//!
//! The new system uses a handle which reference-counts the driver to track ownership and access to
//! the driver.
//!
//! There are two handles.
//! The strong handle is owning, and the weak handle is non-owning.
//! This is important for avoiding reference cycles.
//! The weak handle should be used by anything which is stored in the driver or does not need to
//! keep the driver alive for it's duration.

use io_uring::{cqueue, squeue};
use std::cell::RefCell;
use std::io;
use std::ops::Deref;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use crate::buf::fixed::FixedBuffers;
use crate::runtime::driver::op::{Completable, MultiCQEFuture, Op, Updateable};
use crate::runtime::driver::{
    Driver, Tick, QUIET_TICKS, SLOW_TICK_NS, TICK_NS, TICK_UPDATE_USER_DATA, TICK_USER_DATA,
};

#[derive(Clone)]
pub(crate) struct Handle {
    pub(super) inner: Rc<RefCell<Driver>>,
}

#[derive(Clone)]
pub(crate) struct WeakHandle {
    inner: Weak<RefCell<Driver>>,
}

impl Handle {
    pub(crate) fn new(b: &crate::Builder) -> io::Result<Self> {
        Ok(Self {
            inner: Rc::new(RefCell::new(Driver::new(b)?)),
        })
    }

    pub(crate) fn dispatch_completions(&self) {
        self.inner.borrow_mut().dispatch_completions()
    }

    /// ktcpvs patch: called when the thread is about to park in tokio's
    /// `epoll_wait`. Submits what is queued and, if no completion is
    /// waiting, sleeps in the same `io_uring_enter` until one arrives. A
    /// completion then wakes the thread inside io_uring (its task work
    /// runs in the wait) instead of interrupting `epoll_wait` with a
    /// signal (EINTR, an empty submit, a second `epoll_wait`): two system
    /// calls per wake-up instead of five; the `epoll_wait` that follows
    /// finds the ring readable and returns at once.
    ///
    /// The wait has no timeout of its own (arming a timer per wait costs
    /// more than it saves on a virtual machine): a multishot timeout in the
    /// ring, submitted once, completes every `TICK_NS` (driver/mod.rs), so tokio's
    /// timers and wake-ups from other threads are served at most that
    /// late while the thread sleeps here — or `SLOW_TICK_NS` late once the
    /// thread has been quiet for `QUIET_TICKS` ticks and holds no
    /// `PreciseTimers` (the period is changed here, at park). Where the
    /// kernel refuses it (before 6.4), this is upstream's plain submit, or,
    /// for a ring-only runtime (`ring_only`: nothing else to sleep in), a
    /// wait bounded by one tick.
    pub(crate) fn flush_and_wait(&self, ring_only: bool) -> io::Result<usize> {
        let mut inner = self.inner.borrow_mut();
        let d = &mut *inner;
        if d.tick == Tick::Failed {
            if !ring_only {
                return d.uring.submit();
            }
            // No multishot timeout (Linux < 6.4) and no tokio reactor to
            // sleep in: wait here, at most one tick, for a completion.
            let ts = io_uring::types::Timespec::new().nsec(TICK_NS);
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            return match d.uring.submitter().submit_with_args(1, &args) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(0),
                r => r,
            };
        }
        if d.tick == Tick::Unarmed {
            d.tick_ts = io_uring::types::Timespec::new().nsec(TICK_NS);
            d.tick_slow = Some(false);
            d.quiet_ticks = 0;
            // SAFETY: IORING_TIMEOUT_MULTISHOT (64) is a valid flag bit
            // the crate's bitflags type does not name yet.
            let multishot = unsafe {
                // IORING_TIMEOUT_MULTISHOT
                io_uring::types::TimeoutFlags::from_bits_unchecked(64)
            };
            let sqe = io_uring::opcode::Timeout::new(&d.tick_ts)
                .count(0)
                .flags(multishot)
                .build()
                .user_data(TICK_USER_DATA);
            // SAFETY: `tick_ts` outlives the submission (it lives in the
            // driver; the kernel copies it when the entry is submitted).
            if unsafe { d.uring.submission().push(&sqe) }.is_err() {
                return d.uring.submit(); // SQ full: arm at the next park
            }
            d.tick = Tick::Armed;
        } else if d.tick == Tick::Armed && !d.tick_updating {
            // Slow the tick down on a quiet thread, speed it up again at
            // the first completion or when a task wants precise timers.
            let slow = d.quiet_ticks >= QUIET_TICKS && !crate::runtime::precise_timers_held();
            if d.tick_slow != Some(slow) {
                let old = (d.tick_slow, d.tick_ts);
                d.tick_ts = io_uring::types::Timespec::new()
                    .nsec(if slow { SLOW_TICK_NS } else { TICK_NS });
                let sqe = io_uring::opcode::TimeoutUpdate::new(TICK_USER_DATA, &d.tick_ts)
                    .build()
                    .user_data(TICK_UPDATE_USER_DATA);
                // SAFETY: `tick_ts` outlives the submission below, which
                // is when the kernel copies it.
                if unsafe { d.uring.submission().push(&sqe) }.is_ok() {
                    d.tick_slow = Some(slow);
                    d.tick_updating = true;
                } else {
                    (d.tick_slow, d.tick_ts) = old; // SQ full: next park
                }
            }
        }
        if !d.uring.completion().is_empty() {
            return d.uring.submit();
        }
        match d.uring.submit_and_wait(1) {
            Ok(n) => Ok(n),
            // Interrupted, or the completion queue is full: tokio's own
            // park and the next dispatch take over.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// (ktcpvs) See `crate::ring_tick`.
    pub(crate) fn tick_state(&self) -> Option<(bool, u64)> {
        let d = self.inner.borrow();
        (d.tick == Tick::Armed).then_some((d.tick_slow == Some(true), d.ticks))
    }

    pub(crate) fn register_buffers(
        &self,
        buffers: Rc<RefCell<dyn FixedBuffers>>,
    ) -> io::Result<()> {
        self.inner.borrow_mut().register_buffers(buffers)
    }

    pub(crate) fn unregister_buffers(
        &self,
        buffers: Rc<RefCell<dyn FixedBuffers>>,
    ) -> io::Result<()> {
        self.inner.borrow_mut().unregister_buffers(buffers)
    }

    pub(crate) fn submit_op_2(&self, sqe: squeue::Entry) -> usize {
        self.inner.borrow_mut().submit_op_2(sqe)
    }

    pub(crate) fn submit_op<T, S, F>(&self, data: T, f: F) -> io::Result<Op<T, S>>
    where
        T: Completable,
        F: FnOnce(&mut T) -> squeue::Entry,
    {
        self.inner.borrow_mut().submit_op(data, f, self.into())
    }

    pub(crate) fn poll_op<T>(&self, op: &mut Op<T>, cx: &mut Context<'_>) -> Poll<T::Output>
    where
        T: Unpin + 'static + Completable,
    {
        self.inner.borrow_mut().poll_op(op, cx)
    }

    pub(crate) fn poll_op_2(&self, index: usize, cx: &mut Context<'_>) -> Poll<cqueue::Entry> {
        self.inner.borrow_mut().poll_op_2(index, cx)
    }

    pub(crate) fn poll_multishot_op<T>(
        &self,
        op: &mut Op<T, MultiCQEFuture>,
        cx: &mut Context<'_>,
    ) -> Poll<T::Output>
    where
        T: Unpin + 'static + Completable + Updateable,
    {
        self.inner.borrow_mut().poll_multishot_op(op, cx)
    }

    pub(crate) fn remove_op<T, CqeType>(&self, op: &mut Op<T, CqeType>) {
        self.inner.borrow_mut().remove_op(op)
    }

    pub(crate) fn remove_op_2<T: 'static>(&self, index: usize, data: T) {
        self.inner.borrow_mut().remove_op_2(index, data)
    }
}

impl WeakHandle {
    pub(crate) fn upgrade(&self) -> Option<Handle> {
        Some(Handle {
            inner: self.inner.upgrade()?,
        })
    }
}

impl AsRawFd for Handle {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.borrow().uring.as_raw_fd()
    }
}

impl From<Driver> for Handle {
    fn from(driver: Driver) -> Self {
        Self {
            inner: Rc::new(RefCell::new(driver)),
        }
    }
}

impl<T> From<T> for WeakHandle
where
    T: Deref<Target = Handle>,
{
    fn from(handle: T) -> Self {
        Self {
            inner: Rc::downgrade(&handle.inner),
        }
    }
}
