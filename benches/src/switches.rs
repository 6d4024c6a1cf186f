//! Thread switches per I/O: how often the threads of a row's drbdd daemons
//! were switched out while a fio job ran, divided by the I/Os fio completed.
//! Latency and IOPS on a shared machine or under QEMU/TCG vary by ±30% between
//! runs; this count does not, and under TCG each wake-up costs tens to
//! hundreds of µs, so it is the cost we are driving down.
//!
//! Counting: for every thread in `/proc/<pid>/task/*/status`,
//! `voluntary_ctxt_switches + nonvoluntary_ctxt_switches`, read when the job's
//! ramp ends, every [`SAMPLE_INTERVAL`] while it runs and once more when fio
//! has exited. A thread present at the first and the last read counts its
//! difference; a thread that appeared in between counts its whole count (it
//! started from 0); a thread that vanished counts up to the last read that saw
//! it, and one that came and went between two reads counts 0 (its count went
//! with it). io_uring workers (`iou-wrk-<pid>`), SQ-poll threads and
//! NBD connection threads (`nbd-conn-<n>`, a new one per fio job) are grouped
//! under their name without the number so runs line up.
//!
//! Owns: reading, differencing and rendering those counts. Must never: run fio
//! or start daemons, or invent a number when `/proc` cannot be read.

use crate::fio::Workload;
use crate::report::{median_of, RowReport};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Which daemon of a row a count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    /// The node fio writes to (standalone rows have only this one).
    Primary,
    /// The replication peer of a pair row.
    Peer,
}

impl Node {
    /// Name in the JSON keys and the table.
    pub fn id(self) -> &'static str {
        match self {
            Node::Primary => "primary",
            Node::Peer => "peer",
        }
    }
}

/// The workload whose busiest threads are listed (all six are counted).
pub const TOP_THREADS_WORKLOAD: Workload = Workload::RandWriteQd1;

/// How many thread groups the top-threads table lists per node.
pub const TOP_THREADS_MAX: usize = 6;

/// Thread name prefixes whose numeric suffix is dropped when grouping.
const GROUPED_PREFIXES: [&str; 3] = ["iou-wrk-", "iou-sqp-", "nbd-conn-"];

/// One thread's name (`comm`) and its switch counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCount {
    pub comm: String,
    /// Voluntary + nonvoluntary.
    pub switches: u64,
    /// Nonvoluntary alone: preemptions, which depend on the machine's other load.
    pub nonvoluntary: u64,
}

/// Why a `status` file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("no {0} line in status")]
    Missing(&'static str),
    #[error("bad number in {0} line of status")]
    BadNumber(&'static str),
}

/// Parses `/proc/<pid>/task/<tid>/status` (the `Name`, `voluntary_ctxt_switches`
/// and `nonvoluntary_ctxt_switches` lines).
pub fn parse_status(text: &str) -> Result<ThreadCount, StatusError> {
    let field = |key: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(StatusError::Missing(key))
    };
    let number = |key: &'static str| {
        field(key)?
            .parse::<u64>()
            .map_err(|_| StatusError::BadNumber(key))
    };
    let comm = field("Name")?.to_owned();
    let voluntary = number("voluntary_ctxt_switches")?;
    let nonvoluntary = number("nonvoluntary_ctxt_switches")?;
    Ok(ThreadCount {
        comm,
        switches: voluntary.saturating_add(nonvoluntary),
        nonvoluntary,
    })
}

/// `iou-wrk-1234` -> `iou-wrk`, `nbd-conn-7` -> `nbd-conn`; other names unchanged.
pub fn group_name(comm: &str) -> &str {
    for prefix in GROUPED_PREFIXES {
        if let Some(rest) = comm.strip_prefix(prefix) {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return &prefix[..prefix.len() - 1];
            }
        }
    }
    comm
}

/// All threads of one process at one moment: tid -> counts.
pub type Snapshot = BTreeMap<u32, ThreadCount>;

