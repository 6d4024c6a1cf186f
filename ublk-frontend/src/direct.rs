//! Reads served on the queue's own io_uring: when the target offers a
//! [`DirectRead`], the tag's task issues the READ of the backing file into
//! the tag buffer itself and awaits its completion on the queue thread, so a
//! local read costs no thread hop (under QEMU/TCG each hop is hundreds of µs).
//!
//! Owns: building the READ SQEs, looping over short reads, finishing the
//! [`DirectRead`] exactly once, and the tag buffer while the kernel may write
//! into it. Must never: free (or hand out) a buffer the kernel may still
//! write, i.e. one named by an SQE whose completion this task has not seen;
//! or report a read the kernel did not complete as done.

use crate::ops::commit_result;
use drbdd_blockio::{AlignedBuf, BlockRequest, DirectRead};
use io_uring::{opcode, squeue, types};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;

/// Submits one SQE on the queue's ring and resolves to its CQE result
/// (negative errno on failure); `-ECANCELED` when it could not be queued.
pub(crate) type RingSubmit = fn(squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>>;

/// The production [`RingSubmit`]: libublk's per-queue ring. Completions are
/// routed by libublk's per-thread slab key in `user_data`; the `Target` bit
/// marks the CQE as ours rather than a ublk command's.
pub(crate) fn ublk_ring(sqe: squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>> {
    Box::pin(async move {
        libublk::uring_async::ublk_submit_sqe_async(sqe, libublk::UblkUringData::Target as u64)
            .await
            .unwrap_or(-libc::ECANCELED)
    })
}

/// Retries of a read the kernel answered with EAGAIN/EINTR, at most.
const RETRIES_MAX: u32 = 4;

/// Serves the read `req` through `dr` into `tag_buf` (whose capacity holds
/// `req.len_bytes`). `Ok((result to commit, buffer))`, or `Err(buffer)` when
/// the read was not done and the request must take the submit path instead
/// (the direct read was abandoned, not failed: no disk-error policy ran).
pub(crate) async fn serve_direct_read(
    ring: RingSubmit,
    req: &BlockRequest,
    dr: DirectRead,
    mut tag_buf: AlignedBuf,
) -> Result<(i32, AlignedBuf), AlignedBuf> {
    let len = usize::try_from(req.len_bytes).unwrap_or(usize::MAX);
    assert!(len <= tag_buf.capacity(), "read larger than the tag buffer");
    tag_buf.set_len(len);
    let (outcome, tag_buf) = read_at(ring, dr.fd(), dr.offset_bytes(), tag_buf).await;
    let abandoned = outcome == Err(libc::ECANCELED);
    let result = dr.finish(outcome);
    if abandoned {
        return Err(tag_buf);
    }
    Ok((commit_result(req, result.as_ref().map(|_| ())), tag_buf))
}

/// Reads `buf.len()` bytes of `fd` at `offset_bytes` into `buf` through
/// `ring`: the bytes read (fewer only at end of file) or the positive errno
/// of the first failure. The buffer comes back once no SQE names it anymore.
pub(crate) async fn read_at(
    ring: RingSubmit,
    fd: RawFd,
    offset_bytes: u64,
    buf: AlignedBuf,
) -> (Result<u32, i32>, AlignedBuf) {
    let total = u32::try_from(buf.len()).expect("a tag buffer is far below 4 GiB");
    let mut lent = LentBuf(Some(buf));
    let base = lent.as_mut_ptr();
    let (mut done, mut retries) = (0u32, 0u32);
    let outcome = loop {
        if done == total {
            break Ok(done);
        }
        // The kernel writes `base + done .. base + total`, inside the buffer
        // (`done < total == len`). No `unsafe` here, but the SQE outlives
        // nothing it names: `lent` belongs to this future, the `.await`
        // returns only once the CQE arrived (the kernel is then done with the
        // memory), and if the future is dropped while the SQE is in flight
        // (queue torn down), `LentBuf` leaks the buffer instead of freeing it.
        let ptr = base.wrapping_add(usize::try_from(done).unwrap_or(usize::MAX));
        let sqe = opcode::Read::new(types::Fd(fd), ptr, total - done)
            .offset(offset_bytes + u64::from(done))
            .build();
        let res = ring(sqe).await;
        match u32::try_from(res) {
            // End of file: report the short read.
            Ok(0) => break Ok(done),
            Ok(n) if n <= total - done => done += n,
            Ok(_) => break Err(libc::EIO),
            Err(_) if (res == -libc::EAGAIN || res == -libc::EINTR) && retries < RETRIES_MAX => {
                retries += 1;
            }
            Err(_) => break Err(res.checked_neg().unwrap_or(libc::EIO)),
        }
    };
    (outcome, lent.take())
}

/// A buffer an SQE may be writing into: dropping it (the owning future was
/// cancelled mid-read) leaks the memory rather than returning it to the
/// allocator while the kernel might still fill it.
struct LentBuf(Option<AlignedBuf>);

impl LentBuf {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0
            .as_mut()
            .map_or(std::ptr::null_mut(), AlignedBuf::as_mut_ptr)
    }

    /// The buffer back, once no SQE names it anymore.
    fn take(mut self) -> AlignedBuf {
        self.0.take().unwrap_or_else(AlignedBuf::empty)
    }
}

impl Drop for LentBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            tracing::warn!("ublk direct read abandoned in flight; leaking its buffer");
            std::mem::forget(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    //! `read_at` and `serve_direct_read` over a real io_uring (a per-test
    //! ring standing in for the ublk queue's) on an O_DIRECT file.
    use super::*;
    use drbdd_blockio::{BlockError, BlockOp, FdHandle};
    use io_uring::IoUring;
    use std::cell::RefCell;
    use std::fs::OpenOptions;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::{Arc, Mutex};

    thread_local! {
        static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
    }

    /// Submits on this thread's test ring and waits for the CQE.
    fn test_ring(sqe: squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>> {
        let res = RING.with(|r| {
            let mut r = r.borrow_mut();
            let ring = r.get_or_insert_with(|| IoUring::new(8).expect("io_uring"));
            // SAFETY: the SQE's buffer is the test's tag buffer, which lives
            // until after this function returned with the CQE.
            unsafe { ring.submission().push(&sqe).expect("sq has room") };
            ring.submit_and_wait(1).expect("submit");
            let cqe = ring.completion().next().expect("one cqe");
            cqe.result()
        });
        Box::pin(std::future::ready(res))
    }

    /// Answers the first SQE with a short read of 512 bytes (then real reads).
    fn short_then_real(sqe: squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>> {
        thread_local!(static FIRST: RefCell<bool> = const { RefCell::new(true) });
        if FIRST.with(|f| f.replace(false)) {
            // Let the real ring read everything, but report only 512 bytes:
            // the loop must re-read the rest (the same bytes land again).
            drop(test_ring(sqe));
            return Box::pin(std::future::ready(512));
        }
        test_ring(sqe)
    }

    fn failing_ring(_sqe: squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>> {
        Box::pin(std::future::ready(-libc::EIO))
    }

    fn unqueued_ring(_sqe: squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>> {
        Box::pin(std::future::ready(-libc::ECANCELED))
    }

    /// Byte `i` of the test file: its sector number (the file has 128 sectors).
    fn sector_byte(i: u32) -> u8 {
        u8::try_from(i / 512).expect("128 sectors")
    }

    struct File {
        _dir: tempfile::TempDir,
        file: Arc<std::fs::File>,
    }

    /// An O_DIRECT file of 64 KiB whose byte `i` is `i / 512`.
    fn backing() -> File {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backing");
        let data: Vec<u8> = (0..65536u32).map(sector_byte).collect();
        std::fs::write(&path, &data).expect("write");
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_DIRECT");
        File {
            _dir: dir,
            file: Arc::new(file),
        }
    }

    fn read_req(offset_bytes: u64, len_bytes: u32) -> BlockRequest {
        BlockRequest {
            op: BlockOp::Read,
            offset_bytes,
            len_bytes,
            fua: false,
        }
    }

    /// A DirectRead that records what it was finished with.
    fn direct(f: &File, offset: u64, log: &Arc<Mutex<Vec<Result<u32, i32>>>>) -> DirectRead {
        let log = Arc::clone(log);
        let fd: FdHandle = Arc::clone(&f.file) as FdHandle;
        DirectRead::new(
            fd,
            offset,
            Box::new(move |outcome| {
                log.lock().unwrap().push(outcome);
                outcome.map(|_| ()).map_err(|_| BlockError::Io)
            }),
        )
    }

    #[test]
    fn direct_read_fills_the_tag_buffer_and_commits_the_length() {
        let f = backing();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tag = AlignedBuf::with_capacity(1 << 16, 1 << 16);
        let tag_ptr = tag.as_ptr();
        let req = read_req(8192, 8192);
        let out = smol::block_on(serve_direct_read(
            test_ring,
            &req,
            direct(&f, 8192, &log),
            tag,
        ));
        let (res, buf) = out.expect("served directly");
        assert_eq!(res, 8192);
        assert_eq!(buf.as_ptr(), tag_ptr, "the tag buffer itself is filled");
        let want: Vec<u8> = (8192..16384u32).map(sector_byte).collect();
        assert_eq!(buf.as_slice(), &want[..]);
        assert_eq!(*log.lock().unwrap(), vec![Ok(8192)]);
    }

    #[test]
    fn a_short_read_is_continued_until_the_request_is_full() {
        let f = backing();
        let buf = AlignedBuf::with_capacity(4096, 4096);
        let (outcome, buf) = smol::block_on(read_at(short_then_real, f.file.as_raw_fd(), 0, buf));
        assert_eq!(outcome, Ok(4096));
        let want: Vec<u8> = (0..4096u32).map(sector_byte).collect();
        assert_eq!(buf.as_slice(), &want[..]);
    }

    #[test]
    fn a_read_past_the_end_of_file_reports_the_short_count() {
        let f = backing();
        let buf = AlignedBuf::with_capacity(8192, 8192);
        let fd = f.file.as_raw_fd();
        let (outcome, _) = smol::block_on(read_at(test_ring, fd, 65536 - 4096, buf));
        assert_eq!(outcome, Ok(4096));
    }

    #[test]
    fn a_failed_read_is_finished_with_its_errno_and_commits_the_error() {
        let f = backing();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tag = AlignedBuf::with_capacity(4096, 4096);
        let req = read_req(0, 4096);
        let out = smol::block_on(serve_direct_read(
            failing_ring,
            &req,
            direct(&f, 0, &log),
            tag,
        ));
        let (res, buf) = out.expect("an error is still an answer");
        assert_eq!(res, -libc::EIO);
        assert_eq!(buf.capacity(), 4096);
        assert_eq!(*log.lock().unwrap(), vec![Err(libc::EIO)]);
    }

    #[test]
    fn a_read_that_was_never_queued_falls_back_and_is_finished_once() {
        let f = backing();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tag = AlignedBuf::with_capacity(4096, 4096);
        let req = read_req(0, 4096);
        let out = smol::block_on(serve_direct_read(
            unqueued_ring,
            &req,
            direct(&f, 0, &log),
            tag,
        ));
        assert!(out.is_err(), "must take the submit path");
        assert_eq!(*log.lock().unwrap(), vec![Err(libc::ECANCELED)]);
    }
}
