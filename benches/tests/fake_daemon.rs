//! Exercises the drbdd rows (standalone and a protocol C pair) and the resync
//! bench end to end against stand-in `drbdd`/`drbdctl` scripts
//! (tests/fake-drbdd/, qemu-nbd behind the NBD socket), so the orchestration —
//! resource files, create-md/up/primary, waiting for sockets and for sync,
//! disconnect/connect, teardown, counting the daemons' thread switches — is
//! tested before the real daemon exists.
//! Skips with a printed reason when fio, qemu-nbd or python3 is missing.

use std::path::Path;
use std::process::Command;

#[test]
fn drbdd_rows_and_resync_run_against_stand_in_daemon() {
    for tool in ["fio", "qemu-nbd", "python3"] {
        if drbdd_benches::sys::which(tool).is_none() {
            eprintln!("SKIP: {tool} not installed");
            return;
        }
    }
    let fs = drbdd_benches::sys::fs_type(Path::new("/tmp")).unwrap_or_default();
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!("SKIP: /tmp is {fs}; O_DIRECT backing files need a disk file system");
        return;
    }
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-drbdd");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drbdd-bench"))
        .args([
            "--smoke",
            "--rows",
            "drbdd,drbdd-c",
            "--sections",
            "fio,resync",
            "--work-dir",
            "/tmp",
        ])
        .arg("--drbdd-bin-dir")
        .arg(&fake)
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drbdd-bench failed: {stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("latest.json")).unwrap())
            .unwrap();

    let rows = json["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["drbdd", "drbdd-c"]);
    for row in rows {
        assert!(
            row["skipped"].is_null(),
            "row {} skipped: {}",
            row["id"],
            row["skipped"]
        );
        let iops = row["median"]["randwrite_4k_qd32_iops"].as_f64().unwrap();
        assert!(iops > 0.0, "{row}");
        // The stand-in daemon's thread switches were counted (near 0 per I/O:
        // it does not serve the I/O), per node; nothing was left unreadable.
        let sw = &row["thread_switches"];
        let nodes: &[&str] = if row["id"] == "drbdd" {
            &["primary"]
        } else {
            &["primary", "peer"]
        };
        for node in nodes {
            for w in ["randread_4k_qd1", "randwrite_4k_qd1", "randwrite_4k_qd32"] {
                let v = sw["median_per_io"][format!("{w}_{node}")].as_f64();
                assert!(v.is_some_and(|v| v >= 0.0), "{w}_{node} in {sw}");
            }
        }
        assert!(sw["unavailable"].is_null(), "{sw}");
    }

    let resync = &json["resync"];
    assert!(resync["drbdd_skipped"].is_null(), "{resync}");
    assert!(
        resync["raw_copy_mb_per_s"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{resync}"
    );
    assert!(resync["full_sync_s"].as_f64().is_some(), "{resync}");
    assert_eq!(
        resync["dirty_bytes"].as_u64(),
        Some((64 << 20) / 10 / 4096 * 4096)
    );
    assert!(resync["resync_wire_bytes"].as_u64().is_some(), "{resync}");
    assert!(!stderr.contains("SKIP: row"), "{stderr}");
}
