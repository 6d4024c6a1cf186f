//! The I/O interface metadata is written through, and a RAM device for tests and
//! the simulator. Owns: [`MetaDevice`], [`MemDevice`] with fault injection (torn
//! writes, lost unflushed writes on crash, I/O errors). Must never: touch files.

use std::collections::HashMap;
use std::io;

const PAGE_BYTES: u64 = 4096;

/// Positional I/O on the device holding the metadata.
pub trait MetaDevice {
    fn size_bytes(&self) -> u64;
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A sparse RAM device. Writes are visible at once but only survive [`MemDevice::crash`]
/// after a [`MetaDevice::flush`]. Unwritten bytes read as zero.
#[derive(Debug, Clone, Default)]
pub struct MemDevice {
    size_bytes: u64,
    durable: HashMap<u64, Vec<u8>>,
    pending: Vec<(u64, Vec<u8>)>,
    /// (writes to let through first, bytes of the torn write that land)
    tear: Option<(u64, usize)>,
    powered_off: bool,
    fail_writes: bool,
    writes: u64,
    flushes: u64,
}

impl MemDevice {
    pub fn new(size_bytes: u64) -> Self {
        Self {
            size_bytes,
            ..Self::default()
        }
    }

    /// The next write only lands its first `keep_bytes` bytes (durably, as if they hit the
    /// platter) and then the device "loses power": every later I/O fails until [`Self::crash`].
    pub fn tear_next_write(&mut self, keep_bytes: usize) {
        self.tear_write(0, keep_bytes);
    }

    /// Like [`Self::tear_next_write`], but lets `after_writes` writes complete first.
    pub fn tear_write(&mut self, after_writes: u64, keep_bytes: usize) {
        self.tear = Some((after_writes, keep_bytes));
    }

    /// Simulates power loss and reboot: writes not followed by a flush are lost.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.powered_off = false;
        self.tear = None;
    }

    /// While set, every write fails with EIO (nothing is written).
    pub fn set_fail_writes(&mut self, fail: bool) {
        self.fail_writes = fail;
    }

    /// Number of successful `write_at` calls so far.
    pub fn write_count(&self) -> u64 {
        self.writes
    }

    /// Number of successful `flush` calls so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes
    }

    /// The current contents (including unflushed writes) of a range.
    pub fn snapshot(&self, offset_bytes: u64, len_bytes: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len_bytes];
        self.read_into(offset_bytes, &mut buf);
        buf
    }

    fn check_range(&self, offset_bytes: u64, len: usize) -> io::Result<()> {
        let end = offset_bytes.checked_add(u64::try_from(len).unwrap_or(u64::MAX));
        match end {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("I/O beyond end of device ({} bytes)", self.size_bytes),
            )),
        }
    }

    fn read_into(&self, offset_bytes: u64, buf: &mut [u8]) {
        read_pages(&self.durable, offset_bytes, buf);
        let end = offset_bytes + buf.len() as u64;
        for (w_off, data) in &self.pending {
            let w_end = w_off + data.len() as u64;
            let lo = offset_bytes.max(*w_off);
            let hi = end.min(w_end);
            if lo < hi {
                let dst = usize::try_from(lo - offset_bytes).unwrap_or(0);
                let src = usize::try_from(lo - w_off).unwrap_or(0);
                let n = usize::try_from(hi - lo).unwrap_or(0);
                buf[dst..dst + n].copy_from_slice(&data[src..src + n]);
            }
        }
    }

    fn power_check(&self) -> io::Result<()> {
        if self.powered_off {
            return Err(io::Error::other(
                "simulated power loss: device is off until crash()",
            ));
        }
        Ok(())
    }
}

fn read_pages(pages: &HashMap<u64, Vec<u8>>, offset_bytes: u64, buf: &mut [u8]) {
    let mut pos = 0usize;
    while pos < buf.len() {
        let abs = offset_bytes + pos as u64;
        let page = abs / PAGE_BYTES;
        let in_page = usize::try_from(abs % PAGE_BYTES).unwrap_or(0);
        let n = (4096 - in_page).min(buf.len() - pos);
        match pages.get(&page) {
            Some(p) => buf[pos..pos + n].copy_from_slice(&p[in_page..in_page + n]),
            None => buf[pos..pos + n].fill(0),
        }
        pos += n;
    }
}

fn write_pages(pages: &mut HashMap<u64, Vec<u8>>, offset_bytes: u64, data: &[u8]) {
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = offset_bytes + pos as u64;
        let page = abs / PAGE_BYTES;
        let in_page = usize::try_from(abs % PAGE_BYTES).unwrap_or(0);
        let n = (4096 - in_page).min(data.len() - pos);
        let p = pages.entry(page).or_insert_with(|| vec![0u8; 4096]);
        p[in_page..in_page + n].copy_from_slice(&data[pos..pos + n]);
        pos += n;
    }
}

impl MetaDevice for MemDevice {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> io::Result<()> {
        self.power_check()?;
        self.check_range(offset_bytes, buf.len())?;
        self.read_into(offset_bytes, buf);
        Ok(())
    }

    fn write_at(&mut self, offset_bytes: u64, data: &[u8]) -> io::Result<()> {
        self.power_check()?;
        self.check_range(offset_bytes, data.len())?;
        if self.fail_writes {
            return Err(io::Error::other("simulated write error (EIO)"));
        }
        if let Some((after, keep)) = self.tear {
            if after > 0 {
                self.tear = Some((after - 1, keep));
                self.pending.push((offset_bytes, data.to_vec()));
                self.writes += 1;
                return Ok(());
            }
            self.tear = None;
            let keep = keep.min(data.len());
            // Earlier unflushed writes may or may not have landed; model the worst
            // case (they are lost at crash) but the torn prefix did hit the media.
            write_pages(&mut self.durable, offset_bytes, &data[..keep]);
            self.powered_off = true;
            return Err(io::Error::other("simulated power loss during write"));
        }
        self.pending.push((offset_bytes, data.to_vec()));
        self.writes += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.power_check()?;
        for (off, data) in std::mem::take(&mut self.pending) {
            write_pages(&mut self.durable, off, &data);
        }
        self.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_writes_are_lost_on_crash() {
        let mut dev = MemDevice::new(1 << 20);
        dev.write_at(0, b"durable").unwrap();
        dev.flush().unwrap();
        dev.write_at(0, b"volatile").unwrap();
        assert_eq!(dev.snapshot(0, 8), b"volatile");
        dev.crash();
        assert_eq!(dev.snapshot(0, 8), b"durable\0");
    }

    #[test]
    fn torn_write_keeps_prefix_and_powers_off() {
        let mut dev = MemDevice::new(1 << 20);
        dev.write_at(4090, &[1u8; 12]).unwrap();
        dev.flush().unwrap();
        dev.tear_next_write(5);
        assert!(dev.write_at(4090, &[2u8; 12]).is_err());
        assert!(dev.read_at(0, &mut [0u8; 4]).is_err());
        dev.crash();
        assert_eq!(dev.snapshot(4090, 12), [2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn io_beyond_end_is_rejected() {
        let mut dev = MemDevice::new(4096);
        assert!(dev.write_at(4095, &[0u8; 2]).is_err());
    }
}
