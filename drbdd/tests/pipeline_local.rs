//! The local request path of `drbdd::pipeline::Pipeline`, end to end on real
//! O_DIRECT files under /tmp: requests go through a `BlockSession`, data is
//! checked by reading the backing file, metadata effects (activity log,
//! bitmaps, crash flags) are checked on a recording `PipelineMeta` double.
//! Every data test runs on both engines (io_uring and sync). Direct reads
//! (the ublk frontend reading the backing fd on its own ring) are emulated
//! with a plain `pread` on the fd the pipeline hands out, direct writes
//! (the local leg of a write issued by the frontend) with a plain `pwrite`.

use drbdd::backing::EngineKind;
use drbdd::pipeline::{
    recover_after_crash, AlError, OnIoError, Pipeline, PipelineConfig, PipelineEvent, PipelineMeta,
    AL_EXTENT_BYTES,
};
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, BlockTarget, DirectRead,
    DirectWrite,
};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GRANULE_BYTES: u64 = 4096;
const DATA_BYTES: u64 = 64 << 20; // 16 AL extents
const WAIT: Duration = Duration::from_secs(20);

/// A `PipelineMeta` that records what the pipeline did.
#[derive(Debug)]
struct RecordingMeta {
    al_capacity: usize,
    active: HashMap<u64, usize>,
    logged: Vec<u64>,
    /// Extents newly logged per AL transaction, with the first 512 bytes of
    /// the extent's first write target as they were on disk at that moment.
    transactions: Vec<Vec<u64>>,
    al_full_count: usize,
    max_active: usize,
    bits: HashMap<usize, BTreeSet<u64>>,
    slots: Vec<usize>,
    crashed: bool,
    fail_al: bool,
    bitmap_flushes: usize,
    persists: usize,
    /// Backing file + offset to sample on each activation (AL-before-data check).
    probe: Option<(PathBuf, u64)>,
    probe_samples: Vec<Vec<u8>>,
}

impl RecordingMeta {
    fn new(al_capacity: usize, slots: Vec<usize>) -> Self {
        RecordingMeta {
            al_capacity,
            active: HashMap::new(),
            logged: Vec::new(),
            transactions: Vec::new(),
            al_full_count: 0,
            max_active: 0,
            bits: HashMap::new(),
            slots,
            crashed: false,
            fail_al: false,
            bitmap_flushes: 0,
            persists: 0,
            probe: None,
            probe_samples: Vec::new(),
        }
    }
}

impl PipelineMeta for RecordingMeta {
    fn al_activate(&mut self, extents: &[u64]) -> Result<(), AlError> {
        if self.fail_al {
            return Err(AlError::Failed("injected".into()));
        }
        let new_active = extents
            .iter()
            .filter(|e| !self.active.contains_key(e))
            .count();
        if self.active.len() + new_active > self.al_capacity {
            self.al_full_count += 1;
            return Err(AlError::Full);
        }
        let to_log: Vec<u64> = extents
            .iter()
            .copied()
            .filter(|e| !self.logged.contains(e))
            .collect();
        if !to_log.is_empty() {
            if let Some((path, offset)) = &self.probe {
                let data = std::fs::read(path).expect("probe read");
                let at = usize::try_from(*offset).expect("offset");
                self.probe_samples.push(data[at..at + 512].to_vec());
            }
            self.logged.extend(&to_log);
            self.transactions.push(to_log);
        }
        for e in extents {
            *self.active.entry(*e).or_insert(0) += 1;
        }
        self.max_active = self.max_active.max(self.active.len());
        Ok(())
    }

    fn al_activate_cached(&mut self, extents: &[u64]) -> bool {
        let new_active = extents
            .iter()
            .filter(|e| !self.active.contains_key(e))
            .count();
        let cached = !self.fail_al
            && extents.iter().all(|e| self.logged.contains(e))
            && self.active.len() + new_active <= self.al_capacity;
        if cached {
            for e in extents {
                *self.active.entry(*e).or_insert(0) += 1;
            }
            self.max_active = self.max_active.max(self.active.len());
        }
        cached
    }

    fn al_release(&mut self, extents: &[u64]) {
        for e in extents {
            let n = self.active.get_mut(e).expect("release of an active extent");
            *n -= 1;
            if *n == 0 {
                self.active.remove(e);
            }
        }
    }

    fn al_logged_extents(&self) -> Vec<u64> {
        self.logged.clone()
    }

    fn peer_slots_in_use(&self) -> Vec<usize> {
        self.slots.clone()
    }

    fn mark_out_of_sync(&mut self, slot: usize, offset_bytes: u64, len_bytes: u64) {
        let set = self.bits.entry(slot).or_default();
        for bit in offset_bytes / GRANULE_BYTES..(offset_bytes + len_bytes).div_ceil(GRANULE_BYTES)
        {
            set.insert(bit);
        }
    }

    fn flush_bitmap(&mut self) -> Result<(), String> {
        self.bitmap_flushes += 1;
        Ok(())
    }

    fn persist(&mut self) -> Result<(), String> {
        self.persists += 1;
        Ok(())
    }

    fn set_md_flushes(&mut self, _md_flushes: bool) {}

    fn needs_al_recovery(&self) -> bool {
        self.crashed
    }

    fn al_recovery_complete(&self) -> bool {
        true
    }

    fn clear_crash_flags(&mut self) -> Result<(), String> {
        self.crashed = false;
        Ok(())
    }

    fn data_size_bytes(&self) -> u64 {
        DATA_BYTES
    }
}

/// A backing file under /tmp (not tmpfs: O_DIRECT), removed on drop.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    meta: Arc<Mutex<RecordingMeta>>,
    pipeline: Arc<Pipeline>,
    events: Arc<Mutex<Vec<PipelineEvent>>>,
}

fn fixture(
    engine: EngineKind,
    tweak: impl FnOnce(&mut PipelineConfig, &mut RecordingMeta),
) -> Fixture {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir under /tmp");
    let path = dir.path().join("backing.img");
    let f = std::fs::File::create(&path).expect("create backing");
    f.set_len(DATA_BYTES + (1 << 20)).expect("size backing");
    let mut cfg = PipelineConfig::new(path.clone(), DATA_BYTES);
    cfg.engine = engine;
    cfg.queue_depth = 128;
    let mut meta = RecordingMeta::new(8, vec![0, 2]);
    tweak(&mut cfg, &mut meta);
    let meta = Arc::new(Mutex::new(meta));
    let pipeline = Pipeline::start(cfg, Arc::clone(&meta)).expect("pipeline starts");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    pipeline.set_event_sink(Box::new(move |e| sink.lock().expect("events").push(e)));
    pipeline.set_role_allows_io(true);
    Fixture {
        _dir: dir,
        path,
        meta,
        pipeline,
        events,
    }
}

fn engines() -> [EngineKind; 2] {
    [EngineKind::UringOrSync, EngineKind::Sync]
}

type Outcome = Result<AlignedBuf, BlockError>;

fn submit(
    s: &Arc<dyn BlockSession>,
    req: BlockRequest,
    buf: AlignedBuf,
) -> mpsc::Receiver<Outcome> {
    let (tx, rx) = mpsc::channel();
    s.submit(
        req,
        buf,
        Box::new(move |r| tx.send(r).expect("test receiver alive")),
    );
    rx
}

