//! Two `Peer` state machines driven against each other over an in-memory
//! transport with a virtual clock (see `common`). Proves, end to end through
//! the wire codec: the handshake both ways and refusal of a wrong secret; when
//! writes complete under protocols A, B and C; that a dropped connection turns
//! unacknowledged writes into out-of-sync bits; that a bitmap resync moves
//! exactly the dirty blocks and a full sync moves all of them; that an
//! application write during resync is never overwritten by older resync data;
//! split-brain detection with and without automatic recovery; that an
//! Outdated node of the same generation as an UpToDate peer becomes UpToDate;
//! that two Inconsistent nodes stay connected without a resync; and that a
//! connected Secondary follows a new data generation of its Primary; that a
//! write the peer fails to store is reported (`PeerWriteFailed`) before it
//! completes; that received writes count as unfinished until they are on
//! disk (promotion waits for them); that attaching a disk while connected,
//! or a disk state change during the handshake, starts a new handshake;
//! and that `data-integrity-alg` on either side extends the frame CRC both
//! ways.

mod common;

use common::*;
use drbdd_replication::ack::{PeerOutcome, Protocol};
use drbdd_replication::generation::{AfterSb0Pri, GiView, SbPolicy, SyncDecision};
use drbdd_replication::peer::Event;
use drbdd_replication::state::{ConnState, DiskState, ReplState, Role};
use drbdd_replication::wire::{FrameCrc, Packet, FEATURE_DATA_INTEGRITY};

fn pair(protocol: Protocol, secret_a: Option<&str>, secret_b: Option<&str>) -> Pair {
    primary_secondary(
        config(0, 1, secret_a, protocol),
        config(1, 0, secret_b, protocol),
    )
}

fn assert_established(p: &Pair) {
    for n in &p.nodes {
        let s = n.peer.status();
        assert_eq!(
            (s.conn, s.repl),
            (ConnState::Connected, ReplState::Established),
            "{:?}",
            n.logs
        );
    }
}

#[test]
fn handshake_with_matching_secret_connects_both_ways() {
    let mut p = pair(Protocol::C, Some("s3cret"), Some("s3cret"));
    p.connect();
    assert_established(&p);
    assert_eq!(p.nodes[0].peer.status().peer_role, Role::Secondary);
    assert_eq!(p.nodes[1].peer.status().peer_role, Role::Primary);
    assert_eq!(
        p.nodes[0].peer.agreement().unwrap().decision,
        SyncDecision::NoSync
    );
    assert!(p.nodes[0].peer.agreement().unwrap().authenticated);
}

#[test]
fn wrong_secret_is_refused_and_both_stay_standalone() {
    let mut p = pair(Protocol::C, Some("s3cret"), Some("guess"));
    p.connect();
    for n in &p.nodes {
        assert_eq!(n.peer.status().conn, ConnState::StandAlone);
        let (reason, retry) = &n.disconnects[0];
        assert!(reason.contains("authentication"), "{reason}");
        assert!(!retry);
    }
    assert!(!p.nodes[1]
        .sent
        .iter()
        .any(|pk| matches!(pk, Packet::State { .. } | Packet::Data { .. })));
}

#[test]
fn unauthenticated_connection_is_allowed_with_a_warning() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    assert_established(&p);
    assert!(p.nodes[0]
        .logs
        .iter()
        .any(|l| l.contains("NOT authenticated")));
}

#[test]
fn protocol_c_write_completes_only_after_peer_write_ack() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 3, 0xAA);
    p.run();
    assert_eq!(
        p.nodes[0].completed(1),
        None,
        "peer's disk write not done yet"
    );
    p.nodes[1].release_held();
    p.run();
    assert_eq!(p.nodes[0].completed(1), Some(PeerOutcome::Acked));
    assert_eq!(p.nodes[1].block(3), p.nodes[0].block(3));
}

#[test]
fn data_integrity_alg_on_either_side_checksums_data_blocks_both_ways() {
    let mut plain = pair(Protocol::C, None, None);
    plain.connect();
    assert_established(&plain);
    for n in &plain.nodes {
        assert_eq!(n.peer.frame_crc(), FrameCrc::SkipDataBlock);
    }

    let mut cfg_b = config(1, 0, None, Protocol::C);
    cfg_b.handshake.features |= FEATURE_DATA_INTEGRITY;
    let mut p = primary_secondary(config(0, 1, None, Protocol::C), cfg_b);
    p.connect();
    assert_established(&p);
    for n in &p.nodes {
        assert_eq!(n.peer.frame_crc(), FrameCrc::WholePayload);
    }
    p.app_write(0, 1, 2, 0x5A);
    p.run();
    assert_eq!(p.nodes[0].completed(1), Some(PeerOutcome::Acked));
    assert_eq!(p.nodes[1].block(2), p.nodes[0].block(2));
}

