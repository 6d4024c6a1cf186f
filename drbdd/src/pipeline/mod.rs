//! The per-resource request pipeline: frontend request -> (writes) write
//! ordering -> activity log -> peer bitmaps -> local O_DIRECT I/O -> completion.
//!
//! Owns: the open sessions of a resource's device, request admission, the
//! in-flight write table with its completion legs, and the reaction to
//! backing-device errors. Must never: submit a data write before its AL
//! transaction is durable, let overlapping writes overtake each other, complete
//! a write before all of its legs are done, or hold the state lock across I/O.
//!
//! Threads: `submit` runs on the frontend's thread; engine completions run on
//! the engine thread. Both take the short `state` lock; metadata work happens
//! under the metadata lock only (never both at once, state first if ever).
//!
//! Direct reads: a frontend with its own io_uring (ublk) may read the backing
//! device itself ([`BlockSession::direct_read`]); the pipeline admits the read
//! like any other (role, disk health, stopping), counts it in flight until the
//! frontend finishes it, and applies the on-io-error policy to its failure.
//! Such a read never waits for the in-flight bound: only the frontend's thread
//! can retire it, so waiting there could wait for itself; the frontend's tag
//! count bounds it instead.
//!
//! Direct writes ([`BlockSession::direct_write`]): the frontend writes the
//! local copy of a write itself. The pipeline does everything before the
//! local disk write as for a submitted write (ordering, AL, bitmaps, peer
//! legs) but only when none of it has to wait: an overlapping write in flight
//! or held, or an extent not yet in the activity log, sends the write down the
//! submit path instead. The local leg finishes when the frontend reports the
//! disk write; the write completes upward after its last leg as always. Like
//! direct reads they are counted in flight but not held to the bound (the
//! frontend's thread retires their local leg).
//!
//! Replication: a write carries a set of [`Leg`]s, always [`Leg::LocalDisk`];
//! a [`Replicator`] (plugged in with [`Pipeline::set_replicator`]) adds a
//! [`Leg::Peer`] per peer its protocol waits for, before the local write is
//! submitted, and completes it through its [`LegHandle`]. The write completes
//! upward when the last leg is done.

pub mod meta;
mod metastore;
mod order;
mod write;

pub use meta::{
    al_extents_of, recover_after_crash, AlError, CrashRecovery, PipelineMeta, AL_EXTENT_BYTES,
};
pub use write::{
    Leg, LegHandle, LegOutcome, PeerFlushDone, ReplicatedWrite, Replicator, WriteData,
};

use crate::backing::{Backing, BackingOp, EngineKind, FaultInjection};
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, BlockTarget, Completion,
    DirectRead, DirectReadRetire, DirectWrite, Geometry, LOGICAL_BLOCK_BYTES, PHYSICAL_BLOCK_BYTES,
};
use order::{Seq, WriteOrder};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

/// What to do when the backing device fails an I/O (DRBD's `on-io-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIoError {
    /// Report EIO to the upper layer, keep the disk attached.
    PassOn,
    /// Detach the disk: the resource goes Diskless; the daemon is told.
    Detach,
    /// Like `Detach`, and the daemon runs the local-io-error handler.
    CallLocalIoError,
}

/// Settings of one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub backing_path: PathBuf,
    /// Size of the exported device (data area at offset 0 of the backing device).
    pub data_size_bytes: u64,
    /// Backing I/Os in flight at most (engine queue depth, ≥ 128 recommended).
    pub queue_depth: u32,
    /// Largest read/write accepted.
    pub max_io_bytes: u32,
    /// FLUSH and FUA reach the backing device (off only with a battery-backed cache).
    pub disk_flushes: bool,
    /// FLUSH also writes out dirty bitmap pages.
    pub md_flushes: bool,
    pub on_io_error: OnIoError,
    pub engine: EngineKind,
}

impl PipelineConfig {
    /// Defaults for `backing_path` exporting `data_size_bytes`.
    pub fn new(backing_path: PathBuf, data_size_bytes: u64) -> Self {
        PipelineConfig {
            backing_path,
            data_size_bytes,
            queue_depth: 128,
            max_io_bytes: 1 << 20,
            disk_flushes: true,
            md_flushes: true,
            on_io_error: OnIoError::Detach,
            engine: EngineKind::UringOrSync,
        }
    }
}

