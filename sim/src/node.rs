//! One simulated node: the real resource state machine (`ResourceCore`), one
//! real `Peer` per connection, metadata in a real `MetaStore` over a
//! fault-injecting `MemDevice`, and a simulated data disk.
//!
//! Owns: the mapping between the core's views (GI tuple, disk flags) and the
//! persistent superblock, loading a node back from metadata after a crash,
//! and building the `LocalState` a peer announces. Must never: decide
//! protocol questions itself (that is the core's job) or keep state across a
//! crash that a real daemon would lose.

use std::collections::BTreeMap;

use drbdd_metadata::{layout_external, CreateOptions, Layout, MemDevice, MetaError, MetaStore};
use drbdd_replication::ack::{PeerOutcome, Protocol};
use drbdd_replication::generation::{Generations, SbPolicy};
use drbdd_replication::handshake::HandshakeConfig;
use drbdd_replication::peer::{LocalState, Peer, PeerConfig};
use drbdd_replication::resource::{Command, MdView, PeerState, ResourceCore};
use drbdd_replication::resync::{RateConfig, SyncBitmap};
use drbdd_replication::state::{DiskState, Role};

use crate::disk::{SimDisk, BLOCK_BYTES};

/// Blocks of the replicated device (the workload and the checks use all of them).
pub(crate) const DEV_BLOCKS: u64 = 64;
/// Bytes of the replicated device.
pub(crate) const DEV_BYTES: u64 = DEV_BLOCKS * BLOCK_BYTES;
/// The metadata layout needs at least 1 MiB of data; the replicated device is
/// its first `DEV_BYTES`.
const MD_DATA_BYTES: u64 = 1 << 20;
const MD_DEVICE_BYTES: u64 = 4 << 20;
const AL_EXTENTS: u32 = 7;

/// An application request in flight on this node.
#[derive(Debug, Clone)]
pub(crate) enum OpKind {
    Write {
        block: u64,
        stamp: u64,
        fua: bool,
    },
    /// `floors[n]`: node n's acknowledged floor when the flush was issued.
    Flush {
        floors: Vec<Vec<u64>>,
    },
    Read {
        floor: u64,
    },
}

/// One application request and its legs.
#[derive(Debug, Clone)]
pub(crate) struct AppOp {
    pub(crate) kind: OpKind,
    pub(crate) local_done: bool,
    /// remote node -> outcome of that peer's leg (None: pending).
    pub(crate) legs: BTreeMap<usize, Option<PeerOutcome>>,
    /// Every node's boot number when the request was issued.
    pub(crate) boots: Vec<u64>,
    /// When the request was issued (simulated ms).
    pub(crate) issued_ms: u64,
    /// remote node -> how many resyncs from this node to it had started
    /// when its leg went out of sync (see `Model::resync_starts`).
    pub(crate) oos_at_resync: BTreeMap<usize, u64>,
}

/// One node of the cluster.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: usize,
    pub(crate) alive: bool,
    /// Increments at every crash: completions of an older boot are dropped.
    pub(crate) boot: u64,
    pub(crate) core: ResourceCore,
    pub(crate) meta: Option<MetaStore<MemDevice>>,
    /// The metadata device while the node is down.
    pub(crate) md_dev_down: Option<MemDevice>,
    pub(crate) layout: Layout,
    pub(crate) disk: SimDisk,
    pub(crate) peers: BTreeMap<usize, Peer>,
    pub(crate) ops: BTreeMap<u64, AppOp>,
    /// Disk latency multiplier is large while set.
    pub(crate) slow_disk: bool,
    pub(crate) promoted_at_ms: u64,
    /// Bits were cleared since the last bitmap writeout.
    pub(crate) bits_cleared: bool,
}

/// The bitmap slot of `remote` in `local`'s metadata.
pub(crate) fn slot_of(local: usize, remote: usize) -> usize {
    if remote < local {
        remote
    } else {
        remote - 1
    }
}

