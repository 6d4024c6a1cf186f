//! Lifecycle of one `/dev/ublkb<minor>`: add or recover, serve, stop and delete.
//!
//! Owns: [`UblkConfig`], [`UblkDevice::start`] and [`UblkHandle`]. Must never:
//! re-attach to or delete a device whose owner tag is not ours, or return from
//! `start` before the block device is live (or has failed).

use crate::admin::{self, DriverFeatures};
use crate::params::DeviceParams;
use crate::queue::run_queue;
use crate::wake::RequestContext;
use crate::UblkError;
use drbdd_blockio::BlockTarget;
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Default requests in flight per hardware queue.
pub const DEFAULT_DEPTH: u16 = 128;
/// Default hardware queues: one per CPU (0), each queue thread free to run
/// on any CPU ([`UblkConfig::pin_queues`] false). libublk pins every queue
/// thread to the CPUs the kernel maps to its queue; a request submitted on a
/// CPU then has to wake the thread pinned to that same CPU, behind the
/// submitter. Measured in the VM bench (2 vCPUs, protocol C, one boot, 2
/// runs; DRBD 8.4 C alongside): pinned per-CPU queues rr4k QD1 p50 950 µs,
/// rr4k QD32 4797 IOPS, rw4k QD32 2622; one queue 782 µs, 8035, 2194 (one
/// thread serves every write); per-CPU queues not pinned 688 µs, 11767,
/// 3197 (DRBD: 501 µs, 7792, 2811). libublk's own loop example shows the
/// pinning cost too (rr4k QD32 11351 IOPS with one queue, 5744 with two).
pub const DEFAULT_QUEUES: u16 = 0;
/// Default largest read or write, in bytes.
pub const DEFAULT_MAX_IO_BYTES: u32 = 512 << 10;
/// How long `start` waits for the device to come up (user recovery alone may
/// wait up to 30 s for the old server's file descriptors to close).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// libublk's target type name for our devices (shown in its JSON export).
const TARGET_NAME: &str = "drbdd";

/// How to export one resource through ublk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblkConfig {
    /// Device id: the resource's minor, so the device is `/dev/ublkb<minor>`.
    pub minor: u32,
    /// Hardware queues; 0 means one per CPU.
    pub queues: u16,
    /// Keep each queue thread on the CPUs the kernel maps to its queue (as
    /// libublk sets it); `false` (the default, see [`DEFAULT_QUEUES`]) lets
    /// every queue thread run on any CPU the daemon may use.
    pub pin_queues: bool,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Largest read or write; lowered to what the target supports.
    pub max_io_bytes: u32,
    /// Largest discard or write-zeroes request the kernel may send (it splits
    /// bigger ones); a replicating target caps it at its wire limit.
    pub max_discard_bytes: u32,
    /// Re-attach to an existing `/dev/ublkb<minor>` with our owner tag (left by a
    /// crashed or restarted drbdd) instead of refusing to start.
    pub recover: bool,
    /// Ownership marker stored with the device, `drbdd:<resource>`.
    pub owner_tag: String,
}

impl UblkConfig {
    /// Defaults for resource `resource` on `minor`: one queue per CPU, not
    /// pinned ([`DEFAULT_QUEUES`]), depth 128, 512 KiB I/O, recovery on.
    pub fn new(minor: u32, resource: &str) -> Self {
        UblkConfig {
            minor,
            queues: DEFAULT_QUEUES,
            pin_queues: false,
            depth: DEFAULT_DEPTH,
            max_io_bytes: DEFAULT_MAX_IO_BYTES,
            max_discard_bytes: crate::params::MAX_DISCARD_BYTES,
            recover: true,
            owner_tag: admin::owner_tag(resource),
        }
    }

