//! Deterministic simulation of a whole drbdd cluster: the real replication
//! core (`Peer`, `ResourceCore`) and the real metadata logic (`MetaStore`
//! over a fault-injecting `MemDevice`) on a simulated clock, network and
//! disks, single-threaded and driven by one `u64` seed.
//!
//! Owns: the schedule (workload, operator, faults), the reference model and
//! the invariant checks. Must never: use real time, threads, sockets, files
//! or any randomness but the seed; the same seed always gives the same run
//! (same trace, same fingerprint).
//!
//! A run: nodes start (fresh with `primary --force`, or with identical data),
//! a random number of steps mixes application I/O on the primary, admin
//! commands and faults; then everything is healed and the cluster must
//! converge; the invariants are checked all along and at the end (see
//! `model`). [`run_seed`] replays one seed; [`run_batch`] runs many.
//!
//! Caller rules the simulation showed to be necessary (the daemon, which
//! drives the same core, must follow them too):
//! - write the bitmap out before every superblock change, and persist
//!   cleared bits only after a flush of the data they vouch for;
//! - flush the data disk before recording UpToDate after a resync, and
//!   before persisting a demotion (with the bitmap written out);
//! - complete application requests only after the metadata changes of the
//!   same action batch (e.g. a new generation after a lost peer) are durable;
//! - a primary that loses a peer not tracked by one of its former
//!   generations starts a new generation for every peer slot;
//! - apply the activity log (mark logged extents out of sync) after any
//!   unclean stop, not only after a primary's;
//! - a failed replicated write leaves the local disk Outdated (DRBD detaches);
//! - keep `ResourceCore::peers[..].repl` current (promotion is refused
//!   while the node is becoming sync target).

#![forbid(unsafe_code)]

mod disk;
mod exec;
mod model;
mod node;
mod ops;
mod rng;
mod stats;
mod world;

use drbdd_replication::ack::Protocol;
use drbdd_replication::generation::{AfterSb0Pri, AfterSb1Pri, SbPolicy};

pub use disk::{decode_block, encode_block, SimDisk};
pub use rng::SimRng;
pub use stats::Stats;

/// A deliberately broken rule, to prove the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// Complete application writes when the local disk is done, ignoring
    /// the peers' legs (breaks protocol C).
    AckOnLocalOnly,
}

/// Per-step fault probabilities (per mille).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultProfile {
    /// A step is a fault with this probability.
    pub fault_permille: u32,
    /// A step is an admin command with this probability.
    pub admin_permille: u32,
    /// A packet is delayed by 20–400 ms (delays later packets of its stream).
    pub delay_permille: u32,
    /// A peer write, resync read or application read fails with EIO.
    pub eio_permille: u32,
}

/// Everything that defines one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub protocol: Protocol,
    pub steps: u32,
    pub fresh_start: bool,
    /// All nodes connected to each other; otherwise a star around node 0.
    pub full_mesh: bool,
    /// The operator may promote a node cut off from the primary.
    pub allow_split_brain: bool,
    pub sb_policy: SbPolicy,
    pub faults: FaultProfile,
    pub mutation: Mutation,
    pub trace: bool,
}

impl SimConfig {
    /// The configuration a seed stands for (its first draws pick it).
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = SimRng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
        let nodes = [2, 2, 2, 3, 4][rng.index(5)];
        let protocol = [Protocol::A, Protocol::B, Protocol::C, Protocol::C][rng.index(4)];
        let mut sb_policy = SbPolicy::default();
        if rng.chance(500) {
            sb_policy.after_sb_0pri = AfterSb0Pri::DiscardZeroChanges;
            sb_policy.after_sb_1pri = AfterSb1Pri::DiscardSecondary;
        }
        let calm = rng.chance(200);
        Self {
            seed,
            nodes,
            protocol,
            steps: u32::try_from(rng.range(20, 120)).expect("small"),
            fresh_start: rng.chance(250),
            full_mesh: false,
            allow_split_brain: nodes == 2 && rng.chance(500),
            sb_policy,
            faults: FaultProfile {
                fault_permille: if calm {
                    0
                } else {
                    u32::try_from(rng.range(20, 150)).expect("small")
                },
                admin_permille: u32::try_from(rng.range(20, 120)).expect("small"),
                delay_permille: if calm {
                    0
                } else {
                    u32::try_from(rng.range(0, 60)).expect("small")
                },
                eio_permille: if calm || rng.chance(500) {
                    0
                } else {
                    u32::try_from(rng.range(1, 20)).expect("small")
                },
            },
            mutation: Mutation::None,
            trace: false,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    /// Hash of every event's time and the final disk contents.
    pub fingerprint: u64,
    pub stats: Stats,
    /// The first invariant violation, if any.
    pub failure: Option<String>,
    /// The readable trace (only with `trace`).
    pub trace: Vec<String>,
}

/// Runs one schedule.
pub fn run(cfg: SimConfig) -> Outcome {
    let seed = cfg.seed;
    let mut w = world::World::new(cfg);
    if let Err(e) = w.start() {
        w.failure = Some(e);
    }
    let steps_end_ms = 1_000_000;
    while w.failure.is_none() && w.steps_left > 0 && w.now_ms < steps_end_ms {
        let next = w.now_ms + 1000;
        w.run_until(next);
    }
    if w.failure.is_none() {
        w.heal_and_check();
    }
    w.stats.schedules = 1;
    Outcome {
        seed,
        fingerprint: w.fingerprint(),
        stats: w.stats.clone(),
        failure: w.failure.take(),
        trace: std::mem::take(&mut w.trace),
    }
}

/// Runs the schedule of `seed` (optionally traced, optionally mutated).
pub fn run_seed(seed: u64, trace: bool, mutation: Mutation) -> Outcome {
    let mut cfg = SimConfig::for_seed(seed);
    cfg.trace = trace;
    cfg.mutation = mutation;
    run(cfg)
}

/// Result of a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    pub stats: Stats,
    /// (seed, failure) of every failing schedule.
    pub failures: Vec<(u64, String)>,
    pub elapsed_ms: u128,
}

impl BatchReport {
    pub fn schedules_per_second(&self) -> f64 {
        let secs = (self.elapsed_ms.max(1) as f64) / 1000.0;
        self.stats.schedules as f64 / secs
    }
}

/// Runs `seeds` (wall-clock time is measured only for the report).
pub fn run_batch(seeds: std::ops::Range<u64>, mutation: Mutation) -> BatchReport {
    let started = std::time::Instant::now();
    let mut report = BatchReport::default();
    for seed in seeds {
        let out = run_seed(seed, false, mutation);
        report.stats.add(&out.stats);
        if let Some(f) = out.failure {
            report.failures.push((seed, f));
        }
    }
    report.elapsed_ms = started.elapsed().as_millis();
    report
}

/// The one-line command that replays `seed` with a readable trace.
pub fn replay_command(seed: u64) -> String {
    format!("DRBDD_SIM_SEED={seed} DRBDD_SIM_TRACE=1 cargo test -p drbdd-sim --test sim replay -- --nocapture")
}
