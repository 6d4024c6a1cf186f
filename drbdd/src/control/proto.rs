//! Control protocol types: one JSON request per line from drbdctl, one or more
//! JSON response lines back (several only for `events`).
//!
//! Every request carries `"version"`; a daemon answers a version it does not
//! speak with [`ErrorKind::VersionMismatch`] instead of guessing. Lines are at
//! most [`MAX_LINE_BYTES`] long. Owns: the wire shape. Must never: carry
//! anything the daemon would have to trust without checking (paths come from
//! the daemon's own config directory, not from requests).

use drbdd_replication::state::{ConnState, DiskState, ReplState, Role};
use serde::{Deserialize, Serialize};

/// The control protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request or response line accepted, newline included.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Socket file name inside the run directory.
pub const SOCKET_NAME: &str = "drbdd.sock";
/// Lock file name inside the run directory (holds the daemon's pid).
pub const LOCK_NAME: &str = "drbdd.lock";
/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/drbdd";

/// A request line: `{"version":1,"cmd":"primary","resource":"r0","force":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub cmd: Command,
}

impl Request {
    /// A request of this build's version.
    pub fn new(cmd: Command) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            cmd,
        }
    }
}

/// What drbdctl asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    /// Liveness check; the answer carries the daemon's pid.
    Ping,
    Up {
        resource: String,
    },
    Down {
        resource: String,
    },
    Attach {
        resource: String,
    },
    Detach {
        resource: String,
    },
    Primary {
        resource: String,
        force: bool,
    },
    Secondary {
        resource: String,
    },
    /// Status of one resource or of all that are up.
    Status {
        resource: Option<String>,
    },
    /// events2 stream; with `now` only the initial dump.
    Events {
        now: bool,
        #[serde(default)]
        statistics: bool,
    },
    /// Re-read the config and apply it to running resources.
    Adjust {
        resource: Option<String>,
    },
    /// Connect to the peers (leave StandAlone).
    Connect {
        resource: Option<String>,
        #[serde(default)]
        discard_my_data: bool,
    },
    /// Disconnect from the peers (StandAlone).
    Disconnect {
        resource: String,
    },
}

/// Why a request failed; maps to drbdadm's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Bad request or bad config, or the operation failed (exit 10).
    Failed,
    /// A state change was refused (exit 11).
    StateRefused,
    /// Promotion without UpToDate data (exit 17).
    NoUpToDateData,
    /// The request's protocol version is not the daemon's (exit 10).
    VersionMismatch,
    /// Request line not JSON, not a known command, or too long (exit 10).
    Malformed,
    /// The caller is not root or the daemon's user (exit 10).
    PermissionDenied,
}

impl ErrorKind {
    /// drbdadm-compatible process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::StateRefused => EXIT_STATE_REFUSED,
            ErrorKind::NoUpToDateData => EXIT_NO_UP_TO_DATE,
            ErrorKind::Failed
            | ErrorKind::VersionMismatch
            | ErrorKind::Malformed
            | ErrorKind::PermissionDenied => EXIT_FAILED,
        }
    }
}

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: usage error.
pub const EXIT_USAGE: u8 = 1;
/// Exit code: operation failed or bad configuration.
pub const EXIT_FAILED: u8 = 10;
/// Exit code: state change refused.
pub const EXIT_STATE_REFUSED: u8 = 11;
/// Exit code: no UpToDate data to promote.
pub const EXIT_NO_UP_TO_DATE: u8 = 17;
/// Exit code: the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 20;

/// A response line. Exactly one of `error`/`ok` semantics: `error` is `None` on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The daemon's protocol version (so an old/new client can tell).
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// Human-readable note on success (e.g. "r0 is already up").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<ResourceStatus>,
    /// One events2 line (events stream only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    pub kind: ErrorKind,
    pub message: String,
}

impl Response {
    /// Success without payload.
    pub fn ok() -> Self {
        Response {
            version: PROTOCOL_VERSION,
            error: None,
            message: String::new(),
            pid: None,
            status: Vec::new(),
            event: None,
        }
    }

    /// Success with a note.
    pub fn ok_msg(message: impl Into<String>) -> Self {
        Response {
            message: message.into(),
            ..Response::ok()
        }
    }

    /// A failure.
    pub fn err(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response {
            error: Some(ResponseError {
                kind,
                message: message.into(),
            }),
            ..Response::ok()
        }
    }

    /// One events2 line.
    pub fn event(line: String) -> Self {
        Response {
            event: Some(line),
            ..Response::ok()
        }
    }
}

/// Status of one resource on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub node_id: u8,
    pub role: Role,
    pub suspended: bool,
    pub minor: u32,
    pub disk: DiskState,
    /// Exported size; 0 while Diskless.
    pub size_bytes: u64,
    /// Frontend clients holding the device open.
    pub open_clients: Vec<String>,
    pub current_uuid: Option<u64>,
    pub stats: DeviceStats,
    pub peers: Vec<PeerStatus>,
}

/// I/O counters of the local device (drbdsetup --statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    pub read_kib: u64,
    pub written_kib: u64,
    pub al_writes: u64,
    pub bm_writes: u64,
    pub upper_pending: u64,
    pub lower_pending: u64,
}

/// One configured peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_id: u8,
    pub address: String,
    pub connection: ConnState,
    pub role: Role,
    pub peer_disk: DiskState,
    pub replication: ReplState,
    pub out_of_sync_kib: u64,
    pub received_kib: u64,
    pub sent_kib: u64,
    /// Resync progress in tenths of a percent, while syncing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_tenths_percent: Option<u64>,
    /// Resync data sent to this peer (as sync source) since the resource came up.
    #[serde(default)]
    pub resync_sent_kib: u64,
    /// Resync data received from this peer (as sync target) since the resource came up.
    #[serde(default)]
    pub resync_received_kib: u64,
    /// Progress of the resync with this peer, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncProgress>,
}

/// Resync progress as `status --verbose`/`--statistics` and JSON show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncProgress {
    pub total_kib: u64,
    pub done_kib: u64,
    pub rate_kib_per_s: u64,
    /// Estimated seconds to go; unknown until a rate has been measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_is_flat_and_versioned() {
        let req = Request::new(Command::Primary {
            resource: "r0".into(),
            force: true,
        });
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"cmd":"primary","resource":"r0","force":true}"#
        );
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn error_kinds_map_to_drbdadm_exit_codes() {
        assert_eq!(ErrorKind::StateRefused.exit_code(), 11);
        assert_eq!(ErrorKind::NoUpToDateData.exit_code(), 17);
        assert_eq!(ErrorKind::Malformed.exit_code(), 10);
    }
}