#[test]
fn packets_split_anywhere_by_the_transport_are_decoded_alike() {
    // 7 bytes splits headers and payloads at ever different places.
    for chunk in [1, 7, 4096 + 16, 3 * 4096] {
        let mut p = pair(Protocol::C, Some("s3cret"), Some("s3cret"));
        p.rx_chunk_bytes = Some(chunk);
        p.connect();
        assert_established(&p);
        for id in 1..=8 {
            p.app_write(0, id, id % 5, u8::try_from(id).unwrap());
        }
        p.run();
        for id in 1..=8 {
            assert_eq!(
                p.nodes[0].completed(id),
                Some(PeerOutcome::Acked),
                "chunk {chunk}"
            );
        }
        assert_eq!(p.nodes[1].disk, p.nodes[0].disk, "chunk {chunk}");
    }
}

#[test]
fn a_write_the_peer_fails_reports_the_lost_copy_before_it_completes() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.nodes[1].fail_peer_writes = true;
    p.app_write(0, 1, 3, 0xAA);
    p.run();
    assert_eq!(p.nodes[0].completed(1), Some(PeerOutcome::OutOfSync));
    let completed_at = p.nodes[0]
        .completed
        .iter()
        .position(|(id, _)| *id == 1)
        .unwrap();
    // The caller persists a new data generation on PeerWriteFailed: it must
    // come before the write's completion, in the same batch.
    assert_eq!(p.nodes[0].peer_write_failed_at, vec![completed_at]);
    assert!(p.nodes[0].persisted_bitmap.is_set(3));
    assert_eq!(p.nodes[1].block(3), &[0u8; 4096][..]);
    // A write the peer does store completes as usual, with no report.
    p.nodes[1].fail_peer_writes = false;
    p.app_write(0, 2, 4, 0xBB);
    p.run();
    assert_eq!(p.nodes[0].completed(2), Some(PeerOutcome::Acked));
    assert_eq!(p.nodes[0].peer_write_failed_at.len(), 1);
}

#[test]
fn received_writes_count_as_unfinished_until_they_are_on_disk() {
    let mut p = pair(Protocol::A, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 3, 0xAA);
    p.app_write(0, 2, 3, 0xBB); // same block: held behind the first
    p.run();
    assert_eq!(p.nodes[0].completed(2), Some(PeerOutcome::Acked));
    assert_eq!(p.nodes[1].peer.applying_peer_writes(), 2);
    p.nodes[1].release_held();
    p.run();
    p.nodes[1].release_held();
    p.run();
    assert_eq!(p.nodes[1].peer.applying_peer_writes(), 0);
    assert_eq!(p.nodes[1].block(3), &[0xBB; 4096][..]);
}

#[test]
fn a_disk_state_change_during_the_handshake_starts_it_over() {
    let mut p = pair(Protocol::C, None, None);
    let disk = |disk| Event::LocalDiskChanged { disk };
    p.event(1, disk(DiskState::Outdated));
    p.start_connect();
    // Another peer's resync ends while this handshake runs: it announced
    // Outdated, which would stay the peer's view of us.
    p.event(1, disk(DiskState::UpToDate));
    let (reason, retry) = p.nodes[1].disconnects.last().cloned().unwrap();
    assert!(reason.contains("during the handshake") && retry, "{reason}");
    p.cut();
    p.connect();
    assert_established(&p);
    assert_eq!(p.nodes[0].peer.status().peer_disk, DiskState::UpToDate);
}

#[test]
fn attaching_a_disk_while_connected_starts_a_new_handshake() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    let disk = |disk| Event::LocalDiskChanged { disk };
    p.event(1, disk(DiskState::Diskless));
    p.run();
    assert!(
        p.nodes[1].disconnects.is_empty(),
        "detaching keeps the link"
    );
    assert_eq!(p.nodes[0].peer.status().peer_disk, DiskState::Diskless);
    p.event(1, disk(DiskState::UpToDate));
    let (reason, retry) = p.nodes[1].disconnects.last().cloned().unwrap();
    assert!(reason.contains("attached") && retry, "{reason} {retry}");
    p.connect();
    assert_established(&p);
    assert_eq!(p.nodes[0].peer.status().peer_disk, DiskState::UpToDate);
}

#[test]
fn protocol_a_write_completes_when_sent() {
    let mut p = pair(Protocol::A, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 3, 0xAA);
    assert_eq!(p.nodes[0].completed(1), Some(PeerOutcome::Acked));
}

