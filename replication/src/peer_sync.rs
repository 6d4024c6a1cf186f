//! Bitmap exchange and resync on a peer connection (part of `peer`).
//!
//! Owns: acting on the handshake's sync decision (including split-brain
//! policies), the WFBitMapS/T → SyncSource/SyncTarget → Established path, the
//! target's requests and the source's replies. Must never: read a block for
//! the target while a local application write to it is unfinished (the reply
//! could carry older data than the replicated write), or declare the target
//! UpToDate before every bit is clear and every resync write is on its disk.

use std::collections::{BTreeMap, VecDeque};

use super::{decision_is_source, planner_for, Action, GiUpdate, LocalState, Peer, PeerConfig};
use crate::generation::{
    is_empty_uuid, resolve_split_brain, Generations, SbResolution, SbSide, SyncDecision,
};
use crate::resync::{
    Progress, ProgressMeter, RateController, ReplyVerdict, ResyncPlanner, BLOCK_BYTES, RATE_STEP_MS,
};
use crate::state::{DiskState, ReplState, Role};
use crate::wire::{
    Packet, Payload, STATE_START_SYNC_SOURCE, STATE_START_SYNC_TARGET, STATE_SYNC_PAUSED,
};

/// Most RLE runs per bitmap chunk we send (keeps chunks far below the
/// payload limit: at most 10 bytes per run).
const BITMAP_RUNS_PER_CHUNK: usize = 4096;

/// Resync state of one connection.
#[derive(Debug)]
pub(super) struct SyncState {
    pub(super) planner: ResyncPlanner,
    rate: RateController,
    meter: Option<ProgressMeter>,
    bitmap_sent: bool,
    bitmap_received: bool,
    acked_bytes: u64,
    /// When a replicated application write last arrived (for `c-min-rate`).
    pub(super) last_app_io_ms: Option<u64>,
    /// Local read id -> (the target's request id, offset, length).
    source_reads: BTreeMap<u64, (u64, u64, u32)>,
    source_deferred: VecDeque<(u64, u64, u32)>,
    /// Ids of local I/O (reads) never repeat, so a completion from a
    /// connection that is gone cannot be mistaken for a current one.
    next_io_id: u64,
    max_requests: usize,
    cfg: PeerConfig,
}

impl SyncState {
    pub(super) fn new(cfg: &PeerConfig) -> Self {
        let (planner, rate) = planner_for(cfg);
        Self {
            planner,
            rate,
            meter: None,
            bitmap_sent: false,
            bitmap_received: false,
            acked_bytes: 0,
            last_app_io_ms: None,
            source_reads: BTreeMap::new(),
            source_deferred: VecDeque::new(),
            next_io_id: 1,
            max_requests: cfg.max_resync_requests,
            cfg: cfg.clone(),
        }
    }

    /// Forgets the connection's resync state. Request and I/O ids keep
    /// counting up: completions of the old connection's I/O may still come.
    pub(super) fn reset(&mut self) {
        let mut planner = std::mem::replace(&mut self.planner, ResyncPlanner::new(1, 4096));
        planner.reset();
        let next_io_id = self.next_io_id;
        *self = Self::new(&self.cfg);
        self.planner = planner;
        self.next_io_id = next_io_id;
    }

    fn progress(&mut self, now_ms: u64, remaining_blocks: u64) -> Option<Progress> {
        self.meter
            .as_mut()
            .map(|m| m.update(now_ms, remaining_blocks))
    }
}

impl Peer {
    /// Samples resync progress. The target counts its bitmap; the source
    /// (whose bitmap only clears at the end) counts the blocks it sent.
    pub(super) fn record_progress(&mut self) -> Option<Progress> {
        let remaining = match self.status.repl {
            ReplState::SyncTarget | ReplState::PausedSyncT => self.bitmap.count(),
            ReplState::SyncSource | ReplState::PausedSyncS => {
                let sent_blocks = self.sync.acked_bytes / BLOCK_BYTES;
                self.sync
                    .meter
                    .as_ref()?
                    .total_blocks()
                    .saturating_sub(sent_blocks)
            }
            _ => return None,
        };
        self.sync.progress(self.now_ms, remaining)
    }

