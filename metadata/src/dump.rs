//! `dump-md` / `restore-md`: a stable, line-based text form of the whole metadata.
//! Owns: the text format. Must never: restore something it cannot verify against
//! the layout (sizes, peer count, al-extents).
//!
//! Format (one item per line, `#` starts a comment line):
//! ```text
//! drbdd-metadata-dump version 1
//! sequence 4
//! node-id 0
//! max-peers 2
//! data-size-bytes 1048576
//! al-extents 7
//! flags consistent,al-clean
//! current-uuid 51CC8C0B06D6F75C
//! history-uuids 0000000000000000 0000000000000000
//!   (newest first: at least two, up to the last non-empty of 32)
//! peer 0 node-id 1 bitmap-uuid 0000000000000000 flags -
//! peer 1 node-id - bitmap-uuid 0000000000000000 flags -
//! bitmap 0 bits 256 set 3
//! run 10 3
//! bitmap 1 bits 256 set 0
//! al-block 0 empty
//! al-block 1 seq 1 updates 0=5 context 0=5
//! al-block 2 invalid crc mismatch (torn or corrupted write)
//! al-active 5
//! end
//! ```
//! Restore writes both superblock copies with the same content (sequence numbers
//! `sequence-1` and `sequence`), every AL block as listed (`invalid` and `empty`
//! blocks as zeros) and the bitmaps, so a dump of a device whose blocks are all
//! valid or empty reproduces its metadata bytes exactly.

use crate::al::{context_range, AlTransaction, RingBlock, EMPTY};
use crate::bitmap::Bitmap;
use crate::device::MetaDevice;
use crate::gi::format_uuid;
use crate::layout::Layout;
use crate::store::{read_ring, MetaStore};
use crate::superblock::{
    flag_list, parse_flag_list, MdFlags, PeerFlags, PeerSlot, Superblock, HISTORY_UUIDS,
    MD_FLAG_NAMES, PEER_FLAG_NAMES,
};
use crate::MetaError;

const HEADER: &str = "drbdd-metadata-dump version 1";

fn ext_text(e: u32) -> String {
    if e == EMPTY {
        "-".into()
    } else {
        e.to_string()
    }
}

fn block_line(i: usize, b: &RingBlock) -> String {
    match b {
        RingBlock::Empty => format!("al-block {i} empty"),
        RingBlock::Invalid(why) => format!("al-block {i} invalid {why}"),
        RingBlock::Valid(t) => {
            let ups: Vec<String> = t
                .updates
                .iter()
                .map(|(s, e)| format!("{s}={}", ext_text(*e)))
                .collect();
            let ctx: Vec<String> = (t.ctx_start..)
                .zip(&t.context)
                .filter(|(_, e)| **e != EMPTY)
                .map(|(s, e)| format!("{s}={e}"))
                .collect();
            let or_dash = |v: Vec<String>| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            format!(
                "al-block {i} seq {} updates {} context {}",
                t.seq,
                or_dash(ups),
                or_dash(ctx)
            )
        }
    }
}

impl<D: MetaDevice> MetaStore<D> {
    /// The whole metadata as text (flushes dirty bitmap pages first).
    pub fn dump(&mut self) -> Result<String, MetaError> {
        self.bitmap_flush()?;
        let sb = &self.sb;
        let mut out = vec![
            HEADER.to_string(),
            format!("sequence {}", self.sb_seq),
            format!("node-id {}", sb.node_id),
            format!("max-peers {}", sb.max_peers),
            format!("data-size-bytes {}", sb.data_size_bytes),
            format!("al-extents {}", sb.al_extents),
            format!("flags {}", flag_list(sb.flags.to_bits(), &MD_FLAG_NAMES)),
            format!("current-uuid {}", format_uuid(sb.current_uuid)),
            format!("history-uuids {}", history_words(&sb.history_uuids)),
        ];
        for (i, p) in sb.peers.iter().enumerate() {
            let node = p.node_id.map_or("-".to_string(), |n| n.to_string());
            let flags = flag_list(p.flags.to_bits(), &PEER_FLAG_NAMES);
            out.push(format!(
                "peer {i} node-id {node} bitmap-uuid {} flags {flags}",
                format_uuid(p.bitmap_uuid)
            ));
        }
        for (i, bm) in self.bitmaps.iter().enumerate() {
            out.push(format!("bitmap {i} bits {} set {}", bm.bits(), bm.count()));
            out.extend(
                bm.runs()
                    .into_iter()
                    .map(|(start, len)| format!("run {start} {len}")),
            );
        }
        let layout = self.layout;
        let ring = read_ring(&mut self.dev, &layout)?;
        out.extend(ring.iter().enumerate().map(|(i, b)| block_line(i, b)));
        let active: Vec<String> = self
            .al_logged_extents()
            .iter()
            .map(u64::to_string)
            .collect();
        out.push(format!(
            "al-active {}",
            if active.is_empty() {
                "-".into()
            } else {
                active.join(" ")
            }
        ));
        out.push("end".into());
        Ok(out.join("\n") + "\n")
    }

