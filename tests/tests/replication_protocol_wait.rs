//! When a write completes, by protocol, with real daemons: the secondary's
//! daemon is frozen (SIGSTOP), so its disk writes and acks are held back while
//! its TCP connection stays up (ping-timeout is raised to 30 s so nothing
//! drops). Under protocol C a write through NBD on the primary must not
//! complete while the peer is frozen and still Connected; it completes after
//! SIGCONT. Under protocol A the same write completes while the peer is frozen.
//!
//! No timed assertion: the C check is "qemu-io had exited AND a status read
//! taken afterwards still shows the frozen peer Connected" — that can only
//! happen if a write completed without the peer's ack and without a
//! disconnect, however slow the machine.

mod replication_common;

use replication_common::{have_tool, peer_of, Cluster, ResOpts, DEADLINE};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh, synced pair with a long ping timeout; returns the cluster.
fn synced_pair(protocol: char) -> Cluster {
    let opts = ResOpts {
        protocol,
        ..ResOpts::default()
    };
    let mut c = Cluster::new(2, &opts);
    for i in 0..2 {
        let path = c.nodes[i].config_dir().join("resources.d/r0.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replace("ping-timeout = 10\n", "ping-timeout = 300\n");
        std::fs::write(&path, text).expect("write config");
    }
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c
}

fn signal(c: &Cluster, i: usize, sig: &str) {
    let pid = c.nodes[i].daemon.as_ref().expect("daemon runs").id();
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

fn spawn_write(c: &Cluster, cmd: &str) -> Child {
    let url = format!(
        "nbd+unix:///r0?socket={}",
        c.nodes[0].run_dir().join("r0.nbd").display()
    );
    Command::new("qemu-io")
        .args(["-f", "raw", &url, "-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-io")
}

fn bob_connected(c: &Cluster) -> bool {
    peer_of(&c.status(0), "bob").is_some_and(|p| p["connection"] == "Connected")
}

#[test]
fn protocol_c_write_waits_for_the_frozen_peer_and_completes_after_it_resumes() {
    if !have_tool("protocol_c_wait", "qemu-io") {
        return;
    }
    let mut c = synced_pair('C');
    signal(&c, 1, "-STOP");
    let mut writer = spawn_write(&c, "write -P 0xc7 1M 64k");
    // Watch for a while: the write must stay pending while bob is Connected.
    let mut observed_waiting = 0;
    while observed_waiting < 10 {
        let exited = writer.try_wait().expect("poll qemu-io").is_some();
        let connected = bob_connected(&c);
        assert!(
            !(exited && connected),
            "protocol C write completed while the peer was frozen and Connected:\n{}",
            c.log(0)
        );
        if !connected {
            break;
        }
        observed_waiting += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        observed_waiting >= 10,
        "bob dropped before the wait could be observed (ping-timeout is 30 s):\n{}",
        c.log(0)
    );
    signal(&c, 1, "-CONT");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = writer.try_wait().expect("poll qemu-io") {
            break s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "write never completed after SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "qemu-io failed: {status}");
    assert!(bob_connected(&c), "the link must not have dropped");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
    c.kill_daemon(1);
}

#[test]
fn protocol_a_write_completes_while_the_peer_is_frozen() {
    if !have_tool("protocol_a_no_wait", "qemu-io") {
        return;
    }
    let mut c = synced_pair('A');
    signal(&c, 1, "-STOP");
    let mut writer = spawn_write(&c, "write -P 0xa7 1M 64k");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = writer.try_wait().expect("poll qemu-io") {
            break s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "protocol A write waited for the frozen peer:\n{}",
            c.log(0)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "qemu-io failed: {status}");
    assert!(
        bob_connected(&c),
        "the write must have completed with bob frozen but Connected"
    );
    signal(&c, 1, "-CONT");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
    c.kill_daemon(1);
}