fn run(s: &Arc<dyn BlockSession>, req: BlockRequest, buf: AlignedBuf) -> Outcome {
    submit(s, req, buf)
        .recv_timeout(WAIT)
        .expect("request completes")
}

fn req(op: BlockOp, offset_bytes: u64, len_bytes: u32) -> BlockRequest {
    BlockRequest {
        op,
        offset_bytes,
        len_bytes,
        fua: false,
    }
}

/// `data` in a buffer shared as a ublk tag buffer is (`direct_write`).
fn shared(data: &[u8]) -> Arc<AlignedBuf> {
    Arc::new(AlignedBuf::from_slice(data))
}

fn pattern(seed: u64, len: usize) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(len);
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = u8::try_from((seed.wrapping_mul(31) + (i as u64 / 7)) % 251).expect("fits") ^ 0x5a;
    }
    b
}

fn write(s: &Arc<dyn BlockSession>, offset_bytes: u64, data: &AlignedBuf) -> Outcome {
    let len = u32::try_from(data.len()).expect("len");
    run(s, req(BlockOp::Write, offset_bytes, len), data.clone())
}

fn read(s: &Arc<dyn BlockSession>, offset_bytes: u64, len: u32) -> Vec<u8> {
    let len_usize = usize::try_from(len).expect("len");
    run(
        s,
        req(BlockOp::Read, offset_bytes, len),
        AlignedBuf::zeroed(len_usize),
    )
    .expect("read ok")
    .as_slice()
    .to_vec()
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let data = std::fs::read(path).expect("read backing");
    let at = usize::try_from(offset).expect("offset");
    data[at..at + len].to_vec()
}

#[test]
fn read_write_round_trip_through_session() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("test #1", true).expect("open");
        for (i, &(off, len)) in [
            (0u64, 4096usize),
            (512, 512),
            (1 << 20, 65536),
            (DATA_BYTES - 8192, 8192),
        ]
        .iter()
        .enumerate()
        {
            let data = pattern(i as u64 + 1, len);
            write(&s, off, &data).expect("write ok");
            let len32 = u32::try_from(len).expect("len");
            assert_eq!(
                read(&s, off, len32),
                data.as_slice(),
                "read back at {off} ({engine:?})"
            );
            assert_eq!(
                file_bytes(&fx.path, off, len),
                data.as_slice(),
                "on disk at {off}"
            );
        }
        fx.pipeline.shutdown().expect("shutdown");
    }
}

#[test]
fn flush_makes_writes_durable_and_flushes_bitmap_with_md_flushes() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("t", true).expect("open");
        write(&s, 0, &pattern(3, 4096)).expect("write");
        run(&s, req(BlockOp::Flush, 0, 0), AlignedBuf::empty()).expect("flush ok");
        assert!(
            fx.meta.lock().expect("meta").bitmap_flushes >= 1,
            "md-flushes: bitmap written on flush"
        );
        assert_eq!(file_bytes(&fx.path, 0, 4096), pattern(3, 4096).as_slice());
    }
}

#[test]
fn flush_without_disk_flushes_still_completes() {
    let fx = fixture(EngineKind::UringOrSync, |c, _| {
        c.disk_flushes = false;
        c.md_flushes = false;
    });
    let s = fx.pipeline.open("t", true).expect("open");
    run(&s, req(BlockOp::Flush, 0, 0), AlignedBuf::empty()).expect("flush ok");
    assert_eq!(fx.meta.lock().expect("meta").bitmap_flushes, 0);
    assert!(!fx.pipeline.geometry().volatile_cache);
}

#[test]
fn fua_write_is_on_disk_when_it_completes() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("t", true).expect("open");
        let data = pattern(9, 8192);
        let mut r = req(BlockOp::Write, 4096, 8192);
        r.fua = true;
        run(&s, r, data.clone()).expect("fua write ok");
        assert_eq!(file_bytes(&fx.path, 4096, 8192), data.as_slice());
    }
}

#[test]
fn discard_reads_back_zeroes() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("t", true).expect("open");
        write(&s, 0, &pattern(5, 65536)).expect("write");
        run(&s, req(BlockOp::Discard, 4096, 16384), AlignedBuf::empty()).expect("discard ok");
        let back = read(&s, 0, 65536);
        assert!(
            back[4096..20480].iter().all(|&b| b == 0),
            "discarded range reads zero"
        );
        assert_eq!(
            &back[..4096],
            &pattern(5, 65536).as_slice()[..4096],
            "data before the range kept"
        );
        assert_eq!(
            &back[20480..],
            &pattern(5, 65536).as_slice()[20480..],
            "data after the range kept"
        );
    }
}

#[test]
fn write_zeroes_reads_back_zeroes() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("t", true).expect("open");
        write(&s, 1 << 20, &pattern(6, 32768)).expect("write");
        run(
            &s,
            req(BlockOp::WriteZeroes, (1 << 20) + 512, 8192),
            AlignedBuf::empty(),
        )
        .expect("write zeroes ok");
        let back = read(&s, 1 << 20, 32768);
        assert!(back[512..8704].iter().all(|&b| b == 0));
        assert_eq!(&back[8704..], &pattern(6, 32768).as_slice()[8704..]);
        assert_eq!(&back[..512], &pattern(6, 32768).as_slice()[..512]);
    }
}

#[test]
fn out_of_range_and_unaligned_requests_fail_with_einval() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let s = fx.pipeline.open("t", true).expect("open");
    let cases = [
        (req(BlockOp::Write, DATA_BYTES - 512, 1024), 1024usize),
        (req(BlockOp::Read, DATA_BYTES, 512), 512),
        (req(BlockOp::Write, 100, 512), 512),
        (req(BlockOp::Read, 0, 700), 700),
        (req(BlockOp::Discard, u64::MAX - 511, 512), 0),
        (req(BlockOp::WriteZeroes, DATA_BYTES - 512, 4096), 0),
    ];
    for (r, len) in cases {
        let err = run(&s, r, AlignedBuf::zeroed(len)).expect_err("must be refused");
        assert_eq!(err.errno(), libc::EINVAL, "{r:?} -> {err}");
    }
    let end = file_bytes(&fx.path, DATA_BYTES - 512, 512);
    assert!(
        end.iter().all(|&b| b == 0),
        "nothing was written by refused requests"
    );
    assert_eq!(fx.pipeline.in_flight(), 0);
}

#[test]
fn many_concurrent_requests_complete() {
    for engine in engines() {
        let fx = fixture(engine, |c, m| {
            c.queue_depth = 256;
            m.al_capacity = 64;
        });
        let s = fx.pipeline.open("t", true).expect("open");
        let (tx, rx) = mpsc::channel();
        for i in 0..256u64 {
            let tx = tx.clone();
            let off = i * 256 * 1024; // spread over all 16 extents
            s.submit(
                req(BlockOp::Write, off, 4096),
                pattern(i, 4096),
                Box::new(move |r| tx.send((i, r)).expect("rx")),
            );
        }
        for _ in 0..256 {
            let (i, r) = rx.recv_timeout(WAIT).expect("all 256 complete");
            r.unwrap_or_else(|e| panic!("write {i} failed: {e}"));
        }
        for i in (0..256u64).step_by(17) {
            assert_eq!(read(&s, i * 256 * 1024, 4096), pattern(i, 4096).as_slice());
        }
        assert_eq!(fx.pipeline.in_flight(), 0);
    }
}