/// Connection settings every node uses.
pub(crate) fn peer_config(
    local: usize,
    remote: usize,
    protocol: Protocol,
    sb: SbPolicy,
) -> PeerConfig {
    PeerConfig {
        handshake: HandshakeConfig {
            resource: "r0".into(),
            local_node_id: u8::try_from(local).expect("node id fits u8"),
            peer_node_id: u8::try_from(remote).expect("node id fits u8"),
            shared_secret: None,
            features: 0,
        },
        protocol,
        max_buffers: 16,
        ping_int_ms: 1000,
        ping_timeout_ms: 500,
        connect_timeout_ms: 5000,
        sb_policy: sb,
        rate: RateConfig {
            resync_rate_kib: 100_000,
            c_plan_ahead_ms: 0,
            c_fill_target_bytes: 0,
            c_max_rate_kib: 0,
            c_min_rate_kib: 0,
        },
        max_resync_requests: 4,
        max_resync_request_bytes: 4 * 4096,
    }
}

impl Node {
    /// A node with fresh metadata. `gens_current`: a shared initial data
    /// generation (skip-initial-sync setup), or `None` for just-created
    /// Inconsistent metadata.
    pub(crate) fn create(
        id: usize,
        nodes: usize,
        gens_current: Option<u64>,
    ) -> Result<Self, MetaError> {
        let max_peers = u8::try_from(nodes.saturating_sub(1).max(1)).expect("few nodes");
        let layout = layout_external(MD_DATA_BYTES, MD_DEVICE_BYTES, max_peers, AL_EXTENTS)?;
        let opts = CreateOptions {
            node_id: u8::try_from(id).expect("node id fits u8"),
            max_peers,
            al_extents: AL_EXTENTS,
        };
        let mut meta = MetaStore::create(MemDevice::new(MD_DEVICE_BYTES), layout, opts)?;
        if let Some(current) = gens_current {
            meta.update_superblock(|sb| {
                sb.current_uuid = current;
                sb.flags.consistent = true;
                sb.flags.was_up_to_date = true;
            })?;
        }
        let mut node = Self {
            id,
            alive: true,
            boot: 0,
            core: ResourceCore::new("r0", Vec::new()),
            meta: Some(meta),
            md_dev_down: None,
            layout,
            disk: SimDisk::new(DEV_BLOCKS),
            peers: BTreeMap::new(),
            ops: BTreeMap::new(),
            slow_disk: false,
            promoted_at_ms: 0,
            bits_cleared: false,
        };
        node.attach_from_meta(nodes);
        Ok(node)
    }

    /// Builds the resource state from the metadata (node start or restart).
    fn attach_from_meta(&mut self, nodes: usize) {
        let meta = self.meta.as_ref().expect("attached metadata");
        let sb = meta.superblock();
        let slots = usize::from(sb.max_peers);
        let gens = Generations {
            current: sb.current_uuid,
            bitmaps: (0..slots).map(|s| sb.peers[s].bitmap_uuid).collect(),
            history: sb.history_uuids,
        };
        let md = MdView {
            consistent: sb.flags.consistent,
            was_up_to_date: sb.flags.was_up_to_date,
            outdated: sb.flags.outdated,
            primary: false,
            crashed_primary: sb.flags.primary || sb.flags.crashed_primary,
            gens,
        };
        let peers = (0..nodes)
            .filter(|r| *r != self.id)
            .map(|r| {
                let nid = u8::try_from(r).expect("node id fits u8");
                PeerState::standalone(&format!("n{r}"), nid, slot_of(self.id, r))
            })
            .collect();
        self.core = ResourceCore::new("r0", peers);
        self.core
            .handle(Command::Attach { md })
            .expect("attach on a fresh resource state cannot be refused");
    }

