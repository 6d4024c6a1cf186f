//! The activity log: which 4 MiB extents may have writes in flight. Owns: the
//! in-memory LRU of at most al_extents extents with per-extent in-flight counts,
//! the 4 KiB transaction block encoding, and recovery of the newest valid run of
//! the on-disk ring. Must never: evict an extent with writes in flight, or report
//! an extent as logged before its transaction is written.
//!
//! Each transaction carries up to [`AL_UPDATES_MAX`] slot updates plus a chunk of
//! the full slot table ("context", chunk number = seq mod chunk count). Replaying
//! any `chunks` consecutive transactions therefore rebuilds the whole table.

use std::collections::HashMap;

use crate::layout::AL_EXTENT_BYTES;
use crate::superblock::{block_crc, get_u32, get_u64};

pub(crate) const AL_MAGIC: [u8; 8] = *b"DRBDDAL\0";
pub(crate) const AL_BLOCK_BYTES: usize = 4096;
pub(crate) const AL_UPDATES_MAX: usize = 64;
pub(crate) const AL_CONTEXT_MAX: u32 = 880;
const HEADER_BYTES: usize = 32;
const CONTEXT_OFFSET: usize = HEADER_BYTES + AL_UPDATES_MAX * 8;
/// Marks an empty slot on disk.
pub(crate) const EMPTY: u32 = u32::MAX;
// Compile-time size assertion: header + updates + context fit one 4 KiB block.
const _: () = assert!(CONTEXT_OFFSET + AL_CONTEXT_MAX as usize * 4 <= AL_BLOCK_BYTES);

/// The activity-log extent holding a byte offset.
pub fn al_extent_of(offset_bytes: u64) -> u64 {
    offset_bytes / AL_EXTENT_BYTES
}

/// What `al_activate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlActivation {
    /// AL transactions written (0 when every extent was already active).
    pub transactions_written: u32,
    /// Idle extents that left the log to make room.
    pub evicted_extents: Vec<u64>,
}

/// One on-disk AL transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlTransaction {
    pub(crate) seq: u64,
    /// (slot, extent or EMPTY)
    pub(crate) updates: Vec<(u32, u32)>,
    pub(crate) ctx_start: u32,
    pub(crate) context: Vec<u32>,
}

pub(crate) fn context_chunks(al_extents: u32) -> u64 {
    u64::from(al_extents.div_ceil(AL_CONTEXT_MAX))
}

/// (start slot, count) of the context chunk a transaction with `seq` carries.
pub(crate) fn context_range(seq: u64, al_extents: u32) -> (u32, u32) {
    let chunk = u32::try_from(seq % context_chunks(al_extents)).expect("chunk count fits u32");
    let start = chunk * AL_CONTEXT_MAX;
    (start, AL_CONTEXT_MAX.min(al_extents - start))
}

impl AlTransaction {
    pub(crate) fn encode(&self, al_extents: u32) -> Vec<u8> {
        assert!(self.updates.len() <= AL_UPDATES_MAX);
        assert!(self.context.len() <= AL_CONTEXT_MAX as usize);
        let mut buf = vec![0u8; AL_BLOCK_BYTES];
        buf[0..8].copy_from_slice(&AL_MAGIC);
        let n_updates = u16::try_from(self.updates.len()).expect("bounded above");
        let n_ctx = u16::try_from(self.context.len()).expect("bounded above");
        buf[12..14].copy_from_slice(&n_updates.to_le_bytes());
        buf[14..16].copy_from_slice(&n_ctx.to_le_bytes());
        buf[16..24].copy_from_slice(&self.seq.to_le_bytes());
        buf[24..28].copy_from_slice(&self.ctx_start.to_le_bytes());
        buf[28..32].copy_from_slice(&al_extents.to_le_bytes());
        for (i, (slot, ext)) in self.updates.iter().enumerate() {
            let at = HEADER_BYTES + i * 8;
            buf[at..at + 4].copy_from_slice(&slot.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&ext.to_le_bytes());
        }
        for (i, ext) in self.context.iter().enumerate() {
            let at = CONTEXT_OFFSET + i * 4;
            buf[at..at + 4].copy_from_slice(&ext.to_le_bytes());
        }
        let crc = block_crc(&buf, 8);
        buf[8..12].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a block; `Err` says why it is not a valid transaction.
    pub(crate) fn decode(buf: &[u8], al_extents: u32) -> Result<Self, String> {
        if buf[0..8] != AL_MAGIC {
            return Err("magic mismatch".into());
        }
        if get_u32(buf, 8) != block_crc(buf, 8) {
            return Err("crc mismatch (torn or corrupted write)".into());
        }
        if get_u32(buf, 28) != al_extents {
            return Err(format!("written for al-extents {}", get_u32(buf, 28)));
        }
        let n_updates = usize::from(u16::from_le_bytes([buf[12], buf[13]]));
        let n_ctx = usize::from(u16::from_le_bytes([buf[14], buf[15]]));
        let seq = get_u64(buf, 16);
        let ctx_start = get_u32(buf, 24);
        if n_updates > AL_UPDATES_MAX
            || (ctx_start, u32::try_from(n_ctx).unwrap_or(0)) != context_range(seq, al_extents)
        {
            return Err("malformed header".into());
        }
        let updates: Vec<(u32, u32)> = (0..n_updates)
            .map(|i| {
                (
                    get_u32(buf, HEADER_BYTES + i * 8),
                    get_u32(buf, HEADER_BYTES + i * 8 + 4),
                )
            })
            .collect();
        if updates.iter().any(|(slot, _)| *slot >= al_extents) {
            return Err("update names a slot beyond al-extents".into());
        }
        let context = (0..n_ctx)
            .map(|i| get_u32(buf, CONTEXT_OFFSET + i * 4))
            .collect();
        let t = Self {
            seq,
            updates,
            ctx_start,
            context,
        };
        if t.encode(al_extents) != buf {
            return Err("non-zero reserved bytes".into());
        }
        Ok(t)
    }
}

/// State of one ring block as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingBlock {
    Empty,
    Valid(AlTransaction),
    Invalid(String),
}

