//! The send path of a peer connection (part of `peer`): application writes
//! and flushes on this node going to the peer.
//!
//! Owns: handing writes to the write table (`ack`), the bounded wait queue
//! for when the table is full (`max-buffers`), and turning every write that
//! cannot reach the peer into out-of-sync bits. Must never: complete a
//! write's peer leg as `Acked` without the acknowledgement its protocol
//! requires, or drop a write without marking its range out of sync.

use super::{Action, Peer};
use crate::ack::{AckAction, PeerOutcome, WriteId};
use crate::state::ReplState;
use crate::wire::Payload;

/// A write or flush waiting for room in the write table.
#[derive(Debug, Clone)]
pub(super) enum Waiting {
    Write {
        id: WriteId,
        offset_bytes: u64,
        len_bytes: u32,
        flags: u32,
        data: Payload,
        local_done: bool,
    },
    Flush {
        id: WriteId,
    },
}

impl Peer {
    pub(super) fn apply_ack(&mut self, actions: Vec<AckAction>, out: &mut Vec<Action>) {
        for a in actions {
            match a {
                AckAction::Send(p) => out.push(Action::Send(p)),
                AckAction::CompleteWrite { id, outcome } => {
                    out.push(Action::CompleteWrite { id, outcome })
                }
                AckAction::MarkOutOfSync {
                    offset_bytes,
                    len_bytes,
                } => {
                    self.mark_out_of_sync(offset_bytes, len_bytes, out);
                }
            }
        }
    }

    pub(super) fn mark_out_of_sync(
        &mut self,
        offset_bytes: u64,
        len_bytes: u64,
        out: &mut Vec<Action>,
    ) {
        self.bitmap.set_range(offset_bytes, len_bytes);
        out.push(Action::MarkOutOfSync {
            offset_bytes,
            len_bytes,
        });
    }

    /// Writes are replicated while connected and past the handshake (the
    /// sync source replicates during resync too); otherwise they only make
    /// the range out of sync for this peer.
    fn replicating(&self) -> bool {
        self.established()
            && matches!(
                self.status.repl,
                ReplState::Established
                    | ReplState::WFBitMapS
                    | ReplState::SyncSource
                    | ReplState::PausedSyncS
            )
    }

    pub(super) fn on_local_write(&mut self, w: Waiting, out: &mut Vec<Action>) {
        let Waiting::Write {
            id,
            offset_bytes,
            len_bytes,
            ..
        } = w
        else {
            unreachable!("on_local_write takes writes")
        };
        if !self.replicating() {
            self.mark_out_of_sync(offset_bytes, u64::from(len_bytes), out);
            out.push(Action::CompleteWrite {
                id,
                outcome: PeerOutcome::OutOfSync,
            });
            return;
        }
        self.enqueue(w, out);
    }

    pub(super) fn on_local_flush(&mut self, id: WriteId, out: &mut Vec<Action>) {
        if !self.replicating() {
            out.push(Action::CompleteWrite {
                id,
                outcome: PeerOutcome::OutOfSync,
            });
            return;
        }
        self.enqueue(Waiting::Flush { id }, out);
    }

    fn enqueue(&mut self, w: Waiting, out: &mut Vec<Action>) {
        if self.tx_waiting.len() >= self.cfg.max_buffers {
            // Both the table and the wait queue are full: the peer is far
            // behind. Keep the application going; resync repairs the range.
            if self.cfg.protocol != crate::ack::Protocol::A {
                // Under B and C the peer must not stay "connected and
                // UpToDate" while missing acknowledged writes: it could be
                // promoted after a crash of this node and lose them
                // (drbdd-sim). Drop the connection as DRBD's ko-count
                // would; a primary then starts a new data generation.
                self.tx_waiting.push_back(w);
                let why = "peer too slow (max-buffers full): dropping the connection";
                out.push(Action::Warn(why.into()));
                self.lose_connection(why.into(), true, out);
                return;
            }
            out.push(Action::Warn(
                "peer too slow: write not replicated, marked out of sync".into(),
            ));
            self.fail_waiting(w, out);
            return;
        }
        self.tx_waiting.push_back(w);
        self.tx_drain(out);
    }

    /// Moves waiting writes into the write table while it has room.
    pub(super) fn tx_drain(&mut self, out: &mut Vec<Action>) {
        if !self.ack.has_room() && !self.tx_waiting.is_empty() {
            // Entries leave the table at the BarrierAck of their epoch; close
            // the open one now rather than at the next tick.
            let closed = self.ack.close_idle_epoch();
            self.apply_ack(closed, out);
        }
        while self.ack.has_room() {
            let Some(w) = self.tx_waiting.pop_front() else {
                return;
            };
            let submitted = match w {
                Waiting::Write {
                    id,
                    offset_bytes,
                    len_bytes,
                    flags,
                    data,
                    local_done,
                } => self
                    .ack
                    .submit_write(id, offset_bytes, len_bytes, flags, data)
                    .map(|(seq, actions)| {
                        self.apply_ack(actions, out);
                        if local_done {
                            let done = self.ack.local_done(seq);
                            self.apply_ack(done, out);
                        } else {
                            self.local_pending.insert(id, seq);
                        }
                    }),
                Waiting::Flush { id } => self
                    .ack
                    .submit_flush(id)
                    .map(|(_, actions)| self.apply_ack(actions, out)),
            };
            assert!(
                submitted.is_ok(),
                "write table refused a write although it had room"
            );
        }
    }

    fn fail_waiting(&mut self, w: Waiting, out: &mut Vec<Action>) {
        match w {
            Waiting::Write {
                id,
                offset_bytes,
                len_bytes,
                ..
            } => {
                self.mark_out_of_sync(offset_bytes, u64::from(len_bytes), out);
                out.push(Action::CompleteWrite {
                    id,
                    outcome: PeerOutcome::OutOfSync,
                });
            }
            Waiting::Flush { id } => out.push(Action::CompleteWrite {
                id,
                outcome: PeerOutcome::OutOfSync,
            }),
        }
    }

    /// True if an application write to an overlapping range is not yet on
    /// the local disk (whether or not it was replicated).
    pub(super) fn overlaps_local_unfinished(&self, offset_bytes: u64, len_bytes: u64) -> bool {
        let end = offset_bytes.saturating_add(len_bytes);
        self.local_unfinished
            .values()
            .any(|&(o, l)| o < end && offset_bytes < o.saturating_add(l))
    }

    /// Connection lost: waiting writes never reached the peer.
    pub(super) fn tx_fail_waiting(&mut self, out: &mut Vec<Action>) {
        while let Some(w) = self.tx_waiting.pop_front() {
            self.fail_waiting(w, out);
        }
    }

    pub(super) fn on_local_write_done(&mut self, id: WriteId, out: &mut Vec<Action>) {
        self.local_unfinished.remove(&id);
        if let Some(seq) = self.local_pending.remove(&id) {
            let actions = self.ack.local_done(seq);
            self.apply_ack(actions, out);
        } else {
            for w in &mut self.tx_waiting {
                if let Waiting::Write {
                    id: wid,
                    local_done,
                    ..
                } = w
                {
                    if *wid == id {
                        *local_done = true;
                    }
                }
            }
        }
        self.source_retry_deferred(out);
    }
}
