//! Generation identifiers (user's guide 23.2): the GI tuple, how it changes
//! (new generation, resync start/finish, history rotation), the handshake
//! decision table, and automatic split-brain recovery policies (11.17.2).
//!
//! Owns: every rule that decides sync direction, full vs. bitmap resync,
//! split brain and unrelated data. Must never: generate UUIDs (the caller's RNG
//! supplies them) or persist anything (the caller writes the tuple back to the
//! metadata superblock: `current_uuid`, `peers[i].bitmap_uuid`, `history_uuids`).
//!
//! Both nodes run [`decide`] on the same two tuples from opposite sides; the
//! answers are mirror images ([`SyncDecision::mirror`]), so they agree on who
//! is source without another round trip.

use std::fmt;

/// No generation at all (never initialised).
pub const UUID_EMPTY: u64 = 0;
/// History UUIDs a tuple keeps (newest first), as DRBD 9 (`HISTORY_UUIDS`,
/// one per possible peer): a node with several peers pushes its own old
/// generations and every peer's finished sync UUIDs, and with DRBD 8.4's
/// two slots a shared ancestor fell out after two rotations, so two nodes
/// of one lineage were declared "unrelated" (drbdd-sim seed 393054).
pub const HISTORY_UUIDS: usize = 32;
/// Current UUID of freshly created metadata: no data generation yet.
pub const UUID_JUST_CREATED: u64 = 4;

/// A history array holding `newest_first` followed by empty entries.
pub fn history_of(newest_first: &[u64]) -> [u64; HISTORY_UUIDS] {
    assert!(
        newest_first.len() <= HISTORY_UUIDS,
        "history holds {HISTORY_UUIDS} UUIDs"
    );
    let mut history = [UUID_EMPTY; HISTORY_UUIDS];
    history[..newest_first.len()].copy_from_slice(newest_first);
    history
}

/// True for UUIDs that name no data generation.
pub fn is_empty_uuid(uuid: u64) -> bool {
    uuid == UUID_EMPTY || uuid == UUID_JUST_CREATED
}

/// The GI tuple of one node: maps 1:1 to the superblock fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generations {
    pub current: u64,
    /// Bitmap UUID per peer slot (0 = the bitmap tracks nothing).
    pub bitmaps: Vec<u64>,
    pub history: [u64; HISTORY_UUIDS],
}

/// One node's tuple as seen by one connection: current, the bitmap UUID for
/// that peer's slot, history, and whether the node crashed while primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GiView {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; HISTORY_UUIDS],
    pub crashed_primary: bool,
}

impl GiView {
    /// The tuple a `GenerationIds` packet carries (`flags` bit 0: crashed
    /// while primary).
    pub fn from_wire(current: u64, bitmap: u64, history: [u64; HISTORY_UUIDS], flags: u32) -> Self {
        GiView {
            current,
            bitmap,
            history,
            crashed_primary: flags & 1 != 0,
        }
    }
}

impl Generations {
    /// The tuple of freshly created metadata.
    pub fn just_created(peer_slots: usize) -> Self {
        Self {
            current: UUID_JUST_CREATED,
            bitmaps: vec![UUID_EMPTY; peer_slots],
            history: [UUID_EMPTY; HISTORY_UUIDS],
        }
    }

    /// The view for the peer in `slot`.
    pub fn view(&self, slot: usize) -> GiView {
        GiView {
            current: self.current,
            bitmap: self.bitmaps.get(slot).copied().unwrap_or(UUID_EMPTY),
            history: self.history,
            crashed_primary: false,
        }
    }

    /// Pushes `uuid` into the history (newest first), dropping the oldest.
    pub fn push_history(&mut self, uuid: u64) {
        if is_empty_uuid(uuid) || self.history[0] == uuid {
            return;
        }
        self.history.copy_within(..HISTORY_UUIDS - 1, 1);
        self.history[0] = uuid;
    }

    /// Starts a new data generation (promotion while disconnected, or a primary
    /// losing its peers): `new_uuid` becomes current, and for every
    /// disconnected peer slot whose bitmap does not already track an older
    /// generation, the old current becomes the bitmap UUID.
    pub fn start_new_generation(&mut self, new_uuid: u64, disconnected_slots: &[usize]) {
        assert!(
            !is_empty_uuid(new_uuid),
            "new generation UUID must not be empty"
        );
        assert_ne!(
            new_uuid, self.current,
            "new generation UUID must differ from the current one"
        );
        let old = self.current;
        for slot in disconnected_slots {
            let bitmap = &mut self.bitmaps[*slot];
            if *bitmap == UUID_EMPTY && !is_empty_uuid(old) {
                *bitmap = old;
            }
        }
        self.push_history(old);
        self.current = new_uuid;
    }

