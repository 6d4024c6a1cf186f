//! Executes what the replication core asks for, the way the daemon would:
//! packets onto the simulated wire, disk I/O onto the simulated disk, bitmap
//! and generation changes into the real metadata store; and feeds the I/O
//! completions back.
//!
//! Owns: the caller's side of the `Peer` contract. Must never: second-guess a
//! core decision (a wrong decision must reach the invariant checks).

use drbdd_metadata::MetaError;
use drbdd_replication::ack::PeerOutcome;
use drbdd_replication::peer::{Action, Event, GiUpdate};
use drbdd_replication::state::{ConnState, DiskState};
use drbdd_replication::wire::{FrameCrc, DATA_DISCARD, DATA_FUA, DATA_ZEROES};

use crate::disk::{decode_blocks, encode_block, BLOCK_BYTES};
use crate::node::slot_of;
use crate::world::{Io, World};

/// What one batch of actions contained that the checks care about.
#[derive(Debug, Default)]
struct BatchFacts {
    handshake_done: bool,
    split_brain: bool,
    /// A new data generation the peer must learn once this batch is done
    /// (not in the middle of it: packets of the batch would follow packets
    /// of the announcement).
    announce_generations: bool,
}

impl World {
    /// Feeds one event to node `n`'s peer for `r` and executes its actions.
    pub(crate) fn peer_event(&mut self, n: usize, r: usize, event: Event<'_>) {
        if !self.nodes[n].alive {
            return;
        }
        let Some(peer) = self.nodes[n].peers.get_mut(&r) else {
            return;
        };
        let actions = peer.handle(event);
        self.apply(n, r, actions);
    }

