//! Device parameters announced to the ublk driver, computed from the target's
//! [`Geometry`] and the frontend configuration.
//!
//! Owns: the choice of block sizes, I/O size limit, discard limits and cache
//! attributes. Pure. Must never: announce a limit the target cannot honour.

use crate::UblkError;
use drbdd_blockio::Geometry;
use libublk::sys;

/// Largest I/O buffer libublk accepts per tag, in bytes.
const LIBUBLK_MAX_IO_BYTES: u32 = 32 << 20;
/// Smallest I/O size we announce: one 4 KiB page.
const MIN_IO_BYTES: u32 = 4096;
/// Largest discard / write-zeroes request we let the kernel send, in bytes.
pub(crate) const MAX_DISCARD_BYTES: u32 = 1 << 30;

/// What `/dev/ublkb<minor>` will look like to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceParams {
    pub size_bytes: u64,
    pub logical_block_bytes: u32,
    pub physical_block_bytes: u32,
    /// Per-request limit for reads and writes; also the per-tag buffer size.
    pub max_io_bytes: u32,
    /// 0 when discard is not supported.
    pub discard_granularity_bytes: u32,
    pub max_discard_bytes: u32,
    pub max_write_zeroes_bytes: u32,
    /// Volatile write cache: the kernel sends FLUSH (and FUA writes).
    pub volatile_cache: bool,
}

impl DeviceParams {
    /// Derives the parameters; `max_io_bytes` is the configured limit, lowered to
    /// what the target and libublk accept and to a multiple of 4 KiB.
    pub fn compute(geometry: &Geometry, max_io_bytes: u32) -> Result<Self, UblkError> {
        let lb = geometry.logical_block_bytes;
        let pb = geometry.physical_block_bytes;
        if !lb.is_power_of_two()
            || lb < 512
            || !pb.is_power_of_two()
            || pb < lb
            || pb > MIN_IO_BYTES
        {
            return Err(UblkError::InvalidConfig(format!(
                "block sizes {lb}/{pb} bytes are not powers of two with 512 <= logical <= physical <= 4096"
            )));
        }
        if geometry.size_bytes == 0 || !geometry.size_bytes.is_multiple_of(u64::from(lb)) {
            return Err(UblkError::InvalidConfig(format!(
                "device size {} bytes is not a positive multiple of {lb} bytes",
                geometry.size_bytes
            )));
        }
        let limit = max_io_bytes
            .min(geometry.max_io_bytes)
            .min(LIBUBLK_MAX_IO_BYTES);
        let limit = limit - limit % MIN_IO_BYTES;
        if limit < MIN_IO_BYTES {
            return Err(UblkError::InvalidConfig(format!(
                "max I/O size {max_io_bytes} bytes (target allows {}) is below 4096 bytes",
                geometry.max_io_bytes
            )));
        }
        let discard_bytes = |supported: bool| if supported { MAX_DISCARD_BYTES } else { 0 };
        Ok(DeviceParams {
            size_bytes: geometry.size_bytes,
            logical_block_bytes: lb,
            physical_block_bytes: pb,
            max_io_bytes: limit,
            discard_granularity_bytes: if geometry.supports_discard { pb } else { 0 },
            max_discard_bytes: discard_bytes(geometry.supports_discard),
            max_write_zeroes_bytes: discard_bytes(geometry.supports_write_zeroes),
            volatile_cache: geometry.volatile_cache,
        })
    }

    /// Lowers the discard and write-zeroes limits to `max_bytes` (rounded
    /// down to the physical block, at least one block); never raises them.
    pub fn with_max_discard_bytes(mut self, max_bytes: u32) -> Self {
        let pb = self.physical_block_bytes;
        let cap = (max_bytes - max_bytes % pb).max(pb);
        if self.max_discard_bytes > 0 {
            self.max_discard_bytes = self.max_discard_bytes.min(cap);
        }
        if self.max_write_zeroes_bytes > 0 {
            self.max_write_zeroes_bytes = self.max_write_zeroes_bytes.min(cap);
        }
        self
    }

