//! The block request vocabulary shared by every frontend (NBD, ublk) and the
//! per-resource request pipeline in the daemon.
//!
//! Owns: the request/op types, the errno-mapped error type, the aligned buffer
//! that O_DIRECT needs, and the `BlockTarget`/`BlockSession` traits a frontend
//! talks to. Must never: know about replication, metadata or a transport.
//! A frontend parses its wire format into a [`BlockRequest`], submits it to a
//! [`BlockSession`], and replies when the completion callback runs (on any thread).
//! A frontend that owns an io_uring may instead ask for a [`DirectRead`] and
//! read the backing device itself (no thread hop), reporting back through it;
//! likewise a [`DirectWrite`] lets it write the local copy of a write itself.

mod buf;
pub mod mem;

pub use buf::AlignedBuf;

use std::fmt::Debug;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Logical block size every drbdd device reports, in bytes.
pub const LOGICAL_BLOCK_BYTES: u32 = 512;
/// Physical block size every drbdd device reports, in bytes.
pub const PHYSICAL_BLOCK_BYTES: u32 = 4096;

/// What a request asks the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockOp {
    Read,
    Write,
    /// Make every write completed before this flush was submitted durable.
    Flush,
    /// The range may be deallocated; later reads return zeroes or old data.
    Discard,
    /// The range must read back as zeroes afterwards.
    WriteZeroes,
}

/// One request from a frontend. Offsets and lengths are in bytes and must be
/// multiples of [`LOGICAL_BLOCK_BYTES`] (flush: both zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRequest {
    pub op: BlockOp,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    /// Force unit access: complete only once the data is on stable storage.
    pub fua: bool,
}

impl BlockRequest {
    /// Checks alignment and bounds against a device of `size_bytes`.
    /// Never truncates or wraps: an out-of-range request is an error.
    pub fn validate(&self, size_bytes: u64, max_io_bytes: u32) -> Result<(), BlockError> {
        if self.op == BlockOp::Flush {
            return Ok(());
        }
        let lb = u64::from(LOGICAL_BLOCK_BYTES);
        if !self.offset_bytes.is_multiple_of(lb) || !u64::from(self.len_bytes).is_multiple_of(lb) {
            return Err(BlockError::InvalidArgument(
                "offset or length not a multiple of 512 bytes",
            ));
        }
        if self.len_bytes == 0 {
            return Err(BlockError::InvalidArgument("zero-length request"));
        }
        let io_limited = matches!(self.op, BlockOp::Read | BlockOp::Write);
        if io_limited && self.len_bytes > max_io_bytes {
            return Err(BlockError::InvalidArgument(
                "request larger than the maximum I/O size",
            ));
        }
        match self.offset_bytes.checked_add(u64::from(self.len_bytes)) {
            Some(end) if end <= size_bytes => Ok(()),
            _ => Err(BlockError::OutOfRange),
        }
    }
}

/// Why a request failed; maps to the errno a frontend reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("invalid request: {0}")]
    InvalidArgument(&'static str),
    #[error("request beyond the end of the device")]
    OutOfRange,
    #[error("I/O error on the backing device")]
    Io,
    #[error("no space left on the backing device")]
    NoSpace,
    #[error("device is not writable here: {0}")]
    ReadOnly(String),
    #[error("operation not supported")]
    NotSupported,
    #[error("device is shutting down")]
    ShuttingDown,
}

impl BlockError {
    /// The positive errno a frontend completes a failed request with.
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::InvalidArgument(_) | BlockError::OutOfRange => libc::EINVAL,
            BlockError::Io => libc::EIO,
            BlockError::NoSpace => libc::ENOSPC,
            BlockError::ReadOnly(_) => libc::EROFS,
            BlockError::NotSupported => libc::EOPNOTSUPP,
            BlockError::ShuttingDown => libc::ESHUTDOWN,
        }
    }
}

/// Static properties of an exported device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub size_bytes: u64,
    pub logical_block_bytes: u32,
    pub physical_block_bytes: u32,
    pub max_io_bytes: u32,
    pub supports_discard: bool,
    pub supports_write_zeroes: bool,
    /// Whether the device has a volatile cache, i.e. needs FLUSH for durability.
    pub volatile_cache: bool,
}

/// Runs exactly once when a request finishes. Reads get their filled buffer
/// back; writes get their buffer back so it can be reused.
pub type Completion = Box<dyn FnOnce(Result<AlignedBuf, BlockError>) + Send>;

