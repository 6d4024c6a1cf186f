//! Failover as in the two-node guide: after the initial sync, demote alice,
//! promote bob (its data is UpToDate), fail back; a node whose data is not
//! UpToDate cannot be promoted (exit code 17, like drbdadm) while `--force`
//! can. Roles are visible to the peer (`role:` in status, events2 lines).

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
    // Two primaries are not allowed: bob cannot take over while alice is Primary.
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
