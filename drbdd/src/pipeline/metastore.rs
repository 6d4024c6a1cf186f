//! [`PipelineMeta`] for the real on-disk metadata, `drbdd_metadata::MetaStore`.
//!
//! Owns: the translation between the pipeline's needs and the metadata API.
//! Must never: add policy (what to mark, when to flush is decided by the
//! pipeline and `MetaStore`).

use super::meta::{AlError, PipelineMeta};
use drbdd_metadata::{MetaDevice, MetaError, MetaStore};
use std::fmt::Debug;

impl<D> PipelineMeta for MetaStore<D>
where
    D: MetaDevice + Send + Debug,
    MetaStore<D>: Debug,
{
    fn al_activate(&mut self, extents: &[u64]) -> Result<(), AlError> {
        match MetaStore::al_activate(self, extents) {
            Ok(_) => Ok(()),
            Err(MetaError::AlFull { .. }) => Err(AlError::Full),
            Err(e) => Err(AlError::Failed(e.to_string())),
        }
    }

    fn al_activate_cached(&mut self, extents: &[u64]) -> bool {
        MetaStore::al_activate_cached(self, extents)
    }

    fn al_release(&mut self, extents: &[u64]) {
        MetaStore::al_release(self, extents);
    }

    fn al_logged_extents(&self) -> Vec<u64> {
        MetaStore::al_logged_extents(self)
    }

    fn peer_slots_in_use(&self) -> Vec<usize> {
        let sb = self.superblock();
        sb.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.node_id.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    fn mark_out_of_sync(&mut self, slot: usize, offset_bytes: u64, len_bytes: u64) {
        self.bitmap_set_range(slot, offset_bytes, len_bytes);
    }

    fn flush_bitmap(&mut self) -> Result<(), String> {
        self.bitmap_flush().map_err(|e| e.to_string())
    }

    fn persist(&mut self) -> Result<(), String> {
        // Writes every dirty bitmap page and records al_clean in the superblock.
        self.close_clean().map_err(|e| e.to_string())
    }

    fn set_md_flushes(&mut self, md_flushes: bool) {
        MetaStore::set_md_flushes(self, md_flushes);
    }

    fn needs_al_recovery(&self) -> bool {
        let flags = &self.superblock().flags;
        flags.crashed_primary || flags.primary || !flags.al_clean
    }

    fn al_recovery_complete(&self) -> bool {
        MetaStore::al_recovery_complete(self)
    }

    fn clear_crash_flags(&mut self) -> Result<(), String> {
        self.update_superblock(|sb| {
            sb.flags.crashed_primary = false;
            sb.flags.primary = false;
            sb.flags.al_clean = true;
        })
        .map_err(|e| e.to_string())
    }

    fn data_size_bytes(&self) -> u64 {
        self.superblock().data_size_bytes
    }
}
