//! The io_uring engine: submitters push their ops into the ring themselves;
//! one thread reaps completions.
//!
//! Owns: the ring, the in-flight slot table (sized by the queue depth) and the
//! buffers of ops the kernel is working on. Must never: free or hand back a
//! buffer while the kernel may still access it (a buffer leaves its slot only
//! when its completion was reaped; on a fatal ring error buffers are leaked),
//! or run a completion callback inside `submit`.
//!
//! Why submitters submit: an op handed to a ring thread costs two wake-ups
//! (the hand-over eventfd, then the completion); pushing the SQE and calling
//! `io_uring_enter` from the submitting thread leaves one — the completion
//! that wakes the reaper, which is asleep in `io_uring_enter(min_complete=1)`.
//! Under QEMU/TCG, where a cross-CPU wake-up costs tens of microseconds, that
//! hop was a visible share of a 4 KiB request.
//!
//! Sharing rules (what makes the `unsafe` ring access sound): the submission
//! queue is only touched with the `state` lock held (single producer at a
//! time); the completion queue only by the reaper thread (single consumer);
//! `io_uring_enter` may run concurrently from both sides, which the kernel
//! serialises. Every slot has at most one SQE in the ring and the ring has
//! more entries than slots + 1 (the wake-up NOP), so a push never finds the
//! SQ full.
//!
//! Queue bound: at most `queue_depth` ops are in the ring; more wait in the
//! overflow queue (bounded by the pipeline's admission control) and are pushed
//! by the reaper as slots free up.
//!
//! DISCARD/WRITE_ZEROES go to the overflow queue as well and the reaper runs
//! them inline with `execute_blocking` (block devices have no io_uring opcode
//! for BLKZEROOUT, and the zeroing fallbacks of `zero_range` are a chain of
//! calls; rare ops, they stall completions for their duration).

use super::{execute_blocking, BackingFile, BackingOp, IoDone};
use drbdd_blockio::AlignedBuf;
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// `user_data` of the NOP that wakes the reaper; slot indices are always smaller.
const WAKE_TOKEN: u64 = u64::MAX;

type Job = (BackingOp, IoDone);

/// One op the kernel is (or is about to be) working on.
struct Slot {
    op: BackingOp,
    done: IoDone,
    /// Bytes of a read/write already transferred (short transfers are resumed).
    done_bytes: u32,
}

/// Everything guarded by the state lock: the slot table and the submission
/// side of the ring.
struct RingState {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Ops waiting for a slot, and block-device range ops for the reaper.
    overflow: VecDeque<Job>,
    /// A wake-up NOP is in the ring and not reaped yet.
    wake_queued: bool,
    /// The ring failed: submit fails every op.
    failed: bool,
}

struct Shared {
    ring: IoUring,
    file: Arc<BackingFile>,
    state: Mutex<RingState>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (in_ring, queued) = self
            .state
            .lock()
            .map(|st| (st.slots.len() - st.free.len(), st.overflow.len()))
            .unwrap_or((0, 0));
        f.debug_struct("Shared")
            .field("in_ring", &in_ring)
            .field("queued", &queued)
            .field("stopping", &self.stopping)
            .finish()
    }
}

/// io_uring engine handle; completions are reaped on its thread, or, in
/// polled mode, by its owner ([`UringEngine::reap`]).
#[derive(Debug)]
pub struct UringEngine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Polled mode: the owner thread reaps with this (its buffers are
    /// reused between calls); no reaper thread.
    owner_reaper: Option<Mutex<Reaper>>,
}

impl UringEngine {
    /// Sets up a ring for `queue_depth` ops in flight and starts its reaper.
    /// Fails (so the caller can fall back) when io_uring is unavailable.
    pub fn start(file: Arc<BackingFile>, queue_depth: u32) -> io::Result<Self> {
        let shared = Self::ring(file, queue_depth)?;
        let reaper = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("drbdd-uring".into())
            .spawn(move || Reaper::new(&reaper).run())?;
        Ok(UringEngine {
            shared,
            thread: Mutex::new(Some(thread)),
            owner_reaper: None,
        })
    }

    /// Sets up a ring whose completions the calling thread reaps itself:
    /// it polls [`UringEngine::completion_fd`] for readability and then
    /// calls [`UringEngine::reap`], which runs the callbacks on it. Only
    /// that thread may submit, reap or shut down, and before it sleeps it
    /// must call [`UringEngine::submit_pushed`]: `submit` only pushes.
    ///
    /// Why: the kernel completes an io_uring read or write as task work of
    /// the *submitting* thread, which it interrupts for that, and only then
    /// posts the completion. With a reaper thread a completion therefore
    /// wakes two threads (the submitter, to run the task work, then the
    /// reaper) and a third when the callback hands the result back to the
    /// submitter, as the resource actor's peer writes did. Reaped by the
    /// submitter, it wakes one.
    pub fn start_polled(file: Arc<BackingFile>, queue_depth: u32) -> io::Result<Self> {
        let shared = Self::ring(file, queue_depth)?;
        Ok(UringEngine {
            owner_reaper: Some(Mutex::new(Reaper::new(&shared))),
            shared,
            thread: Mutex::new(None),
        })
    }

