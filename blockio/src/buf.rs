//! A heap buffer aligned to 4096 bytes, as O_DIRECT and ublk require.
//!
//! Owns: one allocation of `capacity` bytes, of which the first `len` are the
//! buffer's contents. Must never: hand out a pointer that outlives it, or a
//! length beyond the allocation.
//!
//! The capacity lets a frontend keep one buffer per ublk tag and lend it to the
//! target for each request (`set_len` to the request's length, back to the
//! capacity for the next one) instead of allocating and copying per request.
//!
//! A buffer may also start uninitialised and be filled from its front
//! (`with_capacity_uninit`, then `read_append` / `extend_from_slice`): a
//! received data block lands there straight from the socket, with no zeroing
//! pass and no copy (each costs about a millisecond per MiB under QEMU TCG).
//! Only the filled prefix is ever visible (`init` tracks it).

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;

const ALIGN_BYTES: usize = 4096;

/// A 4096-byte aligned byte buffer (zero-initialised unless made with
/// [`AlignedBuf::with_capacity_uninit`]).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated (0: nothing allocated, `ptr` dangling).
    cap: usize,
    /// Bytes at the front known to be initialised (`len <= init <= cap`).
    init: usize,
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
                init: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size and a valid power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len,
            cap: len,
            init: len,
        }
    }

    /// Allocates `capacity` bytes without initialising them; the buffer is
    /// empty until filled from the front ([`AlignedBuf::read_append`],
    /// [`AlignedBuf::extend_from_slice`]).
    pub fn with_capacity_uninit(capacity: usize) -> Self {
        if capacity == 0 {
            return Self::empty();
        }
        let layout = Self::layout(capacity);
        // SAFETY: layout has non-zero size and a valid power-of-two alignment.
        let raw = unsafe { alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: 0,
            cap: capacity,
            init: 0,
        }
    }

    /// Bytes that still fit after the contents.
    pub fn spare_bytes(&self) -> usize {
        self.cap - self.len
    }

    /// Appends a copy of `data` after the contents. Panics beyond the capacity.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        assert!(
            data.len() <= self.spare_bytes(),
            "AlignedBuf::extend_from_slice of {} bytes beyond capacity {} (length {})",
            data.len(),
            self.cap,
            self.len
        );
        if data.is_empty() {
            return;
        }
        // SAFETY: `len + data.len() <= cap`, so the destination lies inside
        // our allocation, which `data` (a shared borrow while we hold &mut
        // self) cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            )
        };
        self.grow_filled(data.len());
    }

    /// One `read(2)` from `fd` into the capacity after the contents; appends
    /// what it read and returns how many bytes that was (0: end of file, or
    /// no spare capacity). `EINTR` and `EAGAIN` come back as errors.
    pub fn read_append(&mut self, fd: impl AsFd) -> io::Result<usize> {
        let spare = self.spare_bytes();
        if spare == 0 {
            return Ok(0);
        }
        // SAFETY: the destination `ptr + len .. ptr + cap` lies inside our
        // allocation and nothing else refers to it (&mut self); read(2)
        // writes at most `spare` bytes there and reports how many.
        let n = unsafe {
            libc::read(
                fd.as_fd().as_raw_fd(),
                self.ptr.as_ptr().add(self.len).cast(),
                spare,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        assert!(n <= spare, "read(2) returned more than asked");
        self.grow_filled(n);
        Ok(n)
    }

    /// `n` bytes after the contents were just written: they are contents.
    fn grow_filled(&mut self, n: usize) {
        self.len += n;
        self.init = self.init.max(self.len);
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
    /// A buffer made uninitialised may not grow beyond what was filled.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf::set_len({len}) beyond capacity {}",
            self.cap
        );
        assert!(
            len <= self.init,
            "AlignedBuf::set_len({len}) beyond the {} bytes ever filled",
            self.init
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
            init: data.len(),
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
        // SAFETY: ptr is valid for len initialised bytes (len <= init; or
        // dangling with len 0).
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

/// Equal contents (capacity and alignment aside).
impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for AlignedBuf {}

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
    fn an_uninitialised_buffer_shows_only_what_was_filled() {
        let mut b = AlignedBuf::with_capacity_uninit(8192);
        assert_eq!((b.len(), b.capacity(), b.spare_bytes()), (0, 8192, 8192));
        assert_eq!(b.as_ptr() as usize % ALIGN_BYTES, 0);
        b.extend_from_slice(&[1, 2, 3]);
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut tx, &[4u8; 5000]).unwrap();
        let mut got = 0;
        while got < 5000 {
            got += b.read_append(&rx).unwrap();
        }
        assert_eq!(b.len(), 5003);
        assert_eq!(&b.as_slice()[..4], &[1, 2, 3, 4]);
        assert!(b.as_slice()[3..].iter().all(|&x| x == 4));
        b.set_len(2);
        b.set_len(5003);
        assert_eq!(b.as_slice()[5002], 4);
    }

    #[test]
    #[should_panic(expected = "beyond the 10 bytes ever filled")]
    fn an_uninitialised_buffer_cannot_grow_past_its_filled_bytes() {
        let mut b = AlignedBuf::with_capacity_uninit(4096);
        b.extend_from_slice(&[0; 10]);
        b.set_len(11);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn extending_past_the_capacity_is_refused() {
        AlignedBuf::with_capacity_uninit(4).extend_from_slice(&[0; 5]);
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn length_beyond_the_capacity_is_refused() {
        AlignedBuf::with_capacity(4096, 0).set_len(4097);
    }
}
