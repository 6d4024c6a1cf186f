//! Data blocks received apart from their frame (part of `wire`): the memory
//! a `Data` / `ResyncReply` block lives in ([`Payload`]), where the block
//! starts inside a frame ([`block_range`]), and decoding a frame delivered
//! as head + block ([`decode_split`]).
//!
//! Why: on the receiving node a replicated block must land, straight from
//! the socket read, in the 4096-aligned buffer the O_DIRECT write then uses
//! (each user-space copy of 1 MiB costs about a millisecond under QEMU TCG).
//! A transport reads the head of such a frame (header plus fixed fields)
//! first, learns the block's length from it, and reads the block into an
//! `AlignedBuf` of exactly that length; the decoder hands that buffer on in
//! the packet.
//!
//! Owns: the split point of every frame shape and the checks that a split
//! frame is exactly the frame its header describes. Must never: trust a
//! length it has not bounded (a lying length is not split, so the whole-frame
//! decoder refuses it with its usual message), or check a split frame's CRC
//! differently from the same frame whole.

use super::{
    be_u32, decode_body, decode_header, Packet, WireError, DATA_DISCARD, DATA_ZEROES,
    FRAME_VERSION, HEADER_BYTES, MAGIC, MAX_DATA_BYTES, MAX_PAYLOAD_BYTES,
};
use drbdd_blockio::AlignedBuf;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Smallest data block a transport should receive apart from its frame.
/// Receiving a block apart costs two or three `read`s per frame (head,
/// block, next head) instead of one chunk read for many frames; under QEMU
/// TCG a system call costs more than copying a few pages, so 4 KiB random
/// writes batch in chunk reads and only large blocks (as the sender's
/// split of 32 KiB, `WIRE_SPLIT_BYTES` in the daemon) skip the copy.
pub const MIN_SPLIT_BLOCK_BYTES: usize = 32 * 1024;

/// Bytes of the fixed fields of `Data` before its block: seq, epoch, flags,
/// offset, length.
const DATA_FIELDS_BYTES: usize = 8 + 4 + 4 + 8 + 4;
/// Bytes of the fixed fields of `ResyncReply` before its block: id, offset,
/// length.
const RESYNC_REPLY_FIELDS_BYTES: usize = 8 + 8 + 4;
/// The longest head (header plus fixed fields) of a frame with a data block.
pub const MAX_BLOCK_HEAD_BYTES: usize = HEADER_BYTES + DATA_FIELDS_BYTES;

/// The data block of a `Data` or `ResyncReply` packet.
#[derive(Clone)]
pub enum Payload {
    /// Plain heap memory: what a sender builds, and a small block (below
    /// [`MIN_SPLIT_BLOCK_BYTES`]) decoded from inside a run of frames.
    Bytes(Vec<u8>),
    /// An aligned buffer, ready for an O_DIRECT write: the block was
    /// received into it (no copy since the socket), or, arriving inside a
    /// run of frames, copied into it once by the decoder.
    Aligned(AlignedBuf),
    /// An aligned buffer others hold too, read-only: the ublk tag buffer an
    /// application write arrived in, which the local O_DIRECT write and the
    /// sends to the peers read at the same time (no copy for the network).
    Shared(Arc<AlignedBuf>),
}

impl Payload {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Bytes(v) => v,
            Payload::Aligned(b) => b.as_slice(),
            Payload::Shared(b) => b.as_slice(),
        }
    }

    /// The block as a `Vec`: the same allocation when it is one, else a copy.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Bytes(v) => v,
            Payload::Aligned(b) => b.as_slice().to_vec(),
            Payload::Shared(b) => b.as_slice().to_vec(),
        }
    }

    /// The block as an `AlignedBuf`: the same buffer when it is one, else an
    /// aligned copy.
    pub fn into_aligned(self) -> AlignedBuf {
        match self {
            Payload::Bytes(v) => AlignedBuf::from_slice(&v),
            Payload::Aligned(b) => b,
            Payload::Shared(b) => {
                Arc::try_unwrap(b).unwrap_or_else(|b| AlignedBuf::from_slice(b.as_slice()))
            }
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Bytes(Vec::new())
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Bytes(v)
    }
}

impl From<Arc<AlignedBuf>> for Payload {
    fn from(b: Arc<AlignedBuf>) -> Self {
        Payload::Shared(b)
    }
}

