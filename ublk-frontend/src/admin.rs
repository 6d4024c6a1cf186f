//! Host-level ublk helpers for the daemon: availability probe, driver features,
//! device ownership and orphan cleanup, and the private mount namespace.
//!
//! Owns: the owner-tag convention (`drbdd:<resource>` stored in libublk's JSON
//! export, `/run/ublksrvd/<id>.json`, as `target_data.owner`). Must never: delete
//! or re-attach to a ublk device without our owner tag.

use crate::UblkError;
use libublk::ctrl::UblkCtrl;
use libublk::sys;
use std::fmt;
use std::path::{Path, PathBuf};

/// Prefix of every owner tag drbdd writes.
pub const OWNER_PREFIX: &str = "drbdd:";
const CONTROL_PATH: &str = "/dev/ublk-control";
const CHAR_CLASS_DIR: &str = "/sys/class/ublk-char";

/// The owner tag for resource `resource`.
pub(crate) fn owner_tag(resource: &str) -> String {
    format!("{OWNER_PREFIX}{resource}")
}

/// Ok when `/dev/ublk-control` exists and we may open it.
pub fn ublk_available() -> Result<(), UblkError> {
    check_control(Path::new(CONTROL_PATH))
}

fn check_control(path: &Path) -> Result<(), UblkError> {
    if !path.exists() {
        return Err(UblkError::NotAvailable);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| UblkError::ControlOpen {
            path: path.display().to_string(),
            source,
        })
}

/// The `UBLK_F_*` feature bits the driver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverFeatures(pub u64);

const FEATURE_NAMES: [(u32, &str); 16] = [
    (sys::UBLK_F_SUPPORT_ZERO_COPY, "zero-copy"),
    (sys::UBLK_F_URING_CMD_COMP_IN_TASK, "comp-in-task"),
    (sys::UBLK_F_NEED_GET_DATA, "need-get-data"),
    (sys::UBLK_F_USER_RECOVERY, "user-recovery"),
    (sys::UBLK_F_USER_RECOVERY_REISSUE, "recovery-reissue"),
    (sys::UBLK_F_UNPRIVILEGED_DEV, "unprivileged"),
    (sys::UBLK_F_CMD_IOCTL_ENCODE, "ioctl-encode"),
    (sys::UBLK_F_USER_COPY, "user-copy"),
    (sys::UBLK_F_ZONED, "zoned"),
    (sys::UBLK_F_USER_RECOVERY_FAIL_IO, "recovery-fail-io"),
    (sys::UBLK_F_UPDATE_SIZE, "update-size"),
    (sys::UBLK_F_AUTO_BUF_REG, "auto-buf-reg"),
    (sys::UBLK_F_QUIESCE, "quiesce"),
    (sys::UBLK_F_PER_IO_DAEMON, "per-io-daemon"),
    (sys::UBLK_F_BUF_REG_OFF_DAEMON, "buf-reg-off-daemon"),
    (sys::UBLK_F_BATCH_IO, "batch-io"),
];

impl DriverFeatures {
    fn has(&self, bit: u32) -> bool {
        self.0 & u64::from(bit) != 0
    }
    pub fn user_recovery(&self) -> bool {
        self.has(sys::UBLK_F_USER_RECOVERY)
    }
    pub fn user_recovery_reissue(&self) -> bool {
        self.has(sys::UBLK_F_USER_RECOVERY_REISSUE)
    }
    /// Names of the known bits that are set.
    pub fn names(&self) -> Vec<&'static str> {
        FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| self.has(*bit))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl fmt::Display for DriverFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} ({})", self.0, self.names().join(" "))
    }
}

/// Asks the driver for its features (kernel >= 6.5; older kernels report none).
pub fn driver_features() -> Result<DriverFeatures, UblkError> {
    ublk_available()?;
    Ok(DriverFeatures(UblkCtrl::get_features().unwrap_or(0)))
}

pub(crate) fn device_exists(minor: u32) -> bool {
    Path::new(CHAR_CLASS_DIR)
        .join(format!("ublkc{minor}"))
        .exists()
}

fn json_path(id: u32) -> PathBuf {
    PathBuf::from(format!("{}/{id:04}.json", UblkCtrl::run_dir()))
}

/// The owner tag recorded for device `minor`, if it carries one of ours.
pub(crate) fn device_owner(minor: u32) -> Option<String> {
    let text = std::fs::read_to_string(json_path(minor)).ok()?;
    owner_from_json(&text)
}

/// Extracts `target_data.owner` when it is a drbdd tag.
fn owner_from_json(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let owner = value.get("target_data")?.get("owner")?.as_str()?;
    owner.starts_with(OWNER_PREFIX).then(|| owner.to_string())
}

