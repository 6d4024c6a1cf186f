//! A two-node harness for the peer state machine: an in-memory transport, RAM
//! disks, a virtual clock, and I/O completions the test can hold back to force
//! a particular interleaving. Every action a `Peer` returns is executed the way
//! the daemon would: packets go through the real wire codec, disk writes land
//! in the RAM disk, generation updates are applied to a `Generations` tuple.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;

use drbdd_replication::ack::{PeerOutcome, Protocol, WriteId};
use drbdd_replication::generation::{Generations, SbPolicy, UUID_JUST_CREATED};
use drbdd_replication::handshake::HandshakeConfig;
use drbdd_replication::peer::{Action, Event, LocalState, Peer, PeerConfig};
use drbdd_replication::resync::{RateConfig, SyncBitmap, BLOCK_BYTES};
use drbdd_replication::state::{DiskState, Role};
use drbdd_replication::wire::{self, Packet, DATA_DISCARD, DATA_ZEROES};

pub const DISK_BYTES: u64 = 64 * BLOCK_BYTES;

/// An I/O completion waiting to be reported.
#[derive(Debug, Clone)]
pub enum Io {
    /// Data lands on the disk when the completion is delivered.
    PeerWrite(u64, u64, Vec<u8>),
    PeerFlush(u32),
    ResyncRead(u64, Option<Vec<u8>>),
    ResyncWrite(u64, u64, Vec<u8>),
}

#[derive(Debug)]
pub struct Node {
    pub peer: Peer,
    pub disk: Vec<u8>,
    pub gens: Generations,
    pub disk_state: DiskState,
    /// Mirror of the persistent bitmap, maintained from Mark* actions.
    pub persisted_bitmap: SyncBitmap,
    pub completed: Vec<(WriteId, PeerOutcome)>,
    pub sent: Vec<Packet>,
    pub logs: Vec<String>,
    pub disconnects: Vec<(String, bool)>,
    pub io: VecDeque<Io>,
    pub hold_peer_writes: bool,
    /// Peer flushes wait in `held` too.
    pub hold_peer_flushes: bool,
    pub hold_resync_reads: bool,
    pub hold_resync_writes: bool,
    pub held: Vec<Io>,
    /// Replicated writes fail on this node's disk (PeerWriteDone ok=false).
    pub fail_peer_writes: bool,
    /// For each `PeerWriteFailed`: how many writes had completed before it.
    pub peer_write_failed_at: Vec<usize>,
}

pub fn config(local: u8, peer: u8, secret: Option<&str>, protocol: Protocol) -> PeerConfig {
    PeerConfig {
        handshake: HandshakeConfig {
            resource: "r0".into(),
            local_node_id: local,
            peer_node_id: peer,
            shared_secret: secret.map(|s| s.as_bytes().to_vec()),
            features: 0,
        },
        protocol,
        max_buffers: 64,
        ping_int_ms: 1000,
        ping_timeout_ms: 500,
        connect_timeout_ms: 5000,
        sb_policy: SbPolicy::default(),
        rate: RateConfig {
            resync_rate_kib: 100_000,
            c_plan_ahead_ms: 0,
            c_fill_target_bytes: 0,
            c_max_rate_kib: 0,
            c_min_rate_kib: 0,
        },
        max_resync_requests: 4,
        max_resync_request_bytes: 2 * 4096,
    }
}

pub fn local_state(role: Role, disk: DiskState, gens: &Generations) -> LocalState {
    LocalState {
        role,
        disk,
        backing_bytes: DISK_BYTES,
        current_bytes: DISK_BYTES,
        max_io_bytes: 1 << 20,
        generations: gens.view(0),
        promoted_at_ms: 0,
        sync_target_of_another: false,
    }
}

