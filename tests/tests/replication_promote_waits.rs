//! Promotion waits for the former Primary's writes: under protocol A the
//! Primary's writes complete before the Secondary has them on disk; when the
//! Secondary's disk is stuck, writes of a later epoch are still held (not
//! even submitted) when the old Primary demotes. If the Secondary were
//! promoted then, its own application write to such a block could reach the
//! disk first and be overwritten by the older replicated data afterwards.
//! `drbdctl primary` therefore waits until those writes are on the disk.
//!
//! How: two real daemons on loopback; bob's backing "device" is a file
//! served by nbdkit's pause filter through nbdfuse (see `faulty_disk`), with
//! bob's metadata on a separate file (a promotion writes it), so
//! the test holds bob's disk I/O while alice writes two epochs (a write, a
//! flush, a second write), demotes alice, starts `primary` on bob, releases
//! the disk, writes the second block on bob and reads back bob's data. With
//! the wait the data is bob's; without it the held write of alice lands
//! last. Skips with a printed reason without nbdkit, nbdfuse, qemu-io or
//! /dev/fuse.

mod faulty_disk;
mod replication_common;

use faulty_disk::FaultyDisk;
use replication_common::{bin_dir, peer_of, Cluster, ResOpts};
use std::process::Command;
use std::time::Duration;

fn qemu_io_on(c: &Cluster, i: usize, cmd: &str) -> Command {
    let url = format!(
        "nbd+unix:///r0?socket={}",
        c.nodes[i].run_dir().join("r0.nbd").display()
    );
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw", &url, "-c", cmd]);
    q
}

#[test]
fn primary_waits_until_the_former_primarys_writes_are_on_disk() {
    let test = "primary_waits_for_the_former_primarys_writes";
    if !faulty_disk::available(test) {
        return;
    }
    let opts = ResOpts {
        protocol: 'A',
        ..ResOpts::default()
    };
    let disk = FaultyDisk::start_pausable(opts.disk_bytes);
    let mut c = Cluster::new(2, &opts);
    c.nodes[1].disk = disk.disk();
    // bob's metadata stays off the paused device: a promotion writes it.
    let apart = c.meta_apart(1);
    c.write_configs_with(&opts, apart);
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");

    disk.pause();
    // Two epochs: the flush closes the first, so bob holds the second
    // write until the first one (stuck on the paused disk) is done.
    c.qemu_io(0, "write -P 0xa1 0 4k");
    c.qemu_io(0, "flush");
    c.qemu_io(0, "write -P 0xa2 1M 4k");
    c.ctl_ok(0, &["secondary", "r0"]);
    c.wait_for("bob sees alice Secondary", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["role"] == "Secondary")
    });

    let promote = {
        let (run, cfg, node) = (
            c.nodes[1].run_dir(),
            c.nodes[1].config_dir(),
            c.nodes[1].name.clone(),
        );
        std::thread::spawn(move || {
            Command::new(bin_dir().join("drbdctl"))
                .arg("--run-dir")
                .arg(run)
                .arg("--config-dir")
                .arg(cfg)
                .args(["--node", &node, "primary", "r0"])
                .output()
                .expect("run drbdctl")
        })
    };
    // Give a promotion that does not wait the time to go through, and then
    // an application write to the held block the time to reach the disk's
    // queue ahead of the held replicated write.
    std::thread::sleep(Duration::from_millis(1500));
    let early_write = promote.is_finished().then(|| {
        qemu_io_on(&c, 1, "write -P 0xb2 1M 4k")
            .spawn()
            .expect("run qemu-io")
    });
    std::thread::sleep(Duration::from_millis(500));
    disk.resume();
    let out = promote.join().unwrap();
    assert!(
        out.status.success(),
        "primary on bob: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match early_write {
        Some(mut w) => assert!(w.wait().unwrap().success()),
        None => {
            c.qemu_io(1, "write -P 0xb2 1M 4k");
        }
    }
    // Both of alice's writes and bob's own write are on bob's disk, bob's last.
    c.qemu_io(1, "read -P 0xa1 0 4k");
    c.qemu_io(1, "read -P 0xb2 1M 4k");
    c.ctl_ok(1, &["secondary", "r0"]);
    for i in 0..2 {
        c.ctl_ok(i, &["down", "r0"]);
    }
    let data = std::fs::read(disk.disk()).unwrap();
    assert!(data[1 << 20..(1 << 20) + 4096].iter().all(|b| *b == 0xb2));
}
