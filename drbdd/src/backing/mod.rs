//! I/O engines for the backing device: O_DIRECT reads/writes, flush, discard
//! and write-zeroes, executed by io_uring or, as a fallback, by plain
//! positional system calls.
//!
//! Owns: the one O_DIRECT file descriptor of a resource's backing device and
//! the engine that executes [`BackingOp`]s on it (the descriptor is also lent,
//! through [`Backing::file_handle`], to reads a frontend executes on its own
//! io_uring; see the pipeline's direct reads). Must never: validate block
//! requests against the exported device size (the pipeline does that before an
//! op gets here), reorder anything on purpose, or know about metadata, the
//! activity log or peers.
//!
//! Shape (after Firecracker's block device): the request pipeline builds a
//! [`BackingOp`] and hands it to [`Backing::submit`] together with a callback;
//! [`IoEngine`] is an enum of the io_uring engine ([`uring::UringEngine`]) and
//! the synchronous one ([`sync::SyncEngine`]). Callbacks run on an engine
//! thread, never inside `submit`, so a caller may hold its own locks while
//! submitting as long as its callback does not wait for them forever.
//!
//! Ordering: engines do not order ops among themselves. FLUSH is an
//! `fdatasync`, which covers every write that completed before it was
//! submitted; that is exactly the block-layer FLUSH contract. Overlapping
//! writes are serialised by the pipeline, not here.
//!
//! DISCARD and WRITE_ZEROES both leave zeroes (see `zero_range`): a replica
//! must read back what its peer reads back, and a bare discard does not
//! promise that. This must never issue `BLKDISCARD`, which a device may
//! ignore.

pub mod sync;
pub mod uring;

use drbdd_blockio::AlignedBuf;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One operation on the backing device. Offsets/lengths are in bytes and
/// already validated (aligned, in range) by the caller.
#[derive(Debug)]
pub enum BackingOp {
    /// Fill `buf` from `offset_bytes`.
    Read { offset_bytes: u64, buf: AlignedBuf },
    /// Write `buf` at `offset_bytes`; `fua`: durable before completion.
    Write {
        offset_bytes: u64,
        buf: AlignedBuf,
        fua: bool,
    },
    /// `fdatasync` of the backing device.
    Flush,
    /// Deallocate a range where the device can; it reads back as zeroes
    /// afterwards on every engine and device kind, so that replicas which
    /// both executed it hold the same bytes (a plain discard may leave old
    /// data on one node and zeroes on the other).
    Discard { offset_bytes: u64, len_bytes: u64 },
    /// Make a range read back as zeroes (keeping its allocation where the
    /// device can).
    WriteZeroes { offset_bytes: u64, len_bytes: u64 },
}

impl BackingOp {
    /// Whether this op changes the device contents (used by fault injection).
    pub fn modifies(&self) -> bool {
        !matches!(self, BackingOp::Read { .. } | BackingOp::Flush)
    }
}

/// Called exactly once when an op finishes, on an engine thread. Reads get
/// their filled buffer back, writes their data buffer, other ops an empty one.
pub type IoDone = Box<dyn FnOnce(io::Result<AlignedBuf>) + Send>;

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring, falling back to [`EngineKind::Sync`] (with a printed reason) if setup fails.
    UringOrSync,
    /// Only the synchronous engine (tests, kernels without io_uring).
    Sync,
    /// io_uring whose completions the opening thread reaps itself
    /// ([`Backing::completion_fd`], [`Backing::reap`]); falls back to
    /// [`EngineKind::Sync`] like `UringOrSync`. Only the opening thread may
    /// submit, reap and shut down.
    PolledUringOrSync,
}

/// The opened backing device, shared by the engine threads.
#[derive(Debug)]
pub struct BackingFile {
    file: File,
    path: PathBuf,
    is_block_device: bool,
    size_bytes: u64,
    /// Whether zeroing a range costs no data transfer (see [`Self::zeroes_cheaply`]).
    zeroes_cheaply: bool,
}

