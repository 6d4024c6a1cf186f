//! The block-stack chain test (/work/shared/tools/nbd-chain-test.sh):
//! nbdfuse + loop device + ext4 (mkfs, write, fstrim, e2fsck, sha256 verify
//! over a fresh connection), qemu-io FUA/flush/trim/zero smoke and fio verify.
//! Run once against `nbdkit memory` to prove the environment works, and once
//! against our `memserve` example binary, which must then shut down cleanly
//! when its stdin closes. Needs root, /dev/fuse and the tools the script
//! names; skips with a printed reason otherwise. The two runs are serialised
//! (they share loop devices and FUSE).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SCRIPT: &str = "/work/shared/tools/nbd-chain-test.sh";
static SERIAL: Mutex<()> = Mutex::new(());

fn chain_env_ok() -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.ok().as_deref() != Some("0") {
        eprintln!("SKIP: chain test needs root (losetup, mount)");
        return false;
    }
    for (path, why) in [
        (SCRIPT, "the chain test script"),
        ("/dev/fuse", "FUSE (/dev/fuse)"),
    ] {
        if !Path::new(path).exists() {
            eprintln!("SKIP: {why} missing at {path}");
            return false;
        }
    }
    for tool in ["nbdfuse", "nbdinfo", "fio", "mkfs.ext4", "losetup"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            eprintln!(
                "SKIP: {tool} not installed (apt-get install libnbd-bin fio e2fsprogs util-linux)"
            );
            return false;
        }
    }
    true
}

/// Runs the script; returns its last line and the full output.
fn run_chain(uri: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(SCRIPT).env("FIO_SECS", "5").env("SIZE", "512M");
    if let Some(u) = uri {
        cmd.arg(u);
    }
    let out = cmd.output().expect("run chain test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with("CHAIN-TEST:"))
        .unwrap_or("")
        .to_owned();
    (last, text)
}

fn memserve_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join("memserve");
    bin.exists().then_some(bin)
}

#[test]
fn chain_test_passes_against_nbdkit() {
    if !chain_env_ok() {
        return;
    }
    if Command::new("nbdkit").arg("--version").output().is_err() {
        eprintln!("SKIP: nbdkit not installed (apt-get install nbdkit)");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (last, text) = run_chain(None);
    eprintln!("{last}");
    assert!(
        last.starts_with("CHAIN-TEST: PASS"),
        "environment check against nbdkit failed:\n{text}"
    );
}

#[test]
fn chain_test_passes_against_memserve_example() {
    if !chain_env_ok() {
        return;
    }
    let Some(bin) = memserve_binary() else {
        eprintln!("SKIP: memserve example not built; run `cargo test -p drbdd-nbd` (builds examples) or `cargo build -p drbdd-nbd --examples`");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("nbd-chain")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let socket = dir.path().join("r0.sock");
    let mut child = Command::new(&bin)
        .args([
            "--socket",
            socket.to_str().expect("utf-8 path"),
            "--size",
            "1G",
            "--stdin-shutdown",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start memserve");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("READY line");
    assert!(ready.starts_with("READY"), "memserve said {ready:?}");

    let (last, text) = run_chain(Some(&format!("nbd+unix:///r0?socket={}", socket.display())));
    eprintln!("{last}");

    drop(child.stdin.take()); // EOF on stdin: memserve shuts its server down
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait memserve") {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        last.starts_with("CHAIN-TEST: PASS"),
        "chain test against memserve failed:\n{text}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "memserve did not shut down cleanly: {status:?}"
    );
    assert!(!socket.exists(), "memserve removed its socket on shutdown");
}
