//! ublk frontend: serves `/dev/ublkb<minor>` from a [`drbdd_blockio::BlockTarget`]
//! through libublk.
//!
//! Owns: the ublk control-device lifecycle (add, start, user recovery, stop,
//! delete), the per-queue I/O loops that turn ublk I/O descriptors into
//! [`drbdd_blockio::BlockRequest`]s, and the admin helpers the daemon needs
//! (availability probe, driver features, orphan cleanup, private mount namespace).
//! Must never: know about replication or metadata, block a queue thread while a
//! request waits on the target, or touch a ublk device it did not create.
//!
//! Threads: one control thread per device runs libublk's `run_target`; it starts
//! one thread per hardware queue. Every tag of a queue is an async task on that
//! queue's local executor; a request is submitted to the target and the task sleeps
//! until the completion callback (any thread) wakes it through the queue's eventfd
//! doorbell, which is polled from the queue's own io_uring. A read the target
//! offers as a direct read is instead issued on that same io_uring by the task
//! itself (no thread hop).

mod admin;
mod device;
mod direct;
mod error;
mod ops;
mod params;
mod queue;
mod wake;

pub use admin::{
    delete_orphans, driver_features, enter_private_mount_namespace, owned_devices, ublk_available,
    DriverFeatures, OwnedDevice, OWNER_PREFIX,
};
pub use device::{
    UblkConfig, UblkDevice, UblkHandle, DEFAULT_DEPTH, DEFAULT_MAX_IO_BYTES, DEFAULT_QUEUES,
};
pub use error::UblkError;
pub use params::DeviceParams;
