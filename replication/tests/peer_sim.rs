//! Seeded simulation of a primary and a secondary: random application writes;
//! random connection cuts and reconnects (with the new data generation a
//! primary starts when it loses its peer); split brain (the secondary promoted
//! and writing while apart, resolved by `after-sb-1pri discard-secondary` or,
//! when the policy cannot, by `connect --discard-my-data`); pause-sync and
//! resume-sync on either node; fixed and variable resync rates; held-back
//! disk completions on both sides; and the virtual clock moving. Disk writes
//! land when their completion is delivered, and held completions may be
//! released in reverse order, so in-flight writes really race. After every
//! run the link is healed and the cluster left to settle; then both replicas
//! must be byte-for-byte identical, the secondary UpToDate, the primary's
//! bitmap empty and the generations equal. A failing seed is printed; replay
//! it with `SEED=<n> TRACE=1 cargo test -p drbdd-replication --test peer_sim`.

mod common;

use common::*;
use drbdd_replication::ack::Protocol;
use drbdd_replication::generation::AfterSb1Pri;
use drbdd_replication::peer::Event;
use drbdd_replication::resync::RateConfig;
use drbdd_replication::state::{ConnState, DiskState, ReplState, Role};

/// splitmix64: small, seedable, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn lose_peer_as_primary(p: &mut Pair) {
    // What the resource does when a primary loses its peer: new generation.
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.start_new_generation(uuid, &[0]);
    let st = local_state(Role::Primary, DiskState::UpToDate, &p.nodes[0].gens);
    p.nodes[0].peer.set_local(st);
}

/// While apart, the secondary is promoted too (split brain), writes a few
/// blocks, and is demoted again before the link comes back.
fn split_brain_on_the_secondary(p: &mut Pair, rng: &mut Rng, next_id: &mut u64) {
    if p.nodes[1].disk_state != DiskState::UpToDate {
        return; // an Inconsistent node cannot be promoted
    }
    let uuid = p.fresh_uuid();
    p.nodes[1].gens.start_new_generation(uuid, &[0]);
    for _ in 0..rng.below(4) {
        let fill = u8::try_from(rng.below(255) + 1).unwrap();
        p.app_write(1, *next_id, rng.below(64), fill);
        *next_id += 1;
    }
    let st = local_state(Role::Secondary, DiskState::UpToDate, &p.nodes[1].gens);
    p.nodes[1].peer.set_local(st);
}

/// Reconnects; a split brain the policy could not resolve is resolved the
/// way an admin would: `connect --discard-my-data` on the secondary.
fn reconnect(p: &mut Pair) {
    if p.nodes
        .iter()
        .any(|n| n.peer.status().conn == ConnState::StandAlone)
    {
        p.event(
            1,
            Event::AdminConnect {
                discard_my_data: true,
            },
        );
        p.event(
            0,
            Event::AdminConnect {
                discard_my_data: false,
            },
        );
    }
    p.connect();
}

/// How often the interesting paths ran, to prove the simulation reaches them.
#[derive(Debug, Default)]
struct Coverage {
    split_brains: usize,
    manual_resolutions: usize,
    resyncs: usize,
}

