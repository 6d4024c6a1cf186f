//! Cross-thread completion of ublk requests: a per-request slot the target's
//! completion callback fills from any thread, and a per-queue eventfd doorbell
//! that wakes the queue thread out of its io_uring wait.
//!
//! Owns: [`Doorbell`], [`Slot`], and [`serve_request`] (one request from ublk
//! descriptor to commit result; a read the target offers as a direct read is
//! served on the queue's ring instead, see `direct.rs`). Must never: block the
//! queue thread while the target works on a request, or lose a wakeup.
//!
//! Wakeup protocol: the callback stores the outcome, wakes the task's waker
//! (which queues the task on the queue's executor) and only then rings the
//! doorbell. The queue thread polls the eventfd from its io_uring; after every
//! reap it runs the executor until nothing is runnable, so a task woken before a
//! doorbell ring that the queue thread already drained still runs in that pass.

use crate::direct::{serve_direct_read, serve_direct_write, RingSubmit};
use crate::ops::{commit_result, decode, IoDesc};
use drbdd_blockio::{AlignedBuf, BlockError, BlockOp, BlockSession};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// An eventfd that completion callbacks ring to wake one queue thread.
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: OwnedFd,
    /// True while a ring is pending that the queue thread has not drained yet;
    /// saves a write(2) per completion under load.
    rung: AtomicBool,
}

impl Doorbell {
    pub(crate) fn new() -> std::io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Doorbell {
            fd,
            rung: AtomicBool::new(false),
        })
    }

    /// Called by completion callbacks (any thread) after waking their task.
    pub(crate) fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            // EAGAIN means the counter is saturated, i.e. already readable.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    /// Called by the queue thread (inside an executor pass) when the eventfd
    /// polled readable: drains the counter, then re-enables ringing.
    ///
    /// Order matters. Re-enabling first would let a ring land between the two
    /// steps and be swallowed by the read while `rung` stays true: every later
    /// completion would skip its write and the queue thread would sleep through
    /// them. Draining first, a racing ring either saw `rung == true` (then its
    /// task was queued before that, and the swap below acquires it, so this
    /// executor pass runs it) or comes after the swap and writes again.
    pub(crate) fn drain(&self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut counter);
        self.rung.swap(false, Ordering::AcqRel);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Where one request's outcome waits for its task.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Result<AlignedBuf, BlockError>>,
    waker: Option<Waker>,
}

impl Slot {
    /// Stores the outcome and wakes the waiting task (completion side).
    pub(crate) fn complete(&self, outcome: Result<AlignedBuf, BlockError>) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            assert!(state.outcome.is_none(), "a request completed twice");
            state.outcome = Some(outcome);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A future resolving to the outcome once [`Slot::complete`] ran.
    pub(crate) fn wait(self: &Arc<Self>) -> SlotWait {
        SlotWait {
            slot: Arc::clone(self),
        }
    }
}

/// Future returned by [`Slot::wait`].
#[derive(Debug)]
pub(crate) struct SlotWait {
    slot: Arc<Slot>,
}

impl Future for SlotWait {
    type Output = Result<AlignedBuf, BlockError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// What every request of one device needs.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub(crate) session: Arc<dyn BlockSession>,
    pub(crate) size_bytes: u64,
    pub(crate) max_io_bytes: u32,
    /// Where direct reads are submitted: the queue's io_uring.
    pub(crate) ring: RingSubmit,
}

