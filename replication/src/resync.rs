//! Resynchronisation: the out-of-sync bitmap of one peer, the target's
//! linear-order request planner with a bounded in-flight window, the rate
//! controllers (fixed `resync-rate` and the variable-rate `c-*` controller,
//! user's guide 11.9), and progress/ETA.
//!
//! Owns: which blocks to request next, when a reply may be written, and how
//! many bytes may be requested now. Must never: let an older resync reply
//! overwrite an application write that reached the target after the request
//! was sent (such replies are discarded and the blocks re-requested), clear a
//! bit before the block's data is on the target's disk, or keep more than
//! `max_requests` requests in flight.

use std::collections::{BTreeMap, VecDeque};

use crate::wire::Packet;

/// Bytes covered by one bitmap bit (`drbdd_metadata::BITMAP_GRANULE_BYTES`).
pub const BLOCK_BYTES: u64 = 4096;

/// An in-memory out-of-sync bitmap: one bit per 4 KiB block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncBitmap {
    words: Vec<u64>,
    total_blocks: u64,
    set_blocks: u64,
}

fn block_range(offset_bytes: u64, len_bytes: u64) -> (u64, u64) {
    let first = offset_bytes / BLOCK_BYTES;
    let end = offset_bytes.saturating_add(len_bytes).div_ceil(BLOCK_BYTES);
    (first, end)
}

fn to_index(v: u64) -> usize {
    usize::try_from(v).expect("bitmap index fits in memory")
}

impl SyncBitmap {
    pub fn new(total_blocks: u64) -> Self {
        Self {
            words: vec![0; to_index(total_blocks.div_ceil(64))],
            total_blocks,
            set_blocks: 0,
        }
    }

    /// A bitmap for a device of `size_bytes` (a partial last block counts).
    pub fn for_size(size_bytes: u64) -> Self {
        Self::new(size_bytes.div_ceil(BLOCK_BYTES))
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Blocks out of sync.
    pub fn count(&self) -> u64 {
        self.set_blocks
    }

    pub fn is_set(&self, block: u64) -> bool {
        block < self.total_blocks && self.words[to_index(block / 64)] & (1 << (block % 64)) != 0
    }

    fn put(&mut self, block: u64, value: bool) {
        if block >= self.total_blocks || self.is_set(block) == value {
            return;
        }
        let w = &mut self.words[to_index(block / 64)];
        if value {
            *w |= 1 << (block % 64);
            self.set_blocks += 1;
        } else {
            *w &= !(1 << (block % 64));
            self.set_blocks -= 1;
        }
    }

    /// Marks every block touching the byte range out of sync.
    pub fn set_range(&mut self, offset_bytes: u64, len_bytes: u64) {
        let (first, end) = block_range(offset_bytes, len_bytes);
        (first..end.min(self.total_blocks)).for_each(|b| self.put(b, true));
    }

    /// Marks blocks in sync; only blocks the range covers completely.
    pub fn clear_range(&mut self, offset_bytes: u64, len_bytes: u64) {
        let first = offset_bytes.div_ceil(BLOCK_BYTES);
        let end = offset_bytes.saturating_add(len_bytes) / BLOCK_BYTES;
        (first..end.min(self.total_blocks)).for_each(|b| self.put(b, false));
    }

    /// A copy for a device of `total_blocks`: bits beyond the end are
    /// dropped, new blocks are in sync.
    pub fn resized(&self, total_blocks: u64) -> Self {
        let mut out = Self::new(total_blocks);
        let mut block = 0;
        while let Some(b) = self.next_set(block).filter(|b| *b < total_blocks) {
            out.put(b, true);
            block = b + 1;
        }
        out
    }

    pub fn set_all(&mut self) {
        (0..self.total_blocks).for_each(|b| self.put(b, true));
    }

    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.set_blocks = 0;
    }