    /// The ring fd (polled mode): readable when completions wait for
    /// [`UringEngine::reap`]. None for an engine with a reaper thread.
    pub fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.owner_reaper.as_ref().map(|_| {
            // SAFETY: the ring fd stays open as long as `self.shared.ring`,
            // which outlives the returned borrow of `self`.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(self.shared.ring.as_raw_fd()) }
        })
    }

    /// Polled mode: handles every completion that is there (and queued
    /// ops that got a slot), running their callbacks on the calling thread,
    /// without waiting. Nothing for an engine with a reaper thread.
    pub fn reap(&self) {
        if let Some(r) = &self.owner_reaper {
            r.lock().expect("owner reaper lock").round(false);
        }
    }

    fn ring(file: Arc<BackingFile>, queue_depth: u32) -> io::Result<Arc<Shared>> {
        let queue_depth = queue_depth.max(1);
        // One extra entry for the wake-up NOP.
        let entries = queue_depth.saturating_add(1).next_power_of_two();
        let ring = IoUring::new(entries)?;
        let slots = usize::try_from(queue_depth).unwrap_or(usize::MAX);
        let shared = Arc::new(Shared {
            ring,
            file,
            state: Mutex::new(RingState {
                slots: (0..slots).map(|_| None).collect(),
                free: (0..slots).rev().collect(),
                overflow: VecDeque::new(),
                wake_queued: false,
                failed: false,
            }),
            stopping: AtomicBool::new(false),
        });
        Ok(shared)
    }

    /// Pushes `op` into the ring (or the overflow queue when all slots are
    /// busy); `done` runs on the reaper thread.
    pub fn submit(&self, op: BackingOp, done: IoDone) {
        let mut st = self.shared.lock_state();
        if self.shared.stopping.load(Ordering::SeqCst) || st.failed {
            drop(st);
            std::thread::spawn(move || done(Err(io::Error::from_raw_os_error(libc::ESHUTDOWN))));
            return;
        }
        let for_reaper = runs_inline(&op);
        // Ops already waiting keep their turn: a free slot goes to them first
        // (the reaper moves them as soon as it runs).
        let slot = if for_reaper || !st.overflow.is_empty() {
            None
        } else {
            st.free.pop()
        };
        match slot {
            Some(idx) => {
                st.slots[idx] = Some(Slot {
                    op,
                    done,
                    done_bytes: 0,
                });
                self.shared.push_slot(&mut st, idx);
            }
            None => {
                st.overflow.push_back((op, done));
                // Wake the reaper unless it will look at the overflow queue
                // anyway after the completions still to come.
                if for_reaper || st.free.len() == st.slots.len() {
                    self.shared.push_wake(&mut st);
                }
            }
        }
        drop(st);
        if self.owner_reaper.is_some() {
            // Polled mode: the owner submits everything it pushed in one
            // enter before it sleeps (`submit_pushed`); a peer write and the
            // flush of the epoch before it cost one system call, not two.
            return;
        }
        // A failed enter shows up again in the reaper's own enter.
        let _ = self.shared.ring.submit();
    }

    /// Polled mode: hands the kernel every SQE pushed since the last enter.
    /// The owner calls this before it sleeps; cheap when nothing is pushed.
    pub fn submit_pushed(&self) {
        if self.unsubmitted() > 0 {
            // A failed enter shows up again in the next reap's enter.
            let _ = self.shared.ring.submit();
        }
    }

    /// Polled mode: true while pushed SQEs wait for [`UringEngine::submit_pushed`]
    /// (an owner about to sleep with any would wait for ops the kernel never
    /// got). Always false with a reaper thread, whose submitters enter at once.
    pub fn has_unsubmitted(&self) -> bool {
        self.owner_reaper.is_some() && self.unsubmitted() > 0
    }

    fn unsubmitted(&self) -> usize {
        let _st = self.shared.lock_state();
        // SAFETY: the state lock is held, so no other submission queue view
        // exists (every push happens under it, see `Shared::push`); this one
        // only reads the head and tail.
        unsafe { self.shared.ring.submission_shared().len() }
    }

    /// Lets queued and in-flight ops finish, then stops the reaper (in
    /// polled mode: reaps on the calling thread until nothing is left).
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            let mut st = self.shared.lock_state();
            self.shared.push_wake(&mut st);
            let _ = self.shared.ring.submit();
        }
        if let Some(r) = &self.owner_reaper {
            let mut reaper = r.lock().expect("owner reaper lock");
            while reaper.round(true) {}
            return;
        }
        let handle = self.thread.lock().expect("uring thread lock").take();
        if let Some(h) = handle {
            // The last owner may be dropped inside a completion on the reaper.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().expect("uring state lock")
    }

    /// Pushes one SQE. The caller holds the state lock (`_st`), which is what
    /// makes this the only submission queue in use.
    fn push(&self, _st: &mut RingState, entry: &squeue::Entry) {
        // SAFETY: (1) exclusive SQ access: only called with the state lock
        // held, and nothing else touches the submission queue. (2) every
        // buffer an entry points to outlives the op: slot buffers stay in
        // `RingState::slots` until their completion is reaped (or are leaked
        // on a fatal error); the NOP points to nothing. (3) room: the ring has
        // more entries than slots + 1 and each slot / the NOP has at most one
        // entry in it.
        let pushed = unsafe { self.ring.submission_shared().push(entry) };
        if pushed.is_err() {
            // Cannot happen by the sizing above; submit to make room and retry.
            let _ = self.ring.submit();
            // SAFETY: as above.
            unsafe { self.ring.submission_shared().push(entry) }
                .expect("io_uring SQ has room after submit");
        }
    }

    /// Queues a NOP whose completion wakes the reaper (at most one at a time).
    fn push_wake(&self, st: &mut RingState) {
        if st.wake_queued {
            return;
        }
        st.wake_queued = true;
        self.push(st, &opcode::Nop::new().build().user_data(WAKE_TOKEN));
    }

    fn push_slot(&self, st: &mut RingState, idx: usize) {
        let fd = types::Fd(self.file.file().as_raw_fd());
        let slot = st.slots[idx].as_mut().expect("pushing an occupied slot");
        let token = u64::try_from(idx).expect("slot index fits u64");
        let entry = match &mut slot.op {
            BackingOp::Read { offset_bytes, buf } => {
                let (ptr, len) = remaining(buf.as_mut_ptr(), buf.len(), slot.done_bytes);
                opcode::Read::new(fd, ptr, len)
                    .offset(*offset_bytes + u64::from(slot.done_bytes))
                    .build()
            }
            BackingOp::Write {
                offset_bytes,
                buf,
                fua,
            } => {
                let (ptr, len) = remaining(buf.as_ptr().cast_mut(), buf.len(), slot.done_bytes);
                let flags = if *fua { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(fd, ptr.cast_const(), len)
                    .offset(*offset_bytes + u64::from(slot.done_bytes))
                    .rw_flags(flags)
                    .build()
            }
            BackingOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            BackingOp::Discard { .. } | BackingOp::WriteZeroes { .. } => {
                unreachable!("range ops run inline on the reaper (runs_inline)")
            }
        };
        self.push(st, &entry.user_data(token));
    }
}