    /// A connected Primary whose data we hold started a new data generation
    /// (it lost another peer, guide 23.2): we follow it. The old current goes
    /// to the history; no bitmap UUID changes, because this node did not
    /// track the writes of the new generation for its other peers (a later
    /// handshake with them finds the old UUID in our history: full resync,
    /// never a bitmap resync that would miss blocks).
    pub fn follow_peer_generation(&mut self, new_uuid: u64) {
        assert!(
            !is_empty_uuid(new_uuid),
            "followed generation UUID must not be empty"
        );
        if new_uuid == self.current {
            return;
        }
        let old = self.current;
        self.push_history(old);
        self.current = new_uuid;
    }

    /// The sync source starts a resync towards `slot`: its bitmap UUID for the
    /// target becomes `sync_uuid`, which the target takes as its current UUID,
    /// so an interrupted resync resumes bitmap-based on the next connect.
    pub fn resync_started_as_source(&mut self, slot: usize, sync_uuid: u64) {
        assert!(!is_empty_uuid(sync_uuid), "sync UUID must not be empty");
        let old = self.bitmaps[slot];
        self.push_history(old);
        self.bitmaps[slot] = sync_uuid;
    }

    /// The sync target received the source's sync UUID.
    pub fn resync_started_as_target(&mut self, slot: usize, sync_uuid: u64) {
        assert!(!is_empty_uuid(sync_uuid), "sync UUID must not be empty");
        let old = self.current;
        self.push_history(old);
        self.current = sync_uuid;
        self.bitmaps[slot] = UUID_EMPTY;
    }

    /// Resync towards `slot` completed on the source: the bitmap tracks nothing.
    pub fn resync_finished_as_source(&mut self, slot: usize) {
        let old = self.bitmaps[slot];
        self.push_history(old);
        self.bitmaps[slot] = UUID_EMPTY;
    }

    /// Resync completed on the target: it adopts the source's tuple.
    pub fn resync_finished_as_target(&mut self, slot: usize, source: &GiView) {
        assert!(
            !is_empty_uuid(source.current),
            "sync source has no data generation"
        );
        self.current = source.current;
        self.history = source.history;
        self.bitmaps[slot] = UUID_EMPTY;
    }
}

/// What to do after comparing the two tuples at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDecision {
    /// Same data generation: nothing to do.
    NoSync,
    /// Neither node has data yet: wait for `primary --force` on one of them.
    BothJustCreated,
    /// Local node is source; only the blocks in the bitmaps differ.
    SourceBitmap,
    /// Local node is target; only the blocks in the bitmaps differ.
    TargetBitmap,
    /// Local node is source of a full resync.
    SourceFull,
    /// Local node is target of a full resync.
    TargetFull,
    /// Both changed since they diverged. `shared_parent`: bitmap UUIDs match,
    /// so automatic recovery policies may resolve it.
    SplitBrain { shared_parent: bool },
    /// No common generation: refuse to connect.
    Unrelated,
    /// Both disks are Inconsistent (e.g. two sync targets of one Primary
    /// meeting mid-resync, each with its own sync UUID as current): neither
    /// has data to give, so no resync between them and no refusal either.
    /// Decided from the disk states by the handshake, not by [`decide`].
    BothInconsistent,
}

impl SyncDecision {
    /// The decision the peer reaches from its side.
    pub fn mirror(self) -> Self {
        match self {
            SyncDecision::SourceBitmap => SyncDecision::TargetBitmap,
            SyncDecision::TargetBitmap => SyncDecision::SourceBitmap,
            SyncDecision::SourceFull => SyncDecision::TargetFull,
            SyncDecision::TargetFull => SyncDecision::SourceFull,
            other => other,
        }
    }

    /// One sentence for the log.
    pub fn describe(&self) -> &'static str {
        match self {
            SyncDecision::NoSync => "data generations are equal: no resync needed",
            SyncDecision::BothJustCreated => {
                "neither node has data yet: no resync; start the initial full sync with `primary --force` on one node"
            }
            SyncDecision::SourceBitmap => {
                "the peer is behind on our data generation: bitmap-based resync with this node as source"
            }
            SyncDecision::TargetBitmap => {
                "this node is behind the peer's data generation: bitmap-based resync with this node as target"
            }
            SyncDecision::SourceFull => {
                "the peer's data is older than what our bitmap tracks: full resync with this node as source"
            }
            SyncDecision::TargetFull => {
                "our data is older than what the peer's bitmap tracks: full resync with this node as target"
            }
            SyncDecision::SplitBrain { shared_parent: true } => {
                "split brain: both nodes changed data since they diverged from a common generation"
            }
            SyncDecision::SplitBrain { shared_parent: false } => {
                "split brain with unrelated ancestor generations: automatic recovery is impossible; resolve manually"
            }
            SyncDecision::Unrelated => {
                "unrelated data: the peer's generation identifiers share nothing with ours; refusing to connect"
            }
            SyncDecision::BothInconsistent => {
                "both nodes are Inconsistent: no resync between them until one is UpToDate"
            }
        }
    }

    /// True when a resync follows (either direction).
    pub fn needs_resync(&self) -> bool {
        matches!(
            self,
            SyncDecision::SourceBitmap
                | SyncDecision::TargetBitmap
                | SyncDecision::SourceFull
                | SyncDecision::TargetFull
        )
    }
}

