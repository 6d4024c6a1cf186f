//! The data path of one resource: the request [`Pipeline`] over the local
//! backing device and the NBD listeners that export it.
//!
//! Owns: activity-log crash recovery at attach, starting and stopping the
//! pipeline, the per-resource NBD servers (`<run-dir>/<res>.nbd`, mode 0600,
//! plus TCP when the node has `nbd-listen`), the export table entry (export
//! name = resource name), telling the actor when a client opens or closes the
//! device, and the device I/O counters of `drbdctl status --statistics`.
//!
//! Must never: change the resource's state (the actor feeds the core, e.g.
//! `Command::DiskFailed` for a failed disk), let a client do I/O while the
//! role forbids it (the pipeline gates opens and requests), or hold the
//! metadata lock while waiting for the pipeline.

use super::{refusal, Actor, ActorMsg, ActorTx, AdminError};
use crate::control::proto::{DeviceStats, ErrorKind};
use crate::metadev::FileMetaDevice;
use crate::pipeline::{
    self, AlError, OnIoError, Pipeline, PipelineConfig, PipelineEvent, PipelineMeta,
};
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockOp, BlockRequest, BlockSession, BlockTarget, Completion,
    DirectRead, DirectReadTally, DirectWrite, Geometry,
};
use drbdd_config::{Node, Resource};
use drbdd_metadata::{MetaError, MetaStore};
use drbdd_nbd::{ExportLookup, NbdServer, NbdServerHandle, ServerOptions};
use drbdd_replication::resource::Command;
use drbdd_replication::state::{DiskState, Role};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// How long a daemon stop waits for in-flight requests to drain.
const STOP_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The metadata store, shared between the actor and the pipeline.
pub(super) type SharedMeta = Arc<Mutex<CountedStore>>;

/// The metadata store as the pipeline uses it, counting the activity-log
/// transactions and bitmap write-outs for `status --statistics`
/// (`al-writes`, `bm-writes`). Derefs to the store for everything else.
#[derive(Debug)]
pub(super) struct CountedStore {
    store: MetaStore<FileMetaDevice>,
    al_writes: u64,
    bm_writes: u64,
}

impl std::ops::Deref for CountedStore {
    type Target = MetaStore<FileMetaDevice>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

impl std::ops::DerefMut for CountedStore {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.store
    }
}

impl PipelineMeta for CountedStore {
    fn al_activate(&mut self, extents: &[u64]) -> Result<(), AlError> {
        match MetaStore::al_activate(&mut self.store, extents) {
            Ok(act) => {
                self.al_writes += u64::from(act.transactions_written);
                Ok(())
            }
            Err(MetaError::AlFull { .. }) => Err(AlError::Full),
            Err(e) => Err(AlError::Failed(e.to_string())),
        }
    }
    fn al_activate_cached(&mut self, extents: &[u64]) -> bool {
        PipelineMeta::al_activate_cached(&mut self.store, extents)
    }
    fn al_release(&mut self, extents: &[u64]) {
        PipelineMeta::al_release(&mut self.store, extents);
    }
    fn al_logged_extents(&self) -> Vec<u64> {
        PipelineMeta::al_logged_extents(&self.store)
    }
    fn peer_slots_in_use(&self) -> Vec<usize> {
        self.store.peer_slots_in_use()
    }
    fn mark_out_of_sync(&mut self, slot: usize, offset_bytes: u64, len_bytes: u64) {
        self.store.mark_out_of_sync(slot, offset_bytes, len_bytes);
    }
    fn flush_bitmap(&mut self) -> Result<(), String> {
        self.bm_writes += 1;
        self.store.flush_bitmap()
    }
    fn persist(&mut self) -> Result<(), String> {
        self.store.persist()
    }
    fn set_md_flushes(&mut self, md_flushes: bool) {
        PipelineMeta::set_md_flushes(&mut self.store, md_flushes);
    }
    fn needs_al_recovery(&self) -> bool {
        self.store.needs_al_recovery()
    }
    fn al_recovery_complete(&self) -> bool {
        PipelineMeta::al_recovery_complete(&self.store)
    }
    fn clear_crash_flags(&mut self) -> Result<(), String> {
        self.store.clear_crash_flags()
    }
    fn data_size_bytes(&self) -> u64 {
        PipelineMeta::data_size_bytes(&self.store)
    }
}

