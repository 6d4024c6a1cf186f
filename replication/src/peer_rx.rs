//! The receive path of a peer connection (part of `peer`): replicated writes
//! from the peer, their acknowledgements, and epochs/barriers.
//!
//! Owns: submitting peer writes in arrival order without letting a later
//! epoch overtake an earlier one, RecvAck (protocol B) on arrival, WriteAck
//! (protocol C) or NegAck when our disk is done, and BarrierAck once every
//! write of an epoch is done and flushed (one flush may cover several
//! epochs, never a write that was not done when it was issued). Must never: submit a write of epoch
//! e+1 while a write of epoch e is still on its way to the disk, or submit a
//! peer write over a block that an earlier peer write or a resync write is
//! still writing (the disk could complete them in either order).

use std::collections::{BTreeMap, VecDeque};

use super::{Action, Peer};
use crate::ack::Protocol;
use crate::state::ReplState;
use crate::wire::{Packet, Payload};

/// A replicated write as received.
#[derive(Debug, Clone)]
pub(super) struct PeerWrite {
    pub(super) seq: u64,
    pub(super) epoch: u32,
    pub(super) flags: u32,
    pub(super) offset_bytes: u64,
    pub(super) len_bytes: u32,
    pub(super) data: Payload,
}

#[derive(Debug, Clone)]
struct RxEpoch {
    epoch: u32,
    /// Writes submitted to the disk and not done.
    pending: u32,
    writes: u32,
    barrier: bool,
    flushing: bool,
}

/// Receive-side state of one connection.
#[derive(Debug, Default)]
pub(super) struct Receiver {
    epochs: VecDeque<RxEpoch>,
    /// seq -> (epoch, offset, length) of writes on their way to our disk.
    inflight: BTreeMap<u64, (u32, u64, u64)>,
    /// Writes waiting for an earlier epoch or an overlapping resync write.
    held: VecDeque<PeerWrite>,
}

impl Receiver {
    /// Received writes not yet on our disk (held or in flight).
    pub(super) fn unfinished_writes(&self) -> usize {
        self.held.len() + self.inflight.len()
    }

    fn epoch_mut(&mut self, epoch: u32) -> &mut RxEpoch {
        if let Some(i) = self.epochs.iter().position(|e| e.epoch == epoch) {
            return &mut self.epochs[i];
        }
        self.epochs.push_back(RxEpoch {
            epoch,
            pending: 0,
            writes: 0,
            barrier: false,
            flushing: false,
        });
        self.epochs.back_mut().expect("just pushed")
    }

    /// Sequence numbers of writes on their way to our disk.
    pub(super) fn inflight_seqs(&self) -> Vec<u64> {
        self.inflight.keys().copied().collect()
    }

    /// True if a write on its way to our disk overlaps the range: a later
    /// write to the same blocks must not race it (the disk may reorder).
    fn overlaps_inflight(&self, offset_bytes: u64, len_bytes: u64) -> bool {
        let end = offset_bytes.saturating_add(len_bytes);
        self.inflight
            .values()
            .any(|(_, o, l)| *o < end && offset_bytes < o.saturating_add(*l))
    }

    /// True if a write received from the peer and not yet on our disk
    /// (held or in flight) overlaps the range.
    pub(super) fn overlaps_unfinished(&self, offset_bytes: u64, len_bytes: u64) -> bool {
        let end = offset_bytes.saturating_add(len_bytes);
        self.overlaps_inflight(offset_bytes, len_bytes)
            || self.held.iter().any(|w| {
                w.offset_bytes < end
                    && offset_bytes < w.offset_bytes.saturating_add(u64::from(w.len_bytes))
            })
    }

    fn earlier_pending(&self, epoch: u32) -> bool {
        self.epochs
            .iter()
            .take_while(|e| e.epoch != epoch)
            .any(|e| e.pending > 0)
    }
}

impl Peer {
    fn rx_bound(&self) -> usize {
        self.cfg.max_buffers.saturating_mul(4).saturating_add(64)
    }

    pub(super) fn rx_data(&mut self, w: PeerWrite, out: &mut Vec<Action>) -> Result<(), String> {
        let size = self.agreement.as_ref().map_or(0, |a| a.size_bytes);
        if w.offset_bytes.saturating_add(u64::from(w.len_bytes)) > size {
            return Err(format!(
                "write {}+{} beyond the device of {size} bytes",
                w.offset_bytes, w.len_bytes
            ));
        }
        if self.rx.inflight.len() + self.rx.held.len() >= self.rx_bound() {
            return Err(format!(
                "peer exceeded {} writes in flight",
                self.rx_bound()
            ));
        }
        if matches!(
            self.status.repl,
            ReplState::SyncTarget
                | ReplState::PausedSyncT
                | ReplState::WFBitMapT
                | ReplState::WFSyncUUID
        ) {
            // Arrival order is what matters: a resync reply behind this write
            // in the stream is older than it.
            self.sync
                .planner
                .on_peer_write(w.offset_bytes, u64::from(w.len_bytes));
            self.sync.last_app_io_ms = Some(self.now_ms);
        }
        if self.cfg.protocol == Protocol::B {
            out.push(Action::Send(Packet::RecvAck { seq: w.seq }));
        }
        self.rx.epoch_mut(w.epoch);
        self.rx.held.push_back(w);
        self.rx_release(out);
        Ok(())
    }

