//! Executing what a peer machine returns (part of `peers`): packets to the
//! connection, disk I/O to the second backing handle, bitmap bits and
//! generation identifiers to the metadata, state changes to the resource
//! core, leg completions to the pipeline.
//!
//! Owns: the mapping of each `Action` to its effect. Must never: decide
//! anything the machine did not ask for, except the two daemon-level rules
//! noted at `primary_lost_peer` and `tell_peers_disk`.

use super::super::Actor;
use super::{local_state, IoDone, PeerMsg, WIRE_FLUSH_BYTES, WIRE_SPLIT_BYTES};
use crate::backing::BackingOp;
use crate::daemon::actor::ActorMsg;
use crate::pipeline::LegOutcome;
use drbdd_blockio::AlignedBuf;
use drbdd_replication::ack::PeerOutcome;
use drbdd_replication::generation::GiView;
use drbdd_replication::peer::{Action, Event, GiUpdate};
use drbdd_replication::state::{ConnState, DiskState, ReplState, Role};
use drbdd_replication::wire::{Packet, Payload, DATA_DISCARD, DATA_FUA, DATA_ZEROES};
use std::sync::Mutex;

impl Actor {
    /// Feeds `event` to peer `i` and executes what it returns.
    pub(super) fn feed(&mut self, i: usize, event: Event<'_>) {
        let actions = self.link_mut(i).peer.handle(event);
        self.execute_peer_actions(i, actions);
    }

    /// Executes `actions` in order. Packets are encoded into the link's
    /// outgoing buffer, which goes to the connection at the end of the
    /// actor's batch ([`Actor::flush_wire`]), when it grows past
    /// [`WIRE_FLUSH_BYTES`], or before the connection is dropped.
    pub(super) fn execute_peer_actions(&mut self, i: usize, actions: Vec<Action>) {
        let mut new_generation = false;
        for action in actions {
            match action {
                Action::PeerWriteFailed => {
                    // Persisted here, before the write's CompleteWrite later
                    // in this batch; announced after the batch, so no packet
                    // of the announcement overtakes one of the batch.
                    let slot = self.link(i).slot;
                    new_generation |= self.start_generation_without(slot);
                }
                Action::Send(packet) => {
                    let l = self.link_mut(i);
                    if let Packet::ResyncReply { payload, .. } = &packet {
                        l.stats.resync_sent_bytes += u64::try_from(payload.len()).unwrap_or(0);
                    }
                    let before = l.wire.len();
                    let crc = l.peer.frame_crc();
                    // A large data block goes to the socket as its own buffer
                    // right behind its frame head (no copy into `wire`).
                    let block = packet.encode_framed_split(&mut l.wire, crc, WIRE_SPLIT_BYTES);
                    let block_len = block.as_ref().map_or(0, |b| b.len());
                    l.stats.sent_bytes +=
                        u64::try_from(l.wire.len() - before + block_len).unwrap_or(0);
                    if let Some(block) = block {
                        let head = std::mem::take(&mut l.wire);
                        if let Some(c) = &mut l.conn {
                            // A failed send is reported by `Conn::failure` (poll loop).
                            let _ = c.send_bufs(vec![Payload::Bytes(head), block]);
                        }
                    } else if l.wire.len() >= WIRE_FLUSH_BYTES {
                        self.flush_link_wire(i);
                    }
                }
                Action::Disconnect { reason, retry } => {
                    self.flush_link_wire(i);
                    self.on_disconnect(i, &reason, retry);
                }
                other => self.execute_local(i, other),
            }
        }
        if new_generation {
            tracing::warn!(resource = %self.core.name, peer = self.link(i).node_id, "peer failed a replicated write while we are Primary: new data generation");
            self.announce_generations(None);
        }
    }

    /// Hands link `i`'s encoded packets to its connection (never blocks;
    /// a congested connection holds the actor's mailbox instead, see
    /// `Actor::run`). Without a connection they are dropped, as a send to a
    /// closed one would be.
    pub(super) fn flush_link_wire(&mut self, i: usize) {
        let l = self.link_mut(i);
        if l.wire.is_empty() {
            return;
        }
        let wire = std::mem::take(&mut l.wire);
        if let Some(c) = &mut l.conn {
            // A failed send is reported by `Conn::failure` (poll loop).
            let _ = c.send(wire);
        }
    }

