//! The drbdctl side of the control socket, plus the bounded line reader both
//! sides use.
//!
//! Owns: connecting, framing, and telling "daemon not running" apart from
//! "daemon speaks another protocol version". Must never: interpret results
//! (drbdctl decides what to print and which exit code to use).

use super::proto::{Command, Request, Response, MAX_LINE_BYTES, PROTOCOL_VERSION, SOCKET_NAME};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// One line read with a length bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its newline.
    Text(Vec<u8>),
    /// The peer closed the stream.
    Eof,
    /// The line exceeded the bound; the stream is no longer framed.
    TooLong,
}

/// Reads one `\n`-terminated line of at most `max_bytes` (newline included).
/// A final unterminated line before EOF counts as a line.
pub fn read_line_limited<R: BufRead>(r: &mut R, max_bytes: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Text(line)
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if line.len() + chunk.len() > max_bytes {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len();
        r.consume(used);
        if done {
            line.pop();
            return Ok(Line::Text(line));
        }
    }
}

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach drbdd at {path}: {source}; is drbdd running (systemctl start drbdd) \
         and is --run-dir / DRBDD_RUN_DIR right?"
    )]
    Unreachable { path: PathBuf, source: io::Error },
    #[error(
        "permission denied on {path}: the drbdd control socket is for root only; run drbdctl as root (sudo)"
    )]
    PermissionDenied { path: PathBuf },
    #[error("lost the connection to drbdd: {0}")]
    Io(#[from] io::Error),
    #[error(
        "drbdctl speaks control protocol {PROTOCOL_VERSION}, daemon speaks {daemon}: \
         upgrade drbdctl and drbdd to the same version (and restart drbdd)"
    )]
    VersionMismatch { daemon: u64 },
    #[error("drbdd sent an unreadable answer: {0}")]
    Protocol(String),
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to `<run_dir>/drbdd.sock`.
    pub fn connect(run_dir: &Path) -> Result<Self, ClientError> {
        let path = run_dir.join(SOCKET_NAME);
        let writer = UnixStream::connect(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                ClientError::PermissionDenied { path: path.clone() }
            } else {
                ClientError::Unreachable { path, source }
            }
        })?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Client { writer, reader })
    }

    /// Sends one request.
    pub fn send(&mut self, cmd: Command) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&Request::new(cmd))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Receives one response; `None` when the daemon closed the stream.
    pub fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        let text = match read_line_limited(&mut self.reader, MAX_LINE_BYTES)? {
            Line::Eof => return Ok(None),
            Line::TooLong => return Err(ClientError::Protocol("response line too long".into())),
            Line::Text(t) => t,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let daemon = value.get("version").and_then(serde_json::Value::as_u64);
        if daemon != Some(u64::from(PROTOCOL_VERSION)) {
            return Err(ClientError::VersionMismatch {
                daemon: daemon.unwrap_or(0),
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Connects, sends `cmd` and returns the single answer.
    pub fn call(run_dir: &Path, cmd: Command) -> Result<Response, ClientError> {
        let mut client = Client::connect(run_dir)?;
        client.send(cmd)?;
        client.recv()?.ok_or_else(|| {
            ClientError::Protocol("drbdd closed the connection without answering".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reader_bounds_and_splits_lines() {
        let mut r = BufReader::with_capacity(4, &b"ab\ncdefgh\nxy"[..]);
        assert_eq!(
            read_line_limited(&mut r, 8).unwrap(),
            Line::Text(b"ab".to_vec())
        );
        assert_eq!(read_line_limited(&mut r, 5).unwrap(), Line::TooLong);
        let mut r = BufReader::new(&b"xy"[..]);
        assert_eq!(
            read_line_limited(&mut r, 8).unwrap(),
            Line::Text(b"xy".to_vec())
        );
        assert_eq!(read_line_limited(&mut r, 8).unwrap(), Line::Eof);
    }
}
