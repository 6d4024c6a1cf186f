//! Feeds an established peer random (well-formed) packets and random bytes:
//! whatever a misbehaving peer sends, the state machine must answer with a
//! protocol error and a disconnect, never a panic, and must never submit a
//! disk write outside the agreed device size.

mod common;

use common::*;
use drbdd_replication::ack::Protocol;
use drbdd_replication::peer::{Action, Event};
use drbdd_replication::state::{ConnState, DiskState, Role};
use drbdd_replication::wire::Packet;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn random_packet(rng: &mut Rng) -> Packet {
    let v = rng.next();
    let small = rng.next() % 100_000;
    let len = u32::try_from(rng.next() % 3).unwrap() * 4096;
    match rng.next() % 15 {
        13 => Packet::GenerationIds {
            current: v % 3,
            bitmap: small % 3,
            history: Box::new(drbdd_replication::generation::history_of(&[0, v % 5])),
            dirty_blocks: small,
            promoted_at_ms: v,
            flags: u32::try_from(v % 8).unwrap(),
        },
        0 => Packet::Data {
            seq: small,
            epoch: u32::try_from(small % 7).unwrap(),
            flags: u32::try_from(v % 16).unwrap(),
            offset_bytes: (v % 80) * 4096,
            len_bytes: len,
            payload: if v % 16 >= 4 {
                Vec::new().into()
            } else {
                vec![1; usize::try_from(len).unwrap()].into()
            },
        },
        1 => Packet::RecvAck { seq: small },
        2 => Packet::WriteAck { seq: small },
        3 => Packet::NegAck { seq: small },
        4 => Packet::Barrier {
            epoch: u32::try_from(small % 9).unwrap(),
        },
        5 => Packet::BarrierAck {
            epoch: u32::try_from(small % 9).unwrap(),
            writes: 1,
        },
        6 => Packet::BitmapChunk {
            start_bit: small % 70,
            total_bits: 64,
            last: v.is_multiple_of(2),
            runs: vec![v % 5, v % 3],
        },
        7 => Packet::ResyncRequest {
            id: small,
            offset_bytes: (v % 80) * 4096,
            len_bytes: len,
        },
        8 => Packet::ResyncReply {
            id: small % 5,
            offset_bytes: (v % 80) * 4096,
            payload: vec![2; usize::try_from(len).unwrap()].into(),
        },
        9 => Packet::SyncUuid { uuid: v },
        10 => Packet::ResyncFinished,
        11 => Packet::OutOfSync {
            offset_bytes: v % (1 << 40),
            len_bytes: len,
        },
        12 => Packet::State {
            role: [Role::Primary, Role::Secondary][usize::try_from(v % 2).unwrap()],
            disk: [DiskState::UpToDate, DiskState::Inconsistent]
                [usize::try_from(small % 2).unwrap()],
            flags: u32::try_from(v % 8).unwrap(),
        },
        _ => Packet::Hello {
            protocol_min: 1,
            protocol_max: 1,
            node_id: 0,
            resource: "r0".into(),
            features: 0,
        },
    }
}

#[test]
fn random_packets_from_an_established_peer_never_panic_or_write_out_of_bounds() {
    let mut accepted = 0;
    for seed in 1..300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
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
            gens(0x10),
            disk(0),
        );
        let mut p = Pair::new(a, b);
        p.connect();
        for _ in 0..40 {
            if p.nodes[1].peer.status().conn != ConnState::Connected {
                // The last packet was a protocol error: start over.
                if p.link_up {
                    p.cut();
                }
                // A random GenerationIds from the Primary may have made the
                // Secondary follow a generation the Primary never had: both
                // start over from the real tuple.
                for (n, role) in p.nodes.iter_mut().zip([Role::Primary, Role::Secondary]) {
                    n.gens = gens(0x10);
                    n.disk_state = DiskState::UpToDate;
                    n.peer
                        .set_local(local_state(role, DiskState::UpToDate, &n.gens));
                }
                p.event(
                    0,
                    Event::AdminConnect {
                        discard_my_data: false,
                    },
                );
                p.event(
                    1,
                    Event::AdminConnect {
                        discard_my_data: false,
                    },
                );
                p.connect();
                assert_eq!(
                    p.nodes[1].peer.status().conn,
                    ConnState::Connected,
                    "seed {seed}"
                );
            }
            accepted += 1;
            let bytes = if rng.next().is_multiple_of(10) {
                (0..rng.next() % 64)
                    .map(|_| u8::try_from(rng.next() % 256).unwrap())
                    .collect()
            } else {
                let mut out = Vec::new();
                random_packet(&mut rng).encode_framed(&mut out, p.nodes[1].peer.frame_crc());
                out
            };
            let actions = p.nodes[1].peer.handle(Event::BytesReceived {
                now_ms: p.now_ms,
                bytes: &bytes,
            });
            for a in &actions {
                if let Action::SubmitPeerWrite {
                    offset_bytes,
                    len_bytes,
                    ..
                } = a
                {
                    assert!(
                        offset_bytes + u64::from(*len_bytes) <= DISK_BYTES,
                        "seed {seed}: {a:?}"
                    );
                }
                if let Action::SubmitResyncWrite {
                    offset_bytes, data, ..
                } = a
                {
                    assert!(
                        offset_bytes + data.len() as u64 <= DISK_BYTES,
                        "seed {seed}"
                    );
                }
            }
            // Complete whatever was submitted, as a disk would.
            for a in actions {
                let done = match a {
                    Action::SubmitPeerWrite { seq, .. } => {
                        Some(Event::PeerWriteDone { seq, ok: true })
                    }
                    Action::SubmitPeerFlush { epoch } => Some(Event::PeerFlushDone { epoch }),
                    Action::ReadForResync { id, len_bytes, .. } => Some(Event::ResyncReadDone {
                        id,
                        data: Some(vec![0; usize::try_from(len_bytes).unwrap()]),
                    }),
                    Action::SubmitResyncWrite { id, .. } => Some(Event::ResyncWriteDone { id }),
                    _ => None,
                };
                if let Some(e) = done {
                    p.nodes[1].peer.handle(e);
                }
            }
        }
    }
    assert!(
        accepted > 10_000,
        "fuzzing reached the established state {accepted} times"
    );
}