/// A device a frontend can export.
pub trait BlockTarget: Send + Sync + Debug {
    fn geometry(&self) -> Geometry;
    /// Opens the device for `client` (a human-readable name such as
    /// "nbd unix:/run/drbdd/r0.nbd #3"). Refused with `ReadOnly` when this node
    /// may not take I/O (e.g. it is Secondary). The open is released when the
    /// returned session is dropped; while any session is open the device is "in use".
    fn open(&self, client: &str, writable: bool) -> Result<Arc<dyn BlockSession>, BlockError>;
}

/// An open handle on a [`BlockTarget`].
pub trait BlockSession: Send + Sync + Debug {
    /// Submits one request. `buf` holds the data of a write, or is sized
    /// `len_bytes` for a read; it is empty for flush/discard/write-zeroes.
    /// `done` runs exactly once, possibly on another thread, possibly before
    /// `submit` returns.
    fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion);

    /// Offers to let the frontend serve the read `req` itself from the local
    /// backing device: `Some` when the target admitted it (the request then
    /// counts as in flight in the target until [`DirectRead::finish`]), `None`
    /// when the frontend must [`submit`](Self::submit) it as usual (not a
    /// read, no local disk, refused, or the target has no direct path; a
    /// refusal is then reported by `submit`).
    ///
    /// Contract for the frontend, on receiving `Some(dr)`:
    /// * read `req.len_bytes` bytes from [`DirectRead::fd`] at
    ///   [`DirectRead::offset_bytes`] into its buffer, looping over short reads;
    ///   keep `dr` (it keeps the fd open) until the last read has completed;
    /// * then call [`DirectRead::finish`] once, with the bytes read or the
    ///   errno of the first failure, and complete the request with what it
    ///   returns: the target applies its error policy exactly as for a
    ///   submitted read (e.g. detaching a failed disk) and hands back the
    ///   error to report;
    /// * dropping `dr` without finishing (the frontend is torn down) tells the
    ///   target the request was abandoned (`ECANCELED`, not a disk error); the
    ///   frontend must then never touch the request's buffer again unless the
    ///   read had completed.
    ///
    /// The default: no direct path.
    fn direct_read(&self, req: &BlockRequest) -> Option<DirectRead> {
        let _ = req;
        None
    }

    /// Offers to let the frontend write the local copy of the write `req`
    /// (`BlockOp::Write` only) itself, `data` being its payload: `Some` when
    /// the target took the write through everything that precedes the local
    /// disk write (ordering, activity log, replication) without having to
    /// wait for anything; `None` when the frontend must
    /// [`submit`](Self::submit) it as usual. `data` is shared, read-only:
    /// the target may keep clones (the sends to the peers read it in place)
    /// past the write's completion; the frontend reuses the buffer only once
    /// it holds the last reference (`Arc::try_unwrap`), else it takes a
    /// fresh one. On `None` the target kept no clone.
    ///
    /// Contract for the frontend, on receiving `Some(dw)`:
    /// * write `data` to [`DirectWrite::fd`] at [`DirectWrite::offset_bytes`]
    ///   (with `RWF_DSYNC` when [`DirectWrite::dsync`]), looping over short
    ///   writes; keep `dw` (it keeps the fd open) and `data` untouched until
    ///   the last write has completed;
    /// * then call [`DirectWrite::finish`] once with the bytes written or the
    ///   errno of the first failure, and the request's completion: that runs
    ///   exactly once when every leg of the write (local and peers) is done,
    ///   possibly inside `finish`, possibly later on another thread, with an
    ///   empty buffer on success (the target never owned the frontend's);
    /// * dropping `dw` without finishing (the frontend is torn down) tells
    ///   the target the outcome of the local write is unknown (`ECANCELED`):
    ///   the frontend must then never reuse `data`'s memory (leak it) unless
    ///   the write had completed.
    ///
    /// The default: no direct path.
    fn direct_write(&self, req: &BlockRequest, data: &Arc<AlignedBuf>) -> Option<DirectWrite> {
        let _ = (req, data);
        None
    }
}

/// Keeps the file a [`DirectRead`] reads from open.
pub type FdHandle = Arc<dyn AsRawFd + Send + Sync>;

/// Runs once with the outcome of a direct read: the bytes read, or a
/// positive errno. Returns the result to complete the request with.
pub type DirectFinish = Box<dyn FnOnce(Result<u32, i32>) -> Result<(), BlockError> + Send>;

/// A target that retires its direct reads itself, so that a read costs no
/// allocation (the frontend's queue thread runs this for every read).
pub trait DirectReadRetire: Send + Sync {
    /// The descriptor direct reads go to; open as long as `self` lives.
    fn read_fd(&self) -> RawFd;

    /// Retires the direct read `req` (bytes read, or a positive errno) and
    /// returns what to complete the request with; see [`DirectFinish`].
    fn retire_read(&self, req: &BlockRequest, outcome: Result<u32, i32>) -> Result<(), BlockError>;
}

