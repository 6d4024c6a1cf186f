//! Where metadata lives and how large it is. Owns: the size formula and the
//! placement of the superblock copies, the activity-log ring and the per-peer
//! bitmaps. Must never: do I/O.
//!
//! Sizes follow the DRBD user's guide (23.1): per peer one bit per 4 KiB of data,
//! rounded up to whole 4 KiB pages, plus a superblock area and an activity-log area.

use crate::al::AL_CONTEXT_MAX;
use crate::superblock::MAX_PEERS;
use crate::MetaError;

/// One bitmap bit covers this many bytes of data.
pub const BITMAP_GRANULE_BYTES: u64 = 4096;
/// One activity-log extent covers this many bytes of data.
pub const AL_EXTENT_BYTES: u64 = 4 << 20;
/// Metadata block size; every metadata structure is aligned to it.
pub(crate) const MD_BLOCK_BYTES: u64 = 4096;
/// Two alternately written superblock copies.
pub(crate) const SUPERBLOCK_AREA_BYTES: u64 = 2 * MD_BLOCK_BYTES;
/// The activity-log ring never has fewer blocks than this.
pub(crate) const AL_RING_MIN_BLOCKS: u32 = 8;
/// Smallest data area we accept.
pub(crate) const MIN_DATA_BYTES: u64 = 1 << 20;
/// Largest al-extents value (the same bound DRBD uses).
pub(crate) const AL_EXTENTS_MAX: u32 = 65534;

/// Placement of data and metadata. All offsets/sizes are multiples of 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// Usable data at offset 0 of the backing device (the net size reported).
    pub data_size_bytes: u64,
    /// Where metadata starts on its device (the backing device if internal).
    pub md_offset_bytes: u64,
    /// Size of the whole metadata area.
    pub md_size_bytes: u64,
    pub max_peers: u8,
    pub al_extents: u32,
    /// Blocks in the activity-log ring.
    pub al_ring_blocks: u32,
    /// Bytes of bitmap per peer slot (a multiple of 4096).
    pub bitmap_bytes_per_peer: u64,
    /// Metadata at the end of the data device (true) or on its own device.
    pub internal: bool,
}

