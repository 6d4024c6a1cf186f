//! fio jobs: the six workloads every row runs, the fio command line for a
//! target (file with O_DIRECT, or an NBD URI), and parsing of fio's JSON output.
//!
//! Owns: workload definitions and the metric each yields. Must never: decide
//! which rows exist or judge whether a number is "good" (no timed assertions).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One fio workload. Each yields one or two [`Metric`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    RandReadQd1,
    RandWriteQd1,
    RandReadQd32,
    RandWriteQd32,
    SeqWrite1M,
    SeqRead1M,
}

impl Workload {
    /// All workloads, in the order they run (writes before the reads that follow them).
    pub const ALL: [Workload; 6] = [
        Workload::RandReadQd1,
        Workload::RandWriteQd1,
        Workload::RandReadQd32,
        Workload::RandWriteQd32,
        Workload::SeqWrite1M,
        Workload::SeqRead1M,
    ];

    /// Stable identifier, used as the fio job name and in file names.
    pub fn id(self) -> &'static str {
        match self {
            Workload::RandReadQd1 => "randread-4k-qd1",
            Workload::RandWriteQd1 => "randwrite-4k-qd1",
            Workload::RandReadQd32 => "randread-4k-qd32",
            Workload::RandWriteQd32 => "randwrite-4k-qd32",
            Workload::SeqWrite1M => "write-1m-qd8",
            Workload::SeqRead1M => "read-1m-qd8",
        }
    }

    /// fio's `rw=`, `bs=` and `iodepth=` for this workload.
    fn rw_bs_depth(self) -> (&'static str, &'static str, u32) {
        match self {
            Workload::RandReadQd1 => ("randread", "4k", 1),
            Workload::RandWriteQd1 => ("randwrite", "4k", 1),
            Workload::RandReadQd32 => ("randread", "4k", 32),
            Workload::RandWriteQd32 => ("randwrite", "4k", 32),
            Workload::SeqWrite1M => ("write", "1m", 8),
            Workload::SeqRead1M => ("read", "1m", 8),
        }
    }

    /// Which side of fio's JSON (read or write) carries the numbers.
    pub fn direction(self) -> Direction {
        match self {
            Workload::RandReadQd1 | Workload::RandReadQd32 | Workload::SeqRead1M => Direction::Read,
            _ => Direction::Write,
        }
    }

    /// The metrics this workload reports.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Workload::RandReadQd1 => &[Metric::RandReadQd1P50Us, Metric::RandReadQd1P99Us],
            Workload::RandWriteQd1 => &[Metric::RandWriteQd1P50Us, Metric::RandWriteQd1P99Us],
            Workload::RandReadQd32 => &[Metric::RandReadQd32Iops],
            Workload::RandWriteQd32 => &[Metric::RandWriteQd32Iops],
            Workload::SeqWrite1M => &[Metric::SeqWrite1MMbPerS],
            Workload::SeqRead1M => &[Metric::SeqRead1MMbPerS],
        }
    }

    /// Looks a workload up by [`Workload::id`].
    pub fn from_id(id: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.id() == id)
    }
}

/// Read or write half of a fio job result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// One number in the results table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    RandReadQd1P50Us,
    RandReadQd1P99Us,
    RandWriteQd1P50Us,
    RandWriteQd1P99Us,
    RandReadQd32Iops,
    RandWriteQd32Iops,
    SeqWrite1MMbPerS,
    SeqRead1MMbPerS,
}

impl Metric {
    /// Table column order.
    pub const ALL: [Metric; 8] = [
        Metric::RandReadQd1P50Us,
        Metric::RandReadQd1P99Us,
        Metric::RandWriteQd1P50Us,
        Metric::RandWriteQd1P99Us,
        Metric::RandReadQd32Iops,
        Metric::RandWriteQd32Iops,
        Metric::SeqWrite1MMbPerS,
        Metric::SeqRead1MMbPerS,
    ];