impl BackingFile {
    /// Opens `path` read-write with `O_DIRECT`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open backing device {} with O_DIRECT: {e}; \
                         check the path and that its file system supports direct I/O (tmpfs does not)",
                        path.display()
                    ),
                )
            })?;
        let meta = file.metadata()?;
        let is_block_device = meta.file_type().is_block_device();
        let size_bytes = crate::metadev::device_size_bytes(&file)?;
        let zeroes_cheaply = !is_block_device || block_device_zeroes_cheaply(meta.rdev());
        Ok(BackingFile {
            file,
            path: path.to_path_buf(),
            is_block_device,
            size_bytes,
            zeroes_cheaply,
        })
    }

    /// Whether DISCARD/WRITE_ZEROES are cheap here: a file (hole punching or
    /// unwritten extents) or a block device with a WRITE_ZEROES command.
    /// Elsewhere zeroing writes real zero blocks, so the frontends do not
    /// advertise discard (mkfs would otherwise zero the whole device).
    pub fn zeroes_cheaply(&self) -> bool {
        self.zeroes_cheaply
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// A range ioctl (`BLKZEROOUT`) on a block device (blocking).
    pub(crate) fn blk_range_ioctl(
        &self,
        request: libc::c_ulong,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> io::Result<()> {
        let range: [u64; 2] = [offset_bytes, len_bytes];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) through the
        // pointer, which points at a live array on our stack; the fd stays open.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for BackingFile {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        self.file.as_raw_fd()
    }
}

/// Reads `queue/write_zeroes_max_bytes` of block device `rdev` from sysfs; an
/// unreadable value counts as "no" (discard is then not advertised, which is
/// always safe).
fn block_device_zeroes_cheaply(rdev: u64) -> bool {
    let path = format!(
        "/sys/dev/block/{}:{}/queue/write_zeroes_max_bytes",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// `_IO(0x12, 127)`: zero a byte range of a block device.
pub(crate) const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Test hook: makes ops fail with EIO without touching the device, or parks
/// content-changing ops until released (to hold writes "in flight").
#[derive(Default)]
pub struct FaultInjection {
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    hold_writes: AtomicBool,
    parked: Mutex<Vec<(BackingOp, IoDone)>>,
}

impl std::fmt::Debug for FaultInjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjection")
            .field("fail_reads", &self.fail_reads)
            .field("fail_writes", &self.fail_writes)
            .field("hold_writes", &self.hold_writes)
            .finish()
    }
}

impl FaultInjection {
    /// Fail every read (`true`) or stop failing them (`false`).
    pub fn set_fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Fail every write, discard and write-zeroes (`true`) or stop (`false`).
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Park every write, discard and write-zeroes (`true`) until
    /// [`Backing::release_held`]; `false` stops parking new ones.
    pub fn set_hold_writes(&self, hold: bool) {
        self.hold_writes.store(hold, Ordering::SeqCst);
    }

    /// Ops parked by `set_hold_writes`.
    pub fn held_count(&self) -> usize {
        self.parked.lock().expect("parked ops lock").len()
    }

    /// Whether reads are set to fail (direct reads then take the engine path).
    pub fn fails_reads(&self) -> bool {
        self.fail_reads.load(Ordering::SeqCst)
    }

    /// Whether writes are set to fail or be held (direct writes then take
    /// the engine path).
    pub fn acts_on_writes(&self) -> bool {
        self.fail_writes.load(Ordering::SeqCst) || self.hold_writes.load(Ordering::SeqCst)
    }

    fn should_fail(&self, op: &BackingOp) -> bool {
        match op {
            BackingOp::Read { .. } => self.fail_reads.load(Ordering::SeqCst),
            BackingOp::Flush => false,
            _ => self.fail_writes.load(Ordering::SeqCst),
        }
    }
}

/// The engine that executes ops.
#[derive(Debug)]
pub enum IoEngine {
    Uring(uring::UringEngine),
    Sync(sync::SyncEngine),
}

/// A backing device plus the engine running its I/O.
#[derive(Debug)]
pub struct Backing {
    file: Arc<BackingFile>,
    engine: IoEngine,
    faults: Arc<FaultInjection>,
}

