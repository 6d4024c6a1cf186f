//! The table rows: what each one measures and how its target is brought up
//! (raw file, qemu-nbd, nbdkit, drbdd standalone, drbdd pairs A/B/C).
//!
//! Owns: row identities and their setup. A row that cannot be set up yields a
//! skip reason, never an error that stops the other rows. Must never: leave a
//! process running after its [`RunningRow`] is dropped.

use crate::drbdd::{DrbddOptions, DrbddPair, DrbddStandalone};
use crate::fio::FioTarget;
use crate::switches::Node;
use crate::sys::{self, ChildGuard};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Export name every NBD server in the bench uses.
pub const EXPORT_NAME: &str = "r0";

/// One row of the results table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowId {
    Raw,
    QemuNbd,
    Nbdkit,
    DrbddStandalone,
    DrbddA,
    DrbddB,
    DrbddC,
}

impl RowId {
    /// All rows in table order; `Raw` is the baseline.
    pub const ALL: [RowId; 7] = [
        RowId::Raw,
        RowId::QemuNbd,
        RowId::Nbdkit,
        RowId::DrbddStandalone,
        RowId::DrbddA,
        RowId::DrbddB,
        RowId::DrbddC,
    ];

    /// Id used on the command line (`--rows`) and in JSON.
    pub fn id(self) -> &'static str {
        match self {
            RowId::Raw => "raw",
            RowId::QemuNbd => "qemu-nbd",
            RowId::Nbdkit => "nbdkit",
            RowId::DrbddStandalone => "drbdd",
            RowId::DrbddA => "drbdd-a",
            RowId::DrbddB => "drbdd-b",
            RowId::DrbddC => "drbdd-c",
        }
    }

    /// Human-readable row label.
    pub fn name(self) -> &'static str {
        match self {
            RowId::Raw => "1 raw file, O_DIRECT io_uring (baseline)",
            RowId::QemuNbd => "2a qemu-nbd cache=none aio=io_uring, NBD unix",
            RowId::Nbdkit => "2b nbdkit file cache=none, NBD unix",
            RowId::DrbddStandalone => "3 drbdd standalone, NBD unix",
            RowId::DrbddA => "4a drbdd + 1 peer loopback, protocol A",
            RowId::DrbddB => "4b drbdd + 1 peer loopback, protocol B",
            RowId::DrbddC => "4c drbdd + 1 peer loopback, protocol C",
        }
    }

    /// Parses a `--rows` entry.
    pub fn from_id(s: &str) -> Option<RowId> {
        RowId::ALL.into_iter().find(|r| r.id() == s)
    }
}

/// Shared settings for bringing rows up.
#[derive(Debug, Clone)]
pub struct SetupEnv {
    /// Scratch directory on a disk file system (backing files, sockets, logs).
    pub work_dir: PathBuf,
    /// Where server and daemon logs go (kept after the run, unlike `work_dir`).
    pub log_dir: PathBuf,
    /// Size of every backing file.
    pub size_bytes: u64,
    pub drbdd: DrbddOptions,
}

/// A row whose target is up; dropping it stops its processes.
#[derive(Debug)]
pub struct RunningRow {
    pub row: RowId,
    pub target: FioTarget,
    /// Processes serving the target, stopped on drop.
    pub servers: Vec<ChildGuard>,
    /// drbdd state kept alive for the row's lifetime.
    pub drbdd: DrbddKeep,
}

/// drbdd processes owned by a row.
#[derive(Debug, Default)]
pub enum DrbddKeep {
    #[default]
    None,
    Standalone(Box<DrbddStandalone>),
    Pair(Box<DrbddPair>),
}

impl DrbddKeep {
    /// The row's drbdd daemons with their pids (None: not running), primary
    /// first; None for rows without drbdd (they get no thread-switch counts).
    pub fn daemons(&self) -> Option<Vec<(Node, Option<u32>)>> {
        match self {
            DrbddKeep::None => None,
            DrbddKeep::Standalone(s) => Some(vec![(Node::Primary, s.node.pid())]),
            DrbddKeep::Pair(p) => Some(vec![
                (Node::Primary, p.alice.pid()),
                (Node::Peer, p.bob.pid()),
            ]),
        }
    }
}

