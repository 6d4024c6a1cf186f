//! The control socket shared by the daemon and drbdctl: the versioned JSON-lines
//! protocol ([`proto`]), DRBD-style status and events2 text ([`render`]), the
//! daemon's listener ([`server`]) and the client used by drbdctl ([`client`]).
//!
//! Owns: framing, size limits, version checks, peer-credential checks and the
//! text layouts. Must never: change resource state itself (requests go to the
//! daemon's resource actors).

pub mod client;
pub mod proto;
pub mod render;
pub mod server;
