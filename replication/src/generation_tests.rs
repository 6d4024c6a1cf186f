//! Proves the decision table of user's guide 23.2.4 row by row, that both
//! sides always reach mirror-image decisions, that the GI mutations produce
//! the tuples the next handshake needs, and the split-brain policies.

use super::*;
use proptest::prelude::*;

fn gi(current: u64, bitmap: u64, history: [u64; 2]) -> GiView {
    GiView {
        current,
        bitmap,
        history: history_of(&history),
        crashed_primary: false,
    }
}

#[test]
fn both_just_created_waits_for_primary_force() {
    let a = gi(UUID_JUST_CREATED, 0, [0, 0]);
    assert_eq!(decide(&a, &a), SyncDecision::BothJustCreated);
}

#[test]
fn forced_primary_becomes_full_sync_source_of_a_just_created_peer() {
    let mut forced = Generations::just_created(1);
    forced.start_new_generation(0x1000, &[]);
    let fresh = Generations::just_created(1);
    assert_eq!(
        decide(&forced.view(0), &fresh.view(0)),
        SyncDecision::SourceFull
    );
    assert_eq!(
        decide(&fresh.view(0), &forced.view(0)),
        SyncDecision::TargetFull
    );
}

#[test]
fn equal_current_uuids_need_no_sync() {
    let a = gi(0x10, 0, [0, 0]);
    assert_eq!(decide(&a, &a), SyncDecision::NoSync);
}

#[test]
fn crashed_primary_with_equal_uuids_resyncs_from_the_crashed_node() {
    let mut crashed = gi(0x10, 0, [0, 0]);
    crashed.crashed_primary = true;
    assert_eq!(
        decide(&crashed, &gi(0x10, 0, [0, 0])),
        SyncDecision::SourceBitmap
    );
}

#[test]
fn primary_that_lost_its_secondary_is_bitmap_source() {
    let mut primary = Generations {
        current: 0x10,
        bitmaps: vec![0],
        history: history_of(&[0, 0]),
    };
    let secondary = Generations {
        current: 0x10,
        bitmaps: vec![0],
        history: history_of(&[0, 0]),
    };
    primary.start_new_generation(0x20, &[0]);
    assert_eq!(primary.bitmaps[0], 0x10);
    assert_eq!(
        decide(&primary.view(0), &secondary.view(0)),
        SyncDecision::SourceBitmap
    );
    assert_eq!(
        decide(&secondary.view(0), &primary.view(0)),
        SyncDecision::TargetBitmap
    );
}

#[test]
fn current_in_peer_history_means_full_sync() {
    let behind = gi(0x10, 0, [0, 0]);
    let ahead = gi(0x30, 0x20, [0x10, 0]);
    assert_eq!(decide(&behind, &ahead), SyncDecision::TargetFull);
    assert_eq!(decide(&ahead, &behind), SyncDecision::SourceFull);
}

#[test]
fn both_promoted_while_apart_is_split_brain_with_shared_parent() {
    let mut a = Generations {
        current: 0x10,
        bitmaps: vec![0],
        history: history_of(&[0, 0]),
    };
    let mut b = a.clone();
    a.start_new_generation(0x20, &[0]);
    b.start_new_generation(0x30, &[0]);
    assert_eq!(
        decide(&a.view(0), &b.view(0)),
        SyncDecision::SplitBrain {
            shared_parent: true
        }
    );
}

#[test]
fn diverged_with_different_parents_is_unrecoverable_split_brain() {
    let a = gi(0x20, 0x11, [0x10, 0]);
    let b = gi(0x30, 0x12, [0x10, 0]);
    assert_eq!(
        decide(&a, &b),
        SyncDecision::SplitBrain {
            shared_parent: false
        }
    );
}

#[test]
fn nothing_in_common_is_unrelated() {
    assert_eq!(
        decide(&gi(0x20, 0x21, [0x22, 0]), &gi(0x30, 0x31, [0x32, 0])),
        SyncDecision::Unrelated
    );
}