/// The raw backing file that rows 1 and 2 share.
pub fn raw_file(env: &SetupEnv) -> PathBuf {
    env.work_dir.join("raw.img")
}

/// Brings `row` up; `Err` is the skip reason.
pub fn set_up(row: RowId, env: &SetupEnv) -> Result<RunningRow, String> {
    let plain = |target, servers| RunningRow {
        row,
        target,
        servers,
        drbdd: DrbddKeep::None,
    };
    match row {
        RowId::Raw => {
            let path = raw_file(env);
            Ok(plain(
                FioTarget::DirectFile {
                    path,
                    size_bytes: env.size_bytes,
                },
                Vec::new(),
            ))
        }
        RowId::QemuNbd => {
            let (g, sock) = start_qemu_nbd(env).map_err(|e| format!("{e:#}"))?;
            Ok(plain(FioTarget::nbd_unix(&sock, EXPORT_NAME), vec![g]))
        }
        RowId::Nbdkit => {
            let (g, sock) = start_nbdkit(env).map_err(|e| format!("{e:#}"))?;
            Ok(plain(FioTarget::nbd_unix(&sock, EXPORT_NAME), vec![g]))
        }
        RowId::DrbddStandalone => {
            let s = DrbddStandalone::start(env)?;
            let target = FioTarget::nbd_unix(&s.nbd_socket, EXPORT_NAME);
            Ok(RunningRow {
                row,
                target,
                servers: Vec::new(),
                drbdd: DrbddKeep::Standalone(Box::new(s)),
            })
        }
        RowId::DrbddA | RowId::DrbddB | RowId::DrbddC => {
            let protocol = match row {
                RowId::DrbddA => 'A',
                RowId::DrbddB => 'B',
                _ => 'C',
            };
            let label = format!("drbdd-pair-{}", protocol.to_ascii_lowercase());
            let p = DrbddPair::start(env, protocol, &label)?;
            let target = FioTarget::nbd_unix(&p.primary_nbd_socket(), EXPORT_NAME);
            Ok(RunningRow {
                row,
                target,
                servers: Vec::new(),
                drbdd: DrbddKeep::Pair(Box::new(p)),
            })
        }
    }
}

fn require(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    sys::which(tool)
        .ok_or_else(|| anyhow::anyhow!("{tool} not installed (apt-get install {package})"))
}

fn start_qemu_nbd(env: &SetupEnv) -> anyhow::Result<(ChildGuard, PathBuf)> {
    let bin = require("qemu-nbd", "qemu-utils")?;
    let sock = env.work_dir.join("qemu-nbd.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(bin);
    cmd.args([
        "--cache=none",
        "--aio=io_uring",
        "-f",
        "raw",
        "--persistent",
        "--shared=8",
    ])
    .arg(format!("--export-name={EXPORT_NAME}"))
    .arg("--socket")
    .arg(&sock)
    .arg(raw_file(env));
    let mut g = ChildGuard::spawn("qemu-nbd", cmd, &env.log_dir.join("qemu-nbd.log"))?;
    sys::wait_for_unix_socket(&sock, Duration::from_secs(10), Some(&mut g))?;
    Ok((g, sock))
}

fn start_nbdkit(env: &SetupEnv) -> anyhow::Result<(ChildGuard, PathBuf)> {
    let bin = require("nbdkit", "nbdkit")?;
    let sock = env.work_dir.join("nbdkit.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(bin);
    cmd.arg("--foreground")
        .arg("--unix")
        .arg(&sock)
        .args(["--exportname", EXPORT_NAME, "file"])
        .arg(format!("file={}", raw_file(env).display()))
        .arg("cache=none");
    let mut g = ChildGuard::spawn("nbdkit", cmd, &env.log_dir.join("nbdkit.log"))?;
    sys::wait_for_unix_socket(&sock, Duration::from_secs(10), Some(&mut g))?;
    Ok((g, sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_round_trip_and_raw_is_first() {
        for r in RowId::ALL {
            assert_eq!(RowId::from_id(r.id()), Some(r));
        }
        assert_eq!(RowId::ALL[0], RowId::Raw);
        assert_eq!(RowId::from_id("nope"), None);
    }
}
