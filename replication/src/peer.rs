//! The per-peer connection state machine: ties the handshake, the write
//! table, the receive path, bitmap exchange and resync together for one
//! connection (user's guide 11.2.7–11.2.9 for the state names).
//!
//! Owns: the connection state, replication state and peer disk state of one
//! peer, the byte stream to it, ping/ping-timeout, and every decision on that
//! connection. Must never: do I/O or read a clock. The caller feeds
//! [`Event`]s (with `now_ms` where time matters) to [`Peer::handle`] and
//! executes the returned [`Action`]s: send packets, submit disk I/O, persist
//! bitmap and generation changes, complete write legs, close the transport.
//! The caller reports I/O completions back as events.
//!
//! Composition: the resource state machine owns the local role and disk
//! state and the persistent GI tuple; this machine reports the changes it
//! makes on this connection ([`Action::UpdateGenerations`],
//! [`Action::LocalDisk`]) and the caller applies them.

use std::collections::{BTreeMap, BTreeSet};

const DRAIN_PEER_WRITE: u8 = 0;
const DRAIN_RESYNC_WRITE: u8 = 1;
/// Bytes buffered from a peer whose handshake waits for old writes.
const RX_BUFFER_MAX_BYTES: usize = 1 << 16;

use crate::ack::{AckTracker, WriteId};
use crate::generation::{Generations, GiView, SbPolicy, SyncDecision};
use crate::handshake::{Agreement, Handshake, HandshakeStep, NodeInfo};
use crate::resync::{RateController, ResyncPlanner, SyncBitmap};
use crate::state::{ConnState, DiskState, ReplState, Role};
use crate::wire::{self, Packet, NONCE_BYTES};

#[path = "peer_rx.rs"]
mod rx;
#[path = "peer_sync.rs"]
mod sync;
#[path = "peer_tx.rs"]
mod tx;

#[path = "peer_api.rs"]
mod api;
pub use api::{Action, Event, GiUpdate, LocalState, PeerConfig, PeerStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    Idle,
    Sent { at_ms: u64 },
}

/// One peer connection.
#[derive(Debug)]
pub struct Peer {
    cfg: PeerConfig,
    local: LocalState,
    gens: Generations,
    status: PeerStatus,
    now_ms: u64,
    handshake: Option<Handshake>,
    connected_at_ms: u64,
    agreement: Option<Agreement>,
    sync_uuid: u64,
    rx_buf: Vec<u8>,
    last_rx_ms: u64,
    ping: Ping,
    ack: AckTracker,
    /// Application writes whose local disk write is not done: id -> seq.
    local_pending: BTreeMap<WriteId, u64>,
    /// Every application write whose local disk write is not done, with
    /// its range (replicated or not, across connections): a resync read
    /// of such a range could send data older than the write.
    local_unfinished: BTreeMap<WriteId, (u64, u64)>,
    /// Admin `pause-sync` on this node (kept across connections).
    user_paused: bool,
    /// The peer announced a paused resync.
    peer_paused: bool,
    /// Set by `connect --discard-my-data` until the next handshake.
    discard_my_data: bool,
    /// Writes of a lost connection still on their way to our disk (kind, id).
    draining: BTreeSet<(u8, u64)>,
    /// A connection that waits for `draining` to empty before its handshake.
    pending_connect: Option<[u8; NONCE_BYTES]>,
    /// Writes waiting for room in the write table (bounded by max-buffers).
    tx_waiting: std::collections::VecDeque<tx::Waiting>,
    rx: rx::Receiver,
    bitmap: SyncBitmap,
    sync: sync::SyncState,
}