impl Node {
    pub fn new(
        cfg: PeerConfig,
        role: Role,
        disk_state: DiskState,
        gens: Generations,
        disk: Vec<u8>,
    ) -> Self {
        let local = local_state(role, disk_state, &gens);
        Self {
            peer: Peer::new(cfg, local, SyncBitmap::for_size(DISK_BYTES)),
            disk,
            gens,
            disk_state,
            persisted_bitmap: SyncBitmap::for_size(DISK_BYTES),
            completed: Vec::new(),
            sent: Vec::new(),
            logs: Vec::new(),
            disconnects: Vec::new(),
            io: VecDeque::new(),
            hold_peer_writes: false,
            hold_peer_flushes: false,
            hold_resync_reads: false,
            hold_resync_writes: false,
            held: Vec::new(),
            fail_peer_writes: false,
            peer_write_failed_at: Vec::new(),
        }
    }

    pub fn block(&self, block: u64) -> &[u8] {
        let start = usize::try_from(block * BLOCK_BYTES).unwrap();
        &self.disk[start..start + 4096]
    }

    pub fn completed(&self, id: WriteId) -> Option<PeerOutcome> {
        self.completed
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, o)| *o)
    }

    pub fn release_held(&mut self) {
        self.io.extend(self.held.drain(..));
    }

    /// Releases held completions newest first (the disk reorders them).
    pub fn release_held_reversed(&mut self) {
        self.io.extend(self.held.drain(..).rev());
    }

    fn write_disk(&mut self, offset: u64, data: &[u8]) {
        let start = usize::try_from(offset).unwrap();
        self.disk[start..start + data.len()].copy_from_slice(data);
    }

    /// Executes actions; returns packets to put on the wire (encoded).
    fn execute(&mut self, actions: Vec<Action>, wire_out: &mut Vec<u8>, link_up: bool) -> bool {
        let mut dropped = false;
        for action in actions {
            match action {
                Action::Send(p) => {
                    if link_up {
                        p.encode_framed(wire_out, self.peer.frame_crc());
                    }
                    self.sent.push(p);
                }
                Action::CompleteWrite { id, outcome } => self.completed.push((id, outcome)),
                Action::PeerWriteFailed => self.peer_write_failed_at.push(self.completed.len()),
                Action::MarkOutOfSync {
                    offset_bytes,
                    len_bytes,
                } => {
                    self.persisted_bitmap.set_range(offset_bytes, len_bytes);
                }
                Action::MarkInSync {
                    offset_bytes,
                    len_bytes,
                } => {
                    self.persisted_bitmap.clear_range(offset_bytes, len_bytes);
                }
                Action::SubmitPeerWrite {
                    seq,
                    offset_bytes,
                    len_bytes,
                    flags,
                    data,
                } => {
                    let data = if flags & (DATA_DISCARD | DATA_ZEROES) != 0 {
                        vec![0; usize::try_from(len_bytes).unwrap()]
                    } else {
                        data.into_vec()
                    };
                    let io = Io::PeerWrite(seq, offset_bytes, data);
                    if self.hold_peer_writes {
                        self.held.push(io);
                    } else {
                        self.io.push_back(io);
                    }
                }
                Action::SubmitPeerFlush { epoch } => {
                    if self.hold_peer_flushes {
                        self.held.push(Io::PeerFlush(epoch));
                    } else {
                        self.io.push_back(Io::PeerFlush(epoch));
                    }
                }
                Action::ReadForResync {
                    id,
                    offset_bytes,
                    len_bytes,
                } => {
                    let start = usize::try_from(offset_bytes).unwrap();
                    let data =
                        self.disk[start..start + usize::try_from(len_bytes).unwrap()].to_vec();
                    let io = Io::ResyncRead(id, Some(data));
                    if self.hold_resync_reads {
                        self.held.push(io);
                    } else {
                        self.io.push_back(io);
                    }
                }
                Action::SubmitResyncWrite {
                    id,
                    offset_bytes,
                    data,
                } => {
                    let io = Io::ResyncWrite(id, offset_bytes, data.into_vec());
                    if self.hold_resync_writes {
                        self.held.push(io);
                    } else {
                        self.io.push_back(io);
                    }
                }
                Action::UpdateGenerations(u) => u.apply(&mut self.gens, 0),
                Action::LocalDisk(d) => self.disk_state = d,
                Action::StateChanged(_) | Action::SizeAgreed { .. } => {}
                Action::Log(s) | Action::Warn(s) => self.logs.push(s),
                Action::Disconnect { reason, retry } => {
                    self.disconnects.push((reason, retry));
                    dropped = true;
                }
            }
        }
        dropped
    }
}

