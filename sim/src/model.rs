//! The reference model and the invariant checks.
//!
//! Owns: what each node is known to hold. `acked[n][b]` is the newest write
//! stamp of block b that node n must return (raised when a write is
//! acknowledged to the application: on the primary, and under protocol C on
//! every peer whose leg was acknowledged); `flushed[n][b]` is the newest
//! stamp that must survive a crash of n (raised when a flush completes).
//! Stamps grow with time, so "not older than" is `>=`. `ahead[a][b]`: a has
//! acknowledged writes b never received (their leg to b went out of sync).
//! Must never: peek at core internals to decide what is right; it judges the
//! core only by what an application and an operator can observe.

use std::collections::{BTreeMap, BTreeSet};

use drbdd_replication::ack::{PeerOutcome, Protocol};
use drbdd_replication::state::{ConnState, DiskState, ReplState};

use crate::node::{AppOp, OpKind, DEV_BLOCKS};
use crate::world::{key, World};
use crate::Mutation;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) acked: Vec<Vec<u64>>,
    pub(crate) flushed: Vec<Vec<u64>>,
    pub(crate) ahead: Vec<Vec<bool>>,
    /// Connections on which a split brain was detected (until it is resolved).
    pub(crate) sb_declared: BTreeSet<(usize, usize)>,
    /// `missing[a][b]`: block -> newest stamp of writes acknowledged on a whose leg to b
    /// went out of sync since the last resync from a to b started.
    pub(crate) missing: Vec<Vec<BTreeMap<u64, u64>>>,
    /// `resync_starts[s][t]`: resyncs from s to t started so far. A leg that
    /// went out of sync before the latest one started is that resync's
    /// business (its bit was in the bitmap the resync began with), even when
    /// the whole request completes later.
    pub(crate) resync_starts: Vec<Vec<u64>>,
    /// Connections refused as "unrelated data" (until the operator acts).
    pub(crate) unrelated: BTreeSet<(usize, usize)>,
    /// stamp -> block it was written to.
    pub(crate) stamp_block: std::collections::BTreeMap<u64, u64>,
}

impl Model {
    pub(crate) fn new(nodes: usize) -> Self {
        let blocks = usize::try_from(DEV_BLOCKS).expect("small");
        Self {
            acked: vec![vec![0; blocks]; nodes],
            flushed: vec![vec![0; blocks]; nodes],
            ahead: vec![vec![false; nodes]; nodes],
            missing: vec![vec![BTreeMap::new(); nodes]; nodes],
            resync_starts: vec![vec![0; nodes]; nodes],
            sb_declared: BTreeSet::new(),
            unrelated: BTreeSet::new(),
            stamp_block: std::collections::BTreeMap::new(),
        }
    }
}

fn bi(block: u64) -> usize {
    usize::try_from(block).expect("block index fits usize")
}

impl World {
    /// Completes an application request once its legs allow it.
    pub(crate) fn maybe_complete(&mut self, n: usize, id: u64) {
        let Some(op) = self.nodes[n].ops.get(&id) else {
            return;
        };
        if matches!(op.kind, OpKind::Read { .. }) || !op.local_done {
            return;
        }
        let legs_done = op.legs.values().all(Option::is_some);
        // The mutation: protocol C requests complete on the local leg alone.
        if !legs_done && self.mutation() != Mutation::AckOnLocalOnly {
            return;
        }
        let op = self.nodes[n].ops.remove(&id).expect("checked");
        match op.kind {
            OpKind::Write { block, stamp, fua } => self.write_acked(n, block, stamp, fua, &op),
            OpKind::Flush { floors } => self.flush_acked(n, &floors, &op.legs, &op.boots),
            OpKind::Read { .. } => unreachable!("reads complete in read_done"),
        }
    }

    fn write_acked(&mut self, n: usize, block: u64, stamp: u64, fua: bool, op: &AppOp) {
        let (legs, boots) = (&op.legs, &op.boots);
        self.stats.writes_acked += 1;
        if fua {
            self.stats.fua_writes_acked += 1;
            self.model.flushed[n][bi(block)] = stamp;
        }
        self.model.acked[n][bi(block)] = stamp;
        let c = self.protocol() == Protocol::C;
        for (&x, outcome) in legs {
            let same_boot = self.nodes[x].alive && self.nodes[x].boot == boots[x];
            // A peer promoted while this write was on its way split the
            // brain (allowed in this run): it may have overwritten the block
            // with its own data after it acknowledged ours.
            let diverged =
                self.nodes[x].promoted_at_ms >= op.issued_ms && self.nodes[x].promoted_at_ms > 0;
            match outcome {
                Some(PeerOutcome::Acked) if c && same_boot => {
                    let has = self.nodes[x].disk.read(block);
                    if has != stamp && !diverged {
                        self.violation(format!(
                            "protocol C: n{x} acknowledged write {stamp} to block {block} but holds {has}"
                        ));
                    }
                    self.model.acked[x][bi(block)] = stamp;
                }
                Some(PeerOutcome::OutOfSync)
                    if op.oos_at_resync.get(&x) == Some(&self.model.resync_starts[n][x]) =>
                {
                    self.model.ahead[n][x] = true;
                    let m = self.model.missing[n][x].entry(block).or_insert(stamp);
                    *m = (*m).max(stamp);
                }
                _ => {}
            }
            // Whatever the legs say: a peer that is UpToDate, replicating
            // and not marked out of sync for this block must hold the write.
            if c && same_boot && self.in_sync_up_to_date(n, x, block) {
                let has = self.nodes[x].disk.read(block);
                if has != stamp {
                    self.violation(format!(
                        "protocol C: write {stamp} to block {block} acknowledged on n{n} while UpToDate peer n{x} (in sync for that block) holds {has}"
                    ));
                }
            }
        }
    }

