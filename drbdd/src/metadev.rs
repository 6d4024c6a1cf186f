//! `MetaDevice` over a file or block device: positional reads and writes on a
//! `File`, `fdatasync` for durability.
//!
//! Owns: one open file descriptor and its size. Must never: interpret the bytes
//! it moves (that is `drbdd-metadata`'s job) or cache writes (a write that
//! returned is in the kernel; `flush` makes it durable).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A metadata device backed by a regular file or a block device.
#[derive(Debug)]
pub struct FileMetaDevice {
    file: File,
    path: PathBuf,
    size_bytes: u64,
}

impl FileMetaDevice {
    /// Opens `path` read-write. The size of a block device comes from the
    /// `BLKGETSIZE64` ioctl, the size of a regular file from its length.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open metadata device {}: {e}", path.display()),
                )
            })?;
        let size_bytes = device_size_bytes(&file)?;
        Ok(FileMetaDevice {
            file,
            path: path.to_path_buf(),
            size_bytes,
        })
    }

    /// The path this device was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the device in bytes, as found at open.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Reads exactly `buf.len()` bytes at `offset_bytes`; reading past the end is an error.
    pub fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(offset_bytes, buf.len())?;
        self.file.read_exact_at(buf, offset_bytes)
    }

    /// Writes all of `data` at `offset_bytes`; writing past the end is an error
    /// (a metadata device never grows).
    pub fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()> {
        self.check_range(offset_bytes, data.len())?;
        self.file.write_all_at(data, offset_bytes)
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn check_range(&self, offset_bytes: u64, len: usize) -> io::Result<()> {
        let end = u64::try_from(len)
            .ok()
            .and_then(|l| offset_bytes.checked_add(l));
        match end {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "metadata access at {offset_bytes}+{len} bytes is beyond the end of {} ({} bytes)",
                    self.path.display(),
                    self.size_bytes
                ),
            )),
        }
    }
}

impl drbdd_metadata::MetaDevice for FileMetaDevice {
    fn size_bytes(&self) -> u64 {
        FileMetaDevice::size_bytes(self)
    }

    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> std::io::Result<()> {
        FileMetaDevice::read_at(self, offset_bytes, buf)
    }

    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> std::io::Result<()> {
        FileMetaDevice::write_at(self, offset_bytes, data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        FileMetaDevice::flush(self)
    }
}

/// Size in bytes of an open regular file or block device.
pub fn device_size_bytes(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size_bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a
        // live, properly aligned u64 on our stack; the fd is open for the call's duration.
        let rc =
            unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size_bytes as *mut u64) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size_bytes)
    } else {
        Ok(meta.len())
    }
}

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes.
pub(crate) const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_and_range_checks() {
        let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
        let path = dir.path().join("md");
        std::fs::write(&path, vec![0u8; 8192]).expect("create");
        let mut dev = FileMetaDevice::open(&path).expect("open");
        assert_eq!(dev.size_bytes(), 8192);
        dev.write_at(4096, b"hello").expect("write");
        dev.flush().expect("flush");
        let mut back = [0u8; 5];
        dev.read_at(4096, &mut back).expect("read");
        assert_eq!(&back, b"hello");
        assert!(
            dev.write_at(8190, b"xyz").is_err(),
            "write past the end must fail"
        );
        assert!(
            dev.read_at(u64::MAX, &mut back).is_err(),
            "overflowing offset must fail"
        );
    }

    #[test]
    fn open_missing_file_names_path() {
        let err = FileMetaDevice::open(Path::new("/tmp/does-not-exist-drbdd-md")).unwrap_err();
        assert!(err.to_string().contains("/tmp/does-not-exist-drbdd-md"));
    }
}
