//! A backing "device" that misbehaves on demand, for the disk-error tests:
//! a file served by nbdkit and mounted as a file by nbdfuse. With the error
//! filter ([`FaultyDisk::start`]) every write fails with EIO exactly while a
//! trigger file exists; with the pause filter ([`FaultyDisk::start_pausable`])
//! every request hangs between [`FaultyDisk::pause`] and
//! [`FaultyDisk::resume`]. Callers check for nbdkit, nbdfuse and /dev/fuse
//! first (and skip with a printed reason without them).

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when /dev/fuse, nbdkit, nbdfuse and qemu-io are all there;
/// otherwise prints why `test` skips.
pub fn available(test: &str) -> bool {
    if !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: {test}: /dev/fuse is missing");
        return false;
    }
    for tool in ["nbdkit", "nbdfuse", "qemu-io"] {
        if !drbdd_tests::on_path(tool) {
            eprintln!(
                "SKIP: {test}: {tool} is not installed (apt-get install nbdkit libnbd-bin qemu-utils)"
            );
            return false;
        }
    }
    true
}

/// nbdkit (file plugin + error filter) and nbdfuse; stopped on drop.
#[derive(Debug)]
pub struct FaultyDisk {
    dir: tempfile::TempDir,
    kit: Child,
    fuse: Option<Child>,
}

impl FaultyDisk {
    /// Writes fail while [`FaultyDisk::set_failing`] says so.
    pub fn start(size_bytes: u64) -> FaultyDisk {
        Self::start_filtered(size_bytes, |dir| {
            vec![
                "--filter=error".into(),
                "file".into(),
                dir.join("under.img").display().to_string(),
                "error-pwrite=EIO".into(),
                "error-pwrite-rate=100%".into(),
                format!("error-pwrite-file={}", dir.join("trigger").display()),
            ]
        })
    }

    /// Requests hang between [`FaultyDisk::pause`] and [`FaultyDisk::resume`].
    pub fn start_pausable(size_bytes: u64) -> FaultyDisk {
        Self::start_filtered(size_bytes, |dir| {
            vec![
                "--filter=pause".into(),
                "file".into(),
                dir.join("under.img").display().to_string(),
                format!("pause-control={}", dir.join("pause.sock").display()),
            ]
        })
    }

    fn start_filtered(
        size_bytes: u64,
        plugin_args: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> FaultyDisk {
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
            .args(plugin_args(dir.path()))
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

    /// Holds every request received from now on (pause filter); returns
    /// once the requests already running are done.
    pub fn pause(&self) {
        self.control(b'p', b'P');
    }

    /// Lets the held requests and new ones through again.
    pub fn resume(&self) {
        self.control(b'r', b'R');
    }

    fn control(&self, cmd: u8, answer: u8) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("pause.sock"))
            .expect("connect to nbdkit's pause-control socket");
        s.write_all(&[cmd]).unwrap();
        let mut got = [0u8; 1];
        s.read_exact(&mut got).unwrap();
        assert_eq!(
            got[0], answer,
            "nbdkit pause filter answered {:?}",
            got[0] as char
        );
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
