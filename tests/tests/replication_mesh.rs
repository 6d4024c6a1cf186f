//! Three nodes in a full mesh: `primary --force` on one node fully syncs
//! both secondaries; all three data areas end up byte-identical and every
//! node sees the two others Connected with UpToDate disks. Two secondaries
//! that meet while both are sync targets stay connected; a Primary that loses
//! one secondary tells the other about its new data generation in place.

mod replication_common;

use replication_common::{Cluster, ResOpts};

#[test]
fn three_node_mesh_full_sync_to_two_secondaries() {
    let mut c = Cluster::new(3, &ResOpts::default());
    for i in 0..3 {
        c.ctl_ok(i, &["create-md", "r0", "--force"]);
    }
    let data: Vec<u8> = (0..(2u32 << 20))
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    c.poke_disk(0, 1 << 20, &data);
    for i in 0..3 {
        c.start_daemon(i);
        c.ctl_ok(i, &["up", "r0"]);
    }
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.wait_peer(0, "carol", "Established", "Inconsistent");
    c.wait_peer(1, "carol", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_disk(2, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_peer(0, "carol", "Established", "UpToDate");
    c.wait_peer(1, "carol", "Established", "UpToDate");
    c.wait_peer(2, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
    c.assert_identical(0, 2);
}

#[test]
fn three_node_mesh_one_secondary_away_catches_up_and_all_stay_identical() {
    if !replication_common::have_tool("mesh_secondary_away", "qemu-io") {
        return;
    }
    let mut c = Cluster::new(3, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.wait_peer(0, "carol", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_disk(2, "UpToDate");
    c.qemu_io(0, "write -P 0x10 0 512k");
    c.ctl_ok(1, &["disconnect", "r0"]);
    c.qemu_io(0, "write -P 0x20 2M 256k");
    c.qemu_io(0, "flush");
    c.ctl_ok(1, &["connect", "r0"]);
    for (i, peers) in [
        (0, ["bob", "carol"]),
        (1, ["alice", "carol"]),
        (2, ["alice", "bob"]),
    ] {
        for p in peers {
            c.wait_peer(i, p, "Established", "UpToDate");
        }
    }
    c.wait_disk(1, "UpToDate");
    c.assert_identical(0, 1);
    c.assert_identical(0, 2);
}

#[test]
fn three_node_mesh_secondaries_meeting_mid_resync_stay_connected_and_end_up_to_date() {
    // Carol comes up while bob is already sync target of alice: bob and carol
    // are both Inconsistent (bob with his sync UUID as current) and must not
    // call each other "unrelated".
    let opts = ResOpts {
        resync_rate: "2M".into(),
        ..ResOpts::default()
    };
    let mut c = Cluster::new(3, &opts);
    for i in 0..3 {
        c.ctl_ok(i, &["create-md", "r0", "--force"]);
    }
    for i in 0..2 {
        c.start_daemon(i);
        c.ctl_ok(i, &["up", "r0"]);
    }
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "SyncSource", "Inconsistent");
    c.start_daemon(2);
    c.ctl_ok(2, &["up", "r0"]);
    c.wait_peer(2, "alice", "SyncTarget", "UpToDate");
    c.wait_peer(2, "bob", "Established", "Inconsistent");
    for (i, peers) in [
        (0, ["bob", "carol"]),
        (1, ["alice", "carol"]),
        (2, ["alice", "bob"]),
    ] {
        for p in peers {
            c.wait_peer(i, p, "Established", "UpToDate");
        }
    }
    c.assert_identical(0, 1);
    c.assert_identical(0, 2);
    for i in 0..3 {
        assert!(!c.log(i).contains("unrelated"), "{}", c.log(i));
    }
}

#[test]
fn three_node_mesh_primary_losing_a_peer_announces_the_new_generation_without_reconnects() {
    if !replication_common::have_tool("mesh_new_generation", "qemu-io") {
        return;
    }
    let mut c = Cluster::new(3, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.wait_peer(0, "carol", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_disk(2, "UpToDate");
    c.wait_peer(1, "carol", "Established", "UpToDate");
    c.kill_daemon(1);
    c.wait_for("carol follows alice's new generation", 2, |_| {
        c.log(2).contains("following it")
    });
    c.qemu_io(0, "write -P 0x30 1M 256k");
    c.qemu_io(0, "flush");
    // One handshake with alice in carol's log: the new generation reached
    // carol over the connection she already had.
    let handshakes = c.log(2).matches("handshake with node 0 done").count();
    assert_eq!(handshakes, 1, "{}", c.log(2));
    c.wait_peer(0, "carol", "Established", "UpToDate");
    c.wait_peer(2, "alice", "Established", "UpToDate");
    c.assert_identical(0, 2);
}
