//! The daemon runtime: resources, their state machines, and the threads that drive them.
//!
//! - [`runtime::Daemon`] answers control requests ([`crate::control::server::Dispatch`])
//!   and keeps one [`actor::ResourceHandle`] per resource that is up.
//! - [`actor`] is the per-resource thread around `drbdd_replication::resource::ResourceCore`.
//! - [`md`] locates, opens and creates metadata (also used by drbdctl).
//! - [`events`] fans events2 lines out to `drbdctl events` subscribers.
//! - [`process`] is the process plumbing: run-dir lock, signals, logging.
//! - [`placement`] binds each resource thread to its CPUs (`cpu-mask`).
//!
//! Must never: make protocol decisions (those live in `drbdd-replication`).

pub mod actor;
pub mod events;
pub mod md;
pub mod placement;
pub mod process;
pub mod runtime;