    fn apply(&mut self, n: usize, r: usize, actions: Vec<Action>) {
        let mut facts = BatchFacts::default();
        // Requests complete upward only after everything else of the batch
        // (a new data generation after a lost peer) is durable: an
        // acknowledged write must never depend on metadata a crash loses.
        let (completions, rest): (Vec<Action>, Vec<Action>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::CompleteWrite { .. }));
        for action in rest.into_iter().chain(completions) {
            if !self.nodes[n].alive || self.failure.is_some() {
                return;
            }
            self.log(n, || format!("->n{r} {}", short(&action)));
            self.execute(n, r, action, &mut facts);
        }
        if facts.announce_generations {
            let generations = self.nodes[n].local_state(r).generations;
            self.peer_event(
                n,
                r,
                drbdd_replication::peer::Event::GenerationsChanged { generations },
            );
        }
        if facts.handshake_done {
            self.stats.handshakes += 1;
            // Only a handshake both ends still take part in decides
            // anything (the peer may have dropped it already).
            let live = self
                .links
                .get(&crate::world::key(n, r))
                .is_some_and(|l| l.open[0] && l.open[1]);
            if live {
                self.model_check_split_brain_detected(n, r, facts.split_brain);
            }
        }
    }

    fn execute(&mut self, n: usize, r: usize, action: Action, facts: &mut BatchFacts) {
        let slot = slot_of(n, r);
        match action {
            Action::Send(p) => {
                let crc = self.nodes[n]
                    .peers
                    .get(&r)
                    .map_or(FrameCrc::WholePayload, |peer| peer.frame_crc());
                let mut bytes = Vec::new();
                p.encode_framed(&mut bytes, crc);
                self.send(n, r, bytes);
            }
            Action::CompleteWrite { id, outcome } => self.leg_done(n, r, id, outcome),
            Action::PeerWriteFailed => {
                facts.announce_generations |= self.primary_lost_peer_copy(n, r, slot);
            }
            Action::MarkOutOfSync {
                offset_bytes,
                len_bytes,
            } => {
                if let Some(meta) = self.nodes[n].meta.as_mut() {
                    meta.bitmap_set_range(slot, offset_bytes, len_bytes);
                }
            }
            Action::MarkInSync {
                offset_bytes,
                len_bytes,
            } => {
                if let Some(meta) = self.nodes[n].meta.as_mut() {
                    meta.bitmap_clear_range(slot, offset_bytes, len_bytes);
                }
                self.nodes[n].bits_cleared = true;
            }
            Action::SubmitPeerWrite {
                seq,
                offset_bytes,
                len_bytes,
                flags,
                data,
            } => self.submit_peer_write(n, r, seq, offset_bytes, len_bytes, flags, &data),
            Action::SubmitPeerFlush { epoch } => {
                self.submit_io(n, Io::PeerFlush { remote: r, epoch })
            }
            Action::ReadForResync {
                id,
                offset_bytes,
                len_bytes,
            } => {
                let ok = !self.rng.chance(self.cfg.faults.eio_permille);
                if !ok {
                    self.stats.eio_resync_reads += 1;
                }
                let io = Io::ResyncRead {
                    remote: r,
                    id,
                    block: offset_bytes / BLOCK_BYTES,
                    blocks: u64::from(len_bytes).div_ceil(BLOCK_BYTES),
                    ok,
                };
                self.submit_io(n, io);
            }
            Action::SubmitResyncWrite {
                id,
                offset_bytes,
                data,
            } => match decode_blocks(&data) {
                Some(stamps) => {
                    let block = offset_bytes / BLOCK_BYTES;
                    self.submit_io(
                        n,
                        Io::ResyncWrite {
                            remote: r,
                            id,
                            block,
                            stamps,
                        },
                    );
                }
                None => {
                    self.violation(format!("n{n}: resync write from n{r} carries corrupt data"))
                }
            },
            Action::UpdateGenerations(u) => self.update_generations(n, r, u),
            Action::LocalDisk(d) => self.local_disk(n, r, d),
            Action::StateChanged(st) => self.state_changed(n, r, st),
            Action::SizeAgreed { .. } => {}
            Action::Log(s) | Action::Warn(s) => self.note_log(n, r, &s, facts),
            Action::Disconnect { .. } => self.close_side(n, r),
        }
    }

    /// The core's log lines that the checks and counters care about.
    fn note_log(&mut self, n: usize, r: usize, s: &str, facts: &mut BatchFacts) {
        if s.contains("unrelated data") {
            // Refused, not merged: it counts as detected.
            facts.split_brain = true;
            self.stats.unrelated_data_refusals += 1;
            self.model.unrelated.insert(crate::world::key(n, r));
        }
        if s.starts_with("handshake with node") {
            facts.handshake_done = true;
        }
        if s.contains("Split-Brain detected") {
            facts.split_brain = true;
            self.stats.split_brains_detected += 1;
            self.model.sb_declared.insert(crate::world::key(n, r));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit_peer_write(
        &mut self,
        n: usize,
        r: usize,
        seq: u64,
        offset_bytes: u64,
        len_bytes: u32,
        flags: u32,
        data: &[u8],
    ) {
        let blocks = u64::from(len_bytes).div_ceil(BLOCK_BYTES);
        let stamps = if flags & (DATA_DISCARD | DATA_ZEROES) != 0 {
            vec![0; usize::try_from(blocks).unwrap_or(0)]
        } else if let Some(s) = decode_blocks(data) {
            s
        } else {
            self.violation(format!(
                "n{n}: replicated write from n{r} carries corrupt data"
            ));
            return;
        };
        // Secondaries log peer writes in their activity log too.
        if let Err(e) = self.al_activate(n) {
            self.md_failure(n, &e);
            return;
        }
        let ok = !self.rng.chance(self.cfg.faults.eio_permille);
        if !ok {
            self.stats.eio_peer_writes += 1;
        }
        let fua = flags & DATA_FUA != 0;
        let block = offset_bytes / BLOCK_BYTES;
        self.submit_io(
            n,
            Io::PeerWrite {
                remote: r,
                seq,
                block,
                stamps,
                fua,
                ok,
            },
        );
    }

    pub(crate) fn al_activate(&mut self, n: usize) -> Result<(), MetaError> {
        match self.nodes[n].meta.as_mut() {
            Some(meta) => meta.al_activate(&[0]).map(|_| ()),
            None => Ok(()), // down: nothing is submitted anyway
        }
    }

    pub(crate) fn md_failure(&mut self, n: usize, e: &MetaError) {
        self.stats.md_write_failures += 1;
        let why = format!("metadata I/O failed: {e}");
        self.crash(n, &why);
    }

    /// Persists the superblock; a failing metadata device takes the node down.
    /// The bitmap goes out first (bits set before a generation or disk
    /// state change must not be lost with it, as DRBD writes the bitmap at
    /// resync start), and cleared bits only after the data they vouch for.
    pub(crate) fn persist(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return; // a metadata failure earlier in this batch took it down
        }
        if let Err(e) = self.write_out_bitmap(n) {
            self.md_failure(n, &e);
            return;
        }
        if let Err(e) = self.nodes[n].persist() {
            self.md_failure(n, &e);
        }
    }

    pub(crate) fn write_out_bitmap(&mut self, n: usize) -> Result<(), MetaError> {
        if std::mem::take(&mut self.nodes[n].bits_cleared) {
            self.nodes[n].disk.flush();
        }
        match self.nodes[n].meta.as_mut() {
            Some(meta) => meta.bitmap_flush(),
            None => Ok(()),
        }
    }

    fn update_generations(&mut self, n: usize, r: usize, u: GiUpdate) {
        let slot = slot_of(n, r);
        u.apply(&mut self.nodes[n].md_mut().gens, slot);
        match u {
            GiUpdate::ResyncStartedAsTarget { .. } => self.model_resync_started(n, r),
            GiUpdate::ResyncFinishedAsTarget { .. } => {
                self.stats.resyncs_finished += 1;
                self.model_resync_finished(n, r);
                // As the daemon's `announce_resynced_data`.
                for other in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
                    if other != r {
                        let generations = self.nodes[n].local_state(other).generations;
                        let event =
                            drbdd_replication::peer::Event::ResyncedFromAnotherPeer { generations };
                        self.peer_event(n, other, event);
                    }
                }
            }
            _ => {}
        }
        self.persist(n);
    }

    fn local_disk(&mut self, n: usize, from: usize, d: DiskState) {
        let node = &mut self.nodes[n];
        node.core.disk = d;
        let md = node.md_mut();
        match d {
            DiskState::Inconsistent => {
                md.consistent = false;
                md.was_up_to_date = false;
            }
            DiskState::UpToDate => {
                // The resync data must be durable before the flags say so.
                node.disk.flush();
                let md = node.md_mut();
                md.consistent = true;
                md.was_up_to_date = true;
                md.outdated = false;
            }
            DiskState::Outdated => md.outdated = true,
            _ => {}
        }
        self.persist(n);
        // As the daemon's `tell_peers_disk`: every other peer learns it (a
        // handshake running there starts over with the new state).
        for other in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
            if other != from {
                let event = drbdd_replication::peer::Event::LocalDiskChanged { disk: d };
                self.peer_event(n, other, event);
            }
        }
    }

    fn state_changed(&mut self, n: usize, r: usize, st: drbdd_replication::peer::PeerStatus) {
        let slot = slot_of(n, r);
        let primary = self.nodes[n].is_primary();
        let Some(ps) = self.nodes[n].core.peers.iter_mut().find(|p| p.slot == slot) else {
            return;
        };
        let was = ps.conn;
        ps.conn = st.conn;
        ps.repl = st.repl;
        ps.role = st.peer_role;
        ps.peer_disk = st.peer_disk;
        if was == ConnState::Connected && st.conn != ConnState::Connected && primary {
            self.primary_lost_peer(n, r, slot);
        }
    }

    /// A primary that loses a peer following its writes starts a new data
    /// generation, so the peer's stale data is recognised later.
    fn primary_lost_peer(&mut self, n: usize, r: usize, slot: usize) {
        // Tracked only by one of our former generations (not by a sync
        // UUID left from a resync whose end we never saw): the same rule
        // as `ResourceCore` applies at promotion.
        let gens = &self.nodes[n].md().gens;
        let bitmap = gens.bitmaps[slot];
        if bitmap != 0 && gens.history.contains(&bitmap) {
            return;
        }
        // Core gap: a connected peer cannot learn a new current UUID
        // (`Peer::set_local` refuses while connected; DRBD sends the new
        // UUIDs). Workaround: every other peer is reconnected and so sees
        // the new generation in a fresh handshake; all their slots track
        // the old generation from now on.
        let others: Vec<usize> = self
            .remotes(n)
            .into_iter()
            .filter(|&o| o != r && !self.links[&crate::world::key(n, o)].down())
            .collect();
        let all_slots: Vec<usize> = self.remotes(n).iter().map(|&o| slot_of(n, o)).collect();
        let uuid = self.rng.uuid();
        self.nodes[n]
            .md_mut()
            .gens
            .start_new_generation(uuid, &all_slots);
        self.persist(n);
        for other in others {
            self.log(n, || {
                format!("reconnecting n{other} to announce the new generation")
            });
            self.reset_link(n, other);
        }
    }

    /// A connected peer could not write a write we replicated (NegAck): as
    /// for a lost connection, a Primary starts a new data generation before
    /// the write completes upward. True if it did: the peer stays connected
    /// and learns our new tuple once the batch is done (it does not follow
    /// it: its disk left UpToDate before it sent the NegAck).
    fn primary_lost_peer_copy(&mut self, n: usize, r: usize, slot: usize) -> bool {
        if !self.nodes[n].is_primary() {
            return false;
        }
        let before = self.nodes[n].md().gens.current;
        self.primary_lost_peer(n, r, slot);
        let started = self.nodes[n].alive && self.nodes[n].md().gens.current != before;
        if started {
            self.log(n, || {
                format!("n{r} failed a replicated write: new data generation")
            });
        }
        started
    }

    /// The node's own on-io-error policy after a failed replicated write:
    /// its data is known stale, so it must not stay UpToDate (it could be
    /// promoted). DRBD detaches (`on-io-error detach`); the simulator, which
    /// does not model Diskless nodes, outdates the disk until a resync.
    fn outdate_after_write_error(&mut self, n: usize) {
        if !self.nodes[n].alive || self.nodes[n].core.disk != DiskState::UpToDate {
            return;
        }
        self.log(n, || {
            "write error on a replicated write: disk Outdated".into()
        });
        self.nodes[n].core.disk = DiskState::Outdated;
        self.nodes[n].md_mut().outdated = true;
        self.persist(n);
        for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
            let event = drbdd_replication::peer::Event::LocalDiskChanged {
                disk: DiskState::Outdated,
            };
            self.peer_event(n, r, event);
        }
    }

    /// A peer leg of an application request ended.
    fn leg_done(&mut self, n: usize, r: usize, id: u64, outcome: PeerOutcome) {
        let Some(op) = self.nodes[n].ops.get_mut(&id) else {
            return;
        };
        if let Some(leg) = op.legs.get_mut(&r) {
            *leg = Some(outcome);
            if outcome == PeerOutcome::OutOfSync {
                op.oos_at_resync.insert(r, self.model.resync_starts[n][r]);
            }
        }
        self.maybe_complete(n, id);
    }

    fn app_write_done(&mut self, n: usize, id: u64, block: u64, stamp: u64, fua: bool) {
        self.log(n, || format!("local write {stamp} to block {block} done"));
        self.nodes[n].disk.write(block, stamp, fua);
        if let Some(meta) = self.nodes[n].meta.as_mut() {
            meta.al_release(&[0]);
        }
        if let Some(op) = self.nodes[n].ops.get_mut(&id) {
            op.local_done = true;
        }
        for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
            self.peer_event(n, r, drbdd_replication::peer::Event::LocalWriteDone { id });
        }
        self.maybe_complete(n, id);
    }

    /// A disk I/O completed on node `n`.
    pub(crate) fn disk_done(&mut self, n: usize, io: Io) {
        match io {
            Io::AppWrite {
                id,
                block,
                stamp,
                fua,
            } => self.app_write_done(n, id, block, stamp, fua),
            Io::AppFlush { id } => {
                self.nodes[n].disk.flush();
                if let Some(op) = self.nodes[n].ops.get_mut(&id) {
                    op.local_done = true;
                }
                self.maybe_complete(n, id);
            }
            Io::AppRead { id, block, eio } => self.read_done(n, id, block, eio),
            Io::PeerWrite {
                remote,
                seq,
                block,
                stamps,
                fua,
                ok,
            } => {
                if ok {
                    for (b, s) in (block..).zip(stamps) {
                        self.nodes[n].disk.write(b, s, fua);
                    }
                }
                if let Some(meta) = self.nodes[n].meta.as_mut() {
                    meta.al_release(&[0]);
                }
                if !ok {
                    // Durable before the NegAck leaves: a crash in between
                    // must not bring this node back UpToDate.
                    self.outdate_after_write_error(n);
                }
                self.peer_event(
                    n,
                    remote,
                    drbdd_replication::peer::Event::PeerWriteDone { seq, ok },
                );
            }
            Io::PeerFlush { remote, epoch } => {
                self.nodes[n].disk.flush();
                self.peer_event(
                    n,
                    remote,
                    drbdd_replication::peer::Event::PeerFlushDone { epoch },
                );
            }
            Io::ResyncRead {
                remote,
                id,
                block,
                blocks,
                ok,
            } => {
                let data = ok.then(|| {
                    let mut buf = Vec::new();
                    for b in block..block + blocks {
                        encode_block(self.nodes[n].disk.read(b), &mut buf);
                    }
                    buf
                });
                self.peer_event(
                    n,
                    remote,
                    drbdd_replication::peer::Event::ResyncReadDone { id, data },
                );
            }
            Io::ResyncWrite {
                remote,
                id,
                block,
                stamps,
            } => {
                for (b, s) in (block..).zip(stamps) {
                    self.nodes[n].disk.write(b, s, false);
                }
                self.peer_event(
                    n,
                    remote,
                    drbdd_replication::peer::Event::ResyncWriteDone { id },
                );
            }
        }
    }
}

/// A one-line rendering of an action without bulk payloads.
fn short(a: &Action) -> String {
    match a {
        Action::Send(p) => format!("send {}", p.name()),
        Action::SubmitPeerWrite {
            seq,
            offset_bytes,
            len_bytes,
            flags,
            ..
        } => {
            format!("SubmitPeerWrite seq {seq} off {offset_bytes} len {len_bytes} flags {flags}")
        }
        Action::SubmitResyncWrite {
            id,
            offset_bytes,
            data,
        } => {
            format!(
                "SubmitResyncWrite id {id} off {offset_bytes} len {}",
                data.len()
            )
        }
        other => format!("{other:?}"),
    }
}
