//! A frame delivered to the peer machine as head + block
//! (`Event::FrameReceived`): the block buffer the transport read it into is
//! the very buffer `SubmitPeerWrite` hands to the disk (no copy on the way),
//! and with `data-integrity-alg` a corrupted block byte still ends the
//! connection. Drives a real connected pair (see `common`) and splits the
//! primary's encoded frame where `wire::block_range` says, as the daemon's
//! frame reader does.

mod common;

use common::*;
use drbdd_blockio::AlignedBuf;
use drbdd_replication::ack::Protocol;
use drbdd_replication::peer::{Action, Event};
use drbdd_replication::wire::{block_range, BlockRange, Packet, Payload, FEATURE_DATA_INTEGRITY};

/// A connected pair, and the frame of a 64 KiB write the primary sends.
fn pair_and_data_frame(integrity: bool) -> (Pair, Vec<u8>) {
    let mut cfg_b = config(1, 0, None, Protocol::C);
    if integrity {
        cfg_b.handshake.features |= FEATURE_DATA_INTEGRITY;
    }
    let mut p = primary_secondary(config(0, 1, None, Protocol::C), cfg_b);
    p.connect();
    let actions = p.nodes[0].peer.handle(Event::LocalWrite {
        id: 1,
        offset_bytes: 8192,
        len_bytes: 65_536,
        flags: 0,
        data: vec![0xc3; 65_536].into(),
    });
    let crc = p.nodes[0].peer.frame_crc();
    let mut frame = Vec::new();
    for a in actions {
        if let Action::Send(packet @ Packet::Data { .. }) = a {
            packet.encode_framed(&mut frame, crc);
        }
    }
    (p, frame)
}

fn feed_split(p: &mut Pair, frame: &[u8]) -> (Vec<Action>, *const u8) {
    let BlockRange::Block { start, .. } = block_range(frame) else {
        panic!("a data frame: {:?}", block_range(frame));
    };
    let block = AlignedBuf::from_slice(&frame[start..]);
    let ptr = block.as_ptr();
    let actions = p.nodes[1].peer.handle(Event::FrameReceived {
        now_ms: p.now_ms,
        head: &frame[..start],
        block,
    });
    (actions, ptr)
}

#[test]
fn the_peer_write_gets_the_very_buffer_the_block_was_received_into() {
    for integrity in [false, true] {
        let (mut p, frame) = pair_and_data_frame(integrity);
        let (actions, ptr) = feed_split(&mut p, &frame);
        let writes: Vec<_> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::SubmitPeerWrite {
                    offset_bytes, data, ..
                } => Some((offset_bytes, data)),
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 1, "integrity {integrity}");
        let (offset, data) = writes.into_iter().next().unwrap();
        assert_eq!(offset, 8192);
        assert!(data.iter().all(|&b| b == 0xc3));
        let Payload::Aligned(buf) = data else {
            panic!("the block stays in its aligned buffer");
        };
        assert_eq!(buf.as_ptr(), ptr, "integrity {integrity}: no copy");
    }
}

#[test]
fn a_corrupted_block_byte_ends_the_connection_with_data_integrity() {
    let (mut p, mut frame) = pair_and_data_frame(true);
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let (actions, _) = feed_split(&mut p, &frame);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SubmitPeerWrite { .. })),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Disconnect { reason, .. } if reason.contains("checksum mismatch")
        )),
        "{actions:?}"
    );
}

#[test]
fn a_shared_write_buffer_goes_to_the_socket_as_it_is() {
    use drbdd_replication::wire::FrameCrc;
    use std::sync::Arc;
    let mut p = primary_secondary(
        config(0, 1, None, Protocol::C),
        config(1, 0, None, Protocol::C),
    );
    p.connect();
    let mut buf = AlignedBuf::with_capacity(65_536, 65_536);
    buf.as_mut_slice().fill(0x5a);
    let shared = Arc::new(buf);
    let actions = p.nodes[0].peer.handle(Event::LocalWrite {
        id: 1,
        offset_bytes: 8192,
        len_bytes: 65_536,
        flags: 0,
        data: Arc::clone(&shared).into(),
    });
    let mut sent = None;
    for a in actions {
        if let Action::Send(packet @ Packet::Data { .. }) = a {
            let mut head = Vec::new();
            sent = packet.encode_framed_split(&mut head, FrameCrc::WholePayload, 32 * 1024);
        }
    }
    let Some(Payload::Shared(block)) = sent else {
        panic!("the block is sent apart from its head, still shared");
    };
    assert!(
        Arc::ptr_eq(&block, &shared),
        "no copy on the way to the socket"
    );
    drop(block);
    // Once sent, the write's owner gets its buffer back.
    assert!(Arc::try_unwrap(shared).is_ok());
}