/// Serves one ublk request: decodes it, lends the tag's buffer `tag_buf` to
/// the target (writes: it already holds the data the kernel copied in; reads:
/// the target fills it), waits for the completion without blocking the thread,
/// and returns the result to commit together with the buffer whose address the
/// commit hands to the kernel (reads: the data is at its start).
///
/// No per-request allocation or copy: the buffer the target gives back is
/// reused when it still has `tag_buf`'s capacity; only when a target keeps it
/// (or fails) does a fresh one take its place (and read data is copied over
/// when the returned buffer is too small to serve as the tag buffer).
pub(crate) async fn serve_request(
    ctx: &RequestContext,
    doorbell: &Arc<Doorbell>,
    desc: IoDesc,
    mut tag_buf: AlignedBuf,
) -> (i32, AlignedBuf) {
    let cap = tag_buf.capacity();
    let req = match decode(desc, ctx.size_bytes, ctx.max_io_bytes) {
        Ok(req) => req,
        Err(e) => return (commit_result_err(&e), tag_buf),
    };
    let len = usize::try_from(req.len_bytes).unwrap_or(usize::MAX);
    if matches!(req.op, BlockOp::Read | BlockOp::Write) && len > cap {
        let e = BlockError::InvalidArgument("request larger than the tag buffer");
        return (commit_result_err(&e), tag_buf);
    }
    if req.op == BlockOp::Read {
        if let Some(dr) = ctx.session.direct_read(&req) {
            match serve_direct_read(ctx.ring, &req, dr, tag_buf).await {
                Ok(done) => return done,
                // Abandoned before the kernel read anything: the usual path.
                Err(buf) => tag_buf = buf,
            }
        }
    }
    if req.op == BlockOp::Write {
        tag_buf.set_len(len);
        // Shared with the target, which may send it to the peers in place.
        let shared = Arc::new(tag_buf);
        if let Some(dw) = ctx.session.direct_write(&req, &shared) {
            return serve_direct_write(ctx.ring, doorbell, &req, dw, shared).await;
        }
        // Refused: the target kept no clone (`BlockSession::direct_write`).
        tag_buf = Arc::try_unwrap(shared).unwrap_or_else(|kept| {
            debug_assert!(false, "a refused direct write kept its buffer");
            let mut fresh = AlignedBuf::with_capacity(cap, len);
            fresh.as_mut_slice().copy_from_slice(kept.as_slice());
            fresh
        });
    }
    let (data, kept) = match req.op {
        BlockOp::Read | BlockOp::Write => {
            tag_buf.set_len(len);
            (tag_buf, None)
        }
        BlockOp::Flush | BlockOp::Discard | BlockOp::WriteZeroes => {
            (AlignedBuf::empty(), Some(tag_buf))
        }
    };
    let slot = Arc::new(Slot::default());
    let (done_slot, done_bell) = (Arc::clone(&slot), Arc::clone(doorbell));
    ctx.session.submit(
        req,
        data,
        Box::new(move |outcome| {
            done_slot.complete(outcome);
            done_bell.ring();
        }),
    );
    let outcome = slot.wait().await;
    let fresh = || AlignedBuf::with_capacity(cap, cap);
    if let Some(buf) = kept {
        // FLUSH, DISCARD, WRITE_ZEROES: the tag buffer never left.
        let res = match &outcome {
            Ok(_) => commit_result(&req, Ok(())),
            Err(e) => commit_result(&req, Err(e)),
        };
        return (res, buf);
    }
    match outcome {
        Err(e) => (commit_result(&req, Err(&e)), fresh()),
        Ok(buf) if req.op == BlockOp::Read && buf.len() != len => {
            (commit_result_err(&BlockError::Io), fresh())
        }
        Ok(buf) if buf.capacity() >= cap => (commit_result(&req, Ok(())), buf),
        Ok(buf) if req.op == BlockOp::Read => {
            let mut tag = fresh();
            tag.as_mut_slice()[..len].copy_from_slice(buf.as_slice());
            (commit_result(&req, Ok(())), tag)
        }
        Ok(_) => (commit_result(&req, Ok(())), fresh()),
    }
}