/// Reads every thread of process `pid` under `proc_root` (normally `/proc`).
/// A thread that exits between listing and reading is left out (it counts 0,
/// as a vanished thread does). `Err` says what could not be read.
pub fn read_snapshot(proc_root: &Path, pid: u32) -> Result<Snapshot, String> {
    let task_dir = proc_root.join(pid.to_string()).join("task");
    let entries = std::fs::read_dir(&task_dir)
        .map_err(|e| format!("cannot read {}: {e}", task_dir.display()))?;
    let mut snap = Snapshot::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", task_dir.display()))?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path().join("status");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // ENOENT, or ESRCH from a thread that is being reaped: it vanished.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
                continue
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let count = parse_status(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        snap.insert(tid, count);
    }
    if snap.is_empty() {
        return Err(format!("no readable threads in {}", task_dir.display()));
    }
    Ok(snap)
}

/// Switches per thread group between two snapshots of one process (see the
/// module doc for appearing and vanishing threads). A tid whose count went
/// down belongs to a new thread that reused it and counts its whole count.
pub fn thread_deltas(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, u64> {
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, a) in after {
        let delta = delta(before.get(tid), a, |c| c.switches);
        *groups.entry(group_name(&a.comm).to_owned()).or_default() += delta;
    }
    groups
}

/// Nonvoluntary switches of all threads between two snapshots (same rules).
pub fn nonvoluntary_delta(before: &Snapshot, after: &Snapshot) -> u64 {
    after
        .iter()
        .map(|(tid, a)| delta(before.get(tid), a, |c| c.nonvoluntary))
        .sum()
}

/// `count` of one thread since `before`: the difference when the same thread
/// was seen before, its whole count when it is new or reused the tid.
fn delta(before: Option<&ThreadCount>, after: &ThreadCount, count: fn(&ThreadCount) -> u64) -> u64 {
    match before {
        Some(b) if after.switches >= b.switches => count(after).saturating_sub(count(b)),
        _ => count(after),
    }
}

/// One daemon's switches during one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeJob {
    /// Sum over all its threads.
    pub switches: u64,
    /// The nonvoluntary part of `switches` (preemptions).
    pub nonvoluntary: u64,
    /// Per thread group.
    pub threads: BTreeMap<String, u64>,
}

impl NodeJob {
    /// The counts between two snapshots of one process.
    pub fn between(before: &Snapshot, after: &Snapshot) -> NodeJob {
        let threads = thread_deltas(before, after);
        NodeJob {
            switches: threads.values().sum(),
            nonvoluntary: nonvoluntary_delta(before, after),
            threads,
        }
    }
}

/// The daemons' switches during one fio job and the I/Os fio completed in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSwitches {
    /// fio's `total_ios` of the job's direction (ramp excluded).
    pub ios: u64,
    pub nodes: BTreeMap<Node, NodeJob>,
}

impl JobSwitches {
    /// Switches per I/O of `node`; None without I/Os or without that node.
    pub fn per_io(&self, node: Node) -> Option<f64> {
        let n = self.nodes.get(&node)?;
        (self.ios > 0).then(|| n.switches as f64 / self.ios as f64)
    }

    /// Nonvoluntary switches per I/O of `node`.
    pub fn nonvoluntary_per_io(&self, node: Node) -> Option<f64> {
        let n = self.nodes.get(&node)?;
        (self.ios > 0).then(|| n.nonvoluntary as f64 / self.ios as f64)
    }
}

/// Reads every daemon of a row; the first failure is the error.
pub fn snapshot_all(proc_root: &Path, daemons: &[(Node, u32)]) -> Result<Vec<Snapshot>, String> {
    daemons
        .iter()
        .map(|(node, pid)| {
            read_snapshot(proc_root, *pid).map_err(|e| format!("{} (pid {pid}): {e}", node.id()))
        })
        .collect()
}

