//! Kernel-level tests of the ublk frontend: a `MemTarget` exported as a real
//! `/dev/ublkb<N>`, driven with O_DIRECT I/O from this process.
//!
//! They need `/dev/ublk-control` and root; without them they print `SKIP:` and
//! return (our build machines lack ublk_drv: tests/vm/run.sh runs this binary
//! inside a VM whose kernel has it). Minors 200+ keep clear of real devices.

use drbdd_blockio::mem::MemTarget;
use drbdd_blockio::{AlignedBuf, BlockTarget};
use drbdd_ublk::{ublk_available, UblkConfig, UblkDevice, UblkError};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

fn ublk_or_skip(test: &str) -> bool {
    match ublk_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIP: {test}: {e}");
            false
        }
    }
}

fn wait_for_path(path: &Path, present: bool) -> bool {
    for _ in 0..100 {
        if path.exists() == present {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn start_without_the_ublk_driver_names_the_module_and_the_nbd_fallback() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("SKIP: start_without_the_ublk_driver...: this host has ublk_drv loaded");
        return;
    }
    let target: Arc<dyn BlockTarget> = Arc::new(MemTarget::new(1 << 20));
    let err = UblkDevice::start(UblkConfig::new(200, "r0"), target).unwrap_err();
    assert!(matches!(err, UblkError::NotAvailable));
    assert_eq!(
        err.to_string(),
        "ublk not available: load ublk_drv (kernel >= 6.0) or use the NBD frontend"
    );
}

#[test]
fn writes_through_dev_ublkb_land_in_the_target_and_read_back() {
    if !ublk_or_skip("writes_through_dev_ublkb...") {
        return;
    }
    let mem = Arc::new(MemTarget::new(16 << 20));
    let config = UblkConfig {
        queues: 2,
        depth: 32,
        recover: false,
        ..UblkConfig::new(201, "kernel-test")
    };
    let handle = UblkDevice::start(config, Arc::clone(&mem) as Arc<dyn BlockTarget>)
        .expect("start ublk device");
    let bdev = handle.bdev_path();
    assert!(
        wait_for_path(&bdev, true),
        "{} did not appear",
        bdev.display()
    );
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&bdev)
        .unwrap();
    let mut pattern = AlignedBuf::zeroed(64 << 10);
    for (i, b) in pattern.as_mut_slice().iter_mut().enumerate() {
        *b = u8::try_from(i % 251).unwrap();
    }
    dev.write_all_at(pattern.as_slice(), 1 << 20).unwrap();
    dev.sync_all().unwrap(); // FLUSH (start sector u64::MAX) must succeed
    assert_eq!(
        &mem.snapshot()[1 << 20..(1 << 20) + (64 << 10)],
        pattern.as_slice()
    );
    let mut back = AlignedBuf::zeroed(64 << 10);
    dev.read_exact_at(back.as_mut_slice(), 1 << 20).unwrap();
    assert_eq!(back.as_slice(), pattern.as_slice());
    let mut past_end = AlignedBuf::zeroed(4096);
    assert_eq!(
        dev.read_at(past_end.as_mut_slice(), 16 << 20).unwrap(),
        0,
        "reads at the end return EOF"
    );
    drop(dev);
    assert!(!handle.is_open());
    handle.stop().expect("stop");
    assert!(
        wait_for_path(&bdev, false),
        "{} still exists after stop",
        bdev.display()
    );
}

#[test]
fn orphan_cleanup_deletes_only_unclaimed_drbdd_devices() {
    if !ublk_or_skip("orphan_cleanup...") {
        return;
    }
    let config = UblkConfig {
        queues: 1,
        depth: 16,
        recover: false,
        ..UblkConfig::new(202, "orphan-test")
    };
    let handle =
        UblkDevice::start(config, Arc::new(MemTarget::new(4 << 20))).expect("start ublk device");
    let owned = drbdd_ublk::owned_devices();
    assert!(
        owned
            .iter()
            .any(|d| d.minor == 202 && d.owner_tag == "drbdd:orphan-test"),
        "{owned:?}"
    );
    // Other drbdd devices on this host (e.g. the VM scenario's /dev/ublkb0) stay claimed.
    let others: Vec<String> = owned
        .iter()
        .filter(|d| d.minor != 202)
        .map(|d| d.owner_tag.clone())
        .collect();
    let mut claimed = others.clone();
    claimed.push("drbdd:orphan-test".to_string());
    let deleted = drbdd_ublk::delete_orphans(&claimed).unwrap();
    assert!(
        deleted.is_empty(),
        "claimed devices were deleted: {deleted:?}"
    );
    handle.detach(); // leaves the device behind as a crashed daemon would (minus the process exit)
    let deleted = drbdd_ublk::delete_orphans(&others).unwrap();
    assert_eq!(
        deleted,
        vec![202],
        "only the unclaimed device may be deleted"
    );
    assert!(wait_for_path(Path::new("/dev/ublkb202"), false));
}
