//! Shared harness of the replication tests: a cluster of real `drbdd`
//! processes on loopback, each with its own config and run directory and a
//! file-backed disk under /tmp, driven by the real `drbdctl`.
//!
//! Waiting is always polling `drbdctl status --json` with a generous deadline;
//! a timeout fails with the last status of every node.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub use drbdd_tests::{bin_dir, ensure_binaries, free_port};

/// One node of the test cluster.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub node_id: u8,
    pub port: u16,
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub daemon: Option<Child>,
}

impl Node {
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("drbdd.log")
    }
}

/// A set of nodes sharing one resource `r0`.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub root: tempfile::TempDir,
}

/// Options for the resource file.
#[derive(Debug, Clone)]
pub struct ResOpts {
    pub protocol: char,
    pub disk_bytes: u64,
    /// Per node: shared secret (None: no secret line).
    pub secrets: Vec<Option<String>>,
    /// Extra lines for `[net]`.
    pub net_extra: String,
    /// Per node: address override (e.g. a proxy) as seen by the *other* nodes.
    /// Applies to every node's copy of the config except the node itself.
    pub peer_addr_override: Vec<Option<String>>,
    /// `[disk] resync-rate`.
    pub resync_rate: String,
}

impl Default for ResOpts {
    fn default() -> Self {
        ResOpts {
            protocol: 'C',
            disk_bytes: 16 << 20,
            secrets: Vec::new(),
            net_extra: String::new(),
            peer_addr_override: Vec::new(),
            resync_rate: "400M".into(),
        }
    }
}

const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];

impl Cluster {
    /// Creates `n` nodes with their disks and config; no daemon runs yet.
    pub fn new(n: usize, opts: &ResOpts) -> Cluster {
        ensure_binaries();
        let root = tempfile::Builder::new()
            .prefix("drbdd-repl-")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp");
        let mut nodes = Vec::new();
        for (i, name) in NAMES.iter().enumerate().take(n) {
            let dir = root.path().join(name);
            std::fs::create_dir_all(dir.join("etc/resources.d")).unwrap();
            std::fs::create_dir_all(dir.join("run")).unwrap();
            let disk = dir.join("disk.img");
            let f = std::fs::File::create(&disk).unwrap();
            f.set_len(opts.disk_bytes).unwrap();
            nodes.push(Node {
                name: (*name).to_owned(),
                node_id: u8::try_from(i).unwrap(),
                port: free_port(),
                dir,
                disk,
                daemon: None,
            });
        }
        let c = Cluster { nodes, root };
        for i in 0..n {
            c.write_config(i, opts);
        }
        c
    }

