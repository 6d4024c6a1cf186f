//! Proves when the peer leg of a write completes under protocols A, B and C,
//! how epochs are closed by barriers, the max-buffers bound, and that a lost
//! connection turns every unconfirmed write into out-of-sync.

use super::*;

fn completes(actions: &[AckAction], id: WriteId, outcome: PeerOutcome) -> bool {
    actions.contains(&AckAction::CompleteWrite { id, outcome })
}

fn barriers(actions: &[AckAction]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            AckAction::Send(Packet::Barrier { epoch }) => Some(*epoch),
            _ => None,
        })
        .collect()
}

#[test]
fn protocol_a_completes_when_handed_to_the_send_path() {
    let mut t = AckTracker::new(Protocol::A, 8);
    let (_, out) = t.submit_write(7, 0, 4096, 0, vec![0; 4096]).unwrap();
    assert!(matches!(out[0], AckAction::Send(Packet::Data { .. })));
    assert!(completes(&out, 7, PeerOutcome::Acked));
}

#[test]
fn protocol_b_completes_on_recv_ack() {
    let mut t = AckTracker::new(Protocol::B, 8);
    let (seq, out) = t.submit_write(7, 0, 4096, 0, vec![0; 4096]).unwrap();
    assert!(!completes(&out, 7, PeerOutcome::Acked));
    assert!(completes(
        &t.on_recv_ack(seq).unwrap(),
        7,
        PeerOutcome::Acked
    ));
}