impl fmt::Display for SyncDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

fn same(a: u64, b: u64) -> bool {
    !is_empty_uuid(a) && a == b
}

fn in_history(uuid: u64, view: &GiView) -> bool {
    view.history.iter().any(|h| same(uuid, *h))
}

fn any_common(a: &GiView, b: &GiView) -> bool {
    let la = [a.current, a.bitmap].into_iter().chain(a.history);
    la.into_iter().any(|x| {
        [b.current, b.bitmap]
            .into_iter()
            .chain(b.history)
            .any(|y| same(x, y))
    })
}

/// The decision table of user's guide 23.2.4, from the local node's side.
pub fn decide(local: &GiView, peer: &GiView) -> SyncDecision {
    match (is_empty_uuid(local.current), is_empty_uuid(peer.current)) {
        (true, true) => return SyncDecision::BothJustCreated,
        (true, false) => return SyncDecision::TargetFull,
        (false, true) => return SyncDecision::SourceFull,
        (false, false) => {}
    }
    if local.current == peer.current {
        // A primary that crashed may have writes the other never saw; its
        // activity log put them into its bitmap.
        return match (local.crashed_primary, peer.crashed_primary) {
            (true, false) => SyncDecision::SourceBitmap,
            (false, true) => SyncDecision::TargetBitmap,
            // A sync source that lost the connection before it saw the
            // target finish still tracks the target: finish the resync
            // (bitmap-based; usually little or nothing left to send).
            _ if !is_empty_uuid(local.bitmap) && is_empty_uuid(peer.bitmap) => {
                SyncDecision::SourceBitmap
            }
            _ if is_empty_uuid(local.bitmap) && !is_empty_uuid(peer.bitmap) => {
                SyncDecision::TargetBitmap
            }
            _ => SyncDecision::NoSync,
        };
    }
    let local_ahead = same(local.bitmap, peer.current);
    let peer_ahead = same(peer.bitmap, local.current);
    match (local_ahead, peer_ahead) {
        (true, false) => return SyncDecision::SourceBitmap,
        (false, true) => return SyncDecision::TargetBitmap,
        (true, true) => {
            return SyncDecision::SplitBrain {
                shared_parent: false,
            }
        }
        (false, false) => {}
    }
    if same(local.bitmap, peer.bitmap) {
        return SyncDecision::SplitBrain {
            shared_parent: true,
        };
    }
    match (
        in_history(local.current, peer),
        in_history(peer.current, local),
    ) {
        (true, false) => return SyncDecision::TargetFull,
        (false, true) => return SyncDecision::SourceFull,
        (true, true) => {
            return SyncDecision::SplitBrain {
                shared_parent: false,
            }
        }
        (false, false) => {}
    }
    if any_common(local, peer) {
        SyncDecision::SplitBrain {
            shared_parent: false,
        }
    } else {
        SyncDecision::Unrelated
    }
}

/// `after-sb-0pri`: split brain detected, no node is primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb0Pri {
    Disconnect,
    DiscardYoungerPrimary,
    DiscardOlderPrimary,
    DiscardZeroChanges,
    DiscardLeastChanges,
}

/// `after-sb-1pri`: split brain detected, one node is primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb1Pri {
    Disconnect,
    Consensus,
    DiscardSecondary,
    /// Accepted in configuration but not resolved automatically here.
    CallPriLostAfterSb,
    /// Accepted in configuration but not resolved automatically here.
    ViolentlyAs0p,
}

/// `after-sb-2pri`: split brain detected, both nodes are primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb2Pri {
    Disconnect,
    /// Accepted in configuration but not resolved automatically here.
    CallPriLostAfterSb,
    /// Accepted in configuration but not resolved automatically here.
    ViolentlyAs0p,
}

/// The three automatic split-brain recovery policies of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbPolicy {
    pub after_sb_0pri: AfterSb0Pri,
    pub after_sb_1pri: AfterSb1Pri,
    pub after_sb_2pri: AfterSb2Pri,
}

impl Default for SbPolicy {
    /// DRBD's defaults: never resolve automatically.
    fn default() -> Self {
        Self {
            after_sb_0pri: AfterSb0Pri::Disconnect,
            after_sb_1pri: AfterSb1Pri::Disconnect,
            after_sb_2pri: AfterSb2Pri::Disconnect,
        }
    }
}

