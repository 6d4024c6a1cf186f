//! The simulated cluster: one event queue on a virtual clock, the network
//! between the nodes, disk completions, and the main loop.
//!
//! Owns: time, delivery order and the seed's schedule. A connection is an
//! ordered byte stream (arrival times on one direction never decrease);
//! different connections are independent, so packets reorder across them.
//! Must never: consult anything but the seeded RNG (same seed, same run).

use std::collections::BTreeMap;

use drbdd_replication::ack::Protocol;
use drbdd_replication::peer::Event;
use drbdd_replication::state::ConnState;
use drbdd_replication::wire::FrameCrc;

use crate::model::Model;
use crate::node::Node;
use crate::rng::SimRng;
use crate::stats::Stats;
use crate::{Mutation, SimConfig};

/// Period of the peers' timer.
pub(crate) const TICK_MS: u64 = 50;

/// A disk I/O in flight; it takes effect when it completes.
#[derive(Debug, Clone)]
pub(crate) enum Io {
    AppWrite {
        id: u64,
        block: u64,
        stamp: u64,
        fua: bool,
    },
    AppFlush {
        id: u64,
    },
    AppRead {
        id: u64,
        block: u64,
        eio: bool,
    },
    PeerWrite {
        remote: usize,
        seq: u64,
        block: u64,
        stamps: Vec<u64>,
        fua: bool,
        ok: bool,
    },
    PeerFlush {
        remote: usize,
        epoch: u32,
    },
    ResyncRead {
        remote: usize,
        id: u64,
        block: u64,
        blocks: u64,
        ok: bool,
    },
    ResyncWrite {
        remote: usize,
        id: u64,
        block: u64,
        stamps: Vec<u64>,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum Ev {
    Deliver {
        from: usize,
        to: usize,
        inc: u64,
        bytes: Vec<u8>,
        sent: u64,
    },
    Fin {
        to: usize,
        from: usize,
        inc: u64,
    },
    Disk {
        node: usize,
        boot: u64,
        io: Io,
    },
    Tick,
    Step,
    Restart {
        node: usize,
    },
    Heal {
        a: usize,
        b: usize,
    },
    /// Deliver what a healed partition held back on `from` -> `to`.
    Drain {
        from: usize,
        to: usize,
    },
}

/// One link between two nodes; side 0 is the lower node id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    pub(crate) inc: u64,
    /// Side i's end of the current connection is open.
    pub(crate) open: [bool; 2],
    pub(crate) last_arrival_ms: [u64; 2],
    /// A partition: bytes wait (TCP retransmits) until it heals.
    pub(crate) blocked: bool,
    pub(crate) blocked_until_ms: u64,
    /// Per direction: arrivals held back by a partition, in stream order
    /// (later bytes queue behind them even once it healed).
    pub(crate) held: [std::collections::VecDeque<Ev>; 2],
}

impl Link {
    pub(crate) fn down(&self) -> bool {
        !self.open[0] && !self.open[1]
    }
}

/// The whole simulated cluster.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) rng: SimRng,
    pub(crate) now_ms: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) links: BTreeMap<(usize, usize), Link>,
    pub(crate) stats: Stats,
    pub(crate) model: Model,
    pub(crate) next_id: u64,
    pub(crate) failure: Option<String>,
    pub(crate) trace: Vec<String>,
    pub(crate) hash: u64,
    max_sent_delivered: u64,
    send_counter: u64,
    pub(crate) healing: bool,
    pub(crate) steps_left: u32,
}

/// Orders a pair of nodes as the link key.
pub(crate) fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn side(from: usize, to: usize) -> usize {
    usize::from(from > to)
}

impl World {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let rng = SimRng::new(cfg.seed);
        let n = cfg.nodes;
        let mut links = BTreeMap::new();
        for b in 1..n {
            links.insert((0, b), Link::default());
        }
        if cfg.full_mesh {
            for a in 1..n {
                for b in a + 1..n {
                    links.insert((a, b), Link::default());
                }
            }
        }
        Self {
            model: Model::new(n),
            steps_left: cfg.steps,
            cfg,
            rng,
            now_ms: 0,
            queue: BTreeMap::new(),
            seq: 0,
            nodes: Vec::new(),
            links,
            stats: Stats::default(),
            next_id: 1,
            failure: None,
            trace: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            max_sent_delivered: 0,
            send_counter: 0,
            healing: false,
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.cfg.protocol
    }

    pub(crate) fn mutation(&self) -> Mutation {
        self.cfg.mutation
    }

