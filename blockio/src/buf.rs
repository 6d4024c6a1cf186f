//! A heap buffer aligned to 4096 bytes, as O_DIRECT and ublk require.
//!
//! Owns: one allocation of `capacity` bytes, of which the first `len` are the
//! buffer's contents. Must never: hand out a pointer that outlives it, or a
//! length beyond the allocation.
//!
//! The capacity lets a frontend keep one buffer per ublk tag and lend it to the
//! target for each request (`set_len` to the request's length, back to the
//! capacity for the next one) instead of allocating and copying per request.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::fmt;
use std::ptr::NonNull;

const ALIGN_BYTES: usize = 4096;

/// A zero-initialised, 4096-byte aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated (0: nothing allocated, `ptr` dangling).
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (an empty buffer allocates nothing).
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return AlignedBuf {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size and a valid power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap: len }
    }

    /// Allocates `capacity` zeroed bytes and sets the length to `len`
    /// (at most `capacity`).
    pub fn with_capacity(capacity: usize, len: usize) -> Self {
        let mut buf = Self::zeroed(capacity);
        buf.set_len(len);
        buf
    }

    /// Bytes allocated; `set_len` may grow the buffer up to this.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Changes the length within the allocation. Bytes that come back into
    /// view hold whatever was written there last (zero if never written).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf::set_len({len}) beyond capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// An aligned copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        if data.is_empty() {
            return Self::empty();
        }
        let layout = Self::layout(data.len());
        // SAFETY: layout has non-zero size and a valid power-of-two alignment.
        let raw = unsafe { alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: `ptr` is a fresh allocation of `data.len()` bytes that cannot
        // overlap `data`; the copy initialises every byte before anyone reads.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        AlignedBuf {
            ptr,
            len: data.len(),
            cap: data.len(),
        }
    }

    pub fn empty() -> Self {
        Self::zeroed(0)
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, ALIGN_BYTES).expect("buffer length overflows a Layout")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout (size `cap`).
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .finish()
    }
}

/// A clone holds the contents only (capacity = length): clones feed copies
/// to other consumers, never the frontend's lending cycle.
impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(8192);
        assert_eq!(b.as_ptr() as usize % ALIGN_BYTES, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[5] = 7;
        assert_eq!(b.clone().as_slice()[5], 7);
        assert!(AlignedBuf::empty().is_empty());
    }

    #[test]
    fn length_moves_within_the_capacity_and_keeps_the_bytes() {
        let mut b = AlignedBuf::with_capacity(16384, 4096);
        assert_eq!((b.len(), b.capacity()), (4096, 16384));
        b.set_len(16384);
        b.as_mut_slice()[10000] = 9;
        b.set_len(512);
        assert_eq!(b.as_slice().len(), 512);
        b.set_len(16384);
        assert_eq!(b.as_slice()[10000], 9);
        b.set_len(4096);
        assert_eq!(b.clone().capacity(), 4096);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn length_beyond_the_capacity_is_refused() {
        AlignedBuf::with_capacity(4096, 0).set_len(4097);
    }
}
