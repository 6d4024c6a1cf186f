//! CPU cost per 4 KiB write, counted in instructions under callgrind so the
//! figure repeats on a noisy shared machine.
//!
//! Owns: the micro-benchmark loop (`drbdd-bench micro-write`) and the runner
//! that executes it twice under `valgrind --tool=callgrind` (N and 2N writes)
//! and reports (I(2N) - I(N)) / N, which cancels start-up cost.
//! Must never: measure wall-clock time.

use anyhow::{Context, Result};
use drbdd_blockio::mem::MemTarget;
use drbdd_blockio::{AlignedBuf, BlockOp, BlockRequest, BlockTarget};
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

/// Bytes per micro-benchmark write.
pub const WRITE_BYTES: u32 = 4096;

/// What the micro-benchmark writes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MicroTarget {
    /// `drbdd_blockio::mem::MemTarget` (the frontend contract, no disk).
    Mem,
    /// `drbdd::pipeline::Pipeline` over an O_DIRECT file with internal metadata
    /// (activity log, one peer slot, disconnected): the local write path, on the
    /// synchronous backing engine (the io_uring engine hangs under valgrind 3.19).
    Pipeline,
}

impl MicroTarget {
    /// Both targets, in report order.
    pub const ALL: [MicroTarget; 2] = [MicroTarget::Mem, MicroTarget::Pipeline];

    /// Name used on the command line and in results.
    pub fn id(self) -> &'static str {
        match self {
            MicroTarget::Mem => "mem",
            MicroTarget::Pipeline => "pipeline",
        }
    }
}

/// Size of the pipeline micro-benchmark's backing file.
const PIPELINE_BACKING_BYTES: u64 = 64 << 20;
/// The writes cycle over this many bytes: one activity-log extent stays hot,
/// so the figure is the steady-state write path, not AL transactions.
const HOT_WINDOW_BYTES: u64 = 1 << 20;

/// A pipeline over a fresh file in `dir`; the file is removed when dropped.
#[derive(Debug)]
struct PipelineBench {
    pipeline: std::sync::Arc<drbdd::pipeline::Pipeline>,
    path: std::path::PathBuf,
}

