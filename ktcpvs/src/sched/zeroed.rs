//! Large zero-filled arrays for the locality tables, mapped straight from
//! the kernel and advised onto transparent huge pages.
//!
//! A locality-table decision reads one random cache line of tens of MiB:
//! with 4 KiB pages that line's translation is almost never in the TLB,
//! and the page walk costs a second memory access. 2 MiB pages make the
//! whole table fit the TLB's reach. Pages are only backed when first
//! touched, so an idle table costs address space, not memory.

use std::ops::Deref;
use std::ptr::NonNull;

/// Types whose all-zero bit pattern is a valid value (atomics and arrays
/// of them).
///
/// # Safety
/// Implement only for types for which zeroed memory is a valid, initialised
/// value and that need no drop.
pub unsafe trait Zeroable: Sized {}

const HUGE: usize = 2 << 20;

/// A fixed-length slice of zero-initialised `T` in its own mapping.
pub struct ZeroedSlice<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
    /// false: allocated from the heap (mmap failed or tiny).
    mapped: bool,
}

// SAFETY: the slice owns its memory exclusively; sharing follows T.
unsafe impl<T: Zeroable + Send> Send for ZeroedSlice<T> {}
unsafe impl<T: Zeroable + Sync> Sync for ZeroedSlice<T> {}

impl<T: Zeroable> ZeroedSlice<T> {
    /// `len` zeroed values. Arrays of at least 2 MiB come from an
    /// anonymous mapping advised `MADV_HUGEPAGE`; smaller ones (and any
    /// whose mapping fails) from the allocator.
    pub fn new(len: usize) -> ZeroedSlice<T> {
        let size = len.max(1) * std::mem::size_of::<T>();
        assert!(std::mem::align_of::<T>() <= 4096);
        if size >= HUGE {
            let bytes = size.next_multiple_of(HUGE);
            // SAFETY: plain anonymous mapping; checked for failure below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                // SAFETY: advice on our own mapping; failure is harmless
                // (the kernel may have THP disabled).
                unsafe { libc::madvise(p, bytes, libc::MADV_HUGEPAGE) };
                return ZeroedSlice {
                    ptr: NonNull::new(p as *mut T).expect("mmap gave null"),
                    len,
                    bytes,
                    mapped: true,
                };
            }
        }
        let layout = Self::layout(len);
        // SAFETY: non-zero size (len.max(1)); zeroed memory is a valid T.
        let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
        let Some(ptr) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        ZeroedSlice {
            ptr,
            len,
            bytes: layout.size(),
            mapped: false,
        }
    }

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::array::<T>(len.max(1)).expect("table size overflows")
    }

    /// Bytes reserved (the mapping is rounded up to 2 MiB).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl<T: Zeroable> Deref for ZeroedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised (zeroed) values live at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for ZeroedSlice<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps/frees exactly what `new` got; T needs no drop.
        unsafe {
            if self.mapped {
                libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.bytes);
            } else {
                std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len));
            }
        }
    }
}

impl<T: Zeroable> std::fmt::Debug for ZeroedSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ZeroedSlice({} x {} B)",
            self.len,
            std::mem::size_of::<T>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[repr(align(64))]
    struct Line([AtomicU64; 8]);
    // SAFETY: atomics are valid when zeroed.
    unsafe impl Zeroable for Line {}

    #[test]
    fn small_and_mapped_arrays_start_zeroed_and_are_writable() {
        for len in [1, 3, (4 << 20) / 64 + 1] {
            let s = ZeroedSlice::<Line>::new(len);
            assert_eq!(s.len(), len);
            assert!(s.bytes() >= len * 64);
            assert_eq!(s.as_ptr() as usize % 64, 0);
            for l in s.iter() {
                assert!(l.0.iter().all(|w| w.load(Relaxed) == 0));
            }
            s[len - 1].0[7].store(9, Relaxed);
            assert_eq!(s[len - 1].0[7].load(Relaxed), 9);
        }
    }
}
