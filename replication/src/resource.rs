//! The resource state machine: role and local disk state of one resource on
//! this node, the connection state of each configured peer, and the admin
//! commands that change them (user's guide 11.2.6–11.2.9, 23.2).
//!
//! Owns: the rules for attach/detach, promote/demote, up/down and what they do
//! to the metadata flags and generation identifiers. Must never: do I/O. The
//! caller feeds [`Command`]s (with everything random or external, such as a
//! new generation UUID, as arguments) and executes the returned [`Action`]s in
//! order: persist the superblock, open or close the data path, etc.

use crate::generation::{is_empty_uuid, Generations};
use crate::state::{ConnState, DiskState, ReplState, Role};

/// The superblock fields this state machine decides about (a projection of
/// the on-disk superblock; the caller maps it back when persisting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdView {
    pub consistent: bool,
    pub was_up_to_date: bool,
    pub outdated: bool,
    pub primary: bool,
    pub crashed_primary: bool,
    /// Current, per-peer-slot bitmap and history UUIDs.
    pub gens: Generations,
}

impl MdView {
    /// The disk state a freshly attached disk has (before any peer is known):
    /// not consistent → Inconsistent, outdated flag → Outdated, consistent and
    /// up to date when last running → UpToDate, otherwise Consistent.
    pub fn attach_disk_state(&self) -> DiskState {
        if !self.consistent {
            DiskState::Inconsistent
        } else if self.outdated {
            DiskState::Outdated
        } else if self.was_up_to_date {
            DiskState::UpToDate
        } else {
            DiskState::Consistent
        }
    }
}

/// One configured peer as the state machine tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub name: String,
    pub node_id: u8,
    /// The peer's bitmap slot in our metadata.
    pub slot: usize,
    pub conn: ConnState,
    pub role: Role,
    pub peer_disk: DiskState,
    pub repl: ReplState,
}

impl PeerState {
    /// A configured peer we are not connected to (and not trying to).
    pub fn standalone(name: &str, node_id: u8, slot: usize) -> Self {
        PeerState {
            name: name.to_owned(),
            node_id,
            slot,
            conn: ConnState::StandAlone,
            role: Role::Unknown,
            peer_disk: DiskState::DUnknown,
            repl: ReplState::Off,
        }
    }
}

/// An admin command or event fed into the state machine.
// `Attach` carries the whole metadata view (32 history UUIDs); commands are
// rare admin events, so the size is not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The metadata was read: attach the local disk.
    Attach { md: MdView },
    /// Detach the local disk (→ Diskless).
    Detach,
    /// The local disk failed (an I/O error under `on-io-error detach` or
    /// `call-local-io-error`, or a metadata I/O error): → Diskless whatever
    /// the role (DRBD: Failed → Diskless). Never refused. Nothing is
    /// persisted (the metadata may sit on the failed device); the caller
    /// has already stopped the data path.
    DiskFailed,
    /// Promote to Primary. `new_uuid` is a fresh random non-empty UUID the
    /// caller generated, used if a new data generation starts.
    /// `peer_writes_unfinished`: writes received from peers that are not yet
    /// on the local disk (the sum of `Peer::applying_peer_writes`); refused
    /// while any are, since our own writes to the same blocks could land
    /// first and be overwritten by the former Primary's older data.
    Promote {
        force: bool,
        new_uuid: u64,
        peer_writes_unfinished: usize,
    },
    /// Demote to Secondary.
    Demote,
    /// Take the resource down (detach, disconnect).
    Down,
    /// A frontend client opened the device.
    SessionOpened { client: String },
    /// A frontend client closed the device.
    SessionClosed { client: String },
}

/// What the caller must do, in order.
// As `Command`: admin-path results, rare; not worth boxing the view.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these superblock fields durably.
    PersistSuperblock(MdView),
    /// Let the data path take I/O (Primary) or refuse it (Secondary).
    SetRoleAllowsIo(bool),
    /// Close the local backing device (detach/down).
    CloseBacking,
    /// The local disk state changed to this: tell every peer
    /// (`peer::Event::LocalDiskChanged`).
    AnnounceDisk(DiskState),
}

/// Why a command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Promotion needs UpToDate data (drbdadm exit code 17).
    #[error("no UpToDate data: {0}")]
    NoUpToDateData(String),
    /// Any other refused state change (drbdadm exit code 11).
    #[error("state change refused: {0}")]
    StateChange(String),
}