/// Counts finished direct reads for a wrapper of the target (statistics),
/// without a closure per read; see [`DirectRead::tallied`].
pub trait DirectReadTally: Send + Sync {
    /// A direct read finished: `outcome` as the frontend reported it,
    /// `result` what the request completes with.
    fn read_finished(&self, outcome: Result<u32, i32>, result: &Result<(), BlockError>);
}

/// How a [`DirectRead`] is retired, and what keeps its fd open.
enum ReadFinish {
    Boxed(FdHandle, DirectFinish),
    Target(Arc<dyn DirectReadRetire>, BlockRequest),
}

/// A read the frontend executes itself; see [`BlockSession::direct_read`].
/// Its finish callback runs exactly once: through [`DirectRead::finish`], or
/// with `Err(ECANCELED)` when it is dropped unfinished.
pub struct DirectRead {
    fd: RawFd,
    offset_bytes: u64,
    finish: Option<ReadFinish>,
    tally: Option<Arc<dyn DirectReadTally>>,
}

impl Debug for DirectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectRead")
            .field("fd", &self.fd)
            .field("offset_bytes", &self.offset_bytes)
            .field("finished", &self.finish.is_none())
            .finish()
    }
}

impl DirectRead {
    /// A direct read of the file behind `fd` (opened with O_DIRECT by the
    /// target) at `offset_bytes`; `finish` retires it in the target.
    pub fn new(fd: FdHandle, offset_bytes: u64, finish: DirectFinish) -> Self {
        DirectRead {
            fd: fd.as_raw_fd(),
            offset_bytes,
            finish: Some(ReadFinish::Boxed(fd, finish)),
            tally: None,
        }
    }

    /// The direct read `req` of `target`'s fd at `offset_bytes`, retired by
    /// [`DirectReadRetire::retire_read`] (no allocation).
    pub fn retired_by(
        target: Arc<dyn DirectReadRetire>,
        req: BlockRequest,
        offset_bytes: u64,
    ) -> Self {
        DirectRead {
            fd: target.read_fd(),
            offset_bytes,
            finish: Some(ReadFinish::Target(target, req)),
            tally: None,
        }
    }

    /// The same read, also reported to `tally` when it finishes (after the
    /// target retired it; a dropped read too). One tally per read.
    pub fn tallied(mut self, tally: Arc<dyn DirectReadTally>) -> Self {
        assert!(self.tally.is_none(), "a direct read has one tally");
        self.tally = Some(tally);
        self
    }

    /// The descriptor to read from; open as long as `self` lives.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Where the request's data starts in that file.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Reports the outcome (bytes read, or a positive errno) and returns
    /// what to complete the request with.
    pub fn finish(mut self, outcome: Result<u32, i32>) -> Result<(), BlockError> {
        self.finish_once(outcome)
    }

    fn finish_once(&mut self, outcome: Result<u32, i32>) -> Result<(), BlockError> {
        let result = match self.finish.take().expect("a direct read finishes once") {
            ReadFinish::Boxed(_fd, finish) => finish(outcome),
            ReadFinish::Target(target, req) => target.retire_read(&req, outcome),
        };
        if let Some(tally) = self.tally.take() {
            tally.read_finished(outcome, &result);
        }
        result
    }
}

impl Drop for DirectRead {
    fn drop(&mut self) {
        if self.finish.is_some() {
            let _ = self.finish_once(Err(libc::ECANCELED));
        }
    }
}

/// Runs once with the outcome of a direct write (bytes written, or a
/// positive errno) and the request's completion; see
/// [`BlockSession::direct_write`].
pub type DirectWriteFinish = Box<dyn FnOnce(Result<u32, i32>, Completion) + Send>;

/// The local disk write of a write request, executed by the frontend; see
/// [`BlockSession::direct_write`]. Its finish callback runs exactly once:
/// through [`DirectWrite::finish`], or with `Err(ECANCELED)` and a completion
/// that does nothing when it is dropped unfinished.
pub struct DirectWrite {
    fd: FdHandle,
    offset_bytes: u64,
    dsync: bool,
    finish: Option<DirectWriteFinish>,
}

impl Debug for DirectWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWrite")
            .field("fd", &self.fd.as_raw_fd())
            .field("offset_bytes", &self.offset_bytes)
            .field("dsync", &self.dsync)
            .field("finished", &self.finish.is_none())
            .finish()
    }
}

impl DirectWrite {
    /// A direct write to the file behind `fd` (opened with O_DIRECT by the
    /// target) at `offset_bytes`; `dsync`: durable before it completes (FUA);
    /// `finish` retires it in the target.
    pub fn new(fd: FdHandle, offset_bytes: u64, dsync: bool, finish: DirectWriteFinish) -> Self {
        DirectWrite {
            fd,
            offset_bytes,
            dsync,
            finish: Some(finish),
        }
    }

