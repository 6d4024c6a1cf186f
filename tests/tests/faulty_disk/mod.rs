//! A backing "device" that fails writes on demand, for the disk-error
//! tests: a file served by nbdkit's error filter and mounted as a file by
//! nbdfuse; every write fails with EIO exactly while a trigger file exists.
//! Callers check for nbdkit, nbdfuse and /dev/fuse first (and skip with a
//! printed reason without them).

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nbdkit (file plugin + error filter) and nbdfuse; stopped on drop.
#[derive(Debug)]
pub struct FaultyDisk {
    dir: tempfile::TempDir,
    kit: Child,
    fuse: Option<Child>,
}

impl FaultyDisk {
    pub fn start(size_bytes: u64) -> FaultyDisk {
        let dir = tempfile::Builder::new()
            .prefix("drbdd-dp-faulty-")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp");
        let under = dir.path().join("under.img");
        std::fs::File::create(&under)
            .unwrap()
            .set_len(size_bytes)
            .unwrap();
        let sock = dir.path().join("kit.sock");
        let kit = Command::new("nbdkit")
            .arg("-f")
            .arg("-U")
            .arg(&sock)
            .args(["--filter=error", "file"])
            .arg(&under)
            .args(["error-pwrite=EIO", "error-pwrite-rate=100%"])
            .arg(format!(
                "error-pwrite-file={}",
                dir.path().join("trigger").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nbdkit");
        wait_until("nbdkit socket", || sock.exists());
        let mnt = dir.path().join("fuse");
        std::fs::create_dir_all(&mnt).unwrap();
        let fuse = Command::new("nbdfuse")
            .arg(mnt.join("disk"))
            .arg(format!("nbd+unix:///?socket={}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nbdfuse");
        let disk = mnt.join("disk");
        wait_until("nbdfuse file", || {
            std::fs::metadata(&disk).is_ok_and(|m| m.len() == size_bytes)
        });
        FaultyDisk {
            dir,
            kit,
            fuse: Some(fuse),
        }
    }

    /// A scratch directory that lives as long as the disk.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("fuse/disk")
    }

    pub fn set_failing(&self, failing: bool) {
        let trigger = self.dir.path().join("trigger");
        if failing {
            std::fs::write(trigger, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(trigger);
        }
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path().join("fuse"))
            .status();
        if let Some(mut f) = self.fuse.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
        let _ = self.kit.kill();
        let _ = self.kit.wait();
    }
}

pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not appear"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
