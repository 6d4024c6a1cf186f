//! The peer connections of one resource, inside its actor thread (a child
//! module of `actor`, so it works on the actor's state directly).
//!
//! Owns: one `drbdd_replication::peer::Peer` state machine per configured
//! peer, its TCP connection ([`crate::net`]), the disk I/O the machines ask
//! for (peer writes, flushes, resync reads and writes on a second O_DIRECT
//! handle of the backing device), the pipeline's [`Replicator`] that gives
//! every application write a leg per peer, and the 100 ms tick. Executes every
//! `drbdd_replication::peer::Action` a machine returns, in order (see
//! `peers_exec.rs`). Must never: make a protocol decision (the machines do),
//! or block the actor on anything but a full per-connection send queue
//! (bounded back-pressure).
//!
//! Data path: each application write reaches every machine as
//! `Event::LocalWrite` and, once the pipeline's local leg finished
//! ([`Replicator::local_done`]), as `Event::LocalWriteDone`; an application
//! FLUSH becomes `Event::LocalFlush` on every machine and completes upward
//! when all of them confirmed ([`Replicator::flush`]). While a peer is away
//! its machine marks written ranges out of sync itself, so the pipeline's
//! own "disconnected slots" list stays empty once the replicator is plugged.
//!
//! Daemon-level rules: a Primary that loses a peer starts a new data
//! generation (the core's resource machine has no command for it yet) and
//! announces it to its other peers (`Event::GenerationsChanged`; a
//! connected Secondary follows it and announces its own new tuple the same
//! way); a second connection claiming a peer that is Connected is refused.

use super::mailbox::{ActorTx, Mailbox};
use super::{Actor, ActorMsg};
use crate::backing::{Backing, EngineKind};
use crate::control::proto::{PeerStatus as PeerStatusView, ResyncProgress};
use crate::metadev::FileMetaDevice;
use crate::net::{self, Conn, ConnOpts, Listener, NetMsg, NetSink, Receive};
use crate::pipeline::{
    LegHandle, LegOutcome, PeerFlushDone, Pipeline, ReplicatedWrite, Replicator, WriteData,
};
use drbdd_blockio::BlockOp;
use drbdd_config::{Protocol as CfgProtocol, Resource};
use drbdd_metadata::MetaStore;
use drbdd_replication::ack::{Protocol, WriteId};
use drbdd_replication::generation::SbPolicy;
use drbdd_replication::handshake::HandshakeConfig;
use drbdd_replication::peer::{Event, LocalState, Peer, PeerConfig};
use drbdd_replication::resync::{Progress, RateConfig, SyncBitmap, BLOCK_BYTES};
use drbdd_replication::state::{ConnState, DiskState, ReplState, Role};
use drbdd_replication::wire::{
    Payload, Received, DATA_DISCARD, DATA_FUA, DATA_ZEROES, FEATURE_DATA_INTEGRITY, NONCE_BYTES,
};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "peers_exec.rs"]
mod exec;

/// How often the machines get `Event::Tick`.
const TICK_MS: u64 = 100;
/// Bytes of one `max-buffers` unit (DRBD counts 4 KiB pages).
const MAX_BUFFER_BYTES: usize = 4096;
/// Queued send bytes per connection at least and at most, whatever
/// max-buffers says.
const SEND_QUEUE_MIN_BYTES: usize = 1 << 20;
const SEND_QUEUE_MAX_BYTES: usize = 64 << 20;
/// Backing I/O in flight at most for peer and resync I/O.
const PEER_IO_QUEUE_DEPTH: u32 = 128;
/// Largest write or resync request.
const MAX_IO_BYTES: u32 = 1 << 20;
/// Resync requests in flight per peer and their size.
const MAX_RESYNC_REQUESTS: usize = 16;
const MAX_RESYNC_REQUEST_BYTES: u32 = 128 * 1024;
/// A link's buffered packets go to its connection once they reach this
/// size, even in the middle of an actor batch.
const WIRE_FLUSH_BYTES: usize = 512 * 1024;
/// Data blocks from this size on are not copied into a link's buffer but
/// handed to the connection as their own buffer (see `Conn::send_bufs`).
const WIRE_SPLIT_BYTES: usize = 32 * 1024;

/// Messages for the peers part of the actor.
#[derive(Debug)]
pub enum PeerMsg {
    /// A dialed or accepted socket.
    Net(NetMsg),
    /// An application write offered by the pipeline, with one leg per peer.
    Write(LocalWrite),
    /// Local disk legs finished while the replicator asks for prompt
    /// handling (see [`NetReplicator::local_done`]); the ids are in its queue.
    LocalDone,
    /// An application flush; call `done` when every peer has it.
    Flush { id: WriteId, done: FlushDone },
    /// A disk I/O this module submitted finished.
    Io { node_id: u8, done: IoDone },
}

/// An application write to replicate.
#[derive(Debug)]
pub struct LocalWrite {
    id: WriteId,
    offset_bytes: u64,
    len_bytes: u32,
    flags: u32,
    data: Payload,
    legs: Vec<(u8, LegHandle)>,
}

/// The completion of a replicated flush; runs when dropped at the latest
/// (a resource going down must not leave an upward FLUSH hanging).
pub struct FlushDone(Option<PeerFlushDone>);

