//! The drbdd daemon as a library: wiring of config, metadata, core, network,
//! frontends and the control socket. `drbdctl` reuses the control protocol
//! types from here.
//!
//! Owns: everything that touches the operating system on behalf of the
//! sans-IO core. Must never: make protocol decisions itself (those live in
//! `drbdd-replication`).

pub mod backing;
pub mod control;
pub mod daemon;
pub mod metadev;
pub mod net;
pub mod pipeline;
