//! What happens to the cluster at each random step: the application's
//! workload on the primary, an operator's admin commands, and faults; plus
//! crash/restart and the final healing phase.
//!
//! Owns: the choices an application, an operator and bad luck make. The
//! operator follows the user's guide: promote only an UpToDate node that
//! sees no Primary peer (`primary --force` only at the very start), demote
//! only when no I/O is in flight, resolve a split brain with
//! `connect --discard-my-data` on the victim. Must never: act on a node in a
//! way a real operator could not.

use std::collections::BTreeMap;

use drbdd_replication::peer::Event;
use drbdd_replication::resource::{Action as ResAction, Command};
use drbdd_replication::state::{ConnState, Role};

use crate::disk::encode_block;
use crate::node::{AppOp, OpKind, DEV_BLOCKS};
use crate::world::{key, Ev, Io, World};

/// Most application requests in flight on one node.
const MAX_INFLIGHT_OPS: usize = 16;

impl World {
    pub(crate) fn step(&mut self) {
        if self.steps_left == 0 {
            return;
        }
        self.steps_left -= 1;
        let f = self.cfg.faults;
        let roll = self.rng.below(1000);
        let fault_total = f.fault_permille;
        if roll < u64::from(fault_total) {
            self.random_fault();
        } else if roll < u64::from(fault_total + f.admin_permille) {
            self.random_admin();
        } else {
            let burst = self.rng.range(1, 4);
            for _ in 0..burst {
                self.workload_op();
            }
        }
        let next = self.now_ms + self.rng.range(1, 40);
        self.schedule(next, Ev::Step);
    }

    fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].is_primary())
            .collect()
    }

    /// One read, write, FUA write or flush on a primary.
    fn workload_op(&mut self) {
        let prim = self.primaries();
        if prim.is_empty() {
            return;
        }
        let n = prim[self.rng.index(prim.len())];
        if self.nodes[n].ops.len() >= MAX_INFLIGHT_OPS {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let boots: Vec<u64> = self.nodes.iter().map(|x| x.boot).collect();
        let legs: BTreeMap<usize, Option<_>> =
            self.nodes[n].peers.keys().map(|&r| (r, None)).collect();
        let kind = self.rng.below(100);
        let block = self.rng.below(DEV_BLOCKS);
        if kind < 30 {
            let floor = self.model.acked[n][usize::try_from(block).expect("small")];
            let op = AppOp {
                kind: OpKind::Read { floor },
                local_done: false,
                legs: BTreeMap::new(),
                boots,
                issued_ms: self.now_ms,
                oos_at_resync: BTreeMap::new(),
            };
            self.nodes[n].ops.insert(id, op);
            let eio = self.rng.chance(self.cfg.faults.eio_permille);
            self.submit_io(n, Io::AppRead { id, block, eio });
        } else if kind < 40 {
            let floors = self.model.acked.clone();
            let op = AppOp {
                kind: OpKind::Flush { floors },
                local_done: false,
                legs,
                boots,
                issued_ms: self.now_ms,
                oos_at_resync: BTreeMap::new(),
            };
            self.nodes[n].ops.insert(id, op);
            self.submit_io(n, Io::AppFlush { id });
            for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
                self.peer_event(n, r, Event::LocalFlush { id });
            }
        } else {
            self.app_write(n, id, block, kind >= 93, legs, boots);
        }
    }

    fn app_write(
        &mut self,
        n: usize,
        id: u64,
        block: u64,
        fua: bool,
        legs: BTreeMap<usize, Option<drbdd_replication::ack::PeerOutcome>>,
        boots: Vec<u64>,
    ) {
        // Applications do not overlap writes to one block (as file systems).
        let busy = self.nodes[n]
            .ops
            .values()
            .any(|o| matches!(o.kind, OpKind::Write { block: b, .. } if b == block));
        // The pipeline's rule: a local write waits for an overlapping
        // replicated or resync write still on its way to this disk (one of
        // a lost connection could land after it; drbdd-sim seed 53790).
        if busy || self.peer_write_in_flight(n, block) {
            return;
        }
        if let Err(e) = self.al_activate(n) {
            self.md_failure(n, &e);
            return;
        }
        let stamp = id;
        self.model.stamp_block.insert(stamp, block);
        let op = AppOp {
            kind: OpKind::Write { block, stamp, fua },
            local_done: false,
            legs,
            boots,
            issued_ms: self.now_ms,
            oos_at_resync: BTreeMap::new(),
        };
        self.nodes[n].ops.insert(id, op);
        self.log(n, || format!("app write {stamp} block {block} fua {fua}"));
        self.submit_io(
            n,
            Io::AppWrite {
                id,
                block,
                stamp,
                fua,
            },
        );
        let mut data = Vec::with_capacity(4096);
        encode_block(stamp, &mut data);
        let flags = if fua {
            drbdd_replication::wire::DATA_FUA
        } else {
            0
        };
        for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
            let event = Event::LocalWrite {
                id,
                offset_bytes: block * 4096,
                len_bytes: 4096,
                flags,
                data: data.clone().into(),
            };
            self.peer_event(n, r, event);
        }
    }

    fn random_fault(&mut self) {
        let n = self.rng.index(self.nodes.len());
        let links: Vec<(usize, usize)> = self.links.keys().copied().collect();
        let (a, b) = links[self.rng.index(links.len())];
        match self.rng.below(10) {
            0..=2 => {
                if !self.links[&(a, b)].down() {
                    self.stats.connection_drops += 1;
                    self.log(a, || format!("FAULT connection to n{b} dropped"));
                    self.reset_link(a, b);
                }
            }
            3..=4 => {
                let link = self.links.get_mut(&(a, b)).expect("exists");
                if !link.blocked {
                    let heal_at = self.now_ms + self.rng.range(200, 3000);
                    link.blocked = true;
                    link.blocked_until_ms = heal_at;
                    self.stats.partitions += 1;
                    self.log(a, || {
                        format!("FAULT partition from n{b} until {heal_at} ms")
                    });
                    self.schedule(heal_at, Ev::Heal { a, b });
                }
            }
            5..=6 => {
                if self.nodes[n].alive {
                    if self.rng.chance(300) {
                        self.arm_torn_md_write(n);
                    } else {
                        self.crash(n, "FAULT power loss");
                    }
                }
            }
            _ => {
                if self.nodes[n].alive && !self.nodes[n].slow_disk {
                    self.stats.slow_disk_periods += 1;
                    self.nodes[n].slow_disk = true;
                    self.log(n, || "FAULT disk becomes slow".into());
                } else {
                    self.nodes[n].slow_disk = false;
                }
            }
        }
    }

    /// The next metadata write tears (only a prefix lands) and the machine
    /// loses power with it.
    fn arm_torn_md_write(&mut self, n: usize) {
        let keep = usize::try_from(self.rng.range(1, 4095)).expect("small");
        if let Some(meta) = self.nodes[n].meta.as_mut() {
            meta.device_mut().tear_next_write(keep);
            self.stats.torn_md_writes += 1;
            self.log(n, || {
                format!("FAULT next metadata write tears after {keep} bytes")
            });
        }
    }

    pub(crate) fn crash(&mut self, n: usize, why: &str) {
        if !self.nodes[n].alive {
            return;
        }
        self.stats.crashes += 1;
        self.log(n, || format!("CRASH: {why}"));
        let lost = self.nodes[n].crash(&mut self.rng);
        self.stats.lost_unflushed_writes += u64::try_from(lost).unwrap_or(0);
        self.model_crash(n);
        for r in self.remotes(n) {
            if let Some(link) = self.links.get_mut(&key(n, r)) {
                link.open[usize::from(n > r)] = false;
            }
        }
        let at = self.now_ms + self.rng.range(100, 3000);
        self.schedule(at, Ev::Restart { node: n });
    }

    pub(crate) fn restart(&mut self, n: usize) {
        if self.nodes[n].alive {
            return;
        }
        if let Err(e) = self.nodes[n].restart(self.cfg.nodes) {
            self.violation(format!("n{n} cannot load its metadata after a crash: {e}"));
            return;
        }
        self.stats.restarts += 1;
        let md = self.nodes[n].md().clone();
        let disk = self.nodes[n].core.disk;
        self.log(n, || {
            format!(
                "restarted from metadata: disk {disk} crashed_primary {} gens {:x?}",
                md.crashed_primary, md.gens
            )
        });
        self.make_peers(n);
    }

    fn random_admin(&mut self) {
        let n = self.rng.index(self.nodes.len());
        if !self.nodes[n].alive {
            return;
        }
        match self.rng.below(10) {
            0..=3 => {
                if self.may_promote(n) {
                    self.promote(n, false);
                }
            }
            4..=6 => self.demote(n),
            7 => {
                let remotes = self.remotes(n);
                let r = remotes[self.rng.index(remotes.len())];
                self.stats.admin_disconnects += 1;
                self.log(n, || format!("ADMIN disconnect n{r}"));
                self.peer_event(n, r, Event::AdminDisconnect);
            }
            _ => {
                let remotes = self.remotes(n);
                let r = remotes[self.rng.index(remotes.len())];
                self.admin_connect(n, r);
            }
        }
    }

    /// The guide's rule: an UpToDate node that sees no Primary may be
    /// promoted. Nodes 1.. in a star are never promoted (the core tracks one
    /// primary per connection; secondaries do not talk to each other).
    fn may_promote(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        if node.is_primary() || !node.up_to_date() || (n != 0 && self.cfg.nodes > 2) {
            return false;
        }
        let sees_primary = node.peers.values().any(|p| {
            p.status().conn == ConnState::Connected && p.status().peer_role == Role::Primary
        });
        // Another primary anywhere: only while we are cut off from it (that
        // is how split brains happen), never while a handshake could race.
        let others = self.primaries();
        let cut_off = others
            .iter()
            .all(|&o| self.links.get(&key(n, o)).is_none_or(|l| l.down()));
        !sees_primary && (others.is_empty() || (cut_off && self.rng_peek_split_brain()))
    }

    fn rng_peek_split_brain(&self) -> bool {
        self.cfg.allow_split_brain
    }

    pub(crate) fn promote(&mut self, n: usize, force: bool) {
        let new_uuid = self.rng.uuid();
        let peer_writes_unfinished = self.nodes[n]
            .peers
            .values()
            .map(|p| p.applying_peer_writes())
            .sum();
        match self.nodes[n].core.handle(Command::Promote {
            force,
            new_uuid,
            peer_writes_unfinished,
        }) {
            Ok(actions) => {
                self.stats.promotes += 1;
                if force {
                    self.stats.promotes_forced += 1;
                }
                self.log(n, || {
                    format!("ADMIN primary{}", if force { " --force" } else { "" })
                });
                self.nodes[n].promoted_at_ms = self.now_ms;
                self.resource_actions(n, actions);
                for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
                    self.peer_event(
                        n,
                        r,
                        Event::RoleChanged {
                            role: Role::Primary,
                        },
                    );
                }
            }
            Err(e) => self.log(n, || format!("ADMIN primary refused: {e}")),
        }
    }

    pub(crate) fn demote(&mut self, n: usize) {
        if !self.nodes[n].is_primary() || !self.nodes[n].ops.is_empty() {
            return;
        }
        if let Ok(actions) = self.nodes[n].core.handle(Command::Demote) {
            self.stats.demotes += 1;
            self.log(n, || "ADMIN secondary".into());
            // Once the superblock says "not primary", no activity-log
            // recovery follows a crash: the data and the bitmap (as DRBD
            // writes it out on demotion) must be durable first.
            self.nodes[n].disk.flush();
            let flushed = self.nodes[n].meta.as_mut().map(|m| m.bitmap_flush());
            if let Some(Err(e)) = flushed {
                self.md_failure(n, &e);
                return;
            }
            self.resource_actions(n, actions);
            for r in self.nodes[n].peers.keys().copied().collect::<Vec<_>>() {
                self.peer_event(
                    n,
                    r,
                    Event::RoleChanged {
                        role: Role::Secondary,
                    },
                );
            }
        }
    }

    fn resource_actions(&mut self, n: usize, actions: Vec<ResAction>) {
        for a in actions {
            if let ResAction::PersistSuperblock(_) = a {
                self.persist(n);
            }
        }
    }

    /// "Unrelated data": the guide's remedy is `create-md` on the node whose
    /// data is to be discarded (then a full sync). The operator picks a
    /// Secondary that is not the hub (node 0). Returns false if neither fits.
    fn recreate_unrelated(&mut self, n: usize, r: usize) -> bool {
        let star = self.cfg.nodes > 2;
        let fits =
            |w: &World, x: usize| (x != 0 || !star) && w.nodes[x].alive && !w.nodes[x].is_primary();
        let victim = if fits(self, r) {
            r
        } else if fits(self, n) {
            n
        } else {
            return false;
        };
        self.model.unrelated.remove(&key(n, r));
        self.model.sb_declared.insert(key(n, r));
        for o in self.remotes(victim) {
            self.reset_link(victim, o);
        }
        let nodes = self.cfg.nodes;
        let Ok(mut fresh) = crate::node::Node::create(victim, nodes, None) else {
            self.violation(format!("create-md on n{victim} failed"));
            return false;
        };
        let old = &self.nodes[victim];
        fresh.disk = old.disk.clone();
        fresh.boot = old.boot + 1;
        self.nodes[victim] = fresh;
        self.make_peers(victim);
        for x in 0..nodes {
            self.model.ahead[victim][x] = false;
        }
        self.stats.md_recreated_for_unrelated_data += 1;
        self.log(victim, || {
            "ADMIN create-md (unrelated data: discard this node's data)".into()
        });
        true
    }

    /// `connect` on a StandAlone connection; after a detected split brain
    /// the operator picks the victim (a Secondary) and discards its data.
    pub(crate) fn admin_connect(&mut self, n: usize, r: usize) {
        let standalone = |w: &World, x: usize, y: usize| {
            w.nodes[x].alive
                && w.nodes[x]
                    .peers
                    .get(&y)
                    .is_some_and(|p| p.status().conn == ConnState::StandAlone)
        };
        if !standalone(self, n, r) && !standalone(self, r, n) {
            return;
        }
        self.stats.admin_connects += 1;
        if self.model.unrelated.contains(&key(n, r)) && !self.recreate_unrelated(n, r) {
            return;
        }
        let sb = self.model.sb_declared.contains(&key(n, r));
        let victim = if !sb {
            None
        } else if !self.nodes[r].is_primary() {
            Some(r)
        } else if !self.nodes[n].is_primary() {
            Some(n)
        } else {
            self.demote(r);
            (!self.nodes[r].is_primary()).then_some(r)
        };
        if sb && victim.is_none() {
            return; // both primary and busy: try again later
        }
        for (x, y) in [(n, r), (r, n)] {
            if standalone(self, x, y) || victim.is_some() {
                let discard_my_data = victim == Some(x);
                self.log(x, || {
                    format!("ADMIN connect n{y} discard-my-data={discard_my_data}")
                });
                self.peer_event(x, y, Event::AdminConnect { discard_my_data });
            }
        }
    }

    /// Blocks out of sync on an idle, established connection are not
    /// resynced by a reconnect (equal generations). DRBD detaches a disk
    /// after a write error (`on-io-error detach`) and resyncs at reattach;
    /// here the operator runs `invalidate` on the secondary instead.
    fn invalidate_if_stuck(&mut self, x: usize, y: usize) {
        let idle_with_bits = self.nodes[x].alive
            && self.nodes[y].alive
            && self.nodes[x].peers.get(&y).is_some_and(|p| {
                let st = p.status();
                st.conn == ConnState::Connected
                    && st.repl == drbdd_replication::state::ReplState::Established
                    && p.bitmap().count() > 0
            });
        if !idle_with_bits {
            return;
        }
        // The secondary of the pair is overwritten (the primary's data wins).
        let (target, source) = if self.nodes[y].is_primary() {
            (x, y)
        } else {
            (y, x)
        };
        if self.nodes[target].is_primary() || !self.nodes[source].up_to_date() {
            return;
        }
        let mut local = self.nodes[target].local_state(source);
        local.disk = drbdd_replication::state::DiskState::Inconsistent;
        self.stats.invalidates += 1;
        self.log(target, || {
            format!("ADMIN invalidate (resync from n{source})")
        });
        let event = Event::StartFullSync {
            as_source: false,
            local,
        };
        self.peer_event(target, source, event);
    }

    /// Stops faults, repairs everything an operator would, and lets the
    /// cluster settle; then runs the final checks.
    pub(crate) fn heal_and_check(&mut self) {
        self.healing = true;
        self.steps_left = 0;
        self.cfg.faults.eio_permille = 0;
        self.cfg.faults.delay_permille = 0;
        let deadline = self.now_ms + 60_000;
        let mut probe = self.now_ms;
        while self.failure.is_none() && self.now_ms < deadline {
            let blocked: Vec<(usize, usize)> = self
                .links
                .iter()
                .filter(|(_, l)| l.blocked)
                .map(|(k, _)| *k)
                .collect();
            for (a, b) in blocked {
                let l = self.links.get_mut(&(a, b)).expect("listed");
                l.blocked = false;
                l.blocked_until_ms = 0;
                self.schedule_drains(a, b);
            }
            for n in 0..self.nodes.len() {
                self.nodes[n].slow_disk = false;
                if !self.nodes[n].alive {
                    self.restart(n);
                }
            }
            // One primary at most (the lowest), others demoted.
            let prim = self.primaries();
            for &p in prim.iter().skip(1) {
                self.demote(p);
            }
            let links: Vec<(usize, usize)> = self.links.keys().copied().collect();
            for (a, b) in links {
                self.admin_connect(a, b);
                self.invalidate_if_stuck(a, b);
                self.invalidate_if_stuck(b, a);
            }
            probe += 500;
            self.run_until(probe);
            if self.converged() {
                break;
            }
        }
        if self.failure.is_some() {
            return;
        }
        if !self.converged() {
            let states = self.describe_cluster();
            self.violation(format!(
                "cluster did not converge within 60 s of healing (resync must terminate): {states}"
            ));
            return;
        }
        self.final_checks();
    }

    /// One line per node: role, disk, generations and every peer's state.
    fn describe_cluster(&self) -> String {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let peers: Vec<String> = n
                    .peers
                    .iter()
                    .map(|(r, p)| {
                        let st = p.status();
                        let oos = p.bitmap().count();
                        format!("n{r}:{}/{}/{} oos {oos}", st.conn, st.repl, st.peer_disk)
                    })
                    .collect();
                let gens = &n.md().gens;
                let (role, disk) = (n.core.role, n.core.disk);
                format!(
                    "n{} {role} {disk} gi {gens:x?} [{}]",
                    n.id,
                    peers.join(", ")
                )
            })
            .collect();
        states.join("; ")
    }
}