    /// Writes metadata described by a dump (see the module docs) and opens it.
    pub fn restore(dev: D, layout: Layout, text: &str) -> Result<Self, MetaError> {
        let parsed = parse(text, &layout)?;
        let store = Self::write_all(
            dev,
            layout,
            parsed.sb,
            parsed.seq,
            &parsed.ring,
            parsed.bitmaps,
        )?;
        let dev = store.into_device();
        Self::open(dev, layout)
    }
}

struct Parsed {
    seq: u64,
    sb: Superblock,
    bitmaps: Vec<Bitmap>,
    ring: Vec<RingBlock>,
}

struct Lines<'a> {
    iter: std::iter::Peekable<std::iter::Enumerate<std::str::Lines<'a>>>,
    line: usize,
}

impl<'a> Lines<'a> {
    fn err(&self, what: impl Into<String>) -> MetaError {
        MetaError::Parse {
            line: self.line,
            what: what.into(),
        }
    }

    fn skip_comments(&mut self) {
        while self
            .iter
            .peek()
            .is_some_and(|(_, l)| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            self.iter.next();
        }
    }

    /// The next line's words, which must start with `key`.
    fn expect(&mut self, key: &str) -> Result<Vec<&'a str>, MetaError> {
        self.skip_comments();
        let (n, l) = self
            .iter
            .next()
            .ok_or_else(|| self.err(format!("unexpected end of dump, expected `{key}`")))?;
        self.line = n + 1;
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.first() != Some(&key) {
            return Err(self.err(format!("expected `{key} ...`, found `{}`", l.trim())));
        }
        Ok(words)
    }

    fn peek_is(&mut self, key: &str) -> bool {
        self.skip_comments();
        self.iter
            .peek()
            .is_some_and(|(_, l)| l.split_whitespace().next() == Some(key))
    }

    fn value<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, MetaError> {
        let w = self.expect(key)?;
        match w.as_slice() {
            [_, v] => v
                .parse()
                .map_err(|_| self.err(format!("bad value `{v}` for `{key}`"))),
            _ => Err(self.err(format!("`{key}` takes one value"))),
        }
    }

    fn num<T: std::str::FromStr>(&self, word: Option<&&str>, what: &str) -> Result<T, MetaError> {
        word.and_then(|w| w.parse().ok())
            .ok_or_else(|| self.err(format!("expected a number for {what}")))
    }

    fn uuid(&self, word: Option<&&str>) -> Result<u64, MetaError> {
        word.filter(|w| w.len() == 16)
            .and_then(|w| u64::from_str_radix(w, 16).ok())
            .ok_or_else(|| self.err("expected a UUID of 16 hex digits"))
    }
}