/// The NBD export table of one resource (one entry at most: the resource).
type Exports = RwLock<HashMap<String, Arc<dyn BlockTarget>>>;

/// Locks the shared metadata store (a poisoned lock still holds valid data:
/// every metadata update is crash-safe on its own).
pub(super) fn lock_meta(meta: &SharedMeta) -> MutexGuard<'_, CountedStore> {
    meta.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Unix socket a resource's NBD export listens on.
pub(super) fn nbd_socket_path(run_dir: &Path, resource: &str) -> PathBuf {
    run_dir.join(format!("{resource}.nbd"))
}

/// At attach, before the state machine reads the superblock: if the node
/// stopped uncleanly, marks the logged activity-log extents out of sync for
/// every peer slot and clears the crash flags (see
/// [`pipeline::recover_after_crash`]).
pub(super) fn recover_after_crash(
    store: &mut MetaStore<FileMetaDevice>,
    resource: &str,
) -> Result<(), AdminError> {
    let rec = pipeline::recover_after_crash(store).map_err(|e| {
        (
            ErrorKind::Failed,
            format!("{resource}: activity-log recovery failed: {e}; check the metadata (drbdctl check-md {resource})"),
        )
    })?;
    if !rec.extents.is_empty() {
        tracing::warn!(
            resource,
            extents = rec.extents.len(),
            slots = ?rec.slots,
            "unclean stop: activity-log extents marked out of sync for the peers"
        );
    }
    Ok(())
}

/// The pipeline settings for `node` of `res` exporting `data_size_bytes`.
fn pipeline_config(res: &Resource, data_path: PathBuf, data_size_bytes: u64) -> PipelineConfig {
    let mut cfg = PipelineConfig::new(data_path, data_size_bytes);
    cfg.disk_flushes = res.disk.disk_flushes;
    cfg.md_flushes = res.disk.md_flushes;
    cfg.on_io_error = match res.disk.on_io_error {
        drbdd_config::OnIoError::Detach => OnIoError::Detach,
        drbdd_config::OnIoError::PassOn => OnIoError::PassOn,
        drbdd_config::OnIoError::CallLocalIoError => OnIoError::CallLocalIoError,
    };
    cfg
}

/// I/O counters of the local device as the frontends see it.
#[derive(Debug, Default)]
struct Counters {
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    upper_pending: AtomicU64,
}

/// The per-resource data path: NBD listeners and the export of the pipeline.
#[derive(Debug)]
pub(super) struct DataPath {
    resource: String,
    tx: ActorTx,
    counters: Arc<Counters>,
    exports: Arc<Exports>,
    servers: Vec<NbdServerHandle>,
    socket_path: Option<PathBuf>,
}

impl DataPath {
    /// Starts the NBD listeners `res` has on `node_name` (none when its
    /// frontends do not include nbd). The export appears once a disk is
    /// attached ([`DataPath::start_pipeline`]).
    pub(super) fn new(
        res: &Resource,
        node_name: &str,
        run_dir: &Path,
        tx: ActorTx,
    ) -> Result<Self, AdminError> {
        let mut dp = DataPath {
            resource: res.name.clone(),
            tx,
            counters: Arc::default(),
            exports: Arc::new(RwLock::new(HashMap::new())),
            servers: Vec::new(),
            socket_path: None,
        };
        let fronts = res.frontends_for(node_name);
        if !fronts.nbd {
            return Ok(dp);
        }
        let opts = ServerOptions {
            description: Some(format!("drbdd resource {}", res.name)),
            ..ServerOptions::default()
        };
        let exports: Arc<dyn ExportLookup> = dp.exports.clone();
        let path = nbd_socket_path(run_dir, &res.name);
        let unix = NbdServer::serve_unix(&path, Arc::clone(&exports), opts.clone())
            .map_err(|e| nbd_err(&res.name, &e))?;
        dp.servers.push(unix);
        dp.socket_path = Some(path);
        if let Some(addr) = fronts.nbd_tcp {
            let tcp =
                NbdServer::serve_tcp(addr, exports, opts).map_err(|e| nbd_err(&res.name, &e))?;
            dp.servers.push(tcp);
        }
        Ok(dp)
    }