    /// Queue count after resolving "one per CPU" and the driver's limit.
    pub(crate) fn effective_queues(&self) -> u16 {
        let wanted = if self.queues == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            usize::from(self.queues)
        };
        let max = usize::try_from(sys::UBLK_MAX_NR_QUEUES).unwrap_or(1);
        u16::try_from(wanted.clamp(1, max)).unwrap_or(1)
    }

    fn validate(&self) -> Result<i32, UblkError> {
        let id = i32::try_from(self.minor).map_err(|_| {
            UblkError::InvalidConfig(format!("minor {} is too large for ublk", self.minor))
        })?;
        let max_depth = u16::try_from(sys::UBLK_MAX_QUEUE_DEPTH).unwrap_or(u16::MAX);
        if self.depth == 0 || self.depth > max_depth {
            return Err(UblkError::InvalidConfig(format!(
                "queue depth {} is not in 1..={max_depth}",
                self.depth
            )));
        }
        if !self.owner_tag.starts_with(admin::OWNER_PREFIX) {
            return Err(UblkError::InvalidConfig(format!(
                "owner tag {:?} must start with {:?}",
                self.owner_tag,
                admin::OWNER_PREFIX
            )));
        }
        Ok(id)
    }
}

/// Whether `start` creates a new device or re-attaches to a quiesced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartMode {
    Add,
    Recover,
}

/// Entry point: see [`UblkDevice::start`].
#[derive(Debug)]
pub struct UblkDevice;

impl UblkDevice {
    /// Exports `target` as `/dev/ublkb<minor>` and returns once the device is
    /// live. Opens one writable session on the target for the device's lifetime.
    pub fn start(
        config: UblkConfig,
        target: Arc<dyn BlockTarget>,
    ) -> Result<UblkHandle, UblkError> {
        admin::ublk_available()?;
        let dev_id = config.validate()?;
        let minor = config.minor;
        let params = DeviceParams::compute(&target.geometry(), config.max_io_bytes)?
            .with_max_discard_bytes(config.max_discard_bytes);
        let mode = match (admin::device_exists(minor), config.recover) {
            (false, _) => StartMode::Add,
            (true, false) => return Err(UblkError::DeviceExists { minor }),
            (true, true) => {
                check_owner(minor, &config.owner_tag)?;
                StartMode::Recover
            }
        };
        let features = admin::driver_features()?;
        let session = target.open(&format!("ublk /dev/ublkb{minor}"), true)?;
        let ctx = RequestContext {
            session,
            size_bytes: params.size_bytes,
            max_io_bytes: params.max_io_bytes,
            ring: crate::direct::UBLK_RING,
        };
        let stop_requested = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(2);
        let server = ServerThread {
            config,
            dev_id,
            mode,
            params,
            features,
            ctx,
            stop_requested: Arc::clone(&stop_requested),
        };
        let thread = std::thread::Builder::new()
            .name(format!("ublk{minor}-ctrl"))
            .spawn(move || server.run(&tx))
            .map_err(|e| UblkError::Io {
                path: "thread spawn".into(),
                source: e,
            })?;
        let fail = |detail: String| UblkError::ServerDied { minor, detail };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(fail("no answer within 60 s".into()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                return Err(fail("the server thread exited without a result".into()));
            }
        }
        tracing::info!(minor, ?mode, features = %features, "ublk device /dev/ublkb{minor} is live");
        Ok(UblkHandle {
            minor,
            params,
            features,
            recovered: mode == StartMode::Recover,
            stop_requested,
            thread: Some(thread),
        })
    }
}

/// Lets the threads `tids` run on every CPU this process may use (the main
/// thread's set: the calling thread may itself be bound to fewer).
fn unpin_threads(tids: &[rustix::process::Pid]) {
    let all = match rustix::thread::sched_getaffinity(Some(rustix::process::getpid())) {
        Ok(set) => set,
        Err(e) => return tracing::warn!("ublk queues stay pinned: sched_getaffinity: {e}"),
    };
    for &tid in tids {
        if let Err(e) = rustix::thread::sched_setaffinity(Some(tid), &all) {
            tracing::warn!(
                tid = tid.as_raw_nonzero().get(),
                "ublk queue stays pinned: {e}"
            );
        }
    }
}

fn check_owner(minor: u32, wanted: &str) -> Result<(), UblkError> {
    match admin::device_owner(minor) {
        Some(found) if found == wanted => Ok(()),
        found => Err(UblkError::NotOurs {
            minor,
            wanted: wanted.to_string(),
            found: found.unwrap_or_else(|| "an unknown owner (no drbdd tag)".into()),
        }),
    }
}

/// Everything the control thread needs; moved into it.
struct ServerThread {
    config: UblkConfig,
    dev_id: i32,
    mode: StartMode,
    params: DeviceParams,
    features: DriverFeatures,
    ctx: RequestContext,
    stop_requested: Arc<AtomicBool>,
}

