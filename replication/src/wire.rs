//! The replication wire format: framed, versioned, length- and crc32c-checked
//! packets between two drbdd nodes (documented in `replication/WIRE.md`).
//!
//! Owns: the packet vocabulary, its byte layout (big-endian), the bounds on
//! every field, and the incremental decoder. Must never: panic on bytes that
//! came from the network, allocate more than the declared (bounded) payload, or
//! know what a packet means — the handshake and peer state machines decide that.

use crate::generation::HISTORY_UUIDS;
use crate::state::{DiskState, Role};
use drbdd_blockio::AlignedBuf;
use thiserror::Error;

#[path = "wire_block.rs"]
mod block;
pub use block::{
    block_range, decode_split, BlockRange, Payload, Received, MAX_BLOCK_HEAD_BYTES,
    MIN_SPLIT_BLOCK_BYTES,
};

/// Data blocks decoded out of a run of frames from this size on are copied
/// straight into aligned memory (one copy before the O_DIRECT write, not
/// two).
const ALIGNED_DECODE_MIN_BYTES: usize = 4096;

/// First four bytes of every packet: ASCII "dRBr".
pub const MAGIC: u32 = 0x6452_4272;
/// Version of the framing (header layout). Protocol semantics are negotiated
/// separately through [`Packet::Hello`].
pub const FRAME_VERSION: u16 = 1;
/// Bytes in the fixed header: magic, frame version, type, payload length, crc32c.
pub const HEADER_BYTES: usize = 16;
/// Largest data payload of a `Data` or `ResyncReply` packet.
pub const MAX_DATA_BYTES: u32 = 1 << 20;
/// Largest payload of any packet (data plus its fixed fields).
pub const MAX_PAYLOAD_BYTES: u32 = MAX_DATA_BYTES + 64;
/// Longest resource name on the wire and in configuration.
pub const MAX_RESOURCE_NAME_BYTES: usize = 64;
/// Longest free-text reason in a `Disconnect` packet.
pub const MAX_REASON_BYTES: usize = 256;
/// Most RLE runs in one bitmap chunk.
pub const MAX_BITMAP_RUNS: usize = 65_536;
/// Bytes of a nonce in an authentication challenge.
pub const NONCE_BYTES: usize = 32;
/// Bytes of an HMAC-SHA256 authentication response.
pub const MAC_BYTES: usize = 32;

/// Replication-protocol versions this build speaks (negotiated in `Hello`).
/// Version 2 carries up to [`HISTORY_UUIDS`] history UUIDs in
/// `GenerationIds` (version 1 carried two); a version 1 peer is refused at
/// `Hello` with both ranges named, so the admin upgrades it.
pub const PROTOCOL_VERSION_MIN: u16 = 2;
/// Highest replication-protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u16 = 2;

/// Feature bit: the sender has a shared secret configured and will authenticate.
pub const FEATURE_AUTH: u64 = 1 << 0;
/// Feature bit: the sender can replicate discards.
pub const FEATURE_DISCARD: u64 = 1 << 1;
/// Feature bit: the sender can replicate write-zeroes.
pub const FEATURE_ZEROES: u64 = 1 << 2;
/// Feature bit: the sender understands RLE bitmap chunks.
pub const FEATURE_RLE_BITMAP: u64 = 1 << 3;
/// Feature bit: the sender's `data-integrity-alg` is crc32c, so the frame CRC
/// of `Data` and `ResyncReply` packets must cover their data block too (see
/// [`FrameCrc`]). Either side announcing it turns it on for the connection.
pub const FEATURE_DATA_INTEGRITY: u64 = 1 << 4;

/// What the CRC-32C in a frame header covers.
///
/// Like DRBD without `data-integrity-alg`, a connection does not checksum the
/// data blocks it replicates (TCP's own checksum covers them on the wire; the
/// cost was two passes over every replicated byte). Everything else a packet
/// carries — offsets, lengths, sequence numbers, bitmaps, generation
/// identifiers — is always covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCrc {
    /// The whole payload: the handshake, and every packet of a connection
    /// with [`FEATURE_DATA_INTEGRITY`].
    WholePayload,
    /// The payload without the trailing data block of `Data` and
    /// `ResyncReply` packets (identical to `WholePayload` for the others).
    SkipDataBlock,
}

