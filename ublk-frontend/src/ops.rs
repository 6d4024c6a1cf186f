//! Decoding of ublk I/O descriptors into [`BlockRequest`]s and encoding of
//! completions into the result a ublk server commits.
//!
//! Owns: the op/flag mapping. Pure: no kernel, no I/O. Must never bounds-check a
//! request before looking at its op: FLUSH arrives with `start_sector ==
//! u64::MAX` and no sectors.

use drbdd_blockio::{BlockError, BlockOp, BlockRequest};
use libublk::sys;

/// Bytes per ublk sector (ublk always counts in 512-byte sectors).
const SECTOR_BYTES: u64 = 512;

/// The fields of a `ublksrv_io_desc` the frontend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IoDesc {
    pub(crate) op_flags: u32,
    pub(crate) nr_sectors: u32,
    pub(crate) start_sector: u64,
}

impl From<&sys::ublksrv_io_desc> for IoDesc {
    fn from(iod: &sys::ublksrv_io_desc) -> Self {
        IoDesc {
            op_flags: iod.op_flags,
            nr_sectors: iod.nr_sectors,
            start_sector: iod.start_sector,
        }
    }
}

impl IoDesc {
    /// The ublk op code (low 8 bits of `op_flags`).
    pub(crate) fn op_code(&self) -> u32 {
        self.op_flags & 0xff
    }
}

/// Maps a ublk op code to a block op; `None` for ops drbdd does not serve
/// (zoned ops, WRITE_SAME, anything newer).
pub(crate) fn block_op(op_code: u32) -> Option<BlockOp> {
    match op_code {
        sys::UBLK_IO_OP_READ => Some(BlockOp::Read),
        sys::UBLK_IO_OP_WRITE => Some(BlockOp::Write),
        sys::UBLK_IO_OP_FLUSH => Some(BlockOp::Flush),
        sys::UBLK_IO_OP_DISCARD => Some(BlockOp::Discard),
        sys::UBLK_IO_OP_WRITE_ZEROES => Some(BlockOp::WriteZeroes),
        _ => None,
    }
}

/// Turns a descriptor into a validated request for a device of `size_bytes`
/// whose reads and writes may be at most `max_io_bytes` long.
pub(crate) fn decode(
    desc: IoDesc,
    size_bytes: u64,
    max_io_bytes: u32,
) -> Result<BlockRequest, BlockError> {
    let op = block_op(desc.op_code()).ok_or(BlockError::NotSupported)?;
    if op == BlockOp::Flush {
        // The start sector of a flush is meaningless (the kernel sends u64::MAX).
        return Ok(BlockRequest {
            op,
            offset_bytes: 0,
            len_bytes: 0,
            fua: false,
        });
    }
    let offset_bytes = desc
        .start_sector
        .checked_mul(SECTOR_BYTES)
        .ok_or(BlockError::OutOfRange)?;
    let len_bytes = u64::from(desc.nr_sectors)
        .checked_mul(SECTOR_BYTES)
        .and_then(|len| u32::try_from(len).ok())
        .ok_or(BlockError::InvalidArgument(
            "request length does not fit in 32 bits",
        ))?;
    let fua = op == BlockOp::Write && desc.op_flags & sys::UBLK_IO_F_FUA != 0;
    let req = BlockRequest {
        op,
        offset_bytes,
        len_bytes,
        fua,
    };
    req.validate(size_bytes, max_io_bytes)?;
    Ok(req)
}

