//! The vocabulary of the peer state machine (part of `peer`): its
//! configuration, the events the caller feeds in and the actions it must
//! execute.
//!
//! Owns: type definitions only. Must never: hold logic beyond applying a
//! [`GiUpdate`] to a GI tuple.

use crate::ack::{PeerOutcome, Protocol, WriteId};
use crate::generation::{Generations, GiView, SbPolicy};
use crate::handshake::HandshakeConfig;
use crate::resync::RateConfig;
use crate::state::{ConnState, DiskState, ReplState, Role};
use crate::wire::{Packet, Payload, NONCE_BYTES};
use drbdd_blockio::AlignedBuf;

/// Static settings of one connection.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub handshake: HandshakeConfig,
    pub protocol: Protocol,
    /// Most writes in flight to the peer (`max-buffers`).
    pub max_buffers: usize,
    pub ping_int_ms: u64,
    pub ping_timeout_ms: u64,
    /// Longest a handshake may take.
    pub connect_timeout_ms: u64,
    pub sb_policy: SbPolicy,
    pub rate: RateConfig,
    pub max_resync_requests: usize,
    pub max_resync_request_bytes: u32,
}

/// What this node currently is, as the resource state machine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    pub role: Role,
    pub disk: DiskState,
    pub backing_bytes: u64,
    pub current_bytes: u64,
    pub max_io_bytes: u32,
    /// The GI tuple as it concerns this peer (its bitmap slot only).
    pub generations: GiView,
    pub promoted_at_ms: u64,
    /// This node is (becoming) sync target of another peer: it is
    /// Inconsistent for now but will not stay so, and its own lineage may
    /// be ahead of this peer ([`ResourceCore::sync_target_of_another`]).
    ///
    /// [`ResourceCore::sync_target_of_another`]: crate::resource::ResourceCore::sync_target_of_another
    pub sync_target_of_another: bool,
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// The transport is up. `nonce` and `sync_uuid` are fresh random values.
    Connected {
        now_ms: u64,
        nonce: [u8; NONCE_BYTES],
        sync_uuid: u64,
    },
    BytesReceived {
        now_ms: u64,
        bytes: &'a [u8],
    },
    /// One frame received as `head` (the frame up to its data block, see
    /// `wire::block_range`) and `block`, its data block read straight into
    /// an aligned buffer: the packet's `SubmitPeerWrite` /
    /// `SubmitResyncWrite` carries that very buffer. Follows earlier
    /// `BytesReceived` in stream order like any bytes.
    FrameReceived {
        now_ms: u64,
        head: &'a [u8],
        block: AlignedBuf,
    },
    Tick {
        now_ms: u64,
    },
    /// The transport failed (reset, EOF, send error).
    ConnectionLost {
        now_ms: u64,
    },
    /// An application write (or discard / zeroes per `flags`) on this node.
    LocalWrite {
        id: WriteId,
        offset_bytes: u64,
        len_bytes: u32,
        flags: u32,
        data: Payload,
    },
    /// An application flush on this node.
    LocalFlush {
        id: WriteId,
    },
    /// The local disk finished the application write `id`.
    LocalWriteDone {
        id: WriteId,
    },
    /// A write from [`Action::SubmitPeerWrite`] finished on our disk.
    PeerWriteDone {
        seq: u64,
        ok: bool,
    },
    /// A flush from [`Action::SubmitPeerFlush`] finished.
    PeerFlushDone {
        epoch: u32,
    },
    /// A read from [`Action::ReadForResync`] finished (`None`: read error).
    ResyncReadDone {
        id: u64,
        data: Option<Vec<u8>>,
    },
    /// A write from [`Action::SubmitResyncWrite`] finished on our disk.
    ResyncWriteDone {
        id: u64,
    },
    /// While connected with nothing to sync: start a full resync. The source
    /// side is `primary --force` (initial sync) or `invalidate-remote`; the
    /// target side is `invalidate`. `local` is what this node now is (e.g.
    /// the new generation and UpToDate disk after `primary --force`).
    StartFullSync {
        as_source: bool,
        local: LocalState,
    },
    /// Admin `pause-sync`: stop requesting resync data (PausedSyncS/T on both
    /// nodes) until `ResumeSync`. Survives reconnects.
    PauseSync,
    /// Admin `resume-sync`.
    ResumeSync,
    /// The resource changed role (promote/demote).
    RoleChanged {
        role: Role,
    },
    /// The local disk state changed outside this connection (attach,
    /// detach, I/O error, outdate): tell the peer.
    LocalDiskChanged {
        disk: DiskState,
    },
    /// The local GI tuple changed outside this connection (a Primary that
    /// lost another peer started a new data generation, or this node
    /// followed one): `generations` is the new tuple as it concerns this
    /// peer (its bitmap slot). An established connection sends it to the
    /// peer (which follows a Primary's new current UUID); a running
    /// handshake starts over so the decision sees the new tuple.
    GenerationsChanged {
        generations: GiView,
    },
    /// This node finished a resync as target of another peer: its data is
    /// now that peer's, outside this connection (resync writes are not
    /// replicated). `generations` is the new tuple as it concerns this peer.
    /// An established connection to an UpToDate peer with another current
    /// UUID starts over, so the handshake compares generations (DRBD 9
    /// marks resynced blocks out of sync towards all other peers for the
    /// same reason): otherwise a split-brain victim that discarded its data
    /// and a third node still holding that data stay "in sync" for good.
    ResyncedFromAnotherPeer {
        generations: GiView,
    },
    /// Admin `disconnect`: go StandAlone.
    AdminDisconnect,
    /// Admin `connect`: leave StandAlone and accept connections again.
    AdminConnect {
        /// `connect --discard-my-data`: if the handshake finds split brain,
        /// this node is the victim (manual recovery, user's guide 13.3).
        discard_my_data: bool,
    },
}

