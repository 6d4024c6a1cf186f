//! Reads and writes served on the queue's own io_uring: when the target
//! offers a [`DirectRead`], the tag's task issues the READ of the backing file
//! into the tag buffer itself and awaits its completion on the queue thread,
//! so a local read costs no thread hop (under QEMU/TCG each hop is hundreds of
//! µs). Likewise a [`DirectWrite`]: the task issues the WRITE of the local
//! copy from the tag buffer, finishes it, and then awaits the request's
//! completion as a submitted write does (with peers that comes later, from
//! another thread, through the doorbell).
//!
//! Owns: building the READ/WRITE SQEs, looping over short transfers,
//! finishing the [`DirectRead`]/[`DirectWrite`] exactly once, and the tag
//! buffer while the kernel may access it. Must never: free (or hand out) a
//! buffer the kernel may still access, i.e. one named by an SQE whose
//! completion this task has not seen; report a transfer the kernel did not
//! complete as done; or commit a write before its completion ran.

use crate::ops::commit_result;
use crate::wake::{Doorbell, Slot};
use drbdd_blockio::{AlignedBuf, BlockRequest, DirectRead, DirectWrite};
use io_uring::{opcode, squeue, types};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;

/// Where SQEs go: submits one and resolves to its CQE result (negative
/// errno on failure); `-ECANCELED` when it could not be queued.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RingSubmit {
    /// libublk's per-queue ring, awaited in place (no boxed future per SQE:
    /// this runs for every direct read and write on the queue thread).
    Ublk,
    /// Another ring (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Other(fn(squeue::Entry) -> Pin<Box<dyn Future<Output = i32>>>),
}

/// The production [`RingSubmit`].
pub(crate) const UBLK_RING: RingSubmit = RingSubmit::Ublk;

impl RingSubmit {
    /// Submits `sqe` and resolves to its CQE result. On libublk's ring,
    /// completions are routed by its per-thread slab key in `user_data`; the
    /// `Target` bit marks the CQE as ours rather than a ublk command's.
    async fn submit(self, sqe: squeue::Entry) -> i32 {
        match self {
            RingSubmit::Ublk => libublk::uring_async::ublk_submit_sqe_async(
                sqe,
                libublk::UblkUringData::Target as u64,
            )
            .await
            .unwrap_or(-libc::ECANCELED),
            RingSubmit::Other(submit) => submit(sqe).await,
        }
    }
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

/// Serves the write `req` through `dw` from `tag_buf` (holding the
/// `req.len_bytes` bytes the kernel copied in, shared with the target, which
/// may send it to the peers in place): writes it, finishes `dw`, then awaits
/// the request's completion (every leg of the write, possibly on another
/// thread) and returns the result to commit with the buffer for the next
/// request: the tag buffer itself when no one else holds it any more, else
/// a fresh one of the same capacity (the target still reads the old one).
pub(crate) async fn serve_direct_write(
    ring: RingSubmit,
    doorbell: &Arc<Doorbell>,
    req: &BlockRequest,
    dw: DirectWrite,
    tag_buf: Arc<AlignedBuf>,
) -> (i32, AlignedBuf) {
    let len = usize::try_from(req.len_bytes).unwrap_or(usize::MAX);
    assert_eq!(len, tag_buf.len(), "the tag buffer holds the write's data");
    let (outcome, tag_buf) =
        write_shared_at(ring, dw.dsync(), dw.fd(), dw.offset_bytes(), tag_buf).await;
    let slot = Arc::new(Slot::default());
    let (done_slot, done_bell) = (Arc::clone(&slot), Arc::clone(doorbell));
    let queue_thread = std::thread::current().id();
    dw.finish(
        outcome,
        Box::new(move |outcome| {
            done_slot.complete(outcome);
            // Done inside `finish` (no peer to wait for): this task polls
            // the slot next, no need to wake the queue thread.
            if std::thread::current().id() != queue_thread {
                done_bell.ring();
            }
        }),
    );
    let outcome = slot.wait().await;
    let cap = tag_buf.capacity();
    let next = Arc::try_unwrap(tag_buf).unwrap_or_else(|_| AlignedBuf::with_capacity(cap, cap));
    (commit_result(req, outcome.as_ref().map(|_| ())), next)
}

/// Which way [`transfer_at`] moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// File into buffer.
    Read,
    /// Buffer into file; `dsync`: `RWF_DSYNC` (FUA).
    Write { dsync: bool },
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
    transfer_at(ring, Dir::Read, fd, offset_bytes, buf).await
}