    /// Sends what every link has buffered (the end of an actor batch),
    /// after handing the disk the ops the batch pushed: the disk starts
    /// before the sends of the round, in the same one `io_uring_enter`.
    pub(in crate::daemon::actor) fn flush_wire(&mut self) {
        if let Some(d) = self.peers.as_ref().and_then(|p| p.disk.as_ref()) {
            d.submit_pushed();
        }
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        for i in 0..n {
            self.flush_link_wire(i);
        }
    }

    pub(super) fn on_disconnect(&mut self, i: usize, reason: &str, retry: bool) {
        let name = self.core.name.clone();
        let now = self.now_ms();
        let l = self.link_mut(i);
        if retry {
            tracing::info!(resource = %name, peer = l.node_id, "disconnected: {reason}; reconnecting");
        } else {
            tracing::warn!(resource = %name, peer = l.node_id, "disconnected: {reason}; StandAlone until `drbdctl connect {name}`");
        }
        l.next_dial_ms = now + l.connect_int_ms;
        l.wire.clear();
        if let Some(c) = l.conn.take() {
            // Dropping the sender lets the writer flush queued packets
            // (e.g. the refusal) and then close the socket.
            drop(c);
        }
    }

    pub(super) fn execute_local(&mut self, i: usize, action: Action) {
        let (node_id, slot) = {
            let l = self.link(i);
            (l.node_id, l.slot)
        };
        match action {
            Action::CompleteWrite { id, outcome } => {
                let leg = self
                    .peers
                    .as_mut()
                    .and_then(|p| p.legs.remove(&(node_id, id)));
                match leg {
                    Some(leg) => leg.complete(match outcome {
                        PeerOutcome::Acked => LegOutcome::Done,
                        PeerOutcome::OutOfSync => LegOutcome::PeerLost { slot },
                    }),
                    None => self.flush_leg_done(id),
                }
            }
            Action::MarkOutOfSync {
                offset_bytes,
                len_bytes,
            } => {
                self.with_store(|s| s.bitmap_set_range(slot, offset_bytes, len_bytes));
                self.mark_bitmap_dirty();
            }
            Action::MarkInSync {
                offset_bytes,
                len_bytes,
            } => {
                self.with_store(|s| s.bitmap_clear_range(slot, offset_bytes, len_bytes));
                self.mark_bitmap_dirty();
            }
            Action::SubmitPeerWrite {
                seq,
                offset_bytes,
                len_bytes,
                flags,
                data,
            } => {
                // Both range ops leave zeroes on every engine (see BackingOp),
                // as on the primary: replicas must read back alike.
                let op = if flags & DATA_DISCARD != 0 {
                    BackingOp::Discard {
                        offset_bytes,
                        len_bytes: u64::from(len_bytes),
                    }
                } else if flags & DATA_ZEROES != 0 {
                    BackingOp::WriteZeroes {
                        offset_bytes,
                        len_bytes: u64::from(len_bytes),
                    }
                } else {
                    // A block received apart from its frame is written from
                    // the buffer the socket read it into; a small one that
                    // came inside a run of frames is copied here.
                    BackingOp::Write {
                        offset_bytes,
                        buf: data.into_aligned(),
                        fua: flags & DATA_FUA != 0,
                    }
                };
                self.submit_io(node_id, op, move |r| IoDone::PeerWrite {
                    seq,
                    ok: r.is_ok(),
                });
            }
            Action::SubmitPeerFlush { epoch } => {
                self.submit_io(node_id, BackingOp::Flush, move |_| IoDone::PeerFlush {
                    epoch,
                });
            }
            Action::ReadForResync {
                id,
                offset_bytes,
                len_bytes,
            } => {
                let len = usize::try_from(len_bytes).unwrap_or(0);
                let op = BackingOp::Read {
                    offset_bytes,
                    buf: AlignedBuf::zeroed(len),
                };
                self.submit_io(node_id, op, move |r| IoDone::ResyncRead {
                    id,
                    data: r.ok().map(|b| b.as_slice().to_vec()),
                });
            }
            Action::SubmitResyncWrite {
                id,
                offset_bytes,
                data,
            } => {
                self.link_mut(i).stats.resync_received_bytes +=
                    u64::try_from(data.len()).unwrap_or(0);
                // As for peer writes: no copy of a block received apart.
                let op = BackingOp::Write {
                    offset_bytes,
                    buf: data.into_aligned(),
                    fua: false,
                };
                self.submit_io(node_id, op, move |_| IoDone::ResyncWrite { id });
            }
            other => self.execute_state(i, other),
        }
    }