    /// Submits held writes from the front while ordering allows.
    pub(super) fn rx_release(&mut self, out: &mut Vec<Action>) {
        while let Some(front) = self.rx.held.front() {
            let len = u64::from(front.len_bytes);
            let blocked = self.rx.earlier_pending(front.epoch)
                || self.rx.overlaps_inflight(front.offset_bytes, len)
                || self.sync.planner.overlaps_writing(front.offset_bytes, len);
            if blocked {
                return;
            }
            let w = self.rx.held.pop_front().expect("front exists");
            let e = self.rx.epoch_mut(w.epoch);
            e.pending += 1;
            e.writes += 1;
            self.rx
                .inflight
                .insert(w.seq, (w.epoch, w.offset_bytes, u64::from(w.len_bytes)));
            out.push(Action::SubmitPeerWrite {
                seq: w.seq,
                offset_bytes: w.offset_bytes,
                len_bytes: w.len_bytes,
                flags: w.flags,
                data: w.data,
            });
        }
        self.rx_maybe_flush(out);
    }

    pub(super) fn rx_write_done(&mut self, seq: u64, ok: bool, out: &mut Vec<Action>) {
        let Some((epoch, offset_bytes, len_bytes)) = self.rx.inflight.remove(&seq) else {
            return; // from a connection that is gone
        };
        if !ok {
            // Our copy of the range is bad: a running resync (we are its
            // target) must fetch it again before we may become UpToDate.
            self.mark_out_of_sync(offset_bytes, len_bytes, out);
            out.push(Action::Send(Packet::NegAck { seq }));
        } else if self.cfg.protocol == Protocol::C {
            out.push(Action::Send(Packet::WriteAck { seq }));
        }
        let e = self.rx.epoch_mut(epoch);
        e.pending -= 1;
        self.rx_release(out);
        // A resync read deferred behind this write may go now.
        self.source_retry_deferred(out);
    }

    pub(super) fn rx_barrier(&mut self, epoch: u32, out: &mut Vec<Action>) -> Result<(), String> {
        let e = self.rx.epoch_mut(epoch);
        if e.barrier {
            return Err(format!("barrier {epoch} received twice"));
        }
        e.barrier = true;
        self.rx_maybe_flush(out);
        Ok(())
    }

    /// Flushes the oldest epochs once their barriers arrived and their
    /// writes are done: one flush for every such epoch at the front (group
    /// commit). A flush covers every write completed before it was issued,
    /// so it makes all of them durable; with one flush per epoch, short
    /// epochs (protocol A completes writes quickly, so nearly every write
    /// starts one) made the flushes the receiver's bottleneck. One flush at
    /// a time; epochs that become ready meanwhile wait for the next one.
    fn rx_maybe_flush(&mut self, out: &mut Vec<Action>) {
        if self.rx.epochs.front().is_none_or(|e| e.flushing) {
            return;
        }
        let mut last = None;
        for i in 0..self.rx.epochs.len() {
            let e = &self.rx.epochs[i];
            let epoch = e.epoch;
            let held = self.rx.held.iter().any(|w| w.epoch == epoch);
            if !(e.barrier && e.pending == 0 && !held) {
                break;
            }
            self.rx.epochs[i].flushing = true;
            last = Some(epoch);
        }
        if let Some(epoch) = last {
            out.push(Action::SubmitPeerFlush { epoch });
        }
    }

    /// The flush issued for the epochs up to `epoch` is done: each of them
    /// is acknowledged, oldest first.
    pub(super) fn rx_flush_done(&mut self, epoch: u32, out: &mut Vec<Action>) {
        let covered = self
            .rx
            .epochs
            .iter()
            .take_while(|e| e.flushing)
            .position(|e| e.epoch == epoch);
        let Some(last) = covered else {
            return; // from a connection that is gone
        };
        for e in self.rx.epochs.drain(..=last) {
            out.push(Action::Send(Packet::BarrierAck {
                epoch: e.epoch,
                writes: e.writes,
            }));
        }
        self.rx_release(out);
    }
}