/// Moves `buf.len()` bytes between `buf` and `fd` at `offset_bytes` through
/// `ring`, continuing short transfers: the bytes moved (fewer only when the
/// kernel moved none, e.g. end of file) or the positive errno of the first
/// failure. The buffer comes back once no SQE names it anymore.
pub(crate) async fn transfer_at(
    ring: RingSubmit,
    dir: Dir,
    fd: RawFd,
    offset_bytes: u64,
    buf: AlignedBuf,
) -> (Result<u32, i32>, AlignedBuf) {
    let total = u32::try_from(buf.len()).expect("a tag buffer is far below 4 GiB");
    let mut lent = LentBuf(Some(buf));
    let base = lent.as_mut_ptr();
    let outcome = transfer_raw(ring, dir, fd, offset_bytes, base, total).await;
    (outcome, lent.take())
}

/// [`transfer_at`] writing a buffer others hold too (read-only: the kernel
/// only reads memory a WRITE names). The clone comes back once no SQE names
/// the buffer anymore.
pub(crate) async fn write_shared_at(
    ring: RingSubmit,
    dsync: bool,
    fd: RawFd,
    offset_bytes: u64,
    buf: Arc<AlignedBuf>,
) -> (Result<u32, i32>, Arc<AlignedBuf>) {
    let total = u32::try_from(buf.len()).expect("a tag buffer is far below 4 GiB");
    let lent = LentShared(Some(buf));
    // Only a WRITE names it: the kernel reads this memory, never writes it.
    let base = lent.as_ptr().cast_mut();
    let outcome = transfer_raw(ring, Dir::Write { dsync }, fd, offset_bytes, base, total).await;
    (outcome, lent.take())
}

/// The transfer loop of [`transfer_at`] over `total` bytes at `base`, which
/// the caller keeps allocated (leaked if this future is dropped mid-flight).
async fn transfer_raw(
    ring: RingSubmit,
    dir: Dir,
    fd: RawFd,
    offset_bytes: u64,
    base: *mut u8,
    total: u32,
) -> Result<u32, i32> {
    let (mut done, mut retries) = (0u32, 0u32);
    loop {
        if done == total {
            break Ok(done);
        }
        // The kernel accesses `base + done .. base + total`, inside the
        // buffer (`done < total == len`). No `unsafe` here, but the SQE
        // outlives nothing it names: the buffer belongs to the caller's
        // future, the `.await` returns only once the CQE arrived (the kernel
        // is then done with the memory), and if the future is dropped while
        // the SQE is in flight (queue torn down), the caller's lender
        // (`LentBuf`, `LentShared`) leaks the buffer instead of freeing it.
        let ptr = base.wrapping_add(usize::try_from(done).unwrap_or(usize::MAX));
        let (fd, len, at) = (types::Fd(fd), total - done, offset_bytes + u64::from(done));
        let sqe = match dir {
            Dir::Read => opcode::Read::new(fd, ptr, len).offset(at).build(),
            Dir::Write { dsync } => {
                let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(fd, ptr.cast_const(), len)
                    .offset(at)
                    .rw_flags(flags)
                    .build()
            }
        };
        let res = ring.submit(sqe).await;
        match u32::try_from(res) {
            // Nothing moved (end of file): report the short count.
            Ok(0) => break Ok(done),
            Ok(n) if n <= total - done => done += n,
            Ok(_) => break Err(libc::EIO),
            Err(_) if (res == -libc::EAGAIN || res == -libc::EINTR) && retries < RETRIES_MAX => {
                retries += 1;
            }
            Err(_) => break Err(res.checked_neg().unwrap_or(libc::EIO)),
        }
    }
}

/// A buffer an SQE may be accessing: dropping it (the owning future was
/// cancelled mid-transfer) leaks the memory rather than returning it to the
/// allocator while the kernel might still fill it (or write it to disk).
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
            tracing::warn!("ublk direct I/O abandoned in flight; leaking its buffer");
            std::mem::forget(buf);
        }
    }
}

/// [`LentBuf`] for a shared buffer: dropped mid-transfer, it leaks its
/// reference, so the buffer is never freed while a WRITE may read it.
struct LentShared(Option<Arc<AlignedBuf>>);

