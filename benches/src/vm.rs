//! Hook for rows measured inside a VM (ublk), produced by a separate script
//! owned by the ublk engineer.
//!
//! Contract: the runner executes the script (default `benches/vm-rows.sh` when
//! it exists, or `--vm-rows-cmd`) with these environment variables:
//! `DRBDD_BENCH_EXE` (this binary, for its `fio-args`/`fio-metrics` helpers),
//! `DRBDD_BENCH_SMOKE` (0/1), `DRBDD_BENCH_RUNS`, `DRBDD_BENCH_RUNTIME_S`,
//! `DRBDD_BENCH_RAMP_S`, `DRBDD_BENCH_SIZE_BYTES`, `DRBDD_BENCH_WORK_DIR`.
//! It prints one JSON object per line on stdout, one per row:
//! `{"id": "vm-ublk", "name": "5 drbdd ublk in VM", "baseline": "vm-raw", "runs": [{"randread_4k_qd1_p50_us": 51.2, ...}]}`
//! or `{"id": "...", "name": "...", "skipped": "reason"}`. `baseline` (optional) names
//! the row the ratios are taken against; without it, the table's `raw` row. Metric keys are
//! [`crate::fio::Metric::id`]. Other stdout lines are ignored; stderr passes through.
//!
//! Owns: parsing that output. Must never: start a VM itself.

use crate::fio::Metric;
use crate::report::RowReport;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Deserialize)]
struct VmRowLine {
    id: String,
    name: String,
    #[serde(default)]
    runs: Vec<BTreeMap<String, f64>>,
    #[serde(default)]
    skipped: Option<String>,
    /// Row id the ratios are taken against (the VM's own raw disk).
    #[serde(default)]
    baseline: Option<String>,
}

/// Parses the hook's stdout into rows (medians filled in, ratios not yet).
pub fn parse_vm_rows(stdout: &str) -> Vec<RowReport> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<VmRowLine>(l).ok())
        .map(|r| match r.skipped {
            Some(why) => RowReport::skipped(&r.id, &r.name, why).with_baseline(r.baseline),
            None => {
                let runs = r
                    .runs
                    .into_iter()
                    .map(|run| {
                        Metric::ALL
                            .iter()
                            .filter_map(|m| run.get(m.id()).map(|v| (*m, *v)))
                            .collect()
                    })
                    .collect();
                RowReport::measured(&r.id, &r.name, runs).with_baseline(r.baseline)
            }
        })
        .collect()
}

/// Runs the hook script; a failure becomes one skipped row.
pub fn run_hook(script: &Path, env: &[(&str, String)]) -> Vec<RowReport> {
    let mut cmd = Command::new(script);
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) if out.status.success() => parse_vm_rows(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => vec![RowReport::skipped(
            "vm",
            "5 VM rows",
            format!("{} exited with {}", script.display(), out.status),
        )],
        Err(e) => vec![RowReport::skipped(
            "vm",
            "5 VM rows",
            format!("could not run {}: {e}", script.display()),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_lines_become_rows_with_medians_or_skip_reasons() {
        let out = "booting vm...\n\
            {\"id\":\"vm-ublk\",\"name\":\"5 ublk in VM\",\"runs\":[{\"randread_4k_qd1_p50_us\":50.0},{\"randread_4k_qd1_p50_us\":70.0},{\"randread_4k_qd1_p50_us\":60.0}]}\n\
            {\"id\":\"vm-raw\",\"name\":\"5 raw in VM\",\"skipped\":\"no /dev/kvm\"}\n";
        let rows = parse_vm_rows(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].median["randread_4k_qd1_p50_us"], 60.0);
        assert_eq!(rows[1].skipped.as_deref(), Some("no /dev/kvm"));
    }
}