/// With `TRACE=1` in the environment, prints every action and completion
/// (shortened) to replay a failing seed.
fn trace(now_ms: u64, node: usize, what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("TRACE").is_some()) {
        let short: String = what().chars().take(160).collect();
        eprintln!("[{now_ms} ms] node{node} {short}");
    }
}

/// Two nodes, a link between them, and a virtual clock.
#[derive(Debug)]
pub struct Pair {
    pub nodes: [Node; 2],
    wires: [Vec<u8>; 2], // wires[i]: bytes from node i to the other
    pub link_up: bool,
    pub now_ms: u64,
    /// Delivers received bytes in pieces of at most this many bytes (a TCP
    /// reader sees packets split anywhere); `None`: all at once.
    pub rx_chunk_bytes: Option<usize>,
    next_uuid: u64,
}

impl Pair {
    pub fn new(a: Node, b: Node) -> Self {
        Self {
            nodes: [a, b],
            wires: [Vec::new(), Vec::new()],
            link_up: false,
            now_ms: 1000,
            rx_chunk_bytes: None,
            next_uuid: 0x7000,
        }
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in &actions {
            trace(self.now_ms, i, || format!("{a:?}"));
        }
        let link_up = self.link_up;
        let dropped = self.nodes[i].execute(actions, &mut self.wires[i], link_up);
        if dropped && self.link_up {
            // Like TCP, bytes already sent arrive before the close.
            let bytes = std::mem::take(&mut self.wires[i]);
            if !bytes.is_empty() {
                let event = Event::BytesReceived {
                    now_ms: self.now_ms,
                    bytes: &bytes,
                };
                let actions = self.nodes[1 - i].peer.handle(event);
                self.apply(1 - i, actions);
            }
            if self.link_up {
                self.cut();
            }
        }
    }

    /// Feeds one event to node `i` and executes its actions.
    pub fn event(&mut self, i: usize, event: Event<'_>) {
        let actions = self.nodes[i].peer.handle(event);
        self.apply(i, actions);
    }

    /// Both ends see the transport fail.
    pub fn cut(&mut self) {
        self.link_up = false;
        self.wires = [Vec::new(), Vec::new()];
        for i in 0..2 {
            let actions = self.nodes[i].peer.handle(Event::ConnectionLost {
                now_ms: self.now_ms,
            });
            self.apply(i, actions);
        }
    }

    pub fn connect(&mut self) {
        self.start_connect();
        self.run();
    }

    /// Both ends see the transport come up; the handshake has begun but
    /// nothing is delivered yet.
    pub fn start_connect(&mut self) {
        self.link_up = true;
        for i in 0..2 {
            self.next_uuid += 0x100;
            let nonce = [u8::try_from(i + 1).unwrap(); 32];
            let event = Event::Connected {
                now_ms: self.now_ms,
                nonce,
                sync_uuid: self.next_uuid,
            };
            let actions = self.nodes[i].peer.handle(event);
            self.apply(i, actions);
        }
    }