#[test]
fn resync_finish_leaves_equal_generations() {
    let mut source = Generations {
        current: 0x20,
        bitmaps: vec![0x10],
        history: history_of(&[0x10, 0]),
    };
    let mut target = Generations {
        current: 0x10,
        bitmaps: vec![0],
        history: history_of(&[0, 0]),
    };
    source.resync_started_as_source(0, 0x55);
    target.resync_started_as_target(0, 0x55);
    // An interruption now resumes bitmap-based in the same direction.
    assert_eq!(
        decide(&source.view(0), &target.view(0)),
        SyncDecision::SourceBitmap
    );
    source.resync_finished_as_source(0);
    target.resync_finished_as_target(0, &source.view(0));
    assert_eq!(target.current, source.current);
    assert_eq!(
        decide(&target.view(0), &source.view(0)),
        SyncDecision::NoSync
    );
}

#[test]
fn history_rotates_newest_first() {
    let mut g = Generations {
        current: 1 << 8,
        bitmaps: vec![],
        history: history_of(&[0, 0]),
    };
    g.start_new_generation(2 << 8, &[]);
    g.start_new_generation(3 << 8, &[]);
    g.start_new_generation(4 << 8, &[]);
    assert_eq!(g.history, history_of(&[3 << 8, 2 << 8, 1 << 8]));
    // Past HISTORY_UUIDS rotations the oldest falls out.
    for i in 5..=40u64 {
        g.start_new_generation(i << 8, &[]);
    }
    let expected: Vec<u64> = (0..HISTORY_UUIDS as u64).map(|i| (39 - i) << 8).collect();
    assert_eq!(g.history, history_of(&expected));
}

#[test]
fn shared_ancestor_deep_in_history_is_found() {
    // A hub that rotated many times (its own generations and its peers'
    // sync UUIDs) still recognises a peer that stopped at an old one: the
    // peer is behind (full resync), not unrelated (drbdd-sim seed 393054).
    let ancestor = 0x5500;
    let mut hub = Generations {
        current: ancestor,
        bitmaps: vec![0; 3],
        history: history_of(&[]),
    };
    for i in 1..=20u64 {
        hub.start_new_generation(ancestor + (i << 16), &[]);
    }
    let behind = gi(ancestor, 0, [0x10, 0]);
    let view = hub.view(1);
    assert_eq!(decide(&view, &behind), SyncDecision::SourceFull);
    assert_eq!(decide(&behind, &view), SyncDecision::TargetFull);
}

fn side(node_id: u8, primary: bool, changed_blocks: u64, promoted_at_ms: u64) -> SbSide {
    SbSide {
        node_id,
        primary,
        changed_blocks,
        promoted_at_ms,
    }
}

fn policy0(p: AfterSb0Pri) -> SbPolicy {
    SbPolicy {
        after_sb_0pri: p,
        ..SbPolicy::default()
    }
}

#[test]
fn discard_zero_changes_picks_the_node_without_changes() {
    let r = resolve_split_brain(
        &policy0(AfterSb0Pri::DiscardZeroChanges),
        &side(0, false, 0, 0),
        &side(1, false, 5, 0),
    );
    assert_eq!(
        r,
        SbResolution::LocalIsVictim {
            policy: "discard-zero-changes"
        }
    );
}

#[test]
fn discard_zero_changes_refuses_when_both_changed() {
    let r = resolve_split_brain(
        &policy0(AfterSb0Pri::DiscardZeroChanges),
        &side(0, false, 3, 0),
        &side(1, false, 5, 0),
    );
    assert!(matches!(r, SbResolution::Disconnect { .. }));
}

