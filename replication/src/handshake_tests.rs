//! Drives two handshakes against each other through the wire codec and
//! proves: agreement on version, size and mirror-image sync decisions; mutual
//! authentication; and every refusal with its reason.

use super::*;
use crate::generation::UUID_JUST_CREATED;
use crate::wire::decode;

fn cfg(local: u8, peer: u8, secret: Option<&str>) -> HandshakeConfig {
    HandshakeConfig {
        resource: "r0".into(),
        local_node_id: local,
        peer_node_id: peer,
        shared_secret: secret.map(|s| s.as_bytes().to_vec()),
        features: 0,
    }
}

fn info(disk: DiskState, backing_bytes: u64, current: u64) -> NodeInfo {
    NodeInfo {
        role: Role::Secondary,
        disk,
        backing_bytes,
        current_bytes: backing_bytes,
        max_io_bytes: 1 << 20,
        gi: GiView {
            current,
            bitmap: 0,
            history: [0; crate::generation::HISTORY_UUIDS],
            crashed_primary: false,
        },
        dirty_blocks: 0,
        promoted_at_ms: 0,
        discard_my_data: false,
    }
}

type Outcome = Result<Box<Agreement>, HandshakeError>;

/// Runs both sides to completion; returns each side's outcome.
fn run(mut a: Handshake, mut b: Handshake) -> (Outcome, Outcome) {
    let mut to_b: Vec<u8> = Vec::new();
    let mut to_a: Vec<u8> = Vec::new();
    a.start().iter().for_each(|p| p.encode_into(&mut to_b));
    b.start().iter().for_each(|p| p.encode_into(&mut to_a));
    let (mut ra, mut rb) = (None, None);
    for _ in 0..20 {
        pump(&mut a, &mut to_a, &mut to_b, &mut ra);
        pump(&mut b, &mut to_b, &mut to_a, &mut rb);
    }
    // A side whose peer refused never finishes; report that as `Finished`.
    let unfinished = || Err(HandshakeError::Finished);
    (ra.unwrap_or_else(unfinished), rb.unwrap_or_else(unfinished))
}

fn pump(
    side: &mut Handshake,
    inbox: &mut Vec<u8>,
    outbox: &mut Vec<u8>,
    result: &mut Option<Outcome>,
) {
    while result.is_none() {
        let Some((packet, used)) = decode(inbox).unwrap() else {
            return;
        };
        inbox.drain(..used);
        match side.on_packet(packet) {
            Ok(HandshakeStep::Continue(out)) => out.iter().for_each(|p| p.encode_into(outbox)),
            Ok(HandshakeStep::Done(out, agreement)) => {
                out.iter().for_each(|p| p.encode_into(outbox));
                *result = Some(Ok(agreement));
            }
            Err(e) => *result = Some(Err(e)),
        }
    }
}

const NONCE_A: [u8; 32] = [1; 32];
const NONCE_B: [u8; 32] = [2; 32];

