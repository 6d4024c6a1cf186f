//! Per-connection write tracking on the sending side: sequence numbers,
//! epochs and barriers, and when the peer's leg of a write is satisfied under
//! protocol A, B or C (user's guide 2.3).
//!
//! Owns: the bounded table of writes sent to one peer and not yet known to be
//! on its disk. Must never: complete a protocol C write before the peer's
//! WriteAck, forget a write the peer has not confirmed on disk (on connection
//! loss it becomes out of sync), or grow past `max_in_flight` entries.
//!
//! Legs: the local disk write is the pipeline's leg; this table decides the
//! peer's leg. [`AckAction::CompleteWrite`] means "the peer leg is done"
//! (A: handed to the send path; B: RecvAck; C: WriteAck); the write completes
//! upward when the pipeline's local leg is done too. Whenever the peer cannot
//! have a write's data, an explicit [`AckAction::MarkOutOfSync`] for its range
//! is emitted (setting a bitmap bit twice is harmless, so a caller that maps
//! `PeerOutcome::OutOfSync` to the pipeline's `LegOutcome::PeerLost` may mark
//! it again).
//!
//! Epochs: writes are grouped into epochs. A new epoch starts (a `Barrier`
//! for the old one is sent) when a write follows a write of the current epoch
//! that completed upward — the application could have observed it, so the
//! peer must not reorder across — and at every flush. `BarrierAck(e)` means
//! every write of epochs ≤ e is on the peer's disk.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::wire::{Packet, Payload};

/// DRBD's replication protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Asynchronous: complete once on the local disk and handed to the send path.
    A,
    /// Memory-synchronous: complete once the peer received it.
    B,
    /// Synchronous: complete once on the peer's disk.
    C,
}

/// The caller's identifier of an application write.
pub type WriteId = u64;

/// How a peer leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerOutcome {
    /// The peer acknowledged as the protocol requires.
    Acked,
    /// The peer cannot have the data: mark the range out of sync for it.
    OutOfSync,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckAction {
    Send(Packet),
    CompleteWrite { id: WriteId, outcome: PeerOutcome },
    MarkOutOfSync { offset_bytes: u64, len_bytes: u64 },
}

/// Why the table refused an input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AckError {
    #[error("{in_flight} writes in flight to the peer (max-buffers); retry after acknowledgements arrive")]
    Congested { in_flight: usize },
    #[error("peer acknowledged sequence number {0} which is not in flight; protocol error")]
    UnknownSeq(u64),
    #[error("peer acknowledged barrier {0} which was never sent; protocol error")]
    UnknownEpoch(u32),
}

#[derive(Debug, Clone)]
struct Entry {
    id: WriteId,
    epoch: u32,
    offset_bytes: u64,
    len_bytes: u32,
    is_flush: bool,
    local_done: bool,
    leg_done: bool,
    on_peer_disk: bool,
}

/// The write table of one connection.
#[derive(Debug)]
pub struct AckTracker {
    protocol: Protocol,
    max_in_flight: usize,
    next_seq: u64,
    /// The open epoch new writes join.
    epoch: u32,
    epoch_writes: u32,
    /// A write of the open epoch completed upward.
    epoch_observed: bool,
    /// Highest epoch whose barrier was sent (None before the first).
    last_barrier: Option<u32>,
    entries: BTreeMap<u64, Entry>,
}

