//! Cuts a connection's received byte stream at frame boundaries, so the
//! resource actor gets whole frames and the replication core decodes them
//! in place instead of first gathering a large frame from read-sized pieces
//! (a copy of every replicated byte) — and reads the data block of a large
//! `Data` / `ResyncReply` frame straight into its own 4096-aligned buffer,
//! which the peer write then hands to the O_DIRECT backing device as it is:
//! no user-space copy between the socket and the disk.
//!
//! Owns: the receive buffers of one connection and the size of each read.
//! It knows the frame header's length field (`wire::frame_size`) and where
//! a data block starts (`wire::block_range`), nothing else. Must never:
//! drop, reorder or alter bytes, or grow a buffer beyond one maximal frame
//! (`wire::MAX_PAYLOAD_BYTES` plus header) or one read chunk, whichever is
//! larger — a length the header does not justify is passed on as it is and
//! refused by the decoder.
//!
//! Reads. While a block is being received, every read goes into its buffer
//! (several reads; the partial state stays here). Otherwise a read goes to
//! the frame buffer: one chunk at a time, except where it could run into a
//! block — a frame head that says "data block follows" is completed
//! exactly, and after a block (bulk traffic: the next frame is likely
//! another) reads stop at the longest possible head of the next frame
//! until [`BULK_SMALL_FRAMES`] small frames in a row end the bulk phase.
//! Bytes of a block that a chunk read took in anyway are copied into its
//! buffer (counted in [`FrameReader::block_bytes_copied`]).
//!
//! The way in: [`FrameReader::read_from`] (one read of a nonblocking
//! socket, called by `Conn::receive` when the actor's poll says readable)
//! and [`FrameReader::take_received`].

use drbdd_blockio::AlignedBuf;
use drbdd_replication::wire::{
    block_range, frame_size, BlockRange, FrameSize, Received, HEADER_BYTES, MAX_BLOCK_HEAD_BYTES,
    MIN_SPLIT_BLOCK_BYTES,
};
use std::io;
use std::os::fd::AsFd;

/// Small frames in a row after a block that end the bulk phase (reads then
/// take whole chunks again; a block head found in a chunk costs a copy of
/// what the chunk holds of its block).
pub(crate) const BULK_SMALL_FRAMES: usize = 16;
/// Largest read into the scratch buffer: a small frame (its block below
/// [`MIN_SPLIT_BLOCK_BYTES`]) and the longest head after it.
const SCRATCH_BYTES: usize = MIN_SPLIT_BLOCK_BYTES + 4 * MAX_BLOCK_HEAD_BYTES;
const _: () = assert!(SCRATCH_BYTES >= MIN_SPLIT_BLOCK_BYTES + 2 * MAX_BLOCK_HEAD_BYTES);

/// What one [`FrameReader::read_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// This many bytes were read (complete units: `take_received`).
    Read(usize),
    /// Nothing to read now (`EAGAIN` on a nonblocking socket).
    WouldBlock,
    /// The peer closed its side (a read returned 0 bytes).
    Eof,
}

/// Where the bytes of one read come from; an fd, or a script in tests.
/// Each method does one read and appends what it read (0: end of stream).
trait ReadSource {
    /// Into the spare capacity of `buf`.
    fn read_vec(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;
    /// Into the rest of `block`'s capacity.
    fn read_block(&mut self, block: &mut AlignedBuf) -> io::Result<usize>;
    /// Into `buf` (returns the bytes written at its front).
    fn read_slice(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

struct FdSource<F: AsFd>(F);

impl<F: AsFd> ReadSource for FdSource<F> {
    fn read_vec(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        Ok(rustix::io::read(
            &self.0,
            rustix::buffer::spare_capacity(buf),
        )?)
    }
    fn read_block(&mut self, block: &mut AlignedBuf) -> io::Result<usize> {
        block.read_append(&self.0)
    }
    fn read_slice(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.0, buf)?)
    }
}

/// How the next read into the frame buffer is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// At most this many bytes, through the scratch buffer.
    Exactly(usize),
    /// Whatever the frame buffer's spare capacity takes.
    Chunk,
}