#[test]
fn protocol_b_write_completes_on_receive_ack() {
    let mut p = pair(Protocol::B, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 3, 0xAA);
    assert_eq!(p.nodes[0].completed(1), None, "not yet received");
    p.run();
    assert_eq!(
        p.nodes[0].completed(1),
        Some(PeerOutcome::Acked),
        "received, not yet on disk"
    );
}

#[test]
fn flush_completes_after_the_peer_acknowledges_the_barrier() {
    // Protocol B (and C) flushes wait for the peer's disk; protocol A ones do
    // not (see ack.rs and the process test replication_protocol_wait.rs).
    let mut p = pair(Protocol::B, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 3, 0xAA);
    p.event(0, Event::LocalFlush { id: 2 });
    p.run();
    assert_eq!(p.nodes[0].completed(2), None, "peer write not on disk yet");
    p.nodes[1].release_held();
    p.run();
    assert!(p.nodes[1].sent.iter().any(|pk| matches!(
        pk,
        Packet::BarrierAck {
            epoch: 1,
            writes: 1
        }
    )));
    assert_eq!(p.nodes[0].completed(2), Some(PeerOutcome::Acked));
}

#[test]
fn connection_drop_marks_unacknowledged_writes_out_of_sync() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 5, 0xAA);
    p.run();
    p.cut();
    assert_eq!(p.nodes[0].completed(1), Some(PeerOutcome::OutOfSync));
    assert!(p.nodes[0].peer.bitmap().is_set(5));
    assert!(p.nodes[0].persisted_bitmap.is_set(5));
    assert_eq!(p.nodes[0].peer.status().conn, ConnState::Connecting);
}

#[test]
fn writes_while_disconnected_are_out_of_sync_and_resync_moves_exactly_them() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.cut();
    for (id, block) in [(1, 2u64), (2, 3), (3, 40)] {
        p.app_write(0, id, block, 0xB0 + u8::try_from(id).unwrap());
    }
    assert_eq!(p.nodes[0].peer.bitmap().count(), 3);
    // The resource starts a new data generation for the primary that lost its peer.
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.start_new_generation(uuid, &[0]);
    let st = local_state(Role::Primary, DiskState::UpToDate, &p.nodes[0].gens);
    p.nodes[0].peer.set_local(st);
    p.connect();
    p.advance(300);
    assert_established(&p);
    assert_eq!(resync_blocks_sent(&p.nodes[0]), vec![2, 3, 40]);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[0].peer.bitmap().count(), 0);
    assert_eq!(p.nodes[1].gens.current, p.nodes[0].gens.current);
    assert_eq!(p.nodes[0].peer.status().peer_disk, DiskState::UpToDate);
}

#[test]
fn just_created_peer_gets_a_full_sync() {
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Primary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0x5A),
    );
    let b = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::Inconsistent,
        just_created(),
        disk(0),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    p.advance(1000);
    assert_eq!(resync_blocks_sent(&p.nodes[0]).len(), 64);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[1].gens.current, 0x10);
    assert_established(&p);
}

#[test]
fn application_write_during_resync_is_not_overwritten_by_older_resync_data() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.cut();
    p.app_write(0, 1, 5, 0x11);
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.start_new_generation(uuid, &[0]);
    let st = local_state(Role::Primary, DiskState::UpToDate, &p.nodes[0].gens);
    p.nodes[0].peer.set_local(st);
    // The source's read of block 5 completes late, carrying the old data 0x11.
    p.nodes[0].hold_resync_reads = true;
    p.connect();
    assert_eq!(p.nodes[1].peer.status().repl, ReplState::SyncTarget);
    assert_eq!(p.nodes[0].held.len(), 1, "read for block 5 in flight");
    // Meanwhile the application writes block 5 again on the primary.
    p.app_write(0, 2, 5, 0x22);
    p.run();
    p.nodes[0].hold_resync_reads = false;
    p.nodes[0].release_held();
    p.advance(300);
    assert_eq!(
        p.nodes[1].block(5),
        &[0x22; 4096][..],
        "old resync data must not win"
    );
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert!(p.nodes[1]
        .logs
        .iter()
        .any(|l| l.contains("older than an application write")));
    assert_established(&p);
}

fn split_brain_pair(policy: AfterSb0Pri) -> Pair {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.cut();
    // Both nodes are promoted while apart; only node 0 writes.
    for i in 0..2 {
        let uuid = p.fresh_uuid();
        p.nodes[i].gens.start_new_generation(uuid, &[0]);
    }
    p.app_write(0, 1, 7, 0x77);
    p.app_write(0, 2, 8, 0x78);
    for i in 0..2 {
        // Both demoted again before reconnecting: the 0pri policy applies.
        let st = local_state(Role::Secondary, DiskState::UpToDate, &p.nodes[i].gens);
        p.nodes[i].peer.set_local(st);
        p.nodes[i].peer.set_sb_policy(SbPolicy {
            after_sb_0pri: policy,
            ..SbPolicy::default()
        });
    }
    p
}