    /// Key in the JSON results.
    pub fn id(self) -> &'static str {
        match self {
            Metric::RandReadQd1P50Us => "randread_4k_qd1_p50_us",
            Metric::RandReadQd1P99Us => "randread_4k_qd1_p99_us",
            Metric::RandWriteQd1P50Us => "randwrite_4k_qd1_p50_us",
            Metric::RandWriteQd1P99Us => "randwrite_4k_qd1_p99_us",
            Metric::RandReadQd32Iops => "randread_4k_qd32_iops",
            Metric::RandWriteQd32Iops => "randwrite_4k_qd32_iops",
            Metric::SeqWrite1MMbPerS => "write_1m_mb_per_s",
            Metric::SeqRead1MMbPerS => "read_1m_mb_per_s",
        }
    }

    /// Column header in the printed table.
    pub fn header(self) -> &'static str {
        match self {
            Metric::RandReadQd1P50Us => "rr4k QD1 p50 µs",
            Metric::RandReadQd1P99Us => "rr4k QD1 p99 µs",
            Metric::RandWriteQd1P50Us => "rw4k QD1 p50 µs",
            Metric::RandWriteQd1P99Us => "rw4k QD1 p99 µs",
            Metric::RandReadQd32Iops => "rr4k QD32 IOPS",
            Metric::RandWriteQd32Iops => "rw4k QD32 IOPS",
            Metric::SeqWrite1MMbPerS => "write 1M QD8 MB/s",
            Metric::SeqRead1MMbPerS => "read 1M QD8 MB/s",
        }
    }

    /// True when a smaller number is better (latencies).
    pub fn lower_is_better(self) -> bool {
        matches!(
            self,
            Metric::RandReadQd1P50Us
                | Metric::RandReadQd1P99Us
                | Metric::RandWriteQd1P50Us
                | Metric::RandWriteQd1P99Us
        )
    }

    /// Picks this metric's value out of a parsed fio result.
    pub fn value_from(self, r: &FioSide) -> f64 {
        match self {
            Metric::RandReadQd1P50Us | Metric::RandWriteQd1P50Us => r.clat_p50_ns / 1000.0,
            Metric::RandReadQd1P99Us | Metric::RandWriteQd1P99Us => r.clat_p99_ns / 1000.0,
            Metric::RandReadQd32Iops | Metric::RandWriteQd32Iops => r.iops,
            Metric::SeqWrite1MMbPerS | Metric::SeqRead1MMbPerS => r.bw_bytes_per_s / 1e6,
        }
    }
}

/// Where fio sends its I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FioTarget {
    /// A regular file opened with O_DIRECT, driven by io_uring.
    DirectFile { path: PathBuf, size_bytes: u64 },
    /// An NBD export, driven by fio's libnbd engine (`nbd+unix:///name?socket=...`).
    Nbd { uri: String },
}

impl FioTarget {
    /// An NBD URI for a unix socket and export name.
    pub fn nbd_unix(socket: &Path, export: &str) -> FioTarget {
        FioTarget::Nbd {
            uri: nbd_unix_uri(socket, export),
        }
    }
}

/// The libnbd URI of export `export` on unix socket `socket`.
pub fn nbd_unix_uri(socket: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

/// How long each job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTiming {
    pub runtime_s: u32,
    pub ramp_s: u32,
}

/// The fio arguments for one job (without the fio program name).
pub fn fio_args(w: Workload, target: &FioTarget, timing: JobTiming, output: &Path) -> Vec<String> {
    let (rw, bs, depth) = w.rw_bs_depth();
    let mut args = vec![
        format!("--name={}", w.id()),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--iodepth={depth}"),
        "--numjobs=1".to_owned(),
        "--time_based=1".to_owned(),
        format!("--runtime={}", timing.runtime_s),
        format!("--ramp_time={}", timing.ramp_s),
        "--percentile_list=50:99".to_owned(),
        "--output-format=json".to_owned(),
        format!("--output={}", output.display()),
    ];
    match target {
        FioTarget::DirectFile { path, size_bytes } => {
            args.push(format!("--filename={}", path.display()));
            args.push(format!("--size={size_bytes}"));
            args.push("--ioengine=io_uring".to_owned());
            args.push("--direct=1".to_owned());
        }
        FioTarget::Nbd { uri } => {
            args.push("--ioengine=nbd".to_owned());
            args.push(format!("--uri={uri}"));
        }
    }
    args
}

