//! Serves a file or block device as `/dev/ublkb<minor>` through the drbdd ublk
//! frontend, with a simple O_DIRECT, thread-pool `BlockTarget` (completions run
//! on pool threads, as in the daemon); reads are offered as direct reads (the
//! queue thread reads the file on its own io_uring) unless `--no-direct-reads`,
//! writes as direct writes unless `--no-direct-writes` (with `--write-delay-ms`
//! their completion then comes from another thread, as a peer's ack would).
//! Used by the VM test (tests/vm/run.sh)
//! until the daemon wires the ublk frontend in.
//!
//! Runs in the foreground; SIGTERM/SIGINT stop and delete the device. After a
//! crash (`kill -9`), start again with `--recover` to re-attach.

use anyhow::{Context, Result};
use clap::Parser;
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, BlockTarget, Completion,
    DirectRead, DirectWrite, FdHandle, Geometry,
};
use drbdd_ublk::{UblkConfig, UblkDevice};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "serve a file or block device as /dev/ublkb<minor>")]
struct Args {
    /// Device id: the device becomes /dev/ublkb<minor>.
    #[arg(long, default_value_t = 0)]
    minor: u32,
    /// Backing file or block device (opened with O_DIRECT).
    #[arg(long, required_unless_present = "delete_orphans")]
    file: Option<PathBuf>,
    /// Instead of serving: delete every drbdd-tagged ublk device and exit.
    #[arg(long)]
    delete_orphans: bool,
    /// Hardware queues (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    queues: u16,
    #[arg(long, default_value_t = drbdd_ublk::DEFAULT_DEPTH)]
    depth: u16,
    #[arg(long, default_value_t = drbdd_ublk::DEFAULT_MAX_IO_BYTES)]
    max_io_bytes: u32,
    /// Re-attach to an existing /dev/ublkb<minor> with our owner tag.
    #[arg(long)]
    recover: bool,
    /// Resource name for the owner tag (drbdd:<resource>).
    #[arg(long, default_value = "ublk-serve")]
    resource: String,
    /// Worker threads executing requests.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Delay every write by this much (simulates waiting for a peer's ack).
    #[arg(long, default_value_t = 0)]
    write_delay_ms: u64,
    /// Send reads through the worker pool too (no direct reads).
    #[arg(long)]
    no_direct_reads: bool,
    /// Send writes through the worker pool too (no direct writes).
    #[arg(long)]
    no_direct_writes: bool,
}

type Job = (BlockRequest, AlignedBuf, Completion);

/// An O_DIRECT file executed by a pool of worker threads.
#[derive(Debug)]
struct FileTarget {
    geometry: Geometry,
    jobs: Mutex<Sender<Job>>,
    /// The file direct reads use; `None` with `--no-direct-reads`.
    direct: Option<Arc<File>>,
    /// The file direct writes use; `None` with `--no-direct-writes`.
    direct_writes: Option<Arc<File>>,
    write_delay: Duration,
}

#[derive(Debug)]
struct FileSession {
    geometry: Geometry,
    jobs: Sender<Job>,
    direct: Option<Arc<File>>,
    direct_writes: Option<Arc<File>>,
    write_delay: Duration,
}

impl FileTarget {
    fn open(
        path: &PathBuf,
        workers: usize,
        write_delay: Duration,
        (direct_reads, direct_writes): (bool, bool),
    ) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        let size_bytes = file.seek(SeekFrom::End(0))?;
        let size_bytes = size_bytes - size_bytes % 4096;
        let geometry = Geometry {
            size_bytes,
            logical_block_bytes: drbdd_blockio::LOGICAL_BLOCK_BYTES,
            physical_block_bytes: drbdd_blockio::PHYSICAL_BLOCK_BYTES,
            max_io_bytes: 1 << 20,
            supports_discard: true,
            supports_write_zeroes: true,
            volatile_cache: true,
        };
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let file = Arc::new(file);
        for i in 0..workers.max(1) {
            let (rx, file) = (Arc::clone(&rx), Arc::clone(&file));
            std::thread::Builder::new()
                .name(format!("io-worker-{i}"))
                .spawn(move || worker(&rx, &file, write_delay))?;
        }
        Ok(FileTarget {
            geometry,
            jobs: Mutex::new(tx),
            direct: direct_reads.then(|| Arc::clone(&file)),
            direct_writes: direct_writes.then_some(file),
            write_delay,
        })
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, file: &File, write_delay: Duration) {
    loop {
        let job = rx.lock().map(|r| r.recv());
        let Ok(Ok((req, mut buf, done))) = job else {
            return;
        };
        if req.op == BlockOp::Write && !write_delay.is_zero() {
            std::thread::sleep(write_delay);
        }
        let outcome = execute(file, &req, &mut buf).map_err(|e| {
            eprintln!("ublk-serve: {req:?} failed: {e}");
            BlockError::Io
        });
        done(outcome.map(|()| buf));
    }
}