#[test]
fn split_brain_is_detected_and_both_stay_standalone_by_default() {
    let mut p = split_brain_pair(AfterSb0Pri::Disconnect);
    p.connect();
    for n in &p.nodes {
        assert_eq!(n.peer.status().conn, ConnState::StandAlone);
        assert!(
            n.logs.iter().any(|l| l.contains("Split-Brain detected")),
            "{:?}",
            n.logs
        );
    }
}

#[test]
fn split_brain_with_discard_zero_changes_resyncs_the_unchanged_node() {
    let mut p = split_brain_pair(AfterSb0Pri::DiscardZeroChanges);
    p.connect();
    p.advance(300);
    assert_established(&p);
    assert_eq!(resync_blocks_sent(&p.nodes[0]), vec![7, 8]);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].gens.current, p.nodes[0].gens.current);
}

#[test]
fn missing_ping_ack_drops_the_connection() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    // Black-hole the link: the peer never answers.
    p.link_up = false;
    p.advance(2000);
    let (reason, retry) = p.nodes[0].disconnects.last().expect("disconnected").clone();
    assert!(reason.contains("PingAck"), "{reason}");
    assert!(retry);
    assert_eq!(p.nodes[0].peer.status().conn, ConnState::Connecting);
}

#[test]
fn writes_beyond_max_buffers_wait_and_are_replicated_in_order() {
    let mut cfg_a = config(0, 1, None, Protocol::C);
    cfg_a.max_buffers = 2;
    let mut p = primary_secondary(cfg_a, config(1, 0, None, Protocol::C));
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    for id in 1..=4u64 {
        p.app_write(0, id, 9, u8::try_from(id).unwrap());
    }
    p.run();
    let data_sent = p.nodes[0]
        .sent
        .iter()
        .filter(|pk| matches!(pk, Packet::Data { .. }))
        .count();
    assert_eq!(data_sent, 2, "only max-buffers writes in flight");
    for _ in 0..4 {
        p.nodes[1].release_held();
        p.run();
    }
    for id in 1..=4u64 {
        assert_eq!(
            p.nodes[0].completed(id),
            Some(PeerOutcome::Acked),
            "write {id}"
        );
    }
    assert_eq!(
        p.nodes[1].block(9),
        &[4u8; 4096][..],
        "last write wins on the peer"
    );
    assert_eq!(p.nodes[0].peer.bitmap().count(), 0);
}

#[test]
fn full_sync_respects_the_resync_rate_and_reports_progress() {
    let mut cfg_b = config(1, 0, None, Protocol::C);
    cfg_b.rate.resync_rate_kib = 40; // 10 blocks per second
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Primary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0x5A),
    );
    let b = Node::new(
        cfg_b,
        Role::Secondary,
        DiskState::Inconsistent,
        just_created(),
        disk(0),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    p.advance(3000);
    assert_eq!(
        p.nodes[1].peer.status().repl,
        ReplState::SyncTarget,
        "64 blocks at 10/s take over 6 s"
    );
    let progress = p.nodes[1].peer.progress().expect("syncing");
    assert!(
        (400..=550).contains(&progress.percent_tenths()),
        "{progress:?}"
    );
    assert!(
        (30_000..=50_000).contains(&progress.rate_bytes_per_s),
        "{progress:?}"
    );
    assert!(progress.eta_s.is_some());
    p.advance(5000);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
}

#[test]
fn handshake_that_never_completes_times_out() {
    let mut p = pair(Protocol::C, None, None);
    p.link_up = true;
    // Only node 0 learns of the connection; node 1 never answers.
    p.event(
        0,
        Event::Connected {
            now_ms: p.now_ms,
            nonce: [9; 32],
            sync_uuid: 0x9900,
        },
    );
    p.link_up = false;
    p.advance(6000);
    let (reason, retry) = p.nodes[0].disconnects.last().expect("gave up").clone();
    assert!(reason.contains("timed out"), "{reason}");
    assert!(retry);
}

#[test]
fn primary_with_older_data_refuses_to_become_sync_target() {
    let mut ahead = gens(0x10);
    ahead.start_new_generation(0x20, &[0]);
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Primary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0),
    );
    let b = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::UpToDate,
        ahead,
        disk(0),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    for n in &p.nodes {
        assert_eq!(n.peer.status().conn, ConnState::StandAlone);
        assert!(
            n.disconnects.iter().any(|(r, _)| r.contains("Primary")),
            "{:?}",
            n.disconnects
        );
    }
    assert_eq!(p.nodes[0].disk, disk(0), "nothing was overwritten");
}