fn run_seed(seed: u64, cov: &mut Coverage) {
    let mut rng = Rng(seed);
    let protocol = [Protocol::A, Protocol::B, Protocol::C][usize::try_from(rng.below(3)).unwrap()];
    let mut cfg_a = config(0, 1, Some("k"), protocol);
    let mut cfg_b = config(1, 0, Some("k"), protocol);
    // Half the seeds recover automatically, half need the admin.
    let policy = if rng.below(2) == 0 {
        AfterSb1Pri::DiscardSecondary
    } else {
        AfterSb1Pri::Disconnect
    };
    cfg_a.sb_policy.after_sb_1pri = policy;
    cfg_b.sb_policy.after_sb_1pri = policy;
    if rng.below(2) == 0 {
        // The variable-rate controller instead of a fixed resync-rate.
        cfg_b.rate = RateConfig {
            resync_rate_kib: 100,
            c_plan_ahead_ms: 500,
            c_fill_target_bytes: if rng.below(2) == 0 { 0 } else { 32 * 1024 },
            c_max_rate_kib: 4000,
            c_min_rate_kib: 100,
        };
    }
    let mut p = primary_secondary(cfg_a, cfg_b);
    p.connect();
    let mut next_id = 1;
    for _ in 0..150 {
        match rng.below(100) {
            0..=49 => {
                let fill = u8::try_from(rng.below(255) + 1).unwrap();
                p.app_write(0, next_id, rng.below(64), fill);
                next_id += 1;
            }
            50..=59 => p.advance(100),
            60..=63 if p.link_up => {
                p.cut();
                lose_peer_as_primary(&mut p);
                if rng.below(3) == 0 {
                    split_brain_on_the_secondary(&mut p, &mut rng, &mut next_id);
                }
            }
            64..=73 if !p.link_up => reconnect(&mut p),
            74..=79 => p.nodes[1].hold_peer_writes = !p.nodes[1].hold_peer_writes,
            80..=84 => p.nodes[0].hold_resync_reads = !p.nodes[0].hold_resync_reads,
            85..=87 => {
                let i = usize::try_from(rng.below(2)).unwrap();
                p.nodes[i].release_held();
            }
            88..=89 => {
                let i = usize::try_from(rng.below(2)).unwrap();
                p.nodes[i].release_held_reversed();
            }
            90..=92 => p.nodes[1].hold_resync_writes = !p.nodes[1].hold_resync_writes,
            93..=94 => {
                let i = usize::try_from(rng.below(2)).unwrap();
                let event = if rng.below(2) == 0 {
                    Event::PauseSync
                } else {
                    Event::ResumeSync
                };
                p.event(i, event);
            }
            _ => p.run(),
        }
    }
    // Heal everything and let it settle.
    p.event(0, Event::ResumeSync);
    p.event(1, Event::ResumeSync);
    for n in &mut p.nodes {
        n.hold_peer_writes = false;
        n.hold_resync_reads = false;
        n.hold_resync_writes = false;
        n.release_held();
    }
    p.run();
    if p.nodes[0].peer.status().conn != ConnState::Connected {
        if p.link_up {
            p.cut();
            lose_peer_as_primary(&mut p);
        }
        reconnect(&mut p);
    }
    if p.nodes[0].peer.status().conn != ConnState::Connected {
        // The last reconnect found split brain and went StandAlone.
        p.cut();
        reconnect(&mut p);
    }
    p.advance(5000);
    let (a, b) = (&p.nodes[0], &p.nodes[1]);
    let ctx = format!(
        "seed {seed} protocol {protocol:?}\nA logs {:?}\nB logs {:?}\nA disconnects {:?}\nB disconnects {:?}",
        a.logs, b.logs, a.disconnects, b.disconnects
    );
    assert_eq!(a.peer.status().conn, ConnState::Connected, "{ctx}");
    assert_eq!(a.peer.status().repl, ReplState::Established, "{ctx}");
    assert_eq!(b.disk_state, DiskState::UpToDate, "{ctx}");
    assert_eq!(a.peer.bitmap().count(), 0, "{ctx}");
    assert_eq!(a.persisted_bitmap.count(), 0, "{ctx}");
    let differing: Vec<u64> = (0..64)
        .filter(|blk| a.block(*blk) != b.block(*blk))
        .collect();
    assert!(differing.is_empty(), "blocks {differing:?} differ; {ctx}");
    assert_eq!(a.gens.current, b.gens.current, "{ctx}");
    let count = |needle: &str| b.logs.iter().filter(|l| l.contains(needle)).count();
    cov.split_brains += count("Split-Brain detected");
    cov.manual_resolutions += count("resolved manually");
    cov.resyncs += count("resync finished");
}

#[test]
fn replicas_converge_under_random_writes_cuts_and_delays() {
    let range = std::env::var("SEED")
        .map(|v| v.parse::<u64>().expect("SEED is a number"))
        .map(|s| s..s + 1)
        .unwrap_or(0..1000);
    let mut cov = Coverage::default();
    let all = range.end - range.start > 1;
    for seed in range {
        run_seed(seed, &mut cov);
    }
    if all {
        assert!(
            cov.split_brains > 50 && cov.manual_resolutions > 5 && cov.resyncs > 500,
            "{cov:?}"
        );
    }
    eprintln!("{cov:?}");
}