impl FrameCrc {
    /// The coverage of a connection whose two sides announced `ours` and
    /// `theirs` in their `Hello`.
    pub fn negotiated(ours: u64, theirs: u64) -> FrameCrc {
        if (ours | theirs) & FEATURE_DATA_INTEGRITY != 0 {
            FrameCrc::WholePayload
        } else {
            FrameCrc::SkipDataBlock
        }
    }
}

/// Feature bits 8..=10: the replication protocol (A, B, C) the sender is
/// configured with; both nodes of a connection must agree.
pub const FEATURE_PROTOCOL_A: u64 = 1 << 8;
/// See [`FEATURE_PROTOCOL_A`].
pub const FEATURE_PROTOCOL_B: u64 = 1 << 9;
/// See [`FEATURE_PROTOCOL_A`].
pub const FEATURE_PROTOCOL_C: u64 = 1 << 10;
/// Mask of the protocol feature bits.
pub const FEATURE_PROTOCOL_MASK: u64 = FEATURE_PROTOCOL_A | FEATURE_PROTOCOL_B | FEATURE_PROTOCOL_C;

/// `State` flag: the sender starts a full resync as source; the receiver
/// becomes its target (bitmap exchange follows).
pub const STATE_START_SYNC_SOURCE: u32 = 1 << 0;
/// `State` flag: the sender starts a full resync as target.
pub const STATE_START_SYNC_TARGET: u32 = 1 << 1;
/// `State` flag: the sender's admin paused the resync (`pause-sync`).
pub const STATE_SYNC_PAUSED: u32 = 1 << 2;

/// `Data` flag: force unit access (complete only once durable on the peer).
pub const DATA_FUA: u32 = 1 << 0;
/// `Data` flag: flush the peer's disk before this write.
pub const DATA_FLUSH: u32 = 1 << 1;
/// `Data` flag: discard the range (no payload).
pub const DATA_DISCARD: u32 = 1 << 2;
/// `Data` flag: write zeroes over the range (no payload).
pub const DATA_ZEROES: u32 = 1 << 3;
const DATA_FLAGS_KNOWN: u32 = DATA_FUA | DATA_FLUSH | DATA_DISCARD | DATA_ZEROES;