impl Backing {
    /// Opens `path` with O_DIRECT and starts an engine allowing `queue_depth`
    /// ops in flight. io_uring setup failure falls back to the synchronous
    /// engine and prints why.
    pub fn open(path: &Path, kind: EngineKind, queue_depth: u32) -> io::Result<Self> {
        let file = Arc::new(BackingFile::open(path)?);
        let engine = match kind {
            EngineKind::Sync => {
                IoEngine::Sync(sync::SyncEngine::start(Arc::clone(&file), queue_depth)?)
            }
            EngineKind::UringOrSync | EngineKind::PolledUringOrSync => {
                let ring = if kind == EngineKind::PolledUringOrSync {
                    uring::UringEngine::start_polled(Arc::clone(&file), queue_depth)
                } else {
                    uring::UringEngine::start(Arc::clone(&file), queue_depth)
                };
                match ring {
                    Ok(e) => IoEngine::Uring(e),
                    Err(e) => {
                        tracing::warn!(
                            "io_uring setup failed for {} ({e}); using the synchronous I/O engine",
                            path.display()
                        );
                        eprintln!(
                        "drbdd: io_uring setup failed for {} ({e}); using the synchronous I/O engine",
                        path.display()
                    );
                        IoEngine::Sync(sync::SyncEngine::start(Arc::clone(&file), queue_depth)?)
                    }
                }
            }
        };
        Ok(Backing {
            file,
            engine,
            faults: Arc::new(FaultInjection::default()),
        })
    }

    /// Executes `op`; `done` runs once on an engine thread.
    pub fn submit(&self, op: BackingOp, done: IoDone) {
        if self.faults.should_fail(&op) {
            // Complete on another thread, as the real engines do, so callers
            // never see their callback run inside submit.
            std::thread::spawn(move || done(Err(io::Error::from_raw_os_error(libc::EIO))));
            return;
        }
        if op.modifies() && self.faults.hold_writes.load(Ordering::SeqCst) {
            self.faults
                .parked
                .lock()
                .expect("parked ops lock")
                .push((op, done));
            return;
        }
        self.submit_to_engine(op, done);
    }

    /// Submits ops parked by [`FaultInjection::set_hold_writes`], oldest first.
    pub fn release_held(&self) {
        let parked: Vec<(BackingOp, IoDone)> =
            std::mem::take(&mut *self.faults.parked.lock().expect("parked ops lock"));
        for (op, done) in parked {
            self.submit_to_engine(op, done);
        }
    }

    fn submit_to_engine(&self, op: BackingOp, done: IoDone) {
        match &self.engine {
            IoEngine::Uring(e) => e.submit(op, done),
            IoEngine::Sync(e) => e.submit(op, done),
        }
    }

    /// A polled engine's fd, readable when [`Backing::reap`] has work;
    /// None when completions run on engine threads.
    pub fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.engine {
            IoEngine::Uring(e) => e.completion_fd(),
            IoEngine::Sync(_) => None,
        }
    }

    /// Polled engine: submits the ops pushed since the last call in one
    /// system call (call before sleeping); nothing for other engines.
    pub fn submit_pushed(&self) {
        if let IoEngine::Uring(e) = &self.engine {
            e.submit_pushed();
        }
    }

    /// Polled engine: ops pushed and not yet submitted (see
    /// [`Backing::submit_pushed`]); false for other engines.
    pub fn has_unsubmitted(&self) -> bool {
        match &self.engine {
            IoEngine::Uring(e) => e.has_unsubmitted(),
            IoEngine::Sync(_) => false,
        }
    }

    /// Runs the completions of a polled engine on this thread (see
    /// [`EngineKind::PolledUringOrSync`]); nothing for other engines.
    pub fn reap(&self) {
        if let IoEngine::Uring(e) = &self.engine {
            e.reap();
        }
    }

    /// Which engine runs: "io_uring" or "sync".
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            IoEngine::Uring(_) => "io_uring",
            IoEngine::Sync(_) => "sync",
        }
    }

    pub fn file(&self) -> &BackingFile {
        &self.file
    }

    /// The shared handle of the backing file (keeps the fd open for readers
    /// outside the engine, see the pipeline's direct reads).
    pub fn file_handle(&self) -> &Arc<BackingFile> {
        &self.file
    }

    /// The fault-injection hook (tests).
    pub fn faults(&self) -> &Arc<FaultInjection> {
        &self.faults
    }

    /// Waits for queued ops to finish and stops the engine threads.
    pub fn shutdown(&self) {
        match &self.engine {
            IoEngine::Uring(e) => e.shutdown(),
            IoEngine::Sync(e) => e.shutdown(),
        }
    }
}