impl FlushDone {
    fn complete(mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for FlushDone {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for FlushDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushDone")
    }
}

/// Completions of peer-requested disk I/O.
#[derive(Debug)]
pub enum IoDone {
    PeerWrite { seq: u64, ok: bool },
    PeerFlush { epoch: u32 },
    ResyncRead { id: u64, data: Option<Vec<u8>> },
    ResyncWrite { id: u64 },
}

/// Byte counters of one peer since the resource came up.
#[derive(Debug, Clone, Copy, Default)]
struct LinkStats {
    sent_bytes: u64,
    received_bytes: u64,
    resync_sent_bytes: u64,
    resync_received_bytes: u64,
}

#[derive(Debug)]
struct Link {
    node_id: u8,
    /// The connection settings it was built with.
    net: drbdd_config::Net,
    slot: usize,
    addr: SocketAddr,
    opts: ConnOpts,
    connect_int_ms: u64,
    timeout_ms: u64,
    /// We dial this peer (lower node id dials).
    dials: bool,
    dialing: bool,
    next_dial_ms: u64,
    peer: Peer,
    conn: Option<Conn>,
    /// Packets for `conn` encoded during the current actor batch; emptied
    /// whenever `conn` changes, so nothing reaches a later connection.
    wire: Vec<u8>,
    progress: Option<Progress>,
    stats: LinkStats,
}

/// All peer state of a resource.
pub(super) struct Peers {
    links: Vec<Link>,
    local_node_id: u8,
    epoch: Instant,
    _listener: Option<Listener>,
    disk: Option<Backing>,
    tx: ActorTx,
    sink: NetSink,
    /// When the machines get their next `Event::Tick`.
    next_tick: Instant,
    next_conn_id: u64,
    legs: HashMap<(u8, WriteId), LegHandle>,
    /// Writes the machines have and whose local leg has not finished.
    awaiting_local: HashSet<WriteId>,
    /// Local legs that finished before their write reached the actor (the
    /// completion queue and the channel are separate paths).
    early_local_done: HashSet<WriteId>,
    /// Replicated flushes: peers still to confirm, completion.
    flushes: HashMap<WriteId, (usize, FlushDone)>,
    replicator: Arc<NetReplicator>,
    /// The pipeline the replicator is plugged into.
    plugged: Option<std::sync::Weak<Pipeline>>,
    bitmap_dirty: bool,
    /// The local disk state the machines were last told about.
    announced_disk: DiskState,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("links", &self.links)
            .field("legs_in_flight", &self.legs.len())
            .finish()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for l in &mut self.links {
            if let Some(c) = l.conn.take() {
                c.close();
            }
        }
        if let Some(d) = &self.disk {
            d.shutdown();
        }
        // Writes still waiting for a peer succeed locally; their ranges are
        // out of sync for that peer (as when the connection is lost).
        for ((node_id, _), leg) in self.legs.drain() {
            match self.links.iter().find(|l| l.node_id == node_id) {
                Some(l) => leg.complete(LegOutcome::PeerLost { slot: l.slot }),
                None => leg.complete(LegOutcome::Done),
            }
        }
    }
}

/// Gives each application write one leg per configured peer.
#[derive(Debug)]
pub(super) struct NetReplicator {
    tx: ActorTx,
    next_id: AtomicU64,
    node_ids: Vec<u8>,
    /// Writes whose local leg finished, for the machines' `LocalWriteDone`.
    /// The actor takes them before every peer message it handles, so a
    /// write reaches the machines only after every local completion that
    /// happened before it was submitted (epochs depend on that); a channel
    /// message per completion would cost a wake-up of the actor each.
    local_done: Mutex<Vec<WriteId>>,
    /// Set by the actor while a machine needs local completions at once
    /// (see `update_local_done_eager`): each one then also wakes the actor.
    local_done_eager: AtomicBool,
}

impl Replicator for NetReplicator {
    fn replicate(&self, w: &mut ReplicatedWrite<'_>) {
        let (flags, data) = match w.req.op {
            // A shared tag buffer goes to the peers as it is (no copy).
            BlockOp::Write => (
                if w.req.fua { DATA_FUA } else { 0 },
                match w.data {
                    WriteData::Lent(b) => Payload::Bytes(b.to_vec()),
                    WriteData::Shared(b) => Payload::Shared(Arc::clone(b)),
                },
            ),
            BlockOp::Discard => (DATA_DISCARD, Payload::default()),
            BlockOp::WriteZeroes => (DATA_ZEROES, Payload::default()),
            BlockOp::Read | BlockOp::Flush => return,
        };
        let legs = self
            .node_ids
            .iter()
            .map(|n| (*n, w.add_peer_leg(*n)))
            .collect();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        w.local_done_token = Some(id);
        let msg = LocalWrite {
            id,
            offset_bytes: w.req.offset_bytes,
            len_bytes: w.req.len_bytes,
            flags,
            data,
            legs,
        };
        // If the actor is gone the legs drop and the write fails upward.
        let _ = self.tx.send(ActorMsg::Peers(PeerMsg::Write(msg)));
    }

    fn local_done(&self, token: u64, _ok: bool) {
        // A failed local write is the pipeline's business (detach/EIO); for
        // the peers the local leg is over either way.
        self.local_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(token);
        // SeqCst pairs with the actor's store-then-take: either this sees
        // the flag, or the actor's take after storing it sees the id.
        if self.local_done_eager.load(Ordering::SeqCst) {
            let _ = self.tx.send(ActorMsg::Peers(PeerMsg::LocalDone));
        }
    }