    pub(super) fn mark_bitmap_dirty(&mut self) {
        if let Some(p) = self.peers.as_mut() {
            p.bitmap_dirty = true;
        }
    }

    pub(super) fn submit_io(
        &mut self,
        node_id: u8,
        op: BackingOp,
        done: impl FnOnce(std::io::Result<AlignedBuf>) -> IoDone + Send + 'static,
    ) {
        let Some(p) = self.peers.as_ref() else { return };
        let tx = Mutex::new(p.tx.clone());
        let callback: crate::backing::IoDone = Box::new(move |r: std::io::Result<AlignedBuf>| {
            let msg = ActorMsg::Peers(PeerMsg::Io {
                node_id,
                done: done(r),
            });
            let _ = tx.lock().expect("io completion sender lock").send(msg);
        });
        match &p.disk {
            Some(d) => d.submit(op, callback),
            None => callback(Err(std::io::Error::other("no local disk"))),
        }
    }

    /// Generation, disk-state and connection-state actions.
    pub(super) fn execute_state(&mut self, i: usize, action: Action) {
        let name = self.core.name.clone();
        let slot = self.link(i).slot;
        match action {
            Action::UpdateGenerations(update) => {
                if let Some(md) = self.core.md.as_mut() {
                    update.apply(&mut md.gens, slot);
                }
                self.persist_md();
                match update {
                    GiUpdate::FollowedPeerGeneration { .. } => self.announce_generations(Some(i)),
                    GiUpdate::ResyncFinishedAsTarget { .. } => self.announce_resynced_data(i),
                    _ => {}
                }
            }
            Action::LocalDisk(disk) => {
                self.core.disk = disk;
                if let Some(md) = self.core.md.as_mut() {
                    match disk {
                        DiskState::UpToDate => {
                            md.consistent = true;
                            md.was_up_to_date = true;
                            md.outdated = false;
                        }
                        DiskState::Inconsistent => {
                            md.consistent = false;
                            md.was_up_to_date = false;
                        }
                        DiskState::Outdated => md.outdated = true,
                        _ => {}
                    }
                }
                self.persist_md();
                self.flush_bitmap_if_dirty();
                self.tell_peers_disk(i, disk);
            }
            Action::StateChanged(st) => {
                let node_id = self.link(i).node_id;
                let was_connected = self
                    .core
                    .peers
                    .iter()
                    .find(|p| p.node_id == node_id)
                    .is_some_and(|p| p.conn == ConnState::Connected);
                if was_connected && st.conn != ConnState::Connected {
                    self.primary_lost_peer(slot);
                }
                if let Some(p) = self.core.peers.iter_mut().find(|p| p.node_id == node_id) {
                    p.conn = st.conn;
                    p.repl = st.repl;
                    p.role = st.peer_role;
                    p.peer_disk = st.peer_disk;
                }
                if st.repl == ReplState::Established {
                    self.flush_bitmap_if_dirty();
                }
            }
            Action::SizeAgreed { size_bytes } => {
                tracing::info!(resource = %name, peer = self.link(i).node_id, size_bytes, "size agreed");
            }
            Action::Log(text) => {
                tracing::info!(resource = %name, peer = self.link(i).node_id, "{text}")
            }
            Action::Warn(text) => {
                tracing::warn!(resource = %name, peer = self.link(i).node_id, "{text}")
            }
            other => tracing::error!(resource = %name, action = ?other, "unhandled peer action"),
        }
    }

    pub(in crate::daemon::actor) fn announce_disk_change(&mut self) {
        let disk = self.core.disk;
        let Some(p) = self.peers.as_mut() else { return };
        if p.announced_disk == disk {
            return;
        }
        p.announced_disk = disk;
        let n = p.links.len();
        for i in 0..n {
            self.feed(i, Event::LocalDiskChanged { disk });
        }
    }

