//! The ublk frontend of a resource: `/dev/ublkb<minor>` while the node is
//! Primary, plus the host-wide ublk housekeeping the daemon does at start.
//!
//! Owns: when the device exists (started after a promotion, stopped before a
//! demotion, stopped or left for recovery at daemon stop), the "ublk not
//! available" refusal of `up`/`primary`, the private mount namespace, and
//! deleting drbdd-tagged devices no configured resource claims.
//!
//! Rules:
//! - The device's own long-lived session on the pipeline is not a client that
//!   holds the resource open; only [`UblkHandle::is_open`] (mounted, claimed
//!   by LVM/md, `O_EXCL`) blocks a demotion.
//! - Daemon SIGTERM: a device nobody holds is stopped and deleted; a held
//!   (mounted) device is detached: the daemon exits like a crash for that
//!   resource (no pipeline drain, metadata left for activity-log recovery), the
//!   kernel keeps the device with its I/O waiting, and the next daemon's
//!   `up` + `primary` re-attaches it (ublk user recovery, in-flight requests
//!   re-issued). Deleting a mounted device would throw away the file system's
//!   dirty pages; waiting is what a restart by systemd needs.
//!
//! Must never: delete or re-attach a device without a `drbdd:` owner tag (the
//! frontend crate checks the tag), stop a device that is held open, or count
//! its own session as an open client.

use super::{Actor, AdminError};
use crate::control::proto::ErrorKind;
use drbdd_blockio::BlockTarget;
use drbdd_config::Resource;
use drbdd_replication::state::Role;
use drbdd_ublk::{UblkConfig, UblkDevice, UblkHandle, DEFAULT_QUEUES};
use std::path::Path;
use std::sync::Arc;

/// How the ublk frontend names its pipeline session (`ublk /dev/ublkb<minor>`).
const SESSION_PREFIX: &str = "ublk /dev/ublkb";

/// True for the session the ublk frontend itself holds on the pipeline (not a
/// client holding the device: see the module rules).
pub(super) fn is_frontend_session(client: &str) -> bool {
    client.starts_with(SESSION_PREFIX)
}

/// True when `res` exports `/dev/ublkb<minor>` on `node_name`.
fn wants_ublk(res: &Resource, node_name: &str) -> bool {
    res.frontends_for(node_name).ublk
}

/// `up`/`primary` of a ublk resource on a kernel without ublk: refused with
/// "ublk not available: load ublk_drv (kernel >= 6.0) or use the NBD frontend".
pub(super) fn check_available(res: &Resource, node_name: &str) -> Result<(), AdminError> {
    if !wants_ublk(res, node_name) {
        return Ok(());
    }
    drbdd_ublk::ublk_available().map_err(|e| (ErrorKind::Failed, format!("{}: {e}", res.name)))
}

/// The resource's ublk device, while one is live.
#[derive(Debug, Default)]
pub(super) struct UblkFront {
    handle: Option<UblkHandle>,
}

impl Actor {
    /// After any state change: a Primary with a disk and `frontend` ublk has
    /// its device; a Secondary has none. Starting re-attaches to a device left
    /// by a crashed daemon (recovery) instead of creating one.
    pub(super) fn ublk_sync(&mut self) -> Result<(), AdminError> {
        let wanted = self.core.role == Role::Primary && wants_ublk(&self.res, &self.node_name);
        if !wanted {
            self.ublk_stop();
            return Ok(());
        }
        if self.ublk.handle.is_some() {
            return Ok(());
        }
        let name = self.core.name.clone();
        let minor = self.local_node().minor;
        // Not the tracked NBD export: the device's session must not reach
        // the core's list of open clients (its I/O is counted all the same).
        let Some(pipeline) = self.pipeline.as_ref() else {
            tracing::warn!(resource = %name, "Primary without a local disk: /dev/ublkb{minor} is not started");
            return Ok(());
        };
        let target: Arc<dyn BlockTarget> = self.data.device_target(pipeline);
        let config = UblkConfig {
            // A discard or write-zeroes travels to the peers as one data
            // packet; the kernel splits bigger ones.
            max_discard_bytes: drbdd_replication::wire::MAX_DATA_BYTES,
            // One queue per CPU, not pinned (see `DEFAULT_QUEUES`), unless
            // `DRBDD_UBLK_QUEUES` / `DRBDD_UBLK_PIN=1` say otherwise. The
            // pipeline takes its write-ordering sequence number under the
            // ordering lock, so queue threads may submit at once
            // (pipeline_local::concurrent_submitters_*).
            queues: queues_from_env(),
            pin_queues: std::env::var("DRBDD_UBLK_PIN").as_deref() == Ok("1"),
            ..UblkConfig::new(minor, &name)
        };
        let handle = UblkDevice::start(config, target).map_err(|e| {
            (
                ErrorKind::Failed,
                format!("{name}: cannot start /dev/ublkb{minor}: {e}"),
            )
        })?;
        let how = if handle.recovered() {
            "re-attached (recovered from an earlier drbdd)"
        } else {
            "created"
        };
        tracing::info!(resource = %name, minor, "/dev/ublkb{minor} {how}");
        self.ublk.handle = Some(handle);
        Ok(())
    }

