//! The TCP transport of peer connections: one listener per resource on the
//! local node's address, outgoing dials, and one reader plus one writer
//! thread per established connection.
//!
//! Owns: sockets and their threads. Byte streams go to the resource actor as
//! [`NetMsg`]s through a [`NetSink`]; the actor hands bytes to send to
//! [`Conn::send`], which writes them at once when nothing is queued and the
//! socket takes them without blocking, queues them for the writer thread
//! otherwise, and blocks when the connection's bounded send queue is full
//! (back-pressure towards the replication core, like a full socket buffer
//! in DRBD). Must never: reorder bytes of one connection, block in `send`
//! on the socket itself (only on a full queue), interpret replication packets (the sans-IO
//! core in `drbdd-replication` does), or decide when to connect (the actor
//! does, with connect-int as the retry interval).
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

use frames::FrameReader;
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
/// Most bytes the writer takes off its queue for one round of `writev`.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// Most queued batches in one `writev` (below the kernel's IOV_MAX of 1024).
const WRITE_BATCH_BUFS: usize = 256;
/// Most received bytes on their way to the actor per connection; the reader
/// stops reading beyond this (TCP flow control then slows the peer).
const RX_PENDING_MAX_BYTES: usize = 16 << 20;

/// Received bytes handed to the actor and not yet consumed.
#[derive(Debug, Default)]
struct RxCredit {
    pending: std::sync::Mutex<RxPending>,
    consumed: std::sync::Condvar,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct RxPending {
    bytes: usize,
    /// The reader waits for credit (a release must wake it).
    reader_waiting: bool,
}

impl RxCredit {
    fn lock(&self) -> std::sync::MutexGuard<'_, RxPending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `n` more bytes fit; false once the connection closed.
    fn reserve(&self, n: usize) -> bool {
        let mut pending = self.lock();
        while pending.bytes > 0 && pending.bytes + n > RX_PENDING_MAX_BYTES {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            pending.reader_waiting = true;
            pending = self
                .consumed
                .wait_timeout(pending, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            pending.reader_waiting = false;
        }
        pending.bytes += n;
        true
    }

    fn release(&self, n: usize) {
        let mut pending = self.lock();
        pending.bytes = pending.bytes.saturating_sub(n);
        // A notify costs a futex call even without a waiter; the reader
        // sets the flag under the lock before it waits.
        if pending.reader_waiting {
            self.consumed.notify_all();
        }
    }
}

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
    /// Bytes read from connection `conn_id` of `node_id`.
    Bytes {
        node_id: u8,
        conn_id: u64,
        bytes: Vec<u8>,
    },
    /// Connection `conn_id` of `node_id` ended (EOF, reset, send error).
    Closed {
        node_id: u8,
        conn_id: u64,
        reason: String,
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
    /// Send-queue length in batches (from max-buffers).
    pub queue_len: usize,
    /// SO_SNDBUF; 0 leaves the kernel's auto-tuning.
    pub sndbuf_bytes: u32,
    /// A send blocked this long fails the connection (timeout × ko-count).
    pub send_timeout_ms: u64,
}

/// An established connection: a bounded send queue drained by a writer
/// thread, and a reader thread feeding the actor.
///
/// Sending: while nothing is queued or being written, [`Conn::send`] writes
/// the batch on the caller's thread without blocking (`MSG_DONTWAIT`); what
/// the socket does not take at once goes to the queue, in order, and the
/// writer thread sends it with blocking writes (and the send timeout). That
/// saves a thread wake-up and a context switch per batch in the common case
/// of a socket buffer with room; the order of bytes is the order of `send`
/// calls either way.
#[derive(Debug)]
pub struct Conn {
    pub conn_id: u64,
    stream: TcpStream,
    tx: Arc<TxQueue>,
    queue_len: usize,
    rx_credit: Arc<RxCredit>,
}

/// The send side shared by [`Conn::send`] and the writer thread.
#[derive(Debug, Default)]
struct TxQueue {
    state: std::sync::Mutex<TxState>,
    /// The writer waits here for bytes (or the end).
    work: std::sync::Condvar,
    /// Senders wait here for room in the queue.
    room: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct TxState {
    /// Batches not yet handed to the socket, oldest first.
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of `bufs[0]` already sent (a direct send the socket took in part).
    front_sent: usize,
    /// The writer is writing batches it took off the queue.
    writer_busy: bool,
    writer_waiting: bool,
    senders_waiting: usize,
    /// The `Conn` was dropped: write what is queued, then shut down.
    closing: bool,
    /// A direct send failed; the writer reports it and ends.
    failed: Option<String>,
    /// The writer ended; sends fail.
    writer_gone: bool,
}

impl TxQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, TxState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Conn {
    /// Starts the reader and writer threads of `stream`.
    pub fn start(
        node_id: u8,
        conn_id: u64,
        stream: TcpStream,
        opts: ConnOpts,
        sink: NetSink,
    ) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        if opts.sndbuf_bytes > 0 {
            let bytes = usize::try_from(opts.sndbuf_bytes).unwrap_or(usize::MAX);
            rustix::net::sockopt::set_socket_send_buffer_size(&stream, bytes)?;
        }
        stream.set_write_timeout(Some(Duration::from_millis(opts.send_timeout_ms.max(1))))?;
        let tx = Arc::new(TxQueue::default());
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let sink_r = Arc::clone(&sink);
        let rx_credit = Arc::new(RxCredit::default());
        let credit = Arc::clone(&rx_credit);
        std::thread::Builder::new()
            .name(format!("drbdd-rx-{node_id}"))
            .spawn(move || read_loop(reader, node_id, conn_id, &sink_r, &credit))?;
        let tx_w = Arc::clone(&tx);
        std::thread::Builder::new()
            .name(format!("drbdd-tx-{node_id}"))
            .spawn(move || write_loop(writer, &tx_w, node_id, conn_id, &sink))?;
        Ok(Conn {
            conn_id,
            stream,
            tx,
            queue_len: opts.queue_len.max(1),
            rx_credit,
        })
    }

