//! Shared harness of the data-path tests: one real `drbdd` process (node
//! "alice") with a file-backed disk under /tmp, its own config and run
//! directory, driven by the real `drbdctl`; the resource also names a peer
//! "bob" that never runs, so alice's writes are tracked in bob's bitmap slot.
//! Clients (qemu-io, nbdfuse, fio) reach the export through
//! `<run-dir>/r0.nbd`.
//!
//! Tools that are missing make a test print "SKIP: ..." and return.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub use drbdd_tests::{bin_dir, ensure_binaries, free_port};

/// True when every tool is on PATH; otherwise prints the SKIP line.
pub fn have_tools(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if !drbdd_tests::on_path(t) {
            eprintln!("SKIP: {test}: {t} is not installed (scripts/install-deps.sh)");
            return false;
        }
    }
    true
}

/// True when running as root; otherwise prints the SKIP line.
pub fn have_root(test: &str) -> bool {
    let out = Command::new("id").arg("-u").output();
    let root = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("SKIP: {test}: needs root (loop devices, mount)");
    }
    root
}

/// True when /dev/fuse exists; otherwise prints the SKIP line.
pub fn have_fuse(test: &str) -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("SKIP: {test}: /dev/fuse is missing (modprobe fuse)");
    }
    ok
}

/// One daemon (node alice) serving resource r0.
#[derive(Debug)]
pub struct Node {
    pub root: tempfile::TempDir,
    pub disk: PathBuf,
    pub daemon: Option<Child>,
}

impl Node {
    /// Creates the disk and the config; `extra` goes into the resource file
    /// before the `[on.*]` sections. No daemon runs yet.
    pub fn new(disk_bytes: u64, extra: &str) -> Node {
        Node::new_with(disk_bytes, extra, "")
    }

    /// Like [`Node::new`]; `alice_extra` goes into alice's `[on.alice]` section.
    pub fn new_with(disk_bytes: u64, extra: &str, alice_extra: &str) -> Node {
        ensure_binaries();
        let root = tempfile::Builder::new()
            .prefix("drbdd-dp-")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp");
        let dir = root.path();
        std::fs::create_dir_all(dir.join("etc/resources.d")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(disk_bytes)
            .unwrap();
        let text = format!(
            "resource = \"r0\"\nmax-peers = 2\nfrontend = [\"nbd\"]\n{extra}\n\
             [on.alice]\nnode-id = 0\naddress = \"127.0.0.1:{}\"\nminor = 0\ndisk = \"{}\"\n{alice_extra}\n\
             [on.bob]\nnode-id = 1\naddress = \"127.0.0.1:{}\"\nminor = 1\ndisk = \"/tmp/drbdd-dp-bob-unused.img\"\n",
            free_port(),
            disk.display(),
            free_port()
        );
        std::fs::write(dir.join("etc/resources.d/r0.toml"), text).unwrap();
        Node {
            root,
            disk,
            daemon: None,
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("drbdd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The NBD socket of r0.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("r0.nbd")
    }

    /// The NBD URI of r0 (export name = resource name).
    pub fn uri(&self) -> String {
        format!("nbd+unix:///r0?socket={}", self.socket().display())
    }

    /// Runs drbdctl.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("drbdctl"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--config-dir")
            .arg(self.root.path().join("etc"))
            .arg("--node")
            .arg("alice")
            .args(args)
            .output()
            .expect("run drbdctl")
    }

    /// Runs drbdctl and fails the test unless it exits 0; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "drbdctl {args:?} failed ({}): {}{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the daemon and waits for its control socket.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin_dir().join("drbdd"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--config-dir")
            .arg(self.root.path().join("etc"))
            .arg("--node")
            .arg("alice")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start drbdd");
        self.daemon = Some(child);
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if self.ctl(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("drbdd did not answer; log:\n{}", self.log());
    }

    /// create-md, start, up, primary --force.
    pub fn bring_up_primary(&mut self) {
        self.ctl_ok(&["create-md", "r0", "--force"]);
        self.start();
        self.ctl_ok(&["up", "r0"]);
        self.ctl_ok(&["primary", "r0", "--force"]);
    }

    /// SIGTERM and wait for the daemon to exit (a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let start = Instant::now();
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "drbdd exited with {status} after SIGTERM");
                    return;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "drbdd did not stop after SIGTERM; log:\n{}",
                    tail(&self.log(), 40)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// r0's status as JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "r0", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v.get(0).cloned().unwrap_or(serde_json::Value::Null)
    }

    /// Polls the status until `pred` holds; fails at the deadline.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if pred(&self.status()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; status: {}\nlog:\n{}",
            self.status(),
            tail(&self.log(), 40)
        );
    }

    /// Demotes once the last NBD client's session is gone. A client process
    /// exits before the daemon's reader notices the closed socket, so an
    /// immediate demote may still (correctly) see the device held open.
    pub fn secondary_after_clients_leave(&self) {
        let start = Instant::now();
        loop {
            let out = self.ctl(&["secondary", "r0"]);
            let held = String::from_utf8_lossy(&out.stderr).contains("held open");
            if out.status.success() || !held || start.elapsed() >= DEADLINE {
                assert!(
                    out.status.success(),
                    "drbdctl secondary failed ({}): {}\nlog:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    tail(&self.log(), 40)
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes of the data area straight from the backing file.
    pub fn backing_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.disk).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs qemu-io against `uri` with the given `-c` commands.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.output().expect("run qemu-io")
}

/// Like [`qemu_io`] but fails the test unless every command succeeded
/// (qemu-io exits 0 even when a read pattern mismatches, so its output is
/// checked too).
pub fn qemu_io_ok(uri: &str, cmds: &[&str]) -> String {
    let out = qemu_io(uri, cmds);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success()
            && !text.contains("Pattern verification failed")
            && !text.contains("failed:"),
        "qemu-io {cmds:?} failed ({}): {text}",
        out.status
    );
    text
}

pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Runs a shell command; fails the test with its output unless it exits 0.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