    /// Delivers bytes and completions until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..2 {
                let bytes = std::mem::take(&mut self.wires[1 - i]);
                if !bytes.is_empty() && self.link_up {
                    moved = true;
                    let chunk = self.rx_chunk_bytes.unwrap_or(usize::MAX).max(1);
                    for piece in bytes.chunks(chunk) {
                        if !self.link_up {
                            break; // the connection ended: the rest is lost
                        }
                        let actions = self.nodes[i].peer.handle(Event::BytesReceived {
                            now_ms: self.now_ms,
                            bytes: piece,
                        });
                        self.apply(i, actions);
                    }
                }
                if let Some(io) = self.nodes[i].io.pop_front() {
                    moved = true;
                    trace(self.now_ms, i, || format!("I/O done: {io:?}"));
                    let event = match io {
                        Io::PeerWrite(seq, offset, data) => {
                            let ok = !self.nodes[i].fail_peer_writes;
                            if ok {
                                self.nodes[i].write_disk(offset, &data);
                            }
                            Event::PeerWriteDone { seq, ok }
                        }
                        Io::PeerFlush(epoch) => Event::PeerFlushDone { epoch },
                        Io::ResyncRead(id, data) => Event::ResyncReadDone { id, data },
                        Io::ResyncWrite(id, offset, data) => {
                            self.nodes[i].write_disk(offset, &data);
                            Event::ResyncWriteDone { id }
                        }
                    };
                    let actions = self.nodes[i].peer.handle(event);
                    self.apply(i, actions);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("harness did not settle");
    }

    /// Advances the clock in 100 ms ticks, running in between.
    pub fn advance(&mut self, ms: u64) {
        for _ in 0..ms / 100 {
            self.now_ms += 100;
            for i in 0..2 {
                let actions = self.nodes[i].peer.handle(Event::Tick {
                    now_ms: self.now_ms,
                });
                self.apply(i, actions);
            }
            self.run();
        }
    }

    /// An application write on node `i`: local disk first, then replication.
    pub fn app_write(&mut self, i: usize, id: WriteId, block: u64, fill: u8) {
        let data = vec![fill; 4096];
        self.nodes[i].write_disk(block * BLOCK_BYTES, &data);
        let event = Event::LocalWrite {
            id,
            offset_bytes: block * BLOCK_BYTES,
            len_bytes: 4096,
            flags: 0,
            data: data.into(),
        };
        let actions = self.nodes[i].peer.handle(event);
        self.apply(i, actions);
        let actions = self.nodes[i].peer.handle(Event::LocalWriteDone { id });
        self.apply(i, actions);
    }

    pub fn fresh_uuid(&mut self) -> u64 {
        self.next_uuid += 0x100;
        self.next_uuid
    }
}

/// A connected-to-be pair: `a` Primary, `b` Secondary, both UpToDate in
/// generation 0x10 with zeroed disks.
pub fn primary_secondary(cfg_a: PeerConfig, cfg_b: PeerConfig) -> Pair {
    let a = Node::new(
        cfg_a,
        Role::Primary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0),
    );
    let b = Node::new(
        cfg_b,
        Role::Secondary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0),
    );
    Pair::new(a, b)
}

/// Generations of a node that has had data generation `current` for a while.
pub fn gens(current: u64) -> Generations {
    Generations {
        current,
        bitmaps: vec![0],
        history: [0; drbdd_replication::generation::HISTORY_UUIDS],
    }
}

pub fn just_created() -> Generations {
    Generations {
        current: UUID_JUST_CREATED,
        bitmaps: vec![0],
        history: [0; drbdd_replication::generation::HISTORY_UUIDS],
    }
}

pub fn disk(fill: u8) -> Vec<u8> {
    vec![fill; usize::try_from(DISK_BYTES).unwrap()]
}

/// Blocks whose data travelled in resync replies from node `i`.
pub fn resync_blocks_sent(node: &Node) -> Vec<u64> {
    let mut blocks: Vec<u64> = node
        .sent
        .iter()
        .filter_map(|p| match p {
            Packet::ResyncReply {
                offset_bytes,
                payload,
                ..
            } => {
                let n = u64::try_from(payload.len()).unwrap() / BLOCK_BYTES;
                Some((0..n).map(move |k| offset_bytes / BLOCK_BYTES + k))
            }
            _ => None,
        })
        .flatten()
        .collect();
    blocks.sort_unstable();
    blocks
}

pub fn decode_all(bytes: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((p, used)) = wire::decode(&bytes[pos..]).unwrap() {
        out.push(p);
        pos += used;
    }
    out
}
