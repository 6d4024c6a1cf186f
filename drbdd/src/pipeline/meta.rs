//! What the request pipeline needs from the metadata: activity log, per-peer
//! bitmaps, crash flags. A narrow trait so the pipeline runs over the real
//! `MetaStore` and over a test double that can fail or fill up on demand.
//!
//! Owns: the [`PipelineMeta`] trait, crash recovery of the activity log
//! ([`recover_after_crash`]). Must never: hold a metadata lock across backing
//! I/O, or clear the crash flags before the out-of-sync bits are persisted.

use std::fmt::Debug;

/// Bytes covered by one activity-log extent (contract: `AL_EXTENT_BYTES`).
pub const AL_EXTENT_BYTES: u64 = 4 << 20;

/// Activity-log extents touched by `offset_bytes..offset_bytes+len_bytes` (len > 0).
pub fn al_extents_of(offset_bytes: u64, len_bytes: u64) -> Vec<u64> {
    debug_assert!(len_bytes > 0);
    let first = offset_bytes / AL_EXTENT_BYTES;
    let last = (offset_bytes + len_bytes - 1) / AL_EXTENT_BYTES;
    (first..=last).collect()
}

/// Why an activity-log activation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlError {
    /// Every AL slot is held by in-flight writes; retry after a release.
    #[error("activity log full")]
    Full,
    /// The AL transaction could not be written.
    #[error("activity log update failed: {0}")]
    Failed(String),
}

/// Metadata operations the pipeline performs. Implemented for
/// `drbdd_metadata::MetaStore<D>`; tests implement it with fault injection.
pub trait PipelineMeta: Send + Debug {
    /// Makes `extents` active; writes (and flushes when md-flushes is on) a
    /// crash-safe AL transaction first when any was not yet in the log.
    fn al_activate(&mut self, extents: &[u64]) -> Result<(), AlError>;
    /// Like `al_activate`, but only when that needs no metadata I/O (every
    /// extent already active); `false`, changing nothing, otherwise. The
    /// default never activates (direct writes then take the submit path).
    fn al_activate_cached(&mut self, extents: &[u64]) -> bool {
        let _ = extents;
        false
    }
    /// The writes that activated `extents` completed.
    fn al_release(&mut self, extents: &[u64]);
    /// Extents in the on-disk log (what a crash may have left half-written).
    fn al_logged_extents(&self) -> Vec<u64>;
    /// Bitmap slots that belong to a configured peer.
    fn peer_slots_in_use(&self) -> Vec<usize>;
    /// Sets the bits of `slot` covering the byte range (in memory).
    fn mark_out_of_sync(&mut self, slot: usize, offset_bytes: u64, len_bytes: u64);
    /// Writes dirty bitmap pages to the metadata device.
    fn flush_bitmap(&mut self) -> Result<(), String>;
    /// Persists bitmap and superblock (shutdown/quiesce).
    fn persist(&mut self) -> Result<(), String>;
    /// Whether AL transactions are flushed before `al_activate` returns.
    fn set_md_flushes(&mut self, md_flushes: bool);
    /// The node stopped uncleanly (was Primary, crashed Primary, or the
    /// activity log was not closed cleanly): logged extents are suspect.
    fn needs_al_recovery(&self) -> bool;
    /// False when the on-disk log could not be rebuilt completely: then the
    /// whole device is suspect.
    fn al_recovery_complete(&self) -> bool;
    /// Clears the primary/crashed-primary flags and records a clean AL, crash-safely.
    fn clear_crash_flags(&mut self) -> Result<(), String>;
    /// Usable data bytes (bitmap ranges are clipped to this).
    fn data_size_bytes(&self) -> u64;
}

/// What [`recover_after_crash`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashRecovery {
    /// AL extents marked out of sync (empty when there was no crash).
    pub extents: Vec<u64>,
    /// Peer slots whose bitmaps got the bits.
    pub slots: Vec<usize>,
}

/// At attach: if the node stopped uncleanly (e.g. crashed while Primary),
/// writes may have reached the local disk but not the peers in every extent of
/// the on-disk activity log. Marks those extents (the whole device when the log
/// could not be rebuilt) out of sync for every peer slot in use, persists the
/// bitmap, and only then clears the crash flags.
pub fn recover_after_crash(meta: &mut dyn PipelineMeta) -> Result<CrashRecovery, String> {
    if !meta.needs_al_recovery() {
        return Ok(CrashRecovery {
            extents: Vec::new(),
            slots: Vec::new(),
        });
    }
    let size_bytes = meta.data_size_bytes();
    let extents = if meta.al_recovery_complete() {
        meta.al_logged_extents()
    } else {
        (0..size_bytes.div_ceil(AL_EXTENT_BYTES)).collect()
    };
    let slots = meta.peer_slots_in_use();
    for &ext in &extents {
        let start = ext.saturating_mul(AL_EXTENT_BYTES);
        if start >= size_bytes {
            continue;
        }
        let len = AL_EXTENT_BYTES.min(size_bytes - start);
        for &slot in &slots {
            meta.mark_out_of_sync(slot, start, len);
        }
    }
    meta.flush_bitmap()?;
    meta.clear_crash_flags()?;
    Ok(CrashRecovery { extents, slots })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_cover_request_boundaries() {
        assert_eq!(al_extents_of(0, 512), vec![0]);
        assert_eq!(al_extents_of(AL_EXTENT_BYTES - 512, 1024), vec![0, 1]);
        assert_eq!(al_extents_of(3 * AL_EXTENT_BYTES, AL_EXTENT_BYTES), vec![3]);
    }
}