#[test]
fn one_flush_acknowledges_every_epoch_that_was_done_when_it_was_issued() {
    let mut p = pair(Protocol::A, None, None);
    p.connect();
    p.nodes[1].hold_peer_flushes = true;
    p.app_write(0, 1, 1, 0x11); // protocol A: each write completes at once,
    p.app_write(0, 2, 2, 0x22); // so each one starts a new epoch
    p.run();
    // Epoch 1 is closed and done: its flush is issued and held.
    assert!(matches!(p.nodes[1].held[..], [Io::PeerFlush(1)]));
    for id in 3..=5 {
        p.app_write(0, id, id, 0x30 + u8::try_from(id).unwrap());
    }
    p.run();
    // Epochs 2..=4 became ready while the first flush was in flight.
    assert_eq!(p.nodes[1].held.len(), 1, "one flush at a time");
    p.nodes[1].release_held();
    p.run();
    assert!(
        matches!(p.nodes[1].held[..], [Io::PeerFlush(4)]),
        "one flush covers epochs 2..=4: {:?}",
        p.nodes[1].held
    );
    let acks = |p: &Pair| -> Vec<u32> {
        p.nodes[1]
            .sent
            .iter()
            .filter_map(|pk| match pk {
                Packet::BarrierAck { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .collect()
    };
    assert_eq!(acks(&p), vec![1], "epochs 2..=4 are not durable yet");
    p.nodes[1].release_held();
    p.run();
    assert_eq!(
        acks(&p),
        vec![1, 2, 3, 4],
        "each epoch acknowledged in order"
    );
    assert_eq!(p.nodes[1].disk, p.nodes[0].disk);
}

#[test]
fn peer_does_not_start_the_next_epoch_before_the_previous_one_is_on_disk() {
    let mut p = pair(Protocol::A, None, None);
    p.connect();
    p.nodes[1].hold_peer_writes = true;
    p.app_write(0, 1, 1, 0x11); // completes at once (protocol A): the app saw it
    p.app_write(0, 2, 2, 0x22); // so this one starts a new epoch
    p.run();
    let barriers = p.nodes[0]
        .sent
        .iter()
        .filter(|pk| matches!(pk, Packet::Barrier { .. }))
        .count();
    assert_eq!(barriers, 1);
    assert_eq!(
        p.nodes[1].held.len(),
        1,
        "second write waits for the first epoch"
    );
    p.nodes[1].release_held();
    p.run();
    assert_eq!(
        p.nodes[1].held.len(),
        1,
        "now the second write is submitted"
    );
    p.nodes[1].release_held();
    p.run();
    assert_eq!(p.nodes[1].block(2), &[0x22; 4096][..]);
    assert!(p.nodes[1].sent.iter().any(|pk| matches!(
        pk,
        Packet::BarrierAck {
            epoch: 1,
            writes: 1
        }
    )));
}

#[test]
fn split_brain_is_resolved_manually_with_discard_my_data_on_the_victim() {
    let mut p = split_brain_pair(AfterSb0Pri::Disconnect);
    p.app_write(1, 3, 20, 0x20); // the victim changed something too
    p.connect();
    assert_eq!(p.nodes[1].peer.status().conn, ConnState::StandAlone);
    // User's guide 13.3: `connect --discard-my-data` on the victim, `connect` on the survivor.
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
    p.connect();
    p.advance(300);
    assert_established(&p);
    assert_eq!(
        resync_blocks_sent(&p.nodes[0]),
        vec![7, 8, 20],
        "survivor's changes plus the victim's rolled back"
    );
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].gens.current, p.nodes[0].gens.current);
}

#[test]
fn primary_force_on_a_connected_fresh_pair_starts_the_initial_full_sync() {
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Secondary,
        DiskState::Inconsistent,
        just_created(),
        disk(0x33),
    );
    let b = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::Inconsistent,
        just_created(),
        disk(0),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(
        p.nodes[0].peer.agreement().unwrap().decision,
        SyncDecision::BothJustCreated
    );
    assert_established(&p);
    // `primary --force` on node 0: the resource starts a new generation.
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.start_new_generation(uuid, &[]);
    let local = local_state(Role::Primary, DiskState::UpToDate, &p.nodes[0].gens);
    p.event(
        0,
        Event::StartFullSync {
            as_source: true,
            local,
        },
    );
    p.run();
    p.advance(1000);
    assert_established(&p);
    assert_eq!(resync_blocks_sent(&p.nodes[0]).len(), 64);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[1].gens.current, uuid);
    assert_eq!(p.nodes[1].peer.status().peer_role, Role::Primary);
}