    pub(super) fn start_after_handshake(&mut self, decision: SyncDecision, out: &mut Vec<Action>) {
        let no_disk = self.local.disk == DiskState::Diskless
            || self.local.backing_bytes == 0
            || self
                .agreement
                .as_ref()
                .is_some_and(|a| a.peer.disk == DiskState::Diskless);
        if no_disk {
            if decision != SyncDecision::NoSync {
                out.push(Action::Log(format!(
                    "one node is diskless: no resync ({})",
                    decision.describe()
                )));
            }
            return;
        }
        // The agreed size is at most our own device, so this stays bounded.
        let size_bytes = self.agreement.as_ref().map_or(0, |a| a.size_bytes);
        let blocks = size_bytes.div_ceil(BLOCK_BYTES);
        if self.bitmap.total_blocks() != blocks {
            self.bitmap = self.bitmap.resized(blocks);
        }
        let discard_requested = self.discard_my_data;
        self.discard_my_data = false;
        let peer_disk = self.agreement.as_ref().map(|a| a.peer.disk);
        let peer_dirty = self.agreement.as_ref().map_or(0, |a| a.peer.dirty_blocks);
        match decision {
            // Same generation, no bitmap on either side, and the peer is
            // UpToDate: our Outdated/Consistent data is the same data, so it
            // is UpToDate again (guide 11.2.9, 23.2).
            SyncDecision::NoSync
                if matches!(self.local.disk, DiskState::Outdated | DiskState::Consistent)
                    && peer_disk == Some(DiskState::UpToDate)
                    && self.bitmap.count() == 0
                    && peer_dirty == 0 =>
            {
                self.up_to_date_by_peer(out);
            }
            // One side Inconsistent, the other UpToDate, and the generations
            // say "no resync" (a target crashed between adopting the source's
            // generation and recording UpToDate) or make the Inconsistent side
            // the source (an interrupted resync whose sync UUID the other side
            // no longer tracks): the disk states decide, as in DRBD
            // ("becoming sync target due to disk states"); both sides see the
            // same states (drbdd-sim seeds 3829, 13583). Likewise for
            // "unrelated" or split-brain tuples: an Inconsistent node's
            // current UUID may be the sync UUID of a source that is gone (a
            // sync target of a lost Primary meeting another, already
            // finished target), and Inconsistent data is nothing to keep.
            // The generations make us the source, but we are Inconsistent
            // because another peer is resyncing us right now (an operator's
            // `invalidate`, say): our lineage is ahead of this peer, whose
            // "UpToDate" data is older, so taking it (the rule below) would
            // mix stale blocks into ours (drbdd-sim seed 1518258). DRBD:
            // "I shall become SyncSource, but I am inconsistent!" — drop the
            // connection and retry; once that resync is done we are the
            // source.
            SyncDecision::SourceBitmap | SyncDecision::SourceFull
                if self.local.disk == DiskState::Inconsistent
                    && self.local.sync_target_of_another =>
            {
                let why = "this node should become sync source but is Inconsistent while another peer resyncs it; retrying after that resync";
                out.push(Action::Warn(why.into()));
                self.lose_connection(why.into(), true, out);
            }
            SyncDecision::NoSync
            | SyncDecision::SourceBitmap
            | SyncDecision::SourceFull
            | SyncDecision::Unrelated
            | SyncDecision::SplitBrain { .. }
                if self.local.disk == DiskState::Inconsistent
                    && peer_disk == Some(DiskState::UpToDate) =>
            {
                self.start_resync(false, true, out);
            }
            SyncDecision::NoSync
            | SyncDecision::TargetBitmap
            | SyncDecision::TargetFull
            | SyncDecision::Unrelated
            | SyncDecision::SplitBrain { .. }
                if self.local.disk == DiskState::UpToDate
                    && peer_disk == Some(DiskState::Inconsistent) =>
            {
                self.start_resync(true, true, out);
            }
            // Neither node has usable data: nothing can flow between them,
            // and that is no reason to give up the connection (DRBD stays
            // Established with both Inconsistent).
            SyncDecision::NoSync
            | SyncDecision::BothJustCreated
            | SyncDecision::BothInconsistent => {}
            SyncDecision::SourceBitmap
            | SyncDecision::SourceFull
            | SyncDecision::TargetBitmap
            | SyncDecision::TargetFull => {
                let full = matches!(
                    decision,
                    SyncDecision::SourceFull | SyncDecision::TargetFull
                );
                self.start_resync(decision_is_source(decision), full, out);
            }
            SyncDecision::SplitBrain { shared_parent } => {
                self.on_split_brain(shared_parent, discard_requested, out);
            }
            SyncDecision::Unrelated => self.refuse(decision.describe().into(), out),
        }
    }

