//! memserve: serves one export over NBD on a Unix socket, for tests and for
//! trying clients by hand.
//!
//! Usage: memserve --socket PATH [--name r0] [--size 512M | --file PATH]
//!                 [--tcp ADDR] [--read-only] [--no-multi-conn]
//! With `--file`, the export is that file (plain pread/pwrite, fdatasync on
//! flush and FUA); otherwise a `MemTarget` of `--size` bytes. Prints
//! "READY <socket>" on stdout once listening and serves until killed or until
//! stdin reaches end-of-file (when started with `--stdin-shutdown`).

use anyhow::{bail, Context, Result};
use drbdd_blockio::mem::MemTarget;
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, BlockTarget, Completion, Geometry,
};
use drbdd_nbd::{NbdServer, ServerOptions};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A file-backed target: synchronous positional I/O, completes inline.
#[derive(Debug)]
struct FileTarget {
    file: Arc<File>,
    geometry: Geometry,
}

impl FileTarget {
    fn open(path: &PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let size_bytes = file.metadata()?.len() / 512 * 512;
        if size_bytes == 0 {
            bail!(
                "{} is empty; create it with truncate -s 512M first",
                path.display()
            );
        }
        let geometry = Geometry {
            size_bytes,
            logical_block_bytes: drbdd_blockio::LOGICAL_BLOCK_BYTES,
            physical_block_bytes: drbdd_blockio::PHYSICAL_BLOCK_BYTES,
            max_io_bytes: 1 << 20,
            supports_discard: true,
            supports_write_zeroes: true,
            volatile_cache: true,
        };
        Ok(FileTarget {
            file: Arc::new(file),
            geometry,
        })
    }
}

impl BlockTarget for FileTarget {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn open(&self, _client: &str, _writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        Ok(Arc::new(FileSession {
            file: Arc::clone(&self.file),
            geometry: self.geometry,
        }))
    }
}

#[derive(Debug)]
struct FileSession {
    file: Arc<File>,
    geometry: Geometry,
}

impl FileSession {
    fn execute(&self, req: &BlockRequest, buf: &mut AlignedBuf) -> Result<(), BlockError> {
        req.validate(self.geometry.size_bytes, self.geometry.max_io_bytes)?;
        let io = |_| BlockError::Io;
        match req.op {
            BlockOp::Read => self
                .file
                .read_exact_at(buf.as_mut_slice(), req.offset_bytes)
                .map_err(io)?,
            BlockOp::Write => self
                .file
                .write_all_at(buf.as_slice(), req.offset_bytes)
                .map_err(io)?,
            BlockOp::Flush => self.file.sync_data().map_err(io)?,
            BlockOp::Discard | BlockOp::WriteZeroes => {
                let zeroes = vec![0u8; 1 << 20];
                let end = req.offset_bytes + u64::from(req.len_bytes);
                let mut at = req.offset_bytes;
                while at < end {
                    let n = usize::try_from((end - at).min(1 << 20)).map_err(|_| BlockError::Io)?;
                    self.file.write_all_at(&zeroes[..n], at).map_err(io)?;
                    at += u64::try_from(n).map_err(|_| BlockError::Io)?;
                }
            }
        }
        if req.fua {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

impl BlockSession for FileSession {
    fn submit(&self, req: BlockRequest, mut buf: AlignedBuf, done: Completion) {
        let result = self.execute(&req, &mut buf);
        done(result.map(|()| buf));
    }
}

fn parse_size(text: &str) -> Result<u64> {
    let (num, mult) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 1 << 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad size {text:?}; use e.g. 512M"))?;
    n.checked_mul(mult).context("size overflows")
}

struct Args {
    socket: PathBuf,
    name: String,
    size_bytes: u64,
    file: Option<PathBuf>,
    tcp: Option<std::net::SocketAddr>,
    opts: ServerOptions,
    stdin_shutdown: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        socket: PathBuf::new(),
        name: "r0".into(),
        size_bytes: 512 << 20,
        file: None,
        tcp: None,
        opts: ServerOptions::default(),
        stdin_shutdown: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => args.socket = value()?.into(),
            "--name" => args.name = value()?,
            "--size" => args.size_bytes = parse_size(&value()?)?,
            "--file" => args.file = Some(value()?.into()),
            "--tcp" => args.tcp = Some(value()?.parse().context("bad --tcp address")?),
            "--read-only" => args.opts.read_only = true,
            "--no-multi-conn" => args.opts.multi_conn = false,
            "--stdin-shutdown" => args.stdin_shutdown = true,
            other => bail!("unknown argument {other}; see the usage in examples/memserve.rs"),
        }
    }
    if args.socket.as_os_str().is_empty() {
        bail!("--socket PATH is required");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let target: Arc<dyn BlockTarget> = match &args.file {
        Some(path) => Arc::new(FileTarget::open(path)?),
        None => Arc::new(MemTarget::new(args.size_bytes)),
    };
    let mut map: HashMap<String, Arc<dyn BlockTarget>> = HashMap::new();
    map.insert(args.name.clone(), target);
    let exports = Arc::new(map);
    let unix = NbdServer::serve_unix(&args.socket, exports.clone(), args.opts.clone())?;
    let tcp = match args.tcp {
        Some(addr) => Some(NbdServer::serve_tcp(addr, exports, args.opts.clone())?),
        None => None,
    };
    println!("READY {}", args.socket.display());
    if let Some(t) = &tcp {
        println!("TCP {}", t.addr());
    }
    if args.stdin_shutdown {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        unix.shutdown();
        if let Some(t) = tcp {
            t.shutdown();
        }
        return Ok(());
    }
    loop {
        std::thread::park();
    }
}
