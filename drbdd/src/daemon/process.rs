//! Process plumbing for the daemon binary: the run-directory lock that keeps a
//! second daemon away, SIGTERM/SIGINT handling, journald-friendly logging and
//! the allocator settings of the data path.
//!
//! Owns: the lock file descriptor and the signal mask. Must never: touch
//! resources (shutdown is the caller's job once [`wait_for_shutdown_signal`]
//! returns).

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Threshold below which glibc serves allocations from its heaps instead of
/// a fresh `mmap` each (every data buffer of a replicated write is at most
/// 1 MiB plus a frame header).
const MALLOC_MMAP_THRESHOLD_BYTES: libc::c_int = 4 << 20;
/// Free heap memory glibc keeps instead of returning it to the kernel.
const MALLOC_TRIM_THRESHOLD_BYTES: libc::c_int = 512 << 20;

/// Keeps freed data buffers in the process for reuse. With glibc's defaults
/// a replicated write's buffers (the copy for the peer, the frame, the
/// receive buffer, the aligned buffer for the disk) were fresh pages every
/// time: a page fault per 4 KiB and the kernel zeroing it, which under QEMU
/// TCG cost more than the data copies. Like DRBD's preallocated page pool,
/// the daemon now reuses what it has (memory stays at the peak in flight,
/// bounded by max-buffers and the queue depths). Call before threads start.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called while single-threaded.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 1
    };
    if !ok {
        tracing::warn!("mallopt refused the data-path allocator settings; buffers may page-fault on every write");
    }
}

/// Why the run-dir lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another drbdd (pid {pid}) is already running with run dir {run_dir}; stop it first (systemctl stop drbdd) or use another --run-dir")]
    Held { pid: String, run_dir: PathBuf },
    #[error("cannot use lock file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The held run-dir lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct RunDirLock {
    _file: File,
    path: PathBuf,
}

impl RunDirLock {
    /// Creates `run_dir` (mode 0700) if needed, takes an exclusive `flock` on
    /// `<run_dir>/drbdd.lock` and writes our pid into it.
    pub fn acquire(run_dir: &Path, lock_name: &str) -> Result<Self, LockError> {
        let path = run_dir.join(lock_name);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        match locked {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_owned()
                    },
                    run_dir: run_dir.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(e.into())),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(RunDirLock { _file: file, path })
    }

    /// Removes the lock file (at clean shutdown, while still holding the lock).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and every thread
/// it spawns afterwards), so only [`wait_for_shutdown_signal`] receives them.
/// Call first thing in `main`.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_set()?;
    // SAFETY: `set` is an initialised sigset_t on our stack; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn shutdown_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` points to a live sigset_t; the signal numbers are valid constants.
    let rc = unsafe {
        libc::sigemptyset(&mut set)
            | libc::sigaddset(&mut set, libc::SIGTERM)
            | libc::sigaddset(&mut set, libc::SIGINT)
            | libc::sigaddset(&mut set, libc::SIGHUP)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Waits until SIGTERM or SIGINT arrives (SIGHUP is logged and ignored);
/// returns the signal's name.
pub fn wait_for_shutdown_signal() -> io::Result<&'static str> {
    let set = shutdown_set()?;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` is a live c_int the call writes to.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        match sig {
            libc::SIGTERM => return Ok("SIGTERM"),
            libc::SIGINT => return Ok("SIGINT"),
            _ => tracing::info!("SIGHUP ignored; use drbdctl adjust to re-read the configuration"),
        }
    }
}

/// Sets up `tracing` for journald: no ANSI colours unless stderr is a
/// terminal, no timestamps when running under systemd (the journal adds them).
/// `RUST_LOG` wins over `default_level`.
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let tty = io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(tty)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