    /// Writes node `me`'s copy of the resource file.
    pub fn write_config(&self, me: usize, opts: &ResOpts) {
        let max_peers = self.nodes.len().saturating_sub(1).max(2);
        let mut text = format!("resource = \"r0\"\nmax-peers = {max_peers}\nfrontend = \"nbd\"\n");
        text.push_str(&format!("[net]\nprotocol = \"{}\"\n", opts.protocol));
        if let Some(Some(secret)) = opts.secrets.get(me) {
            text.push_str(&format!("shared-secret = \"{secret}\"\n"));
        }
        text.push_str("connect-int = 1\nping-int = 1\nping-timeout = 10\n");
        text.push_str(&opts.net_extra);
        text.push_str(&format!(
            "[disk]\nresync-rate = \"{}\"\nc-plan-ahead = 0\n",
            opts.resync_rate
        ));
        for (i, n) in self.nodes.iter().enumerate() {
            let addr = match opts.peer_addr_override.get(i) {
                Some(Some(a)) if i != me => a.clone(),
                _ => format!("127.0.0.1:{}", n.port),
            };
            text.push_str(&format!(
                "[on.{}]\nnode-id = {}\naddress = \"{addr}\"\nminor = {i}\ndisk = \"{}\"\n",
                n.name,
                n.node_id,
                n.disk.display()
            ));
        }
        if self.nodes.len() > 2 {
            let hosts: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("\"{}\"", n.name))
                .collect();
            text.push_str(&format!(
                "[connection-mesh]\nhosts = [{}]\n",
                hosts.join(", ")
            ));
        }
        let path = self.nodes[me].config_dir().join("resources.d/r0.toml");
        std::fs::write(path, text).unwrap();
    }

    /// Writes every node's resource file (as `write_config`), passed
    /// through `edit` (e.g. extra options for one test).
    pub fn write_configs_with(&self, opts: &ResOpts, edit: impl Fn(String) -> String) {
        for i in 0..self.nodes.len() {
            self.write_config(i, opts);
            let path = self.nodes[i].config_dir().join("resources.d/r0.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, edit(text)).unwrap();
        }
    }

    /// An edit for [`Cluster::write_configs_with`] that puts node `i`'s
    /// metadata on a fresh 8 MiB file of its own (`meta-disk`) instead of
    /// its backing device.
    pub fn meta_apart(&self, i: usize) -> impl Fn(String) -> String {
        let meta = self.nodes[i].dir.join("meta.img");
        std::fs::File::create(&meta)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let disk_line = format!("disk = \"{}\"\n", self.nodes[i].disk.display());
        let meta_line = format!("meta-disk = \"{}\"\n", meta.display());
        move |text: String| {
            assert!(text.contains(&disk_line), "{text}");
            text.replace(&disk_line, &format!("{disk_line}{meta_line}"))
        }
    }

    /// Runs drbdctl as node `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        let n = &self.nodes[i];
        Command::new(bin_dir().join("drbdctl"))
            .arg("--run-dir")
            .arg(n.run_dir())
            .arg("--config-dir")
            .arg(n.config_dir())
            .arg("--node")
            .arg(&n.name)
            .args(args)
            .output()
            .expect("run drbdctl")
    }

    /// Runs drbdctl and fails the test unless it exits 0.
    pub fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.ctl(i, args);
        assert!(
            out.status.success(),
            "drbdctl {args:?} on {} failed ({}): {}{}",
            self.nodes[i].name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts node `i`'s daemon and waits for its control socket.
    pub fn start_daemon(&mut self, i: usize) {
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.log_path())
            .unwrap();
        let child = Command::new(bin_dir().join("drbdd"))
            .arg("--run-dir")
            .arg(n.run_dir())
            .arg("--config-dir")
            .arg(n.config_dir())
            .arg("--node")
            .arg(&n.name)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start drbdd");
        self.nodes[i].daemon = Some(child);
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if self.ctl(i, &["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "drbdd on {} did not answer; log:\n{}",
            self.nodes[i].name,
            self.log(i)
        );
    }

    /// SIGKILLs node `i`'s daemon.
    pub fn kill_daemon(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    /// create-md + daemon + up on every node.
    pub fn bring_up_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.ctl_ok(i, &["create-md", "r0", "--force"]);
            self.start_daemon(i);
            self.ctl_ok(i, &["up", "r0"]);
        }
    }

    /// Node `i`'s status of r0 as JSON.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self.ctl(i, &["status", "r0", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v.get(0).cloned().unwrap_or(serde_json::Value::Null)
    }

    fn all_status_text(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- {}:\n{}\n{}",
                    self.nodes[i].name,
                    String::from_utf8_lossy(
                        &self
                            .ctl(i, &["status", "r0", "--verbose", "--statistics"])
                            .stdout
                    ),
                    self.status(i)
                )
            })
            .collect()
    }

    /// Polls until `pred` holds on node `i`'s status; panics with every
    /// node's status and the logs at the deadline.
    pub fn wait_for(&self, what: &str, i: usize, pred: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if pred(&self.status(i)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: String = (0..self.nodes.len())
            .map(|j| {
                format!(
                    "=== log {}:\n{}\n",
                    self.nodes[j].name,
                    tail(&self.log(j), 60)
                )
            })
            .collect();
        panic!(
            "timed out waiting on {} for: {what}\n{}\n{logs}",
            self.nodes[i].name,
            self.all_status_text()
        );
    }

    /// Waits until node `i` sees peer `peer_name` Connected/Established with `peer_disk`.
    pub fn wait_peer(&self, i: usize, peer_name: &str, repl: &str, peer_disk: &str) {
        let what = format!("{peer_name} replication:{repl} peer-disk:{peer_disk}");
        self.wait_for(&what, i, |st| {
            peer_of(st, peer_name).is_some_and(|p| {
                p["connection"] == "Connected"
                    && p["replication"] == repl
                    && p["peer_disk"] == peer_disk
            })
        });
    }

    pub fn wait_disk(&self, i: usize, disk: &str) {
        self.wait_for(&format!("disk:{disk}"), i, |st| st["disk"] == disk);
    }

    /// The exported data size of node `i`.
    pub fn data_size(&self, i: usize) -> u64 {
        self.status(i)["size_bytes"].as_u64().expect("size_bytes")
    }

    /// Asserts the data areas of nodes `a` and `b` are byte-identical.
    pub fn assert_identical(&self, a: usize, b: usize) {
        let size = usize::try_from(self.data_size(a)).unwrap();
        assert!(size > 0);
        let da = std::fs::read(&self.nodes[a].disk).unwrap();
        let db = std::fs::read(&self.nodes[b].disk).unwrap();
        let first_diff = da[..size].iter().zip(&db[..size]).position(|(x, y)| x != y);
        assert_eq!(
            first_diff, None,
            "data of {} and {} differ (first at byte {first_diff:?})",
            self.nodes[a].name, self.nodes[b].name
        );
    }

    /// Writes `bytes` straight into node `i`'s backing file at `offset`
    /// (used to make a node's data differ before a sync).
    pub fn poke_disk(&self, i: usize, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.nodes[i].disk)
            .unwrap();
        f.write_all_at(bytes, offset).unwrap();
        f.sync_all().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_daemon(i);
        }
        // DRBDD_TEST_KEEP_LOGS=<dir>: keep every node's log for inspection.
        if let Ok(dir) = std::env::var("DRBDD_TEST_KEEP_LOGS") {
            let dir = PathBuf::from(dir).join(
                self.root
                    .path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            let _ = std::fs::create_dir_all(&dir);
            for n in &self.nodes {
                let _ = std::fs::copy(n.log_path(), dir.join(format!("{}.log", n.name)));
            }
        }
    }
}

