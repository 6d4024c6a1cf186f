//! `drbdd-bench`: runs the fio table, the resync bench and the callgrind CPU
//! cost, prints one table and saves JSON + Markdown in the output directory.
//! See benches/README.md. Never asserts on timings; missing tools skip rows.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use drbdd_benches::cpu::{self, CpuReport, MicroTarget};
use drbdd_benches::drbdd::DrbddOptions;
use drbdd_benches::fio::{self, FioTarget, JobTiming, Metric, Workload};
use drbdd_benches::report::{self, RowReport};
use drbdd_benches::resync::{self, ResyncReport};
use drbdd_benches::switches::{self, JobSwitches, Node, RunSwitches, SwitchReport};
use drbdd_benches::targets::{self, RowId, RunningRow, SetupEnv};
use drbdd_benches::{sys, vm};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Parser, Debug)]
#[command(
    name = "drbdd-bench",
    about = "fio/resync/CPU benchmarks for drbdd against raw file and NBD baselines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The CPU micro-benchmark loop (run under callgrind by the runner).
    MicroWrite {
        #[arg(long, value_enum, default_value = "mem")]
        target: MicroTarget,
        #[arg(long, default_value_t = 100_000)]
        writes: u64,
        /// Directory for the pipeline target's backing file (disk file system, not tmpfs).
        #[arg(long, default_value = "/tmp")]
        dir: PathBuf,
    },
    /// Prints the fio arguments of one workload, one per line (for the VM hook).
    FioArgs {
        #[arg(long)]
        workload: String,
        /// File or block device to run against with O_DIRECT.
        #[arg(long)]
        filename: PathBuf,
        #[arg(long)]
        size_bytes: u64,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = 10)]
        runtime_s: u32,
        #[arg(long, default_value_t = 1)]
        ramp_s: u32,
    },
    /// Prints the metrics of one fio JSON output as JSON (for the VM hook).
    FioMetrics {
        #[arg(long)]
        workload: String,
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Tiny sizes, ~1 s per job, 1 run: checks the runner works (CI).
    #[arg(long)]
    smoke: bool,
    /// Runs per row; the table shows the median (default 3, smoke 1).
    #[arg(long)]
    runs: Option<u32>,
    /// Output directory for results-<time>.json/.md and latest.json/.md.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated rows: raw,qemu-nbd,nbdkit,drbdd,drbdd-a,drbdd-b,drbdd-c (default all).
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Comma-separated sections: fio,resync,cpu,vm (default all).
    #[arg(long, value_delimiter = ',')]
    sections: Option<Vec<String>>,
    /// Backing file size in MiB (default 1024, smoke 64).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Seconds per fio job (default 10, smoke 1).
    #[arg(long)]
    runtime_s: Option<u32>,
    /// fio ramp time per job in seconds (default 2, smoke 0).
    #[arg(long)]
    ramp_s: Option<u32>,
    /// Parent of the scratch directory; must be a disk file system, not tmpfs.
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    /// Directory with the drbdd and drbdctl binaries.
    #[arg(long)]
    drbdd_bin_dir: Option<PathBuf>,
    /// drbdd NBD socket path; {run_dir} is replaced by the node's run dir.
    #[arg(long, default_value = "{run_dir}/r0.nbd")]
    drbdd_nbd_socket: String,
    /// Upper bound on a pair's initial full sync, seconds.
    #[arg(long, default_value_t = 600)]
    sync_timeout_s: u64,
    /// Writes per callgrind run of the CPU micro-benchmark (default 100000, smoke 2000).
    #[arg(long)]
    cpu_writes: Option<u64>,
    /// Script producing VM rows (default benches/vm-rows.sh when it exists).
    #[arg(long)]
    vm_rows_cmd: Option<PathBuf>,
}