/// Several frontend threads (NBD connections, ublk queues) submitting
/// overlapping writes at once: every write completes and no ordering
/// invariant trips (the sequence number used for ordering is taken under the
/// ordering lock, not earlier).
#[test]
fn concurrent_submitters_with_overlapping_writes_all_complete() {
    for engine in engines() {
        let fx = fixture(engine, |c, m| {
            c.queue_depth = 128;
            m.al_capacity = 64;
        });
        let s = fx.pipeline.open("t", true).expect("open");
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = Arc::clone(&s);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let tx = tx.clone();
                        let off = (i % 8) * 4096; // 8 blocks shared by all threads
                        s.submit(
                            req(BlockOp::Write, off, 4096),
                            pattern(t * 1000 + i, 4096),
                            Box::new(move |r| tx.send(r).expect("rx")),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("submitter thread must not panic");
        }
        for _ in 0..800 {
            rx.recv_timeout(WAIT)
                .expect("all writes complete")
                .expect("ok");
        }
        assert_eq!(fx.pipeline.in_flight(), 0);
    }
}

#[test]
fn overlapping_writes_land_in_submission_order() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("t", true).expect("open");
        // Hold the first write in the engine so the later ones must queue behind it.
        fx.pipeline.faults().set_hold_writes(true);
        let (tx, rx) = mpsc::channel();
        for i in 0..20u64 {
            let tx = tx.clone();
            let off = (i % 3) * 512; // all overlap 0..8192-ish
            s.submit(
                req(BlockOp::Write, off, 8192),
                pattern(100 + i, 8192),
                Box::new(move |r| tx.send((i, r)).expect("rx")),
            );
        }
        assert_eq!(
            fx.pipeline.faults().held_count(),
            1,
            "only the first overlapping write reached the engine"
        );
        fx.pipeline.faults().set_hold_writes(false);
        fx.pipeline.release_held_io();
        let order: Vec<u64> = (0..20)
            .map(|_| rx.recv_timeout(WAIT).expect("completes"))
            .map(|(i, r)| {
                r.expect("write ok");
                i
            })
            .collect();
        assert_eq!(
            order,
            (0..20).collect::<Vec<_>>(),
            "overlapping writes complete in submission order"
        );
        let mut model = vec![0u8; 8192 + 1024];
        for i in 0..20u64 {
            let off = usize::try_from((i % 3) * 512).expect("off");
            model[off..off + 8192].copy_from_slice(pattern(100 + i, 8192).as_slice());
        }
        assert_eq!(
            read(&s, 0, 8192 + 1024),
            model,
            "final content is the last submitted write per block"
        );
    }
}

#[test]
fn al_transaction_is_written_before_first_write_to_new_extent() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let off = 5 * AL_EXTENT_BYTES + 4096;
    fx.meta.lock().expect("meta").probe = Some((fx.path.clone(), off));
    let s = fx.pipeline.open("t", true).expect("open");
    write(&s, off, &pattern(1, 4096)).expect("write");
    write(&s, off + 4096, &pattern(2, 4096)).expect("second write, same extent");
    let m = fx.meta.lock().expect("meta");
    assert_eq!(
        m.transactions,
        vec![vec![5]],
        "one AL transaction, for extent 5 only"
    );
    assert!(
        m.probe_samples[0].iter().all(|&b| b == 0),
        "data was not on disk when the AL transaction was written"
    );
    assert!(
        m.active.is_empty(),
        "extent released after the write completed"
    );
    drop(m);
    assert_eq!(file_bytes(&fx.path, off, 4096), pattern(1, 4096).as_slice());
}

#[test]
fn writes_set_bitmap_bits_for_disconnected_peer_slots() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let s = fx.pipeline.open("t", true).expect("open");
    assert_eq!(
        fx.pipeline.peer_slots_disconnected(),
        vec![0, 2],
        "all configured slots start disconnected"
    );
    write(&s, 8192, &pattern(1, 12288)).expect("write"); // bits 2,3,4
    run(
        &s,
        req(BlockOp::Discard, 1 << 20, 4096),
        AlignedBuf::empty(),
    )
    .expect("discard");
    fx.pipeline.set_peer_slots_disconnected(vec![2]);
    write(&s, 512, &pattern(2, 512)).expect("write in bit 0"); // only slot 2
    let m = fx.meta.lock().expect("meta");
    let bits = |slot| {
        m.bits
            .get(&slot)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<u64>>()
    };
    assert_eq!(bits(0), vec![2, 3, 4, 256]);
    assert_eq!(bits(2), vec![0, 2, 3, 4, 256]);
    assert!(bits(1).is_empty(), "unused slot untouched");
}

#[test]
fn write_waits_while_activity_log_is_full_then_proceeds() {
    let fx = fixture(EngineKind::UringOrSync, |_, m| m.al_capacity = 1);
    let s = fx.pipeline.open("t", true).expect("open");
    fx.pipeline.faults().set_hold_writes(true);
    let first = submit(&s, req(BlockOp::Write, 0, 4096), pattern(1, 4096));
    let second = submit(
        &s,
        req(BlockOp::Write, AL_EXTENT_BYTES, 4096),
        pattern(2, 4096),
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        fx.pipeline.faults().held_count(),
        1,
        "second write did not reach the disk"
    );
    assert!(
        fx.meta.lock().expect("meta").al_full_count >= 1,
        "second write found the AL full"
    );
    assert!(second.try_recv().is_err(), "second write still waiting");
    fx.pipeline.faults().set_hold_writes(false);
    fx.pipeline.release_held_io();
    first
        .recv_timeout(WAIT)
        .expect("first completes")
        .expect("ok");
    second
        .recv_timeout(WAIT)
        .expect("second completes")
        .expect("ok");
    let m = fx.meta.lock().expect("meta");
    assert_eq!(m.max_active, 1, "never more active extents than AL slots");
    assert_eq!(m.transactions, vec![vec![0], vec![1]]);
    drop(m);
    assert_eq!(read(&s, AL_EXTENT_BYTES, 4096), pattern(2, 4096).as_slice());
}

#[test]
fn recover_after_crash_marks_al_extents_out_of_sync() {
    let mut meta = RecordingMeta::new(8, vec![0, 3]);
    meta.logged = vec![2, 15];
    meta.crashed = true;
    let rec = recover_after_crash(&mut meta).expect("recovery");
    assert_eq!(rec.extents, vec![2, 15]);
    let per_extent = AL_EXTENT_BYTES / GRANULE_BYTES;
    for slot in [0, 3] {
        let bits = &meta.bits[&slot];
        assert_eq!(bits.len() as u64, 2 * per_extent);
        assert!(bits.contains(&(2 * per_extent)) && bits.contains(&(16 * per_extent - 1)));
    }
    assert!(!meta.crashed, "crash flag cleared after the bits were set");
    assert!(
        meta.bitmap_flushes >= 1,
        "bits persisted before clearing the flag"
    );
    let again = recover_after_crash(&mut meta).expect("second call");
    assert!(again.extents.is_empty(), "nothing to do without a crash");
}