/// The result a ublk server commits for a finished request: the byte count for
/// reads and writes, 0 for the others, a negative errno on failure.
pub(crate) fn commit_result(req: &BlockRequest, outcome: Result<(), &BlockError>) -> i32 {
    match outcome {
        Err(e) => -e.errno(),
        Ok(()) => match req.op {
            // len_bytes <= max_io_bytes <= 32 MiB, so it always fits; saturate anyway.
            BlockOp::Read | BlockOp::Write => i32::try_from(req.len_bytes).unwrap_or(i32::MAX),
            BlockOp::Flush | BlockOp::Discard | BlockOp::WriteZeroes => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 30;
    const MAX_IO: u32 = 1 << 20;

    fn desc(op: u32, flags: u32, start_sector: u64, nr_sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: op | flags,
            nr_sectors,
            start_sector,
        }
    }

    #[test]
    fn flush_with_sector_u64_max_is_a_flush_not_an_out_of_range_error() {
        let req = decode(desc(sys::UBLK_IO_OP_FLUSH, 0, u64::MAX, 0), SIZE, MAX_IO).unwrap();
        assert_eq!(
            req,
            BlockRequest {
                op: BlockOp::Flush,
                offset_bytes: 0,
                len_bytes: 0,
                fua: false
            }
        );
        assert_eq!(commit_result(&req, Ok(())), 0);
    }

    #[test]
    fn every_served_op_maps_to_its_block_op() {
        let cases = [
            (sys::UBLK_IO_OP_READ, BlockOp::Read),
            (sys::UBLK_IO_OP_WRITE, BlockOp::Write),
            (sys::UBLK_IO_OP_DISCARD, BlockOp::Discard),
            (sys::UBLK_IO_OP_WRITE_ZEROES, BlockOp::WriteZeroes),
        ];
        for (code, op) in cases {
            let req = decode(desc(code, 0, 8, 16), SIZE, MAX_IO).unwrap();
            assert_eq!(
                req,
                BlockRequest {
                    op,
                    offset_bytes: 4096,
                    len_bytes: 8192,
                    fua: false
                }
            );
        }
    }

    #[test]
    fn fua_flag_is_kept_on_writes_only() {
        let w = decode(
            desc(sys::UBLK_IO_OP_WRITE, sys::UBLK_IO_F_FUA, 0, 8),
            SIZE,
            MAX_IO,
        )
        .unwrap();
        assert!(w.fua);
        let r = decode(
            desc(sys::UBLK_IO_OP_READ, sys::UBLK_IO_F_FUA, 0, 8),
            SIZE,
            MAX_IO,
        )
        .unwrap();
        assert!(!r.fua);
    }

    #[test]
    fn unknown_and_zoned_ops_are_not_supported() {
        for code in [
            sys::UBLK_IO_OP_WRITE_SAME,
            sys::UBLK_IO_OP_ZONE_APPEND,
            0xfe,
        ] {
            let err = decode(desc(code, 0, 0, 8), SIZE, MAX_IO).unwrap_err();
            assert_eq!(err, BlockError::NotSupported);
            assert_eq!(-err.errno(), -libc::EOPNOTSUPP);
        }
    }

    #[test]
    fn requests_past_the_end_or_with_overflowing_sectors_are_rejected() {
        let end_sector = SIZE / 512;
        assert_eq!(
            decode(desc(sys::UBLK_IO_OP_READ, 0, end_sector, 1), SIZE, MAX_IO),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(
            decode(desc(sys::UBLK_IO_OP_WRITE, 0, u64::MAX, 8), SIZE, MAX_IO),
            Err(BlockError::OutOfRange)
        );
        assert!(decode(
            desc(sys::UBLK_IO_OP_READ, 0, end_sector - 8, 8),
            SIZE,
            MAX_IO
        )
        .is_ok());
    }

    #[test]
    fn reads_above_max_io_are_rejected_but_large_discards_are_not() {
        let sectors = (MAX_IO / 512) * 2;
        assert!(matches!(
            decode(desc(sys::UBLK_IO_OP_READ, 0, 0, sectors), SIZE, MAX_IO),
            Err(BlockError::InvalidArgument(_))
        ));
        assert!(decode(desc(sys::UBLK_IO_OP_DISCARD, 0, 0, sectors), SIZE, MAX_IO).is_ok());
    }

    #[test]
    fn commit_result_is_byte_count_for_data_ops_and_negative_errno_on_error() {
        let w = BlockRequest {
            op: BlockOp::Write,
            offset_bytes: 0,
            len_bytes: 4096,
            fua: false,
        };
        assert_eq!(commit_result(&w, Ok(())), 4096);
        let d = BlockRequest {
            op: BlockOp::Discard,
            offset_bytes: 0,
            len_bytes: 4096,
            fua: false,
        };
        assert_eq!(commit_result(&d, Ok(())), 0);
        assert_eq!(commit_result(&w, Err(&BlockError::Io)), -libc::EIO);
        assert_eq!(
            commit_result(&w, Err(&BlockError::ReadOnly("secondary".into()))),
            -libc::EROFS
        );
    }
}