    /// Sends `bytes` after everything sent before; blocks while the queue
    /// is full (back-pressure). False when the connection failed.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.send_bufs(vec![bytes])
    }

    /// Sends `bufs` in order, after everything sent before, as one vectored
    /// write when the socket takes them at once (a frame head and its data
    /// block go out together without being copied into one buffer).
    pub fn send_bufs(&self, bufs: Vec<Vec<u8>>) -> bool {
        let mut st = self.tx.lock();
        loop {
            if st.writer_gone || st.failed.is_some() {
                return false;
            }
            if st.bufs.len() < self.queue_len {
                break;
            }
            st.senders_waiting += 1;
            st = self
                .tx
                .room
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.senders_waiting -= 1;
        }
        let mut first = 0;
        if st.bufs.is_empty() && !st.writer_busy {
            // Nothing is ahead of these bytes: hand them to the socket here.
            let sent = match self.send_now(&bufs) {
                Ok(n) => consumed_bufs(&bufs, n),
                Err(e) => {
                    st.failed = Some(format!("send failed: {e}"));
                    self.tx.work.notify_one();
                    return false;
                }
            };
            if sent.0 == bufs.len() {
                return true;
            }
            (first, st.front_sent) = sent;
        }
        st.bufs.extend(bufs.into_iter().skip(first));
        if st.writer_waiting {
            self.tx.work.notify_one();
        }
        true
    }