    fn flush(&self, done: PeerFlushDone) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.send(ActorMsg::Peers(PeerMsg::Flush {
            id,
            done: FlushDone(Some(done)),
        })) {
            // The actor is gone: no peer to wait for.
            drop(e);
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    assert!(ok.is_ok(), "cannot read /dev/urandom for connection nonces");
    b
}

/// The automatic split-brain policies of a connection. `discard-node-<host>`
/// has no counterpart in the core yet and falls back to `disconnect`.
fn sb_policy(net: &drbdd_config::Net) -> SbPolicy {
    use drbdd_config::{AfterSb0Pri as C0, AfterSb1Pri as C1, AfterSb2Pri as C2};
    use drbdd_replication::generation::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri};
    SbPolicy {
        after_sb_0pri: match &net.after_sb_0pri {
            C0::Disconnect => AfterSb0Pri::Disconnect,
            C0::DiscardYoungerPrimary => AfterSb0Pri::DiscardYoungerPrimary,
            C0::DiscardOlderPrimary => AfterSb0Pri::DiscardOlderPrimary,
            C0::DiscardZeroChanges => AfterSb0Pri::DiscardZeroChanges,
            C0::DiscardLeastChanges => AfterSb0Pri::DiscardLeastChanges,
            C0::DiscardNode(host) => {
                tracing::warn!(
                    "after-sb-0pri discard-node-{host} is not supported yet; using disconnect"
                );
                AfterSb0Pri::Disconnect
            }
        },
        after_sb_1pri: match net.after_sb_1pri {
            C1::Disconnect => AfterSb1Pri::Disconnect,
            C1::Consensus => AfterSb1Pri::Consensus,
            C1::ViolentlyAs0p => AfterSb1Pri::ViolentlyAs0p,
            C1::DiscardSecondary => AfterSb1Pri::DiscardSecondary,
            C1::CallPriLostAfterSb => AfterSb1Pri::CallPriLostAfterSb,
        },
        after_sb_2pri: match net.after_sb_2pri {
            C2::Disconnect => AfterSb2Pri::Disconnect,
            C2::ViolentlyAs0p => AfterSb2Pri::ViolentlyAs0p,
            C2::CallPriLostAfterSb => AfterSb2Pri::CallPriLostAfterSb,
        },
    }
}

fn peer_config(res: &Resource, local: &str, peer: &drbdd_config::Node, local_id: u8) -> PeerConfig {
    let net = res.net_for(local, &peer.name);
    PeerConfig {
        handshake: HandshakeConfig {
            resource: res.name.clone(),
            local_node_id: local_id,
            peer_node_id: peer.node_id,
            shared_secret: net.shared_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            // data-integrity-alg (only crc32c passes config validation).
            features: if net.data_integrity_alg.is_some() {
                FEATURE_DATA_INTEGRITY
            } else {
                0
            },
        },
        protocol: match net.protocol {
            CfgProtocol::A => Protocol::A,
            CfgProtocol::B => Protocol::B,
            CfgProtocol::C => Protocol::C,
        },
        max_buffers: usize::try_from(net.max_buffers)
            .unwrap_or(usize::MAX)
            .max(1),
        ping_int_ms: u64::from(net.ping_int_ms),
        ping_timeout_ms: u64::from(net.ping_timeout_ms),
        connect_timeout_ms: u64::from(net.timeout_ms).max(1000) * 2,
        sb_policy: sb_policy(&net),
        rate: RateConfig {
            resync_rate_kib: res.disk.resync_rate_kib,
            c_plan_ahead_ms: res.disk.c_plan_ahead_ms,
            c_fill_target_bytes: res.disk.c_fill_target_sectors * 512,
            c_max_rate_kib: res.disk.c_max_rate_kib,
            c_min_rate_kib: res.disk.c_min_rate_kib,
        },
        max_resync_requests: MAX_RESYNC_REQUESTS,
        max_resync_request_bytes: MAX_RESYNC_REQUEST_BYTES,
    }
}

