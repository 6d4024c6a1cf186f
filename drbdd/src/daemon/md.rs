//! Where a resource's metadata lives on this node and how to open, create,
//! dump, restore and check it; shared by the daemon (attach) and drbdctl's
//! local metadata commands (like drbdmeta).
//!
//! Owns: mapping config (disk, meta-disk, max-peers, al-extents) to a metadata
//! layout on a [`FileMetaDevice`], the peer-slot assignment, and converting the
//! superblock to and from the state machine's [`MdView`]. Must never: decide
//! state transitions (that is `drbdd_replication::resource`).

use crate::metadev::{device_size_bytes, FileMetaDevice};
use drbdd_config::{MetaDisk, Node, Resource};
use drbdd_metadata::{
    detect_signature, layout_external, layout_internal, CreateOptions, Layout, MetaError,
    MetaStore, Superblock,
};
use drbdd_replication::generation::Generations;
use drbdd_replication::resource::MdView;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

/// Bytes at the start of the backing device checked for file-system signatures.
pub const SIGNATURE_PROBE_BYTES: usize = 128 * 1024;

/// Why a metadata operation failed. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    #[error("node {node} of resource {resource} is diskless (no `disk` in its [on.{node}] section); there is no metadata")]
    Diskless { resource: String, node: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds {what} data; refusing to overwrite it with metadata. \
         Wipe it first or use --force if you are sure the data is not needed"
    )]
    Signature { path: PathBuf, what: &'static str },
    #[error("{path}: {source}")]
    Meta { path: PathBuf, source: MetaError },
}

/// Where one node's data and metadata are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdLocation {
    pub data_path: PathBuf,
    /// Same as `data_path` for internal metadata.
    pub md_path: PathBuf,
    pub internal: bool,
    pub node_id: u8,
    pub max_peers: u8,
    pub al_extents: u32,
}

impl MdLocation {
    /// The location for `node` of `res`; `max_peers` overrides the config's.
    pub fn of(res: &Resource, node: &Node, max_peers: Option<u8>) -> Result<Self, MdError> {
        let data_path = node.disk.clone().ok_or_else(|| MdError::Diskless {
            resource: res.name.clone(),
            node: node.name.clone(),
        })?;
        let (md_path, internal) = match &node.meta_disk {
            MetaDisk::Internal => (data_path.clone(), true),
            MetaDisk::External(p) => (p.clone(), false),
        };
        Ok(MdLocation {
            data_path,
            md_path,
            internal,
            node_id: node.node_id,
            max_peers: max_peers.unwrap_or(res.max_peers),
            al_extents: res.disk.al_extents,
        })
    }

    fn meta_err(&self, source: MetaError) -> MdError {
        MdError::Meta {
            path: self.md_path.clone(),
            source,
        }
    }

    fn open_dev(&self) -> Result<FileMetaDevice, MdError> {
        FileMetaDevice::open(&self.md_path).map_err(|source| MdError::Open {
            path: self.md_path.clone(),
            source,
        })
    }

    fn size_of(path: &PathBuf) -> Result<u64, MdError> {
        File::open(path)
            .and_then(|f| device_size_bytes(&f))
            .map_err(|source| MdError::Open {
                path: path.clone(),
                source,
            })
    }

    /// The layout for the devices' current sizes.
    pub fn layout(&self) -> Result<Layout, MdError> {
        let data_bytes = Self::size_of(&self.data_path)?;
        let layout = if self.internal {
            layout_internal(data_bytes, self.max_peers, self.al_extents)
        } else {
            let md_bytes = Self::size_of(&self.md_path)?;
            layout_external(data_bytes, md_bytes, self.max_peers, self.al_extents)
        };
        layout.map_err(|e| self.meta_err(e))
    }

    /// Opens existing metadata.
    pub fn open(&self) -> Result<MetaStore<FileMetaDevice>, MdError> {
        let layout = self.layout()?;
        MetaStore::open(self.open_dev()?, layout).map_err(|e| self.meta_err(e))
    }

    /// Writes fresh metadata. Without `force`, refuses when the data device
    /// starts with a file-system (or other) signature.
    pub fn create(&self, force: bool) -> Result<MetaStore<FileMetaDevice>, MdError> {
        let layout = self.layout()?;
        if !force {
            if let Some(what) = self.signature()? {
                return Err(MdError::Signature {
                    path: self.data_path.clone(),
                    what,
                });
            }
        }
        let opts = CreateOptions {
            node_id: self.node_id,
            max_peers: self.max_peers,
            al_extents: self.al_extents,
        };
        MetaStore::create(self.open_dev()?, layout, opts).map_err(|e| self.meta_err(e))
    }

