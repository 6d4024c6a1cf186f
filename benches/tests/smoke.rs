//! Smoke test of the benchmark runner: runs `drbdd-bench --smoke` for rows 1
//! (raw file) and 2a (qemu-nbd) plus the callgrind CPU section, and checks that
//! the printed table and the saved JSON/Markdown hold real numbers. Proves the
//! runner has not rotted; asserts nothing about how fast anything is.
//! Skips with a printed reason when fio is missing or /tmp is not a disk file system.

use std::path::Path;
use std::process::Command;

#[test]
fn smoke_run_of_raw_and_qemu_nbd_rows_produces_table_and_json_with_numbers() {
    if drbdd_benches::sys::which("fio").is_none() {
        eprintln!("SKIP: fio not installed (apt-get install fio)");
        return;
    }
    let fs = drbdd_benches::sys::fs_type(Path::new("/tmp")).unwrap_or_default();
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!("SKIP: /tmp is {fs}; O_DIRECT backing files need a disk file system");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drbdd-bench"))
        .args([
            "--smoke",
            "--rows",
            "raw,qemu-nbd",
            "--sections",
            "fio,cpu",
            "--work-dir",
            "/tmp",
            "--out",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drbdd-bench failed: {stderr}");
    assert!(
        stdout.contains("| 1 raw file, O_DIRECT io_uring (baseline) | "),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("latest.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    let metrics = [
        "randread_4k_qd1_p50_us",
        "randread_4k_qd1_p99_us",
        "randwrite_4k_qd1_p50_us",
        "randwrite_4k_qd1_p99_us",
        "randread_4k_qd32_iops",
        "randwrite_4k_qd32_iops",
        "write_1m_mb_per_s",
        "read_1m_mb_per_s",
    ];
    for row in rows {
        assert!(
            row.get("thread_switches").is_none(),
            "rows without drbdd have no thread-switch entry: {row}"
        );
        if let Some(why) = row["skipped"].as_str() {
            assert_eq!(row["id"], "qemu-nbd", "only qemu-nbd may be missing: {why}");
            assert!(why.contains("not installed"), "{why}");
            eprintln!("SKIP: qemu-nbd row: {why}");
            continue;
        }
        for m in metrics {
            let v = row["median"][m].as_f64().unwrap_or(f64::NAN);
            assert!(
                v.is_finite() && v > 0.0,
                "row {} metric {m} = {v}",
                row["id"]
            );
            assert!(
                row["ratio_to_baseline"][m]
                    .as_f64()
                    .is_some_and(|r| r > 0.0),
                "{row}"
            );
        }
    }
    assert_eq!(
        rows[0]["ratio_to_baseline"]["randread_4k_qd32_iops"].as_f64(),
        Some(1.0)
    );

    let cpu = json["cpu"].as_array().unwrap();
    if drbdd_benches::sys::which("valgrind").is_none() {
        eprintln!("SKIP: CPU cost: {}", json["cpu_skipped"]);
    } else {
        let targets: Vec<&str> = cpu.iter().map(|c| c["target"].as_str().unwrap()).collect();
        assert_eq!(targets, ["mem", "pipeline"], "{}", json["cpu_skipped"]);
        for c in cpu {
            assert!(
                c["instructions_per_write"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
                "{c}"
            );
        }
    }
    let md = std::fs::read_to_string(out_dir.path().join("latest.md")).unwrap();
    assert!(
        stdout.contains(md.trim_end()),
        "saved Markdown differs from the printed table"
    );
}
