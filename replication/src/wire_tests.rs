//! Proves the codec never panics on arbitrary bytes, round-trips every packet
//! kind, and rejects corrupted or oversized frames with a reason; and that a
//! frame received as head + block (`block_range`, `decode_split`) decodes to
//! the same packet, or the same error, as the frame whole, its block buffer
//! handed on without a copy.

use super::*;
use proptest::prelude::*;

fn arb_role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

fn arb_disk() -> impl Strategy<Value = DiskState> {
    prop::sample::select(DiskState::ALL.to_vec())
}

fn arb_data() -> impl Strategy<Value = Packet> {
    (
        any::<u64>(),
        any::<u32>(),
        0u32..16,
        0u64..(1 << 50),
        prop::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(seq, epoch, flags, offset_bytes, payload)| {
            let no_payload = flags & (DATA_DISCARD | DATA_ZEROES) != 0;
            let len_bytes = if no_payload {
                4096
            } else {
                u32::try_from(payload.len()).unwrap()
            };
            let payload = if no_payload { Vec::new() } else { payload };
            Packet::Data {
                seq,
                epoch,
                flags,
                offset_bytes,
                len_bytes,
                payload: payload.into(),
            }
        })
}

fn arb_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            "[a-z0-9_-]{0,64}",
            any::<u64>()
        )
            .prop_map(
                |(protocol_min, protocol_max, node_id, resource, features)| Packet::Hello {
                    protocol_min,
                    protocol_max,
                    node_id,
                    resource,
                    features
                }
            ),
        any::<[u8; 32]>().prop_map(|nonce| Packet::AuthChallenge { nonce }),
        any::<[u8; 32]>().prop_map(|mac| Packet::AuthResponse { mac }),
        (arb_role(), arb_disk(), any::<u32>()).prop_map(|(role, disk, flags)| Packet::State {
            role,
            disk,
            flags
        }),
        (any::<[u64; 7]>(), 0..=crate::generation::HISTORY_UUIDS).prop_map(|(v, used)| {
            Packet::GenerationIds {
                current: v[0],
                bitmap: v[1],
                // Up to the whole history, the first entries from v.
                history: Box::new(std::array::from_fn(
                    |i| if i < used { v[i % 7] | 1 } else { 0 },
                )),
                dirty_blocks: v[4],
                promoted_at_ms: v[5],
                flags: u32::try_from(v[6] >> 32).unwrap(),
            }
        }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(backing_bytes, current_bytes, max_io_bytes)| {
                Packet::Sizes {
                    backing_bytes,
                    current_bytes,
                    max_io_bytes,
                }
            }
        ),
        arb_data(),
        any::<u64>().prop_map(|seq| Packet::RecvAck { seq }),
        any::<u64>().prop_map(|seq| Packet::WriteAck { seq }),
        any::<u64>().prop_map(|seq| Packet::NegAck { seq }),
        any::<u32>().prop_map(|epoch| Packet::Barrier { epoch }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(epoch, writes)| Packet::BarrierAck { epoch, writes }),
        Just(Packet::Ping),
        Just(Packet::PingAck),
        Just(Packet::ResyncFinished),
        (
            0u64..1000,
            prop::collection::vec(0u64..100_000, 0..64),
            any::<bool>()
        )
            .prop_map(|(start_bit, runs, last)| {
                let total_bits = start_bit + runs.iter().sum::<u64>() + 7;
                Packet::BitmapChunk {
                    start_bit,
                    total_bits,
                    last,
                    runs,
                }
            }),
        (any::<u64>(), 0u64..(1 << 50), 0u32..=MAX_DATA_BYTES).prop_map(
            |(id, offset_bytes, len_bytes)| {
                Packet::ResyncRequest {
                    id,
                    offset_bytes,
                    len_bytes,
                }
            }
        ),
        (
            any::<u64>(),
            0u64..(1 << 50),
            prop::collection::vec(any::<u8>(), 0..1024)
        )
            .prop_map(|(id, offset_bytes, payload)| Packet::ResyncReply {
                id,
                offset_bytes,
                payload: payload.into()
            }),
        any::<u64>().prop_map(|id| Packet::ResyncNegReply { id }),
        any::<u64>().prop_map(|uuid| Packet::SyncUuid { uuid }),
        (0u64..(1 << 50), 0u32..=MAX_DATA_BYTES).prop_map(|(offset_bytes, len_bytes)| {
            Packet::OutOfSync {
                offset_bytes,
                len_bytes,
            }
        }),
        ".{0,60}".prop_map(|reason| Packet::Disconnect { reason }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_payload_behind_valid_header_never_panics(kind in 0u16..24, payload in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&FRAME_VERSION.to_be_bytes());
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        buf.extend_from_slice(&payload);
        let _ = decode(&buf);
        // Without data integrity the payload is parsed before its CRC is checked.
        let _ = decode_framed(&buf, FrameCrc::SkipDataBlock);
        buf[12..16].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let _ = decode_framed(&buf, FrameCrc::SkipDataBlock);
    }

    #[test]
    fn every_packet_round_trips_without_data_integrity(packet in arb_packet()) {
        let mut bytes = Vec::new();
        packet.encode_framed(&mut bytes, FrameCrc::SkipDataBlock);
        let (decoded, consumed) = decode_framed(&bytes, FrameCrc::SkipDataBlock).unwrap().unwrap();
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(decoded, packet);
    }

    #[test]
    fn every_packet_round_trips(packet in arb_packet()) {
        let bytes = packet.encode();
        let (decoded, consumed) = decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(decoded, packet);
    }

    #[test]
    fn every_prefix_of_a_packet_asks_for_more(packet in arb_packet(), cut in any::<prop::sample::Index>()) {
        let bytes = packet.encode();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
    }
}

