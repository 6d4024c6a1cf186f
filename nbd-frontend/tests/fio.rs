//! fio's nbd engine (libnbd) against the in-process server over a
//! `MemTarget`: 4 KiB random read/write with crc32c verification at queue
//! depth 16, a write-then-verify pass with fsyncs, and several connections
//! at once on disjoint regions (multi-conn). fio exits non-zero on any verify
//! mismatch or I/O error; we also check the bytes reached the target. Skips
//! with a printed reason when fio or its nbd engine is missing.

mod common;

use common::{have_tool, serve_mem};
use drbdd_nbd::ServerOptions;
use std::process::Command;

fn have_fio_nbd() -> bool {
    have_tool("fio", &["--enghelp=nbd"], "fio (built with libnbd)")
}

fn fio(args: &[String]) -> String {
    let out = Command::new("fio").args(args).output().expect("run fio");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "fio failed:\n{text}");
    assert!(
        !text.contains("verify: bad"),
        "fio verify mismatch:\n{text}"
    );
    for line in text.lines().filter(|l| l.contains("err=")) {
        assert!(
            line.contains("err= 0"),
            "fio reported an error: {line}\n{text}"
        );
    }
    text
}

fn common_args(uri: &str) -> Vec<String> {
    [
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--group_reporting",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn fio_randrw_4k_crc32c_verify_passes() {
    if !have_fio_nbd() {
        return;
    }
    let served = serve_mem(64 << 20, ServerOptions::default());
    let mut args = common_args(&served.uri());
    args.extend(
        [
            "--name=randrw",
            "--rw=randrw",
            "--bs=4k",
            "--size=64M",
            "--iodepth=16",
            "--runtime=4",
            "--time_based",
            "--verify=crc32c",
        ]
        .map(String::from),
    );
    let out = fio(&args);
    assert!(out.contains("IOPS="), "{out}");
    assert!(
        served.mem.snapshot().iter().any(|&b| b != 0),
        "fio's writes reached the target"
    );
}

#[test]
fn fio_write_then_verify_with_fsync_passes() {
    if !have_fio_nbd() {
        return;
    }
    let served = serve_mem(64 << 20, ServerOptions::default());
    let mut args = common_args(&served.uri());
    args.extend(
        [
            "--name=wverify",
            "--rw=randwrite",
            "--bs=64k",
            "--size=32M",
            "--iodepth=8",
            "--fsync=32",
            "--verify=crc32c",
            "--do_verify=1",
        ]
        .map(String::from),
    );
    fio(&args);
    let snap = served.mem.snapshot();
    assert!(snap[..32 << 20].iter().any(|&b| b != 0));
    assert!(
        snap[32 << 20..].iter().all(|&b| b == 0),
        "fio stayed inside its 32 MiB region"
    );
}

#[test]
fn fio_four_connections_on_disjoint_regions_verify() {
    if !have_fio_nbd() {
        return;
    }
    let served = serve_mem(64 << 20, ServerOptions::default());
    let mut args = common_args(&served.uri());
    args.extend(
        [
            "--name=multi",
            "--rw=randrw",
            "--bs=4k",
            "--size=16M",
            "--numjobs=4",
            "--offset_increment=16M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
        ]
        .map(String::from),
    );
    fio(&args);
    let snap = served.mem.snapshot();
    for region in 0..4usize {
        let r = &snap[region << 24..(region + 1) << 24];
        assert!(r.iter().any(|&b| b != 0), "job {region} wrote its region");
    }
}