/// Executes one op with blocking system calls (the sync engine, and the
/// io_uring engine for block-device discard/zero-out, which io_uring lacks).
pub(crate) fn execute_blocking(file: &BackingFile, op: BackingOp) -> io::Result<AlignedBuf> {
    use std::os::unix::fs::FileExt;
    match op {
        BackingOp::Read {
            offset_bytes,
            mut buf,
        } => {
            file.file.read_exact_at(buf.as_mut_slice(), offset_bytes)?;
            Ok(buf)
        }
        BackingOp::Write {
            offset_bytes,
            buf,
            fua,
        } => {
            file.file.write_all_at(buf.as_slice(), offset_bytes)?;
            if fua {
                file.file.sync_data()?;
            }
            Ok(buf)
        }
        BackingOp::Flush => {
            file.file.sync_data()?;
            Ok(AlignedBuf::empty())
        }
        BackingOp::Discard {
            offset_bytes,
            len_bytes,
        } => {
            zero_range(file, offset_bytes, len_bytes, true)?;
            Ok(AlignedBuf::empty())
        }
        BackingOp::WriteZeroes {
            offset_bytes,
            len_bytes,
        } => {
            zero_range(file, offset_bytes, len_bytes, false)?;
            Ok(AlignedBuf::empty())
        }
    }
}

/// Makes a range read back as zeroes, the cheapest way the device offers.
/// `unmap`: prefer deallocating (discard) over keeping the blocks allocated.
///
/// Block devices: `fallocate(PUNCH_HOLE)` is the kernel's zero-out that may
/// unmap but never falls back to writing (a discard without guaranteed
/// zeroes is never issued: BLKDISCARD on a device that ignores it would
/// leave old data here and zeroes on a peer); `BLKZEROOUT` writes zeroes
/// where nothing cheaper exists. Files: punch a hole or zero the range,
/// whichever the file system supports, else write zero blocks.
fn zero_range(
    file: &BackingFile,
    offset_bytes: u64,
    len_bytes: u64,
    unmap: bool,
) -> io::Result<()> {
    let unsupported = |e: &io::Error| e.raw_os_error() == Some(libc::EOPNOTSUPP);
    if file.is_block_device {
        if unmap {
            match fallocate(file, PUNCH_HOLE_MODE, offset_bytes, len_bytes) {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        return file.blk_range_ioctl(BLKZEROOUT, offset_bytes, len_bytes);
    }
    let modes = if unmap {
        [PUNCH_HOLE_MODE, ZERO_RANGE_MODE]
    } else {
        [ZERO_RANGE_MODE, PUNCH_HOLE_MODE]
    };
    for mode in modes {
        match fallocate(file, mode, offset_bytes, len_bytes) {
            Err(e) if unsupported(&e) => {}
            other => return other,
        }
    }
    write_zero_blocks(file, offset_bytes, len_bytes)
}

/// The last resort of [`zero_range`]: writes zeroes 1 MiB at a time.
fn write_zero_blocks(file: &BackingFile, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    // Both fit: at most CHUNK.
    let chunk_of = |left: u64| usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
    let zeroes = AlignedBuf::zeroed(chunk_of(len_bytes));
    let mut done = 0;
    while done < len_bytes {
        let n = chunk_of(len_bytes - done);
        file.file
            .write_all_at(&zeroes.as_slice()[..n], offset_bytes + done)?;
        done += n as u64;
    }
    Ok(())
}

pub(crate) const PUNCH_HOLE_MODE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
pub(crate) const ZERO_RANGE_MODE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

fn fallocate(file: &BackingFile, mode: i32, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
    let bad = || io::Error::from_raw_os_error(libc::EINVAL);
    let off = libc::off_t::try_from(offset_bytes).map_err(|_| bad())?;
    let len = libc::off_t::try_from(len_bytes).map_err(|_| bad())?;
    // SAFETY: fallocate takes plain integers and an fd that stays open for the call.
    let rc = unsafe { libc::fallocate(file.file.as_raw_fd(), mode, off, len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