    /// Our disk state changed because of peer `from`: the other peers learn it.
    pub(super) fn tell_peers_disk(&mut self, from: usize, disk: DiskState) {
        if let Some(p) = self.peers.as_mut() {
            p.announced_disk = disk;
        }
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        for j in (0..n).filter(|j| *j != from) {
            self.feed(j, Event::LocalDiskChanged { disk });
        }
    }

    /// A Primary lost the connection to the peer in `slot`: a new data
    /// generation starts and the old one becomes that peer's bitmap UUID,
    /// so the next handshake finds a bitmap-based resync (guide 23.2).
    pub(super) fn primary_lost_peer(&mut self, slot: usize) {
        if self.start_generation_without(slot) {
            tracing::info!(resource = %self.core.name, slot, "peer lost while Primary: new data generation");
            self.announce_generations(None);
        }
    }

    /// The peer in `slot` no longer holds our data (connection lost, or it
    /// failed a replicated write). A Primary starts a new data generation:
    /// the old one becomes the bitmap UUID of `slot` and of every peer not
    /// connected; persisted before returning. True if it started one; the
    /// caller announces it to the connected peers.
    pub(super) fn start_generation_without(&mut self, slot: usize) -> bool {
        if self.core.role != Role::Primary {
            return false;
        }
        let Some(md) = self.core.md.as_mut() else {
            return false;
        };
        if md.gens.bitmaps.get(slot).is_none_or(|b| *b != 0) {
            return false; // the bitmap already tracks an older generation
        }
        let new_uuid = match crate::daemon::md::random_uuid() {
            Ok(u) if u != md.gens.current => u,
            Ok(_) | Err(_) => {
                tracing::error!(resource = %self.core.name, "cannot generate a new generation UUID");
                return false;
            }
        };
        // The old generation goes to the bitmap UUID of `slot` and of every
        // peer that is not connected; the connected ones follow the new
        // current UUID (Event::GenerationsChanged), so their bitmaps keep
        // tracking nothing.
        let without: Vec<usize> = self
            .peers
            .as_ref()
            .map(|p| {
                p.links
                    .iter()
                    .filter(|l| l.slot == slot || l.peer.status().conn != ConnState::Connected)
                    .map(|l| l.slot)
                    .collect()
            })
            .unwrap_or_default();
        md.gens.start_new_generation(new_uuid, &without);
        self.persist_md();
        true
    }

    /// Our GI tuple changed outside a connection: every peer (except
    /// `except`) learns its view of it.
    pub(super) fn announce_generations(&mut self, except: Option<usize>) {
        self.feed_tuple(except, |generations| Event::GenerationsChanged {
            generations,
        });
    }

    /// A resync from the peer of link `from` replaced our data: every other
    /// peer learns the new tuple (`Event::ResyncedFromAnotherPeer`).
    fn announce_resynced_data(&mut self, from: usize) {
        self.feed_tuple(Some(from), |generations| Event::ResyncedFromAnotherPeer {
            generations,
        });
    }

    /// Feeds every link but `except` the event `make` builds from our GI
    /// tuple as it concerns that link's slot.
    fn feed_tuple(&mut self, except: Option<usize>, make: impl Fn(GiView) -> Event<'static>) {
        let size = self.data_size_bytes();
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        for j in (0..n).filter(|j| Some(*j) != except) {
            let generations = local_state(&self.core, self.link(j).slot, size).generations;
            self.feed(j, make(generations));
        }
    }

    pub(in crate::daemon) fn persist_md(&mut self) {
        if let Err(e) = self.try_persist_md() {
            tracing::error!(resource = %self.core.name, error = %e, "metadata write failed");
        }
    }

    /// Writes the core's metadata view to the superblock (nothing to do
    /// without metadata or a store).
    pub(in crate::daemon) fn try_persist_md(&mut self) -> Result<(), drbdd_metadata::MetaError> {
        let Some(view) = self.core.md.clone() else {
            return Ok(());
        };
        self.with_store(|s| s.update_superblock(|sb| crate::daemon::md::apply_view(sb, &view)))
            .unwrap_or(Ok(()))
    }
}