    /// `n` sees `x` as an UpToDate peer, replicating, with `block` in sync.
    fn in_sync_up_to_date(&self, n: usize, x: usize, block: u64) -> bool {
        let Some(p) = self.nodes[n].peers.get(&x) else {
            return false;
        };
        let st = p.status();
        st.conn == ConnState::Connected
            && st.repl == ReplState::Established
            && st.peer_disk == DiskState::UpToDate
            && !p.bitmap().is_set(block)
    }

    fn flush_acked(
        &mut self,
        n: usize,
        floors: &[Vec<u64>],
        legs: &std::collections::BTreeMap<usize, Option<PeerOutcome>>,
        boots: &[u64],
    ) {
        self.stats.flushes_acked += 1;
        let mut holders = vec![n];
        if self.protocol() == Protocol::C {
            holders.extend(legs.iter().filter_map(|(&x, o)| {
                let same_boot = self.nodes[x].alive && self.nodes[x].boot == boots[x];
                (*o == Some(PeerOutcome::Acked) && same_boot).then_some(x)
            }));
        }
        for x in holders {
            for b in 0..DEV_BLOCKS {
                // A peer's flush covers the blocks it is in sync for; blocks
                // out of sync (e.g. under resync) are the bitmap's business.
                let covered = x == n
                    || self.nodes[n].peers.get(&x).is_some_and(|p| {
                        p.status().conn == ConnState::Connected && !p.bitmap().is_set(b)
                    });
                if !covered {
                    continue;
                }
                // A resync since the flush was issued may have replaced the
                // peer's data lineage (the model lowered its floor then).
                let floor = floors[x][bi(b)].min(self.model.acked[x][bi(b)]);
                let durable = self.nodes[x].disk.read_durable(b);
                if durable < floor {
                    self.violation(format!(
                        "flush completed on n{n}, but n{x} block {b} durably holds {durable}, older than acknowledged write {floor}"
                    ));
                    return;
                }
                let f = &mut self.model.flushed[x][bi(b)];
                *f = (*f).max(floor);
            }
        }
    }

    pub(crate) fn read_done(&mut self, n: usize, id: u64, block: u64, eio: bool) {
        let Some(op) = self.nodes[n].ops.remove(&id) else {
            return;
        };
        let OpKind::Read { floor, .. } = op.kind else {
            return;
        };
        if eio {
            self.stats.eio_app_reads += 1;
            return; // the application sees EIO; nothing to check
        }
        self.stats.reads_checked += 1;
        let got = self.nodes[n].disk.read(block);
        if got < floor {
            self.violation(format!(
                "read of block {block} on primary n{n} returned write {got}, older than acknowledged write {floor}"
            ));
        }
        self.check_stamp_belongs(n, block, got);
    }

    fn check_stamp_belongs(&mut self, n: usize, block: u64, stamp: u64) {
        if stamp != 0 && self.model.stamp_block.get(&stamp) != Some(&block) {
            self.violation(format!(
                "n{n} block {block} holds write {stamp}, which was never written there"
            ));
        }
    }

    /// A crash keeps only what was flushed.
    pub(crate) fn model_crash(&mut self, n: usize) {
        self.model.acked[n] = self.model.flushed[n].clone();
    }

    /// Every handshake between nodes that both have writes the other lacks
    /// must detect split brain.
    pub(crate) fn model_check_split_brain_detected(&mut self, n: usize, r: usize, detected: bool) {
        if self.model.ahead[n][r] && self.model.ahead[r][n] && !detected {
            self.violation(format!(
                "split brain not detected: n{n} and n{r} both have acknowledged writes the other never saw, and their handshake found no split brain"
            ));
        }
    }

    /// `t` becomes sync target of `s`: legal unless t has acknowledged
    /// writes s lacks and no split brain was detected (silent discard).
    pub(crate) fn model_resync_started(&mut self, t: usize, s: usize) {
        if self.model.ahead[t][s] && !self.model.sb_declared.contains(&key(t, s)) {
            self.violation(format!(
                "n{t} became sync target of n{s} although it has acknowledged writes n{s} never saw and no split brain was detected (they would be silently discarded; block -> write: {:?})",
                self.model.missing[t][s]
            ));
        }
        // From here on the target's own changes are being discarded, and
        // the source's bitmap carries what the target missed so far.
        self.model.ahead[t][s] = false;
        // Unless the source already dropped this connection: the target is
        // working through packets still in flight (delayed), and what the
        // source marked out of sync since the drop is in no bitmap it sent.
        let source_open = self
            .links
            .get(&key(t, s))
            .is_some_and(|l| l.open[usize::from(s > t)]);
        if source_open {
            self.model.missing[s][t].clear();
            self.model.resync_starts[s][t] += 1;
        }
    }