fn commit_result_err(e: &BlockError) -> i32 {
    -e.errno()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drbdd_blockio::mem::MemTarget;
    use drbdd_blockio::{BlockRequest, BlockTarget, Completion};
    use libublk::sys;
    use std::time::Duration;

    /// A session that completes every request from another thread after a delay,
    /// like a write waiting for a peer's ack.
    #[derive(Debug)]
    struct DelayedSession {
        inner: Arc<dyn BlockSession>,
        delay: Duration,
    }

    impl BlockSession for DelayedSession {
        fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
            let (inner, delay) = (Arc::clone(&self.inner), self.delay);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                inner.submit(req, buf, done);
            });
        }
    }

    fn ctx(session: Arc<dyn BlockSession>) -> RequestContext {
        RequestContext {
            session,
            size_bytes: 1 << 20,
            max_io_bytes: 64 << 10,
            ring: crate::direct::UBLK_RING,
        }
    }

    fn desc(op: u32, start_sector: u64, nr_sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: op,
            nr_sectors,
            start_sector,
        }
    }

    /// A tag buffer of `cap` bytes filled with `byte`.
    fn filled(byte: u8, cap: usize) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(cap, cap);
        b.as_mut_slice().fill(byte);
        b
    }

    fn eventfd_readable(bell: &Doorbell) -> bool {
        let mut pfd = [rustix::event::PollFd::new(
            &bell.fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut pfd, None).unwrap_or(0) == 1
    }

    #[test]
    fn write_then_read_round_trips_through_the_tag_buffer() {
        let target = MemTarget::new(1 << 20);
        let ctx = ctx(target.open("test", true).unwrap());
        let bell = Arc::new(Doorbell::new().unwrap());
        let buf = filled(0xab, 64 << 10);
        let (res, _) = smol::block_on(serve_request(
            &ctx,
            &bell,
            desc(sys::UBLK_IO_OP_WRITE, 8, 8),
            buf,
        ));
        assert_eq!(res, 4096);
        assert!(target.snapshot()[4096..8192].iter().all(|&b| b == 0xab));
        let out = filled(0, 64 << 10);
        let out_ptr = out.as_ptr();
        let (res, out) = smol::block_on(serve_request(
            &ctx,
            &bell,
            desc(sys::UBLK_IO_OP_READ, 8, 8),
            out,
        ));
        assert_eq!(res, 4096);
        assert!(out.as_slice()[..4096].iter().all(|&b| b == 0xab));
        // The tag buffer came back (no allocation per request) with its capacity.
        assert_eq!(out.as_ptr(), out_ptr);
        assert_eq!(out.capacity(), 64 << 10);
    }

    #[test]
    fn completion_on_another_thread_wakes_the_task_and_rings_the_doorbell() {
        let target = MemTarget::new(1 << 20);
        let delayed = Arc::new(DelayedSession {
            inner: target.open("t", true).unwrap(),
            delay: Duration::from_millis(50),
        });
        let ctx = ctx(delayed);
        let bell = Arc::new(Doorbell::new().unwrap());
        let buf = filled(7, 64 << 10);
        let (res, _) = smol::block_on(serve_request(
            &ctx,
            &bell,
            desc(sys::UBLK_IO_OP_WRITE, 0, 16),
            buf,
        ));
        assert_eq!(res, 8192);
        assert!(
            eventfd_readable(&bell),
            "completion must ring the queue's eventfd"
        );
        bell.drain();
        bell.ring();
        assert!(
            eventfd_readable(&bell),
            "a ring after drain must make the eventfd readable again"
        );
    }

    #[test]
    fn a_slow_request_does_not_hold_up_other_tags_of_the_queue() {
        use std::rc::Rc;
        let target = MemTarget::new(1 << 20);
        let slow: Arc<dyn BlockSession> = Arc::new(DelayedSession {
            inner: target.open("slow", true).unwrap(),
            delay: Duration::from_millis(300),
        });
        let slow_ctx = ctx(slow);
        let fast_ctx = ctx(target.open("fast", true).unwrap());
        let bell = Arc::new(Doorbell::new().unwrap());
        let finished = Rc::new(std::cell::RefCell::new(Vec::new()));
        let exe = smol::LocalExecutor::new();
        let (bell_a, done_a) = (Arc::clone(&bell), Rc::clone(&finished));
        let a = exe.spawn(async move {
            let buf = filled(1, 64 << 10);
            serve_request(&slow_ctx, &bell_a, desc(sys::UBLK_IO_OP_WRITE, 0, 8), buf).await;
            done_a.borrow_mut().push("slow");
        });
        let (bell_b, done_b) = (Arc::clone(&bell), Rc::clone(&finished));
        let b = exe.spawn(async move {
            let buf = filled(0, 64 << 10);
            serve_request(&fast_ctx, &bell_b, desc(sys::UBLK_IO_OP_READ, 64, 8), buf).await;
            done_b.borrow_mut().push("fast");
        });
        smol::block_on(exe.run(async move {
            a.await;
            b.await;
        }));
        assert_eq!(*finished.borrow(), vec!["fast", "slow"]);
    }

    /// Completes requests on a small pool of threads, in submission order.
    #[derive(Debug)]
    struct PoolSession {
        inner: Arc<dyn BlockSession>,
        jobs: Mutex<std::sync::mpsc::Sender<(BlockRequest, AlignedBuf, Completion)>>,
    }

    impl PoolSession {
        fn new(inner: Arc<dyn BlockSession>, threads: usize) -> Self {
            let (tx, rx) = std::sync::mpsc::channel::<(BlockRequest, AlignedBuf, Completion)>();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..threads {
                let (rx, inner) = (Arc::clone(&rx), Arc::clone(&inner));
                std::thread::spawn(move || loop {
                    let Ok(Ok((req, buf, done))) = rx.lock().map(|r| r.recv()) else {
                        return;
                    };
                    inner.submit(req, buf, done);
                });
            }
            PoolSession {
                inner,
                jobs: Mutex::new(tx),
            }
        }
    }

    impl BlockSession for PoolSession {
        fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
            let _ = &self.inner;
            let _ = self.jobs.lock().unwrap().send((req, buf, done));
        }
    }

    /// Drives many tasks the way a queue thread does (sleep on the eventfd,
    /// drain, run the executor) and fails if the thread ever sleeps 2 s with
    /// work pending, i.e. if a doorbell ring was lost.
    #[test]
    fn no_completion_is_lost_when_rings_race_with_the_drain() {
        use std::rc::Rc;
        let target = MemTarget::new(1 << 20);
        let ctx = Rc::new(ctx(Arc::new(PoolSession::new(
            target.open("pool", true).unwrap(),
            4,
        ))));
        let bell = Arc::new(Doorbell::new().unwrap());
        let exe = smol::LocalExecutor::new();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let (ctx, bell) = (Rc::clone(&ctx), Arc::clone(&bell));
                exe.spawn(async move {
                    let mut buf = filled(0, 64 << 10);
                    for _ in 0..200 {
                        let (res, next) =
                            serve_request(&ctx, &bell, desc(sys::UBLK_IO_OP_WRITE, t * 8, 8), buf)
                                .await;
                        buf = next;
                        assert_eq!(res, 4096);
                    }
                })
            })
            .collect();
        loop {
            while exe.try_tick() {}
            if tasks.iter().all(|t| t.is_finished()) {
                break;
            }
            let mut pfd = [rustix::event::PollFd::new(
                &bell.fd,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::event::Timespec {
                tv_sec: 2,
                tv_nsec: 0,
            };
            let ready = rustix::event::poll(&mut pfd, Some(&timeout)).unwrap();
            assert_eq!(
                ready, 1,
                "queue thread slept with completions pending: lost doorbell ring"
            );
            bell.drain();
        }
    }

    #[test]
    fn flush_is_submitted_with_no_range_and_errors_become_negative_errno() {
        let target = MemTarget::new(1 << 20);
        let ctx = ctx(target.open("t", true).unwrap());
        let bell = Arc::new(Doorbell::new().unwrap());
        let buf = filled(0, 4096);
        let flush = desc(sys::UBLK_IO_OP_FLUSH, u64::MAX, 0);
        let (res, buf) = smol::block_on(serve_request(&ctx, &bell, flush, buf));
        assert_eq!(res, 0);
        assert_eq!(buf.capacity(), 4096, "flush keeps the tag buffer");
        let past_end = desc(sys::UBLK_IO_OP_READ, (1 << 20) / 512, 8);
        let (res, buf) = smol::block_on(serve_request(&ctx, &bell, past_end, buf));
        assert_eq!(res, -libc::EINVAL);
        let too_big_for_buffer = desc(sys::UBLK_IO_OP_WRITE, 0, 16);
        let (res, buf) = smol::block_on(serve_request(&ctx, &bell, too_big_for_buffer, buf));
        assert_eq!(res, -libc::EINVAL);
        assert_eq!(buf.capacity(), 4096);
    }
}