/// Why bytes could not be decoded. The connection must be dropped: after a
/// framing error the stream position is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("bad magic {0:#010x}: the peer is not a drbdd node (or the stream is out of step)")]
    BadMagic(u32),
    #[error("unsupported frame version {0}; this build speaks frame version {FRAME_VERSION}")]
    BadFrameVersion(u16),
    #[error("unknown packet type {0}")]
    UnknownType(u16),
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")]
    PayloadTooLarge(u32),
    #[error("payload checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("{packet} payload truncated: needed {needed} more bytes")]
    Truncated { packet: &'static str, needed: usize },
    #[error("{packet} payload has {0} trailing bytes", packet = .1)]
    TrailingBytes(usize, &'static str),
    #[error("{packet}: {what}")]
    BadField { packet: &'static str, what: String },
}

/// One replication packet. Every variable-length field is bounded; see the
/// `MAX_*` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// First packet in each direction: who I am and what I speak.
    Hello {
        protocol_min: u16,
        protocol_max: u16,
        node_id: u8,
        resource: String,
        features: u64,
    },
    AuthChallenge {
        nonce: [u8; NONCE_BYTES],
    },
    AuthResponse {
        mac: [u8; MAC_BYTES],
    },
    /// Role and disk state of the sender; `flags` reserved (0).
    State {
        role: Role,
        disk: DiskState,
        flags: u32,
    },
    /// The sender's generation identifiers as seen for the receiver.
    GenerationIds {
        current: u64,
        /// The sender's bitmap UUID for the receiver's slot.
        bitmap: u64,
        /// Newest first; on the wire a count (at most [`HISTORY_UUIDS`])
        /// and the entries up to the last non-empty one.
        /// Boxed: the array would make every `Packet` (a `Data` per write)
        /// 300 bytes.
        history: Box<[u64; HISTORY_UUIDS]>,
        /// Out-of-sync 4 KiB blocks the sender tracks for the receiver.
        dirty_blocks: u64,
        /// When the sender last became primary (caller's wall clock, ms; 0 = never).
        promoted_at_ms: u64,
        /// Bit 0: crashed while primary; bit 1: `connect --discard-my-data`.
        flags: u32,
    },
    /// Size of the sender's backing device and of the data currently in use.
    Sizes {
        backing_bytes: u64,
        current_bytes: u64,
        max_io_bytes: u32,
    },
    Data {
        seq: u64,
        epoch: u32,
        flags: u32,
        offset_bytes: u64,
        len_bytes: u32,
        payload: Payload,
    },
    /// Protocol B: the peer received the write.
    RecvAck {
        seq: u64,
    },
    /// Protocol C: the write is on the peer's disk.
    WriteAck {
        seq: u64,
    },
    /// The peer failed the write; the range is out of sync on the peer.
    NegAck {
        seq: u64,
    },
    /// Ends `epoch`: the peer must not reorder writes across it.
    Barrier {
        epoch: u32,
    },
    /// Every write of `epoch` is on the peer's disk.
    BarrierAck {
        epoch: u32,
        writes: u32,
    },
    Ping,
    PingAck,
    /// Run-length encoded bitmap: `runs` alternate clear, set, clear, ...
    /// starting at `start_bit` (the first run may be 0).
    BitmapChunk {
        start_bit: u64,
        total_bits: u64,
        last: bool,
        runs: Vec<u64>,
    },
    ResyncRequest {
        id: u64,
        offset_bytes: u64,
        len_bytes: u32,
    },
    ResyncReply {
        id: u64,
        offset_bytes: u64,
        payload: Payload,
    },
    /// The source could not read the range.
    ResyncNegReply {
        id: u64,
    },
    /// The target holds every block; it adopts the source's generations.
    ResyncFinished,
    /// The range is out of sync between sender and receiver.
    OutOfSync {
        offset_bytes: u64,
        len_bytes: u32,
    },
    Disconnect {
        reason: String,
    },
    /// The sync source's new bitmap UUID; the target takes it as current.
    SyncUuid {
        uuid: u64,
    },
}

impl Packet {
    /// The packet's type code on the wire.
    pub fn type_code(&self) -> u16 {
        match self {
            Packet::Hello { .. } => 1,
            Packet::AuthChallenge { .. } => 2,
            Packet::AuthResponse { .. } => 3,
            Packet::State { .. } => 4,
            Packet::GenerationIds { .. } => 5,
            Packet::Sizes { .. } => 6,
            Packet::Data { .. } => 7,
            Packet::RecvAck { .. } => 8,
            Packet::WriteAck { .. } => 9,
            Packet::NegAck { .. } => 10,
            Packet::Barrier { .. } => 11,
            Packet::BarrierAck { .. } => 12,
            Packet::Ping => 13,
            Packet::PingAck => 14,
            Packet::BitmapChunk { .. } => 15,
            Packet::ResyncRequest { .. } => 16,
            Packet::ResyncReply { .. } => 17,
            Packet::ResyncNegReply { .. } => 18,
            Packet::ResyncFinished => 19,
            Packet::OutOfSync { .. } => 20,
            Packet::Disconnect { .. } => 21,
            Packet::SyncUuid { .. } => 22,
        }
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        type_name(self.type_code()).unwrap_or("?")
    }

    /// Encodes header and payload. Panics if the packet violates a bound:
    /// packets are built by this crate, so that is a programmer error.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 64);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded packet to `out`, its CRC over the whole payload.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_framed(out, FrameCrc::WholePayload);
    }

    /// Bytes at the end of the payload that are a data block (what
    /// [`FrameCrc::SkipDataBlock`] leaves out of the CRC).
    fn data_block_bytes(&self) -> usize {
        match self {
            Packet::Data { payload, .. } | Packet::ResyncReply { payload, .. } => payload.len(),
            _ => 0,
        }
    }

    /// Appends the encoded packet to `out`, its CRC covering what `crc` says.
    pub fn encode_framed(&self, out: &mut Vec<u8>, crc: FrameCrc) {
        let start = out.len();
        push_header(out, self.type_code());
        self.encode_payload(out);
        let payload_len = out.len() - start - HEADER_BYTES;
        let covered_end = match crc {
            FrameCrc::WholePayload => out.len(),
            FrameCrc::SkipDataBlock => out.len() - self.data_block_bytes(),
        };
        let crc = crc32c::crc32c(&out[start + HEADER_BYTES..covered_end]);
        self.patch_header(out, start, payload_len, crc);
    }

    /// Like [`Packet::encode_framed`], but a data block of at least
    /// `min_bytes` (of `Data` or `ResyncReply`) is not copied: `out` gets
    /// everything before it and the block is returned, to be sent right
    /// after those bytes (the frame is their concatenation), as the very
    /// [`Payload`] the packet held (no copy, whatever memory it is in).
    pub fn encode_framed_split(
        mut self,
        out: &mut Vec<u8>,
        crc: FrameCrc,
        min_bytes: usize,
    ) -> Option<Payload> {
        let block = match &mut self {
            Packet::Data { payload, .. } | Packet::ResyncReply { payload, .. }
                if payload.len() >= min_bytes =>
            {
                std::mem::take(payload)
            }
            _ => {
                self.encode_framed(out, crc);
                return None;
            }
        };
        let start = out.len();
        push_header(out, self.type_code());
        self.encode_data_fields(&mut Writer(out), block.len());
        let fields = &out[start + HEADER_BYTES..];
        let payload_len = fields.len() + block.len();
        let mut sum = crc32c::crc32c(fields);
        if crc == FrameCrc::WholePayload {
            sum = crc32c::crc32c_append(sum, &block);
        }
        self.patch_header(out, start, payload_len, sum);
        Some(block)
    }

    /// Fills in the length and CRC of the frame header at `out[start..]`.
    fn patch_header(&self, out: &mut [u8], start: usize, payload_len: usize, crc: u32) {
        let len = u32::try_from(payload_len).expect("payload length fits u32");
        assert!(
            len <= MAX_PAYLOAD_BYTES,
            "{} payload of {len} bytes too large",
            self.name()
        );
        out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
        out[start + 12..start + 16].copy_from_slice(&crc.to_be_bytes());
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Packet::Hello {
                protocol_min,
                protocol_max,
                node_id,
                resource,
                features,
            } => {
                w.u16(*protocol_min);
                w.u16(*protocol_max);
                w.u8(*node_id);
                w.string(resource, MAX_RESOURCE_NAME_BYTES);
                w.u64(*features);
            }
            Packet::AuthChallenge { nonce } => w.bytes(nonce),
            Packet::AuthResponse { mac } => w.bytes(mac),
            Packet::State { role, disk, flags } => {
                w.u8(role_code(*role));
                w.u8(disk_code(*disk));
                w.u32(*flags);
            }
            Packet::GenerationIds {
                current,
                bitmap,
                history,
                dirty_blocks,
                promoted_at_ms,
                flags,
            } => {
                for v in [*current, *bitmap, *dirty_blocks, *promoted_at_ms] {
                    w.u64(v);
                }
                w.u32(*flags);
                let used = history.iter().rposition(|h| *h != 0).map_or(0, |i| i + 1);
                w.u8(u8::try_from(used).expect("HISTORY_UUIDS fits a u8"));
                for h in &history[..used] {
                    w.u64(*h);
                }
            }
            Packet::Sizes {
                backing_bytes,
                current_bytes,
                max_io_bytes,
            } => {
                w.u64(*backing_bytes);
                w.u64(*current_bytes);
                w.u32(*max_io_bytes);
            }
            Packet::Data { .. }
            | Packet::BitmapChunk { .. }
            | Packet::ResyncRequest { .. }
            | Packet::ResyncReply { .. } => self.encode_bulk(&mut w),
            Packet::RecvAck { seq } | Packet::WriteAck { seq } | Packet::NegAck { seq } => {
                w.u64(*seq)
            }
            Packet::Barrier { epoch } => w.u32(*epoch),
            Packet::BarrierAck { epoch, writes } => {
                w.u32(*epoch);
                w.u32(*writes);
            }
            Packet::Ping | Packet::PingAck | Packet::ResyncFinished => {}
            Packet::ResyncNegReply { id } => w.u64(*id),
            Packet::OutOfSync {
                offset_bytes,
                len_bytes,
            } => {
                w.u64(*offset_bytes);
                w.u32(*len_bytes);
            }
            Packet::Disconnect { reason } => w.string(reason, MAX_REASON_BYTES),
            Packet::SyncUuid { uuid } => w.u64(*uuid),
        }
    }

    /// The bulk packets: data, bitmap and resync payloads.
    fn encode_bulk(&self, w: &mut Writer<'_>) {
        match self {
            Packet::Data { payload, .. } | Packet::ResyncReply { payload, .. } => {
                self.encode_data_fields(w, payload.len());
                w.bytes(payload.as_slice());
            }
            Packet::BitmapChunk {
                start_bit,
                total_bits,
                last,
                runs,
            } => {
                assert!(runs.len() <= MAX_BITMAP_RUNS, "too many bitmap runs");
                w.u64(*start_bit);
                w.u64(*total_bits);
                w.u8(u8::from(*last));
                w.u32(u32::try_from(runs.len()).expect("bounded"));
                for run in runs {
                    w.varint(*run);
                }
            }
            Packet::ResyncRequest {
                id,
                offset_bytes,
                len_bytes,
            } => {
                w.u64(*id);
                w.u64(*offset_bytes);
                w.u32(*len_bytes);
            }
            _ => unreachable!("not a bulk packet: {}", self.name()),
        }
    }

    /// The fields of `Data` / `ResyncReply` before a data block of
    /// `data_len` bytes (which the caller writes or sends separately).
    fn encode_data_fields(&self, w: &mut Writer<'_>, data_len: usize) {
        match self {
            Packet::Data {
                seq,
                epoch,
                flags,
                offset_bytes,
                len_bytes,
                ..
            } => {
                assert!(*len_bytes <= MAX_DATA_BYTES, "data packet too long");
                let no_payload = flags & (DATA_DISCARD | DATA_ZEROES) != 0;
                let want = if no_payload { 0 } else { *len_bytes };
                assert!(
                    u32::try_from(data_len) == Ok(want),
                    "data payload length mismatch"
                );
                w.u64(*seq);
                w.u32(*epoch);
                w.u32(*flags);
                w.u64(*offset_bytes);
                w.u32(*len_bytes);
            }
            Packet::ResyncReply {
                id, offset_bytes, ..
            } => {
                assert!(data_len <= MAX_DATA_BYTES as usize, "resync reply too long");
                w.u64(*id);
                w.u64(*offset_bytes);
                w.u32(u32::try_from(data_len).expect("bounded"));
            }
            _ => unreachable!("no data block: {}", self.name()),
        }
    }
}