/// The numbers taken from one side (read or write) of a fio job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FioSide {
    pub iops: f64,
    pub bw_bytes_per_s: f64,
    pub clat_p50_ns: f64,
    pub clat_p99_ns: f64,
    /// fio's `total_ios`: I/Os completed after the ramp (the ramp's are not counted).
    pub ios_completed: u64,
}

/// Why a fio JSON document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FioParseError {
    #[error("fio output is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("fio output has no jobs")]
    NoJobs,
    #[error("fio job failed with error code {0}")]
    JobError(i64),
    #[error("fio job completed no I/O in the measured direction")]
    NoIo,
}

#[derive(Deserialize)]
struct FioDoc {
    jobs: Vec<FioJob>,
}

#[derive(Deserialize)]
struct FioJob {
    #[serde(default)]
    error: i64,
    read: FioJobSide,
    write: FioJobSide,
}

#[derive(Deserialize)]
struct FioJobSide {
    iops: f64,
    bw_bytes: f64,
    #[serde(default)]
    total_ios: u64,
    clat_ns: FioClat,
}

#[derive(Deserialize)]
struct FioClat {
    #[serde(default)]
    percentile: BTreeMap<String, f64>,
}

/// Parses `fio --output-format=json` output and returns the side `dir`.
/// Percentiles come from `clat_ns.percentile` keys "50.000000" and "99.000000".
pub fn parse_fio_json(text: &str, dir: Direction) -> Result<FioSide, FioParseError> {
    // fio may print warnings before the JSON document when writing to stdout.
    let start = text.find('{').unwrap_or(0);
    let doc: FioDoc = serde_json::from_str(&text[start..])?;
    let job = doc.jobs.into_iter().next().ok_or(FioParseError::NoJobs)?;
    if job.error != 0 {
        return Err(FioParseError::JobError(job.error));
    }
    let side = match dir {
        Direction::Read => job.read,
        Direction::Write => job.write,
    };
    if side.total_ios == 0 && side.iops <= 0.0 {
        return Err(FioParseError::NoIo);
    }
    let pct = |p: f64| {
        side.clat_ns
            .percentile
            .iter()
            .find(|(k, _)| k.parse::<f64>().is_ok_and(|v| (v - p).abs() < 1e-6))
            .map_or(f64::NAN, |(_, v)| *v)
    };
    Ok(FioSide {
        iops: side.iops,
        bw_bytes_per_s: side.bw_bytes,
        clat_p50_ns: pct(50.0),
        clat_p99_ns: pct(99.0),
        ios_completed: side.total_ios,
    })
}

/// Runs one fio job and returns its metrics. `scratch` holds the JSON output.
pub fn run_job(
    w: Workload,
    target: &FioTarget,
    timing: JobTiming,
    scratch: &Path,
    tag: &str,
) -> anyhow::Result<BTreeMap<Metric, f64>> {
    let side = run_job_side(w, target, timing, scratch, tag)?;
    Ok(w.metrics()
        .iter()
        .map(|m| (*m, m.value_from(&side)))
        .collect())
}