/// Settings after applying smoke defaults.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    smoke: bool,
    runs: u32,
    size_bytes: u64,
    timing: JobTiming,
    cpu_writes: u64,
    rows: Vec<&'static str>,
    sections: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Results {
    started_unix_s: u64,
    settings: Settings,
    work_dir_fs: String,
    rows: Vec<RowReport>,
    /// drbdd against in-kernel DRBD 8.4 in the same VM boot, per protocol.
    vs_drbd84: Vec<report::Comparison>,
    resync: Option<ResyncReport>,
    cpu: Vec<CpuReport>,
    cpu_skipped: BTreeMap<String, String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::MicroWrite {
            target,
            writes,
            dir,
        }) => {
            let done = cpu::micro_write(target, writes, &dir)?;
            println!(
                "{done} writes of {} bytes through {}",
                cpu::WRITE_BYTES,
                target.id()
            );
            Ok(())
        }
        Some(Cmd::FioArgs {
            workload,
            filename,
            size_bytes,
            output,
            runtime_s,
            ramp_s,
        }) => {
            let w = workload_arg(&workload)?;
            let target = FioTarget::DirectFile {
                path: filename,
                size_bytes,
            };
            for a in fio::fio_args(w, &target, JobTiming { runtime_s, ramp_s }, &output) {
                println!("{a}");
            }
            Ok(())
        }
        Some(Cmd::FioMetrics { workload, file }) => {
            let w = workload_arg(&workload)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let side = fio::parse_fio_json(&text, w.direction())?;
            let m: BTreeMap<&str, f64> = w
                .metrics()
                .iter()
                .map(|m| (m.id(), m.value_from(&side)))
                .collect();
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        None => run(cli.run),
    }
}

fn workload_arg(id: &str) -> Result<Workload> {
    Workload::from_id(id).with_context(|| {
        let ids: Vec<&str> = Workload::ALL.iter().map(|w| w.id()).collect();
        format!("unknown workload {id:?}; use one of {}", ids.join(", "))
    })
}

fn settings(a: &RunArgs) -> Result<Settings> {
    let smoke = a.smoke;
    let rows = match &a.rows {
        None => RowId::ALL.iter().map(|r| r.id()).collect(),
        Some(list) => list
            .iter()
            .map(|s| {
                RowId::from_id(s).map(RowId::id).with_context(|| {
                    let ids: Vec<&str> = RowId::ALL.iter().map(|r| r.id()).collect();
                    format!("unknown row {s:?} in --rows; use {}", ids.join(","))
                })
            })
            .collect::<Result<_>>()?,
    };
    let sections = a
        .sections
        .clone()
        .unwrap_or_else(|| ["fio", "resync", "cpu", "vm"].map(String::from).to_vec());
    Ok(Settings {
        smoke,
        runs: a.runs.unwrap_or(if smoke { 1 } else { 3 }).max(1),
        size_bytes: a.size_mib.unwrap_or(if smoke { 64 } else { 1024 }) << 20,
        timing: JobTiming {
            runtime_s: a.runtime_s.unwrap_or(if smoke { 1 } else { 10 }).max(1),
            ramp_s: a.ramp_s.unwrap_or(if smoke { 0 } else { 2 }),
        },
        cpu_writes: a
            .cpu_writes
            .unwrap_or(if smoke { 2_000 } else { 100_000 })
            .max(1),
        rows,
        sections,
    })
}

/// The scratch directory; removed (with everything in it) when dropped.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