    /// The descriptor to write to; open as long as `self` lives.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The handle that keeps [`DirectWrite::fd`] open (for wrappers).
    pub fn fd_handle(&self) -> &FdHandle {
        &self.fd
    }

    /// Where the request's data goes in that file.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Whether the write must be durable when it completes (`RWF_DSYNC`).
    pub fn dsync(&self) -> bool {
        self.dsync
    }

    /// Reports the outcome (bytes written, or a positive errno); `done`
    /// completes the request once all of its legs are done.
    pub fn finish(mut self, outcome: Result<u32, i32>, done: Completion) {
        let finish = self.finish.take().expect("a direct write finishes once");
        finish(outcome, done);
    }
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish(Err(libc::ECANCELED), Box::new(|_| {}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording(log: &Arc<Mutex<Vec<Result<u32, i32>>>>) -> DirectRead {
        let log = Arc::clone(log);
        let fd: FdHandle = Arc::new(std::io::stdin());
        DirectRead::new(
            fd,
            4096,
            Box::new(move |outcome| {
                log.lock().unwrap().push(outcome);
                outcome.map(|_| ()).map_err(|_| BlockError::Io)
            }),
        )
    }

    #[test]
    fn a_direct_read_finishes_exactly_once_and_a_dropped_one_is_cancelled() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let dr = recording(&log);
        assert_eq!(dr.offset_bytes(), 4096);
        assert_eq!(dr.finish(Ok(512)), Ok(()));
        drop(recording(&log));
        assert_eq!(*log.lock().unwrap(), vec![Ok(512), Err(libc::ECANCELED)]);
    }

    /// A target retiring its reads itself, and a tally: both record.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl DirectReadRetire for Recorder {
        fn read_fd(&self) -> RawFd {
            0
        }

        fn retire_read(
            &self,
            req: &BlockRequest,
            outcome: Result<u32, i32>,
        ) -> Result<(), BlockError> {
            let line = format!("retire {} {outcome:?}", req.len_bytes);
            self.0.lock().unwrap().push(line);
            outcome.map(|_| ()).map_err(|_| BlockError::Io)
        }
    }

    impl DirectReadTally for Recorder {
        fn read_finished(&self, outcome: Result<u32, i32>, result: &Result<(), BlockError>) {
            let line = format!("tally {outcome:?} {}", result.is_ok());
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn a_target_retired_read_is_retired_then_tallied_once_even_when_dropped() {
        let rec = Arc::new(Recorder::default());
        let req = BlockRequest {
            op: BlockOp::Read,
            offset_bytes: 8192,
            len_bytes: 4096,
            fua: false,
        };
        let retire: Arc<dyn DirectReadRetire> = Arc::clone(&rec) as Arc<dyn DirectReadRetire>;
        let tally: Arc<dyn DirectReadTally> = Arc::clone(&rec) as Arc<dyn DirectReadTally>;
        let dr = DirectRead::retired_by(Arc::clone(&retire), req, 8192).tallied(Arc::clone(&tally));
        assert_eq!((dr.fd(), dr.offset_bytes()), (0, 8192));
        assert_eq!(dr.finish(Ok(4096)), Ok(()));
        drop(DirectRead::retired_by(retire, req, 8192).tallied(tally));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                "retire 4096 Ok(4096)",
                "tally Ok(4096) true",
                "retire 4096 Err(125)",
                "tally Err(125) false",
            ]
        );
    }

    #[test]
    fn sessions_have_no_direct_path_unless_they_offer_one() {
        let target = mem::MemTarget::new(1 << 20);
        let s = target.open("t", true).unwrap();
        let read = BlockRequest {
            op: BlockOp::Read,
            offset_bytes: 0,
            len_bytes: 512,
            fua: false,
        };
        assert!(s.direct_read(&read).is_none());
        let write = BlockRequest {
            op: BlockOp::Write,
            ..read
        };
        assert!(s
            .direct_write(&write, &Arc::new(AlignedBuf::zeroed(512)))
            .is_none());
    }

    #[test]
    fn a_dropped_direct_write_is_finished_as_cancelled() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        let fd: FdHandle = Arc::new(std::io::stdin());
        let dw = DirectWrite::new(
            fd,
            0,
            true,
            Box::new(move |outcome, done| {
                l.lock().unwrap().push(outcome);
                done(Ok(AlignedBuf::empty()));
            }),
        );
        assert!(dw.dsync());
        drop(dw);
        assert_eq!(*log.lock().unwrap(), vec![Err(libc::ECANCELED)]);
    }
}
