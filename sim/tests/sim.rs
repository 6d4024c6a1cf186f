//! The seeded cluster simulation as a test suite: a default batch of seeds
//! (every invariant checked continuously and after healing), determinism
//! (the same seed gives the same fingerprint and trace), a mutation check (a
//! broken protocol C ack rule must be caught within the default batch),
//! regression seeds, and `replay` for one seed with a readable trace.
//!
//! Environment: `DRBDD_SIM_SEEDS=N` runs N seeds instead of the default
//! batch; `DRBDD_SOAK=1` runs 200,000; `DRBDD_SIM_SEED=S` (+
//! `DRBDD_SIM_TRACE=1`) replays one seed in `replay`.

use drbdd_sim::{replay_command, run_batch, run_seed, Mutation};

/// Seeds of the default batch (sized for a few minutes on 2 cores, debug).
const DEFAULT_SEEDS: u64 = 10_000;

fn batch_size() -> u64 {
    if std::env::var_os("DRBDD_SOAK").is_some() {
        return 200_000;
    }
    std::env::var("DRBDD_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEEDS)
}

#[test]
fn every_seed_of_the_batch_keeps_every_invariant() {
    let seeds = batch_size();
    let report = run_batch(0..seeds, Mutation::None);
    eprintln!(
        "simulated {} schedules in {} ms: {:.0} schedules/s\n{}",
        report.stats.schedules,
        report.elapsed_ms,
        report.schedules_per_second(),
        report.stats
    );
    for (seed, failure) in report.failures.iter().take(20) {
        eprintln!(
            "seed {seed} FAILED: {failure}\n  replay: {}",
            replay_command(*seed)
        );
    }
    assert!(
        report.failures.is_empty(),
        "{} of {seeds} seeds failed; first: seed {} ({}); replay: {}",
        report.failures.len(),
        report.failures[0].0,
        report.failures[0].1,
        replay_command(report.failures[0].0)
    );
    // The faults really happened.
    let s = &report.stats;
    if seeds >= 1000 {
        assert!(s.crashes > 0 && s.restarts > 0 && s.partitions > 0 && s.connection_drops > 0);
        assert!(s.split_brains_detected > 0 && s.resyncs_finished > 0 && s.torn_md_writes > 0);
        assert!(s.reordered_across_connections > 0 && s.eio_peer_writes > 0);
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for seed in [1, 7, 42, 1234, 99_999] {
        let a = run_seed(seed, true, Mutation::None);
        let b = run_seed(seed, true, Mutation::None);
        assert_eq!(a.fingerprint, b.fingerprint, "seed {seed}");
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.stats, b.stats, "seed {seed}");
    }
}

#[test]
fn completing_protocol_c_writes_on_the_local_leg_alone_is_caught() {
    let report = run_batch(0..DEFAULT_SEEDS.min(2000), Mutation::AckOnLocalOnly);
    let caught: Vec<&(u64, String)> = report
        .failures
        .iter()
        .filter(|(_, f)| f.contains("protocol C"))
        .collect();
    eprintln!(
        "mutation caught by {} seeds, e.g. {:?}",
        caught.len(),
        caught.first()
    );
    assert!(!caught.is_empty(), "the broken ack rule went unnoticed");
}

#[test]
fn replay() {
    let Ok(seed) = std::env::var("DRBDD_SIM_SEED") else {
        eprintln!("SKIP: set DRBDD_SIM_SEED=<seed> (and DRBDD_SIM_TRACE=1) to replay one schedule");
        return;
    };
    let seed: u64 = seed.parse().expect("DRBDD_SIM_SEED is a number");
    let trace = std::env::var_os("DRBDD_SIM_TRACE").is_some();
    let out = run_seed(seed, trace, Mutation::None);
    eprintln!("{}", out.stats);
    assert!(
        out.failure.is_none(),
        "seed {seed}: {}",
        out.failure.unwrap_or_default()
    );
}