    pub(crate) fn schedule(&mut self, at_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at_ms, self.seq), ev);
    }

    /// Records a line of the readable trace (only with tracing on).
    pub(crate) fn log(&mut self, node: usize, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line: String = what().chars().take(2000).collect();
            let line = format!("[{:>7} ms] n{node} {line}", self.now_ms);
            eprintln!("{line}");
            self.trace.push(line);
        }
    }

    /// Records an invariant violation (the first one ends the run).
    pub(crate) fn violation(&mut self, what: String) {
        if self.failure.is_none() {
            self.log(usize::MAX, || format!("INVARIANT VIOLATED: {what}"));
            self.failure = Some(format!("at {} ms: {what}", self.now_ms));
        }
    }

    fn mix(&mut self, v: u64) {
        self.hash = (self.hash ^ v).wrapping_mul(0x0100_0000_01b3);
    }

    /// The peers neighbouring `n` (by configured links).
    pub(crate) fn remotes(&self, n: usize) -> Vec<usize> {
        self.links
            .keys()
            .filter_map(|&(a, b)| {
                if a == n {
                    Some(b)
                } else if b == n {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Runs until the queue is empty, the run failed, or `until_ms`.
    pub(crate) fn run_until(&mut self, until_ms: u64) {
        while self.failure.is_none() {
            let Some((&(at, s), _)) = self.queue.first_key_value() else {
                return;
            };
            if at > until_ms {
                self.now_ms = until_ms;
                return;
            }
            let ev = self.queue.remove(&(at, s)).expect("peeked");
            self.now_ms = at;
            self.stats.events += 1;
            self.mix(at);
            self.dispatch(ev);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                inc,
                bytes,
                sent,
            } => self.deliver(from, to, inc, &bytes, sent),
            Ev::Fin { to, from, inc } => self.on_fin(to, from, inc),
            Ev::Disk { node, boot, io } => {
                self.mix(u64::try_from(node).unwrap_or(0) + 1);
                if self.nodes[node].alive && self.nodes[node].boot == boot {
                    self.disk_done(node, io);
                }
            }
            Ev::Tick => self.tick(),
            Ev::Step => self.step(),
            Ev::Restart { node } => self.restart(node),
            Ev::Heal { a, b } => {
                if let Some(l) = self.links.get_mut(&key(a, b)) {
                    if l.blocked {
                        l.blocked = false;
                        self.stats.partitions_healed += 1;
                        self.log(a, || format!("partition to n{b} healed"));
                    }
                }
                self.schedule_drains(a, b);
            }
            Ev::Drain { from, to } => self.drain(from, to),
        }
    }

    /// After a heal: release what the partition held, both directions.
    pub(crate) fn schedule_drains(&mut self, a: usize, b: usize) {
        let now = self.now_ms;
        self.schedule(now, Ev::Drain { from: a, to: b });
        self.schedule(now, Ev::Drain { from: b, to: a });
    }

    fn drain(&mut self, from: usize, to: usize) {
        let Some(link) = self.links.get_mut(&key(from, to)) else {
            return;
        };
        if link.blocked {
            return; // the next heal drains
        }
        let items = std::mem::take(&mut link.held[side(from, to)]);
        for ev in items {
            self.dispatch(ev);
        }
    }

    /// Holds an arrival back if a partition blocks the stream or earlier
    /// bytes of it are still held. Returns true if held.
    fn hold_if_needed(&mut self, from: usize, to: usize, ev: &Ev) -> bool {
        let now = self.now_ms;
        let Some(link) = self.links.get_mut(&key(from, to)) else {
            return false;
        };
        let d = side(from, to);
        if !link.blocked && link.held[d].is_empty() {
            return false;
        }
        link.held[d].push_back(ev.clone());
        if !link.blocked {
            self.schedule(now, Ev::Drain { from, to });
        }
        true
    }

    /// Puts encoded bytes on the stream from `from` to `to`.
    pub(crate) fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let delay = self.packet_delay_ms();
        let now = self.now_ms;
        let Some(link) = self.links.get_mut(&key(from, to)) else {
            return;
        };
        let s = side(from, to);
        if !link.open[s] {
            return; // no connection
        }
        let earliest = if link.blocked {
            link.blocked_until_ms
        } else {
            now
        };
        let arrival = (earliest + delay).max(link.last_arrival_ms[s]);
        link.last_arrival_ms[s] = arrival;
        let inc = link.inc;
        self.send_counter += 1;
        self.stats.packets += 1;
        let sent = self.send_counter;
        self.schedule(
            arrival,
            Ev::Deliver {
                from,
                to,
                inc,
                bytes,
                sent,
            },
        );
    }

    fn packet_delay_ms(&mut self) -> u64 {
        if self.rng.chance(self.cfg.faults.delay_permille) {
            self.stats.delayed_packets += 1;
            self.rng.range(20, 400)
        } else {
            self.rng.range(1, 4)
        }
    }

    fn deliver(&mut self, from: usize, to: usize, inc: u64, bytes: &[u8], sent: u64) {
        let Some(link) = self.links.get(&key(from, to)) else {
            return;
        };
        if link.inc != inc || !link.open[side(to, from)] || !self.nodes[to].alive {
            self.log(to, || {
                format!("<-n{from} dropped (connection gone): packet {sent}")
            });
            return;
        }
        let ev = Ev::Deliver {
            from,
            to,
            inc,
            bytes: bytes.to_vec(),
            sent,
        };
        if self.hold_if_needed(from, to, &ev) {
            self.log(to, || format!("<-n{from} held by partition: packet {sent}"));
            return;
        }
        if sent < self.max_sent_delivered {
            self.stats.reordered_across_connections += 1;
        }
        self.max_sent_delivered = self.max_sent_delivered.max(sent);
        self.mix(sent);
        if self.cfg.trace {
            let crc = self.nodes[to]
                .peers
                .get(&from)
                .map_or(FrameCrc::WholePayload, |peer| peer.frame_crc());
            if let Ok(Some((p, _))) = drbdd_replication::wire::decode_framed(bytes, crc) {
                let what = match &p {
                    drbdd_replication::wire::Packet::Data {
                        seq,
                        epoch,
                        offset_bytes,
                        ..
                    } => {
                        format!("recv Data seq {seq} epoch {epoch} off {offset_bytes}")
                    }
                    drbdd_replication::wire::Packet::Barrier { epoch } => {
                        format!("recv Barrier epoch {epoch}")
                    }
                    other => format!("recv {}", other.name()),
                };
                self.log(to, || format!("<-n{from} {what}"));
            }
        }
        let now_ms = self.now_ms;
        self.peer_event(to, from, Event::BytesReceived { now_ms, bytes });
    }

    /// Closes `from`'s end; the other end learns it after the bytes in flight.
    pub(crate) fn close_side(&mut self, from: usize, to: usize) {
        let alive_to = self.nodes[to].alive;
        let Some(link) = self.links.get_mut(&key(from, to)) else {
            return;
        };
        let s = side(from, to);
        if !link.open[s] {
            return;
        }
        link.open[s] = false;
        if link.open[1 - s] && alive_to {
            let earliest = if link.blocked {
                link.blocked_until_ms
            } else {
                self.now_ms + 1
            };
            let at = earliest.max(link.last_arrival_ms[s]);
            let inc = link.inc;
            self.schedule(at, Ev::Fin { to, from, inc });
        }
    }

    fn on_fin(&mut self, to: usize, from: usize, inc: u64) {
        let Some(link) = self.links.get_mut(&key(from, to)) else {
            return;
        };
        let s = side(to, from);
        if link.inc != inc || !link.open[s] || !self.nodes[to].alive {
            return;
        }
        if self.hold_if_needed(from, to, &Ev::Fin { to, from, inc }) {
            return;
        }
        let link = self.links.get_mut(&key(from, to)).expect("checked above");
        link.open[s] = false;
        let now_ms = self.now_ms;
        self.peer_event(to, from, Event::ConnectionLost { now_ms });
    }

    /// Both ends see a reset at once (a dropped connection).
    pub(crate) fn reset_link(&mut self, a: usize, b: usize) {
        let Some(link) = self.links.get_mut(&key(a, b)) else {
            return;
        };
        let was = link.open;
        link.open = [false, false];
        link.inc += 1;
        let now_ms = self.now_ms;
        for (x, y) in [(a, b), (b, a)] {
            if was[side(x, y)] && self.nodes[x].alive {
                self.peer_event(x, y, Event::ConnectionLost { now_ms });
            }
        }
    }

    /// Opens connections on links whose both ends want one.
    pub(crate) fn connector(&mut self) {
        let keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for (a, b) in keys {
            let link = &self.links[&(a, b)];
            if !link.down() || link.blocked || !self.nodes[a].alive || !self.nodes[b].alive {
                continue;
            }
            let wants = |x: usize, y: usize| {
                self.nodes[x]
                    .peers
                    .get(&y)
                    .is_some_and(|p| p.status().conn == ConnState::Connecting)
            };
            if !wants(a, b) || !wants(b, a) {
                continue;
            }
            let now = self.now_ms;
            let link = self.links.get_mut(&(a, b)).expect("exists");
            link.inc += 1;
            link.open = [true, true];
            link.last_arrival_ms = [now, now];
            self.log(a, || format!("transport to n{b} up"));
            for (x, y) in [(a, b), (b, a)] {
                let local = self.nodes[x].local_state(y);
                self.log(x, || {
                    format!(
                        "announces to n{y}: {:x?} {} {}",
                        local.generations, local.role, local.disk
                    )
                });
                let mut nonce = [0u8; 32];
                for c in nonce.chunks_mut(8) {
                    c.copy_from_slice(&self.rng.next_u64().to_le_bytes());
                }
                let sync_uuid = self.rng.uuid();
                if let Some(p) = self.nodes[x].peers.get_mut(&y) {
                    p.set_local(local);
                }
                self.peer_event(
                    x,
                    y,
                    Event::Connected {
                        now_ms: now,
                        nonce,
                        sync_uuid,
                    },
                );
            }
        }
    }

    fn tick(&mut self) {
        let now_ms = self.now_ms;
        for n in 0..self.nodes.len() {
            if !self.nodes[n].alive {
                continue;
            }
            for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
                self.peer_event(n, r, Event::Tick { now_ms });
            }
            // Lazy bitmap writeout (cleared bits after the data they vouch
            // for: resync writes sit in the disk cache until flushed).
            if self.write_out_bitmap(n).is_err() {
                self.stats.md_write_failures += 1;
                self.crash(n, "metadata write failed (bitmap)");
                continue;
            }
            self.clear_crashed_primary(n);
        }
        self.connector();
        self.check_two_primaries();
        if self.failure.is_none() {
            self.schedule(self.now_ms + TICK_MS, Ev::Tick);
        }
    }

    /// A replicated or resync write to `block` is on its way to `n`'s disk.
    pub(crate) fn peer_write_in_flight(&self, n: usize, block: u64) -> bool {
        let boot = self.nodes[n].boot;
        self.queue.values().any(|ev| {
            let Ev::Disk { node, boot: b, io } = ev else {
                return false;
            };
            let (Io::PeerWrite {
                block: first,
                stamps,
                ..
            }
            | Io::ResyncWrite {
                block: first,
                stamps,
                ..
            }) = io
            else {
                return false;
            };
            let len = u64::try_from(stamps.len()).unwrap_or(0);
            *node == n && *b == boot && (*first..first + len).contains(&block)
        })
    }

    /// No bytes on the wire and no disk I/O in flight.
    pub(crate) fn quiet(&self) -> bool {
        let held = self
            .links
            .values()
            .any(|l| l.held.iter().any(|q| !q.is_empty()));
        !held
            && !self
                .queue
                .values()
                .any(|ev| matches!(ev, Ev::Deliver { .. } | Ev::Fin { .. } | Ev::Disk { .. }))
    }

    /// Disk latency for one I/O on node `n`.
    pub(crate) fn disk_latency_ms(&mut self, n: usize) -> u64 {
        let base = self.rng.range(0, 3);
        if self.nodes[n].slow_disk {
            base + self.rng.range(30, 300)
        } else {
            base
        }
    }

    pub(crate) fn submit_io(&mut self, n: usize, io: Io) {
        let at = self.now_ms + self.disk_latency_ms(n);
        let boot = self.nodes[n].boot;
        self.schedule(at, Ev::Disk { node: n, boot, io });
    }

    /// Starts the run: nodes, initial roles, timers.
    pub(crate) fn start(&mut self) -> Result<(), String> {
        let fresh = self.cfg.fresh_start;
        for n in 0..self.cfg.nodes {
            let node = Node::create(n, self.cfg.nodes, (!fresh).then_some(0x1000))
                .map_err(|e| format!("creating metadata of n{n}: {e}"))?;
            self.nodes.push(node);
        }
        for n in 0..self.cfg.nodes {
            self.make_peers(n);
        }
        self.schedule(0, Ev::Tick);
        self.schedule(1, Ev::Step);
        // The first primary: `primary --force` on a fresh cluster, a plain
        // promotion when the data is already UpToDate everywhere.
        self.promote(0, fresh);
        Ok(())
    }

    pub(crate) fn make_peers(&mut self, n: usize) {
        for r in self.remotes(n) {
            let cfg = crate::node::peer_config(n, r, self.cfg.protocol, self.cfg.sb_policy);
            let peer = self.nodes[n].make_peer(r, cfg);
            self.nodes[n].peers.insert(r, peer);
        }
    }

    /// The final fingerprint: the event hash and every disk's contents.
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut h = self.hash;
        for node in &self.nodes {
            for stamp in node.disk.image() {
                h = (h ^ stamp).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}