pub(crate) fn classify(buf: &[u8], al_extents: u32) -> RingBlock {
    if buf.iter().all(|b| *b == 0) {
        return RingBlock::Empty;
    }
    match AlTransaction::decode(buf, al_extents) {
        Ok(t) => RingBlock::Valid(t),
        Err(why) => RingBlock::Invalid(why),
    }
}

/// The result of scanning the ring.
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    pub(crate) slots: Vec<u32>,
    /// Sequence number of the newest valid transaction (0: none).
    pub(crate) last_seq: u64,
    /// Transactions in the replayed run.
    pub(crate) run_len: u64,
    /// False when the run was too short to rebuild the whole table: the caller
    /// must treat the whole device as possibly dirty.
    pub(crate) complete: bool,
}

/// Finds the newest valid run of consecutive transactions and replays it.
pub(crate) fn recover(blocks: &[RingBlock], al_extents: u32) -> Recovery {
    let ring = u64::try_from(blocks.len()).expect("ring fits u64");
    let at = |seq: u64| &blocks[usize::try_from(seq % ring).expect("index")];
    let newest = blocks
        .iter()
        .enumerate()
        .filter_map(|(pos, b)| match b {
            RingBlock::Valid(t) if t.seq % ring == u64::try_from(pos).unwrap_or(u64::MAX) => {
                Some(t.seq)
            }
            _ => None,
        })
        .max();
    let mut slots = vec![EMPTY; usize::try_from(al_extents).expect("fits")];
    let Some(last_seq) = newest else {
        return Recovery {
            slots,
            last_seq: 0,
            run_len: 0,
            complete: true,
        };
    };
    let mut first = last_seq;
    while first > 1
        && last_seq - first + 1 < ring
        && matches!(at(first - 1), RingBlock::Valid(t) if t.seq == first - 1)
    {
        first -= 1;
    }
    for seq in first..=last_seq {
        if let RingBlock::Valid(t) = at(seq) {
            for (slot, ext) in &t.updates {
                slots[usize::try_from(*slot).expect("checked")] = *ext;
            }
            let start = usize::try_from(t.ctx_start).expect("fits");
            slots[start..start + t.context.len()].copy_from_slice(&t.context);
        }
    }
    let run_len = last_seq - first + 1;
    Recovery {
        slots,
        last_seq,
        run_len,
        complete: first == 1 || run_len >= context_chunks(al_extents),
    }
}

/// What activating a batch of extents needs: slots to assign (slot, extent, evicted).
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    bump: Vec<usize>,
    /// Every requested extent, once per occurrence (each gains one in-flight count).
    extents: Vec<u64>,
    pub(crate) assign: Vec<(usize, u64, Option<u64>)>,
}

/// The in-memory activity log.
#[derive(Debug, Clone)]
pub(crate) struct ActivityLog {
    slots: Vec<u32>,
    in_flight: Vec<u32>,
    last_used: Vec<u64>,
    tick: u64,
    by_extent: HashMap<u64, usize>,
    pub(crate) next_seq: u64,
}

impl ActivityLog {
    /// Starts from a recovered table; recovered extents are idle, oldest slot first.
    pub(crate) fn from_recovery(rec: &Recovery) -> Self {
        let n = rec.slots.len();
        let mut by_extent = HashMap::new();
        for (slot, ext) in rec.slots.iter().enumerate() {
            if *ext != EMPTY {
                by_extent.insert(u64::from(*ext), slot);
            }
        }
        Self {
            slots: rec.slots.clone(),
            in_flight: vec![0; n],
            last_used: vec![0; n],
            tick: 0,
            by_extent,
            next_seq: rec.last_seq + 1,
        }
    }

    #[cfg(test)]
    pub(crate) fn slots(&self) -> &[u32] {
        &self.slots
    }

