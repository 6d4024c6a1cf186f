//! End-to-end behaviour of `MetaStore` on a `MemDevice`: create/open, crash
//! safety of superblock and activity-log writes (torn writes, lost unflushed
//! writes), bitmap persistence, AL eviction and recovery, corruption detection,
//! and byte-exact dump/restore. Each test builds metadata, injects a fault through
//! the device, "reboots" with `crash()` + `open`, and asserts what survived.

use drbdd_metadata::{
    al_extent_of, layout_external, layout_internal, CopyStatus, CreateOptions, Layout, MemDevice,
    MetaDevice, MetaError, MetaStore, AL_EXTENT_BYTES,
};

const DATA_BYTES: u64 = 64 << 20;

fn layout(peers: u8, al_extents: u32) -> Layout {
    layout_external(DATA_BYTES, 64 << 20, peers, al_extents).unwrap()
}

fn create(peers: u8, al_extents: u32) -> MetaStore<MemDevice> {
    let l = layout(peers, al_extents);
    MetaStore::create(
        MemDevice::new(64 << 20),
        l,
        CreateOptions {
            node_id: 1,
            max_peers: peers,
            al_extents,
        },
    )
    .unwrap()
}

fn raw(dev: &MemDevice, l: &Layout) -> Vec<u8> {
    dev.snapshot(l.md_offset_bytes, usize::try_from(l.md_size_bytes).unwrap())
}

fn reboot(store: MetaStore<MemDevice>) -> MetaStore<MemDevice> {
    let l = *store.layout();
    let mut dev = store.into_device();
    dev.crash();
    MetaStore::open(dev, l).unwrap()
}

#[test]
fn create_then_open_returns_the_same_superblock() {
    let mut s = create(3, 61);
    s.update_superblock(|sb| {
        sb.current_uuid = 0xDEAD_BEEF;
        sb.peers[2].node_id = Some(7);
        sb.flags.consistent = true;
    })
    .unwrap();
    let before = s.superblock().clone();
    let s = reboot(s);
    assert_eq!(s.superblock(), &before);
    assert_eq!(s.superblock().node_id, 1);
    assert!(s.superblock().flags.al_clean);
}

#[test]
fn internal_metadata_lives_at_the_end_of_the_backing_device() {
    let backing = 100 << 20;
    let l = layout_internal(backing, 2, 1237).unwrap();
    let s = MetaStore::create(
        MemDevice::new(backing),
        l,
        CreateOptions {
            node_id: 0,
            max_peers: 2,
            al_extents: 1237,
        },
    )
    .unwrap();
    let dev = s.into_device();
    assert_eq!(
        dev.snapshot(0, 4096),
        vec![0u8; 4096],
        "data area untouched"
    );
    assert_eq!(&dev.snapshot(l.md_offset_bytes, 8)[..], b"DRBDDMD\0");
    assert!(MetaStore::open(dev, l).is_ok());
}

#[test]
fn failed_open_of_blank_device_names_create_md_and_writes_nothing() {
    let l = layout(1, 61);
    let mut dev = MemDevice::new(64 << 20);
    dev.write_at(l.md_offset_bytes + 100, b"foreign").unwrap();
    let before = raw(&dev, &l);
    let writes = dev.write_count();
    let err = MetaStore::open(dev.clone(), l).unwrap_err();
    assert!(
        err.to_string()
            .contains("no drbdd metadata found at offset 0 (magic mismatch)"),
        "{err}"
    );
    assert!(err.to_string().contains("drbdctl create-md"), "{err}");
    assert_eq!(raw(&dev, &l), before);
    assert_eq!(dev.write_count(), writes);
}

#[test]
fn newer_format_version_is_refused_without_writing() {
    let s = create(1, 61);
    let l = *s.layout();
    let mut dev = s.into_device();
    for copy in 0..2u64 {
        dev.write_at(copy * 4096 + 8, &9u32.to_le_bytes()).unwrap();
    }
    let before = raw(&dev, &l);
    let err = MetaStore::open(dev.clone(), l).unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::NewerVersion {
                found: 9,
                supported: 2
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("metadata format version 9 is newer than this drbdd supports (2)"));
    assert_eq!(raw(&dev, &l), before);
}