    /// The signature found in the first [`SIGNATURE_PROBE_BYTES`] of the data device.
    pub fn signature(&self) -> Result<Option<&'static str>, MdError> {
        let mut head = Vec::with_capacity(SIGNATURE_PROBE_BYTES);
        File::open(&self.data_path)
            .and_then(|f| {
                f.take(u64::try_from(SIGNATURE_PROBE_BYTES).unwrap_or(u64::MAX))
                    .read_to_end(&mut head)
            })
            .map_err(|source| MdError::Open {
                path: self.data_path.clone(),
                source,
            })?;
        Ok(detect_signature(&head))
    }

    /// The stable text dump of the metadata.
    pub fn dump(&self) -> Result<String, MdError> {
        self.open()?.dump().map_err(|e| self.meta_err(e))
    }

    /// Replaces the metadata with a dump's contents.
    pub fn restore(&self, text: &str) -> Result<(), MdError> {
        let layout = self.layout()?;
        MetaStore::restore(self.open_dev()?, layout, text)
            .map(|_| ())
            .map_err(|e| self.meta_err(e))
    }

    /// Checks every metadata copy; the text report and whether all is well.
    pub fn check(&self) -> Result<(bool, String), MdError> {
        let layout = self.layout()?;
        let report = MetaStore::check(self.open_dev()?, layout).map_err(|e| self.meta_err(e))?;
        let mut text = format!(
            "superblock copies: {:?}; in use: {:?}\nactivity log: newest seq {}, {} logged extent(s), complete: {}\n",
            report.superblock_copies,
            report.superblock_used,
            report.al_newest_seq,
            report.al_logged_extents.len(),
            report.al_complete
        );
        for p in &report.problems {
            text.push_str(&format!("problem: {p}\n"));
        }
        Ok((report.is_ok(), text))
    }
}

/// The peer slot of `peer_node_id`: the slot already assigned to it, else the
/// first free slot (assigned here; the caller persists). `None` when full.
pub fn assign_slot(sb: &mut Superblock, peer_node_id: u8) -> Option<usize> {
    if let Some(i) = sb
        .peers
        .iter()
        .position(|p| p.node_id == Some(peer_node_id))
    {
        return Some(i);
    }
    let free = sb.peers.iter().position(|p| p.node_id.is_none())?;
    sb.peers[free].node_id = Some(peer_node_id);
    Some(free)
}

/// The state machine's view of a superblock.
pub fn view_of(sb: &Superblock) -> MdView {
    MdView {
        consistent: sb.flags.consistent,
        was_up_to_date: sb.flags.was_up_to_date,
        outdated: sb.flags.outdated,
        primary: sb.flags.primary,
        crashed_primary: sb.flags.crashed_primary,
        gens: Generations {
            current: sb.current_uuid,
            bitmaps: sb.peers.iter().map(|p| p.bitmap_uuid).collect(),
            history: sb.history_uuids,
        },
    }
}

/// Writes the state machine's view back into a superblock.
pub fn apply_view(sb: &mut Superblock, v: &MdView) {
    sb.flags.consistent = v.consistent;
    sb.flags.was_up_to_date = v.was_up_to_date;
    sb.flags.outdated = v.outdated;
    sb.flags.primary = v.primary;
    sb.flags.crashed_primary = v.crashed_primary;
    sb.current_uuid = v.gens.current;
    sb.history_uuids = v.gens.history;
    for (slot, uuid) in sb.peers.iter_mut().zip(&v.gens.bitmaps) {
        slot.bitmap_uuid = *uuid;
    }
}

/// A random UUID usable as a new generation (never 0 or the just-created value).
pub fn random_uuid() -> std::io::Result<u64> {
    let mut f = File::open("/dev/urandom")?;
    loop {
        let mut b = [0u8; 8];
        f.read_exact(&mut b)?;
        let v = u64::from_le_bytes(b) & !1; // DRBD keeps bit 0 for flags
        if !drbdd_replication::generation::is_empty_uuid(v) {
            return Ok(v);
        }
    }
}
