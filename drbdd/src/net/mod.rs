//! The TCP transport of peer connections: one listener per resource on the
//! local node's address, outgoing dials, and the nonblocking connection
//! the resource actor drives from its poll loop.
//!
//! Owns: sockets, the accept and dial threads, and per connection its
//! receive buffer and send queue ([`Conn`]). Dials and accepted sockets
//! reach the actor as [`NetMsg`]s through a [`NetSink`]; after that the
//! actor reads and writes the socket itself when `poll` says so, so a
//! received packet costs no thread hand-over. Must never: reorder bytes of
//! one connection, block the actor (sends that the socket does not take
//! are queued; past a limit the connection reports itself congested),
//! interpret replication packets (the sans-IO core in `drbdd-replication`
//! does), or decide when to connect (the actor does, with connect-int as
//! the retry interval).
//!
//! Who dials: for each pair of nodes the one with the lower node id dials,
//! the other one listens. That avoids two crossing connections for one peer.
//! A dialer first sends an 8-byte preamble (magic, version, from and to node
//! id) so a listener serving several peers on one address knows which peer
//! is calling; anything else is closed without reaching the actor.
//!
//! Received bytes reach the actor cut at frame boundaries (`frames`), so a
//! frame is never gathered from pieces by copying; that reads the length
//! field of the frame header and nothing else.

mod frames;

use drbdd_replication::wire::{Payload, Received};
use frames::{FrameReader, ReadOutcome};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of the connection preamble a dialer sends first.
pub const PREAMBLE_BYTES: usize = 8;
const PREAMBLE_MAGIC: [u8; 4] = *b"dRBd";
const PREAMBLE_VERSION: u8 = 1;
/// How long an accepted socket may take to send its preamble.
const PREAMBLE_TIMEOUT_MS: u64 = 5_000;
/// Accepted sockets waiting for their preamble at most; more are closed at
/// once (a flood of silent clients cannot pile up threads).
const MAX_PENDING_ADMITS: usize = 32;
/// How often the accept loop checks for shutdown.
const ACCEPT_POLL_MS: u64 = 50;
/// Largest read from a socket at once (a larger frame is read to its end).
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Most queued buffers in one `sendmsg` (below the kernel's IOV_MAX of 1024).
const WRITE_BATCH_BUFS: usize = 256;

/// What the transport reports to the resource actor.
#[derive(Debug)]
pub enum NetMsg {
    /// A peer dialed us and sent a valid preamble.
    Incoming { node_id: u8, stream: TcpStream },
    /// Our dial to `node_id` finished.
    Dialed {
        node_id: u8,
        result: Result<TcpStream, String>,
    },
}

/// Delivers [`NetMsg`]s to the actor; returns false once the actor is gone
/// (threads then end).
pub type NetSink = Arc<dyn Fn(NetMsg) -> bool + Send + Sync>;

/// The preamble a dialer sends: magic, version, from and to node id.
pub fn encode_preamble(from_node_id: u8, to_node_id: u8) -> [u8; PREAMBLE_BYTES] {
    let mut b = [0u8; PREAMBLE_BYTES];
    b[..4].copy_from_slice(&PREAMBLE_MAGIC);
    b[4] = PREAMBLE_VERSION;
    b[5] = from_node_id;
    b[6] = to_node_id;
    b
}

/// `(from, to)` of a valid preamble.
pub fn decode_preamble(b: &[u8; PREAMBLE_BYTES]) -> Option<(u8, u8)> {
    (b[..4] == PREAMBLE_MAGIC && b[4] == PREAMBLE_VERSION && b[7] == 0).then_some((b[5], b[6]))
}

/// The listening socket of one resource.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `addr` for dials from `allowed_peers` to `local_node_id`.
    pub fn start(
        addr: SocketAddr,
        local_node_id: u8,
        allowed_peers: Vec<u8>,
        sink: NetSink,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e}; check that no other process uses this address and that it is configured on this host"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("drbdd-listen-{addr}"))
            .spawn(move || accept_loop(&listener, &stop2, local_node_id, &allowed_peers, &sink))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    local_node_id: u8,
    allowed: &[u8],
    sink: &NetSink,
) {
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                if pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_ADMITS {
                    pending.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(%from, "refused replication connection: too many connections without a preamble");
                    continue;
                }
                let sink = Arc::clone(sink);
                let allowed = allowed.to_vec();
                let pending2 = Arc::clone(&pending);
                let spawned = std::thread::Builder::new()
                    .name("drbdd-accept".into())
                    .spawn(move || {
                        if let Err(why) = admit(stream, local_node_id, &allowed, &sink) {
                            tracing::warn!(%from, "refused replication connection: {why}");
                        }
                        pending2.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
        }
    }
}

