//! An in-memory [`BlockTarget`] for frontend tests: honours the same request
//! validation as the real pipeline, completes synchronously.
//!
//! Owns: a Vec of bytes behind a mutex. Must never: be used by the daemon.

use crate::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, BlockTarget, Completion, Geometry,
};
use std::sync::{Arc, Mutex};

/// A RAM disk target.
#[derive(Debug)]
pub struct MemTarget {
    inner: Arc<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    data: Mutex<Vec<u8>>,
    geometry: Geometry,
}

impl MemTarget {
    pub fn new(size_bytes: u64) -> Self {
        let len = usize::try_from(size_bytes).expect("MemTarget size fits in memory");
        MemTarget {
            inner: Arc::new(MemInner {
                data: Mutex::new(vec![0; len]),
                geometry: Geometry {
                    size_bytes,
                    logical_block_bytes: crate::LOGICAL_BLOCK_BYTES,
                    physical_block_bytes: crate::PHYSICAL_BLOCK_BYTES,
                    max_io_bytes: 1 << 20,
                    supports_discard: true,
                    supports_write_zeroes: true,
                    volatile_cache: true,
                },
            }),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.inner.data.lock().expect("mem target lock").clone()
    }
}

impl BlockTarget for MemTarget {
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn open(&self, _client: &str, _writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        Ok(Arc::new(MemSession {
            inner: Arc::clone(&self.inner),
        }))
    }
}

#[derive(Debug)]
struct MemSession {
    inner: Arc<MemInner>,
}

impl BlockSession for MemSession {
    fn submit(&self, req: BlockRequest, mut buf: AlignedBuf, done: Completion) {
        let g = self.inner.geometry;
        if let Err(e) = req.validate(g.size_bytes, g.max_io_bytes) {
            return done(Err(e));
        }
        let mut data = self.inner.data.lock().expect("mem target lock");
        let start = usize::try_from(req.offset_bytes).unwrap_or(usize::MAX);
        let end = start.saturating_add(req.len_bytes as usize);
        match req.op {
            BlockOp::Read => {
                if buf.len() != req.len_bytes as usize {
                    return done(Err(BlockError::InvalidArgument(
                        "read buffer length mismatch",
                    )));
                }
                buf.as_mut_slice().copy_from_slice(&data[start..end]);
            }
            BlockOp::Write => {
                if buf.len() != req.len_bytes as usize {
                    return done(Err(BlockError::InvalidArgument(
                        "write buffer length mismatch",
                    )));
                }
                data[start..end].copy_from_slice(buf.as_slice());
            }
            BlockOp::Discard | BlockOp::WriteZeroes => data[start..end].fill(0),
            BlockOp::Flush => {}
        }
        drop(data);
        done(Ok(buf))
    }
}