    pub(crate) fn model_resync_finished(&mut self, t: usize, s: usize) {
        // A miss the resync repaired (e.g. a failed replicated write the
        // target refetched) is no longer a miss: judged by the data against
        // the write that went out of sync (not against the source's newest
        // write, which may still be on its way to the target, in sync).
        let disk = &self.nodes[t].disk;
        self.model.missing[s][t].retain(|&b, &mut stamp| disk.read(b) < stamp);
        if self.protocol() == Protocol::C {
            // Every acknowledged write reached the target or the source's
            // bitmap for it (a bit the source set after the connection this
            // resync ran on was lost is not the target's business yet).
            // Only what the source guaranteed counts as flushed: the
            // target's own flush before it declared UpToDate is no
            // application flush.
            for b in 0..DEV_BLOCKS {
                let m = &mut self.model;
                let known_missing = m.missing[s][t].contains_key(&b);
                let i = bi(b);
                if known_missing {
                    m.acked[t][i] = m.acked[t][i].min(m.acked[s][i]);
                    m.flushed[t][i] = m.flushed[t][i].min(m.flushed[s][i]);
                } else {
                    m.acked[t][i] = m.acked[s][i];
                    m.flushed[t][i] = m.flushed[s][i];
                }
            }
        } else {
            // A/B: replicated writes may still be on their way (or lost with
            // the connection); the target only has what both sides had.
            for b in 0..usize::try_from(DEV_BLOCKS).expect("small") {
                let m = &mut self.model;
                m.acked[t][b] = m.acked[t][b].min(m.acked[s][b]);
                m.flushed[t][b] = m.flushed[t][b].min(m.flushed[s][b]);
            }
        }
        self.model.ahead[t][s] = false;
        // The source stays ahead if it already knows of writes the target
        // missed (set after the connection of this resync was lost).
        let still_missing = !self.model.missing[s][t].is_empty();
        self.model.ahead[s][t] = self.model.ahead[s][t] && still_missing;
        if self.model.sb_declared.remove(&key(t, s)) {
            self.stats.split_brain_resolutions += 1;
        }
    }

    /// Two primaries must never be connected (no dual-primary here).
    pub(crate) fn check_two_primaries(&mut self) {
        let prim: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].is_primary())
            .collect();
        for &a in &prim {
            for &b in &prim {
                let connected = |x: usize, y: usize| {
                    self.nodes[x]
                        .peers
                        .get(&y)
                        .is_some_and(|p| p.status().conn == ConnState::Connected)
                };
                if a < b && connected(a, b) && connected(b, a) {
                    self.violation(format!("n{a} and n{b} are both Primary and connected"));
                    return;
                }
            }
        }
    }

    /// True once every link is up and replicating, every disk UpToDate and
    /// no block out of sync.
    pub(crate) fn converged(&self) -> bool {
        self.quiet()
            && self.links.keys().all(|&(a, b)| {
                [(a, b), (b, a)].iter().all(|&(x, y)| {
                    self.nodes[x].alive
                        && self.nodes[x].up_to_date()
                        && self.nodes[x].ops.is_empty()
                        && self.nodes[x].peers.get(&y).is_some_and(|p| {
                            let st = p.status();
                            st.conn == ConnState::Connected
                                && st.repl == ReplState::Established
                                && p.bitmap().count() == 0
                        })
                })
            })
    }

    /// The end-of-run checks after healing.
    pub(crate) fn final_checks(&mut self) {
        let first = self.nodes[0].disk.image();
        for n in 0..self.nodes.len() {
            let image = self.nodes[n].disk.image();
            for b in 0..DEV_BLOCKS {
                let got = image[bi(b)];
                self.check_stamp_belongs(n, b, got);
                if got != first[bi(b)] {
                    self.violation(format!(
                        "after healing and resync, UpToDate replicas differ: block {b} is {} on n0 and {got} on n{n}",
                        first[bi(b)]
                    ));
                }
                let floor = self.model.acked[n][bi(b)];
                if got < floor {
                    self.violation(format!(
                        "after healing, UpToDate n{n} block {b} holds {got}, older than acknowledged write {floor} (stale data claimed UpToDate)"
                    ));
                }
            }
        }
    }

    /// A restarted primary stops being a crashed primary once every peer
    /// has been handled by a handshake.
    pub(crate) fn clear_crashed_primary(&mut self, n: usize) {
        if !self.nodes[n].md().crashed_primary {
            return;
        }
        let all = self.nodes[n].peers.values().all(|p| {
            p.status().conn == ConnState::Connected && p.status().repl == ReplState::Established
        });
        if all {
            self.nodes[n].md_mut().crashed_primary = false;
            self.persist(n);
        }
    }
}