fn execute(file: &File, req: &BlockRequest, buf: &mut AlignedBuf) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    let (off, len) = (req.offset_bytes, u64::from(req.len_bytes));
    match req.op {
        BlockOp::Read => file.read_exact_at(buf.as_mut_slice(), off),
        BlockOp::Write => {
            file.write_all_at(buf.as_slice(), off)?;
            if req.fua {
                file.sync_data()?;
            }
            Ok(())
        }
        BlockOp::Flush => file.sync_data(),
        // Discard is advisory: a backing store that cannot punch holes keeps the data.
        BlockOp::Discard => {
            let _ = fallocate(
                file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                len,
            );
            Ok(())
        }
        BlockOp::WriteZeroes => {
            if fallocate(
                file,
                FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                off,
                len,
            )
            .is_ok()
            {
                return Ok(());
            }
            let zeroes = AlignedBuf::zeroed(1 << 20);
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(1 << 20);
                let n_usize = usize::try_from(n).unwrap_or(1 << 20);
                file.write_all_at(&zeroes.as_slice()[..n_usize], off + done)?;
                done += n;
            }
            Ok(())
        }
    }
}

impl BlockTarget for FileTarget {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn open(&self, _client: &str, _writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| BlockError::ShuttingDown)?
            .clone();
        Ok(Arc::new(FileSession {
            geometry: self.geometry,
            jobs,
            direct: self.direct.clone(),
            direct_writes: self.direct_writes.clone(),
            write_delay: self.write_delay,
        }))
    }
}

impl BlockSession for FileSession {
    fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
        if let Err(e) = req.validate(self.geometry.size_bytes, self.geometry.max_io_bytes) {
            return done(Err(e));
        }
        if let Err(returned) = self.jobs.send((req, buf, done)) {
            let (_, _, done) = returned.0;
            done(Err(BlockError::ShuttingDown));
        }
    }

    fn direct_read(&self, req: &BlockRequest) -> Option<DirectRead> {
        let file = self.direct.as_ref()?;
        if req.op != BlockOp::Read
            || req
                .validate(self.geometry.size_bytes, self.geometry.max_io_bytes)
                .is_err()
        {
            return None;
        }
        let (fd, len) = (Arc::clone(file) as FdHandle, req.len_bytes);
        Some(DirectRead::new(
            fd,
            req.offset_bytes,
            Box::new(move |outcome| match outcome {
                Ok(n) if n == len => Ok(()),
                Err(libc::ECANCELED) => Err(BlockError::ShuttingDown),
                other => {
                    eprintln!("ublk-serve: direct read of {len} bytes failed: {other:?}");
                    Err(BlockError::Io)
                }
            }),
        ))
    }

    fn direct_write(&self, req: &BlockRequest, data: &Arc<AlignedBuf>) -> Option<DirectWrite> {
        let file = self.direct_writes.as_ref()?;
        let len_ok = usize::try_from(req.len_bytes).is_ok_and(|l| l == data.len());
        if req.op != BlockOp::Write
            || !len_ok
            || req
                .validate(self.geometry.size_bytes, self.geometry.max_io_bytes)
                .is_err()
        {
            return None;
        }
        let (fd, len, delay) = (
            Arc::clone(file) as FdHandle,
            req.len_bytes,
            self.write_delay,
        );
        Some(DirectWrite::new(
            fd,
            req.offset_bytes,
            req.fua,
            Box::new(move |outcome, done| {
                let result = match outcome {
                    Ok(n) if n == len => Ok(AlignedBuf::empty()),
                    Err(libc::ECANCELED) => Err(BlockError::ShuttingDown),
                    other => {
                        eprintln!("ublk-serve: direct write of {len} bytes failed: {other:?}");
                        Err(BlockError::Io)
                    }
                };
                if delay.is_zero() {
                    return done(result);
                }
                // Like a peer's ack: the completion comes later, elsewhere.
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    done(result);
                });
            }),
        ))
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned later),
/// so `wait_for_signal` can take them synchronously.
fn block_term_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset fully initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t for all three calls,
    // and a null old-set pointer is allowed by pthread_sigmask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` points to an initialised sigset_t and `sig` to a writable c_int.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.delete_orphans {
        let deleted = drbdd_ublk::delete_orphans(&[])?;
        println!("ublk-serve: deleted orphaned devices {deleted:?}");
        return Ok(());
    }
    let file = args.file.clone().context("--file is required")?;
    // Before any thread exists: the mount namespace only moves the calling thread.
    drbdd_ublk::enter_private_mount_namespace()?;
    let signals = block_term_signals();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let target = FileTarget::open(
        &file,
        args.workers,
        Duration::from_millis(args.write_delay_ms),
        (!args.no_direct_reads, !args.no_direct_writes),
    )?;
    let config = UblkConfig {
        queues: args.queues,
        depth: args.depth,
        max_io_bytes: args.max_io_bytes,
        recover: args.recover,
        ..UblkConfig::new(args.minor, &args.resource)
    };
    let handle = UblkDevice::start(config, Arc::new(target))?;
    let p = handle.params();
    println!(
        "ublk-serve: {} live (recovered: {}, size {} bytes, max_io {} bytes, features {})",
        handle.bdev_path().display(),
        handle.recovered(),
        p.size_bytes,
        p.max_io_bytes,
        handle.features()
    );
    std::io::stdout().flush()?;
    let sig = wait_for_signal(&signals);
    println!(
        "ublk-serve: signal {sig}, stopping {}",
        handle.bdev_path().display()
    );
    handle.stop()?;
    println!("ublk-serve: stopped");
    Ok(())
}