fn parse(text: &str, layout: &Layout) -> Result<Parsed, MetaError> {
    let mut l = Lines {
        iter: text.lines().enumerate().peekable(),
        line: 0,
    };
    let head = l.expect("drbdd-metadata-dump")?;
    if head.get(1..) != Some(&["version", "1"][..]) {
        return Err(l.err(format!("unsupported dump header; expected `{HEADER}`")));
    }
    let seq: u64 = l.value("sequence")?;
    if seq < 2 || !seq.is_multiple_of(2) {
        return Err(l.err("sequence must be an even number >= 2"));
    }
    let sb = parse_superblock(&mut l, layout)?;
    let bitmaps = (0..usize::from(sb.max_peers))
        .map(|i| parse_bitmap(&mut l, layout, i))
        .collect::<Result<_, _>>()?;
    let ring = (0..layout.al_ring_blocks)
        .map(|i| parse_block(&mut l, layout, i))
        .collect::<Result<Vec<_>, _>>()?;
    l.expect("al-active")?; // informational; derived from the blocks
    l.expect("end")?;
    Ok(Parsed {
        seq,
        sb,
        bitmaps,
        ring,
    })
}

fn parse_superblock(l: &mut Lines<'_>, layout: &Layout) -> Result<Superblock, MetaError> {
    let node_id: u8 = l.value("node-id")?;
    let max_peers: u8 = l.value("max-peers")?;
    let data_size_bytes: u64 = l.value("data-size-bytes")?;
    let al_extents: u32 = l.value("al-extents")?;
    if (max_peers, data_size_bytes, al_extents)
        != (layout.max_peers, layout.data_size_bytes, layout.al_extents)
    {
        return Err(l.err(format!(
            "dump has max-peers {max_peers}, data-size-bytes {data_size_bytes}, al-extents {al_extents} but the target layout has {}, {}, {}; create the layout with the dumped values",
            layout.max_peers, layout.data_size_bytes, layout.al_extents
        )));
    }
    let flags_word: String = l.value("flags")?;
    let flags =
        MdFlags::from_bits(parse_flag_list(&flags_word, &MD_FLAG_NAMES).map_err(|e| l.err(e))?);
    let w = l.expect("current-uuid")?;
    let current_uuid = l.uuid(w.get(1))?;
    let w = l.expect("history-uuids")?;
    if w.len() < 2 || w.len() > HISTORY_UUIDS + 1 {
        return Err(l.err(format!(
            "expected `history-uuids` and 1 to {HISTORY_UUIDS} UUIDs (newest first)"
        )));
    }
    let mut history_uuids = [0u64; HISTORY_UUIDS];
    for (i, h) in history_uuids.iter_mut().enumerate().take(w.len() - 1) {
        *h = l.uuid(w.get(i + 1))?;
    }
    let mut peers = Vec::new();
    for i in 0..usize::from(max_peers) {
        let w = l.expect("peer")?;
        if l.num::<usize>(w.get(1), "peer slot")? != i
            || w.get(2) != Some(&"node-id")
            || w.get(4) != Some(&"bitmap-uuid")
            || w.get(6) != Some(&"flags")
        {
            return Err(l.err(format!(
                "expected `peer {i} node-id N|- bitmap-uuid UUID flags F`"
            )));
        }
        let node_id = if w.get(3) == Some(&"-") {
            None
        } else {
            Some(l.num::<u8>(w.get(3), "node-id")?)
        };
        let bitmap_uuid = l.uuid(w.get(5))?;
        let flags = PeerFlags::from_bits(
            parse_flag_list(w.get(7).unwrap_or(&""), &PEER_FLAG_NAMES).map_err(|e| l.err(e))?,
        );
        peers.push(PeerSlot {
            node_id,
            bitmap_uuid,
            flags,
        });
    }
    Ok(Superblock {
        node_id,
        max_peers,
        data_size_bytes,
        al_extents,
        flags,
        current_uuid,
        history_uuids,
        peers,
    })
}

