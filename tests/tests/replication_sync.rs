//! Initial full sync between two real daemons on loopback: after create-md
//! and up on both nodes, `primary --force` on one makes it the sync source;
//! the other becomes UpToDate and the data areas of both backing files are
//! byte-identical afterwards — for protocols A, B and C.
//!
//! How: two `drbdd` processes with their own config and run directories,
//! file-backed disks under /tmp, driven by `drbdctl`; status is polled as
//! JSON with a generous deadline.

mod replication_common;

use replication_common::{Cluster, ResOpts};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
        .collect()
}

fn full_sync_makes_data_identical(protocol: char) {
    let mut c = Cluster::new(
        2,
        &ResOpts {
            protocol,
            ..ResOpts::default()
        },
    );
    for i in 0..2 {
        c.ctl_ok(i, &["create-md", "r0", "--force"]);
    }
    // Different data on both sides, so the sync has something to do.
    c.poke_disk(0, 0, &pattern(0x5a, 1 << 20));
    c.poke_disk(0, 7 << 20, &pattern(0x11, 300 << 10));
    c.poke_disk(1, 4096, &pattern(0x77, 64 << 10));
    for i in 0..2 {
        c.start_daemon(i);
        c.ctl_ok(i, &["up", "r0"]);
    }
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.wait_peer(1, "alice", "Established", "Inconsistent");

    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_disk(1, "UpToDate");
    c.wait_peer(1, "alice", "Established", "UpToDate");
    c.assert_identical(0, 1);

    let text = c.ctl_ok(0, &["status", "r0"]);
    assert!(text.contains("r0 role:Primary"), "{text}");
    assert!(text.contains("bob role:Secondary"), "{text}");
    assert!(text.contains("peer-disk:UpToDate"), "{text}");
    let st = c.status(0);
    let bob = replication_common::peer_of(&st, "bob").unwrap();
    assert!(
        bob["resync_sent_kib"].as_u64().unwrap() >= c.data_size(0) / 1024,
        "a full sync sends the whole device: {bob}"
    );
}

#[test]
fn initial_full_sync_protocol_a() {
    full_sync_makes_data_identical('A');
}

#[test]
fn initial_full_sync_protocol_b() {
    full_sync_makes_data_identical('B');
}

#[test]
fn initial_full_sync_protocol_c() {
    full_sync_makes_data_identical('C');
}