    /// Opens the backing device of `node` through a new pipeline over `meta`,
    /// lets it take I/O when `primary`, and exports it.
    pub(super) fn start_pipeline(
        &self,
        res: &Resource,
        node: &Node,
        meta: &SharedMeta,
        primary: bool,
    ) -> Result<Arc<Pipeline>, AdminError> {
        let data_path = node.disk.clone().ok_or_else(|| {
            (
                ErrorKind::Failed,
                format!("{}: node {} is diskless", res.name, node.name),
            )
        })?;
        let data_size_bytes = lock_meta(meta).superblock().data_size_bytes;
        let cfg = pipeline_config(res, data_path, data_size_bytes);
        let pipeline = Pipeline::start(cfg, Arc::clone(meta)).map_err(|e| {
            (
                ErrorKind::Failed,
                format!("cannot attach {}: {e}", res.name),
            )
        })?;
        let tx = Mutex::new(self.tx.clone());
        pipeline.set_event_sink(Box::new(move |ev| {
            let tx = tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = tx.send(ActorMsg::Pipeline(ev));
        }));
        pipeline.set_role_allows_io(primary);
        let target: Arc<dyn BlockTarget> = Arc::new(TrackedTarget {
            pipeline: Arc::clone(&pipeline),
            tx: Some(self.tx.clone()),
            counters: Arc::clone(&self.counters),
        });
        self.exports
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.resource.clone(), target);
        tracing::info!(resource = %self.resource, engine = pipeline.engine_name(), "data path started");
        Ok(pipeline)
    }

    /// The pipeline for the node's own ublk device: I/O counted like NBD
    /// clients', the session not announced as an open client.
    pub(super) fn device_target(&self, pipeline: &Arc<Pipeline>) -> Arc<dyn BlockTarget> {
        Arc::new(TrackedTarget {
            pipeline: Arc::clone(pipeline),
            tx: None,
            counters: Arc::clone(&self.counters),
        })
    }

    /// Removes the export (new NBD clients are refused; open ones keep
    /// their sessions until they disconnect).
    pub(super) fn withdraw(&self) {
        self.exports
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.resource);
    }

    /// Stops the NBD listeners, closes every connection and removes the
    /// socket file. Idempotent.
    pub(super) fn stop_frontends(&mut self) {
        self.withdraw();
        for server in self.servers.drain(..) {
            server.shutdown();
        }
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The device counters for `drbdctl status --statistics`.
    pub(super) fn stats(
        &self,
        pipeline: Option<&Arc<Pipeline>>,
        meta: Option<&SharedMeta>,
    ) -> DeviceStats {
        let c = &self.counters;
        let (al_writes, bm_writes) = meta.map_or((0, 0), |m| {
            let m = lock_meta(m);
            (m.al_writes, m.bm_writes)
        });
        DeviceStats {
            al_writes,
            bm_writes,
            read_kib: c.read_bytes.load(Ordering::Relaxed) / 1024,
            written_kib: c.written_bytes.load(Ordering::Relaxed) / 1024,
            upper_pending: c.upper_pending.load(Ordering::Relaxed),
            lower_pending: pipeline.map_or(0, |p| u64::try_from(p.in_flight()).unwrap_or(0)),
        }
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        self.stop_frontends();
    }
}

impl Actor {
    /// The end of attach: crash recovery (before the state machine reads the
    /// superblock, so it sees the cleared crash flags), the core's `Attach`,
    /// then the pipeline over the now shared store. The core is restored if
    /// the pipeline cannot start.
    pub(super) fn attach_store(
        &mut self,
        mut store: MetaStore<FileMetaDevice>,
    ) -> Result<(), AdminError> {
        if self.store.is_some() || self.core.md.is_some() {
            return Err((
                ErrorKind::StateRefused,
                format!(
                    "{}: a disk is already attached (disk:{}); detach it first",
                    self.core.name, self.core.disk
                ),
            ));
        }
        recover_after_crash(&mut store, &self.core.name)?;
        let view = super::md::view_of(store.superblock());
        let saved = self.core.clone();
        self.core
            .handle(Command::Attach { md: view })
            .map_err(refusal)?;
        let meta: SharedMeta = Arc::new(Mutex::new(CountedStore {
            store,
            al_writes: 0,
            bm_writes: 0,
        }));
        let primary = self.core.role == Role::Primary;
        match self
            .data
            .start_pipeline(&self.res, self.local_node(), &meta, primary)
        {
            Ok(p) => {
                self.pipeline = Some(p);
                self.store = Some(meta);
                Ok(())
            }
            Err(e) => {
                self.core = saved;
                Err(e)
            }
        }
    }