impl Peer {
    /// `bitmap` is this peer's out-of-sync bitmap as loaded from metadata.
    pub fn new(cfg: PeerConfig, local: LocalState, bitmap: SyncBitmap) -> Self {
        let gi = local.generations;
        let gens = Generations {
            current: gi.current,
            bitmaps: vec![gi.bitmap],
            history: gi.history,
        };
        let sync = sync::SyncState::new(&cfg);
        Self {
            ack: AckTracker::new(cfg.protocol, cfg.max_buffers),
            cfg,
            local,
            gens,
            status: PeerStatus {
                conn: ConnState::Connecting,
                repl: ReplState::Off,
                peer_role: Role::Unknown,
                peer_disk: DiskState::DUnknown,
            },
            now_ms: 0,
            handshake: None,
            connected_at_ms: 0,
            agreement: None,
            sync_uuid: 0,
            rx_buf: Vec::new(),
            last_rx_ms: 0,
            ping: Ping::Idle,
            local_pending: BTreeMap::new(),
            local_unfinished: BTreeMap::new(),
            tx_waiting: std::collections::VecDeque::new(),
            draining: BTreeSet::new(),
            discard_my_data: false,
            user_paused: false,
            peer_paused: false,
            pending_connect: None,
            rx: rx::Receiver::default(),
            bitmap,
            sync,
        }
    }

    /// Replaces what we announce at the next handshake (role, disk, sizes,
    /// generations) — e.g. after a promotion started a new data generation.
    /// Only while not connected: an established connection learns of role
    /// changes through [`Event::RoleChanged`].
    pub fn set_local(&mut self, local: LocalState) {
        assert!(
            self.handshake.is_none() && !self.established(),
            "set_local while connected"
        );
        let gi = local.generations;
        self.gens = Generations {
            current: gi.current,
            bitmaps: vec![gi.bitmap],
            history: gi.history,
        };
        self.local = local;
    }

    /// Changes the split-brain policies (configuration reload).
    pub fn set_sb_policy(&mut self, policy: SbPolicy) {
        self.cfg.sb_policy = policy;
    }

    pub fn status(&self) -> PeerStatus {
        self.status
    }

    /// Application writes and flushes waiting for room in the write table
    /// (`max-buffers`); they enter it as earlier entries retire, which
    /// needs their `LocalWriteDone` among other things.
    pub fn writes_waiting(&self) -> usize {
        self.tx_waiting.len()
    }

    /// Writes received from this peer that are not yet on our disk: held
    /// for write ordering, submitted and not completed, or submitted on a
    /// connection that is gone (replication and resync writes still
    /// draining). A node must not be promoted while any are: an application
    /// write to the same block could reach the disk first and then be
    /// overwritten by the former Primary's older data (drbdd-sim seeds
    /// 20135, 27624 and 228007).
    pub fn applying_peer_writes(&self) -> usize {
        self.rx.unfinished_writes() + self.draining.len()
    }

    /// This peer's out-of-sync bitmap (in memory).
    pub fn bitmap(&self) -> &SyncBitmap {
        &self.bitmap
    }

    /// The GI tuple after this connection's changes (slot 0 = this peer).
    pub fn generations(&self) -> &Generations {
        &self.gens
    }