/// Why a pipeline could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Backing(#[from] std::io::Error),
    #[error(
        "backing device {path} has {have_bytes} bytes but the data area needs {need_bytes}; \
         use a larger device or recreate the metadata for this size"
    )]
    BackingTooSmall {
        path: PathBuf,
        have_bytes: u64,
        need_bytes: u64,
    },
    #[error("invalid pipeline setting: {0}")]
    Config(String),
    #[error(
        "metadata update failed: {0}; check the metadata device, then detach and attach again"
    )]
    Metadata(String),
}

/// Something the daemon must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineEvent {
    /// The backing device failed and was detached (on-io-error detach or
    /// call-local-io-error): the resource is Diskless now.
    DiskFailed {
        policy: OnIoError,
        op: BlockOp,
        offset_bytes: u64,
        error: String,
    },
    /// The backing device failed one request; EIO went upward (pass-on).
    IoErrorPassedOn {
        op: BlockOp,
        offset_bytes: u64,
        error: String,
    },
    /// A metadata update failed; writes fail with EIO until re-attach.
    MetadataFailed { error: String },
}

/// Receives [`PipelineEvent`]s, on whatever thread they happen.
pub type EventSink = Box<dyn Fn(PipelineEvent) + Send + Sync>;

/// Health of the local disk as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskHealth {
    Attached,
    /// Detached after an I/O error: every request fails with EIO.
    Failed,
}

/// Requests admitted but not finished at most, per queue-depth unit.
const REQUESTS_PER_QUEUE_SLOT: usize = 4;

struct State {
    role_allows_io: bool,
    sessions: BTreeMap<u64, (String, bool)>,
    next_session_id: u64,
    next_seq: Seq,
    disk: DiskHealth,
    stopping: bool,
    /// Requests admitted and not yet completed upward (all ops but direct
    /// reads, which `Pipeline::direct_reads` counts without the lock).
    in_flight: usize,
    /// The part of `in_flight` that is direct writes (not held to the bound).
    direct: usize,
    order: WriteOrder,
    /// Writes held by `order`, waiting for an earlier overlapping write.
    held: HashMap<Seq, write::PendingWrite>,
    /// Writes admitted by `order` that found the activity log full.
    al_waiting: VecDeque<write::PendingWrite>,
    /// Bumped on every AL release (lost-wake-up guard for `al_waiting`).
    al_epoch: u64,
    /// Writes that activated AL extents and have not released them.
    al_holders: usize,
    /// Bitmap slots of peers that are not connected: writes set their bits.
    disconnected_slots: Vec<usize>,
}

/// A replicated FLUSH: legs left, the local result, the upward completion.
type FlushLegs = Mutex<(
    u8,
    Option<Result<AlignedBuf, BlockError>>,
    Option<Completion>,
)>;

/// The request pipeline of one resource. Create with [`Pipeline::start`].
pub struct Pipeline {
    me: Weak<Pipeline>,
    cfg: PipelineConfig,
    geometry: Geometry,
    backing: Backing,
    meta: Arc<Mutex<dyn PipelineMeta>>,
    state: Mutex<State>,
    /// Signalled when `in_flight` or `direct_reads` drops.
    drained: Condvar,
    /// Threads waiting on `drained` (a notify is a futex call even without
    /// a waiter, and `retire` runs once per request). Changed under the
    /// state lock; read without it by `retire_direct_read`.
    drain_waiters: AtomicUsize,
    /// Direct reads admitted and not finished: counted apart from `State`
    /// so that a direct read takes no lock (the ublk queue thread admits and
    /// retires every read; under QEMU/TCG each lock costs).
    direct_reads: AtomicUsize,
    /// Whether a direct read may be admitted now ([`Pipeline::direct_allowed`]
    /// of the state), kept by whoever changes role, disk or stopping under
    /// the state lock.
    direct_reads_allowed: AtomicBool,
    events: Mutex<Option<EventSink>>,
    replicator: Mutex<Option<Arc<dyn Replicator>>>,
    max_requests: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("backing", &self.cfg.backing_path)
            .field("engine", &self.backing.engine_name())
            .field("size_bytes", &self.geometry.size_bytes)
            .finish()
    }
}