impl ServerThread {
    fn run(self, tx: &mpsc::SyncSender<Result<(), UblkError>>) {
        let minor = self.config.minor;
        let ctrl = match self.build_ctrl() {
            Ok(c) => c,
            Err(e) => return drop(tx.send(Err(e))),
        };
        let (params, owner, mut ctx) =
            (self.params, self.config.owner_tag.clone(), self.ctx.clone());
        // A recovered device keeps the buffer size it was created with.
        ctx.max_io_bytes = ctx.max_io_bytes.min(ctrl.dev_info().max_io_buf_bytes);
        let depth_extra = ctrl.dev_info().queue_depth.saturating_add(4);
        let tgt_init = move |dev: &mut UblkDev| {
            dev.tgt.dev_size = params.size_bytes;
            dev.tgt.params = params.to_sys();
            // Room for the doorbell poll next to one command per tag.
            dev.tgt.sq_depth = depth_extra;
            dev.tgt.cq_depth = depth_extra;
            dev.set_target_json(serde_json::json!({ "owner": owner }));
            Ok(())
        };
        let started_tx = tx.clone();
        // Each queue thread's id, recorded before it serves anything, so
        // that once libublk pinned them (before START_DEV) they can be let go.
        let queue_tids = Arc::new(Mutex::new(Vec::new()));
        let tids = Arc::clone(&queue_tids);
        let pin_queues = self.config.pin_queues;
        let started = move |_: &UblkCtrl| {
            if !pin_queues {
                unpin_threads(&queue_tids.lock().unwrap_or_else(|p| p.into_inner()));
            }
            drop(started_tx.send(Ok(())));
        };
        let result = ctrl.run_target(
            tgt_init,
            move |qid, dev: &UblkDev| {
                tids.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(rustix::thread::gettid());
                run_queue(qid, dev, ctx.clone());
            },
            started,
        );
        if let Err(e) = result {
            let _ = tx.send(Err(UblkError::driver(minor, "starting the device", &e)));
        }
        if self.stop_requested.load(Ordering::Acquire) && self.mode == StartMode::Recover {
            // A control created for ADD deletes its device when dropped; a recovered one must be told.
            if let Err(e) = ctrl.del_dev() {
                tracing::warn!(minor, "deleting recovered /dev/ublkb{minor}: {e}");
            }
        }
        tracing::info!(minor, "ublk server for /dev/ublkb{minor} exited");
    }

    fn build_ctrl(&self) -> Result<UblkCtrl, UblkError> {
        let minor = self.config.minor;
        let mut ctrl_flags = 0u64;
        if self.features.user_recovery() {
            ctrl_flags |= u64::from(sys::UBLK_F_USER_RECOVERY);
            if self.features.user_recovery_reissue() {
                ctrl_flags |= u64::from(sys::UBLK_F_USER_RECOVERY_REISSUE);
            }
        }
        let mut shape = (
            self.config.effective_queues(),
            self.config.depth,
            self.params.max_io_bytes,
        );
        let dev_flags = match self.mode {
            StartMode::Add => UblkFlags::UBLK_DEV_F_ADD_DEV,
            StartMode::Recover => {
                // The kernel keeps the old device's queues, depth and buffer size.
                let recover = |c: UblkCtrl| {
                    let info = c.dev_info();
                    c.start_user_recover()
                        .map(|_| (info.nr_hw_queues, info.queue_depth, info.max_io_buf_bytes))
                };
                shape = UblkCtrl::new_simple(self.dev_id)
                    .and_then(recover)
                    .map_err(|e| UblkError::driver(minor, "user recovery", &e))?;
                UblkFlags::UBLK_DEV_F_RECOVER_DEV
            }
        };
        UblkCtrlBuilder::default()
            .name(TARGET_NAME)
            .id(self.dev_id)
            .nr_queues(shape.0)
            .depth(shape.1)
            .io_buf_bytes(shape.2)
            .ctrl_flags(ctrl_flags)
            .dev_flags(dev_flags)
            .build()
            .map_err(|e| UblkError::driver(minor, "adding the device", &e))
    }
}