    pub fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }

    /// What the frame CRC covers on this connection, in both directions: the
    /// caller encodes the packets of [`Action::Send`] with it. Before the
    /// handshake agrees, only control packets flow, for which both coverages
    /// are the same.
    pub fn frame_crc(&self) -> wire::FrameCrc {
        match &self.agreement {
            Some(a) => wire::FrameCrc::negotiated(self.cfg.handshake.features, a.peer_features),
            None => wire::FrameCrc::WholePayload,
        }
    }

    /// Resync progress (done/total, rate, ETA), while syncing.
    pub fn progress(&mut self) -> Option<crate::resync::Progress> {
        self.record_progress()
    }

    fn established(&self) -> bool {
        self.status.conn == ConnState::Connected
    }

    fn set_status(&mut self, out: &mut Vec<Action>, f: impl FnOnce(&mut PeerStatus)) {
        let before = self.status;
        f(&mut self.status);
        if self.status != before {
            out.push(Action::StateChanged(self.status));
        }
    }

    /// Feeds one event; returns what to do.
    pub fn handle(&mut self, event: Event<'_>) -> Vec<Action> {
        let mut out = self.handle_inner(event);
        if !self.tx_waiting.is_empty() && self.established() {
            self.tx_drain(&mut out);
        }
        out
    }

    fn handle_inner(&mut self, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Connected {
                now_ms,
                nonce,
                sync_uuid,
            } => self.on_connected(now_ms, nonce, sync_uuid, &mut out),
            Event::BytesReceived { now_ms, bytes } => self.on_bytes(now_ms, bytes, &mut out),
            Event::FrameReceived {
                now_ms,
                head,
                block,
            } => self.on_split_frame(now_ms, head, block, &mut out),
            Event::Tick { now_ms } => self.on_tick(now_ms, &mut out),
            Event::ConnectionLost { now_ms } => {
                self.now_ms = now_ms;
                self.lose_connection("connection lost".into(), true, &mut out);
            }
            Event::LocalWrite {
                id,
                offset_bytes,
                len_bytes,
                flags,
                data,
            } => {
                self.local_unfinished
                    .insert(id, (offset_bytes, u64::from(len_bytes)));
                let w = tx::Waiting::Write {
                    id,
                    offset_bytes,
                    len_bytes,
                    flags,
                    data,
                    local_done: false,
                };
                self.on_local_write(w, &mut out);
            }
            Event::LocalFlush { id } => self.on_local_flush(id, &mut out),
            Event::LocalWriteDone { id } => self.on_local_write_done(id, &mut out),
            Event::PeerWriteDone { seq, ok } => {
                if !self.drained((DRAIN_PEER_WRITE, seq), &mut out) {
                    self.rx_write_done(seq, ok, &mut out);
                }
            }
            Event::PeerFlushDone { epoch } => self.rx_flush_done(epoch, &mut out),
            Event::ResyncReadDone { id, data } => self.source_read_done(id, data, &mut out),
            Event::ResyncWriteDone { id } => {
                if !self.drained((DRAIN_RESYNC_WRITE, id), &mut out) {
                    self.target_write_done(id, &mut out);
                }
            }
            admin @ (Event::StartFullSync { .. }
            | Event::PauseSync
            | Event::ResumeSync
            | Event::RoleChanged { .. }
            | Event::LocalDiskChanged { .. }
            | Event::GenerationsChanged { .. }
            | Event::ResyncedFromAnotherPeer { .. }
            | Event::AdminConnect { .. }
            | Event::AdminDisconnect) => self.on_admin(admin, &mut out),
        }
        out
    }

    /// Admin and resource-state events.
    fn on_admin(&mut self, event: Event<'_>, out: &mut Vec<Action>) {
        match event {
            Event::StartFullSync { as_source, local } => {
                self.start_full_sync(as_source, local, out)
            }
            Event::PauseSync | Event::ResumeSync => {
                self.user_paused = matches!(event, Event::PauseSync);
                if self.established() {
                    out.push(Action::Send(self.state_packet(0)));
                    self.apply_pause(out);
                }
            }
            Event::RoleChanged { role } => {
                self.local.role = role;
                if self.handshake.is_some() || self.pending_connect.is_some() {
                    // The handshake already announced the old role and
                    // generations (a promotion may start a new one); a
                    // decision on them could hide a split brain
                    // (drbdd-sim). Start over with what is true now.
                    let why = "role changed during the handshake; reconnecting";
                    self.lose_connection(why.into(), true, out);
                } else if self.established() {
                    out.push(Action::Send(self.state_packet(0)));
                }
            }
            Event::LocalDiskChanged { disk } => {
                let changed = self.local.disk != disk;
                let attached =
                    self.local.disk == DiskState::Diskless && disk != DiskState::Diskless;
                self.local.disk = disk;
                let connected = self.established()
                    || self.handshake.is_some()
                    || self.pending_connect.is_some();
                if attached && connected {
                    // The handshake ran without our data: only a new one
                    // compares generations and decides the resync (the
                    // peer may have written since we lost the disk).
                    let why =
                        "local disk attached; reconnecting so the handshake decides the resync";
                    self.lose_connection(why.into(), true, out);
                } else if changed && self.handshake.is_some() {
                    // The handshake announced the old disk state (e.g. a
                    // resync with another peer finished meanwhile): both
                    // sides would keep a stale view of it, and a decision
                    // on it may be wrong ("both Inconsistent" for good).
                    let why = "local disk state changed during the handshake; reconnecting";
                    self.lose_connection(why.into(), true, out);
                } else if self.established() {
                    out.push(Action::Send(self.state_packet(0)));
                }
            }
            Event::GenerationsChanged { generations } => {
                self.set_local_generations(generations);
                if self.handshake.is_some() || self.pending_connect.is_some() {
                    // The handshake announced the old tuple; a decision on
                    // it could miss what the new generation changes.
                    let why = "data generation changed during the handshake; reconnecting";
                    self.lose_connection(why.into(), true, out);
                } else if self.established() {
                    out.push(Action::Send(self.gi_packet()));
                }
            }
            Event::ResyncedFromAnotherPeer { generations } => {
                let peer_differs = self.agreement.as_ref().is_some_and(|a| {
                    a.peer.disk == DiskState::UpToDate && a.peer.gi.current != generations.current
                });
                if self.established() && peer_differs {
                    let why = "our data was resynced from another peer and this peer holds another data generation; reconnecting so the handshake compares generations";
                    self.set_local_generations(generations);
                    self.lose_connection(why.into(), true, out);
                } else {
                    self.on_admin(Event::GenerationsChanged { generations }, out);
                }
            }
            Event::AdminConnect { discard_my_data } => {
                self.discard_my_data = discard_my_data;
                if self.status.conn == ConnState::StandAlone {
                    self.set_status(out, |s| s.conn = ConnState::Connecting);
                }
            }
            Event::AdminDisconnect => {
                if self.established() {
                    out.push(Action::Send(Packet::Disconnect {
                        reason: "administrative disconnect".into(),
                    }));
                }
                self.lose_connection("administrative disconnect".into(), false, out);
            }
            _ => unreachable!("handle_inner routes only admin events here"),
        }
    }

    /// Our GI tuple changed outside this connection: keep both views of it.
    fn set_local_generations(&mut self, generations: GiView) {
        self.local.generations = generations;
        self.gens = Generations {
            current: generations.current,
            bitmaps: vec![generations.bitmap],
            history: generations.history,
        };
    }

    fn on_connected(
        &mut self,
        now_ms: u64,
        nonce: [u8; NONCE_BYTES],
        sync_uuid: u64,
        out: &mut Vec<Action>,
    ) {
        self.now_ms = now_ms;
        if self.status.conn != ConnState::Connecting
            || self.handshake.is_some()
            || self.pending_connect.is_some()
        {
            out.push(Action::Disconnect {
                reason: format!("not accepting a connection in state {}", self.status.conn),
                retry: false,
            });
            return;
        }
        self.connected_at_ms = now_ms;
        self.last_rx_ms = now_ms;
        self.sync_uuid = sync_uuid;
        self.rx_buf.clear();
        if self.draining.is_empty() {
            self.start_handshake(nonce, out);
        } else {
            // Writes of the previous connection are still on their way to
            // our disk; a resync now could be overtaken by them.
            out.push(Action::Log(format!(
                "waiting for {} writes of the previous connection before the handshake",
                self.draining.len()
            )));
            self.pending_connect = Some(nonce);
        }
    }

    fn start_handshake(&mut self, nonce: [u8; NONCE_BYTES], out: &mut Vec<Action>) {
        let mut hs = Handshake::new(self.cfg.handshake.clone(), self.node_info(), nonce);
        out.extend(hs.start().into_iter().map(Action::Send));
        self.handshake = Some(hs);
        if !self.rx_buf.is_empty() {
            let buffered = std::mem::take(&mut self.rx_buf);
            self.on_bytes(self.now_ms, &buffered, out);
        }
    }

    /// An I/O of a previous connection finished; start a waiting handshake
    /// once none is left.
    fn drained(&mut self, key: (u8, u64), out: &mut Vec<Action>) -> bool {
        if !self.draining.remove(&key) {
            return false;
        }
        if self.draining.is_empty() {
            if let Some(nonce) = self.pending_connect.take() {
                self.start_handshake(nonce, out);
            }
        }
        true
    }

    fn node_info(&self) -> NodeInfo {
        let mut gi = self.gens.view(0);
        gi.crashed_primary = self.local.generations.crashed_primary;
        NodeInfo {
            role: self.local.role,
            disk: self.local.disk,
            backing_bytes: self.local.backing_bytes,
            current_bytes: self.local.current_bytes,
            max_io_bytes: self.local.max_io_bytes,
            gi,
            dirty_blocks: self.bitmap.count(),
            promoted_at_ms: self.local.promoted_at_ms,
            discard_my_data: self.discard_my_data,
        }
    }

    /// Our GenerationIds packet as the handshake would send it now.
    fn gi_packet(&self) -> Packet {
        let info = self.node_info();
        Packet::GenerationIds {
            current: info.gi.current,
            bitmap: info.gi.bitmap,
            history: Box::new(info.gi.history),
            dirty_blocks: info.dirty_blocks,
            promoted_at_ms: info.promoted_at_ms,
            flags: u32::from(info.gi.crashed_primary),
        }
    }

    /// The peer sent new generation identifiers on the established
    /// connection. If it is Primary, started a new data generation, and we
    /// hold its data (same current, UpToDate, no resync between us), we
    /// follow it so both keep naming the same data (guide 23.2).
    fn on_peer_generations(
        &mut self,
        gi: GiView,
        dirty_blocks: u64,
        promoted_at_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let target = matches!(
            self.status.repl,
            ReplState::WFBitMapT
                | ReplState::WFSyncUUID
                | ReplState::SyncTarget
                | ReplState::PausedSyncT
        );
        let Some(a) = self.agreement.as_mut() else {
            return;
        };
        if target && a.peer.role != Role::Primary && gi.current != a.peer.gi.current {
            // A Secondary source that followed its Primary's new generation
            // does not send us that Primary's writes (only its resync
            // replies): finishing under the new UUID would claim data we may
            // lack. We finish under the generation the resync started with.
            return;
        }
        let old_current = a.peer.gi.current;
        a.peer.gi = gi;
        a.peer.dirty_blocks = dirty_blocks;
        a.peer.promoted_at_ms = promoted_at_ms;
        let follow = a.peer.role == Role::Primary
            && gi.current != old_current
            && !crate::generation::is_empty_uuid(gi.current)
            && !crate::generation::is_empty_uuid(old_current)
            && self.gens.current == old_current
            && self.local.disk == DiskState::UpToDate
            && self.status.repl == ReplState::Established;
        if !follow {
            return;
        }
        let update = GiUpdate::FollowedPeerGeneration { uuid: gi.current };
        update.apply(&mut self.gens, 0);
        self.local.generations.current = self.gens.current;
        self.local.generations.history = self.gens.history;
        out.push(Action::UpdateGenerations(update));
        out.push(Action::Log(format!(
            "the Primary started data generation {:016X}; following it",
            gi.current
        )));
    }

    fn on_bytes(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Action>) {
        self.now_ms = now_ms;
        self.last_rx_ms = now_ms;
        if self.pending_connect.is_some() {
            if self.rx_buf.len() + bytes.len() > RX_BUFFER_MAX_BYTES {
                self.protocol_error("peer sent too much before the handshake".into(), out);
            } else {
                self.rx_buf.extend_from_slice(bytes);
            }
            return;
        }
        if self.handshake.is_none() && !self.established() {
            return; // stale bytes from a connection we already dropped
        }
        // Packets are decoded in place and the consumed bytes removed once
        // per call (removing them per packet moved the rest of a large read
        // again for every packet). A call without a partial packet left
        // over decodes straight from `bytes`.
        let buf = if self.rx_buf.is_empty() {
            None
        } else {
            let mut b = std::mem::take(&mut self.rx_buf);
            b.extend_from_slice(bytes);
            Some(b)
        };
        let input = buf.as_deref().unwrap_or(bytes);
        let used = self.decode_packets(input, out);
        if self.handshake.is_none() && !self.established() {
            return; // the connection ended: what is left belongs to it
        }
        debug_assert!(self.rx_buf.is_empty(), "nothing refills rx_buf meanwhile");
        match buf {
            Some(mut b) => {
                b.drain(..used);
                self.rx_buf = b;
            }
            None => self.rx_buf.extend_from_slice(&bytes[used..]),
        }
    }

    /// One frame received as head + data block. The block stays in its
    /// buffer up to the disk write; only when earlier bytes are still
    /// waiting (a partial frame, or a handshake that has not started) do
    /// the frame's bytes join them as a copy, to keep the stream in order.
    fn on_split_frame(
        &mut self,
        now_ms: u64,
        head: &[u8],
        block: drbdd_blockio::AlignedBuf,
        out: &mut Vec<Action>,
    ) {
        if self.pending_connect.is_some() || !self.rx_buf.is_empty() {
            let mut bytes = Vec::with_capacity(head.len() + block.len());
            bytes.extend_from_slice(head);
            bytes.extend_from_slice(block.as_slice());
            self.on_bytes(now_ms, &bytes, out);
            return;
        }
        self.now_ms = now_ms;
        self.last_rx_ms = now_ms;
        if self.handshake.is_none() && !self.established() {
            return; // stale bytes from a connection we already dropped
        }
        match wire::decode_split(head, block, self.frame_crc()) {
            Ok(packet) => self.on_packet(packet, out),
            Err(e) => self.protocol_error(format!("undecodable packet: {e}"), out),
        }
    }

    /// Handles every complete packet at the start of `input`; returns the
    /// bytes consumed. Stops early when a packet ends the connection.
    fn decode_packets(&mut self, input: &[u8], out: &mut Vec<Action>) -> usize {
        let mut used = 0;
        loop {
            match wire::decode_framed(&input[used..], self.frame_crc()) {
                Ok(None) => break,
                Ok(Some((packet, n))) => {
                    used += n;
                    self.on_packet(packet, out);
                    if self.handshake.is_none() && !self.established() {
                        break; // the packet ended the connection
                    }
                }
                Err(e) => {
                    self.protocol_error(format!("undecodable packet: {e}"), out);
                    break;
                }
            }
        }
        used
    }

    fn protocol_error(&mut self, reason: String, out: &mut Vec<Action>) {
        self.lose_connection(format!("protocol error: {reason}"), true, out);
    }

    fn on_packet(&mut self, packet: Packet, out: &mut Vec<Action>) {
        if let (Some(_), Packet::Disconnect { reason }) = (&self.handshake, &packet) {
            let reason = format!("peer refused the connection: {reason}");
            self.lose_connection(reason, false, out);
            return;
        }
        if let Some(hs) = self.handshake.as_mut() {
            match hs.on_packet(packet) {
                Ok(HandshakeStep::Continue(packets)) => {
                    out.extend(packets.into_iter().map(Action::Send))
                }
                Ok(HandshakeStep::Done(packets, agreement)) => {
                    out.extend(packets.into_iter().map(Action::Send));
                    self.handshake = None;
                    self.on_agreement(*agreement, out);
                }
                Err(e) => {
                    self.handshake = None;
                    out.push(Action::Send(Packet::Disconnect {
                        reason: truncate(&e.to_string()),
                    }));
                    self.lose_connection(format!("handshake refused: {e}"), false, out);
                }
            }
            return;
        }
        self.on_established_packet(packet, out);
    }

    fn on_established_packet(&mut self, packet: Packet, out: &mut Vec<Action>) {
        let result = match packet {
            Packet::Ping => {
                out.push(Action::Send(Packet::PingAck));
                Ok(())
            }
            Packet::PingAck => {
                self.ping = Ping::Idle;
                Ok(())
            }
            Packet::RecvAck { seq } => self.ack.on_recv_ack(seq).map(|a| self.apply_ack(a, out)),
            Packet::WriteAck { seq } => self.ack.on_write_ack(seq).map(|a| self.apply_ack(a, out)),
            Packet::NegAck { seq } => self.ack.on_neg_ack(seq).map(|a| {
                // Before the write's leg completes (same batch, earlier):
                // the caller makes the new data generation durable first.
                out.push(Action::PeerWriteFailed);
                self.apply_ack(a, out)
            }),
            Packet::BarrierAck { epoch, .. } => self
                .ack
                .on_barrier_ack(epoch)
                .map(|a| self.apply_ack(a, out)),
            Packet::State {
                role: Role::Primary,
                ..
            } if self.local.role == Role::Primary => {
                // Each promoted while the other's State was on its way (or
                // held by a partition): two Primaries on one connection are a
                // split brain, and the peer's writes must not overwrite ours
                // (drbdd-sim seed 959920). Reconnect: losing the connection
                // as Primary starts a new data generation on each side, and
                // the handshake finds the split brain.
                let why = "the peer became Primary while this node is Primary (two primaries are not allowed): split brain; reconnecting so the handshake compares generations";
                out.push(Action::Warn(why.into()));
                self.lose_connection(why.into(), true, out);
                Ok(())
            }
            Packet::State { role, disk, flags } => {
                self.set_status(out, |s| {
                    s.peer_role = role;
                    s.peer_disk = disk;
                });
                if let Some(a) = self.agreement.as_mut() {
                    a.peer.role = role;
                    a.peer.disk = disk;
                }
                self.peer_paused = flags & wire::STATE_SYNC_PAUSED != 0;
                if flags & (wire::STATE_START_SYNC_SOURCE | wire::STATE_START_SYNC_TARGET) != 0 {
                    self.peer_started_full_sync(flags & wire::STATE_START_SYNC_SOURCE != 0, out);
                }
                self.apply_pause(out);
                Ok(())
            }
            Packet::GenerationIds {
                current,
                bitmap,
                history,
                dirty_blocks,
                promoted_at_ms,
                flags,
            } => {
                let gi = GiView::from_wire(current, bitmap, *history, flags);
                self.on_peer_generations(gi, dirty_blocks, promoted_at_ms, out);
                Ok(())
            }
            Packet::Disconnect { reason } => {
                self.lose_connection(format!("peer disconnected: {reason}"), true, out);
                return;
            }
            Packet::OutOfSync {
                offset_bytes,
                len_bytes,
            } => {
                self.mark_out_of_sync(offset_bytes, u64::from(len_bytes), out);
                Ok(())
            }
            other => {
                if let Err(e) = self.on_data_path_packet(other, out) {
                    self.protocol_error(e, out);
                }
                return;
            }
        };
        if let Err(e) = result {
            self.protocol_error(e.to_string(), out);
        }
    }

    fn on_data_path_packet(&mut self, packet: Packet, out: &mut Vec<Action>) -> Result<(), String> {
        match packet {
            Packet::Data {
                seq,
                epoch,
                flags,
                offset_bytes,
                len_bytes,
                payload,
            } => self.rx_data(
                rx::PeerWrite {
                    seq,
                    epoch,
                    flags,
                    offset_bytes,
                    len_bytes,
                    data: payload,
                },
                out,
            ),
            Packet::Barrier { epoch } => self.rx_barrier(epoch, out),
            Packet::BitmapChunk {
                start_bit,
                total_bits,
                last,
                runs,
            } => self.on_bitmap_chunk(start_bit, total_bits, last, &runs, out),
            Packet::SyncUuid { uuid } => self.on_sync_uuid(uuid, out),
            Packet::ResyncRequest {
                id,
                offset_bytes,
                len_bytes,
            } => self.source_request(id, offset_bytes, len_bytes, out),
            Packet::ResyncReply {
                id,
                offset_bytes,
                payload,
            } => self.target_reply(id, offset_bytes, payload, out),
            Packet::ResyncNegReply { id } => self.target_neg_reply(id, out),
            Packet::ResyncFinished => self.source_finished(out),
            other => Err(format!(
                "unexpected {} packet on an established connection",
                other.name()
            )),
        }
    }

    fn on_agreement(&mut self, agreement: Agreement, out: &mut Vec<Action>) {
        if !agreement.authenticated {
            out.push(Action::Warn(format!(
                "connection to node {} is NOT authenticated: no shared-secret is configured on either node",
                agreement.peer_node_id
            )));
        }
        out.push(Action::Log(format!(
            "handshake with node {} done (protocol version {}): {}",
            agreement.peer_node_id,
            agreement.protocol_version,
            agreement.decision.describe()
        )));
        out.push(Action::SizeAgreed {
            size_bytes: agreement.size_bytes,
        });
        let decision = agreement.decision;
        let peer = agreement.peer;
        self.agreement = Some(agreement);
        self.ping = Ping::Idle;
        self.set_status(out, |s| {
            s.conn = ConnState::Connected;
            s.repl = ReplState::Established;
            s.peer_role = peer.role;
            s.peer_disk = peer.disk;
        });
        if self.user_paused {
            out.push(Action::Send(self.state_packet(0)));
        }
        self.start_after_handshake(decision, out);
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.now_ms = now_ms;
        if self.handshake.is_some() {
            if now_ms.saturating_sub(self.connected_at_ms) > self.cfg.connect_timeout_ms {
                self.lose_connection("handshake timed out".into(), true, out);
            }
            return;
        }
        if !self.established() {
            return;
        }
        match self.ping {
            Ping::Sent { at_ms } if now_ms.saturating_sub(at_ms) > self.cfg.ping_timeout_ms => {
                self.lose_connection(
                    format!(
                        "PingAck did not arrive in time ({} ms)",
                        self.cfg.ping_timeout_ms
                    ),
                    true,
                    out,
                );
                return;
            }
            Ping::Idle if now_ms.saturating_sub(self.last_rx_ms) >= self.cfg.ping_int_ms => {
                out.push(Action::Send(Packet::Ping));
                self.ping = Ping::Sent { at_ms: now_ms };
            }
            _ => {}
        }
        self.record_progress();
        let closed = self.ack.close_idle_epoch();
        self.apply_ack(closed, out);
        self.pump_resync(out);
    }

    /// Drops the connection: unconfirmed writes become out of sync.
    fn lose_connection(&mut self, reason: String, retry: bool, out: &mut Vec<Action>) {
        let was_up =
            self.handshake.is_some() || self.established() || self.pending_connect.is_some();
        self.handshake = None;
        let lost = self.ack.connection_lost();
        self.apply_ack(lost, out);
        self.tx_fail_waiting(out);
        self.local_pending.clear();
        for seq in self.rx.inflight_seqs() {
            self.draining.insert((DRAIN_PEER_WRITE, seq));
        }
        for id in self.sync.planner.writing_ids() {
            self.draining.insert((DRAIN_RESYNC_WRITE, id));
        }
        self.pending_connect = None;
        self.rx = rx::Receiver::default();
        self.sync.reset();
        self.rx_buf.clear();
        self.ping = Ping::Idle;
        self.agreement = None;
        self.peer_paused = false;
        let stay_down = self.status.conn == ConnState::StandAlone;
        let conn = if retry && !stay_down {
            ConnState::Connecting
        } else {
            ConnState::StandAlone
        };
        self.set_status(out, |s| {
            s.conn = conn;
            s.repl = ReplState::Off;
            s.peer_role = Role::Unknown;
            s.peer_disk = DiskState::DUnknown;
        });
        if was_up || !retry {
            out.push(Action::Disconnect { reason, retry });
        }
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(wire::MAX_REASON_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Decision helpers shared with the sync module.
fn decision_is_source(d: SyncDecision) -> bool {
    matches!(d, SyncDecision::SourceBitmap | SyncDecision::SourceFull)
}

/// Default helpers for building a planner/controller from config.
fn planner_for(cfg: &PeerConfig) -> (ResyncPlanner, RateController) {
    (
        ResyncPlanner::new(cfg.max_resync_requests, cfg.max_resync_request_bytes),
        RateController::new(cfg.rate),
    )
}
