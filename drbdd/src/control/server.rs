//! The daemon side of the control socket: bind `<run-dir>/drbdd.sock` with mode
//! 0600, accept root (or the daemon's own user) only, read bounded JSON lines,
//! reject malformed or wrong-version requests with an error answer, and hand
//! valid commands to a [`Dispatch`].
//!
//! Owns: the listener and one thread per connection (at most
//! [`MAX_CONNECTIONS`]). Must never: let one bad client stop the daemon or
//! other clients.

use super::client::{read_line_limited, Line};
use super::proto::{ErrorKind, Request, Response, MAX_LINE_BYTES, PROTOCOL_VERSION};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Control connections served at once; more are answered with an error.
pub const MAX_CONNECTIONS: usize = 64;

/// Sends response lines to one client.
#[derive(Debug)]
pub struct Responder {
    stream: UnixStream,
}

impl Responder {
    /// Writes one response line. An error means the client went away.
    pub fn send(&mut self, r: &Response) -> io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stream.write_all(&line)
    }

    /// True when the client closed its end (checked without blocking or
    /// consuming input).
    pub fn client_gone(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        match rustix::net::recv(&self.stream, &mut probe[..], flags) {
            Ok((_, 0)) => true,
            Ok(_) => false,
            Err(e) => e != rustix::io::Errno::WOULDBLOCK && e != rustix::io::Errno::INTR,
        }
    }
}

/// Executes valid commands (the daemon).
pub trait Dispatch: Send + Sync + 'static {
    /// Handles `req`, sending one response (or a stream for events) to `out`.
    fn dispatch(&self, req: Request, out: &mut Responder);
}

/// A bound control socket.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` (a leftover socket file is replaced: the caller holds the
    /// run-dir lock, so no live daemon owns it) with mode 0600.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed stale control socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Path of the socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections forever, one thread each.
    pub fn serve<D: Dispatch>(self, dispatch: Arc<D>) {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            };
            if let Err(why) = check_peer(&stream) {
                tracing::warn!(%why, "control connection refused");
                let mut out = Responder { stream };
                let _ = out.send(&Response::err(ErrorKind::PermissionDenied, why));
                continue;
            }
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                let mut out = Responder { stream };
                let _ = out.send(&Response::err(
                    ErrorKind::Failed,
                    "too many control connections; retry later",
                ));
                continue;
            }
            let dispatch = Arc::clone(&dispatch);
            let active = Arc::clone(&active);
            let spawned = std::thread::Builder::new()
                .name("drbdd-ctl".into())
                .spawn(move || {
                    if let Err(e) = serve_connection(stream, dispatch.as_ref()) {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start control connection thread");
            }
        }
    }
}

/// Only root and the daemon's own user may drive the daemon.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let uid = cred.uid.as_raw();
    let own = rustix::process::getuid().as_raw();
    if uid == 0 || uid == own {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {uid} may not use the drbdd control socket; run drbdctl as root"
        ))
    }
}

fn serve_connection<D: Dispatch + ?Sized>(stream: UnixStream, dispatch: &D) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = Responder { stream };
    loop {
        let text = match read_line_limited(&mut reader, MAX_LINE_BYTES)? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                let msg = format!("request line longer than {MAX_LINE_BYTES} bytes; closing");
                tracing::warn!("{msg}");
                return out.send(&Response::err(ErrorKind::Malformed, msg));
            }
            Line::Text(t) => t,
        };
        match parse_request(&text) {
            Ok(req) => dispatch.dispatch(req, &mut out),
            Err(resp) => {
                tracing::warn!(error = ?resp.error, "rejected control request");
                out.send(&resp)?;
            }
        }
    }
}

/// Parses one request line; the error is the answer to send.
pub fn parse_request(text: &[u8]) -> Result<Request, Box<Response>> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
        Box::new(Response::err(
            ErrorKind::Malformed,
            format!("malformed request (not JSON: {e}); send {{\"version\":{PROTOCOL_VERSION},\"cmd\":...}}"),
        ))
    })?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(Box::new(Response::err(
                ErrorKind::VersionMismatch,
                format!(
                    "client speaks control protocol {v}, daemon speaks {PROTOCOL_VERSION}: \
                     upgrade drbdctl and drbdd to the same version"
                ),
            )))
        }
        None => {
            return Err(Box::new(Response::err(
                ErrorKind::Malformed,
                "malformed request: no numeric \"version\" field",
            )))
        }
    }
    serde_json::from_value(value).map_err(|e| {
        Box::new(Response::err(
            ErrorKind::Malformed,
            format!("malformed request: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_request_rejects_garbage_wrong_version_and_unknown_command() {
        let kind = |t: &str| parse_request(t.as_bytes()).unwrap_err().error.unwrap().kind;
        assert_eq!(kind("hello"), ErrorKind::Malformed);
        assert_eq!(
            kind(r#"{"version":2,"cmd":"ping"}"#),
            ErrorKind::VersionMismatch
        );
        assert_eq!(
            kind(r#"{"version":1,"cmd":"explode"}"#),
            ErrorKind::Malformed
        );
        assert_eq!(kind(r#"{"cmd":"ping"}"#), ErrorKind::Malformed);
        assert!(parse_request(br#"{"version":1,"cmd":"ping"}"#).is_ok());
    }
}