    /// `primary` of a ublk resource: the device must come up, or the
    /// promotion is undone (so a Primary never lacks its device).
    pub(super) fn ublk_after_promote(&mut self) -> Result<(), AdminError> {
        let Err(e) = self.ublk_sync() else {
            return Ok(());
        };
        if let Err((_, why)) = self.step(drbdd_replication::resource::Command::Demote) {
            tracing::error!(resource = %self.core.name, %why, "cannot undo the promotion after the ublk device failed");
        }
        Err(e)
    }

    /// Before a demotion: refused (exit 11) while `/dev/ublkb<minor>` is held
    /// open or another client (NBD) has a session; otherwise the device is
    /// stopped and deleted. A demotion refused later brings it back through
    /// [`Actor::ublk_sync`].
    pub(super) fn ublk_before_demote(&mut self) -> Result<(), AdminError> {
        let Some(handle) = self.ublk.handle.as_ref() else {
            return Ok(());
        };
        let clients: Vec<String> = self.pipeline.as_ref().map_or_else(Vec::new, |p| {
            p.open_clients()
                .into_iter()
                .filter(|c| !is_frontend_session(c))
                .collect()
        });
        if let Some(first) = clients.first() {
            return Err((
                ErrorKind::StateRefused,
                format!(
                    "{}: device is held open by {first} ({} open session(s)); close it first",
                    self.core.name,
                    clients.len()
                ),
            ));
        }
        if handle.is_open() {
            return Err((
                ErrorKind::StateRefused,
                format!(
                    "{}: {} is in use (mounted or held open); unmount it first",
                    self.core.name,
                    handle.bdev_path().display()
                ),
            ));
        }
        self.ublk_stop();
        Ok(())
    }

    /// Stops and deletes the device (waits for the requests the kernel handed
    /// to the pipeline). Idempotent.
    pub(super) fn ublk_stop(&mut self) {
        let Some(handle) = self.ublk.handle.take() else {
            return;
        };
        let path = handle.bdev_path();
        match handle.stop() {
            Ok(()) => {
                tracing::info!(resource = %self.core.name, "{} stopped and deleted", path.display())
            }
            Err(e) => {
                tracing::error!(resource = %self.core.name, error = %e, "stopping {}", path.display())
            }
        }
    }

    /// Daemon stop: true when the device is held open and was left to the
    /// kernel for the next daemon to recover; the caller then must not drain
    /// the pipeline or mark the metadata clean (see the module rules).
    pub(super) fn ublk_on_daemon_stop(&mut self) -> bool {
        let Some(handle) = self.ublk.handle.take() else {
            return false;
        };
        if !handle.is_open() {
            self.ublk.handle = Some(handle);
            self.ublk_stop();
            return false;
        }
        tracing::warn!(
            resource = %self.core.name,
            "{} is in use: left to the kernel with I/O waiting; `drbdctl up {} && drbdctl primary {}` after the restart re-attaches it",
            handle.bdev_path().display(),
            self.core.name,
            self.core.name
        );
        handle.detach();
        true
    }
}

/// Before any thread exists: a daemon that serves ublk devices moves into a
/// private mount namespace, so a file system on its own `/dev/ublkb*` is never
/// mounted in its namespace (an exiting server that still sees such a mount
/// can deadlock). Cost: mounts made on the host after drbdd started are
/// invisible to it, so backing files must sit on file systems mounted before
/// drbdd starts (block devices under /dev are not affected). Returns whether
/// the namespace was entered.
pub fn enter_namespace_if_needed(config_dir: &Path, node_name: &str) -> bool {
    if ublk_resources(config_dir, node_name).is_empty() || drbdd_ublk::ublk_available().is_err() {
        return false;
    }
    match drbdd_ublk::enter_private_mount_namespace() {
        Ok(()) => {
            detach_copied_ublk_mounts();
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "staying in the host's mount namespace; do not mount /dev/ublkb* devices before drbdd stops");
            false
        }
    }
}

