//! The sans-IO replication core: wire codec, handshake, roles and states,
//! protocol A/B/C acknowledgement tracking, generation-identifier decisions,
//! resync planning, split-brain policy and quorum.
//!
//! Owns: all protocol decisions. Must never: touch sockets, threads, clocks or
//! files. It takes events (I/O completed, packet received, timer fired, admin
//! command) with the current time as an argument and returns actions; the daemon
//! and the deterministic simulator drive the same code.
#![forbid(unsafe_code)]

pub mod state;
// Module list: each engineer appends their own `pub mod` line below.
pub mod ack;
pub mod auth;
pub mod generation;
pub mod handshake;
pub mod peer;
pub mod resource;
pub mod resync;
pub mod wire;
