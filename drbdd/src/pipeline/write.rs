//! The write path (write, discard, write-zeroes): ordering, activity log,
//! peer bitmaps, then the legs that must all finish before completion.
//!
//! Owns: a write from admission to its upward completion. Must never: submit
//! the data before `al_activate` returned (the AL transaction is durable by
//! then), complete upward while a leg is pending, or release AL extents of a
//! write that never activated them.
//!
//! Invariant asserted at completion: a write completes upward exactly once,
//! after its last leg. Today the only leg is the local disk; replication adds
//! a `Leg::Peer(node_id)` per peer the protocol waits for (protocol C: peer
//! write-ack; B: peer receive-ack; A: none beyond the send).

use super::meta::{al_extents_of, AlError};
use super::order::Seq;
use super::{lock_meta, Pipeline, PipelineEvent};
use crate::backing::BackingOp;
use drbdd_blockio::{AlignedBuf, BlockError, BlockOp, BlockRequest, Completion};
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
    extents: Vec<u64>,
    legs: Mutex<Legs>,
}

struct Legs {
    pending: Vec<Leg>,
    /// First error of any leg; the write fails upward with it.
    error: Option<BlockError>,
    /// The data buffer, handed back upward on success.
    buf: Option<AlignedBuf>,
    done: Option<Completion>,
}

impl Pipeline {
    /// Ordering first: a write overlapping an earlier in-flight or held write waits.
    pub(super) fn submit_write(&self, w: PendingWrite) {
        let end = w.req.offset_bytes + u64::from(w.req.len_bytes);
        let mut st = self.lock_state();
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
                    return self.finish_write(w.seq, &[], Err(BlockError::Io), w.done);
                }
                Err(AlError::Failed(error)) => {
                    self.emit(PipelineEvent::MetadataFailed { error });
                    return self.finish_write(w.seq, &[], Err(BlockError::Io), w.done);
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
        let inflight = Arc::new(WriteInFlight {
            seq,
            extents,
            legs: Mutex::new(Legs {
                pending: vec![Leg::LocalDisk],
                error: None,
                buf: None,
                done: Some(done),
            }),
        });
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
        let me = self.arc();
        self.backing.submit(
            op,
            Box::new(move |result| {
                let result = match result {
                    Ok(buf) => Ok(buf),
                    // Discard is advisory: a device without it still honours the contract.
                    Err(e)
                        if req.op == BlockOp::Discard
                            && e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                    {
                        Ok(AlignedBuf::empty())
                    }
                    Err(e) => Err(me.local_io_failed(&req, &e)),
                };
                me.leg_done(&inflight, Leg::LocalDisk, result);
            }),
        );
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
            self.finish_write(w.seq, &w.extents, outcome, done);
        }
    }

    /// Releases AL extents and the write's range, completes upward, then
    /// starts writes that waited for this one or for AL room.
    fn finish_write(
        &self,
        seq: Seq,
        extents: &[u64],
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
            (retry, started)
        };
        done(outcome);
        self.retire();
        for w in retry.into_iter().chain(started) {
            self.start_write(w);
        }
    }
}
