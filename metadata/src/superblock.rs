//! The superblock: identity, size, flags, generation identifiers and peer slots.
//! Owns: its 4 KiB little-endian, crc32c-checked encoding. Must never: accept a
//! block whose crc, magic or re-encoding does not match.

use crate::layout::Layout;

/// Magic at offset 0 of each superblock copy.
pub(crate) const SB_MAGIC: [u8; 8] = *b"DRBDDMD\0";
/// The metadata format version this code writes. It reads 1 and 2;
/// version 2 keeps [`HISTORY_UUIDS`] history UUIDs (version 1 kept two and
/// has zeros where the others go).
pub const FORMAT_VERSION: u32 = 2;
/// History UUIDs a superblock keeps, newest first (DRBD 9 keeps 32).
pub const HISTORY_UUIDS: usize = 32;
/// Where history UUIDs 2.. live (0 and 1 sit at 64 and 72, as in version 1).
const HISTORY_EXT_OFFSET: usize = 1152;
/// Peer slots a superblock can describe.
pub const MAX_PEERS: usize = 31;
pub(crate) const SB_BYTES: usize = 4096;
const PEERS_OFFSET: usize = 128;
const PEER_BYTES: usize = 32;
const NO_NODE: u8 = 0xFF;
// Compile-time size assertion: header + every peer slot fits one 4 KiB block.
const _: () = assert!(PEERS_OFFSET + MAX_PEERS * PEER_BYTES <= HISTORY_EXT_OFFSET);
const _: () = assert!(HISTORY_EXT_OFFSET + (HISTORY_UUIDS - 2) * 8 <= SB_BYTES);

/// Node-wide flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MdFlags {
    pub consistent: bool,
    pub was_up_to_date: bool,
    /// The node was primary (cleared on clean demotion).
    pub primary: bool,
    pub crashed_primary: bool,
    pub outdated: bool,
    /// A full sync was requested and has not finished.
    pub full_sync: bool,
    /// The activity log was shut down cleanly: all bitmap pages written, nothing
    /// in flight. When false after open, the caller must mark every extent in
    /// `al_logged_extents()` out of sync (or resync it).
    pub al_clean: bool,
}

/// Per-peer flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerFlags {
    pub outdated: bool,
    pub full_sync: bool,
    /// The peer was connected when this was written.
    pub connected: bool,
    pub fencing: bool,
}

/// One peer slot; its index is also the index of its bitmap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerSlot {
    pub node_id: Option<u8>,
    pub bitmap_uuid: u64,
    pub flags: PeerFlags,
}

/// The decoded superblock. `peers.len() == max_peers`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Superblock {
    pub node_id: u8,
    pub max_peers: u8,
    pub data_size_bytes: u64,
    pub al_extents: u32,
    pub flags: MdFlags,
    pub current_uuid: u64,
    pub history_uuids: [u64; HISTORY_UUIDS],
    pub peers: Vec<PeerSlot>,
}

pub(crate) const MD_FLAG_NAMES: [&str; 7] = [
    "consistent",
    "was-up-to-date",
    "primary",
    "crashed-primary",
    "outdated",
    "full-sync",
    "al-clean",
];
pub(crate) const PEER_FLAG_NAMES: [&str; 4] = ["outdated", "full-sync", "connected", "fencing"];

impl MdFlags {
    pub(crate) fn to_bits(self) -> u32 {
        [
            self.consistent,
            self.was_up_to_date,
            self.primary,
            self.crashed_primary,
            self.outdated,
            self.full_sync,
            self.al_clean,
        ]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &on)| acc | (u32::from(on) << i))
    }
    pub(crate) fn from_bits(bits: u32) -> Self {
        let b = |i: u32| bits & (1 << i) != 0;
        Self {
            consistent: b(0),
            was_up_to_date: b(1),
            primary: b(2),
            crashed_primary: b(3),
            outdated: b(4),
            full_sync: b(5),
            al_clean: b(6),
        }
    }
}

impl PeerFlags {
    pub(crate) fn to_bits(self) -> u32 {
        [self.outdated, self.full_sync, self.connected, self.fencing]
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &on)| acc | (u32::from(on) << i))
    }
    pub(crate) fn from_bits(bits: u32) -> Self {
        let b = |i: u32| bits & (1 << i) != 0;
        Self {
            outdated: b(0),
            full_sync: b(1),
            connected: b(2),
            fencing: b(3),
        }
    }
}

/// Names of the set bits, comma separated ("-" when none).
pub(crate) fn flag_list(bits: u32, names: &[&str]) -> String {
    let set: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "-".to_string()
    } else {
        set.join(",")
    }
}