    /// `CloseBacking` (detach, down): withdraws the export, drains and stops
    /// the pipeline (which persists bitmap and AL), closes the metadata.
    pub(super) fn close_backing(&mut self) {
        self.data.withdraw();
        if let Some(p) = self.pipeline.take() {
            if let Err(e) = p.shutdown() {
                tracing::warn!(resource = %self.core.name, error = %e, "data path did not stop cleanly");
            }
        }
        if let Some(store) = self.store.take() {
            if let Err(e) = lock_meta(&store).close_clean() {
                tracing::warn!(resource = %self.core.name, error = %e, "metadata not closed cleanly");
            }
        }
    }

    /// Daemon stop, first half: the NBD listeners and connections close on a
    /// helper thread while this thread keeps handling messages (requests in
    /// flight may wait for peer acknowledgements that only this thread
    /// processes); the helper then sends [`ActorMsg::FrontendsStopped`],
    /// whose handling persists and ends the actor. Returns true when the
    /// actor must end now (nothing to wait for).
    pub(super) fn begin_stop(&mut self, reply: SyncSender<()>) -> bool {
        self.data.withdraw();
        let servers = std::mem::take(&mut self.data.servers);
        let socket = self.data.socket_path.take();
        let tx = self.data.tx.clone();
        let stopper = move || {
            for server in servers {
                server.shutdown();
            }
            if let Some(path) = socket {
                let _ = std::fs::remove_file(path);
            }
            let _ = tx.send(ActorMsg::FrontendsStopped { reply });
        };
        let spawned = std::thread::Builder::new()
            .name(format!("drbdd-stop-{}", self.core.name))
            .spawn(stopper);
        match spawned {
            Ok(_) => false,
            Err(e) => {
                // The closure (with `reply`) is gone; the caller sees the
                // actor end without an answer, which it treats as stopped.
                tracing::error!(resource = %self.core.name, error = %e, "cannot start the stop thread; stopping inline");
                self.persist_on_stop();
                true
            }
        }
    }

