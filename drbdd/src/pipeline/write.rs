//! The write path (write, discard, write-zeroes): ordering, activity log,
//! peer bitmaps, then the legs that must all finish before completion.
//!
//! Owns: a write from admission to its upward completion, and the local
//! leg's completion ([`LocalLeg`]) whoever writes the disk: the backing engine,
//! or the frontend of a direct write (same ordering, AL, bitmaps and peer legs,
//! handed out only when none of them has to wait). Must never: submit the data
//! before `al_activate` returned (the AL transaction is durable by then),
//! complete upward while a leg is pending, or release AL extents of a write
//! that never activated them.
//!
//! Invariant asserted at completion: a write completes upward exactly once,
//! after its last leg. Today the only leg is the local disk; replication adds
//! a `Leg::Peer(node_id)` per peer the protocol waits for (protocol C: peer
//! write-ack; B: peer receive-ack; A: none beyond the send).

use super::meta::{al_extents_of, AlError};
use super::order::Seq;
use super::{lock_meta, Pipeline, PipelineEvent};
use crate::backing::BackingOp;
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, Completion, DirectWrite, FdHandle,
};
use std::sync::{Arc, Mutex};

/// A part of a write that must finish before the write completes upward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The O_DIRECT write (or discard/zero-out) on the local backing device.
    LocalDisk,
    /// The acknowledgement of peer `node_id`, as its protocol requires.
    Peer(u8),
}

/// A write admitted but not yet on its way to the disk.
pub(super) struct PendingWrite {
    pub(super) seq: Seq,
    pub(super) req: BlockRequest,
    pub(super) buf: AlignedBuf,
    pub(super) done: Completion,
}

/// A write whose legs are running.
struct WriteInFlight {
    seq: Seq,
    req: BlockRequest,
    extents: Vec<u64>,
    /// The frontend writes the local disk (a direct write).
    direct: bool,
    legs: Mutex<Legs>,
}

/// Sends writes to peers. The replication layer implements this and plugs it
/// in with [`Pipeline::set_replicator`].
pub trait Replicator: Send + Sync + std::fmt::Debug {
    /// Called once per write, after its AL transaction and before the local
    /// write is submitted. For every peer the protocol waits for, call
    /// [`ReplicatedWrite::add_peer_leg`] and complete the handle later (from
    /// any thread). Must not block on I/O.
    fn replicate(&self, write: &mut ReplicatedWrite<'_>);

    /// The local disk leg of a write finished (`ok`: without error).
    /// Called only for writes whose `replicate` set
    /// [`ReplicatedWrite::local_done_token`], with that token, on an engine
    /// thread. Must not block on I/O.
    fn local_done(&self, token: u64, ok: bool) {
        let _ = (token, ok);
    }

    /// An application FLUSH: call `done` once every peer the protocol waits
    /// for has the writes completed before it on stable storage (or is
    /// gone). The upward FLUSH completes after both this and the local
    /// flush. Any thread; must not block on I/O.
    fn flush(&self, done: PeerFlushDone) {
        done();
    }
}

/// Completion of [`Replicator::flush`].
pub type PeerFlushDone = Box<dyn FnOnce() + Send>;

/// The bytes of an application write as the frontend holds them.
#[derive(Debug, Clone, Copy)]
pub enum WriteData<'a> {
    /// Lent for the call: a replicator that needs them later copies them.
    Lent(&'a [u8]),
    /// Shared: a replicator may keep a clone (no copy) as long as it likes.
    Shared(&'a Arc<AlignedBuf>),
}

impl WriteData<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            WriteData::Lent(b) => b,
            WriteData::Shared(b) => b.as_slice(),
        }
    }
}

/// A write offered to the [`Replicator`].
pub struct ReplicatedWrite<'a> {
    /// The request (op, range, FUA).
    pub req: BlockRequest,
    /// The data of a `Write`; empty for discard and write-zeroes.
    pub data: WriteData<'a>,
    /// Set by the replicator to be told when the local leg finishes
    /// ([`Replicator::local_done`]).
    pub local_done_token: Option<u64>,
    pipeline: &'a Pipeline,
    write: &'a Arc<WriteInFlight>,
}

