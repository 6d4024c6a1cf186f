//! The metadata store: opens/creates metadata on a [`MetaDevice`], keeps the
//! superblock, bitmaps and activity log in memory and writes them crash-safely.
//! Owns: write ordering. Must never: write to a device whose metadata failed to
//! open, or let an extent leave the AL before its bitmap bits are durable.
//!
//! Superblock: copy `seq % 2` holds sequence `seq`; an update writes the older
//! copy with seq+1, flushes, then the other copy with seq+2 and flushes, so both
//! copies normally hold the same content and a torn write leaves one valid copy.

use std::fmt;

use crate::al::{classify, recover, ActivityLog, AlActivation, AlTransaction, Recovery, RingBlock};
use crate::bitmap::Bitmap;
use crate::device::MetaDevice;
use crate::layout::{Layout, AL_EXTENT_BYTES, BITMAP_GRANULE_BYTES, MD_BLOCK_BYTES};
use crate::superblock::{
    self, MdFlags, PeerSlot, SbCopy, SbDefect, Superblock, FORMAT_VERSION, SB_BYTES,
};
use crate::MetaError;

/// Bitmap pages written with one `write_at` at most (1 MiB).
const MAX_PAGES_PER_WRITE: usize = 256;

/// Parameters of `create-md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreateOptions {
    pub node_id: u8,
    pub max_peers: u8,
    pub al_extents: u32,
}

/// Status of one on-disk copy/block, as `check` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CopyStatus {
    Valid { seq: u64 },
    Empty,
    Invalid(String),
}

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    pub superblock_copies: Vec<CopyStatus>,
    /// The copy `open` would use.
    pub superblock_used: Option<usize>,
    pub al_blocks: Vec<CopyStatus>,
    pub al_newest_seq: u64,
    pub al_run_len: u64,
    /// False: the log cannot be fully rebuilt; the whole device must be treated as dirty.
    pub al_complete: bool,
    pub al_logged_extents: Vec<u64>,
    /// Human-readable problems; empty when everything is valid.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when `open` would succeed and nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn status_text(s: &CopyStatus) -> String {
    match s {
        CopyStatus::Valid { seq } => format!("valid seq {seq}"),
        CopyStatus::Empty => "empty".into(),
        CopyStatus::Invalid(why) => format!("invalid: {why}"),
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.superblock_copies.iter().enumerate() {
            let used = if self.superblock_used == Some(i) {
                " (used)"
            } else {
                ""
            };
            writeln!(f, "superblock copy {i}: {}{used}", status_text(s))?;
        }
        for (i, s) in self.al_blocks.iter().enumerate() {
            writeln!(f, "al block {i}: {}", status_text(s))?;
        }
        writeln!(
            f,
            "al newest seq {} run {} complete {}",
            self.al_newest_seq, self.al_run_len, self.al_complete
        )?;
        writeln!(f, "al logged extents: {:?}", self.al_logged_extents)?;
        if self.problems.is_empty() {
            writeln!(f, "result: ok")
        } else {
            self.problems
                .iter()
                .try_for_each(|p| writeln!(f, "problem: {p}"))
        }
    }
}

/// Metadata of one device, loaded in memory.
#[derive(Debug)]
pub struct MetaStore<D: MetaDevice> {
    pub(crate) dev: D,
    pub(crate) layout: Layout,
    pub(crate) sb: Superblock,
    pub(crate) sb_seq: u64,
    pub(crate) bitmaps: Vec<Bitmap>,
    pub(crate) al: ActivityLog,
    al_complete: bool,
    md_flushes: bool,
}

pub(crate) fn io<T>(offset_bytes: u64, r: std::io::Result<T>) -> Result<T, MetaError> {
    r.map_err(|source| MetaError::Io {
        offset_bytes,
        source,
    })
}

fn check_device(dev: &impl MetaDevice, layout: &Layout) -> Result<(), MetaError> {
    let need = layout.md_offset_bytes + layout.md_size_bytes;
    if dev.size_bytes() < need {
        return Err(MetaError::TooSmall {
            have_bytes: dev.size_bytes(),
            need_bytes: need,
            max_peers: layout.max_peers,
            al_extents: layout.al_extents,
        });
    }
    Ok(())
}

