//! Crash safety as a property: a random workload that mimics the write pipeline
//! (activate extents, mark bits only inside active extents, release, flush
//! bitmaps, update the superblock) is cut by a torn write at a random point, the
//! device "reboots" dropping unflushed writes, and the metadata is reopened.
//! Whatever the cut, (1) open succeeds, (2) every extent with writes in flight is in
//! the recovered activity log, and (3) every bit set in memory before the crash is
//! either on disk or inside a recovered AL extent — unless `al_clean` says the
//! bitmaps are exact, in which case it must be on disk.

use drbdd_metadata::{layout_external, CreateOptions, MemDevice, MetaStore, AL_EXTENT_BYTES};
use proptest::prelude::*;

const DATA_BYTES: u64 = 64 << 20;
const BITS_PER_EXTENT: u64 = AL_EXTENT_BYTES / 4096;

#[derive(Debug, Clone)]
enum Op {
    Write {
        exts: Vec<u64>,
        slot: usize,
        bit: u64,
    },
    Release,
    Flush,
    Clear {
        slot: usize,
        ext: u64,
    },
    Uuid(u64),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::collection::vec(0u64..16, 1..3), 0usize..2, 0..BITS_PER_EXTENT)
            .prop_map(|(exts, slot, bit)| Op::Write { exts, slot, bit }),
        3 => Just(Op::Release),
        1 => Just(Op::Flush),
        1 => (0usize..2, 0u64..16).prop_map(|(slot, ext)| Op::Clear { slot, ext }),
        1 => any::<u64>().prop_map(Op::Uuid),
        1 => Just(Op::Close),
    ]
}

fn set_bits(s: &MetaStore<MemDevice>, slot: usize) -> Vec<u64> {
    let mut bits = Vec::new();
    let mut from = 0;
    while let Some(b) = s.bitmap_next_set(slot, from) {
        bits.push(b);
        from = b + 1;
    }
    bits
}

/// Runs ops until one fails (the torn write); returns extents still in flight.
fn run(s: &mut MetaStore<MemDevice>, ops: Vec<Op>) -> Vec<u64> {
    let mut in_flight: Vec<Vec<u64>> = Vec::new();
    for op in ops {
        let ok = match op {
            Op::Write { exts, slot, bit } => match s.al_activate(&exts) {
                Ok(_) => {
                    s.bitmap_set_range(slot, (exts[0] * BITS_PER_EXTENT + bit) * 4096, 4096);
                    in_flight.push(exts);
                    true
                }
                Err(drbdd_metadata::MetaError::AlFull { .. }) => true,
                Err(_) => false,
            },
            Op::Release => {
                if !in_flight.is_empty() {
                    s.al_release(&in_flight.remove(0));
                }
                true
            }
            Op::Flush => s.bitmap_flush().is_ok(),
            Op::Clear { slot, ext } => {
                s.bitmap_clear_range(slot, ext * AL_EXTENT_BYTES, AL_EXTENT_BYTES);
                true
            }
            Op::Uuid(u) => s.update_superblock(|sb| sb.current_uuid = u).is_ok(),
            Op::Close => !in_flight.is_empty() || s.close_clean().is_ok(),
        };
        if !ok {
            break;
        }
    }
    in_flight.into_iter().flatten().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn no_dirty_bit_is_lost_across_a_crash(
        ops in proptest::collection::vec(op(), 1..60),
        tear_after in 0u64..60,
        keep in 0usize..4096,
    ) {
        let layout = layout_external(DATA_BYTES, 16 << 20, 2, 4).unwrap();
        let mut s = MetaStore::create(MemDevice::new(16 << 20), layout, CreateOptions { node_id: 0, max_peers: 2, al_extents: 4 }).unwrap();
        s.device_mut().tear_write(tear_after, keep);
        let in_flight = run(&mut s, ops);
        let mem_bits: Vec<Vec<u64>> = (0..2).map(|slot| set_bits(&s, slot)).collect();
        let mut dev = s.into_device();
        dev.crash();
        let s2 = MetaStore::open(dev, layout).unwrap();
        let logged = s2.al_logged_extents();
        prop_assert!(s2.al_recovery_complete());
        for ext in &in_flight {
            prop_assert!(logged.contains(ext), "in-flight extent {} not logged: {:?}", ext, logged);
        }
        let clean = s2.superblock().flags.al_clean;
        for (slot, bits) in mem_bits.iter().enumerate() {
            let disk = set_bits(&s2, slot);
            for bit in bits {
                let covered = !clean && logged.contains(&(bit / BITS_PER_EXTENT));
                prop_assert!(disk.contains(bit) || covered, "slot {} bit {} lost (clean {})", slot, bit, clean);
            }
        }
    }
}