/// What one side of a split brain looks like to the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbSide {
    pub node_id: u8,
    pub primary: bool,
    /// 4 KiB blocks this node changed since the split (its bitmap count).
    pub changed_blocks: u64,
    /// When this node last became primary (wall clock ms; 0 = unknown).
    pub promoted_at_ms: u64,
}

/// The outcome of the split-brain policies, from the local node's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SbResolution {
    /// Our changes are discarded: we become sync target (bitmap-based).
    LocalIsVictim { policy: &'static str },
    /// The peer's changes are discarded: we become sync source.
    PeerIsVictim { policy: &'static str },
    /// No automatic recovery: drop the connection, stay StandAlone.
    Disconnect { reason: String },
}

/// Which side loses, as `Some(true)` = local. Both nodes compute the same
/// victim because every rule is symmetric in (local, peer) and ties break on
/// node id.
fn pick_0pri(policy: AfterSb0Pri, local: &SbSide, peer: &SbSide) -> Result<bool, String> {
    let tie = local.node_id > peer.node_id;
    match policy {
        AfterSb0Pri::Disconnect => Err("after-sb-0pri is disconnect".into()),
        AfterSb0Pri::DiscardYoungerPrimary | AfterSb0Pri::DiscardOlderPrimary => {
            if local.promoted_at_ms == 0
                || peer.promoted_at_ms == 0
                || local.promoted_at_ms == peer.promoted_at_ms
            {
                return Err("cannot tell which node became primary last".into());
            }
            let local_younger = local.promoted_at_ms > peer.promoted_at_ms;
            Ok(local_younger == (policy == AfterSb0Pri::DiscardYoungerPrimary))
        }
        AfterSb0Pri::DiscardZeroChanges => {
            match (local.changed_blocks == 0, peer.changed_blocks == 0) {
                (true, true) => Ok(tie),
                (true, false) => Ok(true),
                (false, true) => Ok(false),
                (false, false) => Err(format!(
                "both nodes changed data ({} and {} blocks); discard-zero-changes cannot choose",
                local.changed_blocks, peer.changed_blocks
            )),
            }
        }
        AfterSb0Pri::DiscardLeastChanges => {
            Ok(match local.changed_blocks.cmp(&peer.changed_blocks) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => tie,
            })
        }
    }
}

fn victim(local_is_victim: bool, policy: &'static str) -> SbResolution {
    if local_is_victim {
        SbResolution::LocalIsVictim { policy }
    } else {
        SbResolution::PeerIsVictim { policy }
    }
}

fn refuse(why: String) -> SbResolution {
    SbResolution::Disconnect {
        reason: format!("split brain not resolved automatically ({why}); resolve it manually: `drbdctl connect --discard-my-data` on the victim"),
    }
}

/// Applies the configured policy for the number of primaries.
pub fn resolve_split_brain(policy: &SbPolicy, local: &SbSide, peer: &SbSide) -> SbResolution {
    let name0 = sb0_name(policy.after_sb_0pri);
    match (local.primary, peer.primary) {
        (false, false) => match pick_0pri(policy.after_sb_0pri, local, peer) {
            Ok(v) => victim(v, name0),
            Err(why) => refuse(why),
        },
        (true, true) => refuse(match policy.after_sb_2pri {
            AfterSb2Pri::Disconnect => "after-sb-2pri is disconnect".into(),
            other => format!("after-sb-2pri {other:?} is not supported"),
        }),
        _ => match policy.after_sb_1pri {
            AfterSb1Pri::Disconnect => refuse("after-sb-1pri is disconnect".into()),
            AfterSb1Pri::DiscardSecondary => victim(!local.primary, "discard-secondary"),
            AfterSb1Pri::Consensus => match pick_0pri(policy.after_sb_0pri, local, peer) {
                Ok(v) if v != local.primary => victim(v, "consensus"),
                Ok(_) => refuse(format!("consensus: {name0} would discard the primary")),
                Err(why) => refuse(format!("consensus: {why}")),
            },
            other => refuse(format!("after-sb-1pri {other:?} is not supported")),
        },
    }
}

fn sb0_name(p: AfterSb0Pri) -> &'static str {
    match p {
        AfterSb0Pri::Disconnect => "disconnect",
        AfterSb0Pri::DiscardYoungerPrimary => "discard-younger-primary",
        AfterSb0Pri::DiscardOlderPrimary => "discard-older-primary",
        AfterSb0Pri::DiscardZeroChanges => "discard-zero-changes",
        AfterSb0Pri::DiscardLeastChanges => "discard-least-changes",
    }
}

#[cfg(test)]
#[path = "generation_tests.rs"]
mod tests;