#[test]
fn pass_on_io_error_returns_eio_and_keeps_disk() {
    let fx = fixture(EngineKind::UringOrSync, |c, _| {
        c.on_io_error = OnIoError::PassOn
    });
    let s = fx.pipeline.open("t", true).expect("open");
    fx.pipeline.faults().set_fail_writes(true);
    let err = write(&s, 0, &pattern(1, 4096)).expect_err("write fails");
    assert_eq!(err.errno(), libc::EIO);
    fx.pipeline.faults().set_fail_writes(false);
    assert!(!fx.pipeline.disk_failed());
    write(&s, 0, &pattern(2, 4096)).expect("disk still attached");
    let ev = fx.events.lock().expect("events").clone();
    assert!(
        matches!(
            ev.as_slice(),
            [PipelineEvent::IoErrorPassedOn {
                op: BlockOp::Write,
                offset_bytes: 0,
                ..
            }]
        ),
        "{ev:?}"
    );
    assert!(
        fx.meta.lock().expect("meta").active.is_empty(),
        "failed write released its AL extent"
    );
}

#[test]
fn detach_on_io_error_reports_disk_failed_and_fails_later_io() {
    let fx = fixture(EngineKind::UringOrSync, |c, _| {
        c.on_io_error = OnIoError::Detach
    });
    let s = fx.pipeline.open("t", true).expect("open");
    fx.pipeline.faults().set_fail_reads(true);
    assert_eq!(
        run(&s, req(BlockOp::Read, 0, 4096), AlignedBuf::zeroed(4096))
            .expect_err("eio")
            .errno(),
        libc::EIO
    );
    assert!(fx.pipeline.disk_failed());
    fx.pipeline.faults().set_fail_reads(false);
    assert_eq!(
        write(&s, 0, &pattern(1, 4096))
            .expect_err("detached")
            .errno(),
        libc::EIO
    );
    let ev = fx.events.lock().expect("events").clone();
    assert!(
        matches!(
            ev.as_slice(),
            [PipelineEvent::DiskFailed {
                policy: OnIoError::Detach,
                op: BlockOp::Read,
                ..
            }]
        ),
        "{ev:?}"
    );
}

#[test]
fn metadata_failure_fails_the_write_without_touching_data() {
    let fx = fixture(EngineKind::UringOrSync, |_, m| m.fail_al = true);
    let s = fx.pipeline.open("t", true).expect("open");
    assert_eq!(
        write(&s, 0, &pattern(1, 4096)).expect_err("eio").errno(),
        libc::EIO
    );
    assert!(file_bytes(&fx.path, 0, 4096).iter().all(|&b| b == 0));
    assert!(matches!(
        fx.events.lock().expect("events").as_slice(),
        [PipelineEvent::MetadataFailed { .. }]
    ));
}

#[test]
fn open_refused_when_role_does_not_allow_io() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    fx.pipeline.set_role_allows_io(false);
    let err = fx.pipeline.open("mount", true).expect_err("refused");
    assert!(matches!(err, BlockError::ReadOnly(_)), "{err:?}");
    assert_eq!(err.errno(), libc::EROFS);
}

#[test]
fn open_clients_names_sessions_until_dropped() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let a = fx
        .pipeline
        .open("nbd unix:/run/drbdd/r0.nbd #1", true)
        .expect("open a");
    let b = fx.pipeline.open("ublk /dev/ublkb0", false).expect("open b");
    assert_eq!(
        fx.pipeline.open_clients(),
        vec!["nbd unix:/run/drbdd/r0.nbd #1", "ublk /dev/ublkb0"]
    );
    assert_eq!(
        write(&b, 0, &pattern(1, 512))
            .expect_err("read-only session")
            .errno(),
        libc::EROFS
    );
    drop(a);
    assert_eq!(fx.pipeline.open_clients(), vec!["ublk /dev/ublkb0"]);
    drop(b);
    assert!(fx.pipeline.open_clients().is_empty());
}

#[test]
fn shutdown_drains_persists_and_refuses_new_requests() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let s = fx.pipeline.open("t", true).expect("open");
    let pending: Vec<_> = (0..32u64)
        .map(|i| submit(&s, req(BlockOp::Write, i * 8192, 4096), pattern(i, 4096)))
        .collect();
    fx.pipeline.shutdown().expect("shutdown");
    for rx in pending {
        rx.try_recv()
            .expect("completed before shutdown returned")
            .expect("ok");
    }
    assert!(fx.meta.lock().expect("meta").persists >= 1);
    assert_eq!(
        write(&s, 0, &pattern(1, 512)).expect_err("stopped").errno(),
        libc::ESHUTDOWN
    );
}

#[test]
fn backing_smaller_than_data_area_is_refused() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().join("small.img");
    std::fs::File::create(&path)
        .expect("create")
        .set_len(1 << 20)
        .expect("len");
    let meta = Arc::new(Mutex::new(RecordingMeta::new(8, vec![0])));
    let err = Pipeline::start(PipelineConfig::new(path, 2 << 20), meta).expect_err("too small");
    assert!(err.to_string().contains("needs 2097152"), "{err}");
}

#[test]
fn io_uring_engine_runs_when_the_kernel_has_it() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    if fx.pipeline.engine_name() != "io_uring" {
        eprintln!("SKIP: io_uring unavailable here; the sync engine ran the other tests");
        return;
    }
    let sync = fixture(EngineKind::Sync, |_, _| {});
    assert_eq!(sync.pipeline.engine_name(), "sync");
}