#[test]
fn matching_secrets_authenticate_both_ways_and_agree() {
    let a = Handshake::new(
        cfg(0, 1, Some("s3cret")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(1, 0, Some("s3cret")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    let (ra, rb) = run(a, b);
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.authenticated && rb.authenticated);
    assert_eq!(ra.decision, SyncDecision::NoSync);
    assert_eq!(ra.peer_node_id, 1);
    assert_eq!(rb.peer_node_id, 0);
    assert_eq!(ra.size_bytes, 1 << 30);
}

#[test]
fn wrong_secret_is_refused_on_both_sides() {
    let a = Handshake::new(
        cfg(0, 1, Some("s3cret")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(1, 0, Some("guess")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    let (ra, rb) = run(a, b);
    assert_eq!(ra.unwrap_err(), HandshakeError::AuthFailed);
    assert_eq!(rb.unwrap_err(), HandshakeError::AuthFailed);
}

#[test]
fn secret_on_one_side_only_is_refused() {
    let a = Handshake::new(
        cfg(0, 1, Some("s3cret")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(1, 0, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    let (ra, rb) = run(a, b);
    assert_eq!(ra.unwrap_err(), HandshakeError::SecretMissingOnPeer);
    assert_eq!(rb.unwrap_err(), HandshakeError::SecretMissingLocally);
}

#[test]
fn no_secret_on_either_side_connects_unauthenticated() {
    let a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(1, 0, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    let (ra, _) = run(a, b);
    assert!(!ra.unwrap().authenticated);
}

#[test]
fn state_before_authentication_is_refused() {
    let mut a = Handshake::new(
        cfg(0, 1, Some("s3cret")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    a.start();
    let hello = Packet::Hello {
        protocol_min: PROTOCOL_VERSION_MIN,
        protocol_max: PROTOCOL_VERSION_MAX,
        node_id: 1,
        resource: "r0".into(),
        features: FEATURE_AUTH,
    };
    assert!(matches!(a.on_packet(hello), Ok(HandshakeStep::Continue(_))));
    let err = a
        .on_packet(Packet::State {
            role: Role::Primary,
            disk: DiskState::UpToDate,
            flags: 0,
        })
        .unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnexpectedPacket {
            phase: "authenticating",
            got: "State"
        }
    );
}

#[test]
fn reflected_challenge_is_refused() {
    let mut a = Handshake::new(
        cfg(0, 1, Some("s3cret")),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    a.start();
    let hello = Packet::Hello {
        protocol_min: PROTOCOL_VERSION_MIN,
        protocol_max: PROTOCOL_VERSION_MAX,
        node_id: 1,
        resource: "r0".into(),
        features: FEATURE_AUTH,
    };
    a.on_packet(hello).unwrap();
    assert_eq!(
        a.on_packet(Packet::AuthChallenge { nonce: NONCE_A })
            .unwrap_err(),
        HandshakeError::AuthFailed
    );
}

#[test]
fn wrong_resource_unexpected_node_and_duplicate_id_are_refused() {
    let mut other = cfg(1, 0, None);
    other.resource = "r1".into();
    let a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(other, info(DiskState::UpToDate, 1 << 30, 0x10), NONCE_B);
    assert!(matches!(
        run(a, b).0,
        Err(HandshakeError::WrongResource { .. })
    ));

    let a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(2, 0, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    assert_eq!(
        run(a, b).0.unwrap_err(),
        HandshakeError::UnexpectedNode {
            expected: 1,
            got: 2
        }
    );

    let a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    assert_eq!(run(a, b).0.unwrap_err(), HandshakeError::DuplicateNodeId(0));
}

#[test]
fn no_common_protocol_version_is_refused() {
    let mut a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_A,
    );
    a.start();
    let hello = Packet::Hello {
        protocol_min: 7,
        protocol_max: 9,
        node_id: 1,
        resource: "r0".into(),
        features: 0,
    };
    assert!(matches!(
        a.on_packet(hello),
        Err(HandshakeError::NoCommonVersion { peer_min: 7, .. })
    ));
}

#[test]
fn smaller_device_is_used_when_no_data_is_cut() {
    let a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::Inconsistent, 2 << 30, UUID_JUST_CREATED),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(1, 0, None),
        info(DiskState::Inconsistent, 1 << 30, UUID_JUST_CREATED),
        NONCE_B,
    );
    let (ra, rb) = run(a, b);
    assert_eq!(ra.unwrap().size_bytes, 1 << 30);
    assert_eq!(rb.unwrap().decision, SyncDecision::BothJustCreated);
}

#[test]
fn device_smaller_than_peers_up_to_date_data_is_refused() {
    let a = Handshake::new(
        cfg(0, 1, None),
        info(DiskState::UpToDate, 2 << 30, 0x10),
        NONCE_A,
    );
    let b = Handshake::new(
        cfg(1, 0, None),
        info(DiskState::Inconsistent, 1 << 30, UUID_JUST_CREATED),
        NONCE_B,
    );
    let (ra, rb) = run(a, b);
    assert!(matches!(ra, Err(HandshakeError::PeerDeviceTooSmall { .. })));
    assert!(matches!(
        rb,
        Err(HandshakeError::LocalDeviceTooSmall { .. })
    ));
}

#[test]
fn sides_reach_mirror_sync_decisions() {
    let mut ahead = info(DiskState::UpToDate, 1 << 30, 0x20);
    ahead.gi.bitmap = 0x10;
    let a = Handshake::new(cfg(0, 1, None), ahead, NONCE_A);
    let b = Handshake::new(
        cfg(1, 0, None),
        info(DiskState::UpToDate, 1 << 30, 0x10),
        NONCE_B,
    );
    let (ra, rb) = run(a, b);
    assert_eq!(ra.unwrap().decision, SyncDecision::SourceBitmap);
    assert_eq!(rb.unwrap().decision, SyncDecision::TargetBitmap);
}

#[test]
fn different_replication_protocols_are_refused() {
    let mut ca = cfg(0, 1, None);
    ca.features = crate::wire::FEATURE_PROTOCOL_C;
    let mut cb = cfg(1, 0, None);
    cb.features = crate::wire::FEATURE_PROTOCOL_A;
    let a = Handshake::new(ca, info(DiskState::UpToDate, 1 << 30, 0x10), NONCE_A);
    let b = Handshake::new(cb, info(DiskState::UpToDate, 1 << 30, 0x10), NONCE_B);
    assert!(matches!(
        run(a, b).0,
        Err(HandshakeError::ProtocolMismatch {
            local: "protocol C",
            peer: "protocol A"
        })
    ));
}