/// The state of one resource on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceCore {
    pub name: String,
    pub role: Role,
    pub disk: DiskState,
    /// Metadata view while attached.
    pub md: Option<MdView>,
    pub peers: Vec<PeerState>,
    /// Frontend clients holding the device open, oldest first.
    pub open_clients: Vec<String>,
}

impl ResourceCore {
    /// A resource that is up but Diskless and not attached yet.
    pub fn new(name: &str, peers: Vec<PeerState>) -> Self {
        ResourceCore {
            name: name.to_owned(),
            role: Role::Secondary,
            disk: DiskState::Diskless,
            md: None,
            peers,
            open_clients: Vec::new(),
        }
    }

    /// Applies `cmd`. On `Err` nothing changed.
    pub fn handle(&mut self, cmd: Command) -> Result<Vec<Action>, Refusal> {
        match cmd {
            Command::Attach { md } => self.attach(md),
            Command::Detach => self.detach(),
            Command::DiskFailed => Ok(self.disk_failed()),
            Command::Promote {
                force,
                new_uuid,
                peer_writes_unfinished,
            } => self.promote(force, new_uuid, peer_writes_unfinished),
            Command::Demote => self.demote(),
            Command::Down => self.down(),
            Command::SessionOpened { client } => {
                self.open_clients.push(client);
                Ok(Vec::new())
            }
            Command::SessionClosed { client } => {
                if let Some(i) = self.open_clients.iter().position(|c| *c == client) {
                    self.open_clients.remove(i);
                }
                Ok(Vec::new())
            }
        }
    }

    fn attach(&mut self, md: MdView) -> Result<Vec<Action>, Refusal> {
        if self.md.is_some() {
            return Err(Refusal::StateChange(format!(
                "{}: a disk is already attached (disk:{}); detach it first",
                self.name, self.disk
            )));
        }
        self.disk = md.attach_disk_state();
        self.md = Some(md);
        Ok(Vec::new())
    }

    fn detach(&mut self) -> Result<Vec<Action>, Refusal> {
        let Some(md) = self.md.take() else {
            return Ok(Vec::new()); // already Diskless: nothing to do
        };
        if self.role == Role::Primary {
            // No peer can serve our I/O yet, so a Primary cannot lose its disk.
            self.md = Some(md);
            return Err(Refusal::StateChange(format!(
                "{} is Primary and no peer has UpToDate data; demote it first",
                self.name
            )));
        }
        self.disk = DiskState::Diskless;
        Ok(vec![Action::PersistSuperblock(md), Action::CloseBacking])
    }

    fn disk_failed(&mut self) -> Vec<Action> {
        if self.md.is_none() && self.disk == DiskState::Diskless {
            return Vec::new(); // several requests failed at once
        }
        self.md = None;
        self.disk = DiskState::Diskless;
        vec![Action::AnnounceDisk(DiskState::Diskless)]
    }

    fn down(&mut self) -> Result<Vec<Action>, Refusal> {
        if self.role == Role::Primary {
            return Err(Refusal::StateChange(format!(
                "{} is Primary; demote it (drbdctl secondary {}) before taking it down",
                self.name, self.name
            )));
        }
        let actions = self.detach()?;
        for p in &mut self.peers {
            *p = PeerState::standalone(&p.name, p.node_id, p.slot);
        }
        Ok(actions)
    }

    /// True if a peer other than the one in `slot` is resyncing this node
    /// (or about to: bitmap exchange, sync UUID).
    pub fn sync_target_of_another(&self, slot: usize) -> bool {
        self.peers.iter().any(|p| {
            p.slot != slot
                && matches!(
                    p.repl,
                    ReplState::WFBitMapT
                        | ReplState::WFSyncUUID
                        | ReplState::SyncTarget
                        | ReplState::PausedSyncT
                )
        })
    }