/// Runs one fio job and returns its side of fio's result (metrics and the
/// I/O count). `scratch` holds the JSON output.
pub fn run_job_side(
    w: Workload,
    target: &FioTarget,
    timing: JobTiming,
    scratch: &Path,
    tag: &str,
) -> anyhow::Result<FioSide> {
    use anyhow::Context;
    let output = scratch.join(format!("{tag}-{}.json", w.id()));
    let args = fio_args(w, target, timing, &output);
    // fio ends on its own after ramp + runtime; the bound only catches a hung server.
    let bound = Duration::from_secs(u64::from(timing.runtime_s + timing.ramp_s) + 120);
    crate::sys::run_checked_within(Command::new("fio").args(&args), bound)?;
    let text = std::fs::read_to_string(&output)
        .with_context(|| format!("reading fio output {}", output.display()))?;
    parse_fio_json(&text, w.direction())
        .with_context(|| format!("parsing fio output {}", output.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDWRITE_QD1: &str = include_str!("../tests/data/fio-3.33-randwrite-qd1-io_uring.json");
    const RANDREAD_NBD: &str = include_str!("../tests/data/fio-3.33-randread-qd1-nbd.json");

    #[test]
    fn captured_randwrite_sample_yields_write_percentiles_in_ns() {
        let w = parse_fio_json(RANDWRITE_QD1, Direction::Write).unwrap();
        assert_eq!(w.clat_p50_ns, 51968.0);
        assert_eq!(w.clat_p99_ns, 119296.0);
        assert!((w.iops - 12156.843157).abs() < 1e-6);
        assert_eq!(w.bw_bytes_per_s, 49794429.0);
        assert_eq!(w.ios_completed, 12169);
        let m = Workload::RandWriteQd1.metrics();
        assert!((m[0].value_from(&w) - 51.968).abs() < 1e-9);
        assert!((m[1].value_from(&w) - 119.296).abs() < 1e-9);
    }

    #[test]
    fn captured_randwrite_sample_has_no_read_side() {
        assert!(matches!(
            parse_fio_json(RANDWRITE_QD1, Direction::Read),
            Err(FioParseError::NoIo)
        ));
    }

    #[test]
    fn captured_nbd_read_sample_parses_and_tolerates_leading_warnings() {
        let noisy = format!("fio: some warning\n{RANDREAD_NBD}");
        let r = parse_fio_json(&noisy, Direction::Read).unwrap();
        assert_eq!(r.clat_p50_ns, 43264.0);
        assert_eq!(r.clat_p99_ns, 66048.0);
        assert_eq!(r.bw_bytes_per_s, 89944231.0);
        assert!(r.ios_completed > 0);
    }

    #[test]
    fn failed_job_and_garbage_are_errors() {
        let failed = RANDWRITE_QD1.replacen("\"error\" : 0", "\"error\" : 5", 1);
        assert!(matches!(
            parse_fio_json(&failed, Direction::Write),
            Err(FioParseError::JobError(5))
        ));
        assert!(matches!(
            parse_fio_json("not json", Direction::Write),
            Err(FioParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_fio_json("{\"jobs\": []}", Direction::Write),
            Err(FioParseError::NoJobs)
        ));
    }

    #[test]
    fn file_target_uses_io_uring_with_o_direct_and_nbd_target_uses_uri() {
        let t = JobTiming {
            runtime_s: 2,
            ramp_s: 0,
        };
        let file = FioTarget::DirectFile {
            path: "/tmp/x.img".into(),
            size_bytes: 4096,
        };
        let a = fio_args(Workload::RandReadQd32, &file, t, Path::new("/tmp/o.json"));
        for want in [
            "--ioengine=io_uring",
            "--direct=1",
            "--iodepth=32",
            "--bs=4k",
            "--rw=randread",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing in {a:?}");
        }
        let nbd = FioTarget::nbd_unix(Path::new("/run/r/r0.nbd"), "r0");
        let a = fio_args(Workload::SeqWrite1M, &nbd, t, Path::new("/tmp/o.json"));
        assert!(a
            .iter()
            .any(|x| x == "--uri=nbd+unix:///r0?socket=/run/r/r0.nbd"));
        assert!(a.iter().any(|x| x == "--ioengine=nbd"));
        assert!(!a.iter().any(|x| x.starts_with("--direct")));
    }

    #[test]
    fn every_metric_comes_from_exactly_one_workload() {
        let mut seen: Vec<Metric> = Workload::ALL
            .iter()
            .flat_map(|w| w.metrics().to_vec())
            .collect();
        seen.sort();
        assert_eq!(seen, Metric::ALL.to_vec());
    }
}