/// How long the frame at the front of `buf` is, from its header alone (for a
/// transport that reads whole frames; [`decode`] still checks everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// Fewer than [`HEADER_BYTES`] bytes.
    Incomplete,
    /// Header plus payload bytes.
    Bytes(usize),
    /// Not a frame (bad magic or an oversized length): decoding will refuse it.
    Invalid,
}

/// The size of the frame starting at `buf[0]`.
pub fn frame_size(buf: &[u8]) -> FrameSize {
    if buf.len() < HEADER_BYTES {
        return FrameSize::Incomplete;
    }
    let len = be_u32(&buf[8..12]);
    if be_u32(&buf[0..4]) != MAGIC || len > MAX_PAYLOAD_BYTES {
        return FrameSize::Invalid;
    }
    usize::try_from(len).map_or(FrameSize::Invalid, |n| FrameSize::Bytes(HEADER_BYTES + n))
}

/// Decodes one packet from the front of `buf`, its CRC over the whole payload.
///
/// Returns `Ok(Some((packet, consumed)))`, `Ok(None)` if more bytes are needed,
/// or `Err` if the bytes can never form a valid packet.
pub fn decode(buf: &[u8]) -> Result<Option<(Packet, usize)>, WireError> {
    decode_framed(buf, FrameCrc::WholePayload)
}