/// Parses `flag_list` output back into bits.
pub(crate) fn parse_flag_list(text: &str, names: &[&str]) -> Result<u32, String> {
    if text == "-" {
        return Ok(0);
    }
    text.split(',').try_fold(0u32, |acc, name| {
        match names.iter().position(|n| *n == name) {
            Some(i) => Ok(acc | (1 << i)),
            None => Err(format!(
                "unknown flag `{name}`; known: {}",
                names.join(", ")
            )),
        }
    })
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}
pub(crate) fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// crc32c of a block with its 4-byte crc field (at `crc_at`) taken as zero.
pub(crate) fn block_crc(buf: &[u8], crc_at: usize) -> u32 {
    let crc = crc32c::crc32c(&buf[..crc_at]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &buf[crc_at + 4..])
}

/// Encodes one superblock copy with sequence number `seq`.
pub(crate) fn encode(sb: &Superblock, seq: u64, layout: &Layout) -> Vec<u8> {
    encode_version(sb, seq, layout, FORMAT_VERSION)
}

fn encode_version(sb: &Superblock, seq: u64, layout: &Layout, version: u32) -> Vec<u8> {
    assert_eq!(
        sb.peers.len(),
        usize::from(sb.max_peers),
        "peer slots must equal max_peers"
    );
    let mut buf = vec![0u8; SB_BYTES];
    buf[0..8].copy_from_slice(&SB_MAGIC);
    put_u32(&mut buf, 8, version);
    put_u64(&mut buf, 16, seq);
    put_u64(&mut buf, 24, layout.md_size_bytes);
    put_u64(&mut buf, 32, sb.data_size_bytes);
    buf[40] = sb.node_id;
    buf[41] = sb.max_peers;
    put_u32(&mut buf, 44, sb.al_extents);
    put_u32(&mut buf, 48, layout.al_ring_blocks);
    put_u32(&mut buf, 52, sb.flags.to_bits());
    put_u64(&mut buf, 56, sb.current_uuid);
    put_u64(&mut buf, 64, sb.history_uuids[0]);
    put_u64(&mut buf, 72, sb.history_uuids[1]);
    for (i, h) in sb.history_uuids[2..].iter().enumerate() {
        put_u64(&mut buf, HISTORY_EXT_OFFSET + i * 8, *h);
    }
    put_u64(&mut buf, 80, layout.bitmap_bytes_per_peer);
    for (i, p) in sb.peers.iter().enumerate() {
        let at = PEERS_OFFSET + i * PEER_BYTES;
        buf[at] = p.node_id.unwrap_or(NO_NODE);
        put_u32(&mut buf, at + 4, p.flags.to_bits());
        put_u64(&mut buf, at + 8, p.bitmap_uuid);
    }
    let crc = block_crc(&buf, 12);
    put_u32(&mut buf, 12, crc);
    buf
}

/// Why a superblock copy was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SbDefect {
    NoMagic,
    Newer(u32),
    BadCrc,
    Malformed(String),
}

impl std::fmt::Display for SbDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SbDefect::NoMagic => write!(f, "magic mismatch"),
            SbDefect::Newer(v) => write!(
                f,
                "format version {v} is newer than supported ({FORMAT_VERSION})"
            ),
            SbDefect::BadCrc => write!(f, "crc mismatch (torn or corrupted write)"),
            SbDefect::Malformed(w) => write!(f, "{w}"),
        }
    }
}

/// A decoded copy: the superblock, its sequence number and the layout fields it records.
#[derive(Debug, Clone)]
pub(crate) struct SbCopy {
    pub(crate) sb: Superblock,
    pub(crate) seq: u64,
    pub(crate) md_size_bytes: u64,
    pub(crate) al_ring_blocks: u32,
    pub(crate) bitmap_bytes_per_peer: u64,
}

