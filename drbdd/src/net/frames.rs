//! Cuts a connection's received byte stream at frame boundaries, so the
//! resource actor gets whole frames and the replication core decodes them
//! in place instead of first gathering a large frame from read-sized pieces
//! (a copy of every replicated byte).
//!
//! Owns: the receive buffer of one connection and the read size. It knows
//! the frame header's length field only (`wire::frame_size`). Must never:
//! drop, reorder or alter bytes, or grow a buffer beyond one maximal frame
//! (`wire::MAX_PAYLOAD_BYTES` plus header) or one read chunk, whichever is
//! larger — a length the header does not justify is passed on as it is and
//! refused by the decoder.

use drbdd_replication::wire::{frame_size, FrameSize};

/// The receive buffer of one connection.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    chunk_bytes: usize,
}

impl FrameReader {
    /// Reads of at most `chunk_bytes` while no large frame is pending.
    pub(crate) fn new(chunk_bytes: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(chunk_bytes),
            chunk_bytes,
        }
    }

    /// The buffer to read into next: reads go to its spare capacity, which
    /// ends where a pending large frame ends (when that frame needs more
    /// than the buffer holds) or one chunk further.
    pub(crate) fn buf_for_read(&mut self) -> &mut Vec<u8> {
        let (_, partial) = scan(&self.buf);
        if let Some(total) = partial {
            if total > self.buf.capacity() {
                self.buf.reserve_exact(total - self.buf.len());
            }
        }
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve_exact(self.chunk_bytes);
        }
        &mut self.buf
    }

    /// The complete frames received so far, in order, or `None`. The bytes
    /// of a partial frame after them stay here (copied into a fresh buffer
    /// sized for that frame).
    pub(crate) fn take_frames(&mut self) -> Option<Vec<u8>> {
        let (end, partial) = scan(&self.buf);
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

/// Bytes of complete frames at the front of `buf`, and the full size of the
/// partial frame after them when its header is there. Bytes that are not a
/// frame count as complete: the decoder refuses them with the reason.
fn scan(buf: &[u8]) -> (usize, Option<usize>) {
    let mut pos = 0;
    loop {
        match frame_size(&buf[pos..]) {
            FrameSize::Incomplete => return (pos, None),
            FrameSize::Bytes(n) if pos + n <= buf.len() => pos += n,
            FrameSize::Bytes(n) => return (pos, Some(n)),
            FrameSize::Invalid => return (buf.len(), None),
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
                payload: vec![u8::try_from(i).unwrap() + 1; len],
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
                let (end, partial) = scan(p);
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
}