/// How often the daemons' threads are re-read while a job runs, so that a
/// thread which exits before the job ends (the NBD connection thread exits
/// when fio disconnects) still counts what it did until it was last seen.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `job` (one fio job, `ramp` of warm-up first) and counts the daemons'
/// thread switches from the end of its ramp (timed from just before the job
/// starts, so the window opens by fio's start-up time early) to its end.
/// fio's `total_ios` also excludes the ramp, so both sides cover the same span.
pub fn around_job<R>(
    daemons: &[(Node, u32)],
    ramp: Duration,
    job: impl FnOnce() -> R,
) -> (R, Result<BTreeMap<Node, NodeJob>, String>) {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let sampler =
            s.spawn(move || sample_until_done(Path::new("/proc"), daemons, ramp, &done_rx));
        let result = job();
        // The sampler may have ended early on an error and dropped the receiver.
        let _ = done_tx.send(());
        let counts = sampler
            .join()
            .unwrap_or_else(|_| Err("switch sampler thread panicked".into()));
        (result, counts)
    })
}

/// Waits `ramp` (or until `done`), reads the daemons, then re-reads them every
/// [`SAMPLE_INTERVAL`] until `done` and once more after it.
fn sample_until_done(
    proc_root: &Path,
    daemons: &[(Node, u32)],
    ramp: Duration,
    done: &mpsc::Receiver<()>,
) -> Result<BTreeMap<Node, NodeJob>, String> {
    if !ramp.is_zero() && !matches!(done.recv_timeout(ramp), Err(RecvTimeoutError::Timeout)) {
        return Err("the job ended before its ramp did".into());
    }
    let before = snapshot_all(proc_root, daemons)?;
    let mut latest = before.clone();
    loop {
        let finished = !matches!(
            done.recv_timeout(SAMPLE_INTERVAL),
            Err(RecvTimeoutError::Timeout)
        );
        for (l, now) in latest.iter_mut().zip(snapshot_all(proc_root, daemons)?) {
            merge_latest(l, now);
        }
        if finished {
            break;
        }
    }
    Ok(daemons
        .iter()
        .zip(before.iter().zip(&latest))
        .map(|((node, _), (b, l))| (*node, NodeJob::between(b, l)))
        .collect())
}

/// Folds a new read of a process into the latest counts seen of each of its
/// threads: live threads are updated, threads gone since keep their last
/// count (start `latest` as the first read, so a thread gone before it was
/// read again counts 0).
pub fn merge_latest(latest: &mut Snapshot, now: Snapshot) {
    latest.extend(now);
}

/// One run of a row: workload id -> counts, and why jobs had none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSwitches {
    pub jobs: BTreeMap<&'static str, JobSwitches>,
    pub errors: Vec<String>,
}

/// One thread group's median switches per I/O.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadShare {
    pub thread: String,
    pub per_io: f64,
}

/// The thread-switch results of one drbdd row (JSON key `thread_switches`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwitchReport {
    /// Per run: workload id -> counts; a job whose counts could not be read is absent.
    pub runs: Vec<BTreeMap<&'static str, JobSwitches>>,
    /// Median over runs of switches per I/O, keyed `<workload>_<node>`
    /// (e.g. `randwrite_4k_qd1_primary`, `randwrite_4k_qd1_peer`).
    pub median_per_io: BTreeMap<String, f64>,
    /// The nonvoluntary part (preemptions, which depend on the machine's other
    /// load), median over runs, same keys.
    pub median_nonvoluntary_per_io: BTreeMap<String, f64>,
    /// randwrite 4k QD1: per node the thread groups with the highest median
    /// switches per I/O, highest first (at most [`TOP_THREADS_MAX`]).
    pub top_threads_randwrite_4k_qd1: BTreeMap<Node, Vec<ThreadShare>>,
    /// Why counts are missing (e.g. `/proc` unreadable), each reason once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// `randwrite-4k-qd1` + primary -> `randwrite_4k_qd1_primary`.
pub fn median_key(w: Workload, node: Node) -> String {
    format!("{}_{}", w.id().replace('-', "_"), node.id())
}