    pub(crate) fn logged_extents(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.by_extent.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Decides slots for the extents not yet active; `None` if the log is full.
    pub(crate) fn plan(&self, extents: &[u64]) -> Option<Plan> {
        let mut plan = Plan {
            extents: extents.to_vec(),
            ..Plan::default()
        };
        let mut new: Vec<u64> = Vec::new();
        for &ext in extents {
            assert!(
                ext < u64::from(EMPTY),
                "extent {ext} beyond the 16 PiB the AL can address"
            );
            match self.by_extent.get(&ext) {
                Some(&slot) => plan.bump.push(slot),
                None if !new.contains(&ext) => new.push(ext),
                None => {}
            }
        }
        if new.is_empty() {
            // Every extent is active already (the common case): no slot to
            // choose, so no scan and sort of all `al-extents` slots per write.
            return Some(plan);
        }
        let mut candidates: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.in_flight[s] == 0 && !plan.bump.contains(&s))
            .collect();
        // Free slots first, then least recently used idle ones.
        candidates.sort_by_key(|&s| (self.slots[s] != EMPTY, self.last_used[s], s));
        if candidates.len() < new.len() {
            return None;
        }
        for (ext, slot) in new.into_iter().zip(candidates) {
            let old = self.slots[slot];
            plan.assign
                .push((slot, ext, (old != EMPTY).then_some(u64::from(old))));
        }
        Some(plan)
    }

    /// The transactions that log `plan` (none if nothing is assigned).
    pub(crate) fn transactions(&self, plan: &Plan) -> Vec<AlTransaction> {
        let al_extents = u32::try_from(self.slots.len()).expect("bounded by AL_EXTENTS_MAX");
        let mut table = self.slots.clone();
        let mut seq = self.next_seq;
        plan.assign
            .chunks(AL_UPDATES_MAX)
            .map(|chunk| {
                let updates: Vec<(u32, u32)> = chunk
                    .iter()
                    .map(|&(slot, ext, _)| {
                        let ext = u32::try_from(ext).expect("checked in plan");
                        table[slot] = ext;
                        (u32::try_from(slot).expect("bounded"), ext)
                    })
                    .collect();
                let (start, count) = context_range(seq, al_extents);
                let context = table[start as usize..(start + count) as usize].to_vec();
                let t = AlTransaction {
                    seq,
                    updates,
                    ctx_start: start,
                    context,
                };
                seq += 1;
                t
            })
            .collect()
    }

    /// Applies a plan after its transactions were written. Each occurrence of an
    /// extent in the request counts as one in-flight write.
    pub(crate) fn commit(&mut self, plan: &Plan, transactions_written: u64) {
        self.next_seq += transactions_written;
        for &(slot, ext, evicted) in &plan.assign {
            if let Some(old) = evicted {
                self.by_extent.remove(&old);
            }
            self.slots[slot] = u32::try_from(ext).expect("checked in plan");
            self.by_extent.insert(ext, slot);
        }
        for ext in &plan.extents {
            let slot = self.by_extent[ext];
            self.tick += 1;
            self.in_flight[slot] += 1;
            self.last_used[slot] = self.tick;
        }
    }

    pub(crate) fn release(&mut self, extents: &[u64]) {
        for ext in extents {
            let slot = *self
                .by_extent
                .get(ext)
                .unwrap_or_else(|| panic!("al_release of inactive extent {ext}"));
            assert!(
                self.in_flight[slot] > 0,
                "al_release of extent {ext} without in-flight writes"
            );
            self.in_flight[slot] -= 1;
        }
    }

    pub(crate) fn any_in_flight(&self) -> bool {
        self.in_flight.iter().any(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_round_trips_and_detects_corruption() {
        let t = AlTransaction {
            seq: 5,
            updates: vec![(1, 77), (3, EMPTY)],
            ctx_start: 0,
            context: vec![9, 77, EMPTY, EMPTY],
        };
        let buf = t.encode(4);
        assert_eq!(AlTransaction::decode(&buf, 4).unwrap(), t);
        let mut bad = buf.clone();
        bad[40] ^= 1;
        assert!(AlTransaction::decode(&bad, 4).is_err());
        assert!(AlTransaction::decode(&buf, 5).is_err());
    }

    #[test]
    fn in_flight_extents_are_never_evicted() {
        let mut al = ActivityLog::from_recovery(&recover(&vec![RingBlock::Empty; 8], 2));
        let p = al.plan(&[10, 11]).unwrap();
        al.commit(&p, 1);
        assert!(al.plan(&[12]).is_none());
        al.release(&[10]);
        let p = al.plan(&[12]).unwrap();
        assert_eq!(p.assign, vec![(0, 12, Some(10))]);
    }

    #[test]
    fn recovery_rebuilds_table_from_context_after_wrap() {
        // al_extents 2000 → 3 context chunks; ring of 8.
        let mut al = ActivityLog::from_recovery(&recover(&vec![RingBlock::Empty; 8], 2000));
        let mut ring = vec![RingBlock::Empty; 8];
        for ext in 0..30u64 {
            let p = al.plan(&[ext * 7]).unwrap();
            for t in al.transactions(&p) {
                let pos = usize::try_from(t.seq % 8).unwrap();
                ring[pos] = RingBlock::Valid(t);
            }
            al.commit(&p, 1);
            al.release(&[ext * 7]);
        }
        let rec = recover(&ring, 2000);
        assert!(rec.complete);
        assert_eq!(rec.slots, al.slots());
    }
}
