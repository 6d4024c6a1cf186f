//! Application writes through the NBD frontend of the Primary reach the
//! Secondary's disk; while the Secondary is away (admin `disconnect`, or its
//! daemon killed with SIGKILL) writes only mark the Primary's bitmap, and
//! the reconnect resyncs exactly those blocks (an application FLUSH before
//! the peer leaves waits for the peer's barrier, so nothing earlier is
//! counted) — asserted with the resync
//! counters of `status --json` — after which both data areas are identical.
//!
//! How: two real daemons on loopback; qemu-io writes to
//! `<run-dir>/r0.nbd` (skipped with a printed reason without qemu-io).

mod replication_common;

use replication_common::{have_tool, Cluster, ResOpts};

fn synced_pair(protocol: char) -> Cluster {
    let mut c = Cluster::new(
        2,
        &ResOpts {
            protocol,
            ..ResOpts::default()
        },
    );
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c
}

fn writes_replicate(protocol: char) {
    if !have_tool("writes_replicate", "qemu-io") {
        return;
    }
    let c = synced_pair(protocol);
    c.qemu_io(0, "write -P 0xab 0 1M");
    c.qemu_io(0, "write -P 0xcd 3M 512k");
    c.qemu_io(0, "write -z 5M 64k");
    // Protocol A/B may complete before bob's disk has it: wait for the
    // peer to have nothing in flight by checking the data, bounded.
    let start = std::time::Instant::now();
    loop {
        c.qemu_io(0, "flush");
        let same =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.assert_identical(0, 1)));
        if same.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < replication_common::DEADLINE,
            "data never converged"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(c.peer_counter(0, "bob", "out_of_sync_kib"), 0);
}

#[test]
fn nbd_writes_replicate_protocol_c() {
    writes_replicate('C');
}

#[test]
fn nbd_writes_replicate_protocol_b() {
    writes_replicate('B');
}

#[test]
fn nbd_writes_replicate_protocol_a() {
    writes_replicate('A');
}

#[test]
fn disconnect_then_reconnect_resyncs_only_dirty_blocks() {
    if !have_tool(
        "disconnect_then_reconnect_resyncs_only_dirty_blocks",
        "qemu-io",
    ) {
        return;
    }
    let c = synced_pair('C');
    c.qemu_io(0, "write -P 0x01 0 128k");
    // A replicated flush: the peer has those writes on stable storage.
    c.qemu_io(0, "flush");
    c.ctl_ok(1, &["disconnect", "r0"]);
    c.wait_for("bob StandAlone", 1, |st| {
        replication_common::peer_of(st, "alice").is_some_and(|p| p["connection"] == "StandAlone")
    });
    c.wait_for("alice sees bob gone", 0, |st| {
        replication_common::peer_of(st, "bob").is_some_and(|p| p["connection"] != "Connected")
    });
    let sent_before = c.peer_counter(0, "bob", "resync_sent_kib");
    let recv_before = c.peer_counter(1, "alice", "resync_received_kib");
    // 256 KiB + 4 KiB + 12 KiB (overlapping twice) = 272 KiB dirty.
    c.qemu_io(0, "write -P 0x22 8M 256k");
    c.qemu_io(0, "write -P 0x33 10M 4k");
    c.qemu_io(0, "write -P 0x44 12M 12k");
    c.qemu_io(0, "write -P 0x45 12M 12k");
    let dirty_kib = c.peer_counter(0, "bob", "out_of_sync_kib");
    assert_eq!(dirty_kib, 272, "exactly the blocks written while away");
    c.ctl_ok(1, &["connect", "r0"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_peer(1, "alice", "Established", "UpToDate");
    assert_eq!(
        c.peer_counter(0, "bob", "resync_sent_kib") - sent_before,
        dirty_kib
    );
    assert_eq!(
        c.peer_counter(1, "alice", "resync_received_kib") - recv_before,
        dirty_kib
    );
    assert_eq!(c.peer_counter(0, "bob", "out_of_sync_kib"), 0);
    c.assert_identical(0, 1);
}

#[test]
fn killed_secondary_catches_up_with_only_dirty_blocks() {
    if !have_tool(
        "killed_secondary_catches_up_with_only_dirty_blocks",
        "qemu-io",
    ) {
        return;
    }
    let mut c = synced_pair('C');
    c.qemu_io(0, "write -P 0x5a 1M 64k");
    c.qemu_io(0, "flush");
    c.kill_daemon(1);
    c.wait_for("alice sees bob gone", 0, |st| {
        replication_common::peer_of(st, "bob").is_some_and(|p| p["connection"] != "Connected")
    });
    let sent_before = c.peer_counter(0, "bob", "resync_sent_kib");
    c.qemu_io(0, "write -P 0x66 2M 192k");
    let dirty_kib = c.peer_counter(0, "bob", "out_of_sync_kib");
    assert_eq!(dirty_kib, 192, "exactly the blocks written while away");
    c.start_daemon(1);
    c.ctl_ok(1, &["up", "r0"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_disk(1, "UpToDate");
    assert_eq!(
        c.peer_counter(0, "bob", "resync_sent_kib") - sent_before,
        dirty_kib
    );
    c.assert_identical(0, 1);
}

#[test]
fn writes_during_a_running_resync_end_identical() {
    if !have_tool("writes_during_a_running_resync_end_identical", "qemu-io") {
        return;
    }
    let mut c = Cluster::new(
        2,
        &ResOpts {
            resync_rate: "4M".into(),
            ..ResOpts::default()
        },
    );
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_for("SyncSource", 0, |st| {
        replication_common::peer_of(st, "bob").is_some_and(|p| p["replication"] == "SyncSource")
    });
    // Spread over the device: some ranges are synced already, some not yet,
    // some are being synced right now.
    for (k, offset_kib) in [0u64, 64, 1024, 4096, 8192, 12_000, 15_000, 2048, 4100]
        .iter()
        .enumerate()
    {
        c.qemu_io(0, &format!("write -P {} {offset_kib}k 96k", k + 1));
    }
    c.qemu_io(0, "flush");
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
}