impl std::fmt::Debug for ReplicatedWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedWrite")
            .field("req", &self.req)
            .field("seq", &self.write.seq)
            .finish()
    }
}

impl ReplicatedWrite<'_> {
    /// The write now also waits for peer `node_id`.
    pub fn add_peer_leg(&mut self, node_id: u8) -> LegHandle {
        let leg = Leg::Peer(node_id);
        let mut legs = self.write.legs.lock().expect("write legs lock");
        assert!(
            !legs.pending.contains(&leg),
            "peer {node_id} added twice to write {}",
            self.write.seq
        );
        legs.pending.push(leg);
        drop(legs);
        LegHandle {
            pipeline: self.pipeline.arc(),
            write: Arc::clone(self.write),
            leg,
            completed: false,
        }
    }
}

/// How a peer leg ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegOutcome {
    /// The peer acknowledged as its protocol requires.
    Done,
    /// The peer went away before acknowledging: the range is marked out of
    /// sync in its bitmap `slot` and the write still succeeds.
    PeerLost { slot: usize },
    /// The write fails upward with this error.
    Failed(BlockError),
}

/// A pending peer leg of one write; complete it exactly once.
#[derive(Debug)]
pub struct LegHandle {
    pipeline: Arc<Pipeline>,
    write: Arc<WriteInFlight>,
    leg: Leg,
    completed: bool,
}

impl LegHandle {
    pub fn leg(&self) -> Leg {
        self.leg
    }

    /// Finishes this leg; the write completes upward when its last leg is done.
    pub fn complete(mut self, outcome: LegOutcome) {
        self.completed = true;
        self.finish(outcome);
    }

    fn finish(&self, outcome: LegOutcome) {
        let result = match outcome {
            LegOutcome::Done => Ok(AlignedBuf::empty()),
            LegOutcome::PeerLost { slot } => {
                let req = &self.write.req;
                lock_meta(&self.pipeline.meta).mark_out_of_sync(
                    slot,
                    req.offset_bytes,
                    u64::from(req.len_bytes),
                );
                Ok(AlignedBuf::empty())
            }
            LegOutcome::Failed(e) => Err(e),
        };
        self.pipeline.leg_done(&self.write, self.leg, result);
    }
}

impl Drop for LegHandle {
    fn drop(&mut self) {
        if !self.completed {
            tracing::error!(leg = ?self.leg, seq = self.write.seq, "peer leg dropped without completion; failing the write");
            self.finish(LegOutcome::Failed(BlockError::Io));
        }
    }
}

impl std::fmt::Debug for WriteInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteInFlight")
            .field("seq", &self.seq)
            .field("req", &self.req)
            .finish()
    }
}

struct Legs {
    pending: Vec<Leg>,
    /// First error of any leg; the write fails upward with it.
    error: Option<BlockError>,
    /// The data buffer, handed back upward on success.
    buf: Option<AlignedBuf>,
    done: Option<Completion>,
}

/// The local disk leg of a started write, finished by whoever wrote the
/// disk: the engine's completion, or the frontend of a direct write.
struct LocalLeg {
    pipeline: Arc<Pipeline>,
    write: Arc<WriteInFlight>,
    /// The replicator to tell ([`Replicator::local_done`]) and its token.
    notify: Option<(Arc<dyn Replicator>, u64)>,
}

impl LocalLeg {
    /// The disk write finished: the on-io-error policy for a failure, the
    /// replicator told, then the leg done.
    fn done(self, result: std::io::Result<AlignedBuf>) {
        let req = self.write.req;
        // No error is advisory, not even a discard's: the peer zeroed the
        // range, so a local discard that did nothing would diverge.
        let result = result.map_err(|e| self.pipeline.local_io_failed(&req, &e));
        self.notify_replicator(result.is_ok());
        self.pipeline.leg_done(&self.write, Leg::LocalDisk, result);
    }

