//! The transmission phase of one connection: a reader loop that parses
//! requests and submits them to the `BlockSession`, and a writer thread that
//! sends simple replies as completions arrive (in any order, from any thread).
//!
//! Owns: the per-connection in-flight bound (request count and buffer
//! bytes) and the reply channel. Every
//! reply holds one in-flight permit from before its request is submitted until
//! the writer has written it, and the reply channel has room for as many
//! replies as there are permits, so a completion callback never blocks on the
//! socket — a slow client stalls only its own reader. Must never: read a
//! payload larger than `proto::MAX_PAYLOAD_BYTES`, panic on client input, or
//! reply twice to one request.

use crate::proto::{self, Command, Request};
use crate::stream::Stream;
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, Geometry, LOGICAL_BLOCK_BYTES,
};
use std::io::{self, BufWriter, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};

/// Semaphore bounding requests in flight on one connection, by count and
/// by data bytes held in buffers (a single request is always admitted when
/// nothing else is in flight, so no request can wait forever).
#[derive(Debug)]
struct InFlight {
    /// (requests, buffer bytes) currently held.
    held: Mutex<(usize, u64)>,
    freed: Condvar,
    max: usize,
    max_bytes: u64,
}

impl InFlight {
    fn acquire(&self, cost_bytes: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.0 >= self.max
            || (held.0 > 0 && held.1.saturating_add(cost_bytes) > self.max_bytes)
        {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.0 += 1;
        held.1 += cost_bytes;
    }

    fn release(&self, cost_bytes: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            held.0 > 0 && held.1 >= cost_bytes,
            "in-flight permit released twice"
        );
        held.0 -= 1;
        held.1 -= cost_bytes;
        self.freed.notify_one();
    }
}

/// One simple reply; `data` is the payload of a successful read.
#[derive(Debug)]
struct Reply {
    handle: u64,
    error: u32,
    data: Option<AlignedBuf>,
    /// Bytes of the in-flight budget this reply's permit holds.
    cost_bytes: u64,
}

/// Sends a reply that already holds a permit.
#[derive(Debug, Clone)]
struct ReplySink {
    tx: SyncSender<Reply>,
    in_flight: Arc<InFlight>,
}

impl ReplySink {
    fn send(&self, reply: Reply) {
        let reply_cost = reply.cost_bytes;
        // Never blocks: channel capacity == permit count (see module doc).
        if self.tx.send(reply).is_err() {
            // Writer gone (connection torn down): nobody will release for us.
            self.in_flight.release(reply_cost);
        }
    }
}

/// Tuning of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransmissionParams {
    pub(crate) geometry: Geometry,
    pub(crate) read_only: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) max_in_flight_bytes: u64,
}

/// Maps a block error to the NBD error value for this command. Writes past
/// the end get ENOSPC as the spec asks; everything else follows the errno.
fn nbd_error(command: Command, err: &BlockError) -> u32 {
    let writes = matches!(
        command,
        Command::Write | Command::WriteZeroes | Command::Trim
    );
    if writes && *err == BlockError::OutOfRange {
        return proto::NBD_ENOSPC;
    }
    proto::nbd_error_from_errno(err.errno())
}