impl From<AlignedBuf> for Payload {
    fn from(b: AlignedBuf) -> Self {
        Payload::Aligned(b)
    }
}

/// Equal bytes, whatever memory holds them.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Payload {}

/// Like a `Vec<u8>`'s: the bytes.
impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Received bytes as a transport hands them over.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Whole frames, in order (what `peer::Event::BytesReceived` takes).
    Frames(Vec<u8>),
    /// One frame whose data block was read into its own buffer: `head` is
    /// the frame up to the block ([`block_range`]), `block` the rest.
    Block { head: Vec<u8>, block: AlignedBuf },
}

impl Received {
    /// Bytes of the stream this unit holds.
    pub fn len(&self) -> usize {
        match self {
            Received::Frames(v) => v.len(),
            Received::Block { head, block } => head.len() + block.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Received {
    fn from(v: Vec<u8>) -> Self {
        Received::Frames(v)
    }
}

/// Where the data block of the frame starting at `prefix[0]` lies, from the
/// bytes of it received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRange {
    /// The first `n` bytes of the frame are needed to tell.
    NeedHead(usize),
    /// The frame ends with a data block of `len` bytes starting `start`
    /// bytes into the frame (the frame is `start + len` bytes).
    Block { start: usize, len: usize },
    /// No data block to receive apart: a frame of another type, a discard
    /// or write-zeroes, or fields that do not add up (the decoder refuses
    /// those when it gets the frame whole).
    Whole,
}

/// The data block of the frame at the front of `prefix` (see [`BlockRange`]).
/// Reads at most [`MAX_BLOCK_HEAD_BYTES`]; checks magic, frame version and
/// every length involved, so a `Block` is always at most
/// [`MAX_DATA_BYTES`] and exactly what the header's payload length leaves
/// after the fixed fields.
pub fn block_range(prefix: &[u8]) -> BlockRange {
    if prefix.len() < HEADER_BYTES {
        return BlockRange::NeedHead(HEADER_BYTES);
    }
    let version = u16::from_be_bytes([prefix[4], prefix[5]]);
    let payload_len = be_u32(&prefix[8..12]);
    if be_u32(&prefix[0..4]) != MAGIC || version != FRAME_VERSION || payload_len > MAX_PAYLOAD_BYTES
    {
        return BlockRange::Whole;
    }
    let (fields, len_at) = match u16::from_be_bytes([prefix[6], prefix[7]]) {
        7 => (DATA_FIELDS_BYTES, 24),
        17 => (RESYNC_REPLY_FIELDS_BYTES, 16),
        _ => return BlockRange::Whole,
    };
    let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
    if payload_len < fields {
        return BlockRange::Whole;
    }
    let start = HEADER_BYTES + fields;
    if prefix.len() < start {
        return BlockRange::NeedHead(start);
    }
    let f = &prefix[HEADER_BYTES..start];
    if fields == DATA_FIELDS_BYTES && be_u32(&f[12..16]) & (DATA_DISCARD | DATA_ZEROES) != 0 {
        return BlockRange::Whole;
    }
    let len = be_u32(&f[len_at..len_at + 4]);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_DATA_BYTES || payload_len - fields != len_usize {
        return BlockRange::Whole;
    }
    BlockRange::Block {
        start,
        len: len_usize,
    }
}

/// Decodes one frame received as `head` (the frame up to its data block,
/// see [`block_range`]) and `block` (the rest), checking exactly what
/// [`super::decode_framed`] checks on the same frame whole, with the same
/// errors. The packet's payload is `block` itself ([`Payload::Aligned`]).
pub fn decode_split(
    head: &[u8],
    block: AlignedBuf,
    crc: super::FrameCrc,
) -> Result<Packet, WireError> {
    let header = decode_header(head)?.ok_or(WireError::Truncated {
        packet: "frame header",
        needed: HEADER_BYTES.saturating_sub(head.len()),
    })?;
    let fields = &head[HEADER_BYTES..];
    if fields.len() + block.len() != header.payload_bytes {
        return Err(WireError::BadField {
            packet: header.name,
            what: format!(
                "split frame of {} + {} payload bytes, but its header says {}",
                fields.len(),
                block.len(),
                header.payload_bytes
            ),
        });
    }
    decode_body(&header, fields, Some(block), crc)
}