#[test]
fn discard_least_changes_and_younger_primary() {
    let r = resolve_split_brain(
        &policy0(AfterSb0Pri::DiscardLeastChanges),
        &side(0, false, 9, 0),
        &side(1, false, 5, 0),
    );
    assert_eq!(
        r,
        SbResolution::PeerIsVictim {
            policy: "discard-least-changes"
        }
    );
    let r = resolve_split_brain(
        &policy0(AfterSb0Pri::DiscardYoungerPrimary),
        &side(0, false, 9, 200),
        &side(1, false, 5, 100),
    );
    assert_eq!(
        r,
        SbResolution::LocalIsVictim {
            policy: "discard-younger-primary"
        }
    );
    let r = resolve_split_brain(
        &policy0(AfterSb0Pri::DiscardOlderPrimary),
        &side(0, false, 9, 200),
        &side(1, false, 5, 100),
    );
    assert_eq!(
        r,
        SbResolution::PeerIsVictim {
            policy: "discard-older-primary"
        }
    );
}

#[test]
fn discard_secondary_with_one_primary() {
    let p = SbPolicy {
        after_sb_1pri: AfterSb1Pri::DiscardSecondary,
        ..SbPolicy::default()
    };
    let r = resolve_split_brain(&p, &side(0, true, 9, 0), &side(1, false, 5, 0));
    assert_eq!(
        r,
        SbResolution::PeerIsVictim {
            policy: "discard-secondary"
        }
    );
}

#[test]
fn unsupported_and_default_policies_refuse_with_a_reason() {
    let p = SbPolicy {
        after_sb_1pri: AfterSb1Pri::CallPriLostAfterSb,
        ..SbPolicy::default()
    };
    let r = resolve_split_brain(&p, &side(0, true, 9, 0), &side(1, false, 5, 0));
    assert!(
        matches!(r, SbResolution::Disconnect { ref reason } if reason.contains("not supported"))
    );
    let r = resolve_split_brain(
        &SbPolicy::default(),
        &side(0, true, 9, 0),
        &side(1, true, 5, 0),
    );
    assert!(matches!(r, SbResolution::Disconnect { .. }));
}

fn arb_uuid() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(UUID_JUST_CREATED), 0x10u64..0x18]
}

fn arb_view() -> impl Strategy<Value = GiView> {
    (
        arb_uuid(),
        arb_uuid(),
        arb_uuid(),
        arb_uuid(),
        any::<bool>(),
    )
        .prop_map(|(c, b, h0, h1, crashed)| GiView {
            current: c,
            bitmap: b,
            history: history_of(&[h0, h1]),
            crashed_primary: crashed,
        })
}

fn arb_side() -> impl Strategy<Value = SbSide> {
    (any::<bool>(), 0u64..3, 0u64..3).prop_map(|(p, c, t)| side(0, p, c, t))
}

proptest! {
    #[test]
    fn both_sides_reach_mirror_decisions(a in arb_view(), b in arb_view()) {
        prop_assert_eq!(decide(&a, &b), decide(&b, &a).mirror());
    }

    #[test]
    fn both_sides_pick_the_same_split_brain_victim(a in arb_side(), b in arb_side(), p0 in 0usize..5, p1 in 0usize..3) {
        let b = SbSide { node_id: 1, ..b };
        let p0s = [AfterSb0Pri::Disconnect, AfterSb0Pri::DiscardYoungerPrimary, AfterSb0Pri::DiscardOlderPrimary,
                   AfterSb0Pri::DiscardZeroChanges, AfterSb0Pri::DiscardLeastChanges];
        let p1s = [AfterSb1Pri::Disconnect, AfterSb1Pri::Consensus, AfterSb1Pri::DiscardSecondary];
        let policy = SbPolicy { after_sb_0pri: p0s[p0], after_sb_1pri: p1s[p1], after_sb_2pri: AfterSb2Pri::Disconnect };
        let here = resolve_split_brain(&policy, &a, &b);
        let there = resolve_split_brain(&policy, &b, &a);
        match (here, there) {
            (SbResolution::LocalIsVictim { .. }, SbResolution::PeerIsVictim { .. })
            | (SbResolution::PeerIsVictim { .. }, SbResolution::LocalIsVictim { .. })
            | (SbResolution::Disconnect { .. }, SbResolution::Disconnect { .. }) => {}
            (x, y) => prop_assert!(false, "disagree: {:?} vs {:?}", x, y),
        }
    }
}