impl SwitchReport {
    /// Medians and top threads over the runs of one row.
    pub fn from_runs(runs: Vec<RunSwitches>) -> SwitchReport {
        let mut unavailable: Vec<String> = Vec::new();
        for e in runs.iter().flat_map(|r| &r.errors) {
            if !unavailable.contains(e) {
                unavailable.push(e.clone());
            }
        }
        let runs: Vec<BTreeMap<&'static str, JobSwitches>> =
            runs.into_iter().map(|r| r.jobs).collect();
        let median_per_io = medians(&runs, JobSwitches::per_io);
        let median_nonvoluntary_per_io = medians(&runs, JobSwitches::nonvoluntary_per_io);
        let top_threads_randwrite_4k_qd1 = [Node::Primary, Node::Peer]
            .into_iter()
            .filter_map(|node| {
                let top = top_threads(&runs, TOP_THREADS_WORKLOAD, node);
                (!top.is_empty()).then_some((node, top))
            })
            .collect();
        SwitchReport {
            runs,
            median_per_io,
            median_nonvoluntary_per_io,
            top_threads_randwrite_4k_qd1,
            unavailable,
        }
    }

    fn has_numbers(&self) -> bool {
        !self.median_per_io.is_empty()
    }
}

/// Median over runs of `per_io` for every workload and node, keyed by [`median_key`].
fn medians(
    runs: &[BTreeMap<&'static str, JobSwitches>],
    per_io: fn(&JobSwitches, Node) -> Option<f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for w in Workload::ALL {
        for node in [Node::Primary, Node::Peer] {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| per_io(r.get(w.id())?, node))
                .collect();
            if let Some(m) = median_of(&vals) {
                out.insert(median_key(w, node), m);
            }
        }
    }
    out
}

/// Median switches per I/O of each thread group of `node` in workload `w`;
/// a run that measured the job but lacks a group counts 0 for it.
fn top_threads(
    runs: &[BTreeMap<&'static str, JobSwitches>],
    w: Workload,
    node: Node,
) -> Vec<ThreadShare> {
    let jobs: Vec<(&NodeJob, u64)> = runs
        .iter()
        .filter_map(|r| {
            let j = r.get(w.id())?;
            Some((j.nodes.get(&node)?, j.ios)).filter(|(_, ios)| *ios > 0)
        })
        .collect();
    let names: BTreeSet<&String> = jobs.iter().flat_map(|(n, _)| n.threads.keys()).collect();
    let mut shares: Vec<ThreadShare> = names
        .into_iter()
        .filter_map(|name| {
            let vals: Vec<f64> = jobs
                .iter()
                .map(|(n, ios)| n.threads.get(name).copied().unwrap_or(0) as f64 / *ios as f64)
                .collect();
            let per_io = median_of(&vals)?;
            (per_io > 0.0).then(|| ThreadShare {
                thread: name.clone(),
                per_io,
            })
        })
        .collect();
    shares.sort_by(|a, b| b.per_io.total_cmp(&a.per_io).then(a.thread.cmp(&b.thread)));
    shares.truncate(TOP_THREADS_MAX);
    shares
}

/// Short column label of a workload.
fn label(w: Workload) -> &'static str {
    match w {
        Workload::RandReadQd1 => "rr4k QD1",
        Workload::RandWriteQd1 => "rw4k QD1",
        Workload::RandReadQd32 => "rr4k QD32",
        Workload::RandWriteQd32 => "rw4k QD32",
        Workload::SeqWrite1M => "write 1M QD8",
        Workload::SeqRead1M => "read 1M QD8",
    }
}

fn one_line(s: &str) -> String {
    s.replace('|', "/").replace('\n', " ")
}

/// The nodes a report has numbers for, primary first.
fn nodes_of(r: &SwitchReport) -> Vec<Node> {
    [Node::Primary, Node::Peer]
        .into_iter()
        .filter(|n| {
            Workload::ALL
                .iter()
                .any(|w| r.median_per_io.contains_key(&median_key(*w, *n)))
        })
        .collect()
}