    /// Daemon stop: the NBD listeners and connections go first (no new
    /// requests), then the pipeline drains and persists. The caller then
    /// writes the superblock.
    ///
    /// Writes still in flight may wait for peer acknowledgements that only
    /// this thread would process, so the peer links go first (their pending
    /// legs fail), and the pipeline drains on a helper thread for at most
    /// [`STOP_DRAIN_TIMEOUT`]; after that the daemon stops anyway without
    /// writing metadata, and the activity log, left unclean, is replayed at
    /// the next attach.
    pub(super) fn stop_data_path(&mut self) {
        self.data.stop_frontends();
        let Some(p) = self.pipeline.take() else {
            return;
        };
        self.peers = None;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("drbdd-stop-{}", self.core.name))
            .spawn(move || {
                let _ = done_tx.send(p.shutdown());
            });
        let result = match spawned {
            Ok(_) => done_rx.recv_timeout(STOP_DRAIN_TIMEOUT),
            Err(e) => Ok(Err(e.into())),
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(resource = %self.core.name, error = %e, "data path did not stop cleanly");
            }
            Err(_) => {
                // Not persisting anything keeps the crash flags on disk.
                self.store = None;
                tracing::error!(resource = %self.core.name, timeout_ms = STOP_DRAIN_TIMEOUT.as_millis(), "writes still in flight at stop; the activity log will be replayed at the next attach");
            }
        }
    }

    /// Before a demotion: closes the device to new opens; refused (and the
    /// gate opened again) while a client holds it open, naming the client.
    /// No open can slip in between the check and the demotion: the pipeline
    /// checks the role and records a session under one lock.
    pub(super) fn gate_for_demote(&self) -> Result<(), AdminError> {
        let Some(p) = self.pipeline.as_ref() else {
            return Ok(());
        };
        if self.core.role != Role::Primary {
            return Ok(());
        }
        p.set_role_allows_io(false);
        let clients = p.open_clients();
        if let Some(first) = clients.first() {
            p.set_role_allows_io(true);
            return Err((
                ErrorKind::StateRefused,
                format!(
                    "{}: device is held open by {first} ({} open session(s)); close it first",
                    self.core.name,
                    clients.len()
                ),
            ));
        }
        Ok(())
    }

    /// After a refused demotion: the gate follows the role again.
    pub(super) fn reopen_gate(&self) {
        if let Some(p) = self.pipeline.as_ref() {
            p.set_role_allows_io(self.core.role == Role::Primary);
        }
    }

    /// Reacts to the pipeline: a failed disk (on-io-error detach or
    /// call-local-io-error) or failed metadata I/O makes the resource Diskless.
    pub(super) fn on_pipeline_event(&mut self, ev: PipelineEvent) {
        tracing::warn!(resource = %self.core.name, event = ?ev, "pipeline event");
        let run_handler = match ev {
            PipelineEvent::DiskFailed { policy, .. } => policy == OnIoError::CallLocalIoError,
            // Like DRBD, a metadata I/O error detaches whatever on-io-error
            // says: activity log and bitmaps can no longer be trusted.
            PipelineEvent::MetadataFailed { .. } => {
                self.res.disk.on_io_error == drbdd_config::OnIoError::CallLocalIoError
            }
            PipelineEvent::IoErrorPassedOn { .. } => return,
        };
        self.fail_disk(run_handler);
    }

    /// A write replicated from a peer failed on our disk. Like DRBD, the
    /// on-io-error policy applies before the negative acknowledgement goes
    /// out (the caller feeds the completion next): the peers learn that our
    /// disk left UpToDate first, and a crash after the NegAck cannot bring
    /// this node back claiming data that lacks the write. `detach` and
    /// `call-local-io-error` detach (Diskless); `pass_on` keeps the disk but
    /// marks it Inconsistent (DRBD 9), persisted, until a resync repairs it
    /// (or detaches when even that metadata write fails).
    pub(super) fn peer_write_failed(&mut self) {
        tracing::error!(resource = %self.core.name, "a write replicated from a peer failed on the local disk");
        match self.res.disk.on_io_error {
            drbdd_config::OnIoError::Detach => self.fail_disk(false),
            drbdd_config::OnIoError::CallLocalIoError => self.fail_disk(true),
            drbdd_config::OnIoError::PassOn => {
                let consistent = matches!(
                    self.core.disk,
                    DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
                );
                if !consistent {
                    return;
                }
                self.core.disk = DiskState::Inconsistent;
                if let Some(md) = self.core.md.as_mut() {
                    md.consistent = false;
                    md.was_up_to_date = false;
                }
                if let Err(e) = self.try_persist_md() {
                    // As for any metadata I/O error (DRBD too): the disk
                    // cannot even record that it is inconsistent; detach.
                    tracing::error!(resource = %self.core.name, error = %e, "cannot record the disk as Inconsistent; detaching");
                    return self.fail_disk(false);
                }
                self.announce_disk_change();
            }
        }
    }

    /// Detaches a failed disk: the data path stops, the metadata is left
    /// alone, the resource becomes Diskless and the peers are told.
    fn fail_disk(&mut self, run_handler: bool) {
        if self.pipeline.is_none() && self.store.is_none() {
            return; // already detached (several requests failed at once)
        }
        if run_handler {
            run_local_io_error_handler(&self.res);
        }
        self.data.withdraw();
        if let Some(p) = self.pipeline.take() {
            // Draining may wait for peer legs that this thread completes, so
            // the pipeline stops on its own thread.
            let spawned = std::thread::Builder::new()
                .name(format!("drbdd-detach-{}", self.core.name))
                .spawn(move || {
                    let _ = p.shutdown();
                });
            if let Err(e) = spawned {
                tracing::error!(resource = %self.core.name, error = %e, "cannot stop the failed data path");
            }
        }
        // The metadata may sit on the failed device: no write, and the
        // activity log stays unclean so the next attach recovers it.
        self.store = None;
        // A failed disk is gone whatever the role (DRBD: Failed -> Diskless);
        // the core records it and has the peers told.
        if let Err(e) = self.step(Command::DiskFailed) {
            tracing::error!(resource = %self.core.name, error = ?e, "cannot record the failed disk");
        }
        tracing::error!(resource = %self.core.name, "local disk failed; resource is Diskless now (attach it again after repair)");
    }
}