impl Actor {
    /// Creates the peer machines, the listener and the tick thread. Needs
    /// the metadata (attached disk); without it the resource has no peers.
    pub(super) fn start_peers(&mut self, tx: ActorTx) -> Result<(), String> {
        let Some(size_bytes) = self.with_store(|s| s.superblock().data_size_bytes) else {
            return Err("replication needs an attached disk".into());
        };
        let local = self.local_node().clone();
        let mut links = Vec::new();
        for p in self.core.peers.clone() {
            let node = self
                .res
                .node_by_id(p.node_id)
                .cloned()
                .ok_or_else(|| format!("peer node {} vanished from the config", p.node_id))?;
            let cfg = peer_config(&self.res, &local.name, &node, local.node_id);
            let net = self.res.net_for(&local.name, &node.name);
            let bitmap = self
                .with_store(|store| load_bitmap(store, p.slot, size_bytes))
                .unwrap_or_else(|| SyncBitmap::for_size(size_bytes));
            let state = local_state(&self.core, p.slot, size_bytes);
            links.push(Link {
                net: net.clone(),
                node_id: p.node_id,
                slot: p.slot,
                addr: node.address,
                opts: ConnOpts {
                    queue_bytes: usize::try_from(net.max_buffers)
                        .unwrap_or(usize::MAX)
                        .saturating_mul(MAX_BUFFER_BYTES)
                        .clamp(SEND_QUEUE_MIN_BYTES, SEND_QUEUE_MAX_BYTES),
                    sndbuf_bytes: net.sndbuf_size_bytes,
                    send_timeout_ms: u64::from(net.timeout_ms) * u64::from(net.ko_count.max(1)),
                },
                connect_int_ms: u64::from(net.connect_int_ms),
                timeout_ms: u64::from(net.timeout_ms),
                dials: local.node_id < p.node_id,
                dialing: false,
                next_dial_ms: 0,
                peer: Peer::new(cfg, state, bitmap),
                conn: None,
                wire: Vec::new(),
                progress: None,
                stats: LinkStats::default(),
            });
        }
        let tx_sink = tx.clone();
        let sink: NetSink =
            Arc::new(move |m| tx_sink.send(ActorMsg::Peers(PeerMsg::Net(m))).is_ok());
        let allowed: Vec<u8> = links
            .iter()
            .filter(|l| !l.dials)
            .map(|l| l.node_id)
            .collect();
        let listener = Listener::start(local.address, local.node_id, allowed, Arc::clone(&sink))
            .map_err(|e| e.to_string())?;
        let disk = match &local.disk {
            Some(path) => Some(
                Backing::open(path, peer_io_engine(), PEER_IO_QUEUE_DEPTH)
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let node_ids = links.iter().map(|l| l.node_id).collect();
        self.peers = Some(Peers {
            links,
            local_node_id: local.node_id,
            epoch: Instant::now(),
            _listener: Some(listener),
            disk,
            replicator: Arc::new(NetReplicator {
                tx: tx.clone(),
                next_id: AtomicU64::new(1),
                node_ids,
                local_done: Mutex::new(Vec::new()),
                local_done_eager: AtomicBool::new(false),
            }),
            awaiting_local: HashSet::new(),
            early_local_done: HashSet::new(),
            tx,
            sink,
            next_tick: Instant::now() + Duration::from_millis(TICK_MS),
            next_conn_id: 1,
            legs: HashMap::new(),
            flushes: HashMap::new(),
            plugged: None,
            bitmap_dirty: false,
            announced_disk: self.core.disk,
        });
        self.plug_replicator();
        Ok(())
    }

    /// Runs `f` on the metadata store (None when no disk is attached). The
    /// one place that knows how the actor holds the store.
    fn with_store<R>(&mut self, f: impl FnOnce(&mut MetaStore<FileMetaDevice>) -> R) -> Option<R> {
        self.store
            .as_ref()
            .map(|s| f(&mut super::datapath::lock_meta(s)))
    }

    fn data_size_bytes(&mut self) -> u64 {
        self.with_store(|s| s.superblock().data_size_bytes)
            .unwrap_or(0)
    }

    fn now_ms(&self) -> u64 {
        self.peers.as_ref().map_or(0, |p| {
            u64::try_from(p.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// Handles one [`PeerMsg`].
    pub(super) fn on_peer_msg(&mut self, msg: PeerMsg) {
        self.peer_step(|a| a.dispatch_peer_msg(msg));
    }

    /// Runs `step` (a message, received frames, the tick) between the
    /// bookkeeping every peer event needs: the replicator plugged into the
    /// current pipeline, disk-state changes announced, local completions
    /// fed first (a write or ack reaches the machines after every local
    /// completion that happened before it), and the eager flag updated.
    fn peer_step(&mut self, step: impl FnOnce(&mut Self)) {
        if self.peers.is_none() {
            return;
        }
        // Cheap when nothing changed; catches a pipeline (re)started by
        // attach and disk-state changes outside the peers (attach, detach,
        // I/O error).
        self.plug_replicator();
        self.announce_disk_change();
        self.take_local_done();
        step(self);
        self.update_local_done_eager();
    }

    fn dispatch_peer_msg(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Net(m) => self.on_net(m),
            PeerMsg::Write(w) => self.on_local_write(w),
            PeerMsg::Flush { id, done } => self.on_local_flush(id, done),
            PeerMsg::LocalDone => {}
            PeerMsg::Io { node_id, done } => {
                let Some(i) = self.link_index(node_id) else {
                    return;
                };
                let event = match done {
                    IoDone::PeerWrite { seq, ok } => {
                        if !ok {
                            self.peer_write_failed();
                        }
                        Event::PeerWriteDone { seq, ok }
                    }
                    IoDone::PeerFlush { epoch } => Event::PeerFlushDone { epoch },
                    IoDone::ResyncRead { id, data } => Event::ResyncReadDone { id, data },
                    IoDone::ResyncWrite { id } => Event::ResyncWriteDone { id },
                };
                self.feed(i, event);
            }
        }
    }

    /// Local completions must wake the actor while a machine waits for
    /// them: writes wait for room in a write table (entries retire only
    /// once their local leg is done; without a wake-up the application
    /// could stall until the next tick), a resync runs (the source defers
    /// requests overlapping unfinished local writes), or the peer is not
    /// established (rare; keeps the rule simple).
    fn update_local_done_eager(&mut self) {
        let Some(p) = self.peers.as_ref() else { return };
        let eager = p
            .links
            .iter()
            .any(|l| l.peer.writes_waiting() > 0 || l.peer.status().repl != ReplState::Established);
        let was = p.replicator.local_done_eager.swap(eager, Ordering::SeqCst);
        if eager && !was {
            // Completions queued before the flag was set woke nobody.
            self.take_local_done();
        }
    }

    /// Feeds the local completions queued by the replicator to the machines.
    fn take_local_done(&mut self) {
        let Some(p) = self.peers.as_mut() else { return };
        let ids = std::mem::take(
            &mut *p
                .replicator
                .local_done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for id in ids {
            let Some(p) = self.peers.as_mut() else { return };
            if p.awaiting_local.remove(&id) {
                self.local_write_done(id);
            } else {
                p.early_local_done.insert(id);
            }
        }
    }

    fn local_write_done(&mut self, id: WriteId) {
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        for i in 0..n {
            self.feed(i, Event::LocalWriteDone { id });
        }
    }

    fn link_index(&self, node_id: u8) -> Option<usize> {
        self.peers
            .as_ref()?
            .links
            .iter()
            .position(|l| l.node_id == node_id)
    }

    fn peers_tick(&mut self) {
        self.plug_replicator();
        let now = self.now_ms();
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        for i in 0..n {
            self.maybe_dial(i, now);
            self.feed(i, Event::Tick { now_ms: now });
            if let Some(p) = self.peers.as_mut() {
                let l = &mut p.links[i];
                l.progress = if matches!(
                    l.peer.status().repl,
                    ReplState::SyncSource
                        | ReplState::SyncTarget
                        | ReplState::PausedSyncS
                        | ReplState::PausedSyncT
                ) {
                    l.peer.progress()
                } else {
                    None
                };
            }
        }
        self.flush_bitmap_if_dirty();
    }

    fn flush_bitmap_if_dirty(&mut self) {
        let Some(p) = self.peers.as_mut() else { return };
        if !p.bitmap_dirty {
            return;
        }
        p.bitmap_dirty = false;
        if let Some(Err(e)) = self.with_store(|s| s.bitmap_flush()) {
            tracing::error!(resource = %self.core.name, error = %e, "bitmap write failed");
        }
    }

    /// Plugs the replicator into the pipeline once one exists.
    fn plug_replicator(&mut self) {
        let (Some(p), Some(pipe)) = (self.peers.as_mut(), self.pipeline.as_ref()) else {
            return;
        };
        let same = p
            .plugged
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            .is_some_and(|old| Arc::ptr_eq(&old, pipe));
        if !same {
            let r: Arc<dyn Replicator> = p.replicator.clone();
            pipe.set_replicator(Some(r));
            // Every write reaches each peer's machine, which marks the
            // range out of sync itself while the peer is away.
            pipe.set_peer_slots_disconnected(Vec::new());
            p.plugged = Some(Arc::downgrade(pipe));
        }
    }

    fn maybe_dial(&mut self, i: usize, now: u64) {
        let Some(p) = self.peers.as_mut() else { return };
        let local = p.local_node_id;
        let sink = Arc::clone(&p.sink);
        let l = &mut p.links[i];
        let wants = l.dials
            && !l.dialing
            && l.conn.is_none()
            && now >= l.next_dial_ms
            && l.peer.status().conn == ConnState::Connecting;
        if wants {
            l.dialing = true;
            net::dial(l.addr, local, l.node_id, l.timeout_ms.max(1000), sink);
        }
    }

    fn on_net(&mut self, m: NetMsg) {
        let now = self.now_ms();
        match m {
            NetMsg::Incoming { node_id, stream } => {
                let Some(i) = self.link_index(node_id) else {
                    return;
                };
                if self.link(i).peer.status().conn == ConnState::Connected {
                    // An established connection answers pings; a peer that
                    // really restarted closed it (or the ping timeout will).
                    // Replacing it would let anyone who can send a preamble
                    // cut the link.
                    tracing::warn!(resource = %self.core.name, peer = node_id, "refused a second connection claiming to be node {node_id} while connected");
                    return;
                }
                if self.link(i).conn.is_some() {
                    // The peer dialed again during a handshake: the old
                    // attempt is dead to it.
                    self.drop_conn(i);
                    self.feed(i, Event::ConnectionLost { now_ms: now });
                }
                self.establish(i, stream);
            }
            NetMsg::Dialed { node_id, result } => {
                let Some(i) = self.link_index(node_id) else {
                    return;
                };
                let l = self.link_mut(i);
                l.dialing = false;
                match result {
                    Ok(stream) if l.conn.is_none() => self.establish(i, stream),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer = node_id, "{e}");
                        l.next_dial_ms = now + l.connect_int_ms;
                    }
                }
            }
        }
    }

    /// A connection ended (EOF, error, send failure or timeout).
    fn connection_lost(&mut self, i: usize, reason: &str) {
        let now = self.now_ms();
        tracing::info!(resource = %self.core.name, peer = self.link(i).node_id, "connection lost: {reason}");
        self.drop_conn(i);
        let l = self.link_mut(i);
        l.next_dial_ms = now + l.connect_int_ms;
        self.peer_step(|a| a.feed(i, Event::ConnectionLost { now_ms: now }));
    }

    /// A connection cannot take more bytes now: the actor takes no new
    /// messages until it can (see [`Conn::congested`]).
    pub(super) fn peers_congested(&self) -> bool {
        self.peers.as_ref().is_some_and(|p| {
            p.links
                .iter()
                .any(|l| l.conn.as_ref().is_some_and(Conn::congested))
        })
    }

    /// Sleeps in `poll` for at most `wait` (capped at the next tick) on
    /// the peer sockets, the peer disk's completion ring and, when given,
    /// the doorbell of `mailbox` (which the caller parked; it is unparked
    /// here as soon as `poll` returns). Then serves what is ready: disk
    /// completions are reaped (their results queue in the mailbox), reads
    /// feed the machines, queued sends go out, ended connections are
    /// reported. Runs the tick when it is due.
    pub(super) fn poll_peers(&mut self, mailbox: Option<&Mailbox>, wait: Duration) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use smallvec::SmallVec;
        let now = Instant::now();
        let wait = match self.peers.as_ref() {
            Some(p) => wait.min(p.next_tick.saturating_duration_since(now)),
            None => wait,
        };
        // The caller's `flush_wire` submitted what the last batch pushed.
        debug_assert!(
            !self
                .peers
                .as_ref()
                .and_then(|p| p.disk.as_ref())
                .is_some_and(Backing::has_unsubmitted),
            "disk ops pushed but not submitted before poll"
        );
        // On the stack for the usual few peers: this runs every loop.
        let mut ready: SmallVec<[(usize, PollFlags); 4]> = SmallVec::new();
        let mut disk_ready = false;
        {
            let mut fds: SmallVec<[PollFd<'_>; 6]> = SmallVec::new();
            let mut links: SmallVec<[usize; 4]> = SmallVec::new();
            if let Some(mb) = mailbox {
                fds.push(PollFd::from_borrowed_fd(mb.doorbell_fd(), PollFlags::IN));
            }
            let disk_fd = self
                .peers
                .as_ref()
                .and_then(|p| p.disk.as_ref())
                .and_then(Backing::completion_fd);
            let disk_at = disk_fd.map(|fd| {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                fds.len() - 1
            });
            let first_link = fds.len();
            if let Some(p) = self.peers.as_ref() {
                for (i, l) in p.links.iter().enumerate() {
                    if let Some(c) = &l.conn {
                        let mut flags = PollFlags::IN;
                        if c.wants_write() {
                            flags |= PollFlags::OUT;
                        }
                        fds.push(PollFd::from_borrowed_fd(c.fd(), flags));
                        links.push(i);
                    }
                }
            }
            let timeout = Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            let polled = poll(&mut fds, Some(&timeout));
            if let Some(mb) = mailbox {
                // Before anything below sends to the mailbox: a parked
                // mailbox would ring its doorbell for nothing.
                let rang = matches!(polled, Ok(n) if n > 0) && !fds[0].revents().is_empty();
                mb.unpark(rang);
            }
            match polled {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) => {
                    disk_ready = disk_at.is_some_and(|k| !fds[k].revents().is_empty());
                    for (k, fd) in fds[first_link..].iter().enumerate() {
                        let rev = fd.revents();
                        if !rev.is_empty() {
                            ready.push((links[k], rev));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(resource = %self.core.name, error = %e, "poll failed");
                    std::thread::sleep(wait);
                }
            }
        }
        if disk_ready {
            // Completion callbacks queue their results in the mailbox.
            if let Some(d) = self.peers.as_ref().and_then(|p| p.disk.as_ref()) {
                d.reap();
            }
        }
        for (i, rev) in ready {
            self.serve_conn(i, rev);
        }
        self.tick_if_due();
    }

    /// One round of I/O on link `i`'s connection after `poll` said `rev`.
    fn serve_conn(&mut self, i: usize, rev: rustix::event::PollFlags) {
        use rustix::event::PollFlags;
        if rev.contains(PollFlags::OUT) {
            if let Some(c) = self.link_mut(i).conn.as_mut() {
                c.write_queued();
            }
        }
        if rev.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            let now = self.now_ms();
            let l = self.link_mut(i);
            let Some(c) = l.conn.as_mut() else { return };
            match c.receive() {
                Receive::Got(units) => self.peer_step(|a| {
                    for unit in units {
                        a.feed_received(i, now, unit);
                    }
                }),
                Receive::Nothing => {}
                Receive::Closed(reason) => return self.connection_lost(i, &reason),
            }
        }
        if let Some(reason) = self.link_mut(i).conn.as_mut().and_then(Conn::failure) {
            self.connection_lost(i, &reason);
        }
    }

    /// The 100 ms tick, when due; also catches sends that timed out.
    fn tick_if_due(&mut self) {
        let Some(p) = self.peers.as_mut() else { return };
        let now = Instant::now();
        if now < p.next_tick {
            return;
        }
        p.next_tick = (p.next_tick + Duration::from_millis(TICK_MS)).max(now);
        let n = p.links.len();
        for i in 0..n {
            if let Some(reason) = self.link_mut(i).conn.as_mut().and_then(Conn::failure) {
                self.connection_lost(i, &reason);
            }
        }
        self.peer_step(Self::peers_tick);
    }

    /// Bytes received on connection `conn_id` of peer `i` (stale ones of an
    /// earlier connection are dropped): counted, credited back to the
    /// reader, and fed to the peer machine — a frame received as head +
    /// block with its block buffer handed on as it is.
    /// (`Vec<u8>` or `Received`: the same code serves `NetMsg::Bytes`
    /// before and after its reader delivers blocks apart.)
    /// Feeds what one read of link `i`'s connection completed to its
    /// machine: runs of whole frames, or a frame whose data block was read
    /// straight into an aligned buffer (no copy before the peer write).
    fn feed_received(&mut self, i: usize, now: u64, received: Received) {
        let n = received.len();
        self.link_mut(i).stats.received_bytes += u64::try_from(n).unwrap_or(0);
        match received {
            Received::Frames(bytes) => {
                let event = Event::BytesReceived {
                    now_ms: now,
                    bytes: &bytes,
                };
                self.feed(i, event);
            }
            Received::Block { head, block } => {
                let event = Event::FrameReceived {
                    now_ms: now,
                    head: &head,
                    block,
                };
                self.feed(i, event);
            }
        }
    }

    fn link(&self, i: usize) -> &Link {
        &self.peers.as_ref().expect("peers started").links[i]
    }

    fn link_mut(&mut self, i: usize) -> &mut Link {
        &mut self.peers.as_mut().expect("peers started").links[i]
    }

    fn drop_conn(&mut self, i: usize) {
        let l = self.link_mut(i);
        // The socket is shut down at once: buffered packets could not go out.
        l.wire.clear();
        if let Some(c) = l.conn.take() {
            c.close();
        }
    }

    fn establish(&mut self, i: usize, stream: TcpStream) {
        let now = self.now_ms();
        if self.link(i).peer.status().conn != ConnState::Connecting {
            tracing::info!(resource = %self.core.name, peer = self.link(i).node_id, "connection refused: peer is StandAlone here (drbdctl connect)");
            return;
        }
        let size = self.data_size_bytes();
        let state = local_state(&self.core, self.link(i).slot, size);
        let p = self.peers.as_mut().expect("peers started");
        let conn_id = p.next_conn_id;
        p.next_conn_id += 1;
        let l = &mut p.links[i];
        match Conn::start(conn_id, stream, l.opts) {
            Ok(c) => {
                l.wire.clear();
                l.conn = Some(c);
            }
            Err(e) => {
                tracing::warn!(peer = l.node_id, error = %e, "cannot set up connection");
                l.next_dial_ms = now + l.connect_int_ms;
                return;
            }
        }
        l.peer.set_local(state);
        let nonce: [u8; NONCE_BYTES] = random_bytes();
        let sync_uuid = u64::from_le_bytes(random_bytes()) & !1;
        self.feed(
            i,
            Event::Connected {
                now_ms: now,
                nonce,
                sync_uuid,
            },
        );
    }

    fn on_local_write(&mut self, w: LocalWrite) {
        let id = w.id;
        self.feed_local_write(w);
        let Some(p) = self.peers.as_mut() else { return };
        if p.early_local_done.remove(&id) {
            self.local_write_done(id);
        } else {
            p.awaiting_local.insert(id);
        }
    }

    fn feed_local_write(&mut self, w: LocalWrite) {
        let mut data = Some(w.data);
        let last = w.legs.len().saturating_sub(1);
        for (k, (node_id, leg)) in w.legs.into_iter().enumerate() {
            let Some(i) = self.link_index(node_id) else {
                leg.complete(LegOutcome::Done);
                continue;
            };
            if let Some(p) = self.peers.as_mut() {
                p.legs.insert((node_id, w.id), leg);
            }
            self.feed(
                i,
                Event::LocalWrite {
                    id: w.id,
                    offset_bytes: w.offset_bytes,
                    len_bytes: w.len_bytes,
                    flags: w.flags,
                    // The last peer gets the buffer itself, the others a copy.
                    data: if k == last {
                        data.take().unwrap_or_default()
                    } else {
                        data.clone().unwrap_or_default()
                    },
                },
            );
        }
    }

    fn on_local_flush(&mut self, id: WriteId, done: FlushDone) {
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        if n == 0 {
            return done.complete();
        }
        if let Some(p) = self.peers.as_mut() {
            p.flushes.insert(id, (n, done));
        }
        for i in 0..n {
            self.feed(i, Event::LocalFlush { id });
        }
    }

    /// One peer finished its part of flush `id`.
    fn flush_leg_done(&mut self, id: WriteId) {
        let Some(p) = self.peers.as_mut() else { return };
        let finished = match p.flushes.get_mut(&id) {
            Some((left, _)) => {
                *left -= 1;
                *left == 0
            }
            None => false,
        };
        if finished {
            if let Some((_, done)) = p.flushes.remove(&id) {
                done.complete();
            }
        }
    }

    /// Writes received from peers that are not yet on the local disk.
    pub(super) fn peer_writes_unfinished(&self) -> usize {
        self.peers.as_ref().map_or(0, |p| {
            p.links.iter().map(|l| l.peer.applying_peer_writes()).sum()
        })
    }

    /// After a successful promote/demote: tell the peers; a forced promotion
    /// that started a new generation makes us the full-sync source of every
    /// connected peer.
    pub(super) fn peers_role_changed(&mut self, new_generation: bool) {
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        let role = self.core.role;
        let size = self.data_size_bytes();
        for i in 0..n {
            let established = self.link(i).peer.status().conn == ConnState::Connected;
            if new_generation && established {
                let local = local_state(&self.core, self.link(i).slot, size);
                self.feed(
                    i,
                    Event::StartFullSync {
                        as_source: true,
                        local,
                    },
                );
            } else {
                self.feed(i, Event::RoleChanged { role });
            }
        }
    }

    /// `drbdctl connect` / `disconnect`.
    pub(super) fn peers_admin_connect(&mut self, connect: bool, discard_my_data: bool) -> usize {
        let n = self.peers.as_ref().map_or(0, |p| p.links.len());
        for i in 0..n {
            if connect {
                self.link_mut(i).next_dial_ms = 0;
                self.feed(i, Event::AdminConnect { discard_my_data });
            } else {
                self.feed(i, Event::AdminDisconnect);
                self.drop_conn(i);
            }
        }
        n
    }

    /// After `drbdctl adjust`: the split-brain policies apply at once;
    /// other changed connection settings, and added or removed peers, take
    /// effect when the resource is taken down and up again (logged). The
    /// core's peer states are kept in step with the running connections.
    pub(super) fn peers_reconfigure(&mut self) {
        let local = self.local_node().name.clone();
        let res = self.res.clone();
        let Some(p) = self.peers.as_mut() else { return };
        for l in &mut p.links {
            let Some(node) = res.node_by_id(l.node_id) else {
                tracing::warn!(resource = %res.name, peer = l.node_id, "peer removed from the configuration; it stays until `drbdctl down` and `up`");
                continue;
            };
            let net = res.net_for(&local, &node.name);
            l.peer.set_sb_policy(sb_policy(&net));
            if net != l.net || node.address != l.addr {
                tracing::warn!(resource = %res.name, peer = l.node_id, "changed connection settings take effect after `drbdctl down` and `up`");
            }
        }
        for cp in &mut self.core.peers {
            if let Some(l) = p.links.iter().find(|l| l.node_id == cp.node_id) {
                let st = l.peer.status();
                cp.conn = st.conn;
                cp.repl = st.repl;
                cp.role = st.peer_role;
                cp.peer_disk = st.peer_disk;
            } else {
                tracing::warn!(resource = %res.name, peer = cp.node_id, "new peer takes effect after `drbdctl down` and `up`");
            }
        }
    }

    /// Adds connection statistics and resync progress to the status.
    pub(super) fn fill_peer_status(&self, views: &mut [PeerStatusView]) {
        let Some(p) = self.peers.as_ref() else { return };
        for v in views.iter_mut() {
            let Some(l) = p.links.iter().find(|l| l.node_id == v.node_id) else {
                continue;
            };
            v.out_of_sync_kib = l.peer.bitmap().count() * (BLOCK_BYTES / 1024);
            v.sent_kib = l.stats.sent_bytes / 1024;
            v.received_kib = l.stats.received_bytes / 1024;
            v.resync_sent_kib = l.stats.resync_sent_bytes / 1024;
            v.resync_received_kib = l.stats.resync_received_bytes / 1024;
            v.done_tenths_percent = l.progress.as_ref().map(Progress::percent_tenths);
            v.resync = l.progress.as_ref().map(|g| ResyncProgress {
                total_kib: g.total_blocks * (BLOCK_BYTES / 1024),
                done_kib: g.done_blocks * (BLOCK_BYTES / 1024),
                rate_kib_per_s: g.rate_bytes_per_s / 1024,
                eta_s: g.eta_s,
            });
        }
    }
}

/// The engine of the actor's own disk I/O: io_uring reaped by the actor
/// in its poll loop (one wake-up per completion instead of three; see
/// `UringEngine::start_polled`). `DRBDD_PEER_IO_ENGINE=reaper` (a reaper
/// thread, as the pipeline uses) or `=sync` exist to measure the
/// difference (benches/vm-rows.sh target `drbdd-c-reaper`).
fn peer_io_engine() -> EngineKind {
    match std::env::var("DRBDD_PEER_IO_ENGINE").as_deref() {
        Err(_) | Ok("" | "polled") => EngineKind::PolledUringOrSync,
        Ok("reaper") => EngineKind::UringOrSync,
        Ok("sync") => EngineKind::Sync,
        Ok(other) => {
            tracing::warn!(
                "DRBDD_PEER_IO_ENGINE={other} is not one of polled, reaper, sync; using polled"
            );
            EngineKind::PolledUringOrSync
        }
    }
}

/// This peer's out-of-sync bitmap as the metadata has it.
fn load_bitmap(store: &MetaStore<FileMetaDevice>, slot: usize, size_bytes: u64) -> SyncBitmap {
    let mut bitmap = SyncBitmap::for_size(size_bytes);
    let mut bit = 0;
    while let Some(b) = store.bitmap_next_set(slot, bit) {
        if b >= bitmap.total_blocks() {
            break;
        }
        bitmap.set_range(b * BLOCK_BYTES, BLOCK_BYTES);
        bit = b + 1;
    }
    bitmap
}

fn local_state(
    core: &drbdd_replication::resource::ResourceCore,
    slot: usize,
    size_bytes: u64,
) -> LocalState {
    let (generations, promoted) = core.md.as_ref().map_or_else(Default::default, |md| {
        let mut gi = md.gens.view(slot);
        gi.crashed_primary = md.crashed_primary;
        (gi, 0)
    });
    LocalState {
        role: if core.role == Role::Primary {
            Role::Primary
        } else {
            Role::Secondary
        },
        disk: core.disk,
        backing_bytes: size_bytes,
        current_bytes: size_bytes,
        max_io_bytes: MAX_IO_BYTES,
        generations,
        promoted_at_ms: promoted,
        sync_target_of_another: core.sync_target_of_another(slot),
    }
}