    fn promote(
        &mut self,
        force: bool,
        new_uuid: u64,
        peer_writes_unfinished: usize,
    ) -> Result<Vec<Action>, Refusal> {
        if self.role == Role::Primary {
            return Ok(Vec::new());
        }
        if peer_writes_unfinished > 0 {
            // drbdd-sim seeds 20135, 27624, 228007.
            return Err(Refusal::StateChange(format!(
                "{}: {peer_writes_unfinished} writes received from the former Primary are not yet \
                 on the local disk (a slow or stuck backing device?); retry when they are",
                self.name
            )));
        }
        if let Some(p) = self
            .peers
            .iter()
            .find(|p| p.conn == ConnState::Connected && p.role == Role::Primary)
        {
            // DRBD: "Multiple primaries not allowed by config" (exit 11).
            // Both would write, and each one's writes would overwrite the
            // other's on the other's disk.
            return Err(Refusal::StateChange(format!(
                "{}: peer {} is Primary and two primaries are not allowed; demote it first \
                 (drbdctl secondary {} on {})",
                self.name, p.name, self.name, p.name
            )));
        }
        let Some(md) = self.md.as_ref() else {
            return Err(Refusal::NoUpToDateData(format!(
                "{} is Diskless and no peer with UpToDate data is connected; attach the disk first",
                self.name
            )));
        };
        let mut md = md.clone();
        if let Some(p) = self.peers.iter().find(|p| {
            matches!(
                p.repl,
                ReplState::StartingSyncT
                    | ReplState::WFBitMapT
                    | ReplState::WFSyncUUID
                    | ReplState::SyncTarget
                    | ReplState::PausedSyncT
            )
        }) {
            // The handshake made us sync target: our data is about to be
            // overwritten; writes now would be lost or hide a split brain
            // (drbdd-sim seed 2870).
            return Err(Refusal::StateChange(format!(
                "{} is becoming sync target of {} (replication:{}); wait for the resync to finish",
                self.name, p.name, p.repl
            )));
        }
        let forced_fresh = self.disk != DiskState::UpToDate;
        if forced_fresh && !force {
            return Err(Refusal::NoUpToDateData(format!(
                "{} has disk:{} and no peer with UpToDate data is connected; \
                 use --force to make this node's data the UpToDate copy (this discards the peers' changes)",
                self.name, self.disk
            )));
        }
        let disconnected: Vec<usize> = self
            .peers
            .iter()
            .filter(|p| p.conn != ConnState::Connected)
            .map(|p| p.slot)
            .filter(|s| *s < md.gens.bitmaps.len())
            .collect();
        // Guide 23.2: a new data generation starts when we become Primary
        // without a peer that follows our writes (its bitmap UUID is still 0),
        // or when forced data has no generation yet.
        // A bitmap UUID tracks the peer only if it is one of our former
        // generations. A sync UUID left by a resync whose end this node
        // never saw (connection lost first) is not: the peer may have
        // adopted our current generation since, and writes under it would
        // look like plain progress instead of a split brain (drbdd-sim).
        let untracked_peer = disconnected.iter().any(|s| {
            let bitmap = md.gens.bitmaps[*s];
            bitmap == 0 || !md.gens.history.contains(&bitmap)
        });
        if forced_fresh || untracked_peer || is_empty_uuid(md.gens.current) {
            md.gens.start_new_generation(new_uuid, &disconnected);
        }
        md.consistent = true;
        md.was_up_to_date = true;
        md.outdated = false;
        md.primary = true;
        self.disk = DiskState::UpToDate;
        self.role = Role::Primary;
        self.md = Some(md.clone());
        Ok(vec![
            Action::PersistSuperblock(md),
            Action::SetRoleAllowsIo(true),
        ])
    }