/// Rough throughput probe, not a correctness test: `DRBDD_MEASURE=1 cargo test
/// -p drbdd --test pipeline_local measure -- --nocapture`. Keeps 128 requests of
/// 4 KiB in flight for one second per engine and prints IOPS (every request
/// must still complete successfully). Timed, so off by default.
#[test]
fn measure_4k_iops_at_queue_depth_128() {
    if std::env::var_os("DRBDD_MEASURE").is_none() {
        eprintln!(
            "SKIP: throughput probe runs only with DRBDD_MEASURE=1 (benches/ measures speed)"
        );
        return;
    }
    for engine in engines() {
        for op in [BlockOp::Write, BlockOp::Read] {
            let fx = fixture(engine, |c, m| {
                c.queue_depth = 128;
                m.al_capacity = 64;
            });
            let s = fx.pipeline.open("bench", true).expect("open");
            let (tx, rx) = mpsc::channel::<Outcome>();
            let issue = |i: u64| {
                let tx = tx.clone();
                let off = (i.wrapping_mul(2_654_435_761) % (DATA_BYTES / 4096)) * 4096;
                s.submit(
                    req(op, off, 4096),
                    AlignedBuf::zeroed(4096),
                    Box::new(move |r| tx.send(r).expect("rx")),
                );
            };
            let start = std::time::Instant::now();
            let mut issued = 0u64;
            while issued < 128 {
                issue(issued);
                issued += 1;
            }
            let mut completed = 0u64;
            while start.elapsed() < Duration::from_secs(1) {
                rx.recv_timeout(WAIT).expect("completes").expect("ok");
                completed += 1;
                issue(issued);
                issued += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            for _ in completed..issued {
                rx.recv_timeout(WAIT).expect("drain").expect("ok");
            }
            eprintln!(
                "{engine:?} {op:?} 4k qd128: {:.0} IOPS",
                completed as f64 / secs
            );
        }
    }
}

/// A loop device over a file under /tmp, detached on drop.
struct LoopDevice {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    fn new(size_bytes: u64) -> Option<LoopDevice> {
        let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
        let img = dir.path().join("loop.img");
        std::fs::File::create(&img)
            .expect("create")
            .set_len(size_bytes)
            .expect("len");
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIP: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Some(LoopDevice { dev, _dir: dir })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

#[test]
fn block_device_backing_discards_and_zeroes_via_ioctls() {
    let Some(lo) = LoopDevice::new(DATA_BYTES) else {
        eprintln!("SKIP: no loop device (needs root and loop support)");
        return;
    };
    let mut md =
        drbdd::metadev::FileMetaDevice::open(&lo.dev).expect("open loop as metadata device");
    assert_eq!(md.size_bytes(), DATA_BYTES, "BLKGETSIZE64 size");
    md.flush().expect("fdatasync on a block device");
    drop(md);
    let opened = drbdd::backing::BackingFile::open(&lo.dev).expect("open the loop device");
    assert!(
        opened.zeroes_cheaply(),
        "a loop device on ext4 has WRITE_ZEROES (sysfs write_zeroes_max_bytes > 0), so discard is offered"
    );
    drop(opened);
    for engine in engines() {
        let meta = Arc::new(Mutex::new(RecordingMeta::new(8, vec![0])));
        let pipeline = Pipeline::start(
            PipelineConfig {
                engine,
                ..PipelineConfig::new(lo.dev.clone(), DATA_BYTES)
            },
            meta,
        )
        .expect("pipeline on a block device");
        pipeline.set_role_allows_io(true);
        let s = pipeline.open("t", true).expect("open");
        write(&s, 0, &pattern(7, 65536)).expect("write");
        run(
            &s,
            req(BlockOp::WriteZeroes, 4096, 8192),
            AlignedBuf::empty(),
        )
        .expect("BLKZEROOUT");
        run(&s, req(BlockOp::Discard, 32768, 8192), AlignedBuf::empty()).expect("discard");
        let back = read(&s, 0, 65536);
        assert!(
            back[4096..12288].iter().all(|&b| b == 0),
            "zeroed range reads zero ({engine:?})"
        );
        assert!(
            back[32768..40960].iter().all(|&b| b == 0),
            "discarded range reads zero ({engine:?})"
        );
        assert_eq!(
            &back[12288..32768],
            &pattern(7, 65536).as_slice()[12288..32768]
        );
        run(&s, req(BlockOp::Flush, 0, 0), AlignedBuf::empty()).expect("flush");
        pipeline.shutdown().expect("shutdown");
    }
}

#[test]
fn random_overlapping_writes_end_as_if_applied_in_submission_order() {
    const SPAN_BYTES: u64 = 256 * 1024;
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("t", true).expect("open");
        let mut model = vec![0u8; usize::try_from(SPAN_BYTES).expect("span")];
        let (tx, rx) = mpsc::channel::<Outcome>();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let count = 2000u64;
        for i in 0..count {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let sectors = 1 + rng % 64;
            let start = (rng >> 20) % (SPAN_BYTES / 512 - sectors);
            let (off, len) = (start * 512, usize::try_from(sectors * 512).expect("len"));
            let data = pattern(i, len);
            let at = usize::try_from(off).expect("off");
            let op = if rng.is_multiple_of(10) {
                BlockOp::WriteZeroes
            } else {
                BlockOp::Write
            };
            if op == BlockOp::Write {
                model[at..at + len].copy_from_slice(data.as_slice());
            } else {
                model[at..at + len].fill(0);
            }
            let buf = if op == BlockOp::Write {
                data
            } else {
                AlignedBuf::empty()
            };
            let tx = tx.clone();
            let len32 = u32::try_from(len).expect("len");
            s.submit(
                req(op, off, len32),
                buf,
                Box::new(move |r| tx.send(r).expect("rx")),
            );
        }
        for _ in 0..count {
            rx.recv_timeout(WAIT).expect("completes").expect("ok");
        }
        let span32 = u32::try_from(SPAN_BYTES).expect("span");
        assert!(
            read(&s, 0, span32) == model,
            "content differs from submission-order model ({engine:?})"
        );
    }
}

/// Adds one peer leg per write and parks the handles for the test to complete.
#[derive(Debug, Default)]
struct ParkingReplicator {
    legs: Mutex<Vec<(BlockRequest, Vec<u8>, drbdd::pipeline::LegHandle)>>,
    /// Where the data of each write handed over shared lives.
    shared_at: Mutex<Vec<usize>>,
}

impl drbdd::pipeline::Replicator for ParkingReplicator {
    fn replicate(&self, write: &mut drbdd::pipeline::ReplicatedWrite<'_>) {
        let handle = write.add_peer_leg(1);
        if let drbdd::pipeline::WriteData::Shared(buf) = write.data {
            let at = buf.as_ptr() as usize;
            self.shared_at.lock().expect("shared_at").push(at);
        }
        self.legs
            .lock()
            .expect("legs")
            .push((write.req, write.data.as_slice().to_vec(), handle));
    }
}

#[test]
fn write_completes_only_after_every_leg_including_peers() {
    use drbdd::pipeline::{Leg, LegOutcome};
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    fx.pipeline.set_peer_slots_disconnected(vec![]); // the peer is "connected"
    let repl = Arc::new(ParkingReplicator::default());
    fx.pipeline
        .set_replicator(Some(repl.clone() as Arc<dyn drbdd::pipeline::Replicator>));
    let s = fx.pipeline.open("t", true).expect("open");
    let first = submit(&s, req(BlockOp::Write, 0, 4096), pattern(1, 4096));
    let second = submit(&s, req(BlockOp::Write, 8192, 4096), pattern(2, 4096));
    let deadline = std::time::Instant::now() + WAIT;
    while file_bytes(&fx.path, 0, 4096) != pattern(1, 4096).as_slice() {
        assert!(
            std::time::Instant::now() < deadline,
            "local leg never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(first.try_recv().is_err(), "write waits for its peer leg");
    let mut legs = std::mem::take(&mut *repl.legs.lock().expect("legs"));
    assert_eq!(legs.len(), 2);
    assert_eq!(
        legs[0].1,
        pattern(1, 4096).as_slice(),
        "replicator saw the data"
    );
    assert_eq!(legs[0].2.leg(), Leg::Peer(1));
    let (_, _, lost) = legs.pop().expect("second");
    let (_, _, acked) = legs.pop().expect("first");
    acked.complete(LegOutcome::Done);
    first.recv_timeout(WAIT).expect("completes").expect("ok");
    lost.complete(LegOutcome::PeerLost { slot: 2 });
    second
        .recv_timeout(WAIT)
        .expect("completes")
        .expect("ok despite the lost peer");
    let m = fx.meta.lock().expect("meta");
    assert!(
        m.bits.get(&0).is_none_or(|b| b.is_empty()),
        "connected slot 0 untouched"
    );
    assert_eq!(
        m.bits[&2].iter().copied().collect::<Vec<_>>(),
        vec![2],
        "lost peer's slot marks the write"
    );
}

/// What a frontend does with a [`DirectRead`]: one `pread` of the fd into an
/// O_DIRECT-aligned buffer. Returns the outcome to finish with and the data.
fn pread_direct(dr: &DirectRead, len: u32) -> (Result<u32, i32>, AlignedBuf) {
    let mut buf = AlignedBuf::zeroed(usize::try_from(len).expect("len"));
    let offset = libc::off_t::try_from(dr.offset_bytes()).expect("offset");
    // SAFETY: `buf` is a live, writable allocation of `buf.len()` bytes for
    // the whole call; `dr` keeps the fd open.
    let n = unsafe { libc::pread(dr.fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
    let outcome = u32::try_from(n).map_err(|_| {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    });
    (outcome, buf)
}

#[test]
fn direct_read_returns_written_bytes_and_is_in_flight_until_finished() {
    for engine in engines() {
        let fx = fixture(engine, |_, _| {});
        let s = fx.pipeline.open("ublk /dev/ublkb0", true).expect("open");
        let data = pattern(7, 8192);
        write(&s, 1 << 20, &data).expect("write");
        let dr = s
            .direct_read(&req(BlockOp::Read, 1 << 20, 8192))
            .expect("a Primary with a healthy disk reads directly");
        assert_eq!(dr.offset_bytes(), 1 << 20, "data area starts at 0");
        assert_eq!(fx.pipeline.in_flight(), 1, "admitted like a submitted read");
        let (outcome, buf) = pread_direct(&dr, 8192);
        assert_eq!(outcome, Ok(8192));
        assert_eq!(buf.as_slice(), data.as_slice(), "{engine:?}");
        assert_eq!(dr.finish(outcome), Ok(()));
        assert_eq!(fx.pipeline.in_flight(), 0, "finish retires the read");
        assert!(!fx.pipeline.disk_failed());
    }
}

#[test]
fn direct_read_is_refused_unless_a_primary_reads_a_healthy_disk() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let s = fx.pipeline.open("t", true).expect("open");
    let read_4k = req(BlockOp::Read, 0, 4096);
    assert!(s.direct_read(&req(BlockOp::Write, 0, 4096)).is_none());
    assert!(s
        .direct_read(&req(BlockOp::Read, DATA_BYTES, 4096))
        .is_none());
    fx.pipeline.set_role_allows_io(false);
    assert!(s.direct_read(&read_4k).is_none(), "Secondary");
    fx.pipeline.set_role_allows_io(true);
    fx.pipeline.faults().set_fail_reads(true);
    assert!(
        s.direct_read(&read_4k).is_none(),
        "injected read faults take the engine path"
    );
    fx.pipeline.faults().set_fail_reads(false);
    assert_eq!(fx.pipeline.in_flight(), 0, "refusals admit nothing");
    fx.pipeline.shutdown().expect("shutdown");
    assert!(s.direct_read(&read_4k).is_none(), "stopping");
}

/// `Pipeline::shutdown` on another thread, checked to still be waiting for
/// an unfinished request, then to finish once that request is done.
struct StoppingPipeline {
    done: mpsc::Receiver<()>,
    stopper: std::thread::JoinHandle<Result<(), drbdd::pipeline::PipelineError>>,
}

impl StoppingPipeline {
    fn start(pipeline: &Arc<Pipeline>, pending: &str) -> Self {
        let pipeline = Arc::clone(pipeline);
        let (tx, done) = mpsc::channel();
        let stopper = std::thread::spawn(move || {
            let r = pipeline.shutdown();
            tx.send(()).expect("test alive");
            r
        });
        assert!(
            done.recv_timeout(Duration::from_millis(300)).is_err(),
            "shutdown returned with {pending} in flight"
        );
        StoppingPipeline { done, stopper }
    }

    fn finished(self) {
        self.done
            .recv_timeout(WAIT)
            .expect("shutdown drains after finish");
        self.stopper.join().expect("join").expect("shutdown ok");
    }
}

#[test]
fn shutdown_waits_for_an_unfinished_direct_read() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let s = fx.pipeline.open("t", true).expect("open");
    let dr = s.direct_read(&req(BlockOp::Read, 0, 4096)).expect("direct");
    let stopping = StoppingPipeline::start(&fx.pipeline, "a direct read");
    let (outcome, _) = pread_direct(&dr, 4096);
    assert_eq!(dr.finish(outcome), Ok(()));
    stopping.finished();
}

#[test]
fn dropping_an_unfinished_direct_read_retires_it_without_failing_the_disk() {
    let fx = fixture(EngineKind::UringOrSync, |_, _| {});
    let s = fx.pipeline.open("t", true).expect("open");
    let dr = s.direct_read(&req(BlockOp::Read, 0, 4096)).expect("direct");
    assert_eq!(fx.pipeline.in_flight(), 1);
    drop(dr);
    assert_eq!(fx.pipeline.in_flight(), 0);
    assert!(!fx.pipeline.disk_failed());
    assert!(fx.events.lock().expect("events").is_empty());
}

#[test]
fn failed_direct_read_follows_on_io_error_like_a_submitted_read() {
    let fx = fixture(EngineKind::UringOrSync, |c, _| {
        c.on_io_error = OnIoError::Detach
    });
    let s = fx.pipeline.open("t", true).expect("open");
    let dr = s
        .direct_read(&req(BlockOp::Read, 4096, 4096))
        .expect("direct");
    assert_eq!(dr.finish(Err(libc::EIO)), Err(BlockError::Io));
    assert!(fx.pipeline.disk_failed());
    assert_eq!(fx.pipeline.in_flight(), 0);
    assert!(
        s.direct_read(&req(BlockOp::Read, 0, 4096)).is_none(),
        "a detached disk is not read directly"
    );
    let ev = fx.events.lock().expect("events").clone();
    assert!(
        matches!(
            ev.as_slice(),
            [PipelineEvent::DiskFailed {
                policy: OnIoError::Detach,
                op: BlockOp::Read,
                offset_bytes: 4096,
                ..
            }]
        ),
        "{ev:?}"
    );
    let pass_on = fixture(EngineKind::UringOrSync, |c, _| {
        c.on_io_error = OnIoError::PassOn
    });
    let s = pass_on.pipeline.open("t", true).expect("open");
    let dr = s.direct_read(&req(BlockOp::Read, 0, 4096)).expect("direct");
    assert_eq!(dr.finish(Ok(512)), Err(BlockError::Io), "short read");
    assert!(!pass_on.pipeline.disk_failed(), "pass_on keeps the disk");
    assert!(s.direct_read(&req(BlockOp::Read, 0, 4096)).is_some());
}

/// What a frontend does with a [`DirectWrite`]: one `pwrite` of `data` to
/// the fd. Returns the outcome to finish with.
fn pwrite_direct(dw: &DirectWrite, data: &AlignedBuf) -> Result<u32, i32> {
    let offset = libc::off_t::try_from(dw.offset_bytes()).expect("offset");
    // SAFETY: `data` is a live allocation of `data.len()` bytes for the whole
    // call; `dw` keeps the fd open.
    let n = unsafe { libc::pwrite(dw.fd(), data.as_ptr().cast(), data.len(), offset) };
    u32::try_from(n).map_err(|_| {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    })
}

/// Finishes `dw` with `outcome`; the receiver gets the request's completion.
fn finish_direct(dw: DirectWrite, outcome: Result<u32, i32>) -> mpsc::Receiver<Outcome> {
    let (tx, rx) = mpsc::channel();
    dw.finish(
        outcome,
        Box::new(move |r| tx.send(r).expect("test receiver alive")),
    );
    rx
}

/// A fixture whose AL already holds extent 0 (a submitted write logged it),
/// so writes there may go direct; every peer connected (no bits set yet).
fn direct_fixture(engine: EngineKind, on_io_error: OnIoError) -> (Fixture, Arc<dyn BlockSession>) {
    let fx = fixture(engine, |c, _| c.on_io_error = on_io_error);
    fx.pipeline.set_peer_slots_disconnected(vec![]);
    let s = fx.pipeline.open("ublk /dev/ublkb0", true).expect("open");
    write(&s, 0, &pattern(0, 4096)).expect("logs extent 0");
    (fx, s)
}

#[test]
fn direct_write_lands_on_disk_and_completes_when_finished() {
    for engine in engines() {
        let (fx, s) = direct_fixture(engine, OnIoError::Detach);
        fx.pipeline.set_peer_slots_disconnected(vec![2]);
        let data = pattern(9, 8192);
        let mut fua = req(BlockOp::Write, 1 << 20, 8192);
        fua.fua = true;
        let dw = s
            .direct_write(&fua, &shared(data.as_slice()))
            .expect("an active extent with nothing in flight goes direct");
        assert_eq!(dw.offset_bytes(), 1 << 20, "data area starts at 0");
        assert!(dw.dsync(), "FUA with disk-flushes: RWF_DSYNC");
        assert_eq!(
            fx.pipeline.in_flight(),
            1,
            "admitted like a submitted write"
        );
        let outcome = pwrite_direct(&dw, &data);
        assert_eq!(outcome, Ok(8192));
        let done = finish_direct(dw, outcome);
        let buf = done.try_recv().expect("standalone: done inside finish");
        assert_eq!(
            buf.expect("ok").len(),
            0,
            "the pipeline never owned the data"
        );
        assert_eq!(fx.pipeline.in_flight(), 0);
        assert_eq!(
            file_bytes(&fx.path, 1 << 20, 8192),
            data.as_slice(),
            "{engine:?}"
        );
        assert_eq!(read(&s, 1 << 20, 8192), data.as_slice());
        let m = fx.meta.lock().expect("meta");
        assert_eq!(
            m.bits[&2].iter().copied().collect::<Vec<_>>(),
            vec![256, 257],
            "disconnected peer slot marks the direct write"
        );
        assert!(m.active.is_empty(), "AL extent released");
    }
}

#[test]
fn direct_write_is_refused_unless_nothing_has_to_wait() {
    let (fx, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::Detach);
    let d4k = pattern(3, 4096);
    let write_4k = req(BlockOp::Write, 4096, 4096);
    for op in [
        BlockOp::Read,
        BlockOp::Flush,
        BlockOp::Discard,
        BlockOp::WriteZeroes,
    ] {
        assert!(
            s.direct_write(&req(op, 4096, 4096), &shared(d4k.as_slice()))
                .is_none(),
            "{op:?}"
        );
    }
    assert!(
        s.direct_write(&write_4k, &shared(&d4k.as_slice()[..512]))
            .is_none(),
        "length mismatch"
    );
    assert!(
        s.direct_write(
            &req(BlockOp::Write, DATA_BYTES, 4096),
            &shared(d4k.as_slice())
        )
        .is_none(),
        "out of range"
    );
    let other_extent = req(BlockOp::Write, 3 * AL_EXTENT_BYTES, 4096);
    assert!(
        s.direct_write(&other_extent, &shared(d4k.as_slice()))
            .is_none(),
        "an extent not yet in the AL needs a transaction"
    );
    assert_eq!(fx.pipeline.in_flight(), 0, "refusals admit nothing");
    // The refused write's range is free: a submitted write there completes.
    write(&s, 3 * AL_EXTENT_BYTES, &d4k).expect("submit path");
    assert!(
        s.direct_write(&other_extent, &shared(d4k.as_slice()))
            .is_some_and(|dw| {
                let outcome = pwrite_direct(&dw, &d4k);
                finish_direct(dw, outcome).try_recv().is_ok()
            }),
        "logged now"
    );
    let first = s
        .direct_write(&write_4k, &shared(d4k.as_slice()))
        .expect("direct");
    let overlapping = req(BlockOp::Write, 0, 8192);
    assert!(
        s.direct_write(&overlapping, &shared(pattern(4, 8192).as_slice()))
            .is_none(),
        "an overlapping write in flight"
    );
    assert!(
        s.direct_write(&req(BlockOp::Write, 8192, 4096), &shared(d4k.as_slice()))
            .is_some_and(|dw| {
                let outcome = pwrite_direct(&dw, &d4k);
                finish_direct(dw, outcome).try_recv().is_ok()
            }),
        "a disjoint one goes direct"
    );
    let outcome = pwrite_direct(&first, &d4k);
    finish_direct(first, outcome)
        .try_recv()
        .expect("done")
        .expect("ok");
    let ro = fx.pipeline.open("ro", false).expect("open read-only");
    assert!(
        ro.direct_write(&write_4k, &shared(d4k.as_slice()))
            .is_none(),
        "read-only session"
    );
    fx.pipeline.faults().set_hold_writes(true);
    assert!(
        s.direct_write(&write_4k, &shared(d4k.as_slice())).is_none(),
        "write faults take the engine"
    );
    fx.pipeline.faults().set_hold_writes(false);
    fx.pipeline.set_role_allows_io(false);
    assert!(
        s.direct_write(&write_4k, &shared(d4k.as_slice())).is_none(),
        "Secondary"
    );
    fx.pipeline.set_role_allows_io(true);
    assert_eq!(fx.pipeline.in_flight(), 0);
    fx.pipeline.shutdown().expect("shutdown");
    assert!(
        s.direct_write(&write_4k, &shared(d4k.as_slice())).is_none(),
        "stopping"
    );
}

#[test]
fn a_write_overlapping_a_direct_write_waits_for_it() {
    let (fx, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::Detach);
    let (old, new) = (pattern(5, 4096), pattern(6, 4096));
    let dw = s
        .direct_write(&req(BlockOp::Write, 4096, 4096), &shared(old.as_slice()))
        .expect("direct");
    let later = submit(&s, req(BlockOp::Write, 4096, 4096), new.clone());
    assert!(
        later.recv_timeout(Duration::from_millis(200)).is_err(),
        "held behind the direct write"
    );
    let outcome = pwrite_direct(&dw, &old);
    finish_direct(dw, outcome)
        .try_recv()
        .expect("done")
        .expect("ok");
    later
        .recv_timeout(WAIT)
        .expect("starts after it")
        .expect("ok");
    assert_eq!(
        file_bytes(&fx.path, 4096, 4096),
        new.as_slice(),
        "submission order"
    );
}

#[test]
fn shutdown_waits_for_an_unfinished_direct_write() {
    let (fx, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::Detach);
    let data = pattern(8, 4096);
    let dw = s
        .direct_write(&req(BlockOp::Write, 4096, 4096), &shared(data.as_slice()))
        .expect("direct");
    let stopping = StoppingPipeline::start(&fx.pipeline, "a direct write");
    let outcome = pwrite_direct(&dw, &data);
    finish_direct(dw, outcome)
        .try_recv()
        .expect("done")
        .expect("ok");
    stopping.finished();
    assert_eq!(file_bytes(&fx.path, 4096, 4096), data.as_slice());
}

#[test]
fn failed_direct_write_follows_on_io_error_like_a_submitted_write() {
    let (fx, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::Detach);
    let data = pattern(2, 4096);
    let dw = s
        .direct_write(&req(BlockOp::Write, 4096, 4096), &shared(data.as_slice()))
        .expect("direct");
    let done = finish_direct(dw, Err(libc::EIO));
    assert_eq!(done.try_recv().expect("done").err(), Some(BlockError::Io));
    assert!(fx.pipeline.disk_failed());
    assert_eq!(fx.pipeline.in_flight(), 0);
    assert!(
        s.direct_write(&req(BlockOp::Write, 0, 4096), &shared(data.as_slice()))
            .is_none(),
        "a detached disk is not written directly"
    );
    let ev = fx.events.lock().expect("events").clone();
    assert!(
        matches!(
            ev.as_slice(),
            [PipelineEvent::DiskFailed {
                policy: OnIoError::Detach,
                op: BlockOp::Write,
                offset_bytes: 4096,
                ..
            }]
        ),
        "{ev:?}"
    );
    let (pass_on, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::PassOn);
    let dw = s
        .direct_write(&req(BlockOp::Write, 4096, 4096), &shared(data.as_slice()))
        .expect("direct");
    let done = finish_direct(dw, Ok(512));
    assert_eq!(
        done.try_recv().expect("done").err(),
        Some(BlockError::Io),
        "short write"
    );
    let dw = s
        .direct_write(&req(BlockOp::Write, 4096, 4096), &shared(data.as_slice()))
        .expect("pass_on keeps the disk");
    let done = finish_direct(dw, Err(libc::ENOSPC));
    assert_eq!(
        done.try_recv().expect("done").err(),
        Some(BlockError::NoSpace)
    );
    assert!(!pass_on.pipeline.disk_failed());
}

#[test]
fn an_abandoned_direct_write_marks_its_range_out_of_sync_without_failing_the_disk() {
    let (fx, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::Detach);
    let dw = s
        .direct_write(
            &req(BlockOp::Write, 8192, 4096),
            &shared(pattern(1, 4096).as_slice()),
        )
        .expect("direct");
    assert_eq!(fx.pipeline.in_flight(), 1);
    drop(dw);
    assert_eq!(fx.pipeline.in_flight(), 0);
    assert!(!fx.pipeline.disk_failed());
    assert!(fx.events.lock().expect("events").is_empty());
    let m = fx.meta.lock().expect("meta");
    for slot in [0, 2] {
        assert_eq!(
            m.bits[&slot].iter().copied().collect::<Vec<_>>(),
            vec![2],
            "unknown outcome: slot {slot} resyncs the range"
        );
    }
    assert!(m.active.is_empty(), "AL extent released");
}

#[test]
fn direct_write_still_replicates_and_completes_after_its_peer_leg() {
    use drbdd::pipeline::{Leg, LegOutcome};
    let (fx, s) = direct_fixture(EngineKind::UringOrSync, OnIoError::Detach);
    let repl = Arc::new(ParkingReplicator::default());
    fx.pipeline
        .set_replicator(Some(repl.clone() as Arc<dyn drbdd::pipeline::Replicator>));
    let data = pattern(11, 4096);
    let tag = shared(data.as_slice());
    let dw = s
        .direct_write(&req(BlockOp::Write, 4096, 4096), &tag)
        .expect("direct");
    let mut legs = std::mem::take(&mut *repl.legs.lock().expect("legs"));
    assert_eq!(legs.len(), 1, "peer leg created before the local write");
    assert_eq!(legs[0].1, data.as_slice(), "replicator saw the data");
    assert_eq!(
        *repl.shared_at.lock().expect("shared_at"),
        vec![tag.as_ptr() as usize],
        "the replicator got the tag buffer itself, not a copy"
    );
    assert_eq!(legs[0].2.leg(), Leg::Peer(1));
    let outcome = pwrite_direct(&dw, &data);
    let done = finish_direct(dw, outcome);
    assert!(
        done.recv_timeout(Duration::from_millis(200)).is_err(),
        "waits for the peer leg"
    );
    assert_eq!(fx.pipeline.in_flight(), 1);
    let (_, _, leg) = legs.pop().expect("leg");
    std::thread::spawn(move || leg.complete(LegOutcome::Done))
        .join()
        .expect("peer ack thread");
    assert_eq!(done.recv_timeout(WAIT).expect("done").expect("ok").len(), 0);
    assert_eq!(fx.pipeline.in_flight(), 0);
    assert_eq!(file_bytes(&fx.path, 4096, 4096), data.as_slice());
}

/// Per-request CPU of the direct paths (ublk's queue thread runs this for
/// every read and write): `DIRECT_COST_READS` direct reads, then
/// `DIRECT_COST_WRITES` direct writes, each admitted and finished without
/// the disk I/O itself. Run under `valgrind --tool=callgrind` with two counts;
/// the difference divided by the extra requests is the cost of one. In the
/// normal test run (200 each) it checks that many direct requests in a row
/// all complete and leave nothing in flight.
#[test]
fn measure_direct_request_cost() {
    let count = |var: &str| -> u32 {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    };
    let (reads, writes) = (count("DIRECT_COST_READS"), count("DIRECT_COST_WRITES"));
    // The sync engine: valgrind does not run io_uring (and the direct
    // paths do not use the engine).
    let (fx, s) = direct_fixture(EngineKind::Sync, OnIoError::Detach);
    let read_4k = req(BlockOp::Read, 4096, 4096);
    for _ in 0..reads {
        let dr = s.direct_read(&read_4k).expect("direct read");
        assert_eq!(dr.finish(Ok(4096)), Ok(()));
    }
    let data = pattern(1, 4096);
    let done = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let write_4k = req(BlockOp::Write, 4096, 4096);
    for _ in 0..writes {
        let dw = s
            .direct_write(&write_4k, &shared(data.as_slice()))
            .expect("direct write");
        let d = Arc::clone(&done);
        dw.finish(
            Ok(4096),
            Box::new(move |r| {
                assert!(r.is_ok());
                d.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        );
    }
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), writes);
    assert_eq!(fx.pipeline.in_flight(), 0);
}
