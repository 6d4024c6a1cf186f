//! The error type of the ublk frontend. Every message says what to do next.
//!
//! Owns: [`UblkError`]. Must never: carry an I/O request's error (those are
//! [`drbdd_blockio::BlockError`] and go back to the kernel as an errno).

/// Why a ublk device could not be started, recovered, stopped or listed.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    #[error("ublk not available: load ublk_drv (kernel >= 6.0) or use the NBD frontend")]
    NotAvailable,
    #[error(
        "cannot open {path}: {source}; run drbdd as root (CAP_SYS_ADMIN) or use the NBD frontend"
    )]
    ControlOpen {
        path: String,
        source: std::io::Error,
    },
    #[error("/dev/ublkb{minor} already exists; start with recovery to re-attach to it, or delete it (`drbdctl down` / ublk del {minor})")]
    DeviceExists { minor: u32 },
    #[error("/dev/ublkb{minor} belongs to {found:?}, not to {wanted:?}; refusing to touch it — pick another minor or remove that device by hand")]
    NotOurs {
        minor: u32,
        wanted: String,
        found: String,
    },
    #[error("invalid ublk configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot open the block target for ublk: {0}")]
    Target(#[from] drbdd_blockio::BlockError),
    #[error("ublk driver refused {what} for /dev/ublkb{minor}: {detail}")]
    Driver {
        minor: u32,
        what: &'static str,
        detail: String,
    },
    #[error(
        "the ublk server thread for /dev/ublkb{minor} died before the device started: {detail}"
    )]
    ServerDied { minor: u32, detail: String },
    #[error(
        "cannot enter a private mount namespace: {0}; start drbdd as root before it spawns threads"
    )]
    MountNamespace(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl UblkError {
    /// Wraps a libublk error for `what` on device `minor`.
    pub(crate) fn driver(minor: u32, what: &'static str, err: &libublk::UblkError) -> Self {
        let detail = match err {
            libublk::UblkError::OtherError(code) | libublk::UblkError::UringIOError(code) => {
                format!(
                    "{err} ({})",
                    std::io::Error::from_raw_os_error(code.saturating_abs())
                )
            }
            other => other.to_string(),
        };
        UblkError::Driver {
            minor,
            what,
            detail,
        }
    }
}