    fn notify_replicator(&self, ok: bool) {
        if let Some((r, token)) = &self.notify {
            r.local_done(*token, ok);
        }
    }

    /// A direct write's disk write finished (bytes written or errno);
    /// `done` completes the request once every leg is done.
    fn finish_direct(self, outcome: Result<u32, i32>, done: Completion) {
        let prev = self
            .write
            .legs
            .lock()
            .expect("write legs lock")
            .done
            .replace(done);
        assert!(
            prev.is_none(),
            "direct write {} finished twice",
            self.write.seq
        );
        let len = self.write.req.len_bytes;
        match outcome {
            Ok(n) if n == len => self.done(Ok(AlignedBuf::empty())),
            Ok(n) => self.done(Err(std::io::Error::other(format!(
                "short write: {n} of {len} bytes"
            )))),
            Err(libc::ECANCELED) => self.cancelled(),
            Err(errno) => self.done(Err(std::io::Error::from_raw_os_error(errno))),
        }
    }

    /// The frontend abandoned a direct write (torn down): whether the data
    /// reached the disk is unknown, and the request is never acknowledged.
    /// Not a disk error (no on-io-error policy); the range is marked out of
    /// sync for every peer so a resync makes the replicas agree on whatever
    /// the local disk holds.
    fn cancelled(self) {
        let req = self.write.req;
        {
            let mut meta = lock_meta(&self.pipeline.meta);
            for slot in meta.peer_slots_in_use() {
                meta.mark_out_of_sync(slot, req.offset_bytes, u64::from(req.len_bytes));
            }
        }
        tracing::warn!(
            seq = self.write.seq,
            offset_bytes = req.offset_bytes,
            "direct write abandoned; range marked out of sync"
        );
        self.notify_replicator(false);
        self.pipeline
            .leg_done(&self.write, Leg::LocalDisk, Err(BlockError::ShuttingDown));
    }
}

impl Pipeline {
    /// Ordering first: a write overlapping an earlier in-flight or held write waits.
    ///
    /// The ordering sequence number is taken here, under the same lock as
    /// `try_admit`: submission order is the order writes reach this point.
    /// (A number taken earlier, in `admit`, could reach `try_admit` after a
    /// later one when several frontend threads submit at once.)
    pub(super) fn submit_write(&self, mut w: PendingWrite) {
        let end = w.req.offset_bytes + u64::from(w.req.len_bytes);
        let mut st = self.lock_state();
        w.seq = st.next_seq;
        st.next_seq += 1;
        if st.order.try_admit(w.seq, w.req.offset_bytes..end) {
            drop(st);
            self.start_write(w);
        } else {
            st.held.insert(w.seq, w);
        }
    }

    /// Activity log, bitmaps, then the legs. Called for admitted writes only.
    fn start_write(&self, w: PendingWrite) {
        let offset_bytes = w.req.offset_bytes;
        let len_bytes = u64::from(w.req.len_bytes);
        let extents = al_extents_of(offset_bytes, len_bytes);
        loop {
            let (epoch, slots) = {
                let st = self.lock_state();
                (st.al_epoch, st.disconnected_slots.clone())
            };
            let activated = {
                let mut meta = lock_meta(&self.meta);
                let r = meta.al_activate(&extents);
                if r.is_ok() {
                    for &slot in &slots {
                        meta.mark_out_of_sync(slot, offset_bytes, len_bytes);
                    }
                }
                r
            };
            match activated {
                Ok(()) => {
                    self.lock_state().al_holders += 1;
                    return self.start_legs(w, extents);
                }
                Err(AlError::Full) => {
                    let mut st = self.lock_state();
                    if st.al_epoch != epoch {
                        continue; // a release happened meanwhile: try again
                    }
                    if st.al_holders > 0 {
                        st.al_waiting.push_back(w);
                        return;
                    }
                    drop(st);
                    let error = format!(
                        "activity log has no room for a write to extents {extents:?} and no write holds it; \
                         raise al-extents"
                    );
                    self.emit(PipelineEvent::MetadataFailed { error });
                    return self.finish_write(w.seq, &[], false, Err(BlockError::Io), w.done);
                }
                Err(AlError::Failed(error)) => {
                    self.emit(PipelineEvent::MetadataFailed { error });
                    return self.finish_write(w.seq, &[], false, Err(BlockError::Io), w.done);
                }
            }
        }
    }