/// A live `/dev/ublkb<minor>`. [`UblkHandle::stop`] deletes the device; if the
/// process dies instead, the device stays (user recovery) and the next
/// [`UblkDevice::start`] with `recover: true` re-attaches to it.
#[derive(Debug)]
pub struct UblkHandle {
    minor: u32,
    params: DeviceParams,
    features: DriverFeatures,
    recovered: bool,
    stop_requested: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UblkHandle {
    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// `/dev/ublkb<minor>`.
    pub fn bdev_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.minor))
    }

    pub fn params(&self) -> DeviceParams {
        self.params
    }

    /// Features the ublk driver reported at start.
    pub fn features(&self) -> DriverFeatures {
        self.features
    }

    /// True when `start` re-attached to a device left by an earlier server.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Whether the block device is held exclusively (mounted, used by LVM/md,
    /// opened with O_EXCL). Plain non-exclusive opens are invisible to ublk.
    pub fn is_open(&self) -> bool {
        admin::held_exclusively(&self.bdev_path())
    }

    /// Stops serving and deletes the device. Waits until every request the
    /// kernel handed to the target has completed.
    pub fn stop(mut self) -> Result<(), UblkError> {
        self.shutdown()
    }

    /// Leaves the device to the kernel without stopping it, for a restart of
    /// drbdd: when this process exits the device is quiesced (I/O waits) until
    /// a new server starts with `recover: true`.
    pub fn detach(mut self) {
        self.thread = None;
    }

    fn shutdown(&mut self) -> Result<(), UblkError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop_requested.store(true, Ordering::Release);
        let minor = self.minor;
        let dev_id = i32::try_from(minor).unwrap_or(i32::MAX);
        if !admin::device_exists(minor) {
            // Deleted behind our back (orphan cleanup, `ublk del`): the queues saw the abort.
            let _ = thread.join();
            return Ok(());
        }
        let killed = UblkCtrl::new_simple(dev_id)
            .and_then(|c| c.kill_dev())
            .map_err(|e| UblkError::driver(minor, "stopping the device", &e));
        if killed.is_ok() || !admin::device_exists(minor) {
            let _ = thread.join();
            return Ok(());
        }
        killed.map(|_| ())
    }
}

impl Drop for UblkHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(minor = self.minor, "stopping ublk device on drop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_unpinned_queues_per_cpu_depth_128_and_recovery_on() {
        let c = UblkConfig::new(3, "r0");
        assert_eq!(
            (c.minor, c.depth, c.max_io_bytes, c.recover),
            (3, 128, 512 << 10, true)
        );
        assert_eq!(c.owner_tag, "drbdd:r0");
        assert!(!c.pin_queues);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(usize::from(c.effective_queues()), cpus);
        assert_eq!(UblkConfig { queues: 3, ..c }.effective_queues(), 3);
    }

    #[test]
    fn unpin_lets_a_pinned_thread_run_on_every_cpu() {
        use rustix::thread::{gettid, sched_getaffinity, sched_setaffinity, CpuSet};
        let all = sched_getaffinity(None).unwrap();
        let first = (0..CpuSet::MAX_CPU).find(|&c| all.is_set(c)).unwrap();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let mut one = CpuSet::new();
            one.set(first);
            sched_setaffinity(None, &one).unwrap();
            tid_tx.send(gettid()).unwrap();
            go_rx.recv().unwrap();
            sched_getaffinity(None).unwrap()
        });
        let tid = tid_rx.recv().unwrap();
        assert_eq!(sched_getaffinity(Some(tid)).unwrap().count(), 1);
        unpin_threads(&[tid]);
        go_tx.send(()).unwrap();
        assert_eq!(t.join().unwrap(), all);
    }

    #[test]
    fn invalid_depth_minor_or_foreign_owner_tag_is_refused() {
        let ok = UblkConfig::new(0, "r0");
        assert_eq!(ok.validate().unwrap(), 0);
        let err = |c: UblkConfig| c.validate().unwrap_err().to_string();
        assert!(err(UblkConfig {
            depth: 0,
            ..ok.clone()
        })
        .contains("queue depth 0"));
        assert!(err(UblkConfig {
            depth: 5000,
            ..ok.clone()
        })
        .contains("queue depth 5000"));
        assert!(err(UblkConfig {
            minor: u32::MAX,
            ..ok.clone()
        })
        .contains("too large"));
        assert!(err(UblkConfig {
            owner_tag: "loop".into(),
            ..ok
        })
        .contains("must start with \"drbdd:\""));
    }
}