/// Connection, replication and peer states for status and `events2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    pub conn: ConnState,
    pub repl: ReplState,
    pub peer_role: Role,
    pub peer_disk: DiskState,
}

/// A change of the GI tuple the caller must persist (and apply to
/// [`Generations`] with this peer's slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiUpdate {
    ResyncStartedAsSource {
        sync_uuid: u64,
    },
    ResyncStartedAsTarget {
        sync_uuid: u64,
    },
    ResyncFinishedAsSource,
    ResyncFinishedAsTarget {
        /// Boxed: a whole tuple (32 history UUIDs) would make every
        /// `Action` of the data path 280 bytes.
        source: Box<GiView>,
    },
    /// The connected Primary started data generation `uuid`; we hold its
    /// data and follow ([`Generations::follow_peer_generation`]). The
    /// caller announces our new tuple to its other peers
    /// ([`Event::GenerationsChanged`]).
    FollowedPeerGeneration {
        uuid: u64,
    },
}

impl GiUpdate {
    /// Applies the update to a tuple, for the peer in `slot`.
    pub fn apply(&self, gens: &mut Generations, slot: usize) {
        match self {
            GiUpdate::ResyncStartedAsSource { sync_uuid } => {
                gens.resync_started_as_source(slot, *sync_uuid)
            }
            GiUpdate::ResyncStartedAsTarget { sync_uuid } => {
                gens.resync_started_as_target(slot, *sync_uuid)
            }
            GiUpdate::ResyncFinishedAsSource => gens.resync_finished_as_source(slot),
            GiUpdate::ResyncFinishedAsTarget { source } => {
                gens.resync_finished_as_target(slot, source)
            }
            GiUpdate::FollowedPeerGeneration { uuid } => gens.follow_peer_generation(*uuid),
        }
    }
}

/// Outputs, in the order they must be executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Packet),
    /// The peer leg of application write `id` is done (see `ack`).
    CompleteWrite {
        id: WriteId,
        outcome: PeerOutcome,
    },
    /// The peer could not write data we replicated (NegAck): its copy no
    /// longer follows ours. A Primary whose bitmap UUID for this peer is
    /// empty starts a new data generation (the old one becomes this peer's
    /// bitmap UUID) and persists it before executing the `CompleteWrite`
    /// that follows in the same batch, as for a lost connection: otherwise
    /// a later handshake could find equal generations and make this node
    /// the sync target of a peer that lacks the acknowledged write (DRBD:
    /// a Primary that loses its peer's copy of the data makes a new current
    /// UUID). Secondaries ignore it.
    PeerWriteFailed,
    /// Set these bits in this peer's bitmap slot (persist).
    MarkOutOfSync {
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// Clear these bits in this peer's bitmap slot (persist).
    MarkInSync {
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// Write replicated data to the local disk; report `PeerWriteDone`.
    SubmitPeerWrite {
        seq: u64,
        offset_bytes: u64,
        len_bytes: u32,
        flags: u32,
        /// `Payload::Aligned` when the block was received apart from its
        /// frame: write it as it is.
        data: Payload,
    },
    /// Flush the local disk (end of a peer epoch); report `PeerFlushDone`.
    SubmitPeerFlush {
        epoch: u32,
    },
    /// Read local data for the sync target; report `ResyncReadDone`.
    ReadForResync {
        id: u64,
        offset_bytes: u64,
        len_bytes: u32,
    },
    /// Write resync data to the local disk; report `ResyncWriteDone`.
    SubmitResyncWrite {
        id: u64,
        offset_bytes: u64,
        /// As for `SubmitPeerWrite`.
        data: Payload,
    },
    UpdateGenerations(GiUpdate),
    /// The local disk state changes because of this connection (sync target).
    LocalDisk(DiskState),
    StateChanged(PeerStatus),
    /// The handshake agreed on this device size (bytes).
    SizeAgreed {
        size_bytes: u64,
    },
    Log(String),
    /// Also log loudly (e.g. unauthenticated peer, split brain).
    Warn(String),
    /// Close the transport. `retry`: reconnect later (Connecting); otherwise
    /// the connection stays StandAlone until the admin acts.
    Disconnect {
        reason: String,
        retry: bool,
    },
}