/// [`decode`] for a connection whose CRC coverage is `crc`. With
/// [`FrameCrc::SkipDataBlock`] the payload is parsed before the CRC of its
/// covered part is checked (the parser is safe on any bytes).
pub fn decode_framed(buf: &[u8], crc: FrameCrc) -> Result<Option<(Packet, usize)>, WireError> {
    let Some(header) = decode_header(buf)? else {
        return Ok(None);
    };
    let total = HEADER_BYTES + header.payload_bytes;
    if buf.len() < total {
        return Ok(None);
    }
    let packet = decode_body(&header, &buf[HEADER_BYTES..total], None, crc)?;
    Ok(Some((packet, total)))
}

/// The checked fields of a frame header.
struct Header {
    kind: u16,
    name: &'static str,
    payload_bytes: usize,
    crc: u32,
}

/// The header at the front of `buf`; `None` while fewer than
/// [`HEADER_BYTES`] bytes are there (bad magic is refused from 4 bytes on).
fn decode_header(buf: &[u8]) -> Result<Option<Header>, WireError> {
    if buf.len() >= 4 {
        let magic = be_u32(&buf[0..4]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
    }
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let version = u16::from_be_bytes([buf[4], buf[5]]);
    if version != FRAME_VERSION {
        return Err(WireError::BadFrameVersion(version));
    }
    let kind = u16::from_be_bytes([buf[6], buf[7]]);
    let name = type_name(kind).ok_or(WireError::UnknownType(kind))?;
    let len = be_u32(&buf[8..12]);
    if len > MAX_PAYLOAD_BYTES {
        return Err(WireError::PayloadTooLarge(len));
    }
    let payload_bytes = usize::try_from(len).map_err(|_| WireError::PayloadTooLarge(len))?;
    Ok(Some(Header {
        kind,
        name,
        payload_bytes,
        crc: be_u32(&buf[12..16]),
    }))
}

/// Decodes a payload: `fields` from the frame, then, when the frame was
/// received split ([`decode_split`]), its data block `block`. The caller
/// checked that the two add up to the header's payload length.
fn decode_body(
    header: &Header,
    fields: &[u8],
    block: Option<AlignedBuf>,
    crc: FrameCrc,
) -> Result<Packet, WireError> {
    let split = block.is_some();
    let check = |covered: &[u8], block: Option<&AlignedBuf>| {
        let mut actual = crc32c::crc32c(covered);
        if let Some(b) = block {
            actual = crc32c::crc32c_append(actual, b.as_slice());
        }
        if actual == header.crc {
            Ok(())
        } else {
            Err(WireError::BadChecksum {
                expected: header.crc,
                actual,
            })
        }
    };
    if crc == FrameCrc::WholePayload {
        check(fields, block.as_ref())?;
    }
    let mut r = Reader {
        buf: fields,
        pos: 0,
        packet: header.name,
        block,
    };
    let packet = decode_payload(header.kind, &mut r)?;
    let left = (fields.len() - r.pos) + r.block.as_ref().map_or(0, AlignedBuf::len);
    if left != 0 {
        return Err(WireError::TrailingBytes(left, header.name));
    }
    if crc == FrameCrc::SkipDataBlock {
        // A split frame's block was all of its data block (or it would
        // have been left over above): the fields are what the CRC covers.
        let inline_block = if split { 0 } else { packet.data_block_bytes() };
        check(&fields[..fields.len() - inline_block], None)?;
    }
    Ok(packet)
}

fn decode_payload(kind: u16, r: &mut Reader<'_>) -> Result<Packet, WireError> {
    Ok(match kind {
        1 => Packet::Hello {
            protocol_min: r.u16()?,
            protocol_max: r.u16()?,
            node_id: r.u8()?,
            resource: r.string(MAX_RESOURCE_NAME_BYTES)?,
            features: r.u64()?,
        },
        2 => Packet::AuthChallenge { nonce: r.array()? },
        3 => Packet::AuthResponse { mac: r.array()? },
        4 => Packet::State {
            role: decode_role(r)?,
            disk: decode_disk(r)?,
            flags: r.u32()?,
        },
        5 => decode_generation_ids(r)?,
        6 => Packet::Sizes {
            backing_bytes: r.u64()?,
            current_bytes: r.u64()?,
            max_io_bytes: r.u32()?,
        },
        7 => decode_data(r)?,
        8 => Packet::RecvAck { seq: r.u64()? },
        9 => Packet::WriteAck { seq: r.u64()? },
        10 => Packet::NegAck { seq: r.u64()? },
        11 => Packet::Barrier { epoch: r.u32()? },
        12 => Packet::BarrierAck {
            epoch: r.u32()?,
            writes: r.u32()?,
        },
        13 => Packet::Ping,
        14 => Packet::PingAck,
        15 => decode_bitmap(r)?,
        16 => {
            let (id, offset_bytes, len_bytes) = (r.u64()?, r.u64()?, r.u32()?);
            check_range(r, offset_bytes, len_bytes)?;
            Packet::ResyncRequest {
                id,
                offset_bytes,
                len_bytes,
            }
        }
        17 => {
            let (id, offset_bytes, len) = (r.u64()?, r.u64()?, r.u32()?);
            check_range(r, offset_bytes, len)?;
            Packet::ResyncReply {
                id,
                offset_bytes,
                payload: r.data_block(len)?,
            }
        }
        18 => Packet::ResyncNegReply { id: r.u64()? },
        19 => Packet::ResyncFinished,
        20 => {
            let (offset_bytes, len_bytes) = (r.u64()?, r.u32()?);
            check_range(r, offset_bytes, len_bytes)?;
            Packet::OutOfSync {
                offset_bytes,
                len_bytes,
            }
        }
        21 => Packet::Disconnect {
            reason: r.string(MAX_REASON_BYTES)?,
        },
        22 => Packet::SyncUuid { uuid: r.u64()? },
        other => return Err(WireError::UnknownType(other)),
    })
}

fn decode_generation_ids(r: &mut Reader<'_>) -> Result<Packet, WireError> {
    let (current, bitmap, dirty_blocks, promoted_at_ms) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let flags = r.u32()?;
    let used = usize::from(r.u8()?);
    if used > HISTORY_UUIDS {
        return Err(r.bad(format!(
            "{used} history UUIDs exceed the limit of {HISTORY_UUIDS}"
        )));
    }
    let mut history = Box::new([0u64; HISTORY_UUIDS]);
    for h in &mut history[..used] {
        *h = r.u64()?;
    }
    Ok(Packet::GenerationIds {
        current,
        bitmap,
        history,
        dirty_blocks,
        promoted_at_ms,
        flags,
    })
}

fn decode_data(r: &mut Reader<'_>) -> Result<Packet, WireError> {
    let (seq, epoch, flags, offset_bytes, len_bytes) =
        (r.u64()?, r.u32()?, r.u32()?, r.u64()?, r.u32()?);
    if flags & !DATA_FLAGS_KNOWN != 0 {
        return Err(r.bad(format!("unknown flags {flags:#x}")));
    }
    check_range(r, offset_bytes, len_bytes)?;
    let no_payload = flags & (DATA_DISCARD | DATA_ZEROES) != 0;
    let payload = if no_payload {
        Payload::default()
    } else {
        r.data_block(len_bytes)?
    };
    Ok(Packet::Data {
        seq,
        epoch,
        flags,
        offset_bytes,
        len_bytes,
        payload,
    })
}

fn decode_bitmap(r: &mut Reader<'_>) -> Result<Packet, WireError> {
    let (start_bit, total_bits) = (r.u64()?, r.u64()?);
    let last = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(r.bad(format!("last flag {other} is neither 0 nor 1"))),
    };
    let count = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    if count > MAX_BITMAP_RUNS {
        return Err(r.bad(format!(
            "{count} runs exceed the limit of {MAX_BITMAP_RUNS}"
        )));
    }
    // Each run takes at least one byte, so `count` is bounded by the payload too.
    if count > r.remaining() {
        return Err(WireError::Truncated {
            packet: r.packet,
            needed: count - r.remaining(),
        });
    }
    let mut runs = Vec::with_capacity(count);
    let mut covered: u64 = start_bit;
    for _ in 0..count {
        let run = r.varint()?;
        covered = covered
            .checked_add(run)
            .filter(|end| *end <= total_bits)
            .ok_or_else(|| r.bad(format!("runs extend past total_bits {total_bits}")))?;
        runs.push(run);
    }
    Ok(Packet::BitmapChunk {
        start_bit,
        total_bits,
        last,
        runs,
    })
}