/// The receive state of one connection.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Whole frames, then the start of the next one.
    buf: Vec<u8>,
    chunk_bytes: usize,
    /// The head of the frame whose block is being read, and the block.
    block: Option<(Vec<u8>, AlignedBuf)>,
    /// Complete units in stream order, not yet taken.
    ready: Vec<Received>,
    /// Small frames taken since the last block (saturates at
    /// [`BULK_SMALL_FRAMES`]: not in the bulk phase).
    small_since_block: usize,
    block_bytes_direct: u64,
    block_bytes_copied: u64,
    /// Bounded reads land here first (allocated once, not per read).
    scratch: Vec<u8>,
}

impl FrameReader {
    /// Reads of at most `chunk_bytes` while no large frame is pending.
    pub(crate) fn new(chunk_bytes: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(chunk_bytes),
            chunk_bytes,
            block: None,
            ready: Vec::new(),
            small_since_block: BULK_SMALL_FRAMES,
            scratch: Vec::new(),
            block_bytes_direct: 0,
            block_bytes_copied: 0,
        }
    }

    /// One `read(2)` from `fd` into the buffer the stream position calls
    /// for (`EINTR` is retried). Complete units are then ready in
    /// [`FrameReader::take_received`].
    pub(crate) fn read_from(&mut self, fd: impl AsFd) -> io::Result<ReadOutcome> {
        self.read_via(&mut FdSource(fd))
    }

    /// The complete units received so far, in stream order: runs of whole
    /// frames, and frames whose data block (at least
    /// [`MIN_SPLIT_BLOCK_BYTES`]) was read into its own buffer.
    pub(crate) fn take_received(&mut self) -> Vec<Received> {
        self.flush_frames();
        std::mem::take(&mut self.ready)
    }

    /// Block bytes read straight into their buffer so far.
    #[cfg(test)]
    pub(crate) fn block_bytes_direct(&self) -> u64 {
        self.block_bytes_direct
    }

    /// Block bytes a chunk read took in with other frames and that were
    /// copied into the block's buffer.
    #[cfg(test)]
    pub(crate) fn block_bytes_copied(&self) -> u64 {
        self.block_bytes_copied
    }

    fn read_via(&mut self, src: &mut impl ReadSource) -> io::Result<ReadOutcome> {
        loop {
            match self.read_once(src) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => return Ok(ReadOutcome::Read(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::WouldBlock)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One read; nothing changes when it fails.
    fn read_once(&mut self, src: &mut impl ReadSource) -> io::Result<usize> {
        if let Some((_, block)) = &mut self.block {
            let n = src.read_block(block)?;
            self.block_bytes_direct += n as u64;
            if block.spare_bytes() == 0 {
                let (head, block) = self.block.take().expect("checked above");
                self.ready.push(Received::Block { head, block });
            }
            return Ok(n);
        }
        let n = match self.plan() {
            Plan::Exactly(want) => {
                if self.scratch.len() < want {
                    self.scratch.resize(SCRATCH_BYTES.max(want), 0);
                }
                let n = src.read_slice(&mut self.scratch[..want])?;
                self.buf.extend_from_slice(&self.scratch[..n]);
                n
            }
            Plan::Chunk => {
                self.reserve_for_chunk();
                src.read_vec(&mut self.buf)?
            }
        };
        self.cut_blocks();
        Ok(n)
    }

    /// How the next read into `buf` is sized (see the module comment).
    fn plan(&self) -> Plan {
        let (end, _, complete) = scan(&self.buf);
        let tail = &self.buf[end..];
        if let BlockRange::NeedHead(n) = block_range(tail) {
            if n > HEADER_BYTES {
                return Plan::Exactly(n - tail.len()); // a block follows this head
            }
        }
        if self.small_since_block + complete >= BULK_SMALL_FRAMES {
            return Plan::Chunk;
        }
        let frame_rest = match frame_size(tail) {
            FrameSize::Incomplete => 0,
            FrameSize::Bytes(total) => total - tail.len(),
            FrameSize::Invalid => return Plan::Chunk,
        };
        // Up to the longest head of the frame after this one: not into a
        // block, which its head announces (but for the 8 bytes a shorter
        // `ResyncReply` head leaves, copied into its buffer).
        if frame_rest == 0 {
            Plan::Exactly(MAX_BLOCK_HEAD_BYTES - tail.len())
        } else if frame_rest + MAX_BLOCK_HEAD_BYTES <= SCRATCH_BYTES {
            Plan::Exactly(frame_rest + MAX_BLOCK_HEAD_BYTES)
        } else {
            Plan::Chunk
        }
    }

    /// Makes room for a chunk read: up to the end of a pending large frame
    /// (when that frame needs more than the buffer holds) or one chunk.
    fn reserve_for_chunk(&mut self) {
        let (_, partial, _) = scan(&self.buf);
        if let Some(total) = partial {
            if total > self.buf.capacity() {
                self.buf.reserve_exact(total - self.buf.len());
            }
        }
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve_exact(self.chunk_bytes);
        }
    }

    /// Moves the frame after the complete ones out of `buf` when its head
    /// says a block of at least [`MIN_SPLIT_BLOCK_BYTES`] follows: frames
    /// before it become ready, its head and block are pending (or ready,
    /// when `buf` already held all of it), and what `buf` holds beyond
    /// the block stays for the next frames.
    fn cut_blocks(&mut self) {
        while self.block.is_none() {
            let (end, _, _) = scan(&self.buf);
            let tail = &self.buf[end..];
            let BlockRange::Block { start, len } = block_range(tail) else {
                return;
            };
            if len < MIN_SPLIT_BLOCK_BYTES || tail.len() < start {
                return;
            }
            let have = (tail.len() - start).min(len);
            let mut block = AlignedBuf::with_capacity_uninit(len);
            block.extend_from_slice(&tail[start..start + have]);
            self.block_bytes_copied += have as u64;
            let head = tail[..start].to_vec();
            let rest = tail[start + have..].to_vec();
            self.buf.truncate(end);
            self.flush_frames();
            self.buf.extend_from_slice(&rest);
            self.small_since_block = 0;
            if block.spare_bytes() == 0 {
                self.ready.push(Received::Block { head, block });
            } else {
                self.block = Some((head, block));
            }
        }
    }

    /// Moves the complete frames at the front of `buf` to `ready`; the bytes
    /// of a partial frame after them stay (copied into a fresh buffer sized
    /// for that frame).
    fn flush_frames(&mut self) {
        if let Some(frames) = self.take_frames() {
            let (_, _, count) = scan(&frames);
            self.small_since_block = (self.small_since_block + count).min(BULK_SMALL_FRAMES);
            self.ready.push(Received::Frames(frames));
        }
    }

    /// The buffer to read into next: reads go to its spare capacity, which
    /// ends where a pending large frame ends (when that frame needs more
    /// than the buffer holds) or one chunk further. (Every frame stays in
    /// the byte runs of `take_frames`; blocks apart need `read_from`.)
    #[cfg(test)]
    pub(crate) fn buf_for_read(&mut self) -> &mut Vec<u8> {
        self.reserve_for_chunk();
        &mut self.buf
    }

    /// The complete frames received so far, in order, or `None`. The bytes
    /// of a partial frame after them stay here (copied into a fresh buffer
    /// sized for that frame).
    pub(crate) fn take_frames(&mut self) -> Option<Vec<u8>> {
        let (end, partial, _) = scan(&self.buf);
        if end == 0 {
            return None;
        }
        let cap = partial.unwrap_or(0).max(self.chunk_bytes);
        let mut next = Vec::with_capacity(cap);
        next.extend_from_slice(&self.buf[end..]);
        self.buf.truncate(end);
        Some(std::mem::replace(&mut self.buf, next))
    }
}

/// Bytes of complete frames at the front of `buf`, the full size of the
/// partial frame after them when its header is there, and how many frames
/// are complete. Bytes that are not a frame count as complete: the decoder
/// refuses them with the reason.
fn scan(buf: &[u8]) -> (usize, Option<usize>, usize) {
    let mut pos = 0;
    let mut count = 0;
    loop {
        match frame_size(&buf[pos..]) {
            FrameSize::Incomplete => return (pos, None, count),
            FrameSize::Bytes(n) if pos + n <= buf.len() => {
                pos += n;
                count += 1;
            }
            FrameSize::Bytes(n) => return (pos, Some(n), count),
            FrameSize::Invalid => return (buf.len(), None, count + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drbdd_replication::wire::Packet;

    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Ping.encode_into(&mut out);
        for (i, len) in [4096usize, 300_000, 1 << 20, 512].into_iter().enumerate() {
            Packet::Data {
                seq: i as u64,
                epoch: 1,
                flags: 0,
                offset_bytes: 0,
                len_bytes: u32::try_from(len).unwrap(),
                payload: vec![u8::try_from(i).unwrap() + 1; len].into(),
            }
            .encode_into(&mut out);
            Packet::WriteAck { seq: i as u64 }.encode_into(&mut out);
        }
        out
    }

    /// Feeds `input` in reads of at most `step` bytes (and never more than
    /// the spare capacity the reader offers); returns what it delivered.
    fn feed(input: &[u8], step: usize, chunk: usize) -> Vec<Vec<u8>> {
        let mut r = FrameReader::new(chunk);
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < input.len() {
            let buf = r.buf_for_read();
            let room = buf.capacity() - buf.len();
            assert!(room > 0, "the reader always offers room");
            let n = room.min(step).min(input.len() - pos);
            buf.extend_from_slice(&input[pos..pos + n]);
            pos += n;
            while let Some(frames) = r.take_frames() {
                out.push(frames);
            }
        }
        out
    }

    #[test]
    fn delivers_every_byte_in_order_as_whole_frames() {
        let input = stream();
        for step in [1, 7, 16, 4096, 65_536, 256 * 1024, usize::MAX] {
            let pieces = feed(&input, step, 256 * 1024);
            assert_eq!(pieces.concat(), input, "step {step}");
            for p in &pieces {
                let (end, partial, _) = scan(p);
                assert_eq!(
                    (end, partial),
                    (p.len(), None),
                    "step {step}: a piece ends on a frame boundary"
                );
            }
        }
    }

    #[test]
    fn a_large_frame_is_read_to_its_end_and_not_beyond() {
        let input = stream();
        let pieces = feed(&input, usize::MAX, 64 * 1024);
        // The 1 MiB data frame arrives alone: reads stop at its end.
        assert!(
            pieces.iter().any(
                |p| matches!(frame_size(p), FrameSize::Bytes(n) if n == p.len() && n > 1 << 20)
            ),
            "{:?}",
            pieces.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn garbage_is_passed_on_for_the_decoder_to_refuse() {
        let garbage = vec![0xAB; 100];
        let got = feed(&garbage, 33, 1024).concat();
        // Everything that could be a header is passed on (a last piece shorter
        // than a header waits, as any partial header does).
        assert!(
            garbage.starts_with(&got) && got.len() == 99,
            "{}",
            got.len()
        );
    }

    // ---- read_from / take_received: blocks apart ----

    use drbdd_replication::wire::{decode_framed, decode_split, FrameCrc, Payload};

    /// Hands out `input` in reads of at most the next of `steps` bytes
    /// (cycling), then `EAGAIN`; records where block reads wrote.
    struct Script<'a> {
        input: &'a [u8],
        pos: usize,
        steps: &'a [usize],
        turn: usize,
        block_ptrs: Vec<usize>,
    }

    impl Script<'_> {
        fn next_len(&mut self, room: usize) -> io::Result<usize> {
            if self.pos == self.input.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let step = self.steps[self.turn % self.steps.len()].max(1);
            self.turn += 1;
            Ok(step.min(room).min(self.input.len() - self.pos))
        }
    }

    impl ReadSource for Script<'_> {
        fn read_vec(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            let n = self.next_len(buf.capacity() - buf.len())?;
            buf.extend_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
        fn read_block(&mut self, block: &mut AlignedBuf) -> io::Result<usize> {
            let n = self.next_len(block.spare_bytes())?;
            block.extend_from_slice(&self.input[self.pos..self.pos + n]);
            self.block_ptrs.push(block.as_ptr() as usize);
            self.pos += n;
            Ok(n)
        }
        fn read_slice(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.next_len(buf.len())?;
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// Everything `input` turns into when read in `steps`; the reader too.
    fn receive(
        input: &[u8],
        steps: &[usize],
        chunk: usize,
    ) -> (Vec<Received>, FrameReader, Vec<usize>) {
        let mut r = FrameReader::new(chunk);
        let mut src = Script {
            input,
            pos: 0,
            steps,
            turn: 0,
            block_ptrs: Vec::new(),
        };
        let mut out = Vec::new();
        loop {
            match r.read_via(&mut src).unwrap() {
                ReadOutcome::Read(n) => assert!(n > 0),
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => unreachable!("the script never ends the stream"),
            }
            out.extend(r.take_received());
        }
        (out, r, src.block_ptrs)
    }

    /// Decodes units the way the peer machine does.
    fn decode_units(units: Vec<Received>, crc: FrameCrc) -> Vec<Packet> {
        let mut packets = Vec::new();
        for u in units {
            match u {
                Received::Frames(bytes) => packets.extend(decode_all(&bytes, crc)),
                Received::Block { head, block } => {
                    let ptr = block.as_ptr();
                    let p = decode_split(&head, block, crc).unwrap();
                    match &p {
                        Packet::Data {
                            payload: Payload::Aligned(b),
                            ..
                        }
                        | Packet::ResyncReply {
                            payload: Payload::Aligned(b),
                            ..
                        } => assert_eq!(b.as_ptr(), ptr, "the packet holds the very buffer"),
                        other => panic!("a block unit decoded to {other:?}"),
                    }
                    packets.push(p);
                }
            }
        }
        packets
    }

    fn decode_all(mut bytes: &[u8], crc: FrameCrc) -> Vec<Packet> {
        let mut packets = Vec::new();
        while !bytes.is_empty() {
            let (p, n) = decode_framed(bytes, crc).unwrap().expect("whole frames");
            packets.push(p);
            bytes = &bytes[n..];
        }
        packets
    }

    fn data(seq: u64, len: usize, fill: u8) -> Packet {
        Packet::Data {
            seq,
            epoch: 1,
            flags: 0,
            offset_bytes: seq * 4096,
            len_bytes: u32::try_from(len).unwrap(),
            payload: vec![fill; len].into(),
        }
    }

    fn encode(packets: &[Packet], crc: FrameCrc) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            p.encode_framed(&mut out, crc);
        }
        out
    }

    #[test]
    fn blocks_arrive_in_their_own_buffers_and_decode_like_the_whole_stream() {
        let mut packets = vec![Packet::Ping];
        for (i, len) in [4096usize, 300_000, 1 << 20, 512, 4095, 65_536]
            .into_iter()
            .enumerate()
        {
            let seq = i as u64;
            packets.push(data(seq, len, u8::try_from(i).unwrap() + 1));
            packets.push(Packet::Barrier { epoch: 1 });
            packets.push(Packet::ResyncReply {
                id: seq,
                offset_bytes: 0,
                payload: vec![9; len].into(),
            });
        }
        for crc in [FrameCrc::WholePayload, FrameCrc::SkipDataBlock] {
            let input = encode(&packets, crc);
            for steps in [
                &[1usize][..],
                &[7, 3000, 100_000],
                &[usize::MAX],
                &[44, 1 << 20],
            ] {
                let (units, r, _) = receive(&input, steps, 256 * 1024);
                let blocks = units
                    .iter()
                    .filter(|u| matches!(u, Received::Block { .. }))
                    .count();
                if steps[0] <= 44 {
                    // Reads stop at each head: every block from
                    // MIN_SPLIT_BLOCK_BYTES (32 KiB) on arrives apart.
                    assert_eq!(blocks, 6, "{steps:?}");
                }
                let bytes: usize = units.iter().map(Received::len).sum();
                assert_eq!(bytes, input.len());
                let got = decode_units(units, crc);
                assert_eq!(got, packets, "{crc:?} {steps:?}");
                for p in got {
                    if let Packet::Data { payload, .. } | Packet::ResyncReply { payload, .. } = p {
                        // Aligned from one page on either way: received
                        // apart, or copied once out of a run of frames.
                        assert_eq!(
                            matches!(payload, Payload::Aligned(_)),
                            payload.len() >= 4096,
                            "{steps:?}"
                        );
                    }
                }
                assert!(
                    r.block_bytes_direct() + r.block_bytes_copied()
                        <= 2 * (4096 + 300_000 + (1 << 20) + 65_536)
                );
            }
        }
    }

    #[test]
    fn in_bulk_traffic_only_the_first_block_is_copied() {
        let mut packets = Vec::new();
        for seq in 0..20 {
            packets.push(data(seq, 1 << 20, 5));
            packets.push(Packet::Barrier { epoch: 1 });
            packets.push(Packet::Ping);
        }
        let input = encode(&packets, FrameCrc::SkipDataBlock);
        // The socket always has everything: each read takes all it is offered.
        let (units, r, _) = receive(&input, &[usize::MAX], 256 * 1024);
        assert!(
            r.block_bytes_copied() < 256 * 1024,
            "at most one chunk of the first block: {}",
            r.block_bytes_copied()
        );
        assert_eq!(r.block_bytes_direct() + r.block_bytes_copied(), 20 << 20);
        assert_eq!(decode_units(units, FrameCrc::SkipDataBlock), packets);
    }

    #[test]
    fn the_block_a_packet_carries_is_the_buffer_the_reads_filled() {
        let input = encode(&[data(1, 1 << 20, 3)], FrameCrc::SkipDataBlock);
        let (mut units, _, ptrs) = receive(&input, &[44, 100_000], 256 * 1024);
        assert_eq!(units.len(), 1);
        let Received::Block { head, block } = units.remove(0) else {
            panic!("a block unit");
        };
        assert!(ptrs.len() > 1, "several reads filled it");
        assert!(ptrs.iter().all(|&p| p == block.as_ptr() as usize));
        let Packet::Data { payload, .. } =
            decode_split(&head, block, FrameCrc::SkipDataBlock).unwrap()
        else {
            panic!("a data packet");
        };
        assert_eq!(payload.into_aligned().as_ptr() as usize, ptrs[0]);
    }

    #[test]
    fn a_corrupted_block_byte_is_detected_with_data_integrity() {
        let mut input = encode(&[data(1, 65_536, 3)], FrameCrc::WholePayload);
        let last = input.len() - 1;
        input[last] ^= 1;
        let (mut units, _, _) = receive(&input, &[44, usize::MAX], 256 * 1024);
        let Received::Block { head, block } = units.remove(0) else {
            panic!("a block unit");
        };
        let err = decode_split(&head, block, FrameCrc::WholePayload).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // The same frame whole fails the same way.
        assert_eq!(
            decode_framed(&input, FrameCrc::WholePayload).unwrap_err(),
            err
        );
    }

    #[test]
    fn a_socket_read_reports_data_would_block_and_end_of_stream() {
        use std::io::Write;
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut r = FrameReader::new(64 * 1024);
        assert_eq!(r.read_from(&rx).unwrap(), ReadOutcome::WouldBlock);
        let input = encode(&[Packet::Ping, data(1, 8192, 4)], FrameCrc::SkipDataBlock);
        tx.write_all(&input).unwrap();
        drop(tx);
        let mut units = Vec::new();
        while let ReadOutcome::Read(_) = r.read_from(&rx).unwrap() {
            units.extend(r.take_received());
        }
        assert_eq!(r.read_from(&rx).unwrap(), ReadOutcome::Eof);
        assert_eq!(
            decode_units(units, FrameCrc::SkipDataBlock),
            vec![Packet::Ping, data(1, 8192, 4)]
        );
    }

    fn arb_packet() -> impl proptest::strategy::Strategy<Value = Packet> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Packet::Ping),
            any::<u64>().prop_map(|seq| Packet::WriteAck { seq }),
            any::<u32>().prop_map(|epoch| Packet::Barrier { epoch }),
            (any::<u64>(), 0usize..70_000, any::<u8>()).prop_map(|(seq, len, fill)| data(
                seq % 1000,
                len,
                fill
            )),
            (any::<u64>(), 0usize..70_000).prop_map(|(id, len)| Packet::ResyncReply {
                id,
                offset_bytes: 4096,
                payload: (0..len)
                    .map(|i| u8::try_from(i % 251).unwrap())
                    .collect::<Vec<u8>>()
                    .into(),
            }),
            (0u32..(1 << 20)).prop_map(|len| Packet::Data {
                seq: 1,
                epoch: 2,
                flags: drbdd_replication::wire::DATA_DISCARD,
                offset_bytes: 0,
                len_bytes: len,
                payload: Payload::default(),
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_read_boundaries_give_the_packets_of_the_whole_stream(
            packets in proptest::collection::vec(arb_packet(), 1..24),
            steps in proptest::collection::vec(1usize..100_000, 1..8),
            whole in proptest::bool::ANY,
            chunk in 16usize..300_000,
        ) {
            let crc = if whole { FrameCrc::WholePayload } else { FrameCrc::SkipDataBlock };
            let input = encode(&packets, crc);
            let (units, _, _) = receive(&input, &steps, chunk);
            proptest::prop_assert_eq!(decode_units(units, crc), decode_all(&input, crc));
        }
    }
}
