//! CPU cost per 4 KiB write, counted in instructions under callgrind so the
//! figure repeats on a noisy shared machine.
//!
//! Owns: the micro-benchmark loop (`drbdd-bench micro-write`) and the runner
//! that executes it twice under `valgrind --tool=callgrind` (N and 2N writes)
//! and reports (I(2N) - I(N)) / N, which cancels start-up cost.
//! Must never: measure wall-clock time.

use anyhow::{bail, Context, Result};
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
    // Pipeline: add when `drbdd::pipeline::Pipeline` can be built standalone
    // over a file (O_DIRECT, activity log, bitmaps) from outside the daemon.
}

impl MicroTarget {
    /// Name used on the command line and in results.
    pub fn id(self) -> &'static str {
        match self {
            MicroTarget::Mem => "mem",
        }
    }
}

/// Pushes `writes` 4 KiB writes, one at a time (QD1), through `target` the way a
/// frontend does: submit, wait for the completion, reuse the buffer.
pub fn micro_write(target: MicroTarget, writes: u64) -> Result<u64> {
    let device: Box<dyn BlockTarget> = match target {
        MicroTarget::Mem => Box::new(MemTarget::new(16 << 20)),
    };
    let size_bytes = device.geometry().size_bytes;
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

fn callgrind_instructions(exe: &Path, target: MicroTarget, writes: u64, out: &Path) -> Result<u64> {
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args([
            "micro-write",
            "--target",
            target.id(),
            "--writes",
            &writes.to_string(),
        ])
        .output()
        .context("starting valgrind")?;
    if !status.status.success() {
        bail!(
            "valgrind failed ({}): {}",
            status.status,
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
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
        assert_eq!(micro_write(MicroTarget::Mem, 5000).unwrap(), 5000);
    }
}