/// The Markdown section for the rows that carry thread-switch results
/// (empty when none does): switches per I/O per workload and node, then the
/// top thread groups of randwrite 4k QD1, then reasons for missing counts.
pub fn markdown(rows: &[RowReport]) -> String {
    let rows: Vec<(&str, &SwitchReport)> = rows
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.thread_switches.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "Thread switches per I/O (voluntary + nonvoluntary context switches of every thread \
         of the row's drbdd daemons from ramp end to job end, / fio's completed I/Os; median \
         over runs; lower is better). In parentheses the nonvoluntary part: preemptions, \
         which depend on the machine's other load.\n\n| row | node |",
    );
    for w in Workload::ALL {
        let _ = write!(s, " {} |", label(w));
    }
    s.push_str("\n|---|---|");
    for _ in Workload::ALL {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut notes = String::new();
    for (name, r) in &rows {
        if !r.has_numbers() {
            let why = r.unavailable.first().map_or("no counts", String::as_str);
            let _ = write!(s, "| {name} | - | not measured: {} |", one_line(why));
            for _ in 1..Workload::ALL.len() {
                s.push_str(" |");
            }
            s.push('\n');
            continue;
        }
        for node in nodes_of(r) {
            let _ = write!(s, "| {name} | {} |", node.id());
            for w in Workload::ALL {
                let key = median_key(w, node);
                match (
                    r.median_per_io.get(&key),
                    r.median_nonvoluntary_per_io.get(&key),
                ) {
                    (Some(v), Some(nv)) => {
                        let _ = write!(s, " {v:.2} ({nv:.2}) |");
                    }
                    (Some(v), None) => {
                        let _ = write!(s, " {v:.2} |");
                    }
                    _ => s.push_str(" - |"),
                }
            }
            s.push('\n');
        }
        for why in &r.unavailable {
            let _ = writeln!(notes, "- {name}: some jobs not counted: {}", one_line(why));
        }
    }
    s.push_str(&top_threads_table(&rows));
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(&notes);
    }
    s
}

