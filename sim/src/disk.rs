//! The simulated data disk of one node: a durable image and a volatile write
//! cache, with blocks identified by the stamp of the write that produced them.
//!
//! Owns: what survives a crash (flushed or FUA writes always; each unflushed
//! cached write independently with probability 1/2) and the byte encoding of
//! stamps into 4 KiB blocks. Must never: lose a flushed write or invent data.

use std::collections::BTreeMap;

use crate::rng::SimRng;

/// Bytes of one block (the replication core's bitmap granule).
pub(crate) const BLOCK_BYTES: u64 = 4096;
const BLOCK_USIZE: usize = 4096;

/// A data disk of `blocks` blocks; each block holds a write stamp (0 = never written).
#[derive(Debug, Clone)]
pub struct SimDisk {
    durable: Vec<u64>,
    cache: BTreeMap<u64, u64>,
}

impl SimDisk {
    pub fn new(blocks: u64) -> Self {
        Self {
            durable: vec![0; usize::try_from(blocks).expect("disk fits memory")],
            cache: BTreeMap::new(),
        }
    }

    pub fn blocks(&self) -> u64 {
        u64::try_from(self.durable.len()).expect("usize fits u64")
    }

    fn idx(block: u64) -> usize {
        usize::try_from(block).expect("block index fits usize")
    }

    /// What a read returns now (cache first).
    pub fn read(&self, block: u64) -> u64 {
        self.cache
            .get(&block)
            .copied()
            .unwrap_or(self.durable[Self::idx(block)])
    }

    /// What survives a crash for sure.
    pub fn read_durable(&self, block: u64) -> u64 {
        self.durable[Self::idx(block)]
    }

    /// A completed write; `fua` writes are durable at once.
    pub fn write(&mut self, block: u64, stamp: u64, fua: bool) {
        if fua {
            self.cache.remove(&block);
            self.durable[Self::idx(block)] = stamp;
        } else {
            self.cache.insert(block, stamp);
        }
    }

    pub fn flush(&mut self) {
        for (block, stamp) in std::mem::take(&mut self.cache) {
            self.durable[Self::idx(block)] = stamp;
        }
    }

    /// Power loss: every unflushed write survives or not, independently.
    pub fn crash(&mut self, rng: &mut SimRng) -> usize {
        let mut lost = 0;
        for (block, stamp) in std::mem::take(&mut self.cache) {
            if rng.chance(500) {
                self.durable[Self::idx(block)] = stamp;
            } else {
                lost += 1;
            }
        }
        lost
    }

    /// Current contents of every block.
    pub fn image(&self) -> Vec<u64> {
        (0..self.blocks()).map(|b| self.read(b)).collect()
    }
}

/// The 4 KiB payload of a block holding `stamp`: the stamp repeated.
pub fn encode_block(stamp: u64, out: &mut Vec<u8>) {
    for _ in 0..BLOCK_USIZE / 8 {
        out.extend_from_slice(&stamp.to_le_bytes());
    }
}

/// Decodes a block payload back to its stamp; `None` if it is not a
/// well-formed block (torn or corrupted data).
pub fn decode_block(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != BLOCK_USIZE {
        return None;
    }
    let first: [u8; 8] = bytes[..8].try_into().ok()?;
    let stamp = u64::from_le_bytes(first);
    bytes.chunks_exact(8).all(|c| c == first).then_some(stamp)
}

/// Decodes a multi-block payload.
pub(crate) fn decode_blocks(bytes: &[u8]) -> Option<Vec<u64>> {
    if !bytes.len().is_multiple_of(BLOCK_USIZE) {
        return None;
    }
    bytes.chunks_exact(BLOCK_USIZE).map(decode_block).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_writes_survive_crash_and_stamps_round_trip() {
        let mut rng = SimRng::new(1);
        let mut d = SimDisk::new(4);
        d.write(0, 7, false);
        d.flush();
        d.write(1, 8, true);
        d.crash(&mut rng);
        assert_eq!((d.read(0), d.read(1)), (7, 8));
        let mut buf = Vec::new();
        encode_block(0xdead_beef, &mut buf);
        assert_eq!(decode_block(&buf), Some(0xdead_beef));
        buf[100] ^= 1;
        assert_eq!(decode_block(&buf), None);
    }
}