pub(crate) fn read_superblocks(
    dev: &mut impl MetaDevice,
    layout: &Layout,
) -> Result<Vec<Result<SbCopy, SbDefect>>, MetaError> {
    (0..2)
        .map(|copy| {
            let off = layout.sb_offset(copy);
            let mut buf = vec![0u8; SB_BYTES];
            io(off, dev.read_at(off, &mut buf))?;
            Ok(superblock::decode(&buf).and_then(|c| {
                if usize::try_from(c.seq % 2) == Ok(copy) {
                    Ok(c)
                } else {
                    Err(SbDefect::Malformed(format!(
                        "sequence {} stored in the wrong copy",
                        c.seq
                    )))
                }
            }))
        })
        .collect()
}

pub(crate) fn read_ring(
    dev: &mut impl MetaDevice,
    layout: &Layout,
) -> Result<Vec<RingBlock>, MetaError> {
    (0..layout.al_ring_blocks)
        .map(|b| {
            let off = layout.al_block_offset(b);
            let mut buf = vec![0u8; SB_BYTES];
            io(off, dev.read_at(off, &mut buf))?;
            Ok(classify(&buf, layout.al_extents))
        })
        .collect()
}

/// Picks the newest valid copy, or explains why there is none.
fn choose_superblock(
    copies: &[Result<SbCopy, SbDefect>],
    layout: &Layout,
) -> Result<(usize, SbCopy), MetaError> {
    let best = copies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().ok().map(|c| (i, c)))
        .max_by_key(|(_, c)| c.seq);
    if let Some((i, c)) = best {
        return Ok((i, c.clone()));
    }
    let offset_bytes = layout.md_offset_bytes;
    if let Some(SbDefect::Newer(found)) = copies
        .iter()
        .find_map(|c| c.as_ref().err().filter(|d| matches!(d, SbDefect::Newer(_))))
    {
        return Err(MetaError::NewerVersion {
            found: *found,
            supported: FORMAT_VERSION,
        });
    }
    if copies.iter().all(|c| matches!(c, Err(SbDefect::NoMagic))) {
        return Err(MetaError::NoMetadata { offset_bytes });
    }
    let what = copies
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "superblock copy {i}: {}",
                c.as_ref().err().map_or("valid".into(), |d| d.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(MetaError::Corrupt { offset_bytes, what })
}

fn check_matches_layout(c: &SbCopy, layout: &Layout) -> Result<(), MetaError> {
    let checks = [
        (
            "max-peers",
            u64::from(c.sb.max_peers),
            u64::from(layout.max_peers),
        ),
        (
            "al-extents",
            u64::from(c.sb.al_extents),
            u64::from(layout.al_extents),
        ),
        (
            "data size (bytes)",
            c.sb.data_size_bytes,
            layout.data_size_bytes,
        ),
        (
            "metadata size (bytes)",
            c.md_size_bytes,
            layout.md_size_bytes,
        ),
        (
            "al ring blocks",
            u64::from(c.al_ring_blocks),
            u64::from(layout.al_ring_blocks),
        ),
        (
            "bitmap bytes per peer",
            c.bitmap_bytes_per_peer,
            layout.bitmap_bytes_per_peer,
        ),
    ];
    for (what, on_disk, wanted) in checks {
        if on_disk != wanted {
            return Err(MetaError::Mismatch(format!(
                "{what} is {on_disk} in the metadata but {wanted} for this configuration/device; \
                 change the configuration back, or `drbdctl dump-md`, `create-md` and `restore-md` (editing the dump)"
            )));
        }
    }
    Ok(())
}

