//! The resource actor: one thread per resource that is up. It owns the
//! resource's [`ResourceCore`] state machine and its metadata store, takes
//! [`ActorMsg`]s from one channel (admin commands from the control socket now;
//! pipeline events, peer packets and timers as they arrive), feeds them to the
//! core and executes the [`Action`]s it returns.
//!
//! Owns: all I/O on behalf of the core for one resource (superblock writes,
//! closing the backing device, switching the data path). Must never: decide
//! state changes itself, or block on another resource.

use super::events::EventBus;
use super::md::{self, MdLocation};
use crate::control::proto::{ErrorKind, PeerStatus, ResourceStatus};
use crate::control::render;
use crate::pipeline::{Pipeline, PipelineEvent};
use drbdd_config::{Node, Resource};
use drbdd_replication::resource::{Action, Command, PeerState, Refusal, ResourceCore};
use drbdd_replication::state::{ConnState, DiskState, ReplState, Role};
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "datapath.rs"]
mod datapath;
#[path = "mailbox.rs"]
mod mailbox;
#[path = "peers.rs"]
mod peers;
#[path = "ublk.rs"]
mod ublk;
use datapath::{lock_meta, DataPath, SharedMeta};
pub use mailbox::ActorTx;
use mailbox::{Mailbox, Next};
pub use peers::PeerMsg;
pub use ublk::{enter_namespace_if_needed, reclaim_devices};

/// A failed admin command: kind (exit code) and message.
pub type AdminError = (ErrorKind, String);
/// An admin command's result: a note on success.
pub type AdminResult = Result<String, AdminError>;

/// Admin commands the control socket forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCmd {
    Attach,
    Detach,
    Primary {
        force: bool,
    },
    Secondary,
    /// Detach and disconnect; the actor stops after a successful `Down`.
    Down,
    /// Leave StandAlone and connect to the peers again.
    Connect {
        discard_my_data: bool,
    },
    /// Go StandAlone (close the peer connections).
    Disconnect,
}

/// Everything a resource actor reacts to.
#[derive(Debug)]
pub enum ActorMsg {
    Admin {
        cmd: AdminCmd,
        reply: SyncSender<AdminResult>,
    },
    Status {
        reply: SyncSender<ResourceStatus>,
    },
    /// How many writes received from peers are not yet on the local disk.
    PeerWritesUnfinished {
        reply: SyncSender<usize>,
    },
    /// New configuration for this resource (`drbdctl adjust`).
    Reconfigure {
        res: Box<Resource>,
        reply: SyncSender<AdminResult>,
    },
    /// From [`Pipeline::set_event_sink`] (disk failure etc.).
    Pipeline(PipelineEvent),
    /// A frontend session opened or closed (NBD/ublk client).
    Session {
        client: String,
        open: bool,
    },
    /// Peer connections, replicated writes, peer disk I/O, ticks.
    Peers(PeerMsg),
    /// Daemon shutdown: persist metadata and end the thread.
    Stop {
        reply: SyncSender<()>,
    },
    /// The NBD frontends of a stopping actor are closed (see `datapath.rs`):
    /// persist metadata, answer `reply` and end the thread.
    FrontendsStopped {
        reply: SyncSender<()>,
    },
}

/// The daemon's handle on a running actor.
#[derive(Debug)]
pub struct ResourceHandle {
    tx: ActorTx,
    thread: Option<JoinHandle<()>>,
}