impl Layout {
    pub(crate) fn sb_offset(&self, copy: usize) -> u64 {
        self.md_offset_bytes + MD_BLOCK_BYTES * u64::try_from(copy).unwrap_or(0)
    }
    pub(crate) fn al_block_offset(&self, block: u32) -> u64 {
        self.md_offset_bytes + SUPERBLOCK_AREA_BYTES + MD_BLOCK_BYTES * u64::from(block)
    }
    pub(crate) fn bitmap_offset(&self, slot: usize) -> u64 {
        self.md_offset_bytes
            + SUPERBLOCK_AREA_BYTES
            + MD_BLOCK_BYTES * u64::from(self.al_ring_blocks)
            + self.bitmap_bytes_per_peer * u64::try_from(slot).unwrap_or(0)
    }
    /// Bits in each peer bitmap that cover data.
    pub fn bitmap_bits(&self) -> u64 {
        self.data_size_bytes.div_ceil(BITMAP_GRANULE_BYTES)
    }
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Activity-log ring length: every context chunk must fit in the ring minus one
/// (possibly torn) block, so recovery always sees the whole set.
pub(crate) fn al_ring_blocks(al_extents: u32) -> u32 {
    (al_extents.div_ceil(AL_CONTEXT_MAX) + 1).max(AL_RING_MIN_BLOCKS)
}

fn bitmap_bytes_per_peer(data_size_bytes: u64) -> u64 {
    round_up(
        data_size_bytes.div_ceil(BITMAP_GRANULE_BYTES).div_ceil(8),
        MD_BLOCK_BYTES,
    )
}

/// Metadata size for a data area of `data_size_bytes`.
fn md_size(data_size_bytes: u64, max_peers: u8, al_extents: u32) -> u64 {
    SUPERBLOCK_AREA_BYTES
        + MD_BLOCK_BYTES * u64::from(al_ring_blocks(al_extents))
        + u64::from(max_peers) * bitmap_bytes_per_peer(data_size_bytes)
}

fn check_params(max_peers: u8, al_extents: u32) -> Result<(), MetaError> {
    if max_peers == 0 || usize::from(max_peers) > MAX_PEERS {
        return Err(MetaError::InvalidParameter(format!(
            "max-peers {max_peers} is out of range; use 1..={MAX_PEERS}"
        )));
    }
    if al_extents == 0 || al_extents > AL_EXTENTS_MAX {
        return Err(MetaError::InvalidParameter(format!(
            "al-extents {al_extents} is out of range; use 1..={AL_EXTENTS_MAX}"
        )));
    }
    Ok(())
}

fn build(data: u64, md_offset: u64, max_peers: u8, al_extents: u32, internal: bool) -> Layout {
    Layout {
        data_size_bytes: data,
        md_offset_bytes: md_offset,
        md_size_bytes: md_size(data, max_peers, al_extents),
        max_peers,
        al_extents,
        al_ring_blocks: al_ring_blocks(al_extents),
        bitmap_bytes_per_peer: bitmap_bytes_per_peer(data),
        internal,
    }
}

/// Metadata at the end of the backing device; the data area is the largest
/// 4 KiB multiple such that data + metadata fit.
pub fn layout_internal(
    backing_bytes: u64,
    max_peers: u8,
    al_extents: u32,
) -> Result<Layout, MetaError> {
    check_params(max_peers, al_extents)?;
    let need_bytes = MIN_DATA_BYTES + md_size(MIN_DATA_BYTES, max_peers, al_extents);
    let too_small = MetaError::TooSmall {
        have_bytes: backing_bytes,
        need_bytes,
        max_peers,
        al_extents,
    };
    if backing_bytes < need_bytes {
        return Err(too_small);
    }
    // Binary search the largest data size (in 4 KiB blocks) that fits.
    let fits = |blocks: u64| {
        blocks * MD_BLOCK_BYTES + md_size(blocks * MD_BLOCK_BYTES, max_peers, al_extents)
            <= backing_bytes
    };
    let (mut lo, mut hi) = (
        MIN_DATA_BYTES / MD_BLOCK_BYTES,
        backing_bytes / MD_BLOCK_BYTES,
    );
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let data = lo * MD_BLOCK_BYTES;
    let md = md_size(data, max_peers, al_extents);
    // Metadata ends as close to the device end as 4 KiB alignment allows.
    let md_offset = (backing_bytes - md) / MD_BLOCK_BYTES * MD_BLOCK_BYTES;
    debug_assert!(md_offset >= data);
    Ok(build(data, md_offset, max_peers, al_extents, true))
}

/// Metadata at offset 0 of its own device; data uses the whole data device
/// (rounded down to 4 KiB).
pub fn layout_external(
    data_backing_bytes: u64,
    md_device_bytes: u64,
    max_peers: u8,
    al_extents: u32,
) -> Result<Layout, MetaError> {
    check_params(max_peers, al_extents)?;
    let data = data_backing_bytes / MD_BLOCK_BYTES * MD_BLOCK_BYTES;
    if data < MIN_DATA_BYTES {
        return Err(MetaError::InvalidParameter(format!(
            "data device too small: {data_backing_bytes} bytes, need at least {MIN_DATA_BYTES} bytes; use a larger device"
        )));
    }
    let need_bytes = md_size(data, max_peers, al_extents);
    if md_device_bytes < need_bytes {
        return Err(MetaError::TooSmall {
            have_bytes: md_device_bytes,
            need_bytes,
            max_peers,
            al_extents,
        });
    }
    Ok(build(data, 0, max_peers, al_extents, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DRBD's exact formula, in bytes: ceil(data_sectors / 2^18) * 8 sectors per peer.
    fn guide_bitmap_bytes(data_bytes: u64, peers: u64) -> u64 {
        (data_bytes / 512).div_ceil(1 << 18) * 8 * 512 * peers
    }

    #[test]
    fn bitmap_area_matches_users_guide_formula() {
        for &gib in &[1u64, 10, 100, 1000, 4096] {
            for &peers in &[1u8, 2, 7, 31] {
                let data = gib << 30;
                let l = layout_external(data, 1 << 40, peers, 1237).unwrap();
                let fixed =
                    SUPERBLOCK_AREA_BYTES + MD_BLOCK_BYTES * u64::from(al_ring_blocks(1237));
                assert_eq!(
                    l.md_size_bytes - fixed,
                    guide_bitmap_bytes(data, u64::from(peers))
                );
            }
        }
    }

    #[test]
    fn internal_layout_is_maximal_and_fits() {
        for &size in &[8u64 << 20, (100 << 20) + 512, 10 << 30, (1 << 40) + 12345] {
            for &peers in &[1u8, 3, 7, 31] {
                let l = layout_internal(size, peers, 1237).unwrap();
                assert_eq!(l.data_size_bytes % 4096, 0);
                assert_eq!(l.md_offset_bytes % 4096, 0);
                assert!(l.md_offset_bytes >= l.data_size_bytes);
                assert!(l.md_offset_bytes + l.md_size_bytes <= size);
                let bigger = l.data_size_bytes + 4096;
                assert!(
                    bigger + md_size(bigger, peers, 1237) > size,
                    "not maximal for {size}/{peers}"
                );
            }
        }
    }

    #[test]
    fn too_small_device_reports_minimum() {
        let err = layout_internal(1 << 20, 1, 1237).unwrap_err();
        let need = MIN_DATA_BYTES + md_size(MIN_DATA_BYTES, 1, 1237);
        assert!(
            err.to_string()
                .contains(&format!("need at least {need} bytes")),
            "{err}"
        );
        assert!(layout_internal(need, 1, 1237).is_ok());
        assert!(layout_internal(need - 1, 1, 1237).is_err());
    }

    #[test]
    fn ring_covers_all_al_context_chunks() {
        for &n in &[1u32, 880, 881, 6433, 65534] {
            assert!(al_ring_blocks(n) > n.div_ceil(AL_CONTEXT_MAX));
        }
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(layout_internal(1 << 30, 0, 1237).is_err());
        assert!(layout_internal(1 << 30, 32, 1237).is_err());
        assert!(layout_internal(1 << 30, 1, 0).is_err());
        assert!(layout_external(1 << 30, 4096, 1, 1237).is_err());
    }
}
