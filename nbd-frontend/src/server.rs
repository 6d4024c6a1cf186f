//! Listeners and connection threads: accepts clients on a Unix socket or TCP,
//! runs the handshake and then transmission for each on its own thread.
//!
//! Owns: the listening socket (a Unix socket file is created mode 0600 and
//! removed on shutdown), the table of live connections, and orderly
//! shutdown. Must never: let one client's failure stop the listener or
//! another client, or leave connection threads running after `shutdown`.

use crate::handshake::{self, Negotiated};
use crate::stream::Stream;
use crate::transmission::{self, TransmissionParams};
use crate::{ExportLookup, ServerOptions};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {source}; check the directory exists and the address is free"
    )]
    Listen { addr: String, source: io::Error },
    #[error("{0} is in use by a running server; stop it or choose another socket path")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another path")]
    NotASocket(PathBuf),
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL_MS: i32 = 100;

#[derive(Debug)]
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// Waits up to `timeout_ms` for a pending connection. Polling (rather
    /// than waking a blocked accept by connecting to ourselves) keeps
    /// shutdown working even when the socket file was removed under us.
    fn wait_readable(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid, initialised pollfd that lives across the
        // call, and we pass a count of exactly one; the fd is owned by `self`.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        n > 0
    }

    fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), String::new())),
            Listener::Tcp(l) => l.accept().map(|(s, peer)| {
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), format!(" from {peer}"))
            }),
        }
    }
}

#[derive(Debug)]
struct Shared {
    addr: ListenAddr,
    exports: Arc<dyn ExportLookup>,
    opts: ServerOptions,
    shutting_down: AtomicBool,
    next_conn: AtomicU64,
    conns: Mutex<HashMap<u64, Stream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Entry points; see [`NbdServerHandle`] for the running server.
#[derive(Debug)]
pub struct NbdServer;

impl NbdServer {
    /// Listens on a Unix socket at `path` (created mode 0600; a stale socket
    /// file nobody listens on is replaced) and serves `exports`.
    pub fn serve_unix(
        path: &Path,
        exports: Arc<dyn ExportLookup>,
        opts: ServerOptions,
    ) -> Result<NbdServerHandle, ServeError> {
        remove_stale_socket(path)?;
        let listen_err = |source| ServeError::Listen {
            addr: format!("unix:{}", path.display()),
            source,
        };
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        start(
            Listener::Unix(listener),
            ListenAddr::Unix(path.to_owned()),
            exports,
            opts,
        )
    }

    /// Listens on TCP at `addr` (port 0 picks a free port; see
    /// [`NbdServerHandle::addr`]) and serves `exports`.
    pub fn serve_tcp(
        addr: SocketAddr,
        exports: Arc<dyn ExportLookup>,
        opts: ServerOptions,
    ) -> Result<NbdServerHandle, ServeError> {
        let listen_err = |source| ServeError::Listen {
            addr: format!("tcp:{addr}"),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        start(
            Listener::Tcp(listener),
            ListenAddr::Tcp(local),
            exports,
            opts,
        )
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Listen {
        addr: format!("unix:{}", path.display()),
        source,
    })
}

fn start(
    listener: Listener,
    addr: ListenAddr,
    exports: Arc<dyn ExportLookup>,
    opts: ServerOptions,
) -> Result<NbdServerHandle, ServeError> {
    let shared = Arc::new(Shared {
        addr: addr.clone(),
        exports,
        opts,
        shutting_down: AtomicBool::new(false),
        next_conn: AtomicU64::new(1),
        conns: Mutex::new(HashMap::new()),
        threads: Mutex::new(Vec::new()),
    });
    let for_thread = Arc::clone(&shared);
    let accept = std::thread::Builder::new()
        .name(format!("nbd-accept {addr}"))
        .spawn(move || accept_loop(&listener, &for_thread))
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, "NBD server listening");
    Ok(NbdServerHandle {
        shared,
        accept: Some(accept),
    })
}

fn accept_loop(listener: &Listener, shared: &Arc<Shared>) {
    loop {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        if !listener.wait_readable(ACCEPT_POLL_MS) {
            continue;
        }
        let accepted = listener.accept();
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(addr = %shared.addr, error = %e, "NBD accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if let Err(e) = register(shared, stream, &peer) {
            tracing::warn!(addr = %shared.addr, error = %e, "NBD connection not started");
        }
    }
}

fn register(shared: &Arc<Shared>, stream: Stream, peer: &str) -> io::Result<()> {
    let mut threads = shared.threads.lock().unwrap_or_else(|p| p.into_inner());
    threads.retain(|t| !t.is_finished());
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    {
        let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= shared.opts.max_connections {
            tracing::warn!(addr = %shared.addr, max = shared.opts.max_connections, "NBD connection limit reached; refusing client");
            return Ok(());
        }
        conns.insert(id, stream.try_clone()?);
    }
    let name = format!("nbd {} conn #{id}{peer}", shared.addr);
    let for_thread = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            run_connection(&for_thread, stream, &name);
            for_thread
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    match spawned {
        Ok(t) => threads.push(t),
        Err(e) => {
            shared
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(e);
        }
    }
    Ok(())
}

fn run_connection(shared: &Shared, mut stream: Stream, client_name: &str) {
    let timeout = Duration::from_millis(shared.opts.handshake_timeout_ms.max(1));
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        tracing::warn!(client = client_name, error = %e, "cannot set handshake timeout");
        return;
    }
    let is_shutting_down = || shared.shutting_down.load(Ordering::SeqCst);
    let negotiated = handshake::negotiate(
        &mut stream,
        shared.exports.as_ref(),
        &shared.opts,
        client_name,
        &is_shutting_down,
    );
    let Negotiated {
        export_name,
        session,
        geometry,
        read_only,
    } = match negotiated {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(client = client_name, error = %e, "NBD handshake ended");
            return;
        }
    };
    if let Err(e) = stream.set_read_timeout(None) {
        tracing::warn!(client = client_name, error = %e, "cannot clear handshake timeout");
        return;
    }
    tracing::info!(client = client_name, export = %export_name, read_only, "NBD client connected");
    let params = TransmissionParams {
        geometry,
        read_only,
        max_in_flight: shared.opts.max_in_flight,
        max_in_flight_bytes: shared.opts.max_in_flight_bytes,
    };
    match transmission::serve(stream, &session, params) {
        Ok(()) => {
            tracing::info!(client = client_name, export = %export_name, "NBD client disconnected")
        }
        Err(e) => {
            tracing::info!(client = client_name, export = %export_name, error = %e, "NBD connection closed")
        }
    }
}

/// A running server. Dropping it shuts it down like [`NbdServerHandle::shutdown`].
#[derive(Debug)]
pub struct NbdServerHandle {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl NbdServerHandle {
    /// The address the server listens on (the bound port for TCP port 0).
    pub fn addr(&self) -> &ListenAddr {
        &self.shared.addr
    }

    /// Connections currently open (in handshake or transmission).
    pub fn connection_count(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops listening, closes every connection (in-flight requests still
    /// complete and release their sessions), joins all threads, and removes
    /// the Unix socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        if accept.join().is_err() {
            tracing::error!("NBD accept thread panicked");
        }
        for stream in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            stream.shutdown();
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for t in threads {
            if t.join().is_err() {
                tracing::error!("NBD connection thread panicked");
            }
        }
        if let ListenAddr::Unix(p) = &self.shared.addr {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!(addr = %self.shared.addr, "NBD server stopped");
    }
}

impl Drop for NbdServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