fn check_range(r: &Reader<'_>, offset_bytes: u64, len_bytes: u32) -> Result<(), WireError> {
    if len_bytes > MAX_DATA_BYTES {
        return Err(r.bad(format!("length {len_bytes} exceeds {MAX_DATA_BYTES} bytes")));
    }
    if offset_bytes.checked_add(u64::from(len_bytes)).is_none() {
        return Err(r.bad(format!("range {offset_bytes}+{len_bytes} overflows")));
    }
    Ok(())
}

fn type_name(kind: u16) -> Option<&'static str> {
    const NAMES: [&str; 22] = [
        "Hello",
        "AuthChallenge",
        "AuthResponse",
        "State",
        "GenerationIds",
        "Sizes",
        "Data",
        "RecvAck",
        "WriteAck",
        "NegAck",
        "Barrier",
        "BarrierAck",
        "Ping",
        "PingAck",
        "BitmapChunk",
        "ResyncRequest",
        "ResyncReply",
        "ResyncNegReply",
        "ResyncFinished",
        "OutOfSync",
        "Disconnect",
        "SyncUuid",
    ];
    usize::from(kind)
        .checked_sub(1)
        .and_then(|i| NAMES.get(i).copied())
}

fn role_code(role: Role) -> u8 {
    index_of(Role::ALL, role)
}

