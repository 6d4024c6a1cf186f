//! Failover as in the two-node guide: after the initial sync, demote alice,
//! promote bob (its data is UpToDate), fail back; a node whose data is not
//! UpToDate cannot be promoted (exit code 17, like drbdadm) while `--force`
//! can; nor can a node while its connected peer is Primary (exit 11). Roles
//! are visible to the peer (`role:` in status, events2 lines).

mod replication_common;

use replication_common::{peer_of, Cluster, ResOpts};

#[test]
fn promote_refused_with_exit_17_while_inconsistent() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(1, "alice", "Established", "Inconsistent");
    let out = c.ctl(1, &["primary", "r0"]);
    assert_eq!(
        out.status.code(),
        Some(17),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.status(1)["role"], "Secondary");
}

#[test]
fn demote_promote_peer_and_fail_back() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(1, "alice", "Established", "UpToDate");
    c.wait_for("alice seen as Primary", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["role"] == "Primary")
    });
    // Two primaries are not allowed: bob cannot take over while alice is
    // Primary (drbdsetup: "Multiple primaries not allowed by config", 11).
    let out = c.ctl(1, &["primary", "r0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("two primaries are not allowed"), "{stderr}");
    assert_eq!(c.status(1)["role"], "Secondary");
    c.ctl_ok(0, &["secondary", "r0"]);
    c.wait_for("alice seen as Secondary", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["role"] == "Secondary")
    });
    c.ctl_ok(1, &["primary", "r0"]);
    c.wait_for("bob seen as Primary", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["role"] == "Primary")
    });
    let events = c.ctl_ok(0, &["events", "--now"]);
    assert!(
        events.contains("conn-name:bob connection:Connected role:Primary"),
        "{events}"
    );
    // Fail back.
    c.ctl_ok(1, &["secondary", "r0"]);
    c.ctl_ok(0, &["primary", "r0"]);
    c.wait_for("alice Primary again", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["role"] == "Primary")
    });
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
}

#[test]
fn failover_with_writes_through_nbd_keeps_both_copies_identical() {
    if !replication_common::have_tool("failover_with_writes", "qemu-io") {
        return;
    }
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.qemu_io(0, "write -P 0xa1 0 1M");
    // The Secondary's device refuses opens.
    let url = format!(
        "nbd+unix:///r0?socket={}",
        c.nodes[1].run_dir().join("r0.nbd").display()
    );
    let refused = std::process::Command::new("qemu-io")
        .args(["-f", "raw", &url, "-c", "write -P 0xee 0 4k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&refused.stderr).into_owned()
        + &String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() || text.contains("failed"),
        "write on the Secondary succeeded: {text}"
    );
    c.ctl_ok(0, &["secondary", "r0"]);
    c.ctl_ok(1, &["primary", "r0"]);
    c.qemu_io(1, "write -P 0xb2 512k 1M");
    c.qemu_io(1, "read -P 0xa1 0 512k");
    c.ctl_ok(1, &["secondary", "r0"]);
    c.ctl_ok(0, &["primary", "r0"]);
    c.qemu_io(0, "read -P 0xb2 512k 1M");
    c.qemu_io(0, "write -P 0xc3 4M 64k");
    c.qemu_io(0, "flush");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
}

#[test]
fn primary_killed_peer_takes_over_and_old_primary_rejoins_as_target() {
    if !replication_common::have_tool("primary_killed", "qemu-io") {
        return;
    }
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.qemu_io(0, "write -P 0x71 0 1M");
    c.kill_daemon(0);
    c.wait_for("bob sees alice gone", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["connection"] != "Connected")
    });
    // Bob's data is UpToDate: it takes over without --force.
    c.ctl_ok(1, &["primary", "r0"]);
    c.qemu_io(1, "write -P 0x72 512k 1M");
    c.qemu_io(1, "read -P 0x71 0 512k");
    // Alice comes back (crashed Primary) and resyncs from bob.
    c.start_daemon(0);
    c.ctl_ok(0, &["up", "r0"]);
    c.wait_peer(1, "alice", "Established", "UpToDate");
    c.wait_disk(0, "UpToDate");
    c.assert_identical(0, 1);
    let st = c.status(0);
    assert_eq!(st["role"], "Secondary", "{st}");
}

#[test]
fn promote_refused_with_exit_17_while_outdated() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.kill_daemon(0);
    c.ctl_ok(1, &["down", "r0"]);
    // Mark bob's data Outdated (as fencing or `outdate` would) through the
    // metadata dump, then bring it up alone.
    let dump = c.ctl_ok(1, &["dump-md", "r0"]);
    let edited: String = dump
        .lines()
        .map(|l| {
            if l.starts_with("flags ") {
                format!("{l},outdated\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = c.nodes[1].dir.join("md.txt");
    std::fs::write(&path, edited).unwrap();
    c.ctl_ok(1, &["restore-md", "r0", path.to_str().unwrap()]);
    c.ctl_ok(1, &["up", "r0"]);
    c.wait_disk(1, "Outdated");
    let out = c.ctl(1, &["primary", "r0"]);
    assert_eq!(
        out.status.code(),
        Some(17),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.status(1)["role"], "Secondary");
}

#[test]
fn outdated_secondary_becomes_up_to_date_when_it_meets_its_up_to_date_peer() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.ctl_ok(0, &["secondary", "r0"]);
    c.ctl_ok(1, &["down", "r0"]);
    let dump = c.ctl_ok(1, &["dump-md", "r0"]);
    let edited: String = dump
        .lines()
        .map(|l| {
            if l.starts_with("flags ") {
                format!("{l},outdated\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = c.nodes[1].dir.join("md.txt");
    std::fs::write(&path, edited).unwrap();
    c.ctl_ok(1, &["restore-md", "r0", path.to_str().unwrap()]);
    c.ctl_ok(1, &["up", "r0"]);
    // Same generation, no bitmap, alice UpToDate: no resync, just UpToDate.
    c.wait_peer(1, "alice", "Established", "UpToDate");
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
    c.ctl_ok(1, &["primary", "r0"]);
    assert_eq!(c.status(1)["role"], "Primary");
}
