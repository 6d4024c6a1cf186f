//! A Secondary whose disk fails a replicated write leaves UpToDate *before*
//! its negative acknowledgement leaves, so it can never come back claiming
//! UpToDate data that lacks the write: with `on-io-error detach` it goes
//! Diskless; with `pass_on` it stays attached but Inconsistent, recorded in
//! its metadata (and detaches when even that metadata write fails). The
//! Primary completes the write (its own copy is good), marks the range out
//! of sync and, having lost the peer's copy, starts a new data generation on
//! disk (DRBD's new current UUID) with the old one as the peer's bitmap UUID.
//! After the fault is gone, `attach` (or a reconnect, for pass_on) resyncs
//! and both copies are identical.
//!
//! How: two real daemons on loopback; bob's backing "device" is a file
//! served by nbdkit's error filter through nbdfuse (see `faulty_disk`), its
//! metadata on that device or on a file of its own; qemu-io writes to
//! alice's NBD export. Skips with a printed reason without nbdkit, nbdfuse,
//! qemu-io or /dev/fuse.

mod faulty_disk;
mod replication_common;

use faulty_disk::FaultyDisk;
use replication_common::{peer_of, Cluster, ResOpts};

/// Where bob's metadata lives.
#[derive(Clone, Copy, PartialEq)]
enum BobMeta {
    /// Internal: on the failing device.
    OnTheFailingDisk,
    /// `meta-disk` on a healthy file.
    Apart,
}

/// A synced pair whose Secondary (bob) runs `on-io-error = policy` on a disk
/// that has just failed one replicated 64 KiB write, after which bob's disk
/// state is `bob_disk`; None when the tools are missing. Returns the
/// cluster and bob's disk (fault cleared again).
fn failed_secondary_write(
    test: &str,
    policy: &str,
    meta: BobMeta,
    bob_disk: &str,
) -> Option<(Cluster, FaultyDisk)> {
    if !faulty_disk::available(test) {
        return None;
    }
    let opts = ResOpts::default();
    let faulty = FaultyDisk::start(opts.disk_bytes);
    let mut c = Cluster::new(2, &opts);
    c.nodes[1].disk = faulty.disk();
    let apart = c.meta_apart(1);
    let policy_line = format!("[disk]\non-io-error = \"{policy}\"\n");
    c.write_configs_with(&opts, |text| {
        let text = text.replace("[disk]\n", &policy_line);
        match meta {
            BobMeta::Apart => apart(text),
            BobMeta::OnTheFailingDisk => text,
        }
    });
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.qemu_io(0, "write -P 0x11 0 64k");
    c.qemu_io(0, "flush");
    let before = c.status(0)["current_uuid"].as_u64();
    assert!(before.is_some(), "no current_uuid: {}", c.status(0));

    faulty.set_failing(true);
    // The Primary's own copy is good: the write succeeds for the client.
    c.qemu_io(0, "write -P 0x22 1M 64k");
    c.wait_disk(1, bob_disk);
    c.wait_for(&format!("alice sees bob {bob_disk}"), 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["peer_disk"] == bob_disk)
    });
    faulty.set_failing(false);
    let st = c.status(0);
    assert_eq!(st["disk"], "UpToDate", "{st}");
    assert_ne!(
        st["current_uuid"].as_u64(),
        before,
        "the Primary must start a new data generation when its peer loses a write: {st}"
    );
    assert!(
        c.peer_counter(0, "bob", "out_of_sync_kib") >= 64,
        "the failed range is out of sync for bob: {st}"
    );
    Some((c, faulty))
}

/// After the repair: bob UpToDate again, nothing out of sync, same data.
fn assert_repaired(c: &Cluster) {
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    assert_eq!(c.peer_counter(0, "bob", "out_of_sync_kib"), 0);
    c.assert_identical(0, 1);
}

#[test]
fn secondary_write_error_detaches_it_and_the_primary_starts_a_new_generation() {
    let test = "secondary_write_error_detaches_it";
    let failed = failed_secondary_write(test, "detach", BobMeta::OnTheFailingDisk, "Diskless");
    let Some((c, _faulty)) = failed else {
        return;
    };
    assert!(
        c.log(1).contains("local disk failed"),
        "bob's log names the failure"
    );
    let current = c.status(0)["current_uuid"].as_u64().unwrap();
    c.ctl_ok(1, &["attach", "r0"]);
    assert_repaired(&c);
    c.ctl_ok(0, &["secondary", "r0"]);
    for i in 0..2 {
        c.ctl_ok(i, &["down", "r0"]);
    }
    // The new generation is on alice's disk.
    let gi = c.ctl_ok(0, &["show-gi", "r0"]);
    let new = format!("{current:016X}");
    assert!(gi.contains(&new), "show-gi lacks {new}: {gi}");
}

#[test]
fn secondary_write_error_with_pass_on_makes_it_inconsistent_until_a_resync() {
    let test = "secondary_write_error_with_pass_on";
    let failed = failed_secondary_write(test, "pass_on", BobMeta::Apart, "Inconsistent");
    let Some((c, _faulty)) = failed else {
        return;
    };
    // Inconsistent is in bob's metadata, not only in memory: the GI line's
    // flags (consistent:was-up-to-date:primary:...) start with 0:0.
    let gi = c.ctl_ok(1, &["show-gi", "r0"]);
    let line = gi
        .lines()
        .find(|l| l.matches(':').count() == 9)
        .unwrap_or_else(|| panic!("no GI line in {gi}"));
    let flags: Vec<&str> = line.split(':').skip(4).collect();
    assert_eq!(
        &flags[..2],
        ["0", "0"],
        "bob's metadata must say inconsistent: {line}"
    );
    // A new handshake resyncs the Inconsistent node from the UpToDate one.
    c.ctl_ok(1, &["disconnect", "r0"]);
    c.ctl_ok(1, &["connect", "r0"]);
    assert_repaired(&c);
    c.ctl_ok(0, &["secondary", "r0"]);
    for i in 0..2 {
        c.ctl_ok(i, &["down", "r0"]);
    }
}

#[test]
fn pass_on_detaches_when_even_the_metadata_write_fails() {
    // bob's metadata is on the failing disk: bob cannot record Inconsistent,
    // so it detaches as for any metadata I/O error.
    let test = "pass_on_detaches_when_the_metadata_write_fails";
    let failed = failed_secondary_write(test, "pass_on", BobMeta::OnTheFailingDisk, "Diskless");
    let Some((c, _faulty)) = failed else {
        return;
    };
    c.ctl_ok(1, &["attach", "r0"]);
    assert_repaired(&c);
}