    /// The first set block at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut block = from;
        while block < self.total_blocks {
            let word = self.words[to_index(block / 64)] >> (block % 64);
            if word != 0 {
                let found = block + u64::from(word.trailing_zeros());
                return (found < self.total_blocks).then_some(found);
            }
            block = (block / 64 + 1) * 64;
        }
        None
    }

    /// Encodes the bitmap as RLE chunks of at most `max_runs` runs each.
    pub fn to_chunks(&self, max_runs: usize) -> Vec<Packet> {
        assert!(
            max_runs >= 2,
            "a chunk needs room for a clear and a set run"
        );
        let mut chunks = Vec::new();
        let mut start = 0;
        loop {
            let (runs, end) = self.runs_from(start, max_runs);
            let last = end >= self.total_blocks;
            chunks.push(Packet::BitmapChunk {
                start_bit: start,
                total_bits: self.total_blocks,
                last,
                runs,
            });
            if last {
                return chunks;
            }
            start = end;
        }
    }

    /// Runs (clear, set, clear, ...) starting at `start`; ends on a set run.
    fn runs_from(&self, start: u64, max_runs: usize) -> (Vec<u64>, u64) {
        let mut runs = Vec::new();
        let mut pos = start;
        while pos < self.total_blocks && runs.len() + 2 <= max_runs {
            let set_at = self.next_set(pos).unwrap_or(self.total_blocks);
            let mut clear_at = set_at;
            while clear_at < self.total_blocks && self.is_set(clear_at) {
                clear_at += 1;
            }
            runs.push(set_at - pos);
            runs.push(clear_at - set_at);
            pos = clear_at;
        }
        (runs, pos)
    }

    /// ORs a received chunk into this bitmap. Returns false if it does not
    /// fit this bitmap (a protocol error).
    pub fn merge_chunk(&mut self, start_bit: u64, total_bits: u64, runs: &[u64]) -> bool {
        if total_bits != self.total_blocks {
            return false;
        }
        let mut pos = start_bit;
        for (i, run) in runs.iter().enumerate() {
            let Some(end) = pos.checked_add(*run).filter(|e| *e <= self.total_blocks) else {
                return false;
            };
            if i % 2 == 1 {
                (pos..end).for_each(|b| self.put(b, true));
            }
            pos = end;
        }
        true
    }
}

/// A request the target sends to the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncRequest {
    pub id: u64,
    pub offset_bytes: u64,
    pub len_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    Requested,
    /// An application write overlapped while requested: discard the reply.
    Stale,
    /// The reply is being written to the target's disk.
    Writing,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    first_block: u64,
    blocks: u64,
    state: ReqState,
}

/// What to do with a resync reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// Write the data at this range, then call [`ResyncPlanner::write_done`].
    Write { offset_bytes: u64, len_bytes: u32 },
    /// Older than an application write: drop it; the blocks are requested again.
    Discard,
}

/// The sync target's request planner.
#[derive(Debug)]
pub struct ResyncPlanner {
    cursor_block: u64,
    next_id: u64,
    max_requests: usize,
    max_request_blocks: u64,
    inflight: BTreeMap<u64, InFlight>,
}