#[test]
fn too_small_device_reports_the_minimum_size() {
    let l = layout(2, 61);
    let err = MetaStore::create(
        MemDevice::new(4096),
        l,
        CreateOptions {
            node_id: 0,
            max_peers: 2,
            al_extents: 61,
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("need at least {} bytes", l.md_size_bytes)),
        "{err}"
    );
}

#[test]
fn configuration_mismatch_is_reported_on_open() {
    let dev = create(2, 61).into_device();
    let err = MetaStore::open(dev, layout(3, 61)).unwrap_err();
    assert!(
        err.to_string()
            .contains("max-peers is 2 in the metadata but 3"),
        "{err}"
    );
}

#[test]
fn torn_first_superblock_write_keeps_the_previous_copy() {
    let mut s = create(1, 61);
    s.update_superblock(|sb| sb.current_uuid = 1).unwrap();
    // Only the header lands: the crc no longer matches the block.
    s.device_mut().tear_next_write(14);
    assert!(s.update_superblock(|sb| sb.current_uuid = 2).is_err());
    let l = *s.layout();
    let mut dev = s.into_device();
    dev.crash();
    let report = MetaStore::check(dev.clone(), l).unwrap();
    assert!(
        report
            .superblock_copies
            .iter()
            .any(|c| matches!(c, CopyStatus::Invalid(_))),
        "{report}"
    );
    let s = MetaStore::open(dev, l).unwrap();
    assert_eq!(s.superblock().current_uuid, 1);
}