impl<D: MetaDevice> MetaStore<D> {
    /// Writes fresh metadata (all bitmaps clear, empty AL, UUIDs zero).
    pub fn create(dev: D, layout: Layout, opts: CreateOptions) -> Result<Self, MetaError> {
        if opts.max_peers != layout.max_peers || opts.al_extents != layout.al_extents {
            return Err(MetaError::InvalidParameter(format!(
                "create options (max-peers {}, al-extents {}) differ from the layout (max-peers {}, al-extents {}); compute the layout with the same values",
                opts.max_peers, opts.al_extents, layout.max_peers, layout.al_extents
            )));
        }
        if opts.node_id > 31 {
            return Err(MetaError::InvalidParameter(format!(
                "node-id {} is out of range; use 0..=31",
                opts.node_id
            )));
        }
        let sb = Superblock {
            node_id: opts.node_id,
            max_peers: opts.max_peers,
            data_size_bytes: layout.data_size_bytes,
            al_extents: opts.al_extents,
            flags: MdFlags {
                al_clean: true,
                ..MdFlags::default()
            },
            current_uuid: 0,
            history_uuids: [0; superblock::HISTORY_UUIDS],
            peers: vec![PeerSlot::default(); usize::from(opts.max_peers)],
        };
        let ring = vec![RingBlock::Empty; usize::try_from(layout.al_ring_blocks).unwrap_or(0)];
        let bitmaps = Self::fresh_bitmaps(&layout);
        Self::write_all(dev, layout, sb, 2, &ring, bitmaps)
    }

    pub(crate) fn fresh_bitmaps(layout: &Layout) -> Vec<Bitmap> {
        (0..layout.max_peers)
            .map(|_| Bitmap::new(layout.bitmap_bits(), layout.bitmap_bytes_per_peer))
            .collect()
    }

    /// Writes a complete metadata image: invalidates old superblocks first so a
    /// crash midway never leaves old superblocks over new bitmaps.
    pub(crate) fn write_all(
        mut dev: D,
        layout: Layout,
        sb: Superblock,
        sb_seq: u64,
        ring: &[RingBlock],
        mut bitmaps: Vec<Bitmap>,
    ) -> Result<Self, MetaError> {
        check_device(&dev, &layout)?;
        assert!(sb_seq >= 2, "superblock sequence starts at 2");
        let zero = vec![0u8; SB_BYTES];
        for copy in 0..2 {
            io(
                layout.sb_offset(copy),
                dev.write_at(layout.sb_offset(copy), &zero),
            )?;
        }
        io(layout.md_offset_bytes, dev.flush())?;
        for (b, block) in (0u32..).zip(ring) {
            let data = match block {
                RingBlock::Valid(t) => t.encode(layout.al_extents),
                RingBlock::Empty | RingBlock::Invalid(_) => zero.clone(),
            };
            io(
                layout.al_block_offset(b),
                dev.write_at(layout.al_block_offset(b), &data),
            )?;
        }
        for bm in &mut bitmaps {
            bm.mark_all_dirty();
        }
        let rec = recover(ring, layout.al_extents);
        let mut store = Self {
            dev,
            layout,
            sb: sb.clone(),
            sb_seq: sb_seq - 2,
            bitmaps,
            al: ActivityLog::from_recovery(&rec),
            al_complete: rec.complete,
            md_flushes: true,
        };
        store.bitmap_flush()?;
        store.write_superblock(&sb)?;
        Ok(store)
    }

    /// Opens existing metadata. On any error nothing has been written.
    pub fn open(mut dev: D, layout: Layout) -> Result<Self, MetaError> {
        check_device(&dev, &layout)?;
        let copies = read_superblocks(&mut dev, &layout)?;
        let (_, copy) = choose_superblock(&copies, &layout)?;
        check_matches_layout(&copy, &layout)?;
        let rec = recover(&read_ring(&mut dev, &layout)?, layout.al_extents);
        let bitmaps = Self::read_bitmaps(&mut dev, &layout)?;
        Ok(Self {
            dev,
            layout,
            sb: copy.sb,
            sb_seq: copy.seq,
            bitmaps,
            al: ActivityLog::from_recovery(&rec),
            al_complete: rec.complete,
            md_flushes: true,
        })
    }