    /// Submits every leg of an activated write.
    fn start_legs(&self, w: PendingWrite, extents: Vec<u64>) {
        let PendingWrite {
            seq,
            req,
            buf,
            done,
        } = w;
        let data = match req.op {
            BlockOp::Write => WriteData::Lent(buf.as_slice()),
            _ => WriteData::Lent(&[]),
        };
        let local = self.start_peer_legs(seq, req, extents, Some(done), data);
        let op = match req.op {
            BlockOp::Write => BackingOp::Write {
                offset_bytes: req.offset_bytes,
                buf,
                fua: req.fua && self.cfg.disk_flushes,
            },
            BlockOp::Discard => BackingOp::Discard {
                offset_bytes: req.offset_bytes,
                len_bytes: u64::from(req.len_bytes),
            },
            BlockOp::WriteZeroes => BackingOp::WriteZeroes {
                offset_bytes: req.offset_bytes,
                len_bytes: u64::from(req.len_bytes),
            },
            BlockOp::Read | BlockOp::Flush => {
                unreachable!("only content-changing ops take the write path")
            }
        };
        self.backing
            .submit(op, Box::new(move |result| local.done(result)));
    }

    /// Creates the in-flight write of an activated write (legs: the local
    /// disk) and offers it to the replicator, which adds its peer legs and
    /// copies `data`. Returns the local leg, for whoever writes the disk.
    /// `done`: the upward completion, or `None` until the local leg finishes
    /// (direct writes learn it then).
    fn start_peer_legs(
        &self,
        seq: Seq,
        req: BlockRequest,
        extents: Vec<u64>,
        done: Option<Completion>,
        data: WriteData<'_>,
    ) -> LocalLeg {
        let inflight = Arc::new(WriteInFlight {
            seq,
            req,
            extents,
            direct: done.is_none(),
            legs: Mutex::new(Legs {
                pending: vec![Leg::LocalDisk],
                error: None,
                buf: None,
                done,
            }),
        });
        let replicator = self.replicator.lock().expect("replicator lock").clone();
        let mut local_done_token = None;
        if let Some(r) = &replicator {
            let mut rw = ReplicatedWrite {
                req,
                data,
                local_done_token: None,
                pipeline: self,
                write: &inflight,
            };
            r.replicate(&mut rw);
            local_done_token = rw.local_done_token;
        }
        LocalLeg {
            pipeline: self.arc(),
            write: inflight,
            notify: replicator.zip(local_done_token),
        }
    }