/// A ublk device that carries a drbdd owner tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDevice {
    pub minor: u32,
    pub owner_tag: String,
}

/// Every ublk device on this host with a drbdd owner tag.
pub fn owned_devices() -> Vec<OwnedDevice> {
    let Ok(entries) = std::fs::read_dir(CHAR_CLASS_DIR) else {
        return Vec::new();
    };
    let mut found: Vec<OwnedDevice> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("ublkc")?
                .parse::<u32>()
                .ok()
        })
        .filter_map(|minor| {
            Some(OwnedDevice {
                minor,
                owner_tag: device_owner(minor)?,
            })
        })
        .collect();
    found.sort_by_key(|d| d.minor);
    found
}

/// Deletes every drbdd-tagged ublk device whose owner tag is not in `claimed`
/// (the tags of the resources this daemon serves). Returns the deleted minors.
/// Devices without a drbdd tag are never touched.
pub fn delete_orphans(claimed: &[String]) -> Result<Vec<u32>, UblkError> {
    ublk_available()?;
    let mut deleted = Vec::new();
    for dev in owned_devices()
        .into_iter()
        .filter(|d| !claimed.contains(&d.owner_tag))
    {
        let id = i32::try_from(dev.minor).unwrap_or(i32::MAX);
        UblkCtrl::new_simple(id)
            .and_then(|c| c.del_dev())
            .map_err(|e| UblkError::driver(dev.minor, "deleting an orphaned device", &e))?;
        tracing::info!(minor = dev.minor, owner = %dev.owner_tag, "deleted orphaned ublk device");
        deleted.push(dev.minor);
    }
    Ok(deleted)
}

/// Whether `bdev` is held exclusively (mounted, claimed by md/LVM/O_EXCL).
pub(crate) fn held_exclusively(bdev: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(bdev)
    {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    }
}

/// Moves the calling process into its own mount namespace with every mount
/// private, so mounts of our own `/dev/ublkb*` elsewhere never pin this server
/// (a known ublk deadlock on server exit). Call first thing in `main`, before any
/// thread exists: unshare applies to the calling thread only.
///
/// Trade-off of `rprivate` (not `rslave`): mounts made on the host after drbdd
/// started are invisible to it, so backing files must live on file systems that
/// are mounted before drbdd starts (block devices under /dev are unaffected).
pub fn enter_private_mount_namespace() -> Result<(), UblkError> {
    let threads = thread_count()
        .map_err(|e| UblkError::MountNamespace(format!("reading /proc/self/status: {e}")))?;
    if threads != 1 {
        return Err(UblkError::MountNamespace(format!(
            "the process already has {threads} threads"
        )));
    }
    // SAFETY: unshare takes no pointers; CLONE_NEWNS only changes this (single)
    // thread's mount namespace and cannot invalidate memory or descriptors.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(UblkError::MountNamespace(format!(
            "unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        )));
    }
    let root = c"/";
    // SAFETY: `root` is a valid NUL-terminated string that outlives the call; the
    // source, fstype and data pointers may be null for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(UblkError::MountNamespace(format!(
            "making / rprivate: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn thread_count() -> std::io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Threads: line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_control_device_says_to_load_ublk_drv_or_use_nbd() {
        let err = check_control(Path::new("/nonexistent/ublk-control")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ublk not available: load ublk_drv (kernel >= 6.0) or use the NBD frontend"
        );
    }

    #[test]
    fn owner_tag_is_read_from_target_data_and_foreign_tags_are_ignored() {
        let ours =
            r#"{"dev_info":{},"target":{"tgt_type":"drbdd"},"target_data":{"owner":"drbdd:r0"}}"#;
        assert_eq!(owner_from_json(ours).as_deref(), Some("drbdd:r0"));
        let loop_dev = r#"{"target_data":{"loop":{"back_file_path":"/x","direct_io":1}}}"#;
        assert_eq!(owner_from_json(loop_dev), None);
        assert_eq!(
            owner_from_json(r#"{"target_data":{"owner":"someone-else"}}"#),
            None
        );
        assert_eq!(owner_from_json("not json"), None);
        assert_eq!(owner_tag("r0"), "drbdd:r0");
    }

    #[test]
    fn kernel_6_12_features_decode_to_recovery_with_reissue_and_no_zero_copy() {
        let f = DriverFeatures(0x1fe);
        assert!(f.user_recovery() && f.user_recovery_reissue());
        assert!(!f.names().contains(&"zero-copy"));
        assert!(f
            .to_string()
            .starts_with("0x1fe (comp-in-task need-get-data user-recovery recovery-reissue"));
    }

    #[test]
    fn thread_count_of_the_test_process_is_readable() {
        assert!(thread_count().unwrap() >= 1);
    }
}
