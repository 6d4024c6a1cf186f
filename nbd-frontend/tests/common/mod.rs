//! Helpers shared by the NBD integration tests: an in-process server over a
//! `MemTarget`, tool detection that prints why a test is skipped, and a raw
//! protocol client for the hostile-input tests.
#![allow(dead_code, unreachable_pub)]

use drbdd_blockio::mem::MemTarget;
use drbdd_blockio::BlockTarget;
use drbdd_nbd::proto;
use drbdd_nbd::{ExportLookup, NbdServer, NbdServerHandle, ServerOptions};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// A running in-process server with one export "r0".
/// Field order matters: the server shuts down before the directory goes.
pub struct Served {
    pub server: NbdServerHandle,
    pub socket: PathBuf,
    pub mem: Arc<MemTarget>,
    pub dir: tempfile::TempDir,
}

impl Served {
    pub fn uri(&self) -> String {
        format!("nbd+unix:///r0?socket={}", self.socket.display())
    }
}

pub fn serve_mem(size_bytes: u64, opts: ServerOptions) -> Served {
    let mem = Arc::new(MemTarget::new(size_bytes));
    let target: Arc<dyn BlockTarget> = mem.clone();
    serve_targets(vec![("r0".to_string(), target)], opts, mem)
}

pub fn serve_targets(
    targets: Vec<(String, Arc<dyn BlockTarget>)>,
    opts: ServerOptions,
    mem: Arc<MemTarget>,
) -> Served {
    let dir = tempfile::Builder::new()
        .prefix("nbd-test")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let socket = dir.path().join("nbd.sock");
    let map: HashMap<String, Arc<dyn BlockTarget>> = targets.into_iter().collect();
    let exports: Arc<dyn ExportLookup> = Arc::new(map);
    let server = NbdServer::serve_unix(&socket, exports, opts).expect("serve_unix");
    Served {
        dir,
        socket,
        mem,
        server,
    }
}

/// True when `tool` runs; otherwise prints a SKIP line naming the package.
pub fn have_tool(tool: &str, args: &[&str], package: &str) -> bool {
    match Command::new(tool).args(args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIP: `{tool} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIP: {tool} not available ({e}); apt-get install {package}");
            false
        }
    }
}

/// A hand-driven NBD client that can misbehave on purpose.
#[derive(Debug)]
pub struct RawClient {
    pub s: UnixStream,
    pub size_bytes: u64,
    pub flags: u16,
}

/// The server's reply to an option, when it was not what we hoped for.
#[derive(Debug)]
pub struct OptionRefused {
    pub reply_type: u32,
    pub message: String,
}

fn read_u32(s: &mut UnixStream) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut UnixStream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads the greeting and sends client flags (fixed newstyle, no zeroes).
pub fn greet(path: &std::path::Path) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)?;
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes())?;
    Ok(s)
}

pub fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) -> io::Result<()> {
    let mut v = proto::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    v.extend_from_slice(data);
    s.write_all(&v)
}

/// Reads one option reply: (option, type, data).
pub fn read_option_reply(s: &mut UnixStream) -> io::Result<(u32, u32, Vec<u8>)> {
    let magic = read_u64(s)?;
    assert_eq!(magic, proto::OPTION_REPLY_MAGIC);
    let option = read_u32(s)?;
    let kind = read_u32(s)?;
    let len = read_u32(s)? as usize;
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((option, kind, data))
}

impl RawClient {
    /// Negotiates `name` with NBD_OPT_GO.
    pub fn go(path: &std::path::Path, name: &str) -> Result<RawClient, OptionRefused> {
        let mut s = greet(path).expect("greeting");
        let mut data = u32::try_from(name.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
        send_option(&mut s, proto::OPT_GO, &data).expect("send GO");
        let (mut size_bytes, mut flags) = (0, 0);
        loop {
            let (_, kind, data) = read_option_reply(&mut s).expect("GO reply");
            match kind {
                proto::REP_INFO if data[..2] == proto::INFO_EXPORT.to_be_bytes() => {
                    size_bytes = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
                }
                proto::REP_INFO => {}
                proto::REP_ACK => {
                    return Ok(RawClient {
                        s,
                        size_bytes,
                        flags,
                    })
                }
                other => {
                    return Err(OptionRefused {
                        reply_type: other,
                        message: String::from_utf8_lossy(&data).into(),
                    })
                }
            }
        }
    }

    pub fn send(
        &mut self,
        flags: u16,
        command: proto::Command,
        handle: u64,
        offset_bytes: u64,
        len_bytes: u32,
    ) {
        let req = proto::Request {
            flags,
            command,
            handle,
            offset_bytes,
            len_bytes,
        };
        self.s
            .write_all(&proto::encode_request(&req))
            .expect("send request");
    }

    pub fn send_write(&mut self, flags: u16, handle: u64, offset_bytes: u64, data: &[u8]) {
        self.send(
            flags,
            proto::Command::Write,
            handle,
            offset_bytes,
            u32::try_from(data.len()).unwrap(),
        );
        self.s.write_all(data).expect("send payload");
    }

    /// Reads a simple reply header: (handle, error).
    pub fn reply(&mut self) -> io::Result<(u64, u32)> {
        let mut b = [0u8; 16];
        self.s.read_exact(&mut b)?;
        assert_eq!(
            b[..4],
            proto::SIMPLE_REPLY_MAGIC.to_be_bytes(),
            "reply magic"
        );
        Ok((
            u64::from_be_bytes(b[8..16].try_into().unwrap()),
            u32::from_be_bytes(b[4..8].try_into().unwrap()),
        ))
    }

    pub fn read(&mut self, handle: u64, offset_bytes: u64, len_bytes: u32) -> Result<Vec<u8>, u32> {
        self.send(0, proto::Command::Read, handle, offset_bytes, len_bytes);
        let (h, err) = self.reply().expect("read reply");
        assert_eq!(h, handle);
        if err != 0 {
            return Err(err);
        }
        let mut data = vec![0u8; len_bytes as usize];
        self.s.read_exact(&mut data).expect("read data");
        Ok(data)
    }

    pub fn write(&mut self, handle: u64, offset_bytes: u64, data: &[u8]) -> u32 {
        self.send_write(0, handle, offset_bytes, data);
        let (h, err) = self.reply().expect("write reply");
        assert_eq!(h, handle);
        err
    }

    /// True when the server closed the connection (EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}
