//! The backing I/O engines on their own: both engines execute more ops than
//! their queue depth (the hand-over queue), hand buffers back, and finish
//! queued work on shutdown. Files live under /tmp (O_DIRECT needs a real FS).

use drbdd::backing::{Backing, BackingOp, EngineKind};
use drbdd_blockio::AlignedBuf;
use std::sync::mpsc;
use std::time::Duration;

fn backing_file(size_bytes: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().join("b.img");
    std::fs::File::create(&path)
        .expect("create")
        .set_len(size_bytes)
        .expect("len");
    (dir, path)
}

#[test]
fn engines_run_more_ops_than_their_queue_depth() {
    for kind in [EngineKind::UringOrSync, EngineKind::Sync] {
        let (_dir, path) = backing_file(1 << 20);
        let backing = Backing::open(&path, kind, 4).expect("open");
        let (tx, rx) = mpsc::channel();
        for i in 0..200u8 {
            let tx = tx.clone();
            let buf = AlignedBuf::from_slice(&[i; 4096]);
            let op = BackingOp::Write {
                offset_bytes: u64::from(i) * 4096,
                buf,
                fua: i % 50 == 0,
            };
            backing.submit(
                op,
                Box::new(move |r| tx.send(r.map(|b| b.len())).expect("rx")),
            );
        }
        for _ in 0..200 {
            let len = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("completes")
                .expect("write ok");
            assert_eq!(len, 4096, "write buffer handed back");
        }
        for i in (0..200u8).step_by(13) {
            let (tx, rx) = mpsc::channel();
            let op = BackingOp::Read {
                offset_bytes: u64::from(i) * 4096,
                buf: AlignedBuf::zeroed(4096),
            };
            backing.submit(op, Box::new(move |r| tx.send(r).expect("rx")));
            let buf = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("completes")
                .expect("read ok");
            assert!(
                buf.as_slice().iter().all(|&b| b == i),
                "block {i} ({})",
                backing.engine_name()
            );
        }
        backing.shutdown();
    }
}

#[test]
fn shutdown_finishes_queued_ops_first() {
    for kind in [
        EngineKind::UringOrSync,
        EngineKind::PolledUringOrSync,
        EngineKind::Sync,
    ] {
        let (_dir, path) = backing_file(1 << 20);
        let backing = Backing::open(&path, kind, 2).expect("open");
        let (tx, rx) = mpsc::channel();
        for i in 0..64u64 {
            let tx = tx.clone();
            let op = BackingOp::Write {
                offset_bytes: i * 4096,
                buf: AlignedBuf::zeroed(4096),
                fua: false,
            };
            backing.submit(op, Box::new(move |r| tx.send(r.is_ok()).expect("rx")));
        }
        let tx2 = tx.clone();
        backing.submit(
            BackingOp::Flush,
            Box::new(move |r| tx2.send(r.is_ok()).expect("rx")),
        );
        backing.shutdown();
        drop(tx);
        let results: Vec<bool> = rx.iter().collect();
        assert_eq!(
            results.len(),
            65,
            "every queued op completed before shutdown returned"
        );
        assert!(results.iter().all(|&ok| ok));
    }
}

/// Polls `backing`'s completion fd and reaps until `rx` has `n` results.
fn reap_until<T>(backing: &Backing, rx: &mpsc::Receiver<T>, n: usize) -> Vec<T> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let fd = backing
        .completion_fd()
        .expect("a polled io_uring engine has a completion fd");
    let mut got = Vec::new();
    while got.len() < n {
        // The owner hands its pushed ops to the kernel before it sleeps.
        backing.submit_pushed();
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        let t = Timespec {
            tv_sec: 20,
            tv_nsec: 0,
        };
        let ready = poll(&mut fds, Some(&t)).expect("poll");
        assert_eq!(ready, 1, "no completion within 20 s ({} of {n})", got.len());
        backing.reap();
        got.extend(rx.try_iter());
    }
    got
}

#[test]
fn a_polled_engine_completes_on_the_reaping_thread_and_queues_beyond_its_depth() {
    let (_dir, path) = backing_file(1 << 20);
    let backing = Backing::open(&path, EngineKind::PolledUringOrSync, 4).expect("open");
    if backing.engine_name() != "io_uring" {
        println!("SKIP: io_uring unavailable, the polled engine fell back to sync");
        return;
    }
    let me = std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    for i in 0..200u8 {
        let tx = tx.clone();
        let op = BackingOp::Write {
            offset_bytes: u64::from(i) * 4096,
            buf: AlignedBuf::from_slice(&[i; 4096]),
            fua: i % 50 == 0,
        };
        backing.submit(
            op,
            Box::new(move |r| {
                let here = std::thread::current().id() == me;
                tx.send((r.map(|b| b.len()).ok(), here)).expect("rx");
            }),
        );
    }
    let results = reap_until(&backing, &rx, 200);
    assert!(
        results.iter().all(|(r, _)| r.is_some()),
        "every op succeeded"
    );
    assert!(
        results.iter().all(|(_, here)| *here),
        "callbacks ran on the reaping thread"
    );
    // A range op runs inline when reaped (the engine does not order ops:
    // it comes after the writes completed, as the pipeline would send it).
    backing.submit(
        BackingOp::WriteZeroes {
            offset_bytes: 199 * 4096,
            len_bytes: 4096,
        },
        Box::new(move |r| {
            let here = std::thread::current().id() == me;
            tx.send((r.ok().map(|_| 0), here)).expect("rx");
        }),
    );
    let zeroed = reap_until(&backing, &rx, 1);
    assert!(matches!(zeroed[..], [(Some(0), true)]), "zero-out ran here");
    let (tx, rx) = mpsc::channel();
    for i in [0u8, 77, 198, 199] {
        let tx = tx.clone();
        let op = BackingOp::Read {
            offset_bytes: u64::from(i) * 4096,
            buf: AlignedBuf::zeroed(4096),
        };
        backing.submit(
            op,
            Box::new(move |r| tx.send((i, r.expect("read ok"))).expect("rx")),
        );
    }
    for (i, buf) in reap_until(&backing, &rx, 4) {
        let want = if i == 199 { 0 } else { i };
        assert!(
            buf.as_slice().iter().all(|&b| b == want),
            "block {i} holds what was written"
        );
    }
    backing.shutdown();
}

#[test]
fn open_of_missing_backing_names_the_path() {
    let path = std::path::Path::new("/tmp/drbdd-no-such-dir/backing.img");
    let err = Backing::open(path, EngineKind::Sync, 4).expect_err("missing file");
    assert!(
        err.to_string()
            .contains("/tmp/drbdd-no-such-dir/backing.img"),
        "{err}"
    );
}