fn nbd_err(resource: &str, e: &dyn std::fmt::Display) -> AdminError {
    (
        ErrorKind::Failed,
        format!("{resource}: cannot start the NBD frontend: {e}"),
    )
}

/// Runs the `local-io-error` handler (in the background; its exit status is logged).
fn run_local_io_error_handler(res: &Resource) {
    let Some(cmd) = res.handlers.local_io_error.clone() else {
        tracing::warn!(resource = %res.name, "on-io-error call-local-io-error but no local-io-error handler is configured");
        return;
    };
    let name = res.name.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("drbdd-handler-{name}"))
        .spawn(move || {
            let status = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .env("DRBD_RESOURCE", &name)
                .status();
            match status {
                Ok(s) => tracing::info!(resource = %name, handler = %cmd, %s, "local-io-error handler ran"),
                Err(e) => tracing::error!(resource = %name, handler = %cmd, error = %e, "local-io-error handler did not start"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(resource = %res.name, error = %e, "cannot start the local-io-error handler thread");
    }
}

/// The pipeline as frontends see it: I/O is counted and, for NBD clients,
/// opens and closes reach the actor (the core's list of open clients).
#[derive(Debug)]
struct TrackedTarget {
    pipeline: Arc<Pipeline>,
    /// `None` for the node's own ublk device: its session is not a client
    /// that holds the device open (a mount of it is, and the demote check
    /// looks at that), but its I/O still counts in `status --statistics`.
    tx: Option<ActorTx>,
    counters: Arc<Counters>,
}

impl BlockTarget for TrackedTarget {
    fn geometry(&self) -> Geometry {
        self.pipeline.geometry()
    }

    fn open(&self, client: &str, writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        let inner = self.pipeline.open(client, writable)?;
        if let Some(tx) = &self.tx {
            let _ = tx.send(ActorMsg::Session {
                client: client.to_owned(),
                open: true,
            });
        }
        Ok(Arc::new(TrackedSession {
            inner: Some(inner),
            client: client.to_owned(),
            tx: self.tx.clone(),
            counters: Arc::clone(&self.counters),
        }))
    }
}

#[derive(Debug)]
struct TrackedSession {
    /// Always `Some` until dropped (taken first in `drop` so the pipeline
    /// forgets the session before the actor hears of the close).
    inner: Option<Arc<dyn BlockSession>>,
    client: String,
    tx: Option<ActorTx>,
    counters: Arc<Counters>,
}

impl BlockSession for TrackedSession {
    fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
        let Some(inner) = self.inner.as_ref() else {
            return done(Err(BlockError::ShuttingDown));
        };
        let unbounded = matches!(req.op, BlockOp::Discard | BlockOp::WriteZeroes);
        if unbounded && req.len_bytes > MAX_RANGE_OP_BYTES {
            return submit_split(self, req, done);
        }
        let counters = Arc::clone(&self.counters);
        counters.upper_pending.fetch_add(1, Ordering::Relaxed);
        let (op, len) = (req.op, u64::from(req.len_bytes));
        inner.submit(
            req,
            buf,
            Box::new(move |result| {
                if result.is_ok() {
                    match op {
                        BlockOp::Read => counters.read_bytes.fetch_add(len, Ordering::Relaxed),
                        BlockOp::Write | BlockOp::WriteZeroes => {
                            counters.written_bytes.fetch_add(len, Ordering::Relaxed)
                        }
                        BlockOp::Flush | BlockOp::Discard => 0,
                    };
                }
                counters.upper_pending.fetch_sub(1, Ordering::Relaxed);
                done(result);
            }),
        );
    }

    /// The pipeline's direct read, counted like a submitted read when it
    /// finishes (the tally runs exactly once, after the pipeline's finish;
    /// no closure per read: this runs on the ublk queue thread).
    fn direct_read(&self, req: &BlockRequest) -> Option<DirectRead> {
        let inner = self.inner.as_ref()?.direct_read(req)?;
        self.counters.upper_pending.fetch_add(1, Ordering::Relaxed);
        let tally: Arc<dyn DirectReadTally> =
            Arc::clone(&self.counters) as Arc<dyn DirectReadTally>;
        Some(inner.tallied(tally))
    }

    /// The pipeline's direct write, counted like a submitted write when the
    /// request completes (the completion handed to `finish` is wrapped).
    fn direct_write(&self, req: &BlockRequest, data: &Arc<AlignedBuf>) -> Option<DirectWrite> {
        let inner = self.inner.as_ref()?.direct_write(req, data)?;
        let counters = Arc::clone(&self.counters);
        counters.upper_pending.fetch_add(1, Ordering::Relaxed);
        let len = u64::from(req.len_bytes);
        let fd = Arc::clone(inner.fd_handle());
        let (offset_bytes, dsync) = (inner.offset_bytes(), inner.dsync());
        Some(DirectWrite::new(
            fd,
            offset_bytes,
            dsync,
            Box::new(move |outcome, done| {
                inner.finish(
                    outcome,
                    Box::new(move |result| {
                        if result.is_ok() {
                            counters.written_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        counters.upper_pending.fetch_sub(1, Ordering::Relaxed);
                        done(result);
                    }),
                );
            }),
        ))
    }
}

impl DirectReadTally for Counters {
    fn read_finished(&self, outcome: Result<u32, i32>, result: &Result<(), BlockError>) {
        if let (Ok(()), Ok(n)) = (result, outcome) {
            self.read_bytes.fetch_add(u64::from(n), Ordering::Relaxed);
        }
        self.upper_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Discard and write-zeroes carry no data, so frontends send them as large
/// as the device; each piece is replicated as one data packet, so they are
/// cut to the largest packet a peer accepts.
const MAX_RANGE_OP_BYTES: u32 = drbdd_replication::wire::MAX_DATA_BYTES;

/// Submits a large discard/write-zeroes as pieces of at most
/// [`MAX_RANGE_OP_BYTES`]; `done` runs once, after the last piece, with the
/// first error if any piece failed.
fn submit_split(session: &TrackedSession, req: BlockRequest, done: Completion) {
    let piece_bytes = u64::from(MAX_RANGE_OP_BYTES);
    let end = req.offset_bytes + u64::from(req.len_bytes);
    let pieces: Vec<BlockRequest> = (req.offset_bytes..end)
        .step_by(usize::try_from(piece_bytes).unwrap_or(usize::MAX))
        .map(|offset_bytes| BlockRequest {
            offset_bytes,
            len_bytes: u32::try_from(piece_bytes.min(end - offset_bytes))
                .unwrap_or(MAX_RANGE_OP_BYTES),
            ..req
        })
        .collect();
    struct Join {
        remaining: usize,
        first_error: Option<BlockError>,
        done: Option<Completion>,
    }
    let join = Arc::new(Mutex::new(Join {
        remaining: pieces.len(),
        first_error: None,
        done: Some(done),
    }));
    for piece in pieces {
        let join = Arc::clone(&join);
        session.submit(
            piece,
            AlignedBuf::empty(),
            Box::new(move |result| {
                let mut j = join
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Err(e) = result {
                    j.first_error.get_or_insert(e);
                }
                j.remaining -= 1;
                if j.remaining == 0 {
                    let outcome = j.first_error.take().map_or(Ok(AlignedBuf::empty()), Err);
                    if let Some(done) = j.done.take() {
                        drop(j);
                        done(outcome);
                    }
                }
            }),
        );
    }
}

impl Drop for TrackedSession {
    fn drop(&mut self) {
        drop(self.inner.take());
        if let Some(tx) = &self.tx {
            let _ = tx.send(ActorMsg::Session {
                client: std::mem::take(&mut self.client),
                open: false,
            });
        }
    }
}
