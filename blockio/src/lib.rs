//! The block request vocabulary shared by every frontend (NBD, ublk) and the
//! per-resource request pipeline in the daemon.
//!
//! Owns: the request/op types, the errno-mapped error type, the aligned buffer
//! that O_DIRECT needs, and the `BlockTarget`/`BlockSession` traits a frontend
//! talks to. Must never: know about replication, metadata or a transport.
//! A frontend parses its wire format into a [`BlockRequest`], submits it to a
//! [`BlockSession`], and replies when the completion callback runs (on any thread).

mod buf;
pub mod mem;

pub use buf::AlignedBuf;

use std::fmt::Debug;
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
}