impl ResourceHandle {
    /// Brings `res` up on `node_name`: reads the metadata (if the node has a
    /// disk), attaches, and starts the actor thread. Nothing runs on error.
    pub fn start(
        res: Resource,
        node_name: &str,
        events: Arc<EventBus>,
        run_dir: &Path,
    ) -> Result<Self, AdminError> {
        let (tx, mailbox) = mailbox::mailbox().map_err(|e| {
            (
                ErrorKind::Failed,
                format!("cannot create the resource's event fd: {e}"),
            )
        })?;
        let mut actor = Actor::new(res, node_name, events, run_dir, tx.clone())?;
        if actor.local_node().disk.is_some() {
            actor.attach()?;
        }
        actor.publish_lines(render::events_create(&actor.status()));
        if actor.store.is_some() {
            if let Err(e) = actor.start_peers(tx.clone()) {
                return Err((ErrorKind::Failed, format!("cannot start replication: {e}")));
            }
        }
        let name = format!("drbdd-res-{}", actor.core.name);
        let cpus = super::placement::resource_cpus(
            &actor.res.options.cpu_mask,
            &super::placement::process_cpus(),
            actor.local_node().minor,
        );
        let resource = actor.core.name.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                super::placement::bind_current_thread(&cpus, &resource);
                actor.run(mailbox)
            })
            .map_err(|e| {
                (
                    ErrorKind::Failed,
                    format!("cannot start resource thread: {e}"),
                )
            })?;
        Ok(ResourceHandle {
            tx,
            thread: Some(thread),
        })
    }

    /// A sender for other producers (pipeline event sink, frontends, peers).
    pub fn sender(&self) -> ActorTx {
        self.tx.clone()
    }

    fn ask<T>(&self, make: impl FnOnce(SyncSender<T>) -> ActorMsg) -> Option<T> {
        ask(&self.tx, make)
    }

    /// Runs an admin command (see [`before_admin`]).
    pub fn admin(&self, cmd: AdminCmd) -> AdminResult {
        before_admin(&self.tx, &cmd);
        self.ask(|reply| ActorMsg::Admin { cmd, reply })
            .unwrap_or_else(|| Err(gone()))
    }

    /// Applies a new configuration.
    pub fn reconfigure(&self, res: Resource) -> AdminResult {
        self.ask(|reply| ActorMsg::Reconfigure {
            res: Box::new(res),
            reply,
        })
        .unwrap_or_else(|| Err(gone()))
    }

    /// Current status.
    pub fn status(&self) -> Option<ResourceStatus> {
        self.ask(|reply| ActorMsg::Status { reply })
    }

    /// Stops the actor (persisting metadata) and waits for its thread.
    pub fn stop(mut self) {
        let _ = self.ask(|reply| ActorMsg::Stop { reply });
        self.join();
    }

    /// Waits for the thread after a successful `Down`.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a request to an actor and waits for its answer (None: the actor
/// is gone).
pub(super) fn ask<T>(tx: &ActorTx, make: impl FnOnce(SyncSender<T>) -> ActorMsg) -> Option<T> {
    let (reply, rx) = sync_channel(1);
    tx.send(make(reply)).ok()?;
    rx.recv().ok()
}