#[test]
fn invalidate_on_the_secondary_pulls_every_block_again() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    p.nodes[1].disk[4096] = 0xEE; // silent corruption on the secondary
    let local = local_state(Role::Secondary, DiskState::Inconsistent, &p.nodes[1].gens);
    p.event(
        1,
        Event::StartFullSync {
            as_source: false,
            local,
        },
    );
    p.run();
    p.advance(1000);
    assert_established(&p);
    assert_eq!(resync_blocks_sent(&p.nodes[0]).len(), 64);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
}

#[test]
fn full_sync_onto_a_primary_is_refused_without_disconnecting() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    // Node 1 asks to become source although node 0 (the target) is Primary.
    let local = local_state(Role::Secondary, DiskState::UpToDate, &p.nodes[1].gens);
    p.event(
        1,
        Event::StartFullSync {
            as_source: true,
            local,
        },
    );
    p.run();
    assert_established(&p);
    assert!(
        p.nodes[1].logs.iter().any(|l| l.contains("Primary")),
        "{:?}",
        p.nodes[1].logs
    );
}

#[test]
fn pause_sync_on_either_node_stops_the_resync_until_resumed() {
    let mut cfg_b = config(1, 0, None, Protocol::C);
    cfg_b.rate.resync_rate_kib = 40; // 10 blocks per second
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Primary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0x5A),
    );
    let b = Node::new(
        cfg_b,
        Role::Secondary,
        DiskState::Inconsistent,
        just_created(),
        disk(0),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    p.advance(1000);
    p.event(0, Event::PauseSync);
    p.run();
    assert_eq!(p.nodes[0].peer.status().repl, ReplState::PausedSyncS);
    assert_eq!(p.nodes[1].peer.status().repl, ReplState::PausedSyncT);
    let remaining = p.nodes[1].peer.bitmap().count();
    p.advance(3000);
    assert_eq!(
        p.nodes[1].peer.bitmap().count(),
        remaining,
        "no progress while paused"
    );
    // The pause survives a reconnect.
    p.cut();
    p.connect();
    p.advance(1000);
    assert_eq!(p.nodes[1].peer.status().repl, ReplState::PausedSyncT);
    p.event(0, Event::ResumeSync);
    p.run();
    assert_eq!(p.nodes[1].peer.status().repl, ReplState::SyncTarget);
    p.advance(10_000);
    assert_established(&p);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
}

#[test]
fn outdated_node_meeting_an_up_to_date_peer_of_the_same_generation_becomes_up_to_date() {
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Primary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0x33),
    );
    let b = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::Outdated,
        gens(0x10),
        disk(0x33),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    assert_established(&p);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[0].peer.status().peer_disk, DiskState::UpToDate);
    assert!(resync_blocks_sent(&p.nodes[0]).is_empty());
    assert!(p.nodes.iter().all(|n| n.disconnects.is_empty()));
}

#[test]
fn outdated_node_with_a_different_generation_does_not_become_up_to_date_without_resync() {
    // The peer moved on (new generation tracked in its bitmap): a bitmap
    // resync, not a shortcut to UpToDate.
    let mut ga = gens(0x20);
    ga.bitmaps[0] = 0x10;
    ga.history[0] = 0x10;
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Primary,
        DiskState::UpToDate,
        ga,
        disk(0x33),
    );
    let b = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::Outdated,
        gens(0x10),
        disk(0x33),
    );
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(
        p.nodes[1].peer.agreement().unwrap().decision,
        SyncDecision::TargetBitmap
    );
    p.advance(300);
    assert_established(&p);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[1].gens.current, 0x20);
}

#[test]
fn two_inconsistent_sync_targets_stay_connected_without_resync() {
    // Each took its own connection's sync UUID from the Primary as current:
    // the tuples share nothing, yet neither has data to give.
    for b_gens in [gens(0x5100), just_created()] {
        let a = Node::new(
            config(0, 1, None, Protocol::C),
            Role::Secondary,
            DiskState::Inconsistent,
            gens(0x4100),
            disk(1),
        );
        let b = Node::new(
            config(1, 0, None, Protocol::C),
            Role::Secondary,
            DiskState::Inconsistent,
            b_gens,
            disk(2),
        );
        let mut p = Pair::new(a, b);
        p.connect();
        p.advance(500);
        assert_established(&p);
        for n in &p.nodes {
            let decision = n.peer.agreement().unwrap().decision;
            assert_eq!(decision, SyncDecision::BothInconsistent);
            assert!(n.disconnects.is_empty(), "{:?}", n.disconnects);
            assert_eq!(n.disk_state, DiskState::Inconsistent);
            assert_eq!(n.peer.status().peer_disk, DiskState::Inconsistent);
            assert!(resync_blocks_sent(n).is_empty());
        }
    }
}