    fn read_bitmaps(dev: &mut D, layout: &Layout) -> Result<Vec<Bitmap>, MetaError> {
        let mut bitmaps = Self::fresh_bitmaps(layout);
        let mut buf = vec![0u8; SB_BYTES];
        for (slot, bm) in bitmaps.iter_mut().enumerate() {
            for page in 0..bm.pages() {
                let off =
                    layout.bitmap_offset(slot) + MD_BLOCK_BYTES * u64::try_from(page).unwrap_or(0);
                io(off, dev.read_at(off, &mut buf))?;
                if !bm.load_page(page, &buf) {
                    return Err(MetaError::Corrupt {
                        offset_bytes: off,
                        what: format!(
                            "bitmap of peer slot {slot} has bits set beyond the data size"
                        ),
                    });
                }
            }
        }
        Ok(bitmaps)
    }

    /// Verifies every crc and reports what `open` would use. Never writes.
    pub fn check(mut dev: D, layout: Layout) -> Result<CheckReport, MetaError> {
        check_device(&dev, &layout)?;
        let copies = read_superblocks(&mut dev, &layout)?;
        let mut problems = Vec::new();
        let superblock_copies = copies
            .iter()
            .map(|c| match c {
                Ok(c) => CopyStatus::Valid { seq: c.seq },
                Err(SbDefect::NoMagic) => CopyStatus::Empty,
                Err(d) => CopyStatus::Invalid(d.to_string()),
            })
            .collect();
        let chosen = choose_superblock(&copies, &layout)
            .and_then(|(i, c)| check_matches_layout(&c, &layout).map(|()| i));
        let superblock_used = chosen.as_ref().ok().copied();
        if let Err(e) = &chosen {
            problems.push(e.to_string());
        }
        if copies.iter().any(|c| c.is_err()) && superblock_used.is_some() {
            problems.push("one superblock copy is not valid; the other is used (the next update rewrites both)".into());
        }
        let ring = read_ring(&mut dev, &layout)?;
        let rec: Recovery = recover(&ring, layout.al_extents);
        let al_blocks = ring
            .iter()
            .map(|b| match b {
                RingBlock::Valid(t) => CopyStatus::Valid { seq: t.seq },
                RingBlock::Empty => CopyStatus::Empty,
                RingBlock::Invalid(why) => CopyStatus::Invalid(why.clone()),
            })
            .collect::<Vec<_>>();
        if al_blocks
            .iter()
            .any(|b| matches!(b, CopyStatus::Invalid(_)))
        {
            problems.push("activity log has invalid blocks (a torn or corrupted transaction); the newest valid run is used".into());
        }
        if !rec.complete {
            problems.push(
                "activity log cannot be fully rebuilt; the whole device must be resynced".into(),
            );
        }
        if let Err(e) = Self::read_bitmaps(&mut dev, &layout) {
            problems.push(e.to_string());
        }
        let mut logged: Vec<u64> = rec
            .slots
            .iter()
            .filter(|e| **e != crate::al::EMPTY)
            .map(|e| u64::from(*e))
            .collect();
        logged.sort_unstable();
        Ok(CheckReport {
            superblock_copies,
            superblock_used,
            al_blocks,
            al_newest_seq: rec.last_seq,
            al_run_len: rec.run_len,
            al_complete: rec.complete,
            al_logged_extents: logged,
            problems,
        })
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether AL transactions are flushed before `al_activate` returns (default true).
    /// Turn off only when the device has a non-volatile write cache.
    pub fn set_md_flushes(&mut self, md_flushes: bool) {
        self.md_flushes = md_flushes;
    }

    fn write_superblock(&mut self, sb: &Superblock) -> Result<(), MetaError> {
        for step in 1..=2 {
            let seq = self.sb_seq + step;
            let copy = usize::try_from(seq % 2).unwrap_or(0);
            let off = self.layout.sb_offset(copy);
            io(
                off,
                self.dev
                    .write_at(off, &superblock::encode(sb, seq, &self.layout)),
            )?;
            io(off, self.dev.flush())?;
        }
        self.sb_seq += 2;
        self.sb = sb.clone();
        Ok(())
    }

    /// Changes the superblock; returns after both copies are durable.
    pub fn update_superblock(&mut self, f: impl FnOnce(&mut Superblock)) -> Result<(), MetaError> {
        let mut next = self.sb.clone();
        f(&mut next);
        assert_eq!(
            next.max_peers, self.sb.max_peers,
            "max_peers cannot change in place"
        );
        assert_eq!(
            next.al_extents, self.sb.al_extents,
            "al_extents cannot change in place"
        );
        assert_eq!(
            next.data_size_bytes, self.sb.data_size_bytes,
            "data size cannot change in place"
        );
        assert_eq!(
            next.peers.len(),
            usize::from(next.max_peers),
            "one peer slot per max_peers"
        );
        self.write_superblock(&next)
    }

    fn bitmap(&mut self, slot: usize) -> &mut Bitmap {
        let n = self.bitmaps.len();
        self.bitmaps
            .get_mut(slot)
            .unwrap_or_else(|| panic!("peer slot {slot} out of range (max-peers {n})"))
    }

    /// Marks every 4 KiB granule touched by the range out of sync (in memory).
    pub fn bitmap_set_range(&mut self, slot: usize, offset_bytes: u64, len_bytes: u64) {
        self.bitmap(slot).set_range(offset_bytes, len_bytes);
    }

    /// Marks granules fully covered by the range in sync (in memory).
    pub fn bitmap_clear_range(&mut self, slot: usize, offset_bytes: u64, len_bytes: u64) {
        self.bitmap(slot).clear_range(offset_bytes, len_bytes);
    }

    pub fn bitmap_count(&self, slot: usize) -> u64 {
        self.bitmaps[slot].count()
    }

    pub fn bitmap_next_set(&self, slot: usize, from_bit: u64) -> Option<u64> {
        self.bitmaps[slot].next_set(from_bit)
    }

    /// Bits in each bitmap (one per 4 KiB of data).
    pub fn bitmap_bits(&self) -> u64 {
        self.layout.bitmap_bits()
    }

    fn write_dirty_pages(
        &mut self,
        only_extents: Option<&[u64]>,
    ) -> Result<Vec<(usize, usize)>, MetaError> {
        let bits_per_extent = AL_EXTENT_BYTES / BITMAP_GRANULE_BYTES;
        let mut written = Vec::new();
        for slot in 0..self.bitmaps.len() {
            if let Some(exts) = only_extents {
                let wanted: Vec<usize> = self.bitmaps[slot]
                    .dirty_pages()
                    .into_iter()
                    .filter(|p| {
                        let per_page = 8 * MD_BLOCK_BYTES;
                        let (lo, hi) = (
                            u64::try_from(*p).unwrap_or(0) * per_page,
                            (u64::try_from(*p).unwrap_or(0) + 1) * per_page,
                        );
                        exts.iter()
                            .any(|e| e * bits_per_extent < hi && (e + 1) * bits_per_extent > lo)
                    })
                    .collect();
                written.extend(wanted.into_iter().map(|p| (slot, p)));
            } else {
                written.extend(
                    self.bitmaps[slot]
                        .dirty_pages()
                        .into_iter()
                        .map(|p| (slot, p)),
                );
            }
        }
        // Coalesce runs of adjacent dirty pages into writes of up to 1 MiB.
        let mut i = 0;
        while i < written.len() {
            let (slot, first) = written[i];
            let mut data = self.bitmaps[slot].encode_page(first);
            let mut j = i + 1;
            while j < written.len()
                && written[j] == (slot, first + (j - i))
                && j - i < MAX_PAGES_PER_WRITE
            {
                data.extend(self.bitmaps[slot].encode_page(written[j].1));
                j += 1;
            }
            let off = self.layout.bitmap_offset(slot)
                + MD_BLOCK_BYTES * u64::try_from(first).unwrap_or(0);
            io(off, self.dev.write_at(off, &data))?;
            i = j;
        }
        Ok(written)
    }

    fn flush_pages(&mut self, only_extents: Option<&[u64]>) -> Result<(), MetaError> {
        let written = self.write_dirty_pages(only_extents)?;
        if written.is_empty() {
            return Ok(());
        }
        io(self.layout.md_offset_bytes, self.dev.flush())?;
        for (slot, page) in written {
            self.bitmaps[slot].mark_clean(page);
        }
        Ok(())
    }

    /// Writes every dirty bitmap page and flushes the device.
    pub fn bitmap_flush(&mut self) -> Result<(), MetaError> {
        self.flush_pages(None)
    }

    /// Makes `extents` active. Already-active extents only gain an in-flight count;
    /// new ones are logged in one (or, beyond 64, several) crash-safe transactions
    /// before this returns. Bitmap pages of evicted extents are made durable first.
    pub fn al_activate(&mut self, extents: &[u64]) -> Result<AlActivation, MetaError> {
        if self.sb.flags.al_clean {
            self.update_superblock(|sb| sb.flags.al_clean = false)?;
        }
        let plan = self.al.plan(extents).ok_or(MetaError::AlFull {
            al_extents: self.layout.al_extents,
        })?;
        let evicted: Vec<u64> = plan.assign.iter().filter_map(|a| a.2).collect();
        if !evicted.is_empty() {
            self.flush_pages(Some(&evicted))?;
        }
        let transactions: Vec<AlTransaction> = self.al.transactions(&plan);
        for t in &transactions {
            let block = u32::try_from(t.seq % u64::from(self.layout.al_ring_blocks))
                .expect("ring index fits");
            let off = self.layout.al_block_offset(block);
            io(
                off,
                self.dev.write_at(off, &t.encode(self.layout.al_extents)),
            )?;
            if self.md_flushes {
                io(off, self.dev.flush())?;
            }
        }
        let written = u32::try_from(transactions.len()).expect("bounded by al_extents");
        self.al.commit(&plan, u64::from(written));
        Ok(AlActivation {
            transactions_written: written,
            evicted_extents: evicted,
        })
    }

    /// Like [`MetaStore::al_activate`], but only when that needs no metadata
    /// I/O: every extent already in the log and the log already marked in
    /// use. `false` (nothing changed) otherwise.
    pub fn al_activate_cached(&mut self, extents: &[u64]) -> bool {
        if self.sb.flags.al_clean {
            return false;
        }
        match self.al.plan(extents) {
            Some(plan) if plan.assign.is_empty() => {
                self.al.commit(&plan, 0);
                true
            }
            _ => false,
        }
    }

    /// In-flight writes to these extents completed.
    pub fn al_release(&mut self, extents: &[u64]) {
        self.al.release(extents);
    }

    /// Extents in the on-disk log, ascending. After an unclean shutdown
    /// (`!superblock().flags.al_clean`) the caller marks these out of sync.
    pub fn al_logged_extents(&self) -> Vec<u64> {
        self.al.logged_extents()
    }

    /// Crash recovery helper: marks every logged extent out of sync in the bitmap
    /// of peer `slot` (in memory; call `bitmap_flush` afterwards).
    pub fn al_mark_logged_out_of_sync(&mut self, slot: usize) {
        let data = self.layout.data_size_bytes;
        for ext in self.al.logged_extents() {
            let offset = ext.saturating_mul(AL_EXTENT_BYTES);
            if offset < data {
                self.bitmap_set_range(slot, offset, AL_EXTENT_BYTES.min(data - offset));
            }
        }
    }

    /// False when the on-disk log could not be fully rebuilt (too many lost
    /// transactions): after an unclean shutdown the whole device is suspect.
    pub fn al_recovery_complete(&self) -> bool {
        self.al_complete
    }

    /// Clean shutdown: flushes bitmaps and records `al_clean`. Fails if writes are in flight.
    pub fn close_clean(&mut self) -> Result<(), MetaError> {
        if self.al.any_in_flight() {
            return Err(MetaError::Busy(
                "writes are still in flight; wait for them before detaching".into(),
            ));
        }
        self.bitmap_flush()?;
        self.update_superblock(|sb| sb.flags.al_clean = true)
    }

    pub fn into_device(self) -> D {
        self.dev
    }

    /// The device, for inspection in tests and the simulator.
    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }
}