/// Reads and checks the preamble of an accepted socket.
fn admit(
    mut stream: TcpStream,
    local_node_id: u8,
    allowed: &[u8],
    sink: &NetSink,
) -> Result<(), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(PREAMBLE_TIMEOUT_MS)))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; PREAMBLE_BYTES];
    stream
        .read_exact(&mut b)
        .map_err(|e| format!("no preamble: {e}"))?;
    let (from, to) = decode_preamble(&b).ok_or("not a drbdd peer (bad preamble)")?;
    if to != local_node_id || !allowed.contains(&from) {
        return Err(format!(
            "preamble names node {from} -> {to}, but this resource listens for {allowed:?} -> {local_node_id}"
        ));
    }
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    sink(NetMsg::Incoming {
        node_id: from,
        stream,
    });
    Ok(())
}

/// Dials `addr` on a new thread and reports [`NetMsg::Dialed`].
pub fn dial(addr: SocketAddr, from_node_id: u8, to_node_id: u8, timeout_ms: u64, sink: NetSink) {
    let spawned = std::thread::Builder::new()
        .name(format!("drbdd-dial-{to_node_id}"))
        .spawn(move || {
            let result =
                TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms.max(1)))
                    .and_then(|mut s| {
                        s.write_all(&encode_preamble(from_node_id, to_node_id))?;
                        Ok(s)
                    })
                    .map_err(|e| format!("cannot connect to {addr}: {e}"));
            sink(NetMsg::Dialed {
                node_id: to_node_id,
                result,
            });
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start dial thread");
    }
}

/// Socket settings of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnOpts {
    /// Bytes queued for sending beyond which the connection is congested
    /// (from max-buffers; see [`Conn::congested`]).
    pub queue_bytes: usize,
    /// SO_SNDBUF; 0 leaves the kernel's auto-tuning.
    pub sndbuf_bytes: u32,
    /// Queued bytes that make no progress this long fail the connection
    /// (timeout × ko-count).
    pub send_timeout_ms: u64,
}

/// What one [`Conn::receive`] got.
#[derive(Debug)]
pub enum Receive {
    /// Complete units, in order: runs of whole frames, or a frame whose
    /// data block was read straight into an aligned buffer.
    Got(Vec<Received>),
    /// Nothing complete yet; wait for the socket to be readable again.
    Nothing,
    /// The connection ended (EOF or an error), with the reason.
    Closed(String),
}

/// An established connection, driven by the resource actor's poll loop:
/// no threads of its own.
///
/// Sending: [`Conn::send_bufs`] writes at once without blocking when
/// nothing is queued; what the socket does not take is queued, in order,
/// and written by [`Conn::write_queued`] when `poll` reports the socket
/// writable ([`Conn::wants_write`]). Bytes of one connection go out in the
/// order of the `send` calls either way. Back-pressure: past
/// [`ConnOpts::queue_bytes`] queued the connection is
/// [`congested`](Conn::congested) and the actor stops taking new work until
/// the peer reads (it keeps reading its own sockets, so two congested
/// peers cannot wait on each other).
///
/// Receiving: [`Conn::receive`] does one read and returns the frames
/// completed so far (cut at frame boundaries by `frames`).
#[derive(Debug)]
pub struct Conn {
    pub conn_id: u64,
    stream: TcpStream,
    frames: FrameReader,
    /// Buffers not yet handed to the socket, oldest first.
    queued: VecDeque<Payload>,
    /// Bytes of `queued[0]` already sent.
    front_sent: usize,
    queued_bytes: usize,
    queue_limit_bytes: usize,
    send_timeout: Duration,
    /// Since when queued bytes made no progress.
    stalled_since: Option<std::time::Instant>,
    /// A send failed: the reason, reported by [`Conn::failure`].
    failed: Option<String>,
}