impl AckTracker {
    pub fn new(protocol: Protocol, max_in_flight: usize) -> Self {
        assert!(max_in_flight > 0, "max_in_flight must be positive");
        Self {
            protocol,
            max_in_flight,
            next_seq: 1,
            epoch: 1,
            epoch_writes: 0,
            epoch_observed: false,
            last_barrier: None,
            entries: BTreeMap::new(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// True if another write or flush fits in the table.
    pub fn has_room(&self) -> bool {
        self.entries.len() < self.max_in_flight
    }

    /// Writes sent and not yet retired.
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// True if `[offset, offset+len)` overlaps a write not yet locally done.
    pub fn overlaps_unfinished_local(&self, offset_bytes: u64, len_bytes: u64) -> bool {
        let end = offset_bytes.saturating_add(len_bytes);
        self.entries.values().any(|e| {
            !e.local_done && !e.is_flush && e.offset_bytes < end && offset_bytes < e.end_bytes()
        })
    }

    fn close_epoch(&mut self, out: &mut Vec<AckAction>) {
        out.push(AckAction::Send(Packet::Barrier { epoch: self.epoch }));
        self.last_barrier = Some(self.epoch);
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch_writes = 0;
        self.epoch_observed = false;
    }

    /// Sends a write (or discard / write-zeroes, per `flags`) to the peer.
    pub fn submit_write(
        &mut self,
        id: WriteId,
        offset_bytes: u64,
        len_bytes: u32,
        flags: u32,
        payload: impl Into<Payload>,
    ) -> Result<(u64, Vec<AckAction>), AckError> {
        if self.entries.len() >= self.max_in_flight {
            return Err(AckError::Congested {
                in_flight: self.entries.len(),
            });
        }
        let mut out = Vec::new();
        if self.epoch_observed {
            self.close_epoch(&mut out);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.epoch_writes += 1;
        let leg_done = self.protocol == Protocol::A;
        self.entries.insert(
            seq,
            Entry {
                id,
                epoch: self.epoch,
                offset_bytes,
                len_bytes,
                is_flush: false,
                local_done: false,
                leg_done,
                on_peer_disk: false,
            },
        );
        out.push(AckAction::Send(Packet::Data {
            seq,
            epoch: self.epoch,
            flags,
            offset_bytes,
            len_bytes,
            payload: payload.into(),
        }));
        if leg_done {
            out.push(AckAction::CompleteWrite {
                id,
                outcome: PeerOutcome::Acked,
            });
        }
        Ok((seq, out))
    }

    /// An application flush. Under protocols B and C every earlier write must
    /// be durable on the peer: the peer leg completes at the `BarrierAck` of
    /// the epoch it closes. Under protocol A the flush closes the epoch (the
    /// barrier is queued behind the writes, so the peer keeps the order) but
    /// does not wait for the peer, as DRBD's protocol A promises nothing about
    /// the peer's disk (user's guide 2.3.1).
    pub fn submit_flush(&mut self, id: WriteId) -> Result<(u64, Vec<AckAction>), AckError> {
        if self.entries.len() >= self.max_in_flight {
            return Err(AckError::Congested {
                in_flight: self.entries.len(),
            });
        }
        let mut out = Vec::new();
        if self.epoch_writes > 0 {
            self.close_epoch(&mut out);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let pending =
            self.protocol != Protocol::A && self.entries.values().any(|e| !e.on_peer_disk);
        match (pending, self.last_barrier) {
            (true, Some(epoch)) => {
                let entry = Entry {
                    id,
                    epoch,
                    offset_bytes: 0,
                    len_bytes: 0,
                    is_flush: true,
                    local_done: true,
                    leg_done: false,
                    on_peer_disk: false,
                };
                self.entries.insert(seq, entry);
            }
            _ => out.push(AckAction::CompleteWrite {
                id,
                outcome: PeerOutcome::Acked,
            }),
        }
        Ok((seq, out))
    }

    /// Closes the open epoch if it has writes (call when idle, e.g. on a
    /// tick), so protocol A/B writes get their BarrierAck and retire.
    pub fn close_idle_epoch(&mut self) -> Vec<AckAction> {
        let mut out = Vec::new();
        if self.epoch_writes > 0 {
            self.close_epoch(&mut out);
        }
        out
    }

    /// The local disk write of `seq` completed.
    pub fn local_done(&mut self, seq: u64) -> Vec<AckAction> {
        if let Some(e) = self.entries.get_mut(&seq) {
            e.local_done = true;
        }
        self.after_change(seq);
        Vec::new()
    }

    /// Receive-ack: completes the peer leg under protocol B only.
    pub fn on_recv_ack(&mut self, seq: u64) -> Result<Vec<AckAction>, AckError> {
        let completes = self.protocol == Protocol::B;
        self.ack_leg(seq, completes)
    }

    /// Write-ack: the data is on the peer's disk (not yet durable). The entry
    /// stays until the BarrierAck of its epoch (the peer's flush), so a later
    /// flush waits for it and a lost connection still marks it out of sync.
    pub fn on_write_ack(&mut self, seq: u64) -> Result<Vec<AckAction>, AckError> {
        self.ack_leg(seq, true)
    }

    /// Completes the peer leg of `seq` once, when `completes` says this ack
    /// is the one its protocol waits for.
    fn ack_leg(&mut self, seq: u64, completes: bool) -> Result<Vec<AckAction>, AckError> {
        let e = self
            .entries
            .get_mut(&seq)
            .ok_or(AckError::UnknownSeq(seq))?;
        let mut out = Vec::new();
        if completes && !e.leg_done {
            e.leg_done = true;
            out.push(AckAction::CompleteWrite {
                id: e.id,
                outcome: PeerOutcome::Acked,
            });
        }
        self.after_change(seq);
        Ok(out)
    }

    /// The peer failed to write `seq`: the range is out of sync on it.
    pub fn on_neg_ack(&mut self, seq: u64) -> Result<Vec<AckAction>, AckError> {
        let e = self
            .entries
            .get_mut(&seq)
            .ok_or(AckError::UnknownSeq(seq))?;
        let mut out = Vec::new();
        e.on_peer_disk = true; // nothing more will come for it
        out.push(AckAction::MarkOutOfSync {
            offset_bytes: e.offset_bytes,
            len_bytes: u64::from(e.len_bytes),
        });
        if !e.leg_done {
            e.leg_done = true;
            out.push(AckAction::CompleteWrite {
                id: e.id,
                outcome: PeerOutcome::OutOfSync,
            });
        }
        self.after_change(seq);
        Ok(out)
    }

    /// Every write of epochs ≤ `epoch` is on the peer's disk.
    pub fn on_barrier_ack(&mut self, epoch: u32) -> Result<Vec<AckAction>, AckError> {
        if self
            .last_barrier
            .is_none_or(|last| epoch_after(epoch, last))
        {
            return Err(AckError::UnknownEpoch(epoch));
        }
        let mut out = Vec::new();
        let seqs: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| !epoch_after(e.epoch, epoch))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            let e = self.entries.get_mut(&seq).expect("collected above");
            e.on_peer_disk = true;
            if !e.leg_done {
                e.leg_done = true;
                out.push(AckAction::CompleteWrite {
                    id: e.id,
                    outcome: PeerOutcome::Acked,
                });
            }
            self.after_change(seq);
        }
        Ok(out)
    }

    /// The connection is gone: every write the peer has not confirmed on disk
    /// is out of sync for it; pending legs complete (the write succeeds
    /// locally, DRBD-style).
    pub fn connection_lost(&mut self) -> Vec<AckAction> {
        let mut out = Vec::new();
        for e in std::mem::take(&mut self.entries).into_values() {
            if !e.on_peer_disk && !e.is_flush {
                out.push(AckAction::MarkOutOfSync {
                    offset_bytes: e.offset_bytes,
                    len_bytes: u64::from(e.len_bytes),
                });
            }
            if !e.leg_done {
                out.push(AckAction::CompleteWrite {
                    id: e.id,
                    outcome: PeerOutcome::OutOfSync,
                });
            }
        }
        self.epoch_writes = 0;
        self.epoch_observed = false;
        out
    }

    /// Notes upward completion (for epochs) and retires finished entries.
    fn after_change(&mut self, seq: u64) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        if e.local_done && e.leg_done && e.epoch == self.epoch && !e.is_flush {
            self.epoch_observed = true;
        }
        if e.local_done && e.leg_done && e.on_peer_disk {
            self.entries.remove(&seq);
        }
    }
}

impl Entry {
    fn end_bytes(&self) -> u64 {
        self.offset_bytes.saturating_add(u64::from(self.len_bytes))
    }
}

/// True if epoch `a` comes after `b` (wrapping sequence comparison).
fn epoch_after(a: u32, b: u32) -> bool {
    let diff = a.wrapping_sub(b);
    diff != 0 && diff < (1 << 31)
}

#[cfg(test)]
#[path = "ack_tests.rs"]
mod tests;