impl PipelineBench {
    fn start(dir: &Path) -> Result<PipelineBench> {
        use drbdd::metadev::FileMetaDevice;
        use drbdd::pipeline::{Pipeline, PipelineConfig};
        use drbdd_metadata::{layout_internal, CreateOptions, MetaStore};
        let path = dir.join(format!("drbdd-bench-micro-{}.img", std::process::id()));
        std::fs::File::create(&path)?.set_len(PIPELINE_BACKING_BYTES)?;
        let bench = |path: &Path| -> Result<std::sync::Arc<Pipeline>> {
            let layout = layout_internal(PIPELINE_BACKING_BYTES, 1, 67)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let dev = FileMetaDevice::open(path)?;
            let opts = CreateOptions {
                node_id: 0,
                max_peers: 1,
                al_extents: 67,
            };
            let mut store =
                MetaStore::create(dev, layout, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            store
                .update_superblock(|sb| sb.peers[0].node_id = Some(1))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut cfg = PipelineConfig::new(path.to_owned(), layout.data_size_bytes);
            cfg.engine = drbdd::backing::EngineKind::Sync;
            let pipeline = Pipeline::start(cfg, std::sync::Arc::new(std::sync::Mutex::new(store)))?;
            pipeline.set_role_allows_io(true);
            Ok(pipeline)
        };
        match bench(&path) {
            Ok(pipeline) => Ok(PipelineBench { pipeline, path }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Drop for PipelineBench {
    fn drop(&mut self) {
        let _ = self.pipeline.shutdown();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Pushes `writes` 4 KiB writes, one at a time (QD1), through `target` the way a
/// frontend does: submit, wait for the completion, reuse the buffer. The
/// pipeline target keeps its backing file in `dir` (a disk file system).
pub fn micro_write(target: MicroTarget, writes: u64, dir: &Path) -> Result<u64> {
    let mut _keep = None;
    let device: std::sync::Arc<dyn BlockTarget> = match target {
        MicroTarget::Mem => std::sync::Arc::new(MemTarget::new(16 << 20)),
        MicroTarget::Pipeline => {
            let b = PipelineBench::start(dir)?;
            let p: std::sync::Arc<dyn BlockTarget> = b.pipeline.clone();
            _keep = Some(b);
            p
        }
    };
    let size_bytes = device.geometry().size_bytes.min(HOT_WINDOW_BYTES);
    let session = device
        .open("drbdd-bench micro-write", true)
        .map_err(|e| anyhow::anyhow!("open: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut buf = AlignedBuf::from_slice(&[0x5a; WRITE_BYTES as usize]);
    let mut offset_bytes = 0u64;
    for _ in 0..writes {
        let req = BlockRequest {
            op: BlockOp::Write,
            offset_bytes,
            len_bytes: WRITE_BYTES,
            fua: false,
        };
        let tx = tx.clone();
        session.submit(req, buf, Box::new(move |r| drop(tx.send(r))));
        buf = rx
            .recv()
            .context("completion never ran")?
            .map_err(|e| anyhow::anyhow!("write failed: {e}"))?;
        offset_bytes = (offset_bytes + u64::from(WRITE_BYTES)) % size_bytes;
    }
    drop(session);
    Ok(writes)
}

/// Result of the callgrind measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub target: String,
    pub writes: u64,
    pub instructions_at_n: u64,
    pub instructions_at_2n: u64,
    pub instructions_per_write: f64,
}

/// The instruction count from a callgrind output file ("summary:" or "totals:" line).
pub fn parse_callgrind_total(text: &str) -> Option<u64> {
    let mut totals = None;
    for line in text.lines() {
        let rest = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"));
        if let Some(n) = rest
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
        {
            totals = Some(n);
            if line.starts_with("summary:") {
                return totals;
            }
        }
    }
    totals
}

fn callgrind_instructions(
    exe: &Path,
    target: MicroTarget,
    writes: u64,
    out: &Path,
    dir: &Path,
) -> Result<u64> {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args([
            "micro-write",
            "--target",
            target.id(),
            "--writes",
            &writes.to_string(),
        ])
        .arg("--dir")
        .arg(dir);
    // Bounded so a target that hangs under valgrind becomes a skip, not a stuck run.
    crate::sys::run_checked_within(&mut cmd, std::time::Duration::from_secs(600))?;
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    parse_callgrind_total(&text)
        .with_context(|| format!("no summary:/totals: line in {}", out.display()))
}

/// Runs the micro-benchmark under callgrind at `writes` and `2 * writes`; `Err` is the skip reason.
pub fn measure(
    exe: &Path,
    target: MicroTarget,
    writes: u64,
    scratch: &Path,
) -> Result<CpuReport, String> {
    if crate::sys::which("valgrind").is_none() {
        return Err("valgrind not installed (apt-get install valgrind)".to_owned());
    }
    let run = |n: u64| {
        callgrind_instructions(
            exe,
            target,
            n,
            &scratch.join(format!("callgrind.{}.{n}.out", target.id())),
            scratch,
        )
        .map_err(|e| format!("{e:#}"))
    };
    let at_n = run(writes)?;
    let at_2n = run(writes * 2)?;
    let delta = at_2n.saturating_sub(at_n);
    let per_write = delta as f64 / writes as f64;
    Ok(CpuReport {
        target: target.id().to_owned(),
        writes,
        instructions_at_n: at_n,
        instructions_at_2n: at_2n,
        instructions_per_write: per_write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_summary_line_is_preferred_and_totals_is_the_fallback() {
        let with_summary = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 1234567\nfn=main\n10 5\ntotals: 1234567\n";
        assert_eq!(parse_callgrind_total(with_summary), Some(1_234_567));
        let totals_only = "events: Ir\nfn=(1) main\n16 3\ntotals: 99 \n";
        assert_eq!(parse_callgrind_total(totals_only), Some(99));
        assert_eq!(parse_callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn micro_write_completes_every_write_through_mem_target() {
        assert_eq!(
            micro_write(MicroTarget::Mem, 5000, Path::new("/tmp")).unwrap(),
            5000
        );
    }

    #[test]
    fn micro_write_completes_every_write_through_the_pipeline_and_removes_its_file() {
        let fs = crate::sys::fs_type(Path::new("/tmp")).unwrap_or_default();
        if fs == "tmpfs" || fs == "ramfs" {
            eprintln!("SKIP: /tmp is {fs}; the pipeline needs O_DIRECT on a disk file system");
            return;
        }
        let dir = std::env::temp_dir().join(format!("drbdd-bench-cpu-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(micro_write(MicroTarget::Pipeline, 600, &dir).unwrap(), 600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "backing file left behind"
        );
        std::fs::remove_dir(&dir).unwrap();
    }
}
