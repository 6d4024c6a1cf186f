//! The pipeline over the real on-disk metadata: `MetaStore<FileMetaDevice>`
//! with internal metadata at the end of the same backing file. Proves the AL
//! transaction and peer bitmap bits land in real metadata, survive a reopen,
//! and that crash recovery marks logged extents out of sync.

use drbdd::backing::EngineKind;
use drbdd::metadev::FileMetaDevice;
use drbdd::pipeline::{recover_after_crash, Pipeline, PipelineConfig, AL_EXTENT_BYTES};
use drbdd_blockio::{AlignedBuf, BlockOp, BlockRequest, BlockSession, BlockTarget};
use drbdd_metadata::{layout_internal, CreateOptions, Layout, MetaStore};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const BACKING_BYTES: u64 = 128 << 20;

fn create_md(path: &Path) -> (Layout, MetaStore<FileMetaDevice>) {
    std::fs::File::create(path)
        .expect("create")
        .set_len(BACKING_BYTES)
        .expect("len");
    let layout = layout_internal(BACKING_BYTES, 2, 61).expect("layout");
    let dev = FileMetaDevice::open(path).expect("open md");
    let mut store = MetaStore::create(
        dev,
        layout,
        CreateOptions {
            node_id: 0,
            max_peers: 2,
            al_extents: 61,
        },
    )
    .expect("create md");
    store
        .update_superblock(|sb| sb.peers[0].node_id = Some(1))
        .expect("assign peer slot 0");
    (layout, store)
}

fn write(s: &Arc<dyn BlockSession>, offset_bytes: u64, len: usize, byte: u8) {
    let (tx, rx) = mpsc::channel();
    let req = BlockRequest {
        op: BlockOp::Write,
        offset_bytes,
        len_bytes: u32::try_from(len).expect("len"),
        fua: false,
    };
    s.submit(
        req,
        AlignedBuf::from_slice(&vec![byte; len]),
        Box::new(move |r| tx.send(r).expect("rx")),
    );
    rx.recv_timeout(Duration::from_secs(20))
        .expect("completes")
        .expect("write ok");
}

#[test]
fn writes_log_extents_and_set_peer_bits_in_real_metadata() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().join("r0.img");
    let (layout, store) = create_md(&path);
    let meta = Arc::new(Mutex::new(store));
    let mut cfg = PipelineConfig::new(path.clone(), layout.data_size_bytes);
    cfg.engine = EngineKind::UringOrSync;
    let pipeline = Pipeline::start(cfg, Arc::clone(&meta)).expect("start");
    assert_eq!(
        pipeline.peer_slots_disconnected(),
        vec![0],
        "slot 0 has a peer, slot 1 does not"
    );
    pipeline.set_role_allows_io(true);
    let s = pipeline.open("t", true).expect("open");
    write(&s, 0, 8192, 1);
    write(&s, 3 * AL_EXTENT_BYTES, 4096, 2);
    write(&s, 3 * AL_EXTENT_BYTES + 4096, 4096, 3);
    drop(s);
    pipeline.shutdown().expect("shutdown");
    let store = meta.lock().expect("meta");
    let mut logged = store.al_logged_extents();
    logged.sort_unstable();
    assert_eq!(
        logged,
        vec![0, 3],
        "both extents went through an AL transaction"
    );
    assert_eq!(
        store.bitmap_count(0),
        4,
        "2 + 1 + 1 granules out of sync for the disconnected peer"
    );
    assert_eq!(store.bitmap_count(1), 0, "unused slot untouched");
    drop(store);
    let reopened =
        MetaStore::open(FileMetaDevice::open(&path).expect("reopen"), layout).expect("open md");
    assert_eq!(reopened.bitmap_count(0), 4, "bits persisted by shutdown");
}

#[test]
fn recover_after_crash_marks_logged_extents_in_real_metadata() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().join("r0.img");
    let (layout, mut store) = create_md(&path);
    store.al_activate(&[2, 5]).expect("activate");
    store
        .update_superblock(|sb| sb.flags.primary = true)
        .expect("primary");
    drop(store); // "crash": never released, never cleared
    let mut store =
        MetaStore::open(FileMetaDevice::open(&path).expect("reopen"), layout).expect("open md");
    let rec = recover_after_crash(&mut store).expect("recovery");
    let mut extents = rec.extents.clone();
    extents.sort_unstable();
    assert_eq!(extents, vec![2, 5]);
    assert_eq!(rec.slots, vec![0]);
    assert_eq!(store.bitmap_count(0), 2 * (AL_EXTENT_BYTES / 4096));
    assert!(!store.superblock().flags.primary && !store.superblock().flags.crashed_primary);
}