#[test]
fn torn_second_superblock_write_keeps_the_new_content() {
    let mut s = create(1, 61);
    s.device_mut().tear_write(1, 10);
    assert!(s.update_superblock(|sb| sb.current_uuid = 2).is_err());
    let mut s = reboot(s);
    assert_eq!(s.superblock().current_uuid, 2);
    // The next update repairs the torn copy.
    s.update_superblock(|sb| sb.current_uuid = 3).unwrap();
    let l = *s.layout();
    let report = MetaStore::check(s.into_device(), l).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn corrupted_superblocks_are_detected() {
    let s = create(1, 61);
    let l = *s.layout();
    let mut dev = s.into_device();
    dev.write_at(200, &[0xFF]).unwrap();
    let report = MetaStore::check(dev.clone(), l).unwrap();
    assert_eq!(
        report.superblock_copies[0],
        CopyStatus::Invalid("crc mismatch (torn or corrupted write)".into())
    );
    assert_eq!(report.superblock_used, Some(1));
    assert!(!report.is_ok());
    assert!(MetaStore::open(dev.clone(), l).is_ok());
    dev.write_at(4096 + 200, &[0xFF]).unwrap();
    let before = raw(&dev, &l);
    let err = MetaStore::open(dev.clone(), l).unwrap_err();
    assert_eq!(raw(&dev, &l), before, "a failed open must not write");
    assert!(matches!(err, MetaError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("crc mismatch"), "{err}");
}

#[test]
fn bitmap_bits_persist_through_flush_and_reopen() {
    let mut s = create(2, 61);
    s.bitmap_set_range(1, 8192, 3 * 4096);
    s.bitmap_set_range(1, DATA_BYTES - 4096, 4096);
    s.bitmap_set_range(0, 0, 1);
    s.bitmap_clear_range(1, 8192, 4096);
    assert_eq!(s.bitmap_count(1), 3);
    assert_eq!(s.bitmap_next_set(1, 0), Some(3));
    assert_eq!(s.bitmap_next_set(1, 5), Some(DATA_BYTES / 4096 - 1));
    s.bitmap_flush().unwrap();
    let s = reboot(s);
    assert_eq!(s.bitmap_count(0), 1);
    assert_eq!(s.bitmap_count(1), 3);
    assert_eq!(s.bitmap_next_set(1, 0), Some(3));
}

#[test]
fn unflushed_bitmap_bits_are_lost_on_crash() {
    let mut s = create(1, 61);
    s.bitmap_set_range(0, 0, 4096);
    let s = reboot(s);
    assert_eq!(s.bitmap_count(0), 0);
}

#[test]
fn activating_active_extents_does_no_io() {
    let mut s = create(1, 61);
    let a = s.al_activate(&[1, 2]).unwrap();
    assert_eq!(a.transactions_written, 1);
    let writes = s.device().write_count();
    let a = s.al_activate(&[2, 1, 1]).unwrap();
    assert_eq!(a.transactions_written, 0);
    assert_eq!(s.device().write_count(), writes);
    assert_eq!(s.al_logged_extents(), vec![1, 2]);
}

#[test]
fn full_activity_log_refuses_until_release_then_evicts_lru() {
    let mut s = create(1, 3);
    s.al_activate(&[10, 11, 12]).unwrap();
    let writes = s.device().write_count();
    assert!(matches!(
        s.al_activate(&[13]),
        Err(MetaError::AlFull { al_extents: 3 })
    ));
    assert_eq!(
        s.device().write_count(),
        writes,
        "a refused activation writes nothing"
    );
    s.al_release(&[11]);
    s.al_release(&[10]);
    let a = s.al_activate(&[13]).unwrap();
    assert_eq!(a.evicted_extents.len(), 1);
    assert_eq!(s.al_logged_extents().len(), 3);
    assert!(s.al_logged_extents().contains(&13));
    assert!(s.al_logged_extents().contains(&12));
}

#[test]
fn logged_extents_survive_a_crash_and_mark_al_unclean() {
    let mut s = create(1, 61);
    for e in 0..10 {
        s.al_activate(&[e]).unwrap();
    }
    let logged = s.al_logged_extents();
    let s = reboot(s);
    assert_eq!(s.al_logged_extents(), logged);
    assert!(
        !s.superblock().flags.al_clean,
        "caller must replay the AL into the bitmaps"
    );
    assert!(s.al_recovery_complete());
}

#[test]
fn torn_al_transaction_recovers_the_previous_state() {
    let mut s = create(1, 61);
    s.al_activate(&[1]).unwrap();
    s.device_mut().tear_next_write(300);
    assert!(s.al_activate(&[2]).is_err());
    let l = *s.layout();
    let mut dev = s.into_device();
    dev.crash();
    let report = MetaStore::check(dev.clone(), l).unwrap();
    assert!(
        report
            .al_blocks
            .iter()
            .any(|b| matches!(b, CopyStatus::Invalid(_))),
        "{report}"
    );
    let s = MetaStore::open(dev, l).unwrap();
    assert_eq!(s.al_logged_extents(), vec![1]);
}

#[test]
fn al_recovery_survives_ring_wrap_with_several_context_chunks() {
    // 2000 extents → 3 context chunks per table, 8-block ring.
    let mut s = create(1, 2000);
    let mut all = Vec::new();
    for round in 0..40u64 {
        let batch: Vec<u64> = (0..70).map(|i| round * 70 + i).collect();
        let a = s.al_activate(&batch).unwrap();
        assert_eq!(
            a.transactions_written, 2,
            "70 new extents need two transactions"
        );
        s.al_release(&batch);
        all.extend(batch);
    }
    let logged = s.al_logged_extents();
    assert_eq!(logged.len(), 2000);
    s.device_mut().tear_next_write(17);
    assert!(s.al_activate(&[999_999]).is_err());
    let s = reboot(s);
    assert_eq!(s.al_logged_extents(), logged);
    assert!(s.al_recovery_complete());
}

#[test]
fn evicted_extent_bits_are_durable_before_it_leaves_the_log() {
    let mut s = create(1, 1);
    let ext0 = al_extent_of(0);
    s.al_activate(&[ext0]).unwrap();
    s.bitmap_set_range(0, 4096, 4096); // a write to extent 0 while the peer is away
    s.al_release(&[ext0]);
    s.al_activate(&[al_extent_of(AL_EXTENT_BYTES)]).unwrap();
    let s = reboot(s);
    assert_eq!(s.al_logged_extents(), vec![1]);
    assert_eq!(
        s.bitmap_count(0),
        1,
        "extent 0 left the AL, so its bit must be on disk"
    );
}

#[test]
fn clean_close_sets_al_clean_and_refuses_with_writes_in_flight() {
    let mut s = create(1, 61);
    s.al_activate(&[5]).unwrap();
    assert!(!s.superblock().flags.al_clean);
    assert!(matches!(s.close_clean(), Err(MetaError::Busy(_))));
    s.al_release(&[5]);
    s.close_clean().unwrap();
    let s = reboot(s);
    assert!(s.superblock().flags.al_clean);
}

fn busy_store() -> MetaStore<MemDevice> {
    let mut s = create(3, 1000);
    s.update_superblock(|sb| {
        sb.current_uuid = 0x51CC_8C0B_06D6_F75C;
        // Entries past the second live in version 2's extension area.
        sb.history_uuids[..3].copy_from_slice(&[0x1111, 0x2222, 0x3333]);
        sb.history_uuids[31] = 0x3131;
        sb.peers[0].node_id = Some(2);
        sb.peers[0].bitmap_uuid = 0xABCDEF;
        sb.peers[0].flags.outdated = true;
        sb.flags.consistent = true;
    })
    .unwrap();
    s.bitmap_set_range(0, 0, 40960);
    s.bitmap_set_range(2, 1 << 20, 4096);
    for round in 0..12u64 {
        s.al_activate(&[round, round + 3]).unwrap();
        s.al_release(&[round, round + 3]);
    }
    s
}

#[test]
fn dump_restore_round_trips_text_and_raw_bytes() {
    let mut s = busy_store();
    let text = s.dump().unwrap();
    assert!(text.contains("current-uuid 51CC8C0B06D6F75C"));
    assert!(text.contains("peer 0 node-id 2 bitmap-uuid 0000000000ABCDEF flags outdated"));
    assert!(text.contains("run 0 10"));
    let l = *s.layout();
    let original = raw(s.device(), &l);
    let mut restored = MetaStore::restore(MemDevice::new(64 << 20), l, &text).unwrap();
    assert_eq!(restored.dump().unwrap(), text);
    assert_eq!(raw(restored.device(), &l), original);
}

#[test]
fn restore_rejects_a_dump_for_another_layout() {
    let text = busy_store().dump().unwrap();
    let err = MetaStore::restore(MemDevice::new(64 << 20), layout(2, 1000), &text).unwrap_err();
    assert!(matches!(err, MetaError::Parse { .. }), "{err}");
    let bad = text.replace("current-uuid 51CC8C0B06D6F75C", "current-uuid xyz");
    let err = MetaStore::restore(MemDevice::new(64 << 20), layout(3, 1000), &bad).unwrap_err();
    assert!(err.to_string().contains("line"), "{err}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Uuid(u64),
        Peer(usize, u8, u64),
        SetBits(usize, u64, u64),
        ClearBits(usize, u64, u64),
        Activate(Vec<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u64>().prop_map(Op::Uuid),
            (0usize..2, 0u8..32, any::<u64>()).prop_map(|(s, n, u)| Op::Peer(s, n, u)),
            (0usize..2, 0..DATA_BYTES, 1u64..(1 << 20)).prop_map(|(s, o, l)| Op::SetBits(s, o, l)),
            (0usize..2, 0..DATA_BYTES, 1u64..(1 << 20))
                .prop_map(|(s, o, l)| Op::ClearBits(s, o, l)),
            proptest::collection::vec(0u64..64, 1..5).prop_map(Op::Activate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn dump_restore_dump_is_byte_exact(ops in proptest::collection::vec(op(), 0..30)) {
            let mut s = create(2, 7);
            for op in ops {
                match op {
                    Op::Uuid(u) => s.update_superblock(|sb| sb.current_uuid = u).unwrap(),
                    Op::Peer(slot, n, u) => s.update_superblock(|sb| { sb.peers[slot].node_id = Some(n); sb.peers[slot].bitmap_uuid = u; }).unwrap(),
                    Op::SetBits(slot, o, l) => s.bitmap_set_range(slot, o, l.min(DATA_BYTES - o)),
                    Op::ClearBits(slot, o, l) => s.bitmap_clear_range(slot, o, l.min(DATA_BYTES - o)),
                    Op::Activate(exts) => {
                        if s.al_activate(&exts).is_ok() {
                            s.al_release(&exts);
                        }
                    }
                }
            }
            let text = s.dump().unwrap();
            let l = *s.layout();
            let mut r = MetaStore::restore(MemDevice::new(64 << 20), l, &text).unwrap();
            prop_assert_eq!(r.dump().unwrap(), text);
            prop_assert_eq!(raw(r.device(), &l), raw(s.device(), &l));
            prop_assert_eq!(r.al_logged_extents(), s.al_logged_extents());
        }
    }
}

#[test]
fn fresh_metadata_checks_clean() {
    let s = create(2, 1237);
    let l = *s.layout();
    let report = MetaStore::check(s.into_device(), l).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        report.superblock_copies,
        vec![CopyStatus::Valid { seq: 2 }, CopyStatus::Valid { seq: 1 }]
    );
    assert_eq!(report.superblock_used, Some(0));
}

#[test]
fn adjacent_dirty_bitmap_pages_are_written_together() {
    let mut s = create(1, 61);
    let before = s.device().write_count();
    // 64 MiB of data = 16384 bits = 1 page per peer; set bits in every page of a larger range.
    s.bitmap_set_range(0, 0, DATA_BYTES);
    s.bitmap_flush().unwrap();
    assert_eq!(s.device().write_count() - before, 1);
    assert_eq!(s.bitmap_count(0), DATA_BYTES / 4096);
}

#[test]
fn crash_recovery_marks_logged_extents_out_of_sync() {
    let mut s = create(2, 61);
    s.al_activate(&[0, 3]).unwrap();
    let mut s = reboot(s);
    assert!(!s.superblock().flags.al_clean);
    s.al_mark_logged_out_of_sync(1);
    s.bitmap_flush().unwrap();
    let per_extent = AL_EXTENT_BYTES / 4096;
    assert_eq!(s.bitmap_count(1), 2 * per_extent);
    assert_eq!(s.bitmap_next_set(1, per_extent), Some(3 * per_extent));
    assert_eq!(s.bitmap_count(0), 0);
}

#[test]
fn failed_superblock_write_reports_io_error_and_keeps_memory_unchanged() {
    let mut s = create(1, 61);
    s.device_mut().set_fail_writes(true);
    let err = s.update_superblock(|sb| sb.current_uuid = 9).unwrap_err();
    assert!(matches!(err, MetaError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("check the backing device"),
        "{err}"
    );
    assert_eq!(s.superblock().current_uuid, 0);
    s.device_mut().set_fail_writes(false);
    s.update_superblock(|sb| sb.current_uuid = 9).unwrap();
    assert_eq!(reboot(s).superblock().current_uuid, 9);
}

#[test]
fn cached_activation_needs_no_metadata_io_and_refuses_otherwise() {
    let mut s = create(1, 2);
    assert!(
        !s.al_activate_cached(&[0]),
        "a clean AL must be marked in use first"
    );
    s.al_activate(&[0]).unwrap();
    assert!(!s.al_activate_cached(&[1]), "extent 1 needs a transaction");
    let writes = s.device().write_count();
    assert!(s.al_activate_cached(&[0]), "extent 0 is in the log");
    assert_eq!(s.device().write_count(), writes, "no metadata write");
    s.al_release(&[0]);
    s.al_release(&[0]);
    s.al_activate(&[1]).unwrap();
    s.al_activate(&[2]).unwrap(); // evicts the idle extent 0
    assert!(!s.al_activate_cached(&[0]), "evicted: needs a transaction");
    s.al_release(&[1]);
    s.al_release(&[2]);
    assert!(s.al_activate_cached(&[1, 2]));
    assert!(
        matches!(s.al_activate(&[3]), Err(MetaError::AlFull { .. })),
        "cached activations hold their extents like normal ones"
    );
    s.al_release(&[1, 2]);
    s.al_activate(&[3]).unwrap();
}