#[test]
fn secondary_follows_a_new_generation_of_the_connected_primary() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    // The Primary lost another peer: a new data generation starts, and this
    // still-connected peer learns it without a reconnect.
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.start_new_generation(uuid, &[]);
    let generations = p.nodes[0].gens.view(0);
    p.event(0, Event::GenerationsChanged { generations });
    p.run();
    assert_established(&p);
    assert!(p.nodes.iter().all(|n| n.disconnects.is_empty()));
    assert_eq!(p.nodes[1].gens.current, uuid);
    assert_eq!(p.nodes[1].gens.history[0], 0x10);
    assert_eq!(p.nodes[1].peer.generations().current, uuid);
    // Both name the same data: a reconnect finds nothing to sync.
    p.app_write(0, 1, 7, 0xC7);
    p.run();
    p.cut();
    p.connect();
    assert_established(&p);
    assert_eq!(
        p.nodes[1].peer.agreement().unwrap().decision,
        SyncDecision::NoSync
    );
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
}

#[test]
fn generations_changed_during_the_handshake_starts_it_over() {
    let mut p = pair(Protocol::C, None, None);
    p.link_up = true;
    let actions = p.nodes[0].peer.handle(Event::Connected {
        now_ms: p.now_ms,
        nonce: [1; 32],
        sync_uuid: 0x9900,
    });
    assert!(!actions.is_empty());
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.start_new_generation(uuid, &[]);
    let generations = p.nodes[0].gens.view(0);
    let actions = p.nodes[0]
        .peer
        .handle(Event::GenerationsChanged { generations });
    assert!(
        actions.iter().any(|a| matches!(
            a,
            drbdd_replication::peer::Action::Disconnect { retry: true, .. }
        )),
        "{actions:?}"
    );
    assert_eq!(p.nodes[0].peer.status().conn, ConnState::Connecting);
}

#[test]
fn new_generations_of_a_secondary_are_recorded_but_not_followed() {
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    let uuid = p.fresh_uuid();
    p.nodes[1].gens.start_new_generation(uuid, &[]);
    let generations = p.nodes[1].gens.view(0);
    p.event(1, Event::GenerationsChanged { generations });
    p.run();
    assert_eq!(p.nodes[0].gens.current, 0x10);
    assert_eq!(p.nodes[0].peer.agreement().unwrap().peer.gi.current, uuid);
}

#[test]
fn inconsistent_node_with_a_stranded_sync_uuid_gets_a_full_sync_from_an_up_to_date_peer() {
    // Carol was sync target of a Primary that went away: her current UUID is
    // that Primary's sync UUID, which bob (who finished his resync) never
    // saw. The disk states decide: full sync bob -> carol, not "unrelated".
    let bob = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Secondary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0x5B),
    );
    let carol = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::Inconsistent,
        gens(0x6600),
        disk(0),
    );
    let mut p = Pair::new(bob, carol);
    p.connect();
    assert_eq!(
        p.nodes[1].peer.agreement().unwrap().decision,
        SyncDecision::Unrelated
    );
    p.advance(1000);
    assert_established(&p);
    assert_eq!(resync_blocks_sent(&p.nodes[0]).len(), 64);
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[1].gens.current, 0x10);
}

#[test]
fn unrelated_up_to_date_data_is_still_refused() {
    let mut p = pair(Protocol::C, None, None);
    p.nodes[1] = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::UpToDate,
        gens(0x6600),
        disk(0),
    );
    p.connect();
    for n in &p.nodes {
        assert_eq!(n.peer.status().conn, ConnState::StandAlone);
        assert!(
            n.disconnects[0].0.contains("unrelated"),
            "{:?}",
            n.disconnects
        );
    }
}

#[test]
fn target_of_a_secondary_source_finishes_under_the_generation_the_resync_started_with() {
    let a = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Secondary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0x5A),
    );
    let b = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::Inconsistent,
        just_created(),
        disk(0),
    );
    let mut p = Pair::new(a, b);
    p.nodes[1].hold_resync_writes = true;
    p.connect();
    p.advance(200);
    assert_eq!(p.nodes[1].peer.status().repl, ReplState::SyncTarget);
    // The source followed its Primary (elsewhere) to a new generation whose
    // writes the target never receives.
    let uuid = p.fresh_uuid();
    p.nodes[0].gens.follow_peer_generation(uuid);
    let generations = p.nodes[0].gens.view(0);
    p.event(0, Event::GenerationsChanged { generations });
    p.nodes[1].hold_resync_writes = false;
    p.nodes[1].release_held();
    p.advance(1000);
    assert_established(&p);
    assert_eq!(p.nodes[1].disk_state, DiskState::UpToDate);
    assert_eq!(p.nodes[1].gens.current, 0x10);
}

