//! The TCP transport of peer connections: one listener per resource on the
//! local node's address, outgoing dials, and one reader plus one writer
//! thread per established connection.
//!
//! Owns: sockets and their threads. Byte streams go to the resource actor as
//! [`NetMsg`]s through a [`NetSink`]; the actor hands bytes to send to
//! [`Conn::send`], which blocks when the connection's bounded send queue is
//! full (back-pressure towards the replication core, like a full socket
//! buffer in DRBD). Must never: interpret replication packets (the sans-IO
//! core in `drbdd-replication` does), or decide when to connect (the actor
//! does, with connect-int as the retry interval).
//!
//! Who dials: for each pair of nodes the one with the lower node id dials,
//! the other one listens. That avoids two crossing connections for one peer.
//! A dialer first sends an 8-byte preamble (magic, version, from and to node
//! id) so a listener serving several peers on one address knows which peer
//! is calling; anything else is closed without reaching the actor.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
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
/// Largest read from a socket at once.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Most bytes the writer coalesces into one `write_all`.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// Most received bytes on their way to the actor per connection; the reader
/// stops reading beyond this (TCP flow control then slows the peer).
const RX_PENDING_MAX_BYTES: usize = 16 << 20;

/// Received bytes handed to the actor and not yet consumed.
#[derive(Debug, Default)]
struct RxCredit {
    pending: std::sync::Mutex<usize>,
    consumed: std::sync::Condvar,
    closed: AtomicBool,
}

impl RxCredit {
    /// Waits until `n` more bytes fit; false once the connection closed.
    fn reserve(&self, n: usize) -> bool {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *pending > 0 && *pending + n > RX_PENDING_MAX_BYTES {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            pending = self
                .consumed
                .wait_timeout(pending, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *pending += n;
        true
    }

    fn release(&self, n: usize) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *pending = pending.saturating_sub(n);
        self.consumed.notify_all();
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

/// An established connection: a writer thread fed by a bounded queue and a
/// reader thread feeding the actor.
#[derive(Debug)]
pub struct Conn {
    pub conn_id: u64,
    stream: TcpStream,
    tx: SyncSender<Vec<u8>>,
    rx_credit: Arc<RxCredit>,
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
        let (tx, rx) = sync_channel::<Vec<u8>>(opts.queue_len.max(1));
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let sink_r = Arc::clone(&sink);
        let rx_credit = Arc::new(RxCredit::default());
        let credit = Arc::clone(&rx_credit);
        std::thread::Builder::new()
            .name(format!("drbdd-rx-{node_id}"))
            .spawn(move || read_loop(reader, node_id, conn_id, &sink_r, &credit))?;
        std::thread::Builder::new()
            .name(format!("drbdd-tx-{node_id}"))
            .spawn(move || write_loop(writer, &rx, node_id, conn_id, &sink))?;
        Ok(Conn {
            conn_id,
            stream,
            tx,
            rx_credit,
        })
    }

    /// Queues bytes to send; blocks while the queue is full. False when the
    /// writer is gone (the connection failed).
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.tx.send(bytes).is_ok()
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
        self.rx_credit.closed.store(true, Ordering::SeqCst);
        self.rx_credit.consumed.notify_all();
    }
}

fn read_loop(mut stream: TcpStream, node_id: u8, conn_id: u64, sink: &NetSink, credit: &RxCredit) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let reason = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "connection closed by peer".to_owned(),
            Ok(n) => {
                if !credit.reserve(n) {
                    return;
                }
                let delivered = sink(NetMsg::Bytes {
                    node_id,
                    conn_id,
                    bytes: buf[..n].to_vec(),
                });
                if !delivered {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break format!("receive failed: {e}"),
        }
    };
    sink(NetMsg::Closed {
        node_id,
        conn_id,
        reason,
    });
}

fn write_loop(
    mut stream: TcpStream,
    rx: &Receiver<Vec<u8>>,
    node_id: u8,
    conn_id: u64,
    sink: &NetSink,
) {
    while let Ok(mut batch) = rx.recv() {
        while batch.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if let Err(e) = stream.write_all(&batch) {
            let _ = stream.shutdown(Shutdown::Both);
            sink(NetMsg::Closed {
                node_id,
                conn_id,
                reason: format!("send failed: {e}"),
            });
            return;
        }
    }
    // The actor dropped the connection: everything queued is written; close.
    let _ = stream.shutdown(Shutdown::Both);
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