fn writer_loop(stream: Stream, rx: Receiver<Reply>, in_flight: Arc<InFlight>) {
    let shutdown_handle = stream.try_clone().ok();
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    let mut broken = false;
    let write_one = |out: &mut BufWriter<Stream>, r: &Reply| -> io::Result<()> {
        out.write_all(&proto::encode_simple_reply(r.handle, r.error))?;
        if let Some(data) = &r.data {
            out.write_all(data.as_slice())?;
        }
        Ok(())
    };
    loop {
        let reply = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => {
                // Batch replies: flush only when nothing else is queued.
                if !broken && out.flush().is_err() {
                    broken = true;
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if !broken {
            if let Err(e) = write_one(&mut out, &reply) {
                tracing::debug!(error = %e, "NBD reply write failed; closing connection");
                broken = true;
                if let Some(s) = &shutdown_handle {
                    s.shutdown();
                }
            }
        }
        in_flight.release(reply.cost_bytes);
    }
    let _ = out.flush();
}

/// What the reader does with one request header.
enum Step {
    Continue,
    Stop,
}

struct Reader<'a> {
    stream: &'a mut Stream,
    session: &'a Arc<dyn BlockSession>,
    params: TransmissionParams,
    sink: ReplySink,
    /// In-flight budget held by the request being handled.
    cost_bytes: u64,
}

impl Reader<'_> {
    /// Replies immediately (the permit is already held).
    fn reply_now(&self, handle: u64, error: u32) {
        self.sink.send(Reply {
            handle,
            error,
            data: None,
            cost_bytes: self.cost_bytes,
        });
    }

    fn submit(&self, command: Command, handle: u64, block: BlockRequest, buf: AlignedBuf) {
        let sink = self.sink.clone();
        let is_read = command == Command::Read;
        let cost_bytes = self.cost_bytes;
        self.session.submit(
            block,
            buf,
            Box::new(move |res| {
                let reply = match res {
                    Ok(buf) => Reply {
                        handle,
                        error: 0,
                        data: is_read.then_some(buf),
                        cost_bytes,
                    },
                    Err(e) => Reply {
                        handle,
                        error: nbd_error(command, &e),
                        data: None,
                        cost_bytes,
                    },
                };
                sink.send(reply);
            }),
        );
    }

    /// Reads and discards a payload we refuse, keeping the stream in sync.
    fn drain(&mut self, len_bytes: u32) -> io::Result<()> {
        let copied = io::copy(
            &mut Read::by_ref(self.stream).take(u64::from(len_bytes)),
            &mut io::sink(),
        )?;
        if copied != u64::from(len_bytes) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn handle_write(&mut self, req: &Request) -> io::Result<()> {
        let g = self.params.geometry;
        if req.len_bytes > g.max_io_bytes || self.params.read_only {
            self.drain(req.len_bytes)?;
            let error = if self.params.read_only {
                proto::NBD_EPERM
            } else {
                proto::NBD_EINVAL
            };
            self.reply_now(req.handle, error);
            return Ok(());
        }
        let len = usize::try_from(req.len_bytes)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let mut buf = AlignedBuf::zeroed(len);
        self.stream.read_exact(buf.as_mut_slice())?;
        let block = BlockRequest {
            op: BlockOp::Write,
            offset_bytes: req.offset_bytes,
            len_bytes: req.len_bytes,
            fua: req.fua(),
        };
        self.submit(Command::Write, req.handle, block, buf);
        Ok(())
    }

    /// Write-zeroes as ordinary writes of zeroes, one chunk at a time (bounded
    /// memory): used for NO_HOLE, and when the target has no write-zeroes.
    fn write_zeroes_as_writes(&self, req: &Request) {
        let g = self.params.geometry;
        // Chunks stay within max_io (for the write path) and 1 MiB (memory),
        // and a multiple of the logical block size.
        let lb = LOGICAL_BLOCK_BYTES;
        let chunk_max = (g.max_io_bytes.min(1 << 20) / lb * lb).max(lb);
        let whole = BlockRequest {
            op: BlockOp::WriteZeroes,
            offset_bytes: req.offset_bytes,
            len_bytes: req.len_bytes,
            fua: false,
        };
        if let Err(e) = whole.validate(g.size_bytes, g.max_io_bytes) {
            return self.reply_now(req.handle, nbd_error(Command::WriteZeroes, &e));
        }
        let mut offset = req.offset_bytes;
        let mut left = req.len_bytes;
        let mut buf = AlignedBuf::zeroed(usize::try_from(chunk_max.min(left)).unwrap_or(0));
        while left > 0 {
            let len = chunk_max.min(left);
            if buf.len() != usize::try_from(len).unwrap_or(0) {
                buf = AlignedBuf::zeroed(usize::try_from(len).unwrap_or(0));
            }
            let block = BlockRequest {
                op: BlockOp::Write,
                offset_bytes: offset,
                len_bytes: len,
                fua: req.fua(),
            };
            let (tx, rx) = mpsc::sync_channel(1);
            self.session
                .submit(block, buf, Box::new(move |res| drop(tx.send(res))));
            match rx.recv() {
                Ok(Ok(back)) => buf = back,
                Ok(Err(e)) => {
                    return self.reply_now(req.handle, nbd_error(Command::WriteZeroes, &e))
                }
                Err(_) => return self.reply_now(req.handle, proto::NBD_EIO),
            }
            offset += u64::from(len);
            left -= len;
        }
        self.reply_now(req.handle, 0);
    }

    fn handle_request(&mut self, req: Request) -> io::Result<Step> {
        if req.command == Command::Disconnect {
            return Ok(Step::Stop);
        }
        if req.payload_bytes() > proto::MAX_PAYLOAD_BYTES {
            tracing::info!(
                len = req.len_bytes,
                "NBD write payload over 32 MiB: closing connection"
            );
            return Ok(Step::Stop);
        }
        let g = self.params.geometry;
        // Only reads and accepted writes hold data buffers while in flight.
        self.cost_bytes = match req.command {
            Command::Read | Command::Write => u64::from(req.len_bytes.min(g.max_io_bytes)),
            _ => 0,
        };
        self.sink.in_flight.acquire(self.cost_bytes);
        let (op, fua) = match req.command {
            Command::Write => return self.handle_write(&req).map(|()| Step::Continue),
            Command::Read if req.len_bytes > g.max_io_bytes => {
                self.reply_now(req.handle, proto::NBD_EINVAL);
                return Ok(Step::Continue);
            }
            Command::Read => (BlockOp::Read, false),
            Command::Flush => (BlockOp::Flush, false),
            Command::Trim | Command::WriteZeroes if self.params.read_only => {
                self.reply_now(req.handle, proto::NBD_EPERM);
                return Ok(Step::Continue);
            }
            Command::Trim => (BlockOp::Discard, req.fua()),
            Command::WriteZeroes if req.no_hole() || !g.supports_write_zeroes => {
                self.write_zeroes_as_writes(&req);
                return Ok(Step::Continue);
            }
            Command::WriteZeroes => (BlockOp::WriteZeroes, req.fua()),
            Command::Unknown(_) | Command::Disconnect => {
                self.reply_now(req.handle, proto::NBD_EINVAL);
                return Ok(Step::Continue);
            }
        };
        let (offset_bytes, len_bytes) = if op == BlockOp::Flush {
            (0, 0)
        } else {
            (req.offset_bytes, req.len_bytes)
        };
        let block = BlockRequest {
            op,
            offset_bytes,
            len_bytes,
            fua,
        };
        if let Err(e) = block.validate(g.size_bytes, g.max_io_bytes) {
            self.reply_now(req.handle, nbd_error(req.command, &e));
            return Ok(Step::Continue);
        }
        let buf = if op == BlockOp::Read {
            AlignedBuf::zeroed(
                usize::try_from(len_bytes)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
            )
        } else {
            AlignedBuf::empty()
        };
        self.submit(req.command, req.handle, block, buf);
        Ok(Step::Continue)
    }

    fn run(&mut self) -> io::Result<()> {
        let mut header = [0u8; proto::REQUEST_BYTES];
        loop {
            match self.stream.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let req = match proto::parse_request(&header) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(error = %e, "NBD request out of sync: closing connection");
                    return Ok(());
                }
            };
            if let Step::Stop = self.handle_request(req)? {
                return Ok(());
            }
        }
    }
}

/// Serves requests until the client disconnects, the stream fails or
/// breaks protocol; returns after every in-flight request was answered.
pub(crate) fn serve(
    mut stream: Stream,
    session: &Arc<dyn BlockSession>,
    params: TransmissionParams,
) -> io::Result<()> {
    let max = params.max_in_flight.max(1);
    let in_flight = Arc::new(InFlight {
        held: Mutex::new((0, 0)),
        freed: Condvar::new(),
        max,
        max_bytes: params.max_in_flight_bytes,
    });
    let (tx, rx) = mpsc::sync_channel(max);
    let write_half = stream.try_clone()?;
    let writer_in_flight = Arc::clone(&in_flight);
    let writer = std::thread::Builder::new()
        .name("nbd-writer".into())
        .spawn(move || writer_loop(write_half, rx, writer_in_flight))?;
    let result = {
        let mut reader = Reader {
            stream: &mut stream,
            session,
            params,
            sink: ReplySink { tx, in_flight },
            cost_bytes: 0,
        };
        reader.run()
        // `reader` (and its sender) drops here; the writer ends once every
        // completion has sent its reply and dropped its sender clone.
    };
    if writer.join().is_err() {
        tracing::error!("NBD writer thread panicked");
    }
    stream.shutdown();
    result
}
