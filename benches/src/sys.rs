//! Process and file helpers for the runner: child processes killed on drop,
//! bounded waits for sockets, tool lookup, backing-file creation on a real
//! (non-tmpfs) file system.
//!
//! Owns: every process the runner starts. Must never: signal a process it did
//! not start.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed (by its own pid) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` with stdout/stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ChildGuard> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// Fails with the tail of the log when the process already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.name)
        };
        if let Some(status) = child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, log_tail(&self.log));
        }
        Ok(())
    }

    /// The process id (for `ss -p` filters and logs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Last lines of this child's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last few lines of a log file, on one line.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Waits until a unix socket at `path` accepts a connection, at most `timeout`.
pub fn wait_for_unix_socket(
    path: &Path,
    timeout: Duration,
    child: Option<&mut ChildGuard>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    loop {
        if UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(c) = child.as_deref_mut() {
            c.check_alive()?;
        }
        if Instant::now() >= deadline {
            bail!(
                "no listener on {} after {} ms",
                path.display(),
                timeout.as_millis()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finds `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The file system type (from /proc/self/mountinfo) of the mount holding `path`.
pub fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let mount = Path::new(mount);
        if path.starts_with(mount)
            && best
                .as_ref()
                .is_none_or(|(len, _)| mount.as_os_str().len() >= *len)
        {
            best = Some((mount.as_os_str().len(), (*fstype).to_owned()));
        }
    }
    best.map(|(_, t)| t)
}

/// Refuses a work directory on tmpfs/ramfs: O_DIRECT needs a real file system.
pub fn check_work_dir_fs(dir: &Path) -> Result<String> {
    let t = fs_type(dir).unwrap_or_else(|| "unknown".to_owned());
    if t == "tmpfs" || t == "ramfs" {
        bail!("{} is on {t}; O_DIRECT backing files need a disk file system (ext4): pass --work-dir on one", dir.display());
    }
    Ok(t)
}

/// Creates `path` of `size_bytes` filled with non-zero data, so reads hit
/// written blocks rather than unwritten extents.
pub fn create_filled_file(path: &Path, size_bytes: u64) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| u8::try_from(i % 251).unwrap_or(0) | 1)
        .collect();
    let chunk_bytes = u64::try_from(chunk.len())?;
    let mut written = 0u64;
    while written < size_bytes {
        let n = usize::try_from((size_bytes - written).min(chunk_bytes))?;
        f.write_all(&chunk[..n])?;
        written += u64::try_from(n)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Runs a command to completion, at most `timeout` (then it is killed); the
/// error carries its stderr and stdout.
pub fn run_checked_within(cmd: &mut Command, timeout: Duration) -> Result<String> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        None => bail!(
            "{cmd:?} did not finish within {} s; killed it. {}",
            timeout.as_secs(),
            err.trim()
        ),
        Some(st) if !st.success() => bail!("{cmd:?} failed ({st}): {} {}", err.trim(), out.trim()),
        Some(_) => Ok(out),
    }
}

/// [`run_checked_within`] with a 60 s bound.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    run_checked_within(cmd, Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_not_mistaken_for_a_disk_file_system() {
        assert_eq!(fs_type(Path::new("/proc/self")).as_deref(), Some("proc"));
    }

    #[test]
    fn filled_file_has_exact_size_and_no_zero_bytes() {
        let dir = std::env::temp_dir().join(format!("drbdd-bench-fill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.img");
        create_filled_file(&p, (1 << 20) + 4096).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), (1 << 20) + 4096);
        assert!(data.iter().all(|b| *b != 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn command_output_failure_and_timeout_are_reported() {
        assert_eq!(run_checked(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let e = run_checked(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        assert!(format!("{e:#}").contains("oops"), "{e:#}");
        let e = run_checked_within(Command::new("sleep").arg("5"), Duration::from_millis(100))
            .unwrap_err();
        assert!(format!("{e:#}").contains("did not finish"), "{e:#}");
    }
}
