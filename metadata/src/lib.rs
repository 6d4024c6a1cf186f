//! On-disk metadata: superblock, generation identifiers, activity log, per-peer bitmaps.
//!
//! Owns: encoding/decoding, layout, crash-safe write ordering and the in-memory
//! activity log and bitmaps. Must never: open files itself (I/O comes in through
//! [`MetaDevice`]), trust a block whose crc does not match, or write to a device
//! whose metadata failed to open. The on-disk format is described in `LAYOUT.md`.
#![forbid(unsafe_code)]

mod al;
mod bitmap;
mod device;
mod dump;
mod gi;
mod layout;
mod signature;
mod store;
mod superblock;

pub use al::{al_extent_of, AlActivation};
pub use device::{MemDevice, MetaDevice};
pub use gi::{format_uuid, show_gi, show_gi_all};
pub use layout::{layout_external, layout_internal, Layout, AL_EXTENT_BYTES, BITMAP_GRANULE_BYTES};
pub use signature::detect_signature;
pub use store::{CheckReport, CopyStatus, CreateOptions, MetaStore};
pub use superblock::{
    MdFlags, PeerFlags, PeerSlot, Superblock, FORMAT_VERSION, HISTORY_UUIDS, MAX_PEERS,
};

/// Everything that can go wrong with metadata. Messages say what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("device too small: {have_bytes} bytes, need at least {need_bytes} bytes for max-peers {max_peers} and al-extents {al_extents}; use a larger device")]
    TooSmall {
        have_bytes: u64,
        need_bytes: u64,
        max_peers: u8,
        al_extents: u32,
    },
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("no drbdd metadata found at offset {offset_bytes} (magic mismatch): run `drbdctl create-md <res>`")]
    NoMetadata { offset_bytes: u64 },
    #[error("metadata format version {found} is newer than this drbdd supports ({supported}); use a newer drbdd")]
    NewerVersion { found: u32, supported: u32 },
    #[error("metadata at offset {offset_bytes} is corrupt: {what}; restore it with `drbdctl restore-md` from a dump or recreate it with `drbdctl create-md`")]
    Corrupt { offset_bytes: u64, what: String },
    #[error("metadata does not match the configuration: {0}")]
    Mismatch(String),
    #[error("activity log full: all {al_extents} extents are held by in-flight writes; retry after writes complete")]
    AlFull { al_extents: u32 },
    #[error("cannot parse metadata dump, line {line}: {what}")]
    Parse { line: usize, what: String },
    #[error("metadata is busy: {0}")]
    Busy(String),
    #[error("metadata I/O error at offset {offset_bytes}: {source}; check the backing device")]
    Io {
        offset_bytes: u64,
        source: std::io::Error,
    },
}