fn disk_code(disk: DiskState) -> u8 {
    index_of(DiskState::ALL, disk)
}

fn index_of<T: PartialEq + Copy>(all: &[T], v: T) -> u8 {
    let i = all.iter().position(|x| *x == v).expect("variant is in ALL");
    u8::try_from(i).expect("fewer than 256 variants")
}

fn decode_role(r: &mut Reader<'_>) -> Result<Role, WireError> {
    let code = r.u8()?;
    Role::ALL
        .get(usize::from(code))
        .copied()
        .ok_or_else(|| r.bad(format!("unknown role {code}")))
}

fn decode_disk(r: &mut Reader<'_>) -> Result<DiskState, WireError> {
    let code = r.u8()?;
    DiskState::ALL
        .get(usize::from(code))
        .copied()
        .ok_or_else(|| r.bad(format!("unknown disk state {code}")))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends a frame header whose length and CRC are patched in later.
fn push_header(out: &mut Vec<u8>, type_code: u16) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    out.extend_from_slice(&type_code.to_be_bytes());
    out.extend_from_slice(&[0u8; 8]);
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn string(&mut self, s: &str, max: usize) {
        assert!(s.len() <= max, "string of {} bytes exceeds {max}", s.len());
        self.u16(u16::try_from(s.len()).expect("bounded"));
        self.bytes(s.as_bytes());
    }
    /// LEB128: 7 bits per byte, high bit set on all but the last byte.
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.u8(u8::try_from(v & 0x7f).expect("masked") | 0x80);
            v >>= 7;
        }
        self.u8(u8::try_from(v).expect("below 0x80"));
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    packet: &'static str,
    /// The data block of a frame received split: it follows `buf`.
    block: Option<AlignedBuf>,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn bad(&self, what: String) -> WireError {
        WireError::BadField {
            packet: self.packet,
            what,
        }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated {
                packet: self.packet,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// The data block of `len` bytes that ends the payload: the separate
    /// block of a split frame (handed on as it is, no copy) once every
    /// field before it is read, else a copy out of the frame (into an
    /// `AlignedBuf` from one page on, the memory its disk write needs).
    fn data_block(&mut self, len: u32) -> Result<Payload, WireError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if self.remaining() == 0 {
            if let Some(block) = self.block.take() {
                if block.len() < len {
                    return Err(WireError::Truncated {
                        packet: self.packet,
                        needed: len - block.len(),
                    });
                }
                if block.len() > len {
                    return Err(WireError::TrailingBytes(block.len() - len, self.packet));
                }
                return Ok(Payload::Aligned(block));
            }
        }
        // A block that is not small goes straight to the aligned memory its
        // disk write needs (one copy instead of two).
        let bytes = self.take(len)?;
        if len >= ALIGNED_DECODE_MIN_BYTES {
            return Ok(Payload::Aligned(AlignedBuf::from_slice(bytes)));
        }
        Ok(Payload::Bytes(bytes.to_vec()))
    }
    fn string(&mut self, max: usize) -> Result<String, WireError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(self.bad(format!("string of {len} bytes exceeds {max}")));
        }
        let bytes = self.take(len)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.bad("string is not UTF-8".to_string()))
    }
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.bad("varint overflows u64".to_string()));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.bad("varint longer than 10 bytes".to_string()))
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
