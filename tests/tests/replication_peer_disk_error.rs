//! A Secondary whose disk fails a replicated write (on-io-error detach):
//! it goes Diskless *before* its negative acknowledgement leaves, so it can
//! never come back claiming UpToDate data that lacks the write; the Primary
//! completes the write (its own copy is good), marks the range out of sync
//! and, having lost the peer's copy, starts a new data generation on disk
//! (DRBD's new current UUID) with the old one as the peer's bitmap UUID.
//! After the fault is gone, `attach` on the Secondary resyncs just the
//! missed range and both copies are identical.
//!
//! How: two real daemons on loopback; bob's backing "device" is a file
//! served by nbdkit's error filter through nbdfuse (see `faulty_disk`);
//! qemu-io writes to alice's NBD export. Skips with a printed reason
//! without nbdkit, nbdfuse, qemu-io or /dev/fuse.

mod faulty_disk;
mod replication_common;

use faulty_disk::FaultyDisk;
use replication_common::{peer_of, Cluster, ResOpts};

#[test]
fn secondary_write_error_detaches_it_and_the_primary_starts_a_new_generation() {
    let test = "secondary_write_error_detaches_it";
    if !faulty_disk::available(test) {
        return;
    }
    let opts = ResOpts::default();
    let faulty = FaultyDisk::start(opts.disk_bytes);
    let mut c = Cluster::new(2, &opts);
    c.nodes[1].disk = faulty.disk();
    for i in 0..2 {
        c.write_config(i, &opts);
    }
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.qemu_io(0, "write -P 0x11 0 64k");
    c.qemu_io(0, "flush");
    let generation_before = c.status(0)["current_uuid"].as_u64();
    assert!(generation_before.is_some(), "{}", c.status(0));

    faulty.set_failing(true);
    // The Primary's own copy is good: the write succeeds for the client.
    c.qemu_io(0, "write -P 0x22 1M 64k");
    c.wait_disk(1, "Diskless");
    c.wait_for("alice sees bob Diskless", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["peer_disk"] == "Diskless")
    });
    let st = c.status(0);
    assert_eq!(st["disk"], "UpToDate", "{st}");
    assert_ne!(
        st["current_uuid"].as_u64(),
        generation_before,
        "the Primary must start a new data generation when its peer loses a write: {st}"
    );
    assert!(
        c.peer_counter(0, "bob", "out_of_sync_kib") >= 64,
        "the failed range is out of sync for bob: {st}"
    );
    assert!(
        c.log(1).contains("local disk failed"),
        "bob's log names the failure"
    );

    faulty.set_failing(false);
    c.ctl_ok(1, &["attach", "r0"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    assert_eq!(c.peer_counter(0, "bob", "out_of_sync_kib"), 0);
    c.assert_identical(0, 1);
    c.ctl_ok(0, &["secondary", "r0"]);
    for i in 0..2 {
        c.ctl_ok(i, &["down", "r0"]);
    }
    // The new generation is on alice's disk, and bob's bitmap slot there
    // named the old one until the resync (now cleared again).
    let gi = c.ctl_ok(0, &["show-gi", "r0"]);
    let new = format!("{:016X}", st["current_uuid"].as_u64().unwrap());
    assert!(gi.contains(&new), "show-gi lacks {new}: {gi}");
}