impl Pipeline {
    /// Opens the backing device with O_DIRECT, starts the I/O engine and
    /// returns the pipeline with role "no I/O" and every configured peer slot
    /// disconnected. `meta` is shared with the daemon's resource actor.
    pub fn start<M: PipelineMeta + 'static>(
        cfg: PipelineConfig,
        meta: Arc<Mutex<M>>,
    ) -> Result<Arc<Pipeline>, PipelineError> {
        let meta: Arc<Mutex<dyn PipelineMeta>> = meta;
        check_config(&cfg)?;
        let backing = Backing::open(&cfg.backing_path, cfg.engine, cfg.queue_depth)?;
        let have_bytes = backing.file().size_bytes();
        if have_bytes < cfg.data_size_bytes {
            return Err(PipelineError::BackingTooSmall {
                path: cfg.backing_path.clone(),
                have_bytes,
                need_bytes: cfg.data_size_bytes,
            });
        }
        let disconnected_slots = {
            let mut m = lock_meta(&meta);
            m.set_md_flushes(cfg.md_flushes);
            m.peer_slots_in_use()
        };
        let geometry = Geometry {
            size_bytes: cfg.data_size_bytes,
            logical_block_bytes: LOGICAL_BLOCK_BYTES,
            physical_block_bytes: PHYSICAL_BLOCK_BYTES,
            max_io_bytes: cfg.max_io_bytes,
            // Discard is a zero-out here (replicas must agree), so it is only
            // offered where zeroing is cheap.
            supports_discard: backing.file().zeroes_cheaply(),
            supports_write_zeroes: true,
            volatile_cache: cfg.disk_flushes,
        };
        let max_requests = usize::try_from(cfg.queue_depth)
            .unwrap_or(usize::MAX)
            .saturating_mul(REQUESTS_PER_QUEUE_SLOT);
        tracing::info!(path = %cfg.backing_path.display(), engine = backing.engine_name(), "backing device attached");
        Ok(Arc::new_cyclic(|me| Pipeline {
            me: me.clone(),
            geometry,
            backing,
            meta,
            state: Mutex::new(State {
                role_allows_io: false,
                sessions: BTreeMap::new(),
                next_session_id: 1,
                next_seq: 1,
                disk: DiskHealth::Attached,
                stopping: false,
                in_flight: 0,
                direct: 0,
                order: WriteOrder::default(),
                held: HashMap::new(),
                al_waiting: VecDeque::new(),
                al_epoch: 0,
                al_holders: 0,
                disconnected_slots,
            }),
            drained: Condvar::new(),
            drain_waiters: AtomicUsize::new(0),
            direct_reads: AtomicUsize::new(0),
            direct_reads_allowed: AtomicBool::new(false),
            events: Mutex::new(None),
            replicator: Mutex::new(None),
            max_requests,
            cfg,
        }))
    }

    /// Whether this node may take I/O (Primary). Opens are refused otherwise.
    pub fn set_role_allows_io(&self, allows: bool) {
        let mut st = self.lock_state();
        st.role_allows_io = allows;
        self.update_direct_reads_allowed(&st);
    }

    /// Who holds the device open ("client" strings given to `open`), oldest first.
    pub fn open_clients(&self) -> Vec<String> {
        self.lock_state()
            .sessions
            .values()
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Bitmap slots of peers that are not connected; writes set their bits.
    pub fn set_peer_slots_disconnected(&self, slots: Vec<usize>) {
        self.lock_state().disconnected_slots = slots;
    }

    /// Bitmap slots whose bits writes currently set.
    pub fn peer_slots_disconnected(&self) -> Vec<usize> {
        self.lock_state().disconnected_slots.clone()
    }

    /// Marks a byte range out of sync for every disconnected peer slot.
    pub fn mark_out_of_sync(&self, offset_bytes: u64, len_bytes: u64) {
        let slots = self.peer_slots_disconnected();
        let mut meta = lock_meta(&self.meta);
        for slot in slots {
            meta.mark_out_of_sync(slot, offset_bytes, len_bytes);
        }
    }

    /// Where [`PipelineEvent`]s go (replaces the previous sink).
    pub fn set_event_sink(&self, sink: EventSink) {
        *self.events.lock().expect("event sink lock") = Some(sink);
    }

    /// Plugs in (or removes) the replication layer: every later write is
    /// offered to it and may get peer legs.
    pub fn set_replicator(&self, replicator: Option<Arc<dyn Replicator>>) {
        *self.replicator.lock().expect("replicator lock") = replicator;
    }

    /// Which engine runs the backing I/O: "io_uring" or "sync".
    pub fn engine_name(&self) -> &'static str {
        self.backing.engine_name()
    }

    /// Fault injection on the backing device (tests).
    pub fn faults(&self) -> &Arc<FaultInjection> {
        self.backing.faults()
    }

    /// Submits backing ops parked by [`FaultInjection::set_hold_writes`] (tests).
    pub fn release_held_io(&self) {
        self.backing.release_held();
    }

    /// Whether the disk was detached after an I/O error.
    pub fn disk_failed(&self) -> bool {
        self.lock_state().disk == DiskHealth::Failed
    }

    /// Requests admitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        let st = self.lock_state();
        st.in_flight + self.direct_reads.load(Ordering::SeqCst)
    }

    /// Waits until every admitted request completed, then persists bitmap and
    /// superblock. Callers stop new I/O first (close sessions, or shutdown).
    pub fn quiesce(&self) -> Result<(), PipelineError> {
        let mut st = self.lock_state();
        loop {
            // Counted as a waiter before looking at `direct_reads` (see
            // `retire_direct_read`): a direct read retired concurrently is
            // either seen here or notifies.
            self.drain_waiters.fetch_add(1, Ordering::SeqCst);
            let busy = st.in_flight > 0 || self.direct_reads.load(Ordering::SeqCst) > 0;
            if !busy {
                self.drain_waiters.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            st = self.wait_counted(st);
        }
        drop(st);
        lock_meta(&self.meta)
            .persist()
            .map_err(PipelineError::Metadata)
    }

    /// Refuses new requests (ShuttingDown), drains in-flight ones, persists
    /// metadata and stops the engine. Idempotent.
    pub fn shutdown(&self) -> Result<(), PipelineError> {
        {
            let mut st = self.lock_state();
            st.stopping = true;
            self.update_direct_reads_allowed(&st);
        }
        let result = self.quiesce();
        self.backing.shutdown();
        result
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pipeline state lock poisoned")
    }

    fn arc(&self) -> Arc<Pipeline> {
        self.me
            .upgrade()
            .expect("pipeline used after its last Arc dropped")
    }

    fn emit(&self, event: PipelineEvent) {
        tracing::warn!(?event, "pipeline event");
        if let Some(sink) = self.events.lock().expect("event sink lock").as_ref() {
            sink(event);
        }
    }

    /// Admission: role, disk health, stopping, and the bound on requests in flight.
    fn admit(&self, writable_session: bool, req: &BlockRequest) -> Result<Seq, BlockError> {
        req.validate(self.geometry.size_bytes, self.geometry.max_io_bytes)?;
        let modifies = !matches!(req.op, BlockOp::Read | BlockOp::Flush);
        let mut st = self.lock_state();
        loop {
            if st.stopping {
                return Err(BlockError::ShuttingDown);
            }
            if !st.role_allows_io {
                return Err(BlockError::ReadOnly("this node is not Primary".into()));
            }
            if modifies && !writable_session {
                return Err(BlockError::ReadOnly(
                    "the device was opened read-only".into(),
                ));
            }
            if st.disk == DiskHealth::Failed {
                return Err(BlockError::Io);
            }
            if st.in_flight - st.direct < self.max_requests {
                break;
            }
            st = self.wait_drained(st);
        }
        st.in_flight += 1;
        let seq = st.next_seq;
        st.next_seq += 1;
        Ok(seq)
    }

    /// Admission of a direct read: like [`Pipeline::admit`] but never waits
    /// (see the module doc) and takes no lock; `None` when the read must
    /// take the submit path, which reports the refusal.
    ///
    /// Counted first, checked second (both SeqCst): `shutdown` clears
    /// `direct_reads_allowed` before `quiesce` reads `direct_reads`, so a
    /// read that saw it still set is counted by then and waited for.
    fn admit_direct(&self, req: &BlockRequest) -> Option<()> {
        if req.op != BlockOp::Read || self.backing.faults().fails_reads() {
            return None;
        }
        req.validate(self.geometry.size_bytes, self.geometry.max_io_bytes)
            .ok()?;
        self.direct_reads.fetch_add(1, Ordering::SeqCst);
        if !self.direct_reads_allowed.load(Ordering::SeqCst) {
            self.retire_direct_read();
            return None;
        }
        Some(())
    }

    /// Mirrors [`Pipeline::direct_allowed`] into `direct_reads_allowed`;
    /// called with the state lock held after role, disk or stopping changed.
    fn update_direct_reads_allowed(&self, st: &State) {
        self.direct_reads_allowed
            .store(self.direct_allowed(st), Ordering::SeqCst);
    }

    /// Whether a direct read or write may be admitted now (otherwise the
    /// submit path reports the refusal, or waits).
    fn direct_allowed(&self, st: &State) -> bool {
        !st.stopping && st.role_allows_io && st.disk == DiskHealth::Attached
    }

    /// Serves [`BlockSession::direct_write`] for a session (`writable`):
    /// plain writes of the right length only, and not while fault injection
    /// acts on writes (it lives in the engine, which a direct write bypasses).
    fn direct_write(
        &self,
        writable: bool,
        req: &BlockRequest,
        data: &Arc<AlignedBuf>,
    ) -> Option<DirectWrite> {
        let len_ok = usize::try_from(req.len_bytes).is_ok_and(|len| len == data.len());
        if req.op != BlockOp::Write
            || !writable
            || !len_ok
            || self.backing.faults().acts_on_writes()
        {
            return None;
        }
        req.validate(self.geometry.size_bytes, self.geometry.max_io_bytes)
            .ok()?;
        self.start_direct_write(req, data)
    }

    /// Serves [`BlockSession::direct_read`]: the frontend reads the backing
    /// file itself; the returned handle (holding `self`) keeps it open and
    /// retires the read through [`DirectReadRetire`]: no allocation, no lock.
    fn direct_read(self: &Arc<Self>, req: &BlockRequest) -> Option<DirectRead> {
        self.admit_direct(req)?;
        let me: Arc<dyn DirectReadRetire> = Arc::clone(self) as Arc<dyn DirectReadRetire>;
        Some(DirectRead::retired_by(me, *req, req.offset_bytes))
    }

    /// A direct read admitted by [`Pipeline::admit_direct`] finished:
    /// uncounted (SeqCst), then the drain waiters told if there are any (a
    /// waiter counts itself under the lock before it looks at
    /// `direct_reads`, so either it sees this decrement or this sees it).
    fn retire_direct_read(&self) {
        let prev = self.direct_reads.fetch_sub(1, Ordering::SeqCst);
        assert!(prev > 0, "retiring more direct reads than admitted");
        if self.drain_waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this notify after the waiter's wait.
            drop(self.lock_state());
            self.drained.notify_all();
        }
    }

    /// A write finished upward; `direct`: a direct write. Drops `st`.
    fn retire_write_locked(&self, mut st: MutexGuard<'_, State>, direct: bool) {
        if direct {
            st.direct = st
                .direct
                .checked_sub(1)
                .expect("retiring more direct writes than admitted");
        }
        self.retire_locked(st);
    }

    /// Waits for the next `retire` (the caller re-checks its condition).
    fn wait_drained<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.drain_waiters.fetch_add(1, Ordering::SeqCst);
        self.wait_counted(st)
    }

    /// Waits for the next `retire`; the caller already counted itself in
    /// `drain_waiters` (under the lock `st`), this uncounts it.
    fn wait_counted<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let st = self.drained.wait(st).expect("pipeline state lock");
        self.drain_waiters.fetch_sub(1, Ordering::SeqCst);
        st
    }

    /// A request admitted by [`Pipeline::admit`] finished upward.
    fn retire(&self) {
        self.retire_locked(self.lock_state());
    }

    fn retire_locked(&self, mut st: MutexGuard<'_, State>) {
        st.in_flight = st
            .in_flight
            .checked_sub(1)
            .expect("retiring more requests than admitted");
        let waiters = self.drain_waiters.load(Ordering::SeqCst) > 0;
        drop(st);
        if waiters {
            self.drained.notify_all();
        }
    }

    fn submit(&self, writable_session: bool, req: BlockRequest, buf: AlignedBuf, done: Completion) {
        let seq = match self.admit(writable_session, &req) {
            Ok(seq) => seq,
            Err(e) => return done(Err(e)),
        };
        let len_ok = match req.op {
            BlockOp::Read | BlockOp::Write => {
                buf.len() == usize::try_from(req.len_bytes).unwrap_or(usize::MAX)
            }
            _ => true,
        };
        if !len_ok {
            self.retire();
            return done(Err(BlockError::InvalidArgument(
                "buffer length does not match the request",
            )));
        }
        match req.op {
            BlockOp::Read => self.submit_read(req, buf, done),
            BlockOp::Flush => self.submit_flush(req, done),
            BlockOp::Write | BlockOp::Discard | BlockOp::WriteZeroes => {
                self.submit_write(write::PendingWrite {
                    seq,
                    req,
                    buf,
                    done,
                })
            }
        }
    }

    fn submit_read(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
        let me = self.arc();
        let op = BackingOp::Read {
            offset_bytes: req.offset_bytes,
            buf,
        };
        self.backing.submit(
            op,
            Box::new(move |result| {
                let result = result.map_err(|e| me.local_io_failed(&req, &e));
                me.retire();
                done(result);
            }),
        );
    }

    fn submit_flush(&self, req: BlockRequest, done: Completion) {
        let replicator = self.replicator.lock().expect("replicator lock").clone();
        let Some(r) = replicator else {
            return self.submit_local_flush(req, done);
        };
        // Two legs: the local flush and the peers' flush; the second to
        // finish completes upward with the local result.
        let legs: Arc<FlushLegs> = Arc::new(Mutex::new((2u8, None, Some(done))));
        let finish = |legs: &FlushLegs, result: Option<Result<AlignedBuf, BlockError>>| {
            let mut l = legs.lock().expect("flush legs lock");
            l.0 -= 1;
            if let Some(res) = result {
                l.1 = Some(res);
            }
            if l.0 == 0 {
                let res = l.1.take().unwrap_or_else(|| Ok(AlignedBuf::empty()));
                let done = l.2.take().expect("flush completes once");
                drop(l);
                done(res);
            }
        };
        let peer_legs = Arc::clone(&legs);
        r.flush(Box::new(move || finish(&peer_legs, None)));
        self.submit_local_flush(req, Box::new(move |res| finish(&legs, Some(res))));
    }

    fn submit_local_flush(&self, req: BlockRequest, done: Completion) {
        if self.cfg.md_flushes {
            if let Err(e) = lock_meta(&self.meta).flush_bitmap() {
                self.emit(PipelineEvent::MetadataFailed { error: e });
                self.retire();
                return done(Err(BlockError::Io));
            }
        }
        if !self.cfg.disk_flushes {
            self.retire();
            return done(Ok(AlignedBuf::empty()));
        }
        let me = self.arc();
        self.backing.submit(
            BackingOp::Flush,
            Box::new(move |result| {
                let result = result.map_err(|e| me.local_io_failed(&req, &e));
                me.retire();
                done(result);
            }),
        );
    }

    /// Applies the on-io-error policy to a failed backing op; returns the error for upward.
    fn local_io_failed(&self, req: &BlockRequest, error: &std::io::Error) -> BlockError {
        let error_text = error.to_string();
        match self.cfg.on_io_error {
            OnIoError::PassOn => {
                self.emit(PipelineEvent::IoErrorPassedOn {
                    op: req.op,
                    offset_bytes: req.offset_bytes,
                    error: error_text,
                });
            }
            policy @ (OnIoError::Detach | OnIoError::CallLocalIoError) => {
                let first = {
                    let mut st = self.lock_state();
                    let first = st.disk == DiskHealth::Attached;
                    st.disk = DiskHealth::Failed;
                    self.update_direct_reads_allowed(&st);
                    first
                };
                if first {
                    self.emit(PipelineEvent::DiskFailed {
                        policy,
                        op: req.op,
                        offset_bytes: req.offset_bytes,
                        error: error_text,
                    });
                }
            }
        }
        if error.raw_os_error() == Some(libc::ENOSPC) {
            BlockError::NoSpace
        } else {
            BlockError::Io
        }
    }
}