    /// Serves [`BlockSession::direct_write`](drbdd_blockio::BlockSession::direct_write):
    /// takes the write through ordering, activity log, bitmaps and
    /// replication exactly as [`Pipeline::submit_write`] does, but only when
    /// none of that has to wait (no overlapping write in flight or held, the
    /// AL extents already active); the frontend then writes the disk itself.
    pub(super) fn start_direct_write(
        &self,
        req: &BlockRequest,
        data: &Arc<AlignedBuf>,
    ) -> Option<DirectWrite> {
        let end = req.offset_bytes + u64::from(req.len_bytes);
        let (seq, slots) = {
            let mut st = self.lock_state();
            if !self.direct_allowed(&st) {
                return None;
            }
            let seq = st.next_seq;
            if !st.order.try_admit_now(seq, req.offset_bytes..end) {
                return None;
            }
            st.next_seq += 1;
            st.in_flight += 1;
            st.direct += 1;
            (seq, st.disconnected_slots.clone())
        };
        let extents = al_extents_of(req.offset_bytes, u64::from(req.len_bytes));
        let activated = {
            let mut meta = lock_meta(&self.meta);
            let activated = meta.al_activate_cached(&extents);
            if activated {
                for &slot in &slots {
                    meta.mark_out_of_sync(slot, req.offset_bytes, u64::from(req.len_bytes));
                }
            }
            activated
        };
        if !activated {
            // Would need an AL transaction (or room): undo the admission;
            // writes that queued behind this one in the meantime start.
            self.finish_write(
                seq,
                &[],
                true,
                Err(BlockError::ShuttingDown),
                Box::new(|_| {}),
            );
            return None;
        }
        self.lock_state().al_holders += 1;
        let local = self.start_peer_legs(seq, *req, extents, None, WriteData::Shared(data));
        let fd: FdHandle = Arc::clone(self.backing.file_handle()) as FdHandle;
        let dsync = req.fua && self.cfg.disk_flushes;
        Some(DirectWrite::new(
            fd,
            req.offset_bytes,
            dsync,
            Box::new(move |outcome, done| local.finish_direct(outcome, done)),
        ))
    }

    /// One leg of a write finished; the last one completes the write.
    fn leg_done(&self, w: &WriteInFlight, leg: Leg, result: Result<AlignedBuf, BlockError>) {
        let finished = {
            let mut legs = w.legs.lock().expect("write legs lock");
            let pos = legs.pending.iter().position(|l| *l == leg);
            let pos = pos.unwrap_or_else(|| {
                panic!(
                    "leg {leg:?} of write {} finished twice or never started",
                    w.seq
                )
            });
            legs.pending.swap_remove(pos);
            match result {
                Ok(buf) if leg == Leg::LocalDisk => legs.buf = Some(buf),
                Ok(_) => {}
                Err(e) => {
                    legs.error.get_or_insert(e);
                }
            }
            if legs.pending.is_empty() {
                let done = legs
                    .done
                    .take()
                    .expect("write completes upward exactly once");
                let outcome = match legs.error.take() {
                    Some(e) => Err(e),
                    None => Ok(legs.buf.take().unwrap_or_else(AlignedBuf::empty)),
                };
                Some((done, outcome))
            } else {
                None
            }
        };
        if let Some((done, outcome)) = finished {
            self.finish_write(w.seq, &w.extents, w.direct, outcome, done);
        }
    }

    /// Releases AL extents and the write's range, completes upward, then
    /// starts writes that waited for this one or for AL room. `direct`: a
    /// direct write (counted apart from the in-flight bound).
    fn finish_write(
        &self,
        seq: Seq,
        extents: &[u64],
        direct: bool,
        outcome: Result<AlignedBuf, BlockError>,
        done: Completion,
    ) {
        if !extents.is_empty() {
            lock_meta(&self.meta).al_release(extents);
        }
        let (retry, started) = {
            let mut st = self.lock_state();
            if !extents.is_empty() {
                st.al_epoch += 1;
                st.al_holders = st.al_holders.checked_sub(1).expect("AL holders underflow");
            }
            let started_seqs = st.order.complete(seq);
            let started: Vec<PendingWrite> = started_seqs
                .into_iter()
                .map(|s| st.held.remove(&s).expect("admitted write was held"))
                .collect();
            let retry: Vec<PendingWrite> = if extents.is_empty() {
                Vec::new()
            } else {
                st.al_waiting.drain(..).collect()
            };
            // Retired before the upward completion, as reads and flushes
            // are (whoever reacts to the completion sees the request gone),
            // under the same lock (one lock less per write).
            self.retire_write_locked(st, direct);
            (retry, started)
        };
        done(outcome);
        for w in retry.into_iter().chain(started) {
            self.start_write(w);
        }
    }
}