    fn demote(&mut self) -> Result<Vec<Action>, Refusal> {
        if self.role != Role::Primary {
            return Ok(Vec::new());
        }
        if let Some(first) = self.open_clients.first() {
            return Err(Refusal::StateChange(format!(
                "{}: device is held open by {first} ({} open session(s)); close it first",
                self.name,
                self.open_clients.len()
            )));
        }
        self.role = Role::Secondary;
        let mut actions = vec![Action::SetRoleAllowsIo(false)];
        if let Some(md) = self.md.as_mut() {
            md.primary = false;
            actions.push(Action::PersistSuperblock(md.clone()));
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{HISTORY_UUIDS, UUID_JUST_CREATED};

    fn fresh_md(slots: usize) -> MdView {
        MdView {
            consistent: false,
            was_up_to_date: false,
            outdated: false,
            primary: false,
            crashed_primary: false,
            gens: Generations::just_created(slots),
        }
    }

    fn attached(md: MdView, peers: usize) -> ResourceCore {
        let peers = (0..peers)
            .map(|i| PeerState::standalone(&format!("p{i}"), u8::try_from(i + 1).unwrap(), i))
            .collect();
        let mut core = ResourceCore::new("r0", peers);
        core.handle(Command::Attach { md }).unwrap();
        core
    }

    #[test]
    fn attach_maps_md_flags_to_disk_state() {
        let mut md = fresh_md(1);
        assert_eq!(attached(md.clone(), 1).disk, DiskState::Inconsistent);
        md.consistent = true;
        assert_eq!(attached(md.clone(), 1).disk, DiskState::Consistent);
        md.was_up_to_date = true;
        assert_eq!(attached(md.clone(), 1).disk, DiskState::UpToDate);
        md.outdated = true;
        assert_eq!(attached(md, 1).disk, DiskState::Outdated);
    }

    #[test]
    fn promote_while_peer_writes_are_unfinished_is_refused_and_changes_nothing() {
        let mut md = fresh_md(1);
        md.consistent = true;
        md.was_up_to_date = true;
        let mut core = attached(md, 1);
        let before = core.clone();
        let promote = |unfinished| Command::Promote {
            force: true,
            new_uuid: 0xabcd,
            peer_writes_unfinished: unfinished,
        };
        let err = core.handle(promote(3)).unwrap_err();
        assert!(matches!(err, Refusal::StateChange(_)), "{err}");
        assert!(err.to_string().contains("3 writes"), "{err}");
        assert_eq!(core, before);
        core.handle(promote(0)).unwrap();
        assert_eq!(core.role, Role::Primary);
    }

    #[test]
    fn promote_of_inconsistent_without_force_is_refused_and_changes_nothing() {
        let mut core = attached(fresh_md(1), 1);
        let before = core.clone();
        let err = core
            .handle(Command::Promote {
                force: false,
                new_uuid: 99,
                peer_writes_unfinished: 0,
            })
            .unwrap_err();
        assert!(matches!(err, Refusal::NoUpToDateData(_)), "{err}");
        assert_eq!(core, before);
    }

    #[test]
    fn forced_promote_of_fresh_disk_starts_a_generation_and_persists() {
        let mut core = attached(fresh_md(1), 1);
        let actions = core
            .handle(Command::Promote {
                force: true,
                new_uuid: 0xabcd,
                peer_writes_unfinished: 0,
            })
            .unwrap();
        assert_eq!(core.role, Role::Primary);
        assert_eq!(core.disk, DiskState::UpToDate);
        let md = core.md.clone().unwrap();
        assert!(md.consistent && md.was_up_to_date && md.primary && !md.outdated);
        assert_eq!(md.gens.current, 0xabcd);
        assert_eq!(
            md.gens.history, [0; HISTORY_UUIDS],
            "just-created UUID is not history"
        );
        assert_eq!(
            actions,
            vec![Action::PersistSuperblock(md), Action::SetRoleAllowsIo(true)]
        );
    }

    #[test]
    fn promote_while_disconnected_pushes_old_uuid_to_bitmap_and_history() {
        let mut md = fresh_md(1);
        md.consistent = true;
        md.was_up_to_date = true;
        md.gens.current = 0x1111;
        let mut core = attached(md, 1);
        core.handle(Command::Promote {
            force: false,
            new_uuid: 0x2222,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        let gens = &core.md.as_ref().unwrap().gens;
        assert_eq!(gens.current, 0x2222);
        assert_eq!(gens.bitmaps[0], 0x1111);
        assert_eq!(gens.history[0], 0x1111);
        // A second promotion while the bitmap already tracks: no new generation.
        core.handle(Command::Demote).unwrap();
        core.handle(Command::Promote {
            force: false,
            new_uuid: 0x3333,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        assert_eq!(core.md.as_ref().unwrap().gens.current, 0x2222);
    }

    #[test]
    fn promote_with_a_leftover_sync_uuid_as_bitmap_starts_a_new_generation() {
        // The node was sync source and lost the connection before the
        // target's ResyncFinished: its bitmap UUID is the sync UUID, which
        // is none of its former generations (found by drbdd-sim seed 1778).
        let mut md = fresh_md(1);
        md.consistent = true;
        md.was_up_to_date = true;
        md.gens.current = 0x1111;
        md.gens.bitmaps[0] = 0x5555;
        md.gens.history = crate::generation::history_of(&[0x0999]);
        let mut core = attached(md, 1);
        core.handle(Command::Promote {
            force: false,
            new_uuid: 0x2222,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        let gens = &core.md.as_ref().unwrap().gens;
        assert_eq!(gens.current, 0x2222);
        assert_eq!(gens.history[0], 0x1111);
    }

    /// An UpToDate Secondary whose one peer is connected in `repl`.
    fn up_to_date_with_connected_peer(repl: ReplState) -> ResourceCore {
        let mut md = fresh_md(1);
        md.consistent = true;
        md.was_up_to_date = true;
        md.gens.current = 0x1111;
        let mut core = attached(md, 1);
        core.peers[0].conn = ConnState::Connected;
        core.peers[0].repl = repl;
        core
    }

    #[test]
    fn promote_refused_while_becoming_sync_target() {
        let mut core = up_to_date_with_connected_peer(ReplState::WFBitMapT);
        let before = core.clone();
        let err = core
            .handle(Command::Promote {
                force: false,
                new_uuid: 0x2222,
                peer_writes_unfinished: 0,
            })
            .unwrap_err();
        assert!(err.to_string().contains("sync target"), "{err}");
        assert_eq!(core, before);
    }

    #[test]
    fn promote_refused_while_a_connected_peer_is_primary() {
        let mut core = up_to_date_with_connected_peer(ReplState::Established);
        core.peers[0].role = Role::Primary;
        let before = core.clone();
        let err = core
            .handle(Command::Promote {
                force: true,
                new_uuid: 0x2222,
                peer_writes_unfinished: 0,
            })
            .unwrap_err();
        assert!(matches!(err, Refusal::StateChange(_)), "{err}");
        assert!(err.to_string().contains("two primaries"), "{err}");
        assert_eq!(core, before);
        // Once the peer is Secondary again, the promotion goes through.
        core.peers[0].role = Role::Secondary;
        core.handle(Command::Promote {
            force: false,
            new_uuid: 0x2222,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        assert_eq!(core.role, Role::Primary);
    }

    #[test]
    fn demote_refused_while_device_is_open() {
        let mut core = attached(fresh_md(0), 0);
        core.handle(Command::Promote {
            force: true,
            new_uuid: 7,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        core.handle(Command::SessionOpened {
            client: "nbd client 10.0.0.1".into(),
        })
        .unwrap();
        let err = core.handle(Command::Demote).unwrap_err();
        assert!(err.to_string().contains("held open by nbd client"), "{err}");
        core.handle(Command::SessionClosed {
            client: "nbd client 10.0.0.1".into(),
        })
        .unwrap();
        core.handle(Command::Demote).unwrap();
        assert_eq!(core.role, Role::Secondary);
        assert!(!core.md.as_ref().unwrap().primary);
    }

    #[test]
    fn down_of_primary_is_refused_and_detach_goes_diskless() {
        let mut core = attached(fresh_md(0), 0);
        core.handle(Command::Promote {
            force: true,
            new_uuid: 7,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        assert!(matches!(
            core.handle(Command::Down),
            Err(Refusal::StateChange(_))
        ));
        core.handle(Command::Demote).unwrap();
        let actions = core.handle(Command::Detach).unwrap();
        assert_eq!(core.disk, DiskState::Diskless);
        assert!(actions.contains(&Action::CloseBacking));
        assert!(core.md.is_none());
        assert_ne!(UUID_JUST_CREATED, 7);
    }

    #[test]
    fn disk_failure_makes_even_a_primary_diskless_and_tells_the_peers_once() {
        let mut core = attached(fresh_md(1), 1);
        core.handle(Command::Promote {
            force: true,
            new_uuid: 7,
            peer_writes_unfinished: 0,
        })
        .unwrap();
        let actions = core.handle(Command::DiskFailed).unwrap();
        assert_eq!(actions, vec![Action::AnnounceDisk(DiskState::Diskless)]);
        assert_eq!(core.disk, DiskState::Diskless);
        assert!(core.md.is_none());
        assert_eq!(core.role, Role::Primary);
        assert!(core.handle(Command::DiskFailed).unwrap().is_empty());
    }

    #[test]
    fn diskless_promote_reports_no_up_to_date_data() {
        let mut core = ResourceCore::new("r0", Vec::new());
        let err = core
            .handle(Command::Promote {
                force: true,
                new_uuid: 7,
                peer_writes_unfinished: 0,
            })
            .unwrap_err();
        assert!(matches!(err, Refusal::NoUpToDateData(_)));
    }
}