pub(crate) fn decode(buf: &[u8]) -> Result<SbCopy, SbDefect> {
    if buf.len() != SB_BYTES || buf[0..8] != SB_MAGIC {
        return Err(SbDefect::NoMagic);
    }
    let version = get_u32(buf, 8);
    if version > FORMAT_VERSION {
        return Err(SbDefect::Newer(version));
    }
    if get_u32(buf, 12) != block_crc(buf, 12) {
        return Err(SbDefect::BadCrc);
    }
    let max_peers = buf[41];
    if max_peers == 0 || usize::from(max_peers) > MAX_PEERS {
        return Err(SbDefect::Malformed(format!(
            "max-peers {max_peers} out of range"
        )));
    }
    let peers = (0..usize::from(max_peers))
        .map(|i| {
            let at = PEERS_OFFSET + i * PEER_BYTES;
            PeerSlot {
                node_id: (buf[at] != NO_NODE).then_some(buf[at]),
                flags: PeerFlags::from_bits(get_u32(buf, at + 4)),
                bitmap_uuid: get_u64(buf, at + 8),
            }
        })
        .collect();
    let sb = Superblock {
        node_id: buf[40],
        max_peers,
        data_size_bytes: get_u64(buf, 32),
        al_extents: get_u32(buf, 44),
        flags: MdFlags::from_bits(get_u32(buf, 52)),
        current_uuid: get_u64(buf, 56),
        history_uuids: std::array::from_fn(|i| match i {
            0 => get_u64(buf, 64),
            1 => get_u64(buf, 72),
            _ => get_u64(buf, HISTORY_EXT_OFFSET + (i - 2) * 8),
        }),
        peers,
    };
    let copy = SbCopy {
        sb,
        seq: get_u64(buf, 16),
        md_size_bytes: get_u64(buf, 24),
        al_ring_blocks: get_u32(buf, 48),
        bitmap_bytes_per_peer: get_u64(buf, 80),
    };
    // Pair assertion: what we understood must re-encode to exactly these bytes,
    // otherwise there are fields (flags, reserved bytes) we do not know.
    let layout_fields = Layout {
        data_size_bytes: copy.sb.data_size_bytes,
        md_offset_bytes: 0,
        md_size_bytes: copy.md_size_bytes,
        max_peers,
        al_extents: copy.sb.al_extents,
        al_ring_blocks: copy.al_ring_blocks,
        bitmap_bytes_per_peer: copy.bitmap_bytes_per_peer,
        internal: false,
    };
    if encode_version(&copy.sb, copy.seq, &layout_fields, version) != buf {
        return Err(SbDefect::Malformed(
            "unknown flags or non-zero reserved bytes".into(),
        ));
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::layout_external;

    fn sample() -> (Superblock, Layout) {
        let layout = layout_external(1 << 30, 1 << 30, 3, 1237).unwrap();
        let mut peers = vec![PeerSlot::default(); 3];
        peers[1] = PeerSlot {
            node_id: Some(4),
            bitmap_uuid: 0xABCD,
            flags: PeerFlags {
                outdated: true,
                ..Default::default()
            },
        };
        let sb = Superblock {
            node_id: 2,
            max_peers: 3,
            data_size_bytes: layout.data_size_bytes,
            al_extents: 1237,
            flags: MdFlags {
                consistent: true,
                al_clean: true,
                ..Default::default()
            },
            current_uuid: 0x1234_5678_9ABC_DEF0,
            history_uuids: std::array::from_fn(|i| 7 + u64::try_from(i).unwrap()),
            peers,
        };
        (sb, layout)
    }

    #[test]
    fn superblock_round_trips() {
        let (sb, layout) = sample();
        let buf = encode(&sb, 42, &layout);
        let copy = decode(&buf).unwrap();
        assert_eq!(copy.sb, sb);
        assert_eq!(copy.seq, 42);
        assert_eq!(copy.md_size_bytes, layout.md_size_bytes);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let (sb, layout) = sample();
        let buf = encode(&sb, 1, &layout);
        for at in [9usize, 13, 20, 60, 130, 4000] {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn version_1_block_reads_with_two_history_uuids_and_rewrites_as_version_2() {
        let (mut sb, layout) = sample();
        sb.history_uuids = [0; HISTORY_UUIDS];
        sb.history_uuids[..2].copy_from_slice(&[0x77, 0x88]);
        // What a version 1 build wrote: same fields, nothing in the
        // extension area, version 1.
        let v1 = encode_version(&sb, 5, &layout, 1);
        assert_eq!(get_u32(&v1, 8), 1);
        assert!(v1[HISTORY_EXT_OFFSET..].iter().all(|b| *b == 0));
        let copy = decode(&v1).unwrap();
        assert_eq!(copy.sb.history_uuids[..3], [0x77, 0x88, 0]);
        let v2 = encode(&copy.sb, 6, &layout);
        assert_eq!(get_u32(&v2, 8), 2);
        assert_eq!(decode(&v2).unwrap().sb, sb);
    }

    #[test]
    fn history_beyond_two_lives_in_the_extension_area() {
        let (sb, layout) = sample();
        let buf = encode(&sb, 1, &layout);
        assert_eq!(get_u64(&buf, HISTORY_EXT_OFFSET), sb.history_uuids[2]);
        let last = HISTORY_EXT_OFFSET + (HISTORY_UUIDS - 3) * 8;
        assert_eq!(get_u64(&buf, last), sb.history_uuids[HISTORY_UUIDS - 1]);
    }

    #[test]
    fn newer_version_is_reported() {
        let (sb, layout) = sample();
        let mut buf = encode(&sb, 1, &layout);
        put_u32(&mut buf, 8, 9);
        assert_eq!(decode(&buf).unwrap_err(), SbDefect::Newer(9));
    }
}