pub fn peer_of<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["peers"].as_array()?.iter().find(|p| p["name"] == name)
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A userspace TCP proxy between two nodes that can delay, black-hole
/// (silently drop everything while keeping sockets open) or cut (close every
/// connection and refuse new ones) the traffic, both ways.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    delay_ms: std::sync::atomic::AtomicU64,
    blackhole: std::sync::atomic::AtomicBool,
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    /// Flip one byte in the next chunk forwarded (either direction).
    corrupt_next: std::sync::atomic::AtomicBool,
    live: std::sync::Mutex<Vec<std::net::TcpStream>>,
    connections: std::sync::atomic::AtomicU64,
}

impl Proxy {
    /// Forwards connections on a free local port to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            while !st.stop.load(SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if st.cut.load(SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                st.connections.fetch_add(1, SeqCst);
                {
                    let mut live = st.live.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let st = std::sync::Arc::clone(&st);
                    std::thread::spawn(move || pump(from, to, &st));
                }
            }
        });
        Proxy { port, state }
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.state
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_blackhole(&self, on: bool) {
        self.state
            .blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Flips one byte of the next chunk that passes (a corrupted stream).
    pub fn corrupt_next(&self) {
        self.state
            .corrupt_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every connection (both ways) and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.state.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.set_blackhole(false);
    }

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> u64 {
        self.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }
}

fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, st: &ProxyState) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::SeqCst;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if st.blackhole.load(SeqCst) {
            continue;
        }
        let delay = st.delay_ms.load(SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if st.corrupt_next.swap(false, SeqCst) {
            buf[n / 2] ^= 0x5a;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// True when `tool` is on PATH; otherwise prints the SKIP line.
pub fn have_tool(test: &str, tool: &str) -> bool {
    let found = drbdd_tests::on_path(tool);
    if !found {
        eprintln!("SKIP: {test}: {tool} is not installed (apt-get install qemu-utils)");
    }
    found
}

impl Cluster {
    /// Runs one qemu-io command (e.g. `write -P 0xab 0 1M`) on node `i`'s
    /// NBD export; fails the test unless it succeeds.
    pub fn qemu_io(&self, i: usize, cmd: &str) -> String {
        let url = format!(
            "nbd+unix:///r0?socket={}",
            self.nodes[i].run_dir().join("r0.nbd").display()
        );
        let out = Command::new("qemu-io")
            .args(["-f", "raw", &url, "-c", cmd])
            .output()
            .expect("run qemu-io");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("failed"),
            "qemu-io {cmd:?} on {} failed: {text}",
            self.nodes[i].name
        );
        text
    }

    /// Peer `peer`'s counter `field` in node `i`'s JSON status.
    pub fn peer_counter(&self, i: usize, peer: &str, field: &str) -> u64 {
        let st = self.status(i);
        peer_of(&st, peer)
            .and_then(|p| p[field].as_u64())
            .unwrap_or_else(|| panic!("no {field} for {peer} in {st}"))
    }
}