impl LentShared {
    fn as_ptr(&self) -> *const u8 {
        self.0.as_ref().map_or(std::ptr::null(), |b| b.as_ptr())
    }

    /// The reference back, once no SQE names the buffer anymore.
    fn take(mut self) -> Arc<AlignedBuf> {
        self.0
            .take()
            .unwrap_or_else(|| Arc::new(AlignedBuf::empty()))
    }
}

impl Drop for LentShared {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            tracing::warn!("ublk direct write abandoned in flight; leaking its buffer");
            std::mem::forget(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    //! `read_at`/`transfer_at`, `serve_direct_read` and `serve_direct_write`
    //! over a real io_uring (a per-test ring standing in for the ublk
    //! queue's) on an O_DIRECT file.
    use super::*;
    use crate::wake::Doorbell;
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
            .write(true)
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
            RingSubmit::Other(test_ring),
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
        let (outcome, buf) = smol::block_on(read_at(
            RingSubmit::Other(short_then_real),
            f.file.as_raw_fd(),
            0,
            buf,
        ));
        assert_eq!(outcome, Ok(4096));
        let want: Vec<u8> = (0..4096u32).map(sector_byte).collect();
        assert_eq!(buf.as_slice(), &want[..]);
    }

    #[test]
    fn a_read_past_the_end_of_file_reports_the_short_count() {
        let f = backing();
        let buf = AlignedBuf::with_capacity(8192, 8192);
        let fd = f.file.as_raw_fd();
        let (outcome, _) =
            smol::block_on(read_at(RingSubmit::Other(test_ring), fd, 65536 - 4096, buf));
        assert_eq!(outcome, Ok(4096));
    }

    #[test]
    fn a_failed_read_is_finished_with_its_errno_and_commits_the_error() {
        let f = backing();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tag = AlignedBuf::with_capacity(4096, 4096);
        let req = read_req(0, 4096);
        let out = smol::block_on(serve_direct_read(
            RingSubmit::Other(failing_ring),
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
            RingSubmit::Other(unqueued_ring),
            &req,
            direct(&f, 0, &log),
            tag,
        ));
        assert!(out.is_err(), "must take the submit path");
        assert_eq!(*log.lock().unwrap(), vec![Err(libc::ECANCELED)]);
    }

    fn write_req(offset_bytes: u64, len_bytes: u32, fua: bool) -> BlockRequest {
        BlockRequest {
            op: BlockOp::Write,
            offset_bytes,
            len_bytes,
            fua,
        }
    }

