//! What an admin sees while a resync runs, DRBD 9 style (guide 11.2.4):
//! `drbdctl status` shows `replication:SyncSource peer-disk:Inconsistent
//! done:<percent>` on the source and `replication:SyncTarget` with
//! `disk:Inconsistent` on the target, `events` lists the peer-device
//! states, and the target cannot be promoted meanwhile (exit code 11).
//! Disconnect/connect move the connection between StandAlone, Connecting
//! and Connected.
//!
//! How: a slow resync (resync-rate 2M over a 16 MiB disk) between two real
//! daemons; status is polled until the states show up.

mod replication_common;

use replication_common::{peer_of, Cluster, ResOpts};

#[test]
fn status_shows_sync_progress_and_target_cannot_be_promoted() {
    let mut c = Cluster::new(
        2,
        &ResOpts {
            resync_rate: "2M".into(),
            ..ResOpts::default()
        },
    );
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_for("SyncSource with progress", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| {
            p["replication"] == "SyncSource" && p["done_tenths_percent"].as_u64().is_some()
        })
    });
    let text = c.ctl_ok(0, &["status", "r0"]);
    assert!(
        text.contains("    replication:SyncSource peer-disk:Inconsistent done:"),
        "{text}"
    );
    // Progress in words: done/total KiB, rate and ETA (guide 11.2.4 shows
    // done:; drbdd adds the rest with --verbose and in the JSON).
    let verbose = c.ctl_ok(0, &["status", "r0", "--verbose"]);
    assert!(verbose.contains("resync: done:"), "{verbose}");
    assert!(verbose.contains("K/s eta:"), "{verbose}");
    let json = c.status(0);
    let total = peer_of(&json, "bob").and_then(|p| p["resync"]["total_kib"].as_u64());
    assert!(total.is_some_and(|t| t > 0), "{json}");
    c.wait_for("SyncTarget", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["replication"] == "SyncTarget")
    });
    let text = c.ctl_ok(1, &["status", "r0", "--verbose"]);
    assert!(text.contains("disk:Inconsistent"), "{text}");
    assert!(
        text.contains("replication:SyncTarget peer-disk:UpToDate"),
        "{text}"
    );
    let events = c.ctl_ok(1, &["events", "--now"]);
    assert!(events.contains("replication:SyncTarget"), "{events}");
    // The core refuses promoting a sync target as a state change (exit 11,
    // "wait for the resync to finish"); Inconsistent without a sync is 17
    // (replication_failover.rs).
    let out = c.ctl(1, &["primary", "r0"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert_eq!(c.status(1)["role"], "Secondary");
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
}

#[test]
fn disconnect_and_connect_change_the_connection_state() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["disconnect", "r0"]);
    let text = c.ctl_ok(0, &["status", "r0"]);
    assert!(text.contains("bob connection:StandAlone"), "{text}");
    c.wait_for("bob Connecting", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["connection"] == "Connecting")
    });
    c.ctl_ok(0, &["connect", "r0"]);
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.wait_peer(1, "alice", "Established", "Inconsistent");
    // The listening side can disconnect and reconnect too.
    c.ctl_ok(1, &["disconnect", "r0"]);
    c.wait_for("alice Connecting", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["connection"] == "Connecting")
    });
    c.ctl_ok(1, &["connect"]);
    c.wait_peer(1, "alice", "Established", "Inconsistent");
}

#[test]
fn events_stream_reports_connection_and_peer_device_changes() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut c = Cluster::new(2, &ResOpts::default());
    c.ctl_ok(1, &["create-md", "r0", "--force"]);
    c.start_daemon(1);
    c.ctl_ok(1, &["up", "r0"]);
    let n = &c.nodes[1];
    let mut events = Command::new(replication_common::bin_dir().join("drbdctl"))
        .arg("--run-dir")
        .arg(n.run_dir())
        .arg("--config-dir")
        .arg(n.config_dir())
        .arg("--node")
        .arg(&n.name)
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    c.ctl_ok(0, &["create-md", "r0", "--force"]);
    c.start_daemon(0);
    c.ctl_ok(0, &["up", "r0"]);
    c.wait_peer(1, "alice", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    let wanted = [
        "change connection name:r0 peer-node-id:0 conn-name:alice connection:Connected",
        "change peer-device name:r0 peer-node-id:0 conn-name:alice volume:0 replication:SyncTarget",
        "change peer-device name:r0 peer-node-id:0 conn-name:alice volume:0 replication:Established peer-disk:UpToDate",
    ];
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + replication_common::DEADLINE;
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.starts_with(w)))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("events missing {wanted:?}; got:\n{}", seen.join("\n")),
        }
    }
    let _ = events.kill();
    let _ = events.wait();
}

#[test]
fn adjust_keeps_established_connections() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    let opts = ResOpts {
        net_extra: "after-sb-0pri = \"discard-zero-changes\"\n".into(),
        ..ResOpts::default()
    };
    c.write_config(0, &opts);
    c.ctl_ok(0, &["adjust", "r0"]);
    let st = c.status(0);
    let bob = peer_of(&st, "bob").unwrap();
    assert_eq!(bob["connection"], "Connected", "{st}");
    assert_eq!(bob["replication"], "Established", "{st}");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
}

#[test]
fn down_and_up_again_reconnects() {
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    for _ in 0..2 {
        c.ctl_ok(1, &["down", "r0"]);
        c.wait_for("bob gone", 0, |st| {
            peer_of(st, "bob").is_some_and(|p| p["connection"] == "Connecting")
        });
        c.ctl_ok(1, &["up", "r0"]);
        c.wait_peer(0, "bob", "Established", "UpToDate");
        c.wait_peer(1, "alice", "Established", "UpToDate");
    }
    c.assert_identical(0, 1);
}
