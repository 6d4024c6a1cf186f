//! The data path with a connected peer: writes a client sends through the
//! NBD export of the Primary (patterns, a device-sized discard as mkfs sends
//! it, write-zeroes, FUA) reach the Secondary, whose data area ends up
//! byte-identical; after a fail-over the new Primary serves them from its own
//! export; detach/attach on the Secondary restarts its data path; and a
//! SIGTERM to the Primary's daemon while fio writes through NBD ends the
//! daemon cleanly within a bounded time. Two real daemons on loopback (the
//! replication tests' harness), real qemu-io and fio.

mod replication_common;

use replication_common::{Cluster, ResOpts};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: {tool} is not installed (scripts/install-deps.sh)");
    }
    ok
}

fn synced_pair() -> Cluster {
    let mut c = Cluster::new(
        2,
        &ResOpts {
            disk_bytes: 64 * MIB,
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

fn uri(c: &Cluster, i: usize) -> String {
    format!(
        "nbd+unix:///r0?socket={}",
        c.nodes[i].run_dir().join("r0.nbd").display()
    )
}

#[test]
fn writes_through_nbd_on_the_primary_reach_the_peer() {
    if !have("qemu-io") {
        return;
    }
    let c = synced_pair();
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&c, 0)])
        .args(["-c", "discard 0 60M"])
        .args(["-c", "write -P 0x6b 0 1M"])
        .args(["-c", "write -P 0x6c 5M 256k"])
        .args(["-c", "write -z 8M 4M"])
        .args(["-c", "write -f -P 0x6d 20M 64k"])
        .args(["-c", "flush"])
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_for("bob in sync", 0, |st| {
        st["peers"][0]["out_of_sync_kib"] == 0 && st["peers"][0]["peer_disk"] == "UpToDate"
    });
    c.assert_identical(0, 1);
    let st = c.status(0);
    assert!(
        st["peers"][0]["sent_kib"].as_u64().unwrap_or(0) >= 1024 + 256 + 64,
        "replicated bytes: {st}"
    );
}

#[test]
fn sigterm_under_nbd_write_load_stops_the_primary_cleanly() {
    if !have("fio") {
        return;
    }
    let mut c = synced_pair();
    let mut load = Command::new("fio")
        .args([
            "--name=drbdd-load",
            "--ioengine=nbd",
            &format!("--uri={}", uri(&c, 0)),
            "--rw=randwrite",
            "--bs=4k",
            "--size=32M",
            "--iodepth=16",
            "--time_based",
            "--runtime=30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(2));
    let mut daemon = c.nodes[0].daemon.take().expect("alice's daemon");
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = loop {
        if let Ok(Some(s)) = daemon.try_wait() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = daemon.kill();
            panic!(
                "drbdd did not stop within 30 s of SIGTERM; log:\n{}",
                c.log(0)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = load.kill();
    let _ = load.wait();
    eprintln!(
        "SIGTERM under load: stopped in {} ms with {status}",
        started.elapsed().as_millis()
    );
    assert!(status.success(), "drbdd exit after SIGTERM: {status}");
}

#[test]
fn detach_and_attach_on_the_secondary_restart_its_data_path_and_catch_up() {
    if !have("qemu-io") {
        return;
    }
    let c = synced_pair();
    c.ctl_ok(1, &["detach", "r0"]);
    c.wait_disk(1, "Diskless");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&c, 0)])
        .args(["-c", "write -P 0x7e 3M 512k", "-c", "flush"])
        .output()
        .expect("run qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ctl_ok(1, &["attach", "r0"]);
    c.wait_disk(1, "UpToDate");
    c.wait_for("bob in sync", 0, |st| {
        st["peers"][0]["out_of_sync_kib"] == 0 && st["peers"][0]["peer_disk"] == "UpToDate"
    });
    c.assert_identical(0, 1);
}

#[test]
fn failover_serves_the_primarys_writes_from_the_peers_export() {
    if !have("qemu-io") {
        return;
    }
    let c = synced_pair();
    let write = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&c, 0)])
        .args(["-c", "write -P 0x9a 7M 1M", "-c", "write -f -P 0x9b 30M 4k"])
        .output()
        .expect("run qemu-io");
    assert!(write.status.success());
    c.ctl_ok(0, &["secondary", "r0"]);
    c.ctl_ok(1, &["primary", "r0"]);
    let read = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&c, 1)])
        .args(["-c", "read -P 0x9a 7M 1M", "-c", "read -P 0x9b 30M 4k"])
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success() && !text.contains("Pattern verification failed"),
        "bob's export after fail-over: {text}{}",
        String::from_utf8_lossy(&read.stderr)
    );
    // The old Primary now refuses clients.
    let refused = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&c, 0), "-c", "read 0 4k"])
        .output()
        .expect("run qemu-io");
    assert!(!refused.status.success());
}