/// Runs on the caller's thread before `cmd` goes to the actor: a promotion
/// first waits (at most [`PROMOTE_WAIT`]) until the writes received from the
/// former Primary are on the local disk. The actor refuses the promotion
/// while any are not, so a wait cut short still cannot promote too early.
pub(super) fn before_admin(tx: &ActorTx, cmd: &AdminCmd) {
    if !matches!(cmd, AdminCmd::Primary { .. }) {
        return;
    }
    let deadline = std::time::Instant::now() + PROMOTE_WAIT;
    while ask(tx, |reply| ActorMsg::PeerWritesUnfinished { reply }).is_some_and(|n| n > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone() -> AdminError {
    (
        ErrorKind::Failed,
        "the resource's thread has stopped; see the drbdd log".into(),
    )
}

/// State owned by the actor thread.
#[derive(Debug)]
struct Actor {
    core: ResourceCore,
    res: Resource,
    node_name: String,
    /// The metadata store, shared with the pipeline (see `datapath.rs`).
    store: Option<SharedMeta>,
    /// The request pipeline while a disk is attached (frontends talk to it
    /// through `blockio::BlockTarget`).
    pipeline: Option<Arc<Pipeline>>,
    /// NBD listeners and the export of the pipeline.
    data: DataPath,
    events: Arc<EventBus>,
    /// Peer connections (see `peers.rs`), once started.
    peers: Option<peers::Peers>,
    /// `/dev/ublkb<minor>` while Primary (see `ublk.rs`).
    ublk: ublk::UblkFront,
    /// Reused before/after keys of `publishing_peer_changes` (it runs for
    /// every peer message and poll round: no allocation each time).
    event_keys: [EventKey; 2],
}

impl Actor {
    fn new(
        res: Resource,
        node_name: &str,
        events: Arc<EventBus>,
        run_dir: &Path,
        tx: ActorTx,
    ) -> Result<Self, AdminError> {
        res.local_node(node_name)
            .map_err(|e| (ErrorKind::Failed, e.to_string()))?;
        ublk::check_available(&res, node_name)?;
        let peers = peer_states(&res, node_name);
        let data = DataPath::new(&res, node_name, run_dir, tx)?;
        Ok(Actor {
            data,
            event_keys: Default::default(),
            core: ResourceCore::new(&res.name, peers),
            res,
            node_name: node_name.to_owned(),
            store: None,
            pipeline: None,
            events,
            peers: None,
            ublk: ublk::UblkFront::default(),
        })
    }

    fn local_node(&self) -> &Node {
        self.res
            .nodes
            .iter()
            .find(|n| n.name == self.node_name)
            .expect("checked in Actor::new; reconfigure keeps the node")
    }

    /// The actor's loop. Messages are taken in batches of at most
    /// [`BATCH_MSGS_MAX`]: everything queued when the actor wakes up is
    /// handled before the packets the batch produced go to the connections,
    /// so one `send` per connection carries all of them (`flush_wire` in
    /// `peers_exec.rs`). Packets of one connection keep their order: they
    /// share one buffer. Then the actor polls its peer sockets — sleeping
    /// there, with the mailbox's doorbell in the set, when nothing is
    /// queued — and serves what is ready (see `poll_peers`).
    ///
    /// While a connection is congested no new message is taken: the actor
    /// only drains sockets (reading too, so two congested peers still make
    /// progress) until the connection takes bytes again or fails.
    fn run(mut self, mut mailbox: Mailbox) {
        loop {
            let mut handled = 0;
            while handled < BATCH_MSGS_MAX && !self.peers_congested() {
                match mailbox.next() {
                    Next::Msg(msg) => {
                        if self.handle_publishing(msg) {
                            self.flush_wire();
                            return;
                        }
                        handled += 1;
                    }
                    Next::Empty => break,
                    Next::Closed => {
                        self.flush_wire();
                        self.persist_on_stop();
                        return;
                    }
                }
            }
            self.flush_wire();
            if handled == BATCH_MSGS_MAX {
                // More may be queued: look at the sockets without sleeping.
                self.publishing_peer_changes(|a| a.poll_peers(None, Duration::ZERO));
            } else if self.peers_congested() {
                // Sleep on the sockets only: messages wait.
                self.publishing_peer_changes(|a| a.poll_peers(None, IDLE_WAIT));
            } else if mailbox.park() {
                // `poll_peers` sleeps with the doorbell in its set and unparks.
                let parked = Some(&mailbox);
                self.publishing_peer_changes(|a| a.poll_peers(parked, IDLE_WAIT));
            } else {
                self.publishing_peer_changes(|a| a.poll_peers(None, Duration::ZERO));
            }
        }
    }

    /// Handles one message and publishes the events2 lines of what changed;
    /// true when the actor must end.
    ///
    /// Peer messages (the data path: writes, acks, I/O completions, ticks)
    /// are many; building two full [`ResourceStatus`] snapshots for each
    /// costs more than the message itself. Their only effect on the events2
    /// objects is through roles, disk and connection states, so the
    /// snapshots are built only when one of those changed.
    fn handle_publishing(&mut self, msg: ActorMsg) -> bool {
        if matches!(msg, ActorMsg::Peers(_)) {
            let stop = self.publishing_peer_changes(|a| a.handle(msg));
            debug_assert!(!stop, "peer messages never stop the actor");
            return stop;
        }
        let before = self.status();
        let stop = self.handle(msg);
        let after = self.status();
        if stop {
            self.publish_lines(render::events_destroy(&after));
            return true;
        }
        self.publish_lines(render::events_change(&before, &after));
        false
    }

    /// Runs `step` (a peer message, socket I/O, the tick) and publishes the
    /// events2 lines of what it changed.
    fn publishing_peer_changes<R>(&mut self, step: impl FnOnce(&mut Self) -> R) -> R {
        let [mut key, mut key_after] = std::mem::take(&mut self.event_keys);
        key.refill(&self.core);
        let r = step(self);
        key_after.refill(&self.core);
        if key_after != key {
            // Something visible changed: publish against the snapshot of
            // the state before, rebuilt from the key (the objects the
            // events2 lines show hold nothing else).
            let after = self.status();
            let mut before = after.clone();
            key.restore(&mut before);
            self.publish_lines(render::events_change(&before, &after));
        }
        self.event_keys = [key, key_after];
        r
    }

    /// Handles one message; true when the actor must end.
    fn handle(&mut self, msg: ActorMsg) -> bool {
        match msg {
            ActorMsg::Admin { cmd, reply } => {
                let down = cmd == AdminCmd::Down;
                let result = self.admin(cmd);
                let stop = down && result.is_ok();
                let _ = reply.send(result);
                stop
            }
            ActorMsg::Status { reply } => {
                let _ = reply.send(self.status());
                false
            }
            ActorMsg::PeerWritesUnfinished { reply } => {
                let _ = reply.send(self.peer_writes_unfinished());
                false
            }
            ActorMsg::Reconfigure { res, reply } => {
                let _ = reply.send(self.reconfigure(*res));
                false
            }
            ActorMsg::Pipeline(ev) => {
                self.on_pipeline_event(ev);
                false
            }
            ActorMsg::Session { client, open } => {
                let cmd = if open {
                    Command::SessionOpened { client }
                } else {
                    Command::SessionClosed { client }
                };
                let _ = self.step(cmd);
                false
            }
            ActorMsg::Peers(m) => {
                self.on_peer_msg(m);
                false
            }
            ActorMsg::Stop { reply } => self.begin_stop(reply),
            ActorMsg::FrontendsStopped { reply } => {
                self.persist_on_stop();
                let _ = reply.send(());
                true
            }
        }
    }

    fn admin(&mut self, cmd: AdminCmd) -> AdminResult {
        let name = self.core.name.clone();
        match cmd {
            AdminCmd::Attach => self.attach().map(|()| format!("{name}: attached")),
            AdminCmd::Detach => self
                .step(Command::Detach)
                .map(|()| format!("{name}: detached")),
            AdminCmd::Primary { force } => {
                ublk::check_available(&self.res, &self.node_name)?;
                let new_uuid = md::random_uuid()
                    .map_err(|e| (ErrorKind::Failed, format!("cannot read /dev/urandom: {e}")))?;
                let before = self.core.md.as_ref().map(|m| m.gens.current);
                self.step(Command::Promote {
                    force,
                    new_uuid,
                    peer_writes_unfinished: self.peer_writes_unfinished(),
                })?;
                let after = self.core.md.as_ref().map(|m| m.gens.current);
                self.peers_role_changed(force && before != after);
                self.ublk_after_promote()?;
                Ok(format!("{name}: Primary"))
            }
            AdminCmd::Secondary => {
                self.ublk_before_demote()?;
                if let Err(e) = self.gate_for_demote() {
                    let _ = self.ublk_sync();
                    return Err(e);
                }
                if let Err(e) = self.step(Command::Demote) {
                    self.reopen_gate();
                    let _ = self.ublk_sync();
                    return Err(e);
                }
                self.peers_role_changed(false);
                Ok(format!("{name}: Secondary"))
            }
            AdminCmd::Connect { discard_my_data } => {
                let n = self.peers_admin_connect(true, discard_my_data);
                Ok(format!("{name}: connecting to {n} peer(s)"))
            }
            AdminCmd::Disconnect => {
                let n = self.peers_admin_connect(false, false);
                Ok(format!("{name}: disconnected from {n} peer(s)"))
            }
            AdminCmd::Down => self.step(Command::Down).map(|()| format!("{name}: down")),
        }
    }

    /// Feeds `cmd` to the core and executes its actions; on failure the core
    /// goes back to where it was.
    fn step(&mut self, cmd: Command) -> Result<(), AdminError> {
        let saved = self.core.clone();
        let actions = self.core.handle(cmd).map_err(refusal)?;
        for action in actions {
            if let Err(e) = self.execute(action) {
                self.core = saved;
                return Err(e);
            }
        }
        Ok(())
    }

    fn execute(&mut self, action: Action) -> Result<(), AdminError> {
        match action {
            Action::PersistSuperblock(view) => {
                let store = self.store.as_ref().ok_or_else(|| {
                    (
                        ErrorKind::Failed,
                        "no metadata attached to persist".to_owned(),
                    )
                })?;
                lock_meta(store)
                    .update_superblock(|sb| md::apply_view(sb, &view))
                    .map_err(|e| (ErrorKind::Failed, format!("metadata write failed: {e}")))
            }
            Action::SetRoleAllowsIo(allows) => {
                if let Some(p) = &self.pipeline {
                    p.set_role_allows_io(allows);
                }
                Ok(())
            }
            Action::CloseBacking => {
                self.ublk_stop();
                self.close_backing();
                Ok(())
            }
            Action::AnnounceDisk(_) => {
                self.announce_disk_change();
                Ok(())
            }
        }
    }

    /// Reads the metadata, assigns peer slots and attaches the disk.
    fn attach(&mut self) -> Result<(), AdminError> {
        let loc = MdLocation::of(&self.res, self.local_node(), None)
            .map_err(|e| (ErrorKind::Failed, e.to_string()))?;
        let mut store = loc.open().map_err(|e| {
            (
                ErrorKind::Failed,
                format!("cannot attach {}: {e}", self.core.name),
            )
        })?;
        let mut sb = store.superblock().clone();
        for p in &mut self.core.peers {
            p.slot = md::assign_slot(&mut sb, p.node_id).ok_or_else(|| {
                (
                    ErrorKind::Failed,
                    format!(
                        "no free peer slot for {} in the metadata of {} (max-peers {}); recreate it with a larger --max-peers",
                        p.name, self.core.name, sb.max_peers
                    ),
                )
            })?;
        }
        if &sb != store.superblock() {
            store
                .update_superblock(|s| *s = sb.clone())
                .map_err(|e| (ErrorKind::Failed, format!("metadata write failed: {e}")))?;
        }
        self.attach_store(store)
    }

    fn reconfigure(&mut self, res: Resource) -> AdminResult {
        res.local_node(&self.node_name)
            .map_err(|e| (ErrorKind::Failed, e.to_string()))?;
        let mut peers = peer_states(&res, &self.node_name);
        for p in &mut peers {
            if let Some(old) = self.core.peers.iter().find(|o| o.node_id == p.node_id) {
                *p = old.clone();
            }
        }
        self.core.peers = peers;
        let rebind = res.options.cpu_mask != self.res.options.cpu_mask;
        self.res = res;
        if rebind {
            // Runs on the actor's own thread: as DRBD applies a changed
            // cpu-mask to its running threads.
            let cpus = super::placement::resource_cpus(
                &self.res.options.cpu_mask,
                &super::placement::process_cpus(),
                self.local_node().minor,
            );
            super::placement::bind_current_thread(&cpus, &self.core.name);
        }
        self.peers_reconfigure();
        Ok(format!("{}: adjusted", self.core.name))
    }

    fn persist_on_stop(&mut self) {
        if self.ublk_on_daemon_stop() {
            // A held /dev/ublkb<minor> waits for the next daemon: stop like a
            // crash (see ublk.rs), the activity log is replayed at the next attach.
            return;
        }
        self.stop_data_path();
        let view = self.core.md.clone();
        if let (Some(store), Some(view)) = (self.store.as_ref(), view) {
            let mut store = lock_meta(store);
            let res = store
                .update_superblock(|sb| md::apply_view(sb, &view))
                .and_then(|()| store.close_clean());
            if let Err(e) = res {
                tracing::error!(resource = %self.core.name, error = %e, "metadata not persisted at shutdown");
            }
        }
    }

    fn publish_lines(&self, lines: Vec<String>) {
        self.events.publish(&lines);
    }

    fn status(&self) -> ResourceStatus {
        let node = self.local_node();
        let size_bytes = self
            .store
            .as_ref()
            .map_or(0, |s| lock_meta(s).superblock().data_size_bytes);
        let mut peers: Vec<PeerStatus> = self
            .core
            .peers
            .iter()
            .map(|p| peer_status(&self.res, p))
            .collect();
        self.fill_peer_status(&mut peers);
        ResourceStatus {
            name: self.core.name.clone(),
            node_id: node.node_id,
            role: self.core.role,
            suspended: false,
            minor: node.minor,
            disk: self.core.disk,
            size_bytes,
            open_clients: self.core.open_clients.clone(),
            current_uuid: self.core.md.as_ref().map(|m| m.gens.current),
            stats: self.data.stats(self.pipeline.as_ref(), self.store.as_ref()),
            peers,
        }
    }
}

/// How long `primary` waits for writes received from the former Primary to
/// reach the local disk before it is refused.
const PROMOTE_WAIT: Duration = Duration::from_secs(20);

/// Messages handled at most before the actor sends the packets they
/// produced (bounds the latency one batch adds to its first packet).
const BATCH_MSGS_MAX: usize = 64;
/// Longest sleep of an idle actor; with peers the next tick comes first.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// What the events2 objects (`render::events_change` without statistics)
/// show of a resource that a peer message can change: role, disk, and per
/// peer its connection, role, replication and disk states.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventKey {
    role: Role,
    disk: DiskState,
    peers: Vec<(u8, ConnState, Role, ReplState, DiskState)>,
}

impl Default for EventKey {
    /// A placeholder until `refill` (no allocation).
    fn default() -> Self {
        EventKey {
            role: Role::Unknown,
            disk: DiskState::Diskless,
            peers: Vec::new(),
        }
    }
}

impl EventKey {
    /// Sets the key to `core`'s state, reusing its peer list's memory.
    fn refill(&mut self, core: &ResourceCore) {
        self.role = core.role;
        self.disk = core.disk;
        self.peers.clear();
        self.peers.extend(
            core.peers
                .iter()
                .map(|p| (p.node_id, p.conn, p.role, p.repl, p.peer_disk)),
        );
    }

    /// Puts the keyed fields back into a later snapshot of the same resource.
    fn restore(&self, st: &mut ResourceStatus) {
        st.role = self.role;
        st.disk = self.disk;
        for p in &mut st.peers {
            if let Some(&(_, conn, role, repl, disk)) = self.peers.iter().find(|k| k.0 == p.node_id)
            {
                p.connection = conn;
                p.role = role;
                p.replication = repl;
                p.peer_disk = disk;
            }
        }
    }
}

fn peer_states(res: &Resource, node_name: &str) -> Vec<PeerState> {
    res.peers_of(node_name)
        .into_iter()
        .enumerate()
        .map(|(i, n)| PeerState::standalone(&n.name, n.node_id, i))
        .collect()
}

fn peer_status(res: &Resource, p: &PeerState) -> PeerStatus {
    PeerStatus {
        name: p.name.clone(),
        node_id: p.node_id,
        address: res
            .node_by_id(p.node_id)
            .map_or_else(String::new, |n| n.address.to_string()),
        connection: p.conn,
        role: p.role,
        peer_disk: p.peer_disk,
        replication: p.repl,
        out_of_sync_kib: 0,
        received_kib: 0,
        sent_kib: 0,
        done_tenths_percent: None,
        resync_sent_kib: 0,
        resync_received_kib: 0,
        resync: None,
    }
}

fn refusal(r: Refusal) -> AdminError {
    match r {
        Refusal::NoUpToDateData(_) => (ErrorKind::NoUpToDateData, r.to_string()),
        Refusal::StateChange(_) => (ErrorKind::StateRefused, r.to_string()),
    }
}