    /// Non-blocking vectored sends until the socket is full or all is sent;
    /// returns the bytes sent.
    fn send_now(&self, bufs: &[Vec<u8>]) -> rustix::io::Result<usize> {
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        let total: usize = bufs.iter().map(Vec::len).sum();
        let mut sent = 0;
        while sent < total {
            let (i, off) = consumed_bufs(bufs, sent);
            let mut iov = Vec::with_capacity(bufs.len() - i);
            iov.push(io::IoSlice::new(&bufs[i][off..]));
            iov.extend(bufs[i + 1..].iter().map(|b| io::IoSlice::new(b)));
            let mut control = rustix::net::SendAncillaryBuffer::default();
            match rustix::net::sendmsg(&self.stream, &iov, &mut control, flags) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// The actor consumed `n` received bytes (lets the reader go on).
    pub fn consumed(&self, n: usize) {
        self.rx_credit.release(n);
    }

    /// Closes both directions; the threads end and report `Closed`.
    pub fn close(&self) {
        self.rx_credit.closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer closes the socket after flushing its queue; the reader
        // must not wait for credit nobody will return.
        self.tx.lock().closing = true;
        self.tx.work.notify_one();
        self.rx_credit.closed.store(true, Ordering::SeqCst);
        self.rx_credit.consumed.notify_all();
    }
}

fn read_loop(stream: TcpStream, node_id: u8, conn_id: u64, sink: &NetSink, credit: &RxCredit) {
    let mut frames = FrameReader::new(READ_CHUNK_BYTES);
    let reason = loop {
        let buf = frames.buf_for_read();
        match rustix::io::read(&stream, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => break "connection closed by peer".to_owned(),
            Ok(_) => {
                let Some(bytes) = frames.take_frames() else {
                    continue;
                };
                if !credit.reserve(bytes.len()) {
                    return;
                }
                let delivered = sink(NetMsg::Bytes {
                    node_id,
                    conn_id,
                    bytes,
                });
                if !delivered {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => break format!("receive failed: {e}"),
        }
    };
    sink(NetMsg::Closed {
        node_id,
        conn_id,
        reason,
    });
}

fn write_loop(stream: TcpStream, tx: &TxQueue, node_id: u8, conn_id: u64, sink: &NetSink) {
    let mut st = tx.lock();
    let failure = loop {
        if let Some(reason) = st.failed.take() {
            break Some(reason);
        }
        if st.bufs.is_empty() {
            if st.closing {
                // The actor dropped the connection: everything queued is
                // written; close.
                break None;
            }
            st.writer_waiting = true;
            st = tx
                .work
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.writer_waiting = false;
            continue;
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while batch.len() < WRITE_BATCH_BUFS && batch_bytes < WRITE_BATCH_BYTES {
            let Some(b) = st.bufs.pop_front() else { break };
            batch_bytes += b.len();
            batch.push(b);
        }
        let skip = std::mem::take(&mut st.front_sent);
        st.writer_busy = true;
        if st.senders_waiting > 0 {
            tx.room.notify_all();
        }
        drop(st);
        let result = write_all_bufs(&stream, &batch, skip);
        st = tx.lock();
        st.writer_busy = false;
        if let Err(e) = result {
            st.failed = Some(format!("send failed: {e}"));
        }
    };
    st.writer_gone = true;
    st.bufs.clear();
    tx.room.notify_all();
    drop(st);
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(reason) = failure {
        sink(NetMsg::Closed {
            node_id,
            conn_id,
            reason,
        });
    }
}

/// Where `n` bytes into the concatenation of `bufs` fall: the index of the
/// first buffer not completely covered and the bytes of it covered
/// (`(bufs.len(), 0)` when all are).
fn consumed_bufs(bufs: &[Vec<u8>], mut n: usize) -> (usize, usize) {
    for (i, b) in bufs.iter().enumerate() {
        if n < b.len() {
            return (i, n);
        }
        n -= b.len();
    }
    (bufs.len(), 0)
}

/// Writes `bufs` in order, skipping the first `skip` bytes of `bufs[0]`,
/// with as few `writev` calls as the socket allows.
fn write_all_bufs(mut stream: &TcpStream, bufs: &[Vec<u8>], skip: usize) -> io::Result<()> {
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

    #[test]
    fn preamble_round_trips_and_rejects_garbage() {
        let b = encode_preamble(1, 2);
        assert_eq!(decode_preamble(&b), Some((1, 2)));
        assert_eq!(decode_preamble(b"GET / HT"), None);
    }

    #[test]
    fn sends_arrive_in_order_whether_written_directly_queued_or_in_pieces() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let sink: NetSink = Arc::new(|_| true);
        let opts = ConnOpts {
            queue_len: 4,
            sndbuf_bytes: 64 * 1024,
            send_timeout_ms: 10_000,
        };
        let conn = Conn::start(1, 1, client, opts, sink).unwrap();
        // 32 MiB cannot sit in the socket buffers: while the reader waits,
        // later batches queue up behind a partly sent one and the sender
        // blocks on the full queue.
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
        for i in 0..batches {
            let mut b: Vec<u8> = i.to_le_bytes().repeat(batch_bytes / 4);
            if i % 3 == 1 {
                // A batch in pieces (as a frame head and its data block go).
                let tail = b.split_off(100);
                assert!(conn.send_bufs(vec![b, Vec::new(), tail]));
            } else {
                assert!(conn.send(b));
            }
        }
        reader.join().unwrap();
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
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(got_incoming);
    }
}
