//! Helpers for the multi-process integration tests: a temp node (config dir,
//! run dir, file-backed disk under /tmp), the real `drbdd` as a child process,
//! and the real `drbdctl`.
//!
//! Binaries are taken from the cargo target directory next to the test
//! executable (`target/debug/{drbdd,drbdctl}`), after one
//! `cargo build -p drbdd -p drbdctl` per test binary so they are never stale.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Directory with the workspace binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

static BUILD: Once = Once::new();

/// Builds `drbdd` and `drbdctl` once per test binary (they are other
/// packages, so `cargo test` alone would not rebuild them; cargo makes this a
/// no-op when they are fresh).
pub fn ensure_binaries() {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "drbdd", "-p", "drbdctl"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p drbdd -p drbdctl failed");
    });
}

/// Path of a workspace binary, built first by [`ensure_binaries`].
pub fn bin(name: &str) -> PathBuf {
    ensure_binaries();
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// Result of one drbdctl run.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CtlOutput {
    fn from(o: Output) -> Self {
        CtlOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One node: temp dirs, resource `r0` with a local disk and one peer `bob`.
#[derive(Debug)]
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub daemon: Option<Child>,
}

/// Size of the default test disk.
pub const DISK_BYTES: u64 = 64 << 20;

impl TestNode {
    /// A node `alice` with `r0` on a sparse 64 MiB file disk and a peer `bob`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("drbdd-foundation-")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp");
        let node = TestNode { dir, daemon: None };
        std::fs::create_dir_all(node.config_dir().join("resources.d")).expect("config dir");
        node.set_disk_size(DISK_BYTES);
        node.write_resource("r0", &node.disk());
        node
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("drbdd.sock")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// (Re)creates the disk file as a sparse file of `size_bytes`.
    pub fn set_disk_size(&self, size_bytes: u64) {
        let f = std::fs::File::create(self.disk()).expect("create disk");
        f.set_len(size_bytes).expect("size disk");
    }

    /// Writes `resources.d/<name>.toml` for alice (local) and bob.
    pub fn write_resource(&self, name: &str, disk: &Path) {
        let port = free_port();
        let text = format!(
            "resource = \"{name}\"\n\
             [on.alice]\nnode-id = 0\naddress = \"127.0.0.1:{port}\"\nminor = 0\ndisk = \"{}\"\n\
             [on.bob]\nnode-id = 1\naddress = \"127.0.0.2:{port}\"\nminor = 0\ndisk = \"/tmp/unused-bob.img\"\n",
            disk.display()
        );
        let path = self
            .config_dir()
            .join("resources.d")
            .join(format!("{name}.toml"));
        std::fs::write(path, text).expect("write resource file");
    }

    fn base(&self, cmd: &mut Command) {
        cmd.env("DRBDD_CONFIG_DIR", self.config_dir())
            .env("DRBDD_RUN_DIR", self.run_dir())
            .env("DRBDD_NODE", "alice")
            .env_remove("RUST_LOG");
    }

    /// Runs drbdctl with `args`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut cmd = Command::new(bin("drbdctl"));
        self.base(&mut cmd);
        cmd.args(args).output().expect("run drbdctl").into()
    }

    /// Runs drbdctl and asserts exit code 0; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert_eq!(out.code, 0, "drbdctl {args:?} failed: {out:?}");
        out.stdout
    }

    /// Spawns a drbdd for this node (stderr to a log file in the temp dir).
    pub fn spawn_daemon(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("drbdd.log"))
            .expect("log file");
        let mut cmd = Command::new(bin("drbdd"));
        self.base(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn drbdd")
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start_daemon(&mut self) {
        let child = self.spawn_daemon();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "drbdd did not open its socket; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("drbdd.log")).unwrap_or_default()
    }

    /// Sends SIGTERM to the daemon and waits for it; returns its exit code.
    pub fn stop_daemon(&mut self) -> Option<i32> {
        let mut child = self.daemon.take()?;
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        // SAFETY: kill(2) with a pid of our own child process and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait drbdd") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "drbdd did not stop within 10 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends raw bytes on a fresh control connection and returns the first answer line.
    pub fn raw_request(&self, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(self.socket()).expect("connect control socket");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The daemon may close early on an oversized line; a failed write is fine then.
        let _ = s.write_all(bytes);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read answer");
        line
    }
}

impl Default for TestNode {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True when `tool` can be run (for skipping tests with a printed reason).
pub fn have_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// True when `tool` is on PATH (`command -v`), for skipping tests with a
/// printed reason.
pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP port that was free on 127.0.0.1 a moment ago (tests run in parallel,
/// so every node gets its own replication port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}