    /// Our data equals the UpToDate peer's: become UpToDate and tell it.
    fn up_to_date_by_peer(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Log(format!(
            "same data generation as the UpToDate peer: disk {} -> UpToDate",
            self.local.disk
        )));
        self.local.disk = DiskState::UpToDate;
        out.push(Action::LocalDisk(DiskState::UpToDate));
        out.push(Action::Send(self.state_packet(0)));
    }

    fn refuse(&mut self, reason: String, out: &mut Vec<Action>) {
        out.push(Action::Warn(format!("{reason}; dropping the connection")));
        out.push(Action::Send(Packet::Disconnect {
            reason: reason.clone(),
        }));
        self.lose_connection(reason, false, out);
    }

    /// Starts the bitmap exchange unless the resync must not happen.
    fn start_resync(&mut self, source: bool, full: bool, out: &mut Vec<Action>) {
        match self.resync_refusal(source) {
            Some(reason) => self.refuse(reason, out),
            None => self.begin_bitmap_exchange(source, full, out),
        }
    }

    /// Admin-initiated full resync on an idle connection.
    pub(super) fn start_full_sync(
        &mut self,
        as_source: bool,
        local: LocalState,
        out: &mut Vec<Action>,
    ) {
        if !self.established() || self.status.repl != ReplState::Established {
            let why = format!(
                "cannot start a full resync: connection {} / {}",
                self.status.conn, self.status.repl
            );
            out.push(Action::Warn(why));
            return;
        }
        let gi = local.generations;
        let previous = std::mem::replace(&mut self.local, local);
        let previous_gens = std::mem::replace(
            &mut self.gens,
            Generations {
                current: gi.current,
                bitmaps: vec![gi.bitmap],
                history: gi.history,
            },
        );
        if let Some(reason) = self.resync_refusal(as_source) {
            self.local = previous;
            self.gens = previous_gens;
            out.push(Action::Warn(reason));
            return;
        }
        out.push(Action::Send(self.gi_packet()));
        let flag = if as_source {
            STATE_START_SYNC_SOURCE
        } else {
            STATE_START_SYNC_TARGET
        };
        out.push(Action::Send(self.state_packet(flag)));
        self.begin_bitmap_exchange(as_source, true, out);
    }

    /// The peer started a full resync; we take the other side.
    pub(super) fn peer_started_full_sync(&mut self, peer_is_source: bool, out: &mut Vec<Action>) {
        if self.status.repl != ReplState::Established {
            return self.protocol_error(
                format!("peer started a resync in state {}", self.status.repl),
                out,
            );
        }
        self.start_resync(!peer_is_source, false, out);
    }

    /// Why this resync must not start (both sides reach the same verdict).
    fn resync_refusal(&self, local_is_source: bool) -> Option<String> {
        let peer = self.agreement.as_ref()?.peer;
        let (source_disk, target_role) = if local_is_source {
            (self.local.disk, peer.role)
        } else {
            (peer.disk, self.local.role)
        };
        if self.local.disk == DiskState::Diskless
            || peer.disk == DiskState::Diskless
            || self.bitmap.total_blocks() == 0
        {
            return Some("refusing to resync: a diskless node has no data to sync".into());
        }
        if source_disk == DiskState::Inconsistent {
            return Some(
                "refusing to resync: the sync source's data is Inconsistent; \
                 make the node with good data primary (`primary --force`) first"
                    .into(),
            );
        }
        if target_role == Role::Primary {
            return Some(
                "refusing to resync: the node whose data would be overwritten is Primary; \
                 demote it (`secondary`) and reconnect"
                    .into(),
            );
        }
        None
    }

    /// Split brain: `connect --discard-my-data` on one side decides;
    /// otherwise the after-sb policies (only with a shared parent).
    fn on_split_brain(&mut self, shared_parent: bool, local_discards: bool, out: &mut Vec<Action>) {
        let agreement = self
            .agreement
            .as_ref()
            .expect("split brain is decided after the handshake");
        let local = SbSide {
            node_id: self.cfg.handshake.local_node_id,
            primary: self.local.role == Role::Primary,
            changed_blocks: self.bitmap.count(),
            promoted_at_ms: self.local.promoted_at_ms,
        };
        let peer = SbSide {
            node_id: agreement.peer_node_id,
            primary: agreement.peer.role == Role::Primary,
            changed_blocks: agreement.peer.dirty_blocks,
            promoted_at_ms: agreement.peer.promoted_at_ms,
        };
        let peer_discards = agreement.peer.discard_my_data;
        out.push(Action::Warn(format!(
            "Split-Brain detected with node {}",
            peer.node_id
        )));
        // Without a shared parent the bitmaps track different bases: full sync.
        let full = !shared_parent;
        match (local_discards, peer_discards) {
            (true, false) => {
                out.push(Action::Warn(
                    "split brain resolved manually: discarding our changes".into(),
                ));
                return self.start_resync(false, full, out);
            }
            (false, true) => {
                out.push(Action::Warn(
                    "split brain resolved manually: the peer discards its changes".into(),
                ));
                return self.start_resync(true, full, out);
            }
            (true, true) => {
                return self.refuse(
                    "split brain: both nodes were told to discard their data".into(),
                    out,
                );
            }
            (false, false) if !shared_parent => {
                let reason = format!(
                    "{}; run `connect --discard-my-data` on the victim",
                    SyncDecision::SplitBrain { shared_parent }.describe()
                );
                return self.refuse(reason, out);
            }
            (false, false) => {}
        }
        match resolve_split_brain(&self.cfg.sb_policy, &local, &peer) {
            SbResolution::LocalIsVictim { policy } => {
                out.push(Action::Warn(format!(
                    "split brain resolved by {policy}: discarding our changes"
                )));
                self.start_resync(false, false, out);
            }
            SbResolution::PeerIsVictim { policy } => {
                out.push(Action::Warn(format!(
                    "split brain resolved by {policy}: the peer discards its changes"
                )));
                self.start_resync(true, false, out);
            }
            SbResolution::Disconnect { reason } => {
                out.push(Action::Send(Packet::Disconnect {
                    reason: "split brain".into(),
                }));
                self.lose_connection(reason, false, out);
            }
        }
    }

    fn begin_bitmap_exchange(&mut self, source: bool, full: bool, out: &mut Vec<Action>) {
        if full {
            self.bitmap.set_all();
            let len_bytes = self.bitmap.total_blocks() * BLOCK_BYTES;
            out.push(Action::MarkOutOfSync {
                offset_bytes: 0,
                len_bytes,
            });
        }
        let repl = if source {
            ReplState::WFBitMapS
        } else {
            ReplState::WFBitMapT
        };
        self.set_status(out, |s| s.repl = repl);
        for chunk in self.bitmap.to_chunks(BITMAP_RUNS_PER_CHUNK) {
            out.push(Action::Send(chunk));
        }
        self.sync.bitmap_sent = true;
        self.maybe_start_sync(out);
    }

    pub(super) fn on_bitmap_chunk(
        &mut self,
        start_bit: u64,
        total_bits: u64,
        last: bool,
        runs: &[u64],
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if !matches!(
            self.status.repl,
            ReplState::WFBitMapS | ReplState::WFBitMapT
        ) || self.sync.bitmap_received
        {
            return Err(format!(
                "bitmap chunk in replication state {}",
                self.status.repl
            ));
        }
        if !self.bitmap.merge_chunk(start_bit, total_bits, runs) {
            return Err(format!(
                "bitmap chunk for {total_bits} blocks does not fit our {}",
                self.bitmap.total_blocks()
            ));
        }
        let mut pos = start_bit;
        for (i, run) in runs.iter().enumerate() {
            if i % 2 == 1 && *run > 0 {
                out.push(Action::MarkOutOfSync {
                    offset_bytes: pos * BLOCK_BYTES,
                    len_bytes: run * BLOCK_BYTES,
                });
            }
            pos += run;
        }
        if last {
            self.sync.bitmap_received = true;
            self.maybe_start_sync(out);
        }
        Ok(())
    }

    fn maybe_start_sync(&mut self, out: &mut Vec<Action>) {
        if !(self.sync.bitmap_sent && self.sync.bitmap_received)
            || self.status.repl != ReplState::WFBitMapS
        {
            if self.sync.bitmap_sent && self.sync.bitmap_received {
                self.set_status(out, |s| s.repl = ReplState::WFSyncUUID);
            }
            return;
        }
        let mut uuid = self.sync_uuid;
        if is_empty_uuid(uuid) || uuid == self.gens.current {
            uuid = self.gens.current.rotate_left(17) ^ 0x5a5a_0000_0000_0001;
        }
        let update = GiUpdate::ResyncStartedAsSource { sync_uuid: uuid };
        update.apply(&mut self.gens, 0);
        out.push(Action::UpdateGenerations(update));
        out.push(Action::Send(Packet::SyncUuid { uuid }));
        self.sync.meter = Some(ProgressMeter::new(self.bitmap.count()));
        out.push(Action::Log(format!(
            "resync as source: {} blocks out of sync",
            self.bitmap.count()
        )));
        self.set_status(out, |s| {
            s.repl = ReplState::SyncSource;
            s.peer_disk = DiskState::Inconsistent;
        });
        self.apply_pause(out);
    }

    pub(super) fn on_sync_uuid(&mut self, uuid: u64, out: &mut Vec<Action>) -> Result<(), String> {
        if self.status.repl != ReplState::WFSyncUUID || is_empty_uuid(uuid) {
            return Err(format!(
                "SyncUuid in replication state {}",
                self.status.repl
            ));
        }
        let update = GiUpdate::ResyncStartedAsTarget { sync_uuid: uuid };
        update.apply(&mut self.gens, 0);
        out.push(Action::UpdateGenerations(update));
        self.local.disk = DiskState::Inconsistent;
        out.push(Action::LocalDisk(DiskState::Inconsistent));
        self.sync.meter = Some(ProgressMeter::new(self.bitmap.count()));
        out.push(Action::Log(format!(
            "resync as target: {} blocks out of sync",
            self.bitmap.count()
        )));
        self.set_status(out, |s| s.repl = ReplState::SyncTarget);
        self.apply_pause(out);
        self.pump_resync(out);
        Ok(())
    }

    /// Sends as many resync requests as the window and rate allow.
    pub(super) fn pump_resync(&mut self, out: &mut Vec<Action>) {
        if self.status.repl != ReplState::SyncTarget {
            return;
        }
        let in_flight = self.sync.planner.in_flight_bytes();
        let app_io_active = self
            .sync
            .last_app_io_ms
            .is_some_and(|t| self.now_ms.saturating_sub(t) < RATE_STEP_MS);
        let budget =
            self.sync
                .rate
                .budget(self.now_ms, in_flight, self.sync.acked_bytes, app_io_active);
        let requests = self.sync.planner.next_requests(&self.bitmap, budget);
        for r in requests {
            self.sync.rate.spent(u64::from(r.len_bytes));
            out.push(Action::Send(Packet::ResyncRequest {
                id: r.id,
                offset_bytes: r.offset_bytes,
                len_bytes: r.len_bytes,
            }));
        }
        self.maybe_finish_target(out);
    }

    /// Our State packet, carrying the pause flag and `extra` flags.
    pub(super) fn state_packet(&self, extra: u32) -> Packet {
        let paused = if self.user_paused {
            STATE_SYNC_PAUSED
        } else {
            0
        };
        Packet::State {
            role: self.local.role,
            disk: self.local.disk,
            flags: paused | extra,
        }
    }

    /// Moves between SyncSource/SyncTarget and PausedSyncS/PausedSyncT when
    /// either node paused or resumed.
    pub(super) fn apply_pause(&mut self, out: &mut Vec<Action>) {
        let paused = self.user_paused || self.peer_paused;
        let repl = match (self.status.repl, paused) {
            (ReplState::SyncSource, true) => ReplState::PausedSyncS,
            (ReplState::SyncTarget, true) => ReplState::PausedSyncT,
            (ReplState::PausedSyncS, false) => ReplState::SyncSource,
            (ReplState::PausedSyncT, false) => ReplState::SyncTarget,
            (other, _) => other,
        };
        if repl != self.status.repl {
            let verb = if paused { "paused" } else { "resumed" };
            out.push(Action::Log(format!("resync {verb}")));
            self.set_status(out, |s| s.repl = repl);
            self.pump_resync(out);
        }
    }

    pub(super) fn target_reply(
        &mut self,
        id: u64,
        offset: u64,
        data: Payload,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if !matches!(
            self.status.repl,
            ReplState::SyncTarget | ReplState::PausedSyncT
        ) {
            return Err(format!(
                "resync reply in replication state {}",
                self.status.repl
            ));
        }
        match self.sync.planner.on_reply(id, offset, data.len()) {
            None => Err(format!(
                "resync reply {id} at {offset} does not match a request"
            )),
            Some(ReplyVerdict::Discard) => {
                out.push(Action::Log(format!("resync reply {id} at {offset} is older than an application write; requesting again")));
                self.pump_resync(out);
                Ok(())
            }
            Some(ReplyVerdict::Write { offset_bytes, .. }) => {
                out.push(Action::SubmitResyncWrite {
                    id,
                    offset_bytes,
                    data,
                });
                Ok(())
            }
        }
    }

    pub(super) fn target_neg_reply(
        &mut self,
        id: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if !self.sync.planner.on_neg_reply(id) {
            return Err(format!(
                "resync negative reply {id} does not match a request"
            ));
        }
        self.lose_connection(
            "the sync source could not read a block; will retry".into(),
            true,
            out,
        );
        Ok(())
    }

    pub(super) fn target_write_done(&mut self, id: u64, out: &mut Vec<Action>) {
        let Some((offset_bytes, len_bytes)) = self.sync.planner.write_done(id, &mut self.bitmap)
        else {
            return; // from a connection that is gone
        };
        out.push(Action::MarkInSync {
            offset_bytes,
            len_bytes,
        });
        self.sync.acked_bytes += len_bytes;
        self.record_progress();
        self.rx_release(out);
        self.pump_resync(out);
    }

    fn maybe_finish_target(&mut self, out: &mut Vec<Action>) {
        if !matches!(
            self.status.repl,
            ReplState::SyncTarget | ReplState::PausedSyncT
        ) || !self.sync.planner.is_finished(&self.bitmap)
        {
            return;
        }
        let source = self
            .agreement
            .as_ref()
            .expect("syncing implies an agreement")
            .peer
            .gi;
        if is_empty_uuid(source.current) {
            let reason = "the sync source announced no data generation".to_string();
            return self.protocol_error(reason, out);
        }
        out.push(Action::Send(Packet::ResyncFinished));
        let update = GiUpdate::ResyncFinishedAsTarget {
            source: Box::new(source),
        };
        update.apply(&mut self.gens, 0);
        out.push(Action::UpdateGenerations(update));
        self.local.disk = DiskState::UpToDate;
        out.push(Action::LocalDisk(DiskState::UpToDate));
        out.push(Action::Log(
            "resync finished: local disk is UpToDate".into(),
        ));
        self.sync.meter = None;
        self.set_status(out, |s| s.repl = ReplState::Established);
    }

    pub(super) fn source_request(
        &mut self,
        id: u64,
        offset: u64,
        len: u32,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if !matches!(
            self.status.repl,
            ReplState::SyncSource | ReplState::PausedSyncS
        ) {
            return Err(format!(
                "resync request in replication state {}",
                self.status.repl
            ));
        }
        let size = self.agreement.as_ref().map_or(0, |a| a.size_bytes);
        if offset.saturating_add(u64::from(len)) > size || len == 0 {
            return Err(format!(
                "resync request {offset}+{len} outside the device of {size} bytes"
            ));
        }
        if self.sync.source_reads.len() + self.sync.source_deferred.len()
            >= self.sync.max_requests.saturating_mul(2)
        {
            return Err("peer exceeded the resync request window".into());
        }
        self.sync.source_deferred.push_back((id, offset, len));
        self.source_retry_deferred(out);
        Ok(())
    }

    /// Issues deferred reads whose range has no unfinished write: neither
    /// a local one nor one received from this peer (the target, a former
    /// Primary, sent it before its request; read first, the reply would
    /// carry the older data over the target's acknowledged write — drbdd-sim
    /// seed 1957135).
    pub(super) fn source_retry_deferred(&mut self, out: &mut Vec<Action>) {
        let mut still = VecDeque::new();
        while let Some((id, offset, len)) = self.sync.source_deferred.pop_front() {
            if self.ack.overlaps_unfinished_local(offset, u64::from(len))
                || self.overlaps_local_unfinished(offset, u64::from(len))
                || self.rx.overlaps_unfinished(offset, u64::from(len))
            {
                still.push_back((id, offset, len));
            } else {
                let io_id = self.sync.next_io_id;
                self.sync.next_io_id += 1;
                self.sync.source_reads.insert(io_id, (id, offset, len));
                out.push(Action::ReadForResync {
                    id: io_id,
                    offset_bytes: offset,
                    len_bytes: len,
                });
            }
        }
        self.sync.source_deferred = still;
    }

    pub(super) fn source_read_done(
        &mut self,
        id: u64,
        data: Option<Vec<u8>>,
        out: &mut Vec<Action>,
    ) {
        let Some((id, offset_bytes, len)) = self.sync.source_reads.remove(&id) else {
            return; // from a connection that is gone
        };
        match data {
            Some(data) if u32::try_from(data.len()) == Ok(len) => {
                self.sync.acked_bytes += u64::from(len);
                out.push(Action::Send(Packet::ResyncReply {
                    id,
                    offset_bytes,
                    payload: data.into(),
                }));
            }
            _ => out.push(Action::Send(Packet::ResyncNegReply { id })),
        }
    }

    pub(super) fn source_finished(&mut self, out: &mut Vec<Action>) -> Result<(), String> {
        if !matches!(
            self.status.repl,
            ReplState::SyncSource | ReplState::PausedSyncS
        ) {
            return Err(format!(
                "ResyncFinished in replication state {}",
                self.status.repl
            ));
        }
        let update = GiUpdate::ResyncFinishedAsSource;
        update.apply(&mut self.gens, 0);
        out.push(Action::UpdateGenerations(update));
        self.bitmap.clear_all();
        out.push(Action::MarkInSync {
            offset_bytes: 0,
            len_bytes: self.bitmap.total_blocks() * BLOCK_BYTES,
        });
        out.push(Action::Log("resync finished: peer is UpToDate".into()));
        self.sync.meter = None;
        self.set_status(out, |s| {
            s.repl = ReplState::Established;
            s.peer_disk = DiskState::UpToDate;
        });
        Ok(())
    }
}