/// Whether `op` bypasses the ring and runs on the reaper with blocking calls.
fn runs_inline(op: &BackingOp) -> bool {
    matches!(
        op,
        BackingOp::Discard { .. } | BackingOp::WriteZeroes { .. }
    )
}

/// A callback to run once the state lock is released.
type Finished = (IoDone, io::Result<AlignedBuf>);

/// The completion side: the only consumer of the completion queue.
struct Reaper {
    shared: Arc<Shared>,
    /// Reused between rounds (no allocation per completion).
    cqes: Vec<(u64, i32)>,
    finished: Vec<Finished>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("finished", &self.finished.len())
            .finish()
    }
}

impl Reaper {
    fn new(shared: &Arc<Shared>) -> Self {
        Reaper {
            shared: Arc::clone(shared),
            cqes: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Runs the callbacks collected in `finished`.
    fn run_finished(&mut self) {
        for (done, result) in self.finished.drain(..) {
            done(result);
        }
    }

    fn run(&mut self) {
        while self.round(true) {}
    }

    /// One round: queued ops into free slots, then the completions that
    /// are there (`wait`: at least one, sleeping for it), callbacks run
    /// here. False once the engine is stopping and idle, or the ring failed.
    fn round(&mut self, wait: bool) -> bool {
        let shared = Arc::clone(&self.shared);
        self.run_overflow();
        self.run_finished();
        if shared.stopping.load(Ordering::SeqCst) && self.idle() {
            return false;
        }
        if wait {
            match shared.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                Err(e) => {
                    self.fail_fatally(&e);
                    return false;
                }
            }
        }
        self.cqes.clear();
        // SAFETY: this thread is the only user of the completion queue
        // (the reaper thread, or in polled mode the owner thread).
        self.cqes.extend(
            unsafe { shared.ring.completion_shared() }.map(|c| (c.user_data(), c.result())),
        );
        if self.cqes.is_empty() {
            return true;
        }
        let mut st = shared.lock_state();
        let mut resubmitted = false;
        for &(token, result) in &self.cqes {
            if token == WAKE_TOKEN {
                st.wake_queued = false;
            } else {
                let idx = usize::try_from(token).expect("slot token fits usize");
                match complete(&shared, &mut st, idx, result) {
                    Some(f) => self.finished.push(f),
                    None => resubmitted = true,
                }
            }
        }
        drop(st);
        // Resubmissions pushed by `complete` (short transfers, EAGAIN).
        if resubmitted {
            let _ = shared.ring.submit();
        }
        self.run_finished();
        // Slots freed by these completions go to queued ops now, not a
        // round later (in polled mode there may be no later completion).
        self.run_overflow();
        self.run_finished();
        true
    }

    fn idle(&self) -> bool {
        let st = self.shared.lock_state();
        st.free.len() == st.slots.len() && st.overflow.is_empty()
    }

    /// Moves overflow jobs into free slots; runs block-device range ops
    /// (their callbacks wait in `finished`).
    fn run_overflow(&mut self) {
        let shared = &self.shared;
        let finished = &mut self.finished;
        let mut pushed = false;
        loop {
            let mut st = shared.lock_state();
            let Some((op, done)) = st.overflow.pop_front() else {
                break;
            };
            if runs_inline(&op) {
                drop(st);
                let result = execute_blocking(&shared.file, op);
                finished.push((done, result));
                continue;
            }
            let Some(idx) = st.free.pop() else {
                st.overflow.push_front((op, done));
                break;
            };
            st.slots[idx] = Some(Slot {
                op,
                done,
                done_bytes: 0,
            });
            shared.push_slot(&mut st, idx);
            pushed = true;
        }
        if pushed {
            let _ = shared.ring.submit();
        }
    }

    /// The ring is unusable: fail everything, leaking buffers the kernel may still touch.
    fn fail_fatally(&mut self, e: &io::Error) {
        tracing::error!("io_uring_enter failed: {e}; failing all backing I/O");
        self.shared.stopping.store(true, Ordering::SeqCst);
        let (slots, queued): (Vec<Slot>, Vec<Job>) = {
            let mut st = self.shared.lock_state();
            st.failed = true;
            (
                st.slots.iter_mut().filter_map(Option::take).collect(),
                st.overflow.drain(..).collect(),
            )
        };
        for slot in slots {
            let Slot { op, done, .. } = slot;
            std::mem::forget(op);
            done(Err(io::Error::from_raw_os_error(libc::EIO)));
        }
        for (_, done) in queued {
            done(Err(io::Error::from_raw_os_error(libc::EIO)));
        }
    }
}

/// Handles the completion of slot `idx`: resubmits a short or retryable
/// transfer, or frees the slot and returns its callback and result.
fn complete(shared: &Shared, st: &mut RingState, idx: usize, result: i32) -> Option<Finished> {
    let slot = st.slots[idx]
        .as_mut()
        .expect("completion for an empty slot");
    if result < 0 {
        let errno = -result;
        if errno == libc::EAGAIN || errno == libc::EINTR {
            shared.push_slot(st, idx);
            return None;
        }
        return Some(finish(st, idx, Err(io::Error::from_raw_os_error(errno))));
    }
    let total = match &slot.op {
        BackingOp::Read { buf, .. } | BackingOp::Write { buf, .. } => buf.len(),
        _ => return Some(finish(st, idx, Ok(()))),
    };
    let moved = u32::try_from(result).expect("non-negative result fits u32");
    if moved == 0 {
        let e = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "backing device ended inside a request",
        );
        return Some(finish(st, idx, Err(e)));
    }
    slot.done_bytes = slot.done_bytes.saturating_add(moved);
    if usize::try_from(slot.done_bytes).expect("u32 fits usize") < total {
        shared.push_slot(st, idx);
        return None;
    }
    Some(finish(st, idx, Ok(())))
}

/// Frees slot `idx`; its buffer goes back with the result.
fn finish(st: &mut RingState, idx: usize, result: io::Result<()>) -> Finished {
    let slot = st.slots[idx].take().expect("finishing an empty slot");
    st.free.push(idx);
    let buf = match slot.op {
        BackingOp::Read { buf, .. } | BackingOp::Write { buf, .. } => buf,
        _ => AlignedBuf::empty(),
    };
    (slot.done, result.map(|()| buf))
}

/// Pointer and length of the part of a buffer not yet transferred.
fn remaining(base: *mut u8, total: usize, done_bytes: u32) -> (*mut u8, u32) {
    let done = usize::try_from(done_bytes)
        .expect("u32 fits usize")
        .min(total);
    let left = u32::try_from(total - done).expect("I/O sizes are bounded by max_io_bytes (u32)");
    (base.wrapping_add(done), left)
}
