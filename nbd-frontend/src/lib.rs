//! NBD frontend: a fixed-newstyle NBD server that exports `BlockTarget`s.
//!
//! Owns: the NBD wire protocol ([`proto`], sans-IO), option haggling, the
//! transmission phase (many requests in flight per connection, replies in
//! completion order) and the Unix/TCP listeners. Must never: know about
//! replication or roles beyond what `BlockTarget::open` tells it, panic on
//! client input, or let one client disturb another.
//!
//! Protocol choices:
//! - Simple replies only: `NBD_OPT_STRUCTURED_REPLY` is answered with
//!   `NBD_REP_ERR_UNSUP` (so no block-status / sparse reads).
//! - `NBD_FLAG_CAN_MULTI_CONN` is advertised when [`ServerOptions::multi_conn`]
//!   is set: a `BlockOp::Flush` makes durable every write completed before it
//!   on any session of the target (the pipeline flushes the whole backing
//!   device), which is what multi-conn requires.
//! - A target that refuses a writable open (`BlockError::ReadOnly`, e.g. the
//!   node is Secondary) fails `NBD_OPT_GO` with `NBD_REP_ERR_POLICY` and the
//!   message "resource <name> is Secondary here; promote it first"; with
//!   `NBD_OPT_EXPORT_NAME` the connection is closed (no error reply exists).
//!   Read-only access is offered only when the server runs with
//!   [`ServerOptions::read_only`].

mod handshake;
pub mod proto;
mod server;
mod stream;
mod transmission;

pub use server::{ListenAddr, NbdServer, NbdServerHandle, ServeError};

use drbdd_blockio::BlockTarget;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

/// Finds the target behind an export name (the resource name).
pub trait ExportLookup: Send + Sync + Debug {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockTarget>>;
    /// Names listed by `NBD_OPT_LIST`.
    fn names(&self) -> Vec<String>;
}

impl ExportLookup for HashMap<String, Arc<dyn BlockTarget>> {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockTarget>> {
        self.get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.keys().cloned().collect();
        names.sort();
        names
    }
}

/// A changeable export table (the daemon adds/removes resources at run time).
impl ExportLookup for RwLock<HashMap<String, Arc<dyn BlockTarget>>> {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockTarget>> {
        self.read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn names(&self) -> Vec<String> {
        self.read().unwrap_or_else(|p| p.into_inner()).names()
    }
}

/// Server behaviour the daemon chooses.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Open targets read-only and advertise `NBD_FLAG_READ_ONLY`.
    pub read_only: bool,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN` (see the crate docs for why it is safe).
    pub multi_conn: bool,
    /// Requests in flight per connection before the reader stops reading.
    pub max_in_flight: usize,
    /// Read/write data bytes in flight per connection before the reader
    /// stops reading (bounds memory per slow client; one request is always
    /// admitted).
    pub max_in_flight_bytes: u64,
    /// Connections at once; further clients are closed at accept.
    pub max_connections: usize,
    /// A client that stalls this long during the handshake is dropped.
    pub handshake_timeout_ms: u64,
    /// Sent as `NBD_INFO_DESCRIPTION` when a client asks for it.
    pub description: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            read_only: false,
            multi_conn: true,
            max_in_flight: 256,
            max_in_flight_bytes: 64 << 20,
            max_connections: 64,
            handshake_timeout_ms: 30_000,
            description: None,
        }
    }
}