fn check_config(cfg: &PipelineConfig) -> Result<(), PipelineError> {
    let lb = u64::from(LOGICAL_BLOCK_BYTES);
    if cfg.data_size_bytes == 0 || !cfg.data_size_bytes.is_multiple_of(lb) {
        return Err(PipelineError::Config(format!(
            "data size {} bytes must be a positive multiple of {lb}",
            cfg.data_size_bytes
        )));
    }
    if cfg.queue_depth == 0 || cfg.queue_depth > 4096 {
        return Err(PipelineError::Config(format!(
            "queue depth {} must be 1..=4096",
            cfg.queue_depth
        )));
    }
    if cfg.max_io_bytes == 0 || !cfg.max_io_bytes.is_multiple_of(PHYSICAL_BLOCK_BYTES) {
        return Err(PipelineError::Config(format!(
            "max I/O size {} bytes must be a positive multiple of {PHYSICAL_BLOCK_BYTES}",
            cfg.max_io_bytes
        )));
    }
    Ok(())
}

fn lock_meta<'a>(
    meta: &'a Mutex<dyn PipelineMeta + 'static>,
) -> MutexGuard<'a, dyn PipelineMeta + 'static> {
    meta.lock().expect("metadata lock poisoned")
}

impl DirectReadRetire for Pipeline {
    fn read_fd(&self) -> RawFd {
        self.backing.file_handle().as_raw_fd()
    }