#[test]
fn data_resynced_from_another_peer_reconnects_a_peer_of_another_generation() {
    // Node 0 was the victim of a split brain with a third node and took its
    // data by a full resync (generation 0x7700, descended from 0x10). Node 1
    // still holds 0x10 and the data node 0 discarded: the link must not
    // stay "in sync"; the handshake gives node 1 node 0's new data.
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    let source = GiView {
        current: 0x7700,
        bitmap: 0,
        history: drbdd_replication::generation::history_of(&[0x10]),
        crashed_primary: false,
    };
    p.nodes[0].gens.resync_finished_as_target(0, &source);
    p.nodes[0].disk = disk(0x3C);
    let generations = p.nodes[0].gens.view(0);
    p.event(0, Event::ResyncedFromAnotherPeer { generations });
    let (reason, retry) = p.nodes[0].disconnects.last().cloned().unwrap();
    assert!(
        reason.contains("resynced from another peer") && retry,
        "{reason}"
    );
    p.cut();
    p.connect();
    p.advance(1000);
    assert_established(&p);
    assert_eq!(
        p.nodes[1].peer.agreement().unwrap().decision,
        SyncDecision::TargetFull
    );
    assert_eq!(p.nodes[0].disk, p.nodes[1].disk);
    assert_eq!(p.nodes[1].gens.current, 0x7700);
}

#[test]
fn data_resynced_from_another_peer_of_the_same_generation_keeps_the_link() {
    // The common case: node 0 resynced from the Primary whose writes node 1
    // receives too; both name the same generation, nothing to compare.
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    let generations = p.nodes[0].gens.view(0);
    p.nodes[0].sent.clear();
    p.event(0, Event::ResyncedFromAnotherPeer { generations });
    p.run();
    assert!(p.nodes.iter().all(|n| n.disconnects.is_empty()));
    assert!(p.nodes[0]
        .sent
        .iter()
        .any(|s| matches!(s, Packet::GenerationIds { .. })));
    assert_established(&p);
}

#[test]
fn a_primary_drops_the_connection_when_the_peer_announces_primary_too() {
    // Both promoted while the other's State was on its way: the Primary
    // must not apply the other Primary's writes over its own.
    let mut p = pair(Protocol::C, None, None);
    p.connect();
    assert_eq!(p.nodes[0].peer.status().peer_role, Role::Secondary);
    p.event(
        1,
        Event::RoleChanged {
            role: Role::Primary,
        },
    );
    p.run();
    let (reason, retry) = p.nodes[0].disconnects.last().cloned().unwrap();
    assert!(reason.contains("two primaries") && retry, "{reason}");
    assert_eq!(p.nodes[0].peer.status().conn, ConnState::Connecting);
}

#[test]
fn an_inconsistent_node_resynced_by_another_peer_does_not_take_an_older_peers_data() {
    // Bob is being resynced by a third node (his current is that resync's
    // sync UUID; his old generation 0x10 went to the history). Carol still
    // holds 0x10: the generations make bob the source. He is Inconsistent,
    // but taking carol's older data would mix it into his: he drops the
    // connection and retries after his own resync (DRBD: "I shall become
    // SyncSource, but I am inconsistent!").
    let mut bob_gens = gens(0x10);
    bob_gens.resync_started_as_target(0, 0x6600);
    let bob = Node::new(
        config(0, 1, None, Protocol::C),
        Role::Secondary,
        DiskState::Inconsistent,
        bob_gens.clone(),
        disk(0x5B),
    );
    let carol = Node::new(
        config(1, 0, None, Protocol::C),
        Role::Secondary,
        DiskState::UpToDate,
        gens(0x10),
        disk(0),
    );
    let mut p = Pair::new(bob, carol);
    let mut local = local_state(Role::Secondary, DiskState::Inconsistent, &bob_gens);
    local.sync_target_of_another = true;
    p.nodes[0].peer.set_local(local);
    p.connect();
    let (reason, retry) = p.nodes[0].disconnects.last().cloned().unwrap();
    assert!(
        reason.contains("another peer resyncs it") && retry,
        "{reason}"
    );
    assert!(
        resync_blocks_sent(&p.nodes[1]).is_empty(),
        "carol sent no data"
    );
    assert_eq!(p.nodes[0].disk, disk(0x5B), "bob's data untouched");
}