fn setup_env(
    args: &RunArgs,
    s: &Settings,
    out: &Path,
    stamp: u64,
) -> Result<(SetupEnv, ScratchDir)> {
    std::fs::create_dir_all(&args.work_dir)?;
    sys::check_work_dir_fs(&args.work_dir)?;
    let work_dir = args
        .work_dir
        .join(format!("drbdd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let scratch = ScratchDir(work_dir.clone());
    let log_dir = out.join(format!("logs-{stamp}"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let workspace = Path::new(CRATE_DIR).parent().unwrap_or(Path::new("."));
    let bin_dir = args
        .drbdd_bin_dir
        .clone()
        .unwrap_or_else(|| workspace.join("target/release"));
    let env = SetupEnv {
        work_dir,
        log_dir,
        size_bytes: s.size_bytes,
        drbdd: DrbddOptions {
            bin_dir,
            nbd_socket_template: args.drbdd_nbd_socket.clone(),
            sync_timeout_s: args.sync_timeout_s,
        },
    };
    if s.sections.iter().any(|x| x == "fio" || x == "resync") {
        eprintln!(
            "creating {} MiB backing file in {}",
            s.size_bytes >> 20,
            env.work_dir.display()
        );
        sys::create_filled_file(&targets::raw_file(&env), s.size_bytes)?;
    }
    Ok((env, scratch))
}

fn run(args: RunArgs) -> Result<()> {
    let s = settings(&args)?;
    let has = |sec: &str| s.sections.iter().any(|x| x == sec);
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new(CRATE_DIR).join("results"));
    let work_dir_fs = sys::check_work_dir_fs(&args.work_dir)?;
    let (env, scratch) = setup_env(&args, &s, &out, started_unix_s)?;
    let mut rows = if has("fio") {
        fio_rows(&s, &env)
    } else {
        Vec::new()
    };
    if has("vm") {
        rows.extend(vm_rows(&args, &s, &env));
    }
    report::fill_ratios(&mut rows, RowId::Raw.id());
    let vs_drbd84: Vec<report::Comparison> = ["a", "b", "c"]
        .iter()
        .filter_map(|p| {
            report::comparison(&rows, &format!("vm-drbdd-{p}"), &format!("vm-drbd84-{p}"))
        })
        .collect();
    let resync = has("resync").then(|| resync::run(&env));
    let (cpu, cpu_skipped) = if has("cpu") {
        cpu_section(&s, &env.work_dir)
    } else {
        (Vec::new(), BTreeMap::new())
    };
    drop(scratch);
    let results = Results {
        started_unix_s,
        settings: s,
        work_dir_fs,
        rows,
        vs_drbd84,
        resync,
        cpu,
        cpu_skipped,
    };
    let md = render(&results);
    println!("{md}");
    save(&out, &results, &md)
}

/// Sets up the selected rows, runs every workload `runs` times (rows
/// interleaved within a run so drift hits all rows alike), tears down.
fn fio_rows(s: &Settings, env: &SetupEnv) -> Vec<RowReport> {
    let selected: Vec<RowId> = RowId::ALL
        .into_iter()
        .filter(|r| s.rows.contains(&r.id()))
        .collect();
    if sys::which("fio").is_none() {
        return selected
            .iter()
            .map(|r| skip(*r, "fio not installed (apt-get install fio)".into()))
            .collect();
    }
    let mut reports: Vec<RowReport> = Vec::new();
    let mut running: Vec<(RunningRow, RowRuns)> = Vec::new();
    for row in selected {
        eprintln!("setting up row {}", row.id());
        match targets::set_up(row, env) {
            Ok(r) => running.push((r, RowRuns::default())),
            Err(why) => reports.push(skip(row, why)),
        }
    }
    let scratch = env.work_dir.join("fio");
    let _ = std::fs::create_dir_all(&scratch);
    let mut failed: BTreeMap<&'static str, String> = BTreeMap::new();
    for run in 1..=s.runs {
        for (r, runs) in running.iter_mut() {
            if failed.contains_key(r.row.id()) {
                continue;
            }
            eprintln!("run {run}/{}: {}", s.runs, r.row.id());
            match run_row(r, s.timing, &scratch, run) {
                Ok((m, sw)) => {
                    runs.metrics.push(m);
                    runs.switches.extend(sw);
                }
                Err(e) => {
                    failed.insert(r.row.id(), format!("fio failed: {e:#}"));
                }
            }
        }
    }
    for (r, runs) in running {
        let id = r.row;
        let is_drbdd = r.drbdd.daemons().is_some();
        drop(r);
        match failed.remove(id.id()) {
            Some(why) => reports.push(skip(id, why)),
            None => reports.push(
                RowReport::measured(id.id(), id.name(), runs.metrics)
                    .with_thread_switches(is_drbdd.then(|| SwitchReport::from_runs(runs.switches))),
            ),
        }
    }
    let order = |id: &str| {
        RowId::ALL
            .iter()
            .position(|r| r.id() == id)
            .unwrap_or(usize::MAX)
    };
    reports.sort_by_key(|r| order(&r.id));
    reports
}

fn skip(row: RowId, why: String) -> RowReport {
    eprintln!("SKIP: row {}: {why}", row.id());
    RowReport::skipped(row.id(), row.name(), why)
}

/// What one row collected over the runs.
#[derive(Debug, Default)]
struct RowRuns {
    metrics: Vec<BTreeMap<Metric, f64>>,
    /// One entry per run of a drbdd row; none for other rows.
    switches: Vec<RunSwitches>,
}

/// One run of every workload on a row; for drbdd rows also the daemons'
/// thread switches around each job.
fn run_row(
    r: &RunningRow,
    timing: JobTiming,
    scratch: &Path,
    run: u32,
) -> Result<(BTreeMap<Metric, f64>, Option<RunSwitches>)> {
    let mut all = BTreeMap::new();
    let daemons = r.drbdd.daemons();
    let mut switches = daemons.as_ref().map(|_| RunSwitches::default());
    for w in Workload::ALL {
        let tag = format!("run{run}-{}", r.row.id());
        let job = || fio::run_job_side(w, &r.target, timing, scratch, &tag);
        let side = match (&daemons, switches.as_mut()) {
            (Some(daemons), Some(sw)) => {
                let (side, counts) = count_switches(daemons, timing, job);
                let side = side?;
                match counts {
                    Ok(nodes) => {
                        let ios = side.ios_completed;
                        sw.jobs.insert(w.id(), JobSwitches { ios, nodes });
                    }
                    Err(why) => sw.errors.push(why),
                }
                side
            }
            _ => job()?,
        };
        all.extend(w.metrics().iter().map(|m| (*m, m.value_from(&side))));
    }
    Ok((all, switches))
}

/// Runs `job` with the thread switches of `daemons` counted around it; a
/// daemon without a pid makes the counts an error, not zeros.
fn count_switches<R>(
    daemons: &[(Node, Option<u32>)],
    timing: JobTiming,
    job: impl FnOnce() -> R,
) -> (R, Result<BTreeMap<Node, switches::NodeJob>, String>) {
    let pids: Option<Vec<(Node, u32)>> = daemons
        .iter()
        .map(|(node, pid)| pid.map(|p| (*node, p)))
        .collect();
    match pids {
        Some(pids) => {
            let ramp = std::time::Duration::from_secs(u64::from(timing.ramp_s));
            switches::around_job(&pids, ramp, job)
        }
        None => (
            job(),
            Err("a drbdd daemon of the row is not running".into()),
        ),
    }
}

fn vm_rows(args: &RunArgs, s: &Settings, env: &SetupEnv) -> Vec<RowReport> {
    let default = Path::new(CRATE_DIR).join("vm-rows.sh");
    let script = match &args.vm_rows_cmd {
        Some(p) => p.clone(),
        None if default.is_file() => default,
        None => {
            eprintln!("SKIP: VM rows: no benches/vm-rows.sh yet (owned by the ublk engineer) and no --vm-rows-cmd");
            return Vec::new();
        }
    };
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let vars = [
        ("DRBDD_BENCH_EXE", exe),
        ("DRBDD_BENCH_SMOKE", u8::from(s.smoke).to_string()),
        ("DRBDD_BENCH_RUNS", s.runs.to_string()),
        ("DRBDD_BENCH_RUNTIME_S", s.timing.runtime_s.to_string()),
        ("DRBDD_BENCH_RAMP_S", s.timing.ramp_s.to_string()),
        ("DRBDD_BENCH_SIZE_BYTES", s.size_bytes.to_string()),
        ("DRBDD_BENCH_WORK_DIR", env.work_dir.display().to_string()),
    ];
    vm::run_hook(&script, &vars)
}

fn cpu_section(s: &Settings, work_dir: &Path) -> (Vec<CpuReport>, BTreeMap<String, String>) {
    let mut reports = Vec::new();
    let mut skipped = BTreeMap::new();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            skipped.insert("all".to_owned(), format!("cannot find own executable: {e}"));
            return (reports, skipped);
        }
    };
    for target in MicroTarget::ALL {
        match cpu::measure(&exe, target, s.cpu_writes, work_dir) {
            Ok(r) => reports.push(r),
            Err(why) => {
                eprintln!("SKIP: CPU cost ({}): {why}", target.id());
                skipped.insert(target.id().to_owned(), why);
            }
        }
    }
    (reports, skipped)
}

fn render(r: &Results) -> String {
    let s = &r.settings;
    let mut md = format!("# drbdd bench{}\n\n", if s.smoke { " (smoke)" } else { "" });
    if !r.rows.is_empty() {
        let host_rows = r.rows.iter().any(|row| row.baseline.is_none());
        let files = if host_rows {
            format!(
                "{} MiB backing files on {}",
                s.size_bytes >> 20,
                r.work_dir_fs
            )
        } else {
            "VM disks as benches/vm-rows.sh sets them (VM_BENCH_SIZE_MIB, default 256 MiB)".into()
        };
        md.push_str(&format!(
            "{} run(s), median shown; {} s per job (+{} s ramp); {files}. \
             Cells: value (ratio to the row's baseline). Latency: lower is better; IOPS/MB/s: higher is better.\n\n",
            s.runs, s.timing.runtime_s, s.timing.ramp_s,
        ));
        md.push_str(&report::markdown_table(&r.rows));
        md.push('\n');
        if r.rows.iter().any(|row| row.baseline.is_some()) {
            md.push_str(
                "VM rows (5): ratios to `5 VM raw virtio disk` of the same boot; \
                 the VM runs under QEMU, so compare VM rows with each other, not with rows 1-4.\n\n",
            );
        }
        let sw = switches::markdown(&r.rows);
        if !sw.is_empty() {
            md.push_str(&sw);
            md.push('\n');
        }
    }
    if !r.vs_drbd84.is_empty() {
        md.push_str(
            "drbdd vs in-kernel DRBD 8.4 (same VM boot, medians; ratio ours/theirs, \
             \"worse\" marks where drbdd loses)\n\n",
        );
        md.push_str(&report::comparison_table(&r.vs_drbd84));
        md.push('\n');
    }
    if let Some(rs) = &r.resync {
        md.push_str(&resync::markdown(rs));
        md.push('\n');
    }
    if !r.cpu.is_empty() || !r.cpu_skipped.is_empty() {
        md.push_str(
            "CPU cost (callgrind instructions per 4 KiB write at QD1, (Ir(2N) - Ir(N)) / N)\n\n",
        );
    }
    for c in &r.cpu {
        md.push_str(&format!(
            "- {}: {:.0} instructions per write (N = {})\n",
            c.target, c.instructions_per_write, c.writes
        ));
    }
    for (target, why) in &r.cpu_skipped {
        md.push_str(&format!("- {target}: SKIPPED: {why}\n"));
    }
    md
}

fn save(out: &Path, r: &Results, md: &str) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output dir {}", out.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    let stamp = r.started_unix_s;
    for name in [format!("results-{stamp}"), "latest".to_owned()] {
        std::fs::write(out.join(format!("{name}.json")), &json)?;
        std::fs::write(out.join(format!("{name}.md")), md)?;
    }
    eprintln!(
        "results saved in {} (results-{stamp}.json/.md, latest.json/.md, server logs in logs-{stamp}/)",
        out.display()
    );
    Ok(())
}