    /// The direct read `req` finished: the on-io-error policy for a failure
    /// (as for a submitted read), then retired.
    fn retire_read(&self, req: &BlockRequest, outcome: Result<u32, i32>) -> Result<(), BlockError> {
        let result = match outcome {
            Ok(n) if n == req.len_bytes => Ok(()),
            Ok(n) => {
                let short = format!("short read: {n} of {} bytes", req.len_bytes);
                Err(self.local_io_failed(req, &std::io::Error::other(short)))
            }
            // Abandoned by the frontend (torn down): not a disk error.
            Err(libc::ECANCELED) => Err(BlockError::ShuttingDown),
            Err(errno) => {
                let e = std::io::Error::from_raw_os_error(errno);
                Err(self.local_io_failed(req, &e))
            }
        };
        self.retire_direct_read();
        result
    }
}

impl BlockTarget for Pipeline {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn open(&self, client: &str, writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        let mut st = self.lock_state();
        if st.stopping {
            return Err(BlockError::ShuttingDown);
        }
        if !st.role_allows_io {
            return Err(BlockError::ReadOnly(
                "this node is not Primary; promote it first (drbdctl primary <resource>)".into(),
            ));
        }
        let id = st.next_session_id;
        st.next_session_id += 1;
        st.sessions.insert(id, (client.to_string(), writable));
        drop(st);
        Ok(Arc::new(PipelineSession {
            pipeline: self.arc(),
            id,
            writable,
        }))
    }
}

/// One open of the device; dropping it releases the open.
#[derive(Debug)]
struct PipelineSession {
    pipeline: Arc<Pipeline>,
    id: u64,
    writable: bool,
}

impl BlockSession for PipelineSession {
    fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
        self.pipeline.submit(self.writable, req, buf, done);
    }

    fn direct_read(&self, req: &BlockRequest) -> Option<DirectRead> {
        self.pipeline.direct_read(req)
    }

    fn direct_write(&self, req: &BlockRequest, data: &Arc<AlignedBuf>) -> Option<DirectWrite> {
        self.pipeline.direct_write(self.writable, req, data)
    }
}

impl Drop for PipelineSession {
    fn drop(&mut self) {
        self.pipeline.lock_state().sessions.remove(&self.id);
    }
}