    /// Creates the `Peer` for `remote` from the persistent bitmap.
    pub(crate) fn make_peer(&self, remote: usize, cfg: PeerConfig) -> Peer {
        let slot = slot_of(self.id, remote);
        let mut bitmap = SyncBitmap::for_size(DEV_BYTES);
        if let Some(meta) = &self.meta {
            let mut from = 0;
            while let Some(bit) = meta.bitmap_next_set(slot, from) {
                if bit >= DEV_BLOCKS {
                    break;
                }
                bitmap.set_range(bit * BLOCK_BYTES, BLOCK_BYTES);
                from = bit + 1;
            }
        }
        Peer::new(cfg, self.local_state(remote), bitmap)
    }

    pub(crate) fn md(&self) -> &MdView {
        self.core
            .md
            .as_ref()
            .expect("simulated nodes always have a disk")
    }

    pub(crate) fn md_mut(&mut self) -> &mut MdView {
        self.core
            .md
            .as_mut()
            .expect("simulated nodes always have a disk")
    }

    /// What this node announces to `remote`.
    pub(crate) fn local_state(&self, remote: usize) -> LocalState {
        let md = self.md();
        let mut generations = md.gens.view(slot_of(self.id, remote));
        generations.crashed_primary = md.crashed_primary;
        LocalState {
            role: self.core.role,
            disk: self.core.disk,
            backing_bytes: DEV_BYTES,
            current_bytes: DEV_BYTES,
            max_io_bytes: 1 << 20,
            generations,
            promoted_at_ms: self.promoted_at_ms,
            sync_target_of_another: self.core.sync_target_of_another(slot_of(self.id, remote)),
        }
    }

    /// Writes the resource's metadata view to the superblock (crash-safe).
    pub(crate) fn persist(&mut self) -> Result<(), MetaError> {
        let md = self.md().clone();
        let meta = self.meta.as_mut().expect("persist on a running node");
        meta.update_superblock(|sb| {
            sb.flags.consistent = md.consistent;
            sb.flags.was_up_to_date = md.was_up_to_date;
            sb.flags.outdated = md.outdated;
            sb.flags.primary = md.primary;
            sb.flags.crashed_primary = md.crashed_primary;
            sb.current_uuid = md.gens.current;
            sb.history_uuids = md.gens.history;
            for (slot, uuid) in md.gens.bitmaps.iter().enumerate() {
                sb.peers[slot].bitmap_uuid = *uuid;
            }
        })
    }

    /// Power loss: in-flight state is gone; the disks keep what they keep.
    pub(crate) fn crash(&mut self, rng: &mut crate::rng::SimRng) -> usize {
        self.alive = false;
        self.boot += 1;
        self.peers.clear();
        self.ops.clear();
        let lost = self.disk.crash(rng);
        if let Some(meta) = self.meta.take() {
            let mut dev = meta.into_device();
            dev.crash();
            self.md_dev_down = Some(dev);
        }
        lost
    }

    /// Reboot: reload from metadata, with activity-log recovery.
    pub(crate) fn restart(&mut self, nodes: usize) -> Result<(), MetaError> {
        let dev = self.md_dev_down.take().expect("restart of a crashed node");
        let mut meta = MetaStore::open(dev, self.layout)?;
        // Activity-log recovery after any unclean stop: application writes
        // (also of a primary demoted since) may have reached only this disk.
        if !meta.superblock().flags.al_clean {
            for slot in 0..usize::from(meta.superblock().max_peers) {
                meta.al_mark_logged_out_of_sync(slot);
            }
            meta.bitmap_flush()?;
        }
        self.meta = Some(meta);
        self.alive = true;
        self.slow_disk = false;
        self.attach_from_meta(nodes);
        self.core.role = Role::Secondary;
        self.persist()
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.alive && self.core.role == Role::Primary
    }

    pub(crate) fn up_to_date(&self) -> bool {
        self.core.disk == DiskState::UpToDate
    }
}
