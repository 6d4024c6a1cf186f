//! A file system on a drbdd resource survives a daemon restart: the export
//! is attached with nbdfuse (FUSE file) and a loop device, formatted ext4,
//! mounted, filled with files whose sha256 sums are recorded, unmounted and
//! checked with `e2fsck -fn`; then the daemon is stopped with SIGTERM, started
//! again (up + primary, no --force: the data is UpToDate), and every file
//! verifies through a fresh read-only mount. A second test runs the shared
//! block-stack chain script (nbdfuse/loop/ext4/fsck/qemu-io/fio) against the
//! resource. Needs root, /dev/fuse, nbdfuse, losetup, mkfs.ext4; skips with a
//! printed reason otherwise. The tests share loop devices and FUSE, so they
//! run one at a time.

mod datapath_common;

use datapath_common::{have_fuse, have_root, have_tools, sh, Node};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const CHAIN_SCRIPT: &str = "/work/shared/tools/nbd-chain-test.sh";
static SERIAL: Mutex<()> = Mutex::new(());

fn env_ok(test: &str) -> bool {
    have_root(test)
        && have_fuse(test)
        && have_tools(
            test,
            &[
                "nbdfuse",
                "fusermount3",
                "losetup",
                "mkfs.ext4",
                "e2fsck",
                "sha256sum",
            ],
        )
}

/// nbdfuse file -> loop device -> mount point; torn down in reverse on drop
/// (also when the test fails half-way).
#[derive(Debug, Default)]
struct Stack {
    fuse_dir: Option<PathBuf>,
    fuse: Option<Child>,
    loop_dev: Option<String>,
    mnt: Option<PathBuf>,
}

impl Stack {
    /// Attaches `uri` with nbdfuse at `<dir>/disk` and waits until it is ready.
    fn fuse(&mut self, uri: &str, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let pid_file = dir.with_extension("pid");
        let _ = std::fs::remove_file(&pid_file);
        let child = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pid_file)
            .arg(dir.join("disk"))
            .arg(uri)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nbdfuse");
        self.fuse = Some(child);
        self.fuse_dir = Some(dir.to_owned());
        let file = dir.join("disk");
        let start = Instant::now();
        while !(pid_file.exists() && file.exists()) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdfuse did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        file
    }

    fn loop_dev(&mut self, file: &Path, read_only: bool) -> String {
        let ro = if read_only { "-r" } else { "--direct-io=on" };
        let dev = sh(&format!("losetup -f --show {ro} {}", file.display()))
            .trim()
            .to_owned();
        self.loop_dev = Some(dev.clone());
        dev
    }

    fn mount(&mut self, dev: &str, mnt: &Path, opts: &str) {
        std::fs::create_dir_all(mnt).unwrap();
        sh(&format!("mount -o {opts} {dev} {}", mnt.display()));
        self.mnt = Some(mnt.to_owned());
    }

    fn umount(&mut self) {
        if let Some(m) = self.mnt.take() {
            sh(&format!("umount {}", m.display()));
        }
    }

    fn unloop(&mut self) {
        if let Some(d) = self.loop_dev.take() {
            sh(&format!("losetup -d {d}"));
        }
    }

    fn unfuse(&mut self) {
        if let Some(d) = self.fuse_dir.take() {
            let _ = Command::new("fusermount3").arg("-u").arg(&d).status();
        }
        if let Some(mut c) = self.fuse.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn teardown(&mut self) {
        self.umount();
        self.unloop();
        self.unfuse();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if let Some(d) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &d]).status();
        }
        self.unfuse();
    }
}

#[test]
fn ext4_files_survive_fsck_and_a_daemon_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !env_ok("ext4_files_survive_a_daemon_restart") {
        return;
    }
    let mut node = Node::new(128 * MIB, "");
    node.bring_up_primary();
    let work = node.root.path().join("work");
    let mnt = work.join("mnt");
    let manifest = work.join("manifest.sha256");

    let mut stack = Stack::default();
    let file = stack.fuse(&node.uri(), &work.join("fuse1"));
    let dev = stack.loop_dev(&file, false);
    sh(&format!("mkfs.ext4 -q -F {dev}"));
    stack.mount(&dev, &mnt, "rw");
    sh(&format!(
        "cd {m} && dd if=/dev/urandom of=big.bin bs=1M count=16 status=none && \
         mkdir small && for i in $(seq 1 50); do head -c $((i * 997)) /dev/urandom > small/f$i; done && \
         sync && sha256sum big.bin small/* > {man}",
        m = mnt.display(),
        man = manifest.display()
    ));
    stack.teardown();

    // File system check straight on the export, through a fresh connection.
    let file = stack.fuse(&node.uri(), &work.join("fuse2"));
    sh(&format!("e2fsck -f -n {}", file.display()));
    stack.unfuse();

    // Clean daemon stop and start: the resource comes back UpToDate.
    node.stop();
    assert!(
        !node.socket().exists(),
        "SIGTERM left the NBD socket behind"
    );
    node.start();
    node.ctl_ok(&["up", "r0"]);
    node.wait_for("disk:UpToDate after restart", |st| st["disk"] == "UpToDate");
    node.ctl_ok(&["primary", "r0"]);

    let file = stack.fuse(&node.uri(), &work.join("fuse3"));
    let dev = stack.loop_dev(&file, true);
    stack.mount(&dev, &mnt, "ro");
    let out = sh(&format!(
        "cd {} && sha256sum -c {}",
        mnt.display(),
        manifest.display()
    ));
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        51,
        "{out}"
    );
    stack.teardown();
    node.secondary_after_clients_leave();
}

#[test]
fn chain_script_passes_against_a_resource() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !env_ok("chain_script_passes_against_a_resource")
        || !have_tools(
            "chain_script_passes_against_a_resource",
            &["fio", "nbdinfo"],
        )
    {
        return;
    }
    if !Path::new(CHAIN_SCRIPT).exists() {
        eprintln!("SKIP: chain_script_passes_against_a_resource: {CHAIN_SCRIPT} is missing");
        return;
    }
    let mut node = Node::new(320 * MIB, "");
    node.bring_up_primary();
    let out = Command::new("bash")
        .arg(CHAIN_SCRIPT)
        .arg(node.uri())
        .env("FIO_SECS", "5")
        .env("FIO_SIZE", "128M")
        .env("DATA_MB", "32")
        .env("WORK", node.root.path().join("chain"))
        .output()
        .expect("run the chain script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("CHAIN-TEST: PASS"),
        "chain script:\n{text}"
    );
    eprintln!("{last}");
}