    /// A tag buffer holding `len` bytes of `byte`.
    fn filled(len: usize, byte: u8) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(1 << 16, 1 << 16);
        b.set_len(len);
        b.as_mut_slice().fill(byte);
        b
    }

    fn on_disk(f: &File, offset: usize, len: usize) -> Vec<u8> {
        let buf = AlignedBuf::zeroed(65536);
        let (outcome, buf) = smol::block_on(read_at(
            RingSubmit::Other(test_ring),
            f.file.as_raw_fd(),
            0,
            buf,
        ));
        assert_eq!(outcome, Ok(65536));
        buf.as_slice()[offset..offset + len].to_vec()
    }

    /// A DirectWrite that records its outcome and completes the request
    /// with `Ok` (inline, or from another thread when `elsewhere`).
    fn direct_w(
        f: &File,
        offset: u64,
        dsync: bool,
        elsewhere: bool,
        log: &Arc<Mutex<Vec<Result<u32, i32>>>>,
    ) -> DirectWrite {
        let log = Arc::clone(log);
        let fd: FdHandle = Arc::clone(&f.file) as FdHandle;
        DirectWrite::new(
            fd,
            offset,
            dsync,
            Box::new(move |outcome, done| {
                log.lock().unwrap().push(outcome);
                let result = outcome
                    .map(|_| AlignedBuf::empty())
                    .map_err(|_| BlockError::Io);
                if elsewhere {
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        done(result);
                    });
                } else {
                    done(result);
                }
            }),
        )
    }

    #[test]
    fn direct_write_puts_the_tag_buffer_on_disk_and_commits_after_done() {
        for (elsewhere, fua) in [(false, false), (true, true)] {
            let f = backing();
            let log = Arc::new(Mutex::new(Vec::new()));
            let bell = Arc::new(Doorbell::new().expect("eventfd"));
            let tag = filled(8192, 0xab);
            let tag_ptr = tag.as_ptr();
            let req = write_req(4096, 8192, fua);
            let dw = direct_w(&f, 4096, fua, elsewhere, &log);
            let (res, buf) = smol::block_on(serve_direct_write(
                RingSubmit::Other(test_ring),
                &bell,
                &req,
                dw,
                Arc::new(tag),
            ));
            assert_eq!(res, 8192, "elsewhere: {elsewhere}");
            assert_eq!(buf.as_ptr(), tag_ptr, "the tag buffer is kept");
            assert_eq!(*log.lock().unwrap(), vec![Ok(8192)]);
            assert_eq!(on_disk(&f, 4096, 8192), vec![0xab; 8192]);
            let before: Vec<u8> = (0..4096u32).map(sector_byte).collect();
            assert_eq!(on_disk(&f, 0, 4096), before, "nothing else written");
        }
    }

    #[test]
    fn a_short_write_is_continued_until_the_request_is_on_disk() {
        let f = backing();
        let buf = filled(4096, 0x5c);
        let dir = Dir::Write { dsync: false };
        let (outcome, _) = smol::block_on(transfer_at(
            RingSubmit::Other(short_then_real),
            dir,
            f.file.as_raw_fd(),
            0,
            buf,
        ));
        assert_eq!(outcome, Ok(4096));
        assert_eq!(on_disk(&f, 0, 4096), vec![0x5c; 4096]);
    }

    /// A backing file, the finish log, a doorbell, and a 4 KiB plain
    /// direct write at offset 0 with its request.
    #[allow(clippy::type_complexity)]
    fn write_at_zero() -> (
        File,
        Arc<Mutex<Vec<Result<u32, i32>>>>,
        Arc<Doorbell>,
        BlockRequest,
        DirectWrite,
    ) {
        let f = backing();
        let log = Arc::new(Mutex::new(Vec::new()));
        let bell = Arc::new(Doorbell::new().expect("eventfd"));
        let req = write_req(0, 4096, false);
        let dw = direct_w(&f, 0, false, false, &log);
        (f, log, bell, req, dw)
    }

    #[test]
    fn a_failed_write_is_finished_with_its_errno_and_commits_the_error() {
        let (_f, log, bell, req, dw) = write_at_zero();
        let (res, buf) = smol::block_on(serve_direct_write(
            RingSubmit::Other(failing_ring),
            &bell,
            &req,
            dw,
            Arc::new(filled(4096, 1)),
        ));
        assert_eq!(res, -libc::EIO);
        assert_eq!(buf.capacity(), 1 << 16);
        assert_eq!(*log.lock().unwrap(), vec![Err(libc::EIO)]);
    }

    #[test]
    fn a_tag_buffer_still_shared_at_commit_is_replaced_not_reused() {
        let (f, log, bell, req, dw) = write_at_zero();
        let tag = Arc::new(filled(4096, 0x77));
        // Someone (a send to a peer) still reads the buffer after the write.
        let held = Arc::clone(&tag);
        let (res, next) = smol::block_on(serve_direct_write(
            RingSubmit::Other(test_ring),
            &bell,
            &req,
            dw,
            tag,
        ));
        assert_eq!(res, 4096);
        assert_ne!(
            next.as_ptr(),
            held.as_ptr(),
            "the held buffer is not handed out again"
        );
        assert_eq!(next.capacity(), held.capacity());
        assert!(
            held.as_slice().iter().all(|&b| b == 0x77),
            "the holder's bytes stay"
        );
        assert_eq!(*log.lock().unwrap(), vec![Ok(4096)]);
        assert_eq!(on_disk(&f, 0, 4096), vec![0x77; 4096]);
    }

    #[test]
    fn a_write_that_was_never_queued_is_finished_as_cancelled() {
        let (f, log, bell, req, dw) = write_at_zero();
        let (res, _) = smol::block_on(serve_direct_write(
            RingSubmit::Other(unqueued_ring),
            &bell,
            &req,
            dw,
            Arc::new(filled(4096, 1)),
        ));
        assert!(res < 0, "never acknowledged");
        assert_eq!(*log.lock().unwrap(), vec![Err(libc::ECANCELED)]);
        let before: Vec<u8> = (0..4096u32).map(sector_byte).collect();
        assert_eq!(on_disk(&f, 0, 4096), before);
    }
}