#[test]
fn protocol_c_completes_only_after_write_ack() {
    let mut t = AckTracker::new(Protocol::C, 8);
    let (seq, out) = t.submit_write(7, 0, 4096, 0, vec![0; 4096]).unwrap();
    assert!(!completes(&out, 7, PeerOutcome::Acked));
    assert!(t.on_recv_ack(seq).unwrap().is_empty());
    t.local_done(seq);
    assert!(completes(
        &t.on_write_ack(seq).unwrap(),
        7,
        PeerOutcome::Acked
    ));
    // Written is not durable: the entry stays until the peer's flush.
    assert_eq!(t.in_flight(), 1);
    let closed = t.close_idle_epoch();
    assert!(closed.contains(&AckAction::Send(Packet::Barrier { epoch: 1 })));
    assert!(t.on_barrier_ack(1).unwrap().is_empty());
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn flush_after_write_ack_waits_for_the_peers_barrier_ack() {
    // Found by the cluster simulation (drbdd-sim seed 8): a WriteAck retired
    // the entry, so a later flush completed at once although the write was
    // only in the peer's volatile cache.
    let mut t = AckTracker::new(Protocol::C, 8);
    let (seq, _) = t.submit_write(7, 0, 4096, 0, vec![0; 4096]).unwrap();
    t.local_done(seq);
    t.on_write_ack(seq).unwrap();
    let (_, out) = t.submit_flush(8).unwrap();
    assert!(!completes(&out, 8, PeerOutcome::Acked));
    assert!(completes(
        &t.on_barrier_ack(1).unwrap(),
        8,
        PeerOutcome::Acked
    ));
}

#[test]
fn write_acked_but_not_barrier_acked_is_out_of_sync_after_connection_loss() {
    let mut t = AckTracker::new(Protocol::C, 8);
    let (seq, _) = t.submit_write(7, 4096, 4096, 0, vec![0; 4096]).unwrap();
    t.local_done(seq);
    t.on_write_ack(seq).unwrap();
    let lost = t.connection_lost();
    assert!(lost.contains(&AckAction::MarkOutOfSync {
        offset_bytes: 4096,
        len_bytes: 4096
    }));
}

#[test]
fn write_after_an_observed_completion_starts_a_new_epoch() {
    let mut t = AckTracker::new(Protocol::C, 8);
    let (s1, _) = t.submit_write(1, 0, 512, 0, vec![0; 512]).unwrap();
    let (_, out) = t.submit_write(2, 512, 512, 0, vec![0; 512]).unwrap();
    assert!(
        barriers(&out).is_empty(),
        "concurrent writes share an epoch"
    );
    t.local_done(s1);
    t.on_write_ack(s1).unwrap();
    let (_, out) = t.submit_write(3, 1024, 512, 0, vec![0; 512]).unwrap();
    assert_eq!(barriers(&out), vec![1]);
    assert!(matches!(
        out[1],
        AckAction::Send(Packet::Data { epoch: 2, .. })
    ));
}

#[test]
fn flush_closes_the_epoch_and_completes_on_its_barrier_ack() {
    let mut t = AckTracker::new(Protocol::B, 8);
    let (s1, _) = t.submit_write(1, 0, 512, 0, vec![0; 512]).unwrap();
    t.local_done(s1);
    let (_, out) = t.submit_flush(9).unwrap();
    assert_eq!(barriers(&out), vec![1]);
    assert!(!completes(&out, 9, PeerOutcome::Acked));
    let out = t.on_barrier_ack(1).unwrap();
    assert!(completes(&out, 9, PeerOutcome::Acked));
}

#[test]
fn protocol_a_flush_sends_the_barrier_but_does_not_wait_for_the_peer() {
    let mut t = AckTracker::new(Protocol::A, 8);
    let (s1, _) = t.submit_write(1, 0, 512, 0, vec![0; 512]).unwrap();
    t.local_done(s1);
    let (_, out) = t.submit_flush(9).unwrap();
    assert_eq!(barriers(&out), vec![1], "the peer still sees the epoch end");
    assert!(completes(&out, 9, PeerOutcome::Acked));
    t.on_barrier_ack(1).unwrap();
    assert_eq!(t.in_flight(), 0, "barrier ack retires protocol A writes");
}

#[test]
fn flush_with_nothing_outstanding_completes_at_once() {
    let mut t = AckTracker::new(Protocol::C, 8);
    let (_, out) = t.submit_flush(9).unwrap();
    assert!(completes(&out, 9, PeerOutcome::Acked));
}

#[test]
fn table_is_bounded_by_max_buffers() {
    let mut t = AckTracker::new(Protocol::C, 2);
    t.submit_write(1, 0, 512, 0, vec![0; 512]).unwrap();
    t.submit_write(2, 0, 512, 0, vec![0; 512]).unwrap();
    assert_eq!(
        t.submit_write(3, 0, 512, 0, vec![0; 512]),
        Err(AckError::Congested { in_flight: 2 })
    );
}

#[test]
fn connection_loss_marks_unconfirmed_writes_out_of_sync() {
    let mut t = AckTracker::new(Protocol::A, 8);
    let (s1, _) = t.submit_write(1, 0, 4096, 0, vec![0; 4096]).unwrap();
    t.local_done(s1);
    let mut c = AckTracker::new(Protocol::C, 8);
    c.submit_write(2, 8192, 4096, 0, vec![0; 4096]).unwrap();
    let out = t.connection_lost();
    assert_eq!(
        out,
        vec![AckAction::MarkOutOfSync {
            offset_bytes: 0,
            len_bytes: 4096
        }]
    );
    let out = c.connection_lost();
    assert_eq!(
        out,
        vec![
            AckAction::MarkOutOfSync {
                offset_bytes: 8192,
                len_bytes: 4096
            },
            AckAction::CompleteWrite {
                id: 2,
                outcome: PeerOutcome::OutOfSync
            }
        ]
    );
}

#[test]
fn acks_for_unknown_sequence_numbers_are_protocol_errors() {
    let mut t = AckTracker::new(Protocol::C, 8);
    assert_eq!(t.on_write_ack(99), Err(AckError::UnknownSeq(99)));
    assert_eq!(t.on_barrier_ack(1), Err(AckError::UnknownEpoch(1)));
}

#[test]
fn neg_ack_makes_the_range_out_of_sync() {
    let mut t = AckTracker::new(Protocol::C, 8);
    let (seq, _) = t.submit_write(4, 0, 4096, 0, vec![0; 4096]).unwrap();
    assert!(completes(
        &t.on_neg_ack(seq).unwrap(),
        4,
        PeerOutcome::OutOfSync
    ));
}