impl Conn {
    /// Sets `stream` up (nonblocking, no delay, buffer size).
    pub fn start(conn_id: u64, stream: TcpStream, opts: ConnOpts) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        if opts.sndbuf_bytes > 0 {
            let bytes = usize::try_from(opts.sndbuf_bytes).unwrap_or(usize::MAX);
            rustix::net::sockopt::set_socket_send_buffer_size(&stream, bytes)?;
        }
        stream.set_nonblocking(true)?;
        Ok(Conn {
            conn_id,
            stream,
            frames: FrameReader::new(READ_CHUNK_BYTES),
            queued: VecDeque::new(),
            front_sent: 0,
            queued_bytes: 0,
            queue_limit_bytes: opts.queue_bytes.max(1),
            send_timeout: Duration::from_millis(opts.send_timeout_ms.max(1)),
            stalled_since: None,
            failed: None,
        })
    }

    /// The socket, for the actor's `poll` set.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.stream.as_fd()
    }

    /// Sends `bytes` after everything sent before. False when the
    /// connection failed (see [`Conn::failure`]).
    pub fn send(&mut self, bytes: Vec<u8>) -> bool {
        self.send_bufs(vec![Payload::Bytes(bytes)])
    }

    /// Sends `bufs` in order, after everything sent before, as one vectored
    /// write when the socket takes them at once (a frame head and its data
    /// block go out together without being copied into one buffer; a block
    /// still shared with the application write is read in place). Never
    /// blocks.
    pub fn send_bufs(&mut self, bufs: Vec<Payload>) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let (mut first, mut off) = (0, 0);
        if self.queued.is_empty() {
            // Nothing is ahead of these bytes: hand them to the socket here.
            match send_nonblocking(&self.stream, &bufs, 0) {
                Ok(n) => (first, off) = consumed_bufs(&bufs, n),
                Err(e) => {
                    self.failed = Some(format!("send failed: {e}"));
                    return false;
                }
            }
            if first == bufs.len() {
                return true;
            }
            self.front_sent = off;
            self.stalled_since = Some(std::time::Instant::now());
        }
        for b in bufs.into_iter().skip(first) {
            self.queued_bytes += b.len();
            self.queued.push_back(b);
        }
        self.queued_bytes -= off;
        true
    }

    /// Bytes are queued: poll for writability and call
    /// [`Conn::write_queued`].
    pub fn wants_write(&self) -> bool {
        !self.queued.is_empty() && self.failed.is_none()
    }

    /// More is queued than the connection's limit: take no new work for it.
    pub fn congested(&self) -> bool {
        self.queued_bytes >= self.queue_limit_bytes && self.failed.is_none()
    }

    /// Writes queued bytes until the socket is full or the queue empty.
    pub fn write_queued(&mut self) {
        while !self.queued.is_empty() && self.failed.is_none() {
            let batch: Vec<&[u8]> = self
                .queued
                .iter()
                .take(WRITE_BATCH_BUFS)
                .map(Payload::as_slice)
                .collect();
            let batch_bytes = batch.iter().map(|b| b.len()).sum::<usize>() - self.front_sent;
            let n = match send_nonblocking(&self.stream, &batch, self.front_sent) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = Some(format!("send failed: {e}"));
                    return;
                }
            };
            let (done, off) = consumed_bufs(&batch, self.front_sent + n);
            drop(batch);
            self.queued.drain(..done);
            self.front_sent = off;
            self.queued_bytes -= n;
            if n > 0 {
                self.stalled_since = (!self.queued.is_empty()).then(std::time::Instant::now);
            }
            if n < batch_bytes {
                return; // the socket is full
            }
        }
    }

    /// Why the connection failed on the send side, if it did; queued bytes
    /// that made no progress for the send timeout count as failed.
    pub fn failure(&mut self) -> Option<String> {
        if self.failed.is_none() {
            if let Some(since) = self.stalled_since {
                if since.elapsed() >= self.send_timeout {
                    self.failed = Some(format!(
                        "send timed out: {} bytes queued, none taken for {} ms",
                        self.queued_bytes,
                        self.send_timeout.as_millis()
                    ));
                }
            }
        }
        self.failed.clone()
    }

    /// One read from the socket; the units it completed.
    pub fn receive(&mut self) -> Receive {
        match self.frames.read_from(&self.stream) {
            Ok(ReadOutcome::Eof) => Receive::Closed("connection closed by peer".to_owned()),
            Ok(ReadOutcome::Read(_)) => {
                let units = self.frames.take_received();
                if units.is_empty() {
                    Receive::Nothing
                } else {
                    Receive::Got(units)
                }
            }
            Ok(ReadOutcome::WouldBlock) => Receive::Nothing,
            Err(e) => Receive::Closed(format!("receive failed: {e}")),
        }
    }

    /// Closes both directions at once; queued bytes are dropped.
    pub fn close(mut self) {
        self.queued.clear();
        self.front_sent = 0;
        self.queued_bytes = 0;
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Conn {
    /// Queued bytes (a refusal, a last ack) still go out, as a socket's
    /// close does with its buffer: what the socket does not take at once is
    /// written by a short-lived thread (blocking, within the send
    /// timeout), then the connection is shut down.
    fn drop(&mut self) {
        self.write_queued();
        if self.queued.is_empty() || self.failed.is_some() {
            let _ = self.stream.shutdown(Shutdown::Both);
            return;
        }
        let Ok(stream) = self.stream.try_clone() else {
            let _ = self.stream.shutdown(Shutdown::Both);
            return;
        };
        let queued: Vec<Payload> = std::mem::take(&mut self.queued).into();
        let skip = self.front_sent;
        let timeout = self.send_timeout;
        let spawned = std::thread::Builder::new()
            .name("drbdd-linger".into())
            .spawn(move || {
                let flushed = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_write_timeout(Some(timeout)))
                    .and_then(|()| write_all_bufs(&stream, &queued, skip));
                if let Err(e) = flushed {
                    tracing::debug!(error = %e, "could not send the last packets of a closed connection");
                }
                let _ = stream.shutdown(Shutdown::Both);
            });
        if spawned.is_err() {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }
}

/// Non-blocking vectored sends of `bufs` (the first `skip` bytes of
/// `bufs[0]` already sent) until the socket is full or all is sent;
/// returns the bytes sent now.
fn send_nonblocking<B: AsRef<[u8]>>(
    stream: &TcpStream,
    bufs: &[B],
    skip: usize,
) -> rustix::io::Result<usize> {
    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    let total: usize = bufs.iter().map(|b| b.as_ref().len()).sum::<usize>() - skip;
    let mut sent = 0;
    while sent < total {
        let (i, off) = consumed_bufs(bufs, skip + sent);
        let mut iov = Vec::with_capacity(bufs.len() - i);
        iov.push(io::IoSlice::new(&bufs[i].as_ref()[off..]));
        iov.extend(bufs[i + 1..].iter().map(|b| io::IoSlice::new(b.as_ref())));
        let mut control = rustix::net::SendAncillaryBuffer::default();
        match rustix::net::sendmsg(stream, &iov, &mut control, flags) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Where `n` bytes into the concatenation of `bufs` fall: the index of the
/// first buffer not completely covered and the bytes of it covered
/// (`(bufs.len(), 0)` when all are).
fn consumed_bufs<B: AsRef<[u8]>>(bufs: &[B], mut n: usize) -> (usize, usize) {
    for (i, b) in bufs.iter().enumerate() {
        let len = b.as_ref().len();
        if n < len {
            return (i, n);
        }
        n -= len;
    }
    (bufs.len(), 0)
}

/// Writes `bufs` in order, skipping the first `skip` bytes of `bufs[0]`,
/// with as few `writev` calls as the socket allows (blocking socket).
fn write_all_bufs(mut stream: &TcpStream, bufs: &[Payload], skip: usize) -> io::Result<()> {
    let mut i = 0;
    let mut off = skip;
    while i < bufs.len() {
        if off >= bufs[i].len() {
            i += 1;
            off = 0;
            continue;
        }
        let mut slices = Vec::with_capacity(bufs.len() - i);
        slices.push(io::IoSlice::new(&bufs[i][off..]));
        slices.extend(bufs[i + 1..].iter().map(|b| io::IoSlice::new(b)));
        let mut n = match stream.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && i < bufs.len() {
            let left = bufs[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drbdd_blockio::AlignedBuf;

    #[test]
    fn preamble_round_trips_and_rejects_garbage() {
        let b = encode_preamble(1, 2);
        assert_eq!(decode_preamble(&b), Some((1, 2)));
        assert_eq!(decode_preamble(b"GET / HT"), None);
    }

    /// Connection settings for the tests: a long send timeout (no test
    /// may fail by the clock).
    fn test_opts(queue_bytes: usize, sndbuf_bytes: u32) -> ConnOpts {
        ConnOpts {
            queue_bytes,
            sndbuf_bytes,
            send_timeout_ms: 60_000,
        }
    }

    fn pair(opts: ConnOpts) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (Conn::start(1, client, opts).unwrap(), server)
    }

    /// Waits until `conn`'s socket is writable (or 10 s passed).
    fn wait_writable(conn: &Conn) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::from_borrowed_fd(conn.fd(), PollFlags::OUT)];
        let t = Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        let _ = poll(&mut fds, Some(&t));
    }

    #[test]
    fn sends_arrive_in_order_whether_written_directly_queued_or_in_pieces() {
        let opts = test_opts(4 << 20, 64 * 1024);
        let (mut conn, mut server) = pair(opts);
        // 32 MiB cannot sit in the socket buffers: while the reader waits,
        // later batches queue up behind a partly sent one, the connection
        // becomes congested, and the sender drives the queue on writability
        // (as the actor's poll loop does).
        let batches = 512u32;
        let batch_bytes = 64 * 1024;
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut got = vec![0u8; batch_bytes];
            for i in 0..batches {
                server.read_exact(&mut got).unwrap();
                let want = i.to_le_bytes();
                assert!(
                    got.chunks(4).all(|c| c == want),
                    "batch {i} arrived out of order"
                );
            }
        });
        let mut was_congested = false;
        for i in 0..batches {
            while conn.congested() {
                was_congested = true;
                wait_writable(&conn);
                conn.write_queued();
            }
            let mut b: Vec<u8> = i.to_le_bytes().repeat(batch_bytes / 4);
            if i % 3 == 1 {
                // A batch in pieces (as a frame head and its data block go).
                // The block may be shared with the application's write.
                let tail = Arc::new(AlignedBuf::from_slice(&b.split_off(100)));
                let pieces = vec![Payload::Bytes(b), Payload::default(), Payload::Shared(tail)];
                assert!(conn.send_bufs(pieces));
            } else {
                assert!(conn.send(b));
            }
        }
        while conn.wants_write() {
            wait_writable(&conn);
            conn.write_queued();
        }
        assert_eq!(conn.failure(), None);
        reader.join().unwrap();
        assert!(was_congested, "the test never filled the queue");
    }

    #[test]
    fn a_dropped_connection_still_delivers_what_it_queued_then_closes() {
        let opts = test_opts(64 << 20, 64 * 1024);
        let (mut conn, mut server) = pair(opts);
        let total = 8 << 20;
        let data: Vec<u8> = (0..251u8).cycle().take(total).collect();
        assert!(conn.send(data.clone()));
        assert!(
            conn.wants_write(),
            "8 MiB should not fit the socket at once"
        );
        drop(conn);
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), total);
        assert!(got == data, "lingering bytes arrived altered");
    }

    #[test]
    fn receive_reports_frames_then_the_close_and_close_drops_the_queue() {
        use drbdd_replication::wire::{FrameCrc, Packet};
        let opts = test_opts(1 << 20, 0);
        let (mut conn, mut server) = pair(opts);
        assert!(matches!(conn.receive(), Receive::Nothing));
        let mut frames = Vec::new();
        Packet::Ping.encode_framed(&mut frames, FrameCrc::SkipDataBlock);
        Packet::PingAck.encode_framed(&mut frames, FrameCrc::SkipDataBlock);
        server.write_all(&frames).unwrap();
        let mut got = Vec::new();
        while got.len() < frames.len() {
            match conn.receive() {
                Receive::Got(units) => {
                    for u in units {
                        match u {
                            Received::Frames(b) => got.extend(b),
                            Received::Block { .. } => panic!("no data blocks were sent"),
                        }
                    }
                }
                Receive::Nothing => std::thread::sleep(Duration::from_millis(5)),
                Receive::Closed(why) => panic!("closed early: {why}"),
            }
        }
        assert_eq!(got, frames);
        drop(server);
        loop {
            match conn.receive() {
                Receive::Closed(why) => {
                    assert!(why.contains("closed by peer"), "{why}");
                    break;
                }
                Receive::Nothing => std::thread::sleep(Duration::from_millis(5)),
                Receive::Got(u) => panic!("unexpected bytes {u:?}"),
            }
        }
        conn.close();
    }

    #[test]
    fn listener_hands_over_a_dialed_connection_and_drops_garbage() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let sink: NetSink = Arc::new(move |m| tx.lock().unwrap().send(m).is_ok());
        let _l = Listener::start(addr, 2, vec![1], Arc::clone(&sink)).unwrap();
        let mut junk = TcpStream::connect(addr).unwrap();
        junk.write_all(b"garbage!").unwrap();
        dial(addr, 1, 2, 1000, sink);
        let mut got_incoming = false;
        for _ in 0..2 {
            match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
                NetMsg::Incoming { node_id, .. } => {
                    assert_eq!(node_id, 1);
                    got_incoming = true;
                }
                NetMsg::Dialed { result, .. } => assert!(result.is_ok()),
            }
        }
        assert!(got_incoming);
    }
}