/// A restart while `/dev/ublkb*` is mounted copies that mount into the new
/// namespace, where it would hold the device after the host unmounts it
/// (demotion refused as "in use"): detach those copies (host mounts stay).
fn detach_copied_ublk_mounts() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !source.starts_with("/dev/ublkb") {
            continue;
        }
        let Ok(c_target) = std::ffi::CString::new(target.replace("\\040", " ")) else {
            continue;
        };
        // SAFETY: `c_target` is a valid NUL-terminated path that outlives the
        // call; MNT_DETACH only affects this process's private namespace.
        let rc = unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) };
        if rc == 0 {
            tracing::info!(
                source,
                target,
                "detached a copied mount of a ublk device from drbdd's namespace"
            );
        } else {
            tracing::warn!(source, target, error = %std::io::Error::last_os_error(), "cannot detach a copied ublk mount");
        }
    }
}

/// At daemon start: deletes drbdd-tagged devices that no configured ublk
/// resource claims, and logs the ones left by an earlier daemon that `up` +
/// `primary` will re-attach (their I/O waits until then).
pub fn reclaim_devices(config_dir: &Path, node_name: &str) {
    if drbdd_ublk::ublk_available().is_err() {
        return;
    }
    let resources = ublk_resources(config_dir, node_name);
    let claimed: Vec<String> = resources
        .iter()
        .map(|(name, minor)| UblkConfig::new(*minor, name).owner_tag)
        .collect();
    match drbdd_ublk::delete_orphans(&claimed) {
        Ok(deleted) if !deleted.is_empty() => {
            tracing::warn!(
                ?deleted,
                "deleted ublk devices of resources that are no longer configured"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot delete orphaned ublk devices"),
    }
    for dev in drbdd_ublk::owned_devices() {
        if let Some((name, _)) = resources.iter().find(|(_, m)| *m == dev.minor) {
            tracing::warn!(resource = %name, minor = dev.minor, "/dev/ublkb{} survived an earlier drbdd; its I/O waits until `drbdctl up {name} && drbdctl primary {name}` re-attaches it", dev.minor);
        }
    }
}

/// (resource, minor) of every configured resource with the ublk frontend on
/// `node_name`; empty when the configuration does not load.
fn ublk_resources(config_dir: &Path, node_name: &str) -> Vec<(String, u32)> {
    let Ok(config) = drbdd_config::load_dir(config_dir) else {
        return Vec::new();
    };
    config
        .resources
        .iter()
        .filter(|r| wants_ublk(r, node_name))
        .filter_map(|r| Some((r.name.clone(), r.local_node(node_name).ok()?.minor)))
        .collect()
}

/// Queue count for `/dev/ublkb<minor>`: [`DEFAULT_QUEUES`] unless
/// `DRBDD_UBLK_QUEUES` names a count, 0 meaning one per CPU (an A/B knob of
/// the VM benchmark's `drbdd-c-1q` row).
fn queues_from_env() -> u16 {
    match std::env::var("DRBDD_UBLK_QUEUES") {
        Err(_) => DEFAULT_QUEUES,
        Ok(v) => v.parse().unwrap_or_else(|_| {
            tracing::warn!(
                "DRBDD_UBLK_QUEUES={v} is not a queue count (0 = one per CPU); using one per CPU"
            );
            DEFAULT_QUEUES
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_frontends_own_session_is_exempt_from_the_open_check() {
        assert!(is_frontend_session("ublk /dev/ublkb0"));
        assert!(is_frontend_session("ublk /dev/ublkb17"));
        assert!(!is_frontend_session("nbd unix:/run/drbdd/r0.nbd"));
        assert!(!is_frontend_session("ublk"));
    }

    #[test]
    fn check_available_ignores_resources_without_ublk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = "resource = \"r9\"\nfrontend = \"nbd\"\n[on.a]\nnode-id = 0\naddress = \"127.0.0.1:7000\"\nminor = 3\ndisk = \"/tmp/x\"\n";
        let res = drbdd_config::parse_resource(&dir.path().join("r9.toml"), text).expect("parse");
        assert!(check_available(&res, "a").is_ok());
        assert!(!wants_ublk(&res, "a"));
    }
}