#[test]
fn two_packets_back_to_back_decode_in_order() {
    let mut buf = Packet::Ping.encode();
    Packet::Barrier { epoch: 7 }.encode_into(&mut buf);
    let (first, used) = decode(&buf).unwrap().unwrap();
    assert_eq!(first, Packet::Ping);
    let (second, used2) = decode(&buf[used..]).unwrap().unwrap();
    assert_eq!(second, Packet::Barrier { epoch: 7 });
    assert_eq!(used + used2, buf.len());
}

#[test]
fn corrupted_payload_is_rejected_by_checksum() {
    let mut buf = Packet::WriteAck { seq: 42 }.encode();
    let last = buf.len() - 1;
    buf[last] ^= 1;
    assert!(matches!(decode(&buf), Err(WireError::BadChecksum { .. })));
}

#[test]
fn oversized_length_is_rejected_before_waiting_for_bytes() {
    let mut buf = Packet::Ping.encode();
    buf[8..12].copy_from_slice(&(MAX_PAYLOAD_BYTES + 1).to_be_bytes());
    assert_eq!(
        decode(&buf),
        Err(WireError::PayloadTooLarge(MAX_PAYLOAD_BYTES + 1))
    );
}

#[test]
fn wrong_magic_is_rejected_from_four_bytes() {
    assert_eq!(
        decode(b"GET "),
        Err(WireError::BadMagic(u32::from_be_bytes(*b"GET ")))
    );
}

#[test]
fn resource_name_longer_than_limit_is_rejected() {
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u16.to_be_bytes());
    payload.extend_from_slice(&1u16.to_be_bytes());
    payload.push(0);
    payload.extend_from_slice(&65u16.to_be_bytes());
    payload.extend_from_slice(&[b'a'; 65]);
    payload.extend_from_slice(&0u64.to_be_bytes());
    let mut buf = Vec::new();
    buf.extend_from_slice(&MAGIC.to_be_bytes());
    buf.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    buf.extend_from_slice(&1u16.to_be_bytes());
    buf.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    buf.extend_from_slice(&payload);
    assert!(matches!(
        decode(&buf),
        Err(WireError::BadField {
            packet: "Hello",
            ..
        })
    ));
}