    /// The driver's parameter block.
    pub(crate) fn to_sys(self) -> sys::ublk_params {
        let shift = |bytes: u32| u8::try_from(bytes.trailing_zeros()).unwrap_or(u8::MAX);
        let mut attrs = 0;
        if self.volatile_cache {
            attrs |= sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
        }
        let mut params = sys::ublk_params {
            types: sys::UBLK_PARAM_TYPE_BASIC,
            basic: sys::ublk_param_basic {
                attrs,
                logical_bs_shift: shift(self.logical_block_bytes),
                physical_bs_shift: shift(self.physical_block_bytes),
                io_opt_shift: shift(self.physical_block_bytes),
                io_min_shift: shift(self.physical_block_bytes),
                max_sectors: self.max_io_bytes >> 9,
                dev_sectors: self.size_bytes >> 9,
                ..Default::default()
            },
            ..Default::default()
        };
        if self.max_discard_bytes > 0 || self.max_write_zeroes_bytes > 0 {
            params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
            params.discard = sys::ublk_param_discard {
                discard_alignment: 0,
                discard_granularity: self
                    .discard_granularity_bytes
                    .max(self.physical_block_bytes),
                max_discard_sectors: self.max_discard_bytes >> 9,
                max_write_zeroes_sectors: self.max_write_zeroes_bytes >> 9,
                max_discard_segments: 1,
                reserved0: 0,
            };
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            size_bytes: 1 << 30,
            logical_block_bytes: 512,
            physical_block_bytes: 4096,
            max_io_bytes: 1 << 20,
            supports_discard: true,
            supports_write_zeroes: true,
            volatile_cache: true,
        }
    }

    #[test]
    fn discard_and_write_zeroes_limits_are_capped_but_never_raised_or_enabled() {
        let p = DeviceParams::compute(&geometry(), 512 << 10).unwrap();
        assert_eq!(p.max_discard_bytes, 1 << 30);
        let capped = p.with_max_discard_bytes((1 << 20) + 100);
        assert_eq!(
            (capped.max_discard_bytes, capped.max_write_zeroes_bytes),
            (1 << 20, 1 << 20)
        );
        assert_eq!(capped.to_sys().discard.max_discard_sectors, 2048);
        assert_eq!(p.with_max_discard_bytes(0).max_discard_bytes, 4096);
        assert_eq!(
            p.with_max_discard_bytes(u32::MAX).max_discard_bytes,
            1 << 30
        );
        let no_discard = Geometry {
            supports_discard: false,
            supports_write_zeroes: false,
            ..geometry()
        };
        let p = DeviceParams::compute(&no_discard, 512 << 10).unwrap();
        let p = p.with_max_discard_bytes(1 << 20);
        assert_eq!((p.max_discard_bytes, p.max_write_zeroes_bytes), (0, 0));
    }

    #[test]
    fn default_device_is_512_logical_4096_physical_with_volatile_cache_and_fua() {
        let p = DeviceParams::compute(&geometry(), 512 << 10)
            .unwrap()
            .to_sys();
        assert_eq!(
            p.types,
            sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD
        );
        assert_eq!(
            (p.basic.logical_bs_shift, p.basic.physical_bs_shift),
            (9, 12)
        );
        assert_eq!(
            p.basic.attrs,
            sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA
        );
        assert_eq!(p.basic.dev_sectors, (1 << 30) / 512);
        assert_eq!(p.basic.max_sectors, (512 << 10) / 512);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_sectors, (1 << 30) / 512);
    }

    #[test]
    fn max_io_is_capped_by_the_target_and_rounded_down_to_4k() {
        let p = DeviceParams::compute(&geometry(), 8 << 20).unwrap();
        assert_eq!(p.max_io_bytes, 1 << 20);
        let p = DeviceParams::compute(&geometry(), 300_000).unwrap();
        assert_eq!(p.max_io_bytes, 299_008);
        assert!(DeviceParams::compute(&geometry(), 4000).is_err());
    }

    #[test]
    fn no_discard_params_without_discard_or_write_zeroes_support() {
        let g = Geometry {
            supports_discard: false,
            supports_write_zeroes: false,
            volatile_cache: false,
            ..geometry()
        };
        let p = DeviceParams::compute(&g, 1 << 20).unwrap().to_sys();
        assert_eq!(p.types, sys::UBLK_PARAM_TYPE_BASIC);
        assert_eq!(p.basic.attrs, 0);
    }

    #[test]
    fn write_zeroes_only_still_announces_its_limit() {
        let g = Geometry {
            supports_discard: false,
            ..geometry()
        };
        let p = DeviceParams::compute(&g, 1 << 20).unwrap().to_sys();
        assert_eq!(p.discard.max_discard_sectors, 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, (1 << 30) / 512);
    }

    #[test]
    fn sizes_that_are_not_whole_sectors_are_refused() {
        let g = Geometry {
            size_bytes: 1000,
            ..geometry()
        };
        let err = DeviceParams::compute(&g, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("not a positive multiple of 512"), "{err}");
    }
}