fn parse_bitmap(l: &mut Lines<'_>, layout: &Layout, slot: usize) -> Result<Bitmap, MetaError> {
    let w = l.expect("bitmap")?;
    if l.num::<usize>(w.get(1), "bitmap slot")? != slot
        || l.num::<u64>(w.get(3), "bits")? != layout.bitmap_bits()
    {
        return Err(l.err(format!(
            "expected `bitmap {slot} bits {} set N`",
            layout.bitmap_bits()
        )));
    }
    let want_set: u64 = l.num(w.get(5), "set")?;
    let mut bm = Bitmap::new(layout.bitmap_bits(), layout.bitmap_bytes_per_peer);
    let granule = crate::layout::BITMAP_GRANULE_BYTES;
    while l.peek_is("run") {
        let w = l.expect("run")?;
        let (start, len): (u64, u64) = (
            l.num(w.get(1), "run start")?,
            l.num(w.get(2), "run length")?,
        );
        if len == 0
            || start
                .checked_add(len)
                .is_none_or(|end| end > layout.bitmap_bits())
        {
            return Err(l.err("run is empty or beyond the end of the bitmap"));
        }
        bm.set_range(start * granule, len * granule);
    }
    if bm.count() != want_set {
        return Err(l.err(format!(
            "bitmap {slot}: runs add up to {} bits, header says {want_set}",
            bm.count()
        )));
    }
    Ok(bm)
}

fn parse_pairs(
    l: &Lines<'_>,
    text: Option<&&str>,
    al_extents: u32,
) -> Result<Vec<(u32, u32)>, MetaError> {
    let text = text.ok_or_else(|| l.err("missing slot=extent list"))?;
    if *text == "-" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (s, e) = pair
                .split_once('=')
                .ok_or_else(|| l.err(format!("expected slot=extent, found `{pair}`")))?;
            let slot: u32 = s
                .parse()
                .ok()
                .filter(|s| *s < al_extents)
                .ok_or_else(|| l.err(format!("bad slot `{s}`")))?;
            let ext = if e == "-" {
                EMPTY
            } else {
                e.parse()
                    .ok()
                    .filter(|e| *e != EMPTY)
                    .ok_or_else(|| l.err(format!("bad extent `{e}`")))?
            };
            Ok((slot, ext))
        })
        .collect()
}

fn parse_block(l: &mut Lines<'_>, layout: &Layout, index: u32) -> Result<RingBlock, MetaError> {
    let w = l.expect("al-block")?;
    if l.num::<u32>(w.get(1), "al-block index")? != index {
        return Err(l.err(format!("expected `al-block {index} ...`")));
    }
    match w.get(2).copied() {
        Some("empty") => return Ok(RingBlock::Empty),
        Some("invalid") => return Ok(RingBlock::Invalid(w[3..].join(" "))),
        Some("seq") => {}
        _ => {
            return Err(l.err("expected `empty`, `invalid ...` or `seq N updates ... context ...`"))
        }
    }
    let seq: u64 = l.num(w.get(3), "seq")?;
    if seq == 0
        || seq % u64::from(layout.al_ring_blocks) != u64::from(index)
        || w.get(4) != Some(&"updates")
        || w.get(6) != Some(&"context")
    {
        return Err(l.err(format!("block {index}: sequence must be > 0 and congruent to the block index; expected `seq N updates U context C`")));
    }
    let updates = parse_pairs(l, w.get(5), layout.al_extents)?;
    if updates.len() > crate::al::AL_UPDATES_MAX {
        return Err(l.err("too many updates in one transaction"));
    }
    let (ctx_start, count) = context_range(seq, layout.al_extents);
    let mut context = vec![EMPTY; usize::try_from(count).unwrap_or(0)];
    for (slot, ext) in parse_pairs(l, w.get(7), layout.al_extents)? {
        let idx = slot
            .checked_sub(ctx_start)
            .filter(|i| *i < count)
            .ok_or_else(|| l.err(format!("context slot {slot} not in this block's chunk")))?;
        context[usize::try_from(idx).unwrap_or(0)] = ext;
    }
    Ok(RingBlock::Valid(AlTransaction {
        seq,
        updates,
        ctx_start,
        context,
    }))
}

/// The history UUIDs of a dump line: at least two (the version 1 form), up
/// to the last non-empty one.
fn history_words(history: &[u64; HISTORY_UUIDS]) -> String {
    let used = history
        .iter()
        .rposition(|h| *h != 0)
        .map_or(0, |i| i + 1)
        .max(2);
    let words: Vec<String> = history[..used].iter().map(|h| format_uuid(*h)).collect();
    words.join(" ")
}