fn top_threads_table(rows: &[(&str, &SwitchReport)]) -> String {
    let mut s = format!(
        "\nTop threads in {} (switches per I/O, median; io_uring workers as `iou-wrk`, \
         NBD connections as `nbd-conn`)\n\n| row | node | threads |\n|---|---|---|\n",
        label(TOP_THREADS_WORKLOAD)
    );
    for (name, r) in rows {
        for (node, top) in &r.top_threads_randwrite_4k_qd1 {
            let list: Vec<String> = top
                .iter()
                .map(|t| format!("{} {:.2}", t.thread, t.per_io))
                .collect();
            let _ = writeln!(s, "| {name} | {} | {} |", node.id(), list.join(", "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = include_str!("../tests/data/proc-task-status-drbdd-res.txt");

    fn t(comm: &str, switches: u64) -> ThreadCount {
        ThreadCount {
            comm: comm.to_owned(),
            switches,
            nonvoluntary: switches / 10,
        }
    }

    #[test]
    fn captured_status_yields_name_and_both_switch_counts_summed() {
        let c = parse_status(STATUS).unwrap();
        assert_eq!(c.comm, "drbdd-res-r0");
        assert_eq!(c.switches, 48213 + 1877);
        assert_eq!(c.nonvoluntary, 1877);
    }

    #[test]
    fn status_without_switch_lines_or_with_garbage_is_an_error() {
        let no_vol = STATUS.replace("\nvoluntary_ctxt_switches", "\nx");
        assert!(matches!(
            parse_status(&no_vol),
            Err(StatusError::Missing("voluntary_ctxt_switches"))
        ));
        let bad = STATUS.replace(
            "nonvoluntary_ctxt_switches:\t1877",
            "nonvoluntary_ctxt_switches:\tx",
        );
        assert_eq!(
            parse_status(&bad),
            Err(StatusError::BadNumber("nonvoluntary_ctxt_switches"))
        );
        assert_eq!(parse_status(""), Err(StatusError::Missing("Name")));
    }

    #[test]
    fn io_uring_workers_and_nbd_connections_group_without_their_number() {
        assert_eq!(group_name("iou-wrk-1234"), "iou-wrk");
        assert_eq!(group_name("iou-sqp-99"), "iou-sqp");
        assert_eq!(group_name("nbd-conn-7"), "nbd-conn");
        assert_eq!(group_name("drbdd-res-r0"), "drbdd-res-r0");
        assert_eq!(group_name("drbdd-sync-io-1"), "drbdd-sync-io-1");
        assert_eq!(group_name("iou-wrk-"), "iou-wrk-");
        assert_eq!(group_name("iou-wrk-x1"), "iou-wrk-x1");
    }

    #[test]
    fn deltas_count_appearing_threads_whole_and_vanished_ones_as_zero() {
        let before: Snapshot = [
            (10, t("drbdd-res-r0", 100)),
            (11, t("drbdd-uring", 50)),
            (12, t("iou-wrk-10", 7)),
            (13, t("nbd-conn-3", 40)),
        ]
        .into();
        let after: Snapshot = [
            (10, t("drbdd-res-r0", 130)),
            (11, t("drbdd-uring", 50)),
            // 12 vanished; 14 and 15 appeared during the job.
            (13, t("nbd-conn-3", 45)),
            (14, t("iou-wrk-10", 3)),
            (15, t("nbd-conn-4", 20)),
        ]
        .into();
        let d = thread_deltas(&before, &after);
        let want: BTreeMap<String, u64> = [
            ("drbdd-res-r0".to_owned(), 30),
            ("drbdd-uring".to_owned(), 0),
            ("iou-wrk".to_owned(), 3),
            ("nbd-conn".to_owned(), 5 + 20),
        ]
        .into();
        assert_eq!(d, want);
        let node = NodeJob::between(&before, &after);
        assert_eq!(node.switches, 58);
        // Nonvoluntary is a tenth of each count here: res 13-10, uring 5-5,
        // nbd-conn-3 4-4, the new iou-wrk 0 (3/10), the new nbd-conn-4 2.
        assert_eq!(node.nonvoluntary, 5);
    }

    #[test]
    fn a_thread_that_exits_mid_job_counts_up_to_the_last_read_that_saw_it() {
        let before: Snapshot = [(10, t("drbdd-res-r0", 100)), (30, t("nbd-conn-5", 10))].into();
        let mut latest = before.clone();
        // Mid-job read: both alive, an io_uring worker appeared.
        merge_latest(
            &mut latest,
            [
                (10, t("drbdd-res-r0", 150)),
                (30, t("nbd-conn-5", 60)),
                (31, t("iou-wrk-10", 2)),
            ]
            .into(),
        );
        // Last read after fio exited: the connection thread and the worker are gone.
        merge_latest(&mut latest, [(10, t("drbdd-res-r0", 170))].into());
        let d = thread_deltas(&before, &latest);
        assert_eq!(d["drbdd-res-r0"], 70);
        assert_eq!(d["nbd-conn"], 50);
        assert_eq!(d["iou-wrk"], 2);
    }

    #[test]
    fn a_reused_tid_whose_count_went_down_counts_as_a_new_thread() {
        let before: Snapshot = [(20, t("iou-wrk-1", 500))].into();
        let after: Snapshot = [(20, t("iou-wrk-1", 4))].into();
        assert_eq!(thread_deltas(&before, &after)["iou-wrk"], 4);
    }

    #[test]
    fn snapshot_reads_every_task_and_skips_threads_gone_before_their_status_is_read() {
        let root = tempfile::tempdir().unwrap();
        let task = root.path().join("77/task");
        for (tid, body) in [
            ("77", STATUS.to_owned()),
            ("78", STATUS.replace("drbdd-res-r0", "iou-wrk-77")),
        ] {
            std::fs::create_dir_all(task.join(tid)).unwrap();
            std::fs::write(task.join(tid).join("status"), body).unwrap();
        }
        // A thread that exited between readdir and open: its directory has no status.
        std::fs::create_dir_all(task.join("79")).unwrap();
        let snap = read_snapshot(root.path(), 77).unwrap();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[&78].comm, "iou-wrk-77");
        let err = read_snapshot(root.path(), 1234).unwrap_err();
        assert!(err.contains("1234/task"), "{err}");
    }

    fn job(ios: u64, nodes: &[(Node, &[(&str, u64)])]) -> JobSwitches {
        JobSwitches {
            ios,
            nodes: nodes
                .iter()
                .map(|(node, threads)| {
                    let threads: BTreeMap<String, u64> =
                        threads.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
                    let job = NodeJob {
                        switches: threads.values().sum(),
                        nonvoluntary: threads.values().sum::<u64>() / 4,
                        threads,
                    };
                    (*node, job)
                })
                .collect(),
        }
    }

    fn pair_run(ios: u64, res: u64, uring: u64, peer: u64) -> RunSwitches {
        let w = Workload::RandWriteQd1.id();
        let mut r = RunSwitches::default();
        r.jobs.insert(
            w,
            job(
                ios,
                &[
                    (
                        Node::Primary,
                        &[("drbdd-res-r0", res), ("drbdd-uring", uring)],
                    ),
                    (Node::Peer, &[("drbdd-res-r0", peer)]),
                ],
            ),
        );
        r
    }

    #[test]
    fn report_takes_medians_per_node_and_ranks_threads() {
        let runs = vec![
            pair_run(1000, 2000, 1000, 3000),
            pair_run(1000, 2200, 900, 2000),
            pair_run(2000, 4000, 0, 2000),
        ];
        let r = SwitchReport::from_runs(runs);
        // primary per I/O: 3.0, 3.1, 2.0 -> 3.0; peer: 3.0, 2.0, 1.0 -> 2.0
        assert_eq!(r.median_per_io["randwrite_4k_qd1_primary"], 3.0);
        assert_eq!(r.median_per_io["randwrite_4k_qd1_peer"], 2.0);
        assert_eq!(r.median_per_io.len(), 2);
        let top = &r.top_threads_randwrite_4k_qd1[&Node::Primary];
        assert_eq!(top[0].thread, "drbdd-res-r0");
        assert_eq!(top[0].per_io, 2.0);
        // uring: 1.0, 0.9 and 0 (absent in no run, but 0 in the third) -> 0.9
        assert_eq!(top[1].thread, "drbdd-uring");
        assert!((top[1].per_io - 0.9).abs() < 1e-12);
        assert!(r.unavailable.is_empty());
    }

    #[test]
    fn table_lists_each_node_and_the_top_threads_and_reasons() {
        let mut measured = RowReport::measured("drbdd-c", "4c drbdd pair C", Vec::new());
        measured.thread_switches = Some(SwitchReport::from_runs(vec![pair_run(
            1000, 2000, 1000, 3000,
        )]));
        let mut blind = RowReport::measured("drbdd", "3 drbdd standalone", Vec::new());
        blind.thread_switches = Some(SwitchReport::from_runs(vec![RunSwitches {
            jobs: BTreeMap::new(),
            errors: vec!["primary (pid 5): cannot read /proc/5/task: denied".into()],
        }]));
        let raw = RowReport::measured("raw", "1 raw", Vec::new());
        let md = markdown(&[raw, blind, measured]);
        assert!(
            md.contains("| 4c drbdd pair C | primary | - | 3.00 (0.75) | - | - | - | - |"),
            "{md}"
        );
        assert!(
            md.contains("| 4c drbdd pair C | peer | - | 3.00 (0.75) | - | - | - | - |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 3 drbdd standalone | - | not measured: primary (pid 5): cannot read /proc/5/task: denied |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 4c drbdd pair C | primary | drbdd-res-r0 2.00, drbdd-uring 1.00 |"),
            "{md}"
        );
        assert!(!md.contains("| 1 raw"), "{md}");
        assert_eq!(
            markdown(&[RowReport::measured("raw", "1 raw", Vec::new())]),
            ""
        );
    }
}