fn frame(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&MAGIC.to_be_bytes());
    buf.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    buf.extend_from_slice(&kind.to_be_bytes());
    buf.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    buf.extend_from_slice(payload);
    buf
}

#[test]
fn more_history_uuids_than_the_limit_are_rejected() {
    let count = crate::generation::HISTORY_UUIDS + 1;
    let mut payload = vec![0u8; 4 * 8 + 4];
    payload.push(u8::try_from(count).unwrap());
    payload.extend(std::iter::repeat_n(7u8, count * 8));
    match decode(&frame(5, &payload)) {
        Err(WireError::BadField { packet, what }) => {
            assert_eq!(packet, "GenerationIds");
            assert!(
                what.contains("33 history UUIDs exceed the limit of 32"),
                "{what}"
            );
        }
        other => panic!("accepted: {other:?}"),
    }
}

fn data_packet() -> Packet {
    Packet::Data {
        seq: 9,
        epoch: 3,
        flags: DATA_FUA,
        offset_bytes: 1 << 20,
        len_bytes: 4096,
        payload: (0..4096u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
    }
}

#[test]
fn data_integrity_is_on_when_either_side_announces_it() {
    let on = FEATURE_DATA_INTEGRITY;
    assert_eq!(FrameCrc::negotiated(0, 0), FrameCrc::SkipDataBlock);
    assert_eq!(FrameCrc::negotiated(on, 0), FrameCrc::WholePayload);
    assert_eq!(FrameCrc::negotiated(0, on), FrameCrc::WholePayload);
    assert_eq!(
        FrameCrc::negotiated(on | FEATURE_PROTOCOL_C, on),
        FrameCrc::WholePayload
    );
}

#[test]
fn without_data_integrity_the_crc_skips_only_the_data_block() {
    let mut buf = Vec::new();
    data_packet().encode_framed(&mut buf, FrameCrc::SkipDataBlock);
    let (back, used) = decode_framed(&buf, FrameCrc::SkipDataBlock)
        .unwrap()
        .unwrap();
    assert_eq!((back, used), (data_packet(), buf.len()));

    // A flipped data byte is not caught (TCP's checksum covers it, as in DRBD
    // without data-integrity-alg), but the same frame fails a whole-payload check.
    let mut flipped = buf.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let (back, _) = decode_framed(&flipped, FrameCrc::SkipDataBlock)
        .unwrap()
        .unwrap();
    assert_ne!(back, data_packet());
    assert!(matches!(
        decode_framed(&flipped, FrameCrc::WholePayload),
        Err(WireError::BadChecksum { .. })
    ));

    // Every field outside the data block stays covered: the offset here.
    let mut moved = buf.clone();
    moved[HEADER_BYTES + 16] ^= 0x10;
    assert!(matches!(
        decode_framed(&moved, FrameCrc::SkipDataBlock),
        Err(WireError::BadChecksum { .. })
    ));

    // Packets without a data block are framed identically in both modes.
    let mut ack = Vec::new();
    Packet::WriteAck { seq: 5 }.encode_framed(&mut ack, FrameCrc::SkipDataBlock);
    assert_eq!(ack, Packet::WriteAck { seq: 5 }.encode());
}

#[test]
fn with_data_integrity_a_flipped_data_byte_is_refused() {
    let mut buf = Vec::new();
    data_packet().encode_framed(&mut buf, FrameCrc::WholePayload);
    assert_eq!(buf, data_packet().encode());
    let last = buf.len() - 1;
    buf[last] ^= 0x80;
    assert!(matches!(
        decode_framed(&buf, FrameCrc::WholePayload),
        Err(WireError::BadChecksum { .. })
    ));
}

#[test]
fn frame_size_reads_the_length_from_the_header_alone() {
    let bytes = data_packet().encode();
    assert_eq!(
        frame_size(&bytes[..HEADER_BYTES - 1]),
        FrameSize::Incomplete
    );
    assert_eq!(
        frame_size(&bytes[..HEADER_BYTES]),
        FrameSize::Bytes(bytes.len())
    );
    assert_eq!(frame_size(&bytes), FrameSize::Bytes(bytes.len()));
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert_eq!(frame_size(&bad), FrameSize::Invalid);
    let mut huge = bytes;
    huge[8..12].copy_from_slice(&(MAX_PAYLOAD_BYTES + 1).to_be_bytes());
    assert_eq!(frame_size(&huge), FrameSize::Invalid);
}

#[test]
fn a_split_frame_is_the_same_bytes_as_a_whole_one() {
    let reply = Packet::ResyncReply {
        id: 4,
        offset_bytes: 8192,
        payload: vec![7; 65_536].into(),
    };
    for packet in [data_packet(), reply, Packet::WriteAck { seq: 3 }] {
        for crc in [FrameCrc::WholePayload, FrameCrc::SkipDataBlock] {
            let mut whole = Vec::new();
            packet.encode_framed(&mut whole, crc);
            let mut head = vec![0xEE]; // bytes already queued stay in front
            let block = packet.clone().encode_framed_split(&mut head, crc, 4096);
            assert_eq!(block.is_some(), packet.data_block_bytes() >= 4096);
            head.extend_from_slice(&block.unwrap_or_default());
            assert_eq!(&head[1..], &whole[..], "{} {crc:?}", packet.name());
            // Below the threshold nothing is split off.
            let mut small = Vec::new();
            assert_eq!(
                packet
                    .clone()
                    .encode_framed_split(&mut small, crc, usize::MAX),
                None
            );
            assert_eq!(small, whole);
        }
    }
}

// ---- frames received as head + block (wire_block) ----

fn sized_data(len: usize, flags: u32) -> Packet {
    Packet::Data {
        seq: 3,
        epoch: 4,
        flags,
        offset_bytes: 8192,
        len_bytes: u32::try_from(len).unwrap(),
        payload: if flags & (DATA_DISCARD | DATA_ZEROES) != 0 {
            Payload::default()
        } else {
            (0..len)
                .map(|i| u8::try_from(i % 253).unwrap())
                .collect::<Vec<u8>>()
                .into()
        },
    }
}

fn resync_reply(len: usize) -> Packet {
    Packet::ResyncReply {
        id: 9,
        offset_bytes: 4096,
        payload: vec![0x5a; len].into(),
    }
}

/// Splits an encoded frame where `block_range` says, as a transport would.
fn split(frame: &[u8]) -> (Vec<u8>, AlignedBuf) {
    let BlockRange::Block { start, len } = block_range(frame) else {
        panic!("{:?}", block_range(frame));
    };
    assert_eq!(start + len, frame.len(), "the block ends the frame");
    (
        frame[..start].to_vec(),
        AlignedBuf::from_slice(&frame[start..]),
    )
}

#[test]
fn block_range_of_every_frame_shape() {
    for crc in [FrameCrc::WholePayload, FrameCrc::SkipDataBlock] {
        for (packet, start) in [
            (sized_data(4096, 0), MAX_BLOCK_HEAD_BYTES),
            (
                sized_data(1 << 20, DATA_FUA | DATA_FLUSH),
                MAX_BLOCK_HEAD_BYTES,
            ),
            (sized_data(0, 0), MAX_BLOCK_HEAD_BYTES),
            (resync_reply(65_536), HEADER_BYTES + 20),
            (resync_reply(0), HEADER_BYTES + 20),
        ] {
            let mut frame = Vec::new();
            packet.encode_framed(&mut frame, crc);
            let len = frame.len() - start;
            assert_eq!(block_range(&frame), BlockRange::Block { start, len });
            // A prefix tells as soon as the head is there, not before.
            assert_eq!(
                block_range(&frame[..start]),
                BlockRange::Block { start, len }
            );
            assert_eq!(
                block_range(&frame[..start - 1]),
                BlockRange::NeedHead(start)
            );
            assert_eq!(
                block_range(&frame[..HEADER_BYTES]),
                BlockRange::NeedHead(start)
            );
            assert_eq!(block_range(&frame[..3]), BlockRange::NeedHead(HEADER_BYTES));
        }
        for packet in [
            sized_data(4096, DATA_DISCARD),
            sized_data(1 << 20, DATA_ZEROES),
            Packet::Ping,
            Packet::WriteAck { seq: 1 },
            Packet::ResyncRequest {
                id: 1,
                offset_bytes: 0,
                len_bytes: 4096,
            },
        ] {
            let mut frame = Vec::new();
            packet.encode_framed(&mut frame, crc);
            assert_eq!(block_range(&frame), BlockRange::Whole, "{}", packet.name());
        }
    }
}

#[test]
fn a_split_frame_decodes_to_the_same_packet_with_its_block_buffer() {
    for crc in [FrameCrc::WholePayload, FrameCrc::SkipDataBlock] {
        for packet in [
            sized_data(4096, DATA_FUA),
            sized_data(1 << 20, 0),
            resync_reply(8192),
        ] {
            let mut frame = Vec::new();
            packet.encode_framed(&mut frame, crc);
            let (head, block) = split(&frame);
            let ptr = block.as_ptr();
            let got = decode_split(&head, block, crc).unwrap();
            assert_eq!(got, packet);
            let (Packet::Data { payload, .. } | Packet::ResyncReply { payload, .. }) = got else {
                panic!("a data packet");
            };
            assert_eq!(payload.into_aligned().as_ptr(), ptr, "no copy on the way");
        }
    }
}

#[test]
fn a_sent_block_comes_back_as_the_very_vec_it_was_built_from() {
    let payload = vec![7u8; 65_536];
    let ptr = payload.as_ptr();
    let packet = Packet::Data {
        seq: 1,
        epoch: 1,
        flags: 0,
        offset_bytes: 0,
        len_bytes: 65_536,
        payload: payload.into(),
    };
    let mut head = Vec::new();
    let block = packet
        .encode_framed_split(&mut head, FrameCrc::WholePayload, 4096)
        .unwrap();
    assert_eq!(block.as_ptr(), ptr);
}

#[test]
fn a_corrupted_block_of_a_split_frame_fails_the_whole_payload_crc_only() {
    for crc in [FrameCrc::WholePayload, FrameCrc::SkipDataBlock] {
        let mut frame = Vec::new();
        sized_data(65_536, 0).encode_framed(&mut frame, crc);
        let last = frame.len() - 1;
        frame[last] ^= 0x80;
        let (head, block) = split(&frame);
        let split_result = decode_split(&head, block, crc).map(|_| ());
        let whole_result = decode_framed(&frame, crc).map(|_| ());
        assert_eq!(split_result, whole_result, "{crc:?}: as the frame whole");
        assert_eq!(
            split_result.is_err(),
            crc == FrameCrc::WholePayload,
            "{crc:?}: {split_result:?}"
        );
    }
    // A corrupted field is caught either way.
    let mut frame = Vec::new();
    sized_data(65_536, 0).encode_framed(&mut frame, FrameCrc::SkipDataBlock);
    frame[HEADER_BYTES] ^= 1;
    let (head, block) = split(&frame);
    assert!(matches!(
        decode_split(&head, block, FrameCrc::SkipDataBlock),
        Err(WireError::BadChecksum { .. })
    ));
}

#[test]
fn lying_or_oversized_lengths_are_not_split_and_the_decoder_refuses_them() {
    let mut frame = Vec::new();
    sized_data(8192, 0).encode_framed(&mut frame, FrameCrc::WholePayload);
    let set_u32 =
        |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_be_bytes());
    // The data length field says more than the frame holds.
    let mut lying = frame.clone();
    set_u32(&mut lying, HEADER_BYTES + 24, 8193);
    assert_eq!(block_range(&lying), BlockRange::Whole);
    let err = decode_framed(&lying, FrameCrc::SkipDataBlock).unwrap_err();
    assert!(
        matches!(err, WireError::Truncated { needed: 1, .. }),
        "{err}"
    );
    // A data length beyond the limit, with a header length to match.
    let mut huge = frame.clone();
    set_u32(&mut huge, HEADER_BYTES + 24, MAX_DATA_BYTES + 1);
    set_u32(&mut huge, 8, MAX_DATA_BYTES + 1 + 28);
    assert_eq!(block_range(&huge), BlockRange::Whole);
    huge.resize(HEADER_BYTES + MAX_DATA_BYTES as usize + 1 + 28, 0);
    let err = decode_framed(&huge, FrameCrc::SkipDataBlock).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    // A header length beyond the payload limit.
    let mut oversized = frame.clone();
    set_u32(&mut oversized, 8, MAX_PAYLOAD_BYTES + 1);
    assert_eq!(block_range(&oversized), BlockRange::Whole);
    assert_eq!(
        decode_framed(&oversized, FrameCrc::SkipDataBlock).unwrap_err(),
        WireError::PayloadTooLarge(MAX_PAYLOAD_BYTES + 1)
    );
    // A header length shorter than the fixed fields.
    let mut short = frame.clone();
    set_u32(&mut short, 8, 10);
    assert_eq!(block_range(&short), BlockRange::Whole);
    // A split whose parts do not add up to the header's length.
    let (head, _) = split(&frame);
    let err = decode_split(
        &head,
        AlignedBuf::from_slice(&[0; 100]),
        FrameCrc::SkipDataBlock,
    )
    .unwrap_err();
    assert!(err.to_string().contains("header says 8220"), "{err}");
    // A head cut short of the header.
    assert!(matches!(
        decode_split(
            &head[..10],
            AlignedBuf::from_slice(&[0; 8192]),
            FrameCrc::SkipDataBlock
        ),
        Err(WireError::Truncated { .. })
    ));
    // A frame of another type handed over as head + block.
    let mut ping = Vec::new();
    Packet::Ping.encode_framed(&mut ping, FrameCrc::WholePayload);
    let err = decode_split(&ping, AlignedBuf::empty(), FrameCrc::WholePayload);
    assert!(err.is_ok(), "an empty block is no block: {err:?}");
    set_u32(&mut ping, 8, 4);
    assert_eq!(
        decode_split(
            &ping,
            AlignedBuf::from_slice(&[0; 4]),
            FrameCrc::SkipDataBlock
        )
        .unwrap_err(),
        WireError::TrailingBytes(4, "Ping")
    );
}

proptest! {
    #[test]
    fn split_decoding_equals_whole_decoding(
        len in 0usize..20_000,
        resync in any::<bool>(),
        whole in any::<bool>(),
        flip in any::<Option<prop::sample::Index>>(),
    ) {
        let crc = if whole { FrameCrc::WholePayload } else { FrameCrc::SkipDataBlock };
        let packet = if resync { resync_reply(len) } else { sized_data(len, 0) };
        let mut frame = Vec::new();
        packet.encode_framed(&mut frame, crc);
        if let Some(i) = flip {
            let i = i.index(frame.len());
            frame[i] ^= 0x10;
        }
        let whole_result = decode_framed(&frame, crc).map(|r| r.map(|(p, _)| p));
        if let BlockRange::Block { start, len } = block_range(&frame) {
            if start + len == frame.len() {
                let block = AlignedBuf::from_slice(&frame[start..]);
                let split_result = decode_split(&frame[..start], block, crc).map(Some);
                prop_assert_eq!(split_result, whole_result);
            }
        }
    }
}
