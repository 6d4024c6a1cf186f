//! fio through its nbd engine against a resource served by a real daemon:
//! 4 KiB random read/write with crc32c verification must finish without a
//! verify error; and a crash (kill -9 of the daemon under a write load) must
//! lose no data that was written and flushed before it, while every extent
//! of the activity log comes back out of sync for the peer (the writes may
//! have reached only this node's disk).

mod datapath_common;

use datapath_common::{have_tools, qemu_io_ok, Node};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// One activity-log extent (4 MiB) in KiB.
const AL_EXTENT_KIB: u64 = 4096;

#[test]
fn fio_randrw_with_crc32c_verify_passes_through_the_nbd_engine() {
    if !have_tools("fio_randrw_verify", &["fio"]) {
        return;
    }
    let mut node = Node::new(128 * MIB, "");
    node.bring_up_primary();
    let out = Command::new("fio")
        .args([
            "--name=drbdd-rw",
            "--ioengine=nbd",
            &format!("--uri={}", node.uri()),
            "--rw=randrw",
            "--bs=4k",
            "--size=64M",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=normal",
        ])
        .output()
        .expect("run fio");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fio failed: {text}");
    assert!(
        !text.contains("verify failed") && !text.contains("bad magic"),
        "fio verify error: {text}"
    );
    assert!(text.contains("err= 0"), "fio reported errors: {text}");
    let summary: Vec<&str> = text.lines().filter(|l| l.contains("IOPS=")).collect();
    eprintln!("fio 4k randrw verify through drbdd: {summary:?}");
}

#[test]
fn kill9_under_write_load_keeps_flushed_data_and_marks_al_extents_out_of_sync() {
    if !have_tools("kill9_under_write_load", &["fio", "qemu-io"]) {
        return;
    }
    let mut node = Node::new(128 * MIB, "");
    node.bring_up_primary();
    let uri = node.uri();
    // Acknowledged and flushed before the crash: one 64 KiB block in each of
    // AL extents 1, 3 and 10.
    qemu_io_ok(
        &uri,
        &[
            "write -P 0xc3 4M 64k",
            "write -P 0xc4 12M 64k",
            "write -P 0xc5 40M 64k",
            "flush",
        ],
    );
    // A write load on 64M..128M (extents 16..31) while the daemon dies.
    let mut load = Command::new("fio")
        .args([
            "--name=drbdd-load",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--offset=64M",
            "--size=64M",
            "--iodepth=16",
            "--time_based",
            "--runtime=30",
            "--fsync=32",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(2));
    node.kill9();
    let _ = load.kill();
    let _ = load.wait();

    node.start();
    node.ctl_ok(&["up", "r0"]);
    let st = node.status();
    assert_eq!(st["disk"], "UpToDate", "after the crash: {st}");
    let oos_kib = st["peers"][0]["out_of_sync_kib"].as_u64().unwrap_or(0);
    // Whole extents, not just the blocks written: the activity log was
    // replayed. Extents 1, 3, 10 and 16..=30 complete (31 is cut short by the
    // internal metadata); two seconds of random 4 KiB writes alone could not
    // cover 60 MiB.
    assert!(
        oos_kib >= 18 * AL_EXTENT_KIB,
        "out of sync for bob after the crash: {oos_kib} KiB; status {st}\nlog:\n{}",
        datapath_common::tail(&node.log(), 30)
    );
    let text = node.ctl_ok(&["status", "r0", "--verbose"]);
    eprintln!("after kill -9 and restart ({oos_kib} KiB out of sync for bob):\n{text}");
    node.ctl_ok(&["primary", "r0"]);
    qemu_io_ok(
        &uri,
        &[
            "read -P 0xc3 4M 64k",
            "read -P 0xc4 12M 64k",
            "read -P 0xc5 40M 64k",
        ],
    );
    assert!(node
        .backing_bytes(40 * MIB, 64 << 10)
        .iter()
        .all(|b| *b == 0xc5));
}