impl ResyncPlanner {
    /// `max_requests` in flight at once, each up to `max_request_bytes`.
    pub fn new(max_requests: usize, max_request_bytes: u32) -> Self {
        let max_request_blocks = (u64::from(max_request_bytes) / BLOCK_BYTES).max(1);
        assert!(max_requests > 0, "need at least one request in flight");
        Self {
            cursor_block: 0,
            next_id: 1,
            max_requests,
            max_request_blocks,
            inflight: BTreeMap::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes requested and not yet written.
    pub fn in_flight_bytes(&self) -> u64 {
        self.inflight.values().map(|r| r.blocks * BLOCK_BYTES).sum()
    }

    fn covered(&self, block: u64) -> bool {
        self.inflight
            .values()
            .any(|r| block >= r.first_block && block < r.first_block + r.blocks)
    }

    /// The next requests in linear order, within the window and `budget_bytes`.
    pub fn next_requests(&mut self, bitmap: &SyncBitmap, budget_bytes: u64) -> Vec<ResyncRequest> {
        let mut out = Vec::new();
        let mut budget = budget_bytes;
        let mut wrapped = false;
        while self.inflight.len() < self.max_requests && budget >= BLOCK_BYTES {
            let Some(first) = self.next_uncovered(bitmap, self.cursor_block) else {
                // Re-requests (discarded replies) sit behind the cursor: wrap once.
                if wrapped || self.cursor_block == 0 {
                    break;
                }
                self.cursor_block = 0;
                wrapped = true;
                continue;
            };
            let limit = self.max_request_blocks.min(budget / BLOCK_BYTES);
            let mut blocks = 1;
            while blocks < limit && bitmap.is_set(first + blocks) && !self.covered(first + blocks) {
                blocks += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.inflight.insert(
                id,
                InFlight {
                    first_block: first,
                    blocks,
                    state: ReqState::Requested,
                },
            );
            self.cursor_block = first + blocks;
            budget -= blocks * BLOCK_BYTES;
            let len_bytes =
                u32::try_from(blocks * BLOCK_BYTES).expect("request bounded by max_request_bytes");
            out.push(ResyncRequest {
                id,
                offset_bytes: first * BLOCK_BYTES,
                len_bytes,
            });
        }
        out
    }

    fn next_uncovered(&self, bitmap: &SyncBitmap, from: u64) -> Option<u64> {
        let mut block = bitmap.next_set(from)?;
        while self.covered(block) {
            block = bitmap.next_set(block + 1)?;
        }
        Some(block)
    }

    /// An application (peer) write reached the target for this range.
    pub fn on_peer_write(&mut self, offset_bytes: u64, len_bytes: u64) {
        let (first, end) = block_range(offset_bytes, len_bytes);
        for r in self.inflight.values_mut() {
            if r.state == ReqState::Requested
                && r.first_block < end
                && first < r.first_block + r.blocks
            {
                r.state = ReqState::Stale;
            }
        }
    }

    /// True if a resync write to this range is on its way to the disk: an
    /// application write there must wait for it (or it could be overtaken).
    pub fn overlaps_writing(&self, offset_bytes: u64, len_bytes: u64) -> bool {
        let (first, end) = block_range(offset_bytes, len_bytes);
        self.inflight.values().any(|r| {
            r.state == ReqState::Writing && r.first_block < end && first < r.first_block + r.blocks
        })
    }

    /// A reply arrived. `None` for an unknown id or a range that does not
    /// match the request (protocol error).
    pub fn on_reply(
        &mut self,
        id: u64,
        offset_bytes: u64,
        len_bytes: usize,
    ) -> Option<ReplyVerdict> {
        let r = self.inflight.get_mut(&id)?;
        let expected_len = r.blocks * BLOCK_BYTES;
        if r.state == ReqState::Writing
            || offset_bytes != r.first_block * BLOCK_BYTES
            || u64::try_from(len_bytes).ok()? != expected_len
        {
            return None;
        }
        if r.state == ReqState::Stale {
            self.inflight.remove(&id);
            self.cursor_block = self.cursor_block.min(offset_bytes / BLOCK_BYTES);
            return Some(ReplyVerdict::Discard);
        }
        r.state = ReqState::Writing;
        let len_bytes = u32::try_from(expected_len).ok()?;
        Some(ReplyVerdict::Write {
            offset_bytes,
            len_bytes,
        })
    }

    /// The source could not read the range: give it up (bits stay set).
    pub fn on_neg_reply(&mut self, id: u64) -> bool {
        self.inflight.remove(&id).is_some()
    }

    /// The reply's data is on the target's disk: the blocks are in sync.
    /// Returns the byte range cleared.
    pub fn write_done(&mut self, id: u64, bitmap: &mut SyncBitmap) -> Option<(u64, u64)> {
        let r = self.inflight.remove(&id)?;
        assert_eq!(
            r.state,
            ReqState::Writing,
            "resync write completed that was never submitted"
        );
        let (offset, len) = (r.first_block * BLOCK_BYTES, r.blocks * BLOCK_BYTES);
        bitmap.clear_range(offset, len);
        Some((offset, len))
    }

    /// Ids of replies being written to the disk.
    pub fn writing_ids(&self) -> Vec<u64> {
        self.inflight
            .iter()
            .filter(|(_, r)| r.state == ReqState::Writing)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Nothing left to request and nothing in flight.
    pub fn is_finished(&self, bitmap: &SyncBitmap) -> bool {
        self.inflight.is_empty() && bitmap.count() == 0
    }

    /// Forgets every request (connection lost); bits stay set. Ids keep
    /// counting up so late completions of old requests match nothing.
    pub fn reset(&mut self) {
        self.inflight.clear();
        self.cursor_block = 0;
    }
}

#[path = "resync_rate.rs"]
mod rate;
pub use rate::{Progress, ProgressMeter, RateConfig, RateController, RATE_STEP_MS};

#[cfg(test)]
#[path = "resync_tests.rs"]
mod tests;

/// Keeps the last few `(now_ms, value)` samples (for rates).
#[derive(Debug, Clone, Default)]
struct Samples {
    points: VecDeque<(u64, u64)>,
}

impl Samples {
    const MAX: usize = 32;

    fn push(&mut self, now_ms: u64, value: u64) {
        if self.points.len() == Self::MAX {
            self.points.pop_front();
        }
        self.points.push_back((now_ms, value));
    }

    /// Change of value per second over the window.
    fn per_second(&self) -> u64 {
        match (self.points.front(), self.points.back()) {
            (Some((t0, v0)), Some((t1, v1))) if t1 > t0 => {
                v1.abs_diff(*v0).saturating_mul(1000) / (t1 - t0)
            }
            _ => 0,
        }
    }
}
