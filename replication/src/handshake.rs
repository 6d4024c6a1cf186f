//! The connection handshake as a sans-IO state machine: Hello (protocol
//! version, node id, resource name, features), mutual HMAC authentication,
//! then the exchange of state, sizes and generation identifiers.
//!
//! Owns: every reason to refuse a peer before replication starts. Must never:
//! accept State, Sizes or GenerationIds (or anything else) from a peer that
//! has not proven the shared secret when one is configured, generate nonces
//! (the caller supplies them), or decide what to do after the handshake (the
//! peer state machine acts on the [`Agreement`]).

use thiserror::Error;

use crate::auth::{auth_response, verify_response};
use crate::generation::{decide, GiView, SyncDecision};
use crate::state::{DiskState, Role};
use crate::wire::{
    Packet, FEATURE_AUTH, FEATURE_PROTOCOL_MASK, NONCE_BYTES, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
};

/// Who we are and whom we accept.
#[derive(Clone)]
pub struct HandshakeConfig {
    pub resource: String,
    pub local_node_id: u8,
    /// The node id configured for this connection's peer.
    pub peer_node_id: u8,
    pub shared_secret: Option<Vec<u8>>,
    /// Feature bits we announce (FEATURE_AUTH is set automatically).
    pub features: u64,
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("resource", &self.resource)
            .field("local_node_id", &self.local_node_id)
            .field("peer_node_id", &self.peer_node_id)
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("features", &self.features)
            .finish()
    }
}

/// What one node announces about itself after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub role: Role,
    pub disk: DiskState,
    /// Usable size of the backing device (0 = diskless).
    pub backing_bytes: u64,
    /// Size of the data in use (the metadata's data size; 0 = never set).
    pub current_bytes: u64,
    pub max_io_bytes: u32,
    pub gi: GiView,
    pub dirty_blocks: u64,
    pub promoted_at_ms: u64,
    /// `connect --discard-my-data` is in effect on this node.
    pub discard_my_data: bool,
}

/// The result of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub protocol_version: u16,
    pub peer_node_id: u8,
    pub peer_features: u64,
    pub peer: NodeInfo,
    /// The device size both nodes use from now on.
    pub size_bytes: u64,
    pub max_io_bytes: u32,
    pub decision: SyncDecision,
    /// False when neither node has a shared secret: the caller must warn.
    pub authenticated: bool,
}

/// Why the handshake refused the peer. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("no common protocol version: we speak {local_min}..={local_max}, the peer {peer_min}..={peer_max}; upgrade the older node")]
    NoCommonVersion {
        local_min: u16,
        local_max: u16,
        peer_min: u16,
        peer_max: u16,
    },
    #[error("peer is configured for resource {peer:?}, we are {local:?}; check the peer's address in the configuration")]
    WrongResource { local: String, peer: String },
    #[error("peer says it is node-id {got}, this connection expects node-id {expected}; check node-id in both configurations")]
    UnexpectedNode { expected: u8, got: u8 },
    #[error("peer uses our own node-id {0}; every node of a resource needs a distinct node-id")]
    DuplicateNodeId(u8),
    #[error("the peer requires a shared-secret but none is configured here; set the same shared-secret on both nodes")]
    SecretMissingLocally,
    #[error("a shared-secret is configured here but the peer does not authenticate; set the same shared-secret on both nodes")]
    SecretMissingOnPeer,
    #[error("peer failed authentication (wrong shared-secret?); set the same shared-secret on both nodes")]
    AuthFailed,
    #[error("unexpected {got} packet while {phase}; protocol error")]
    UnexpectedPacket {
        phase: &'static str,
        got: &'static str,
    },
    #[error("our device has {local_bytes} bytes but the peer's UpToDate data uses {peer_in_use_bytes} bytes; grow the backing device on this node")]
    LocalDeviceTooSmall {
        local_bytes: u64,
        peer_in_use_bytes: u64,
    },
    #[error("the peer's device has {peer_bytes} bytes but our UpToDate data uses {local_in_use_bytes} bytes; grow the backing device on the peer")]
    PeerDeviceTooSmall {
        peer_bytes: u64,
        local_in_use_bytes: u64,
    },
    #[error("replication protocol differs: we use {local}, the peer uses {peer}; set the same protocol on both nodes")]
    ProtocolMismatch {
        local: &'static str,
        peer: &'static str,
    },
    #[error("handshake already failed or finished")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    WaitHello,
    WaitAuth {
        verified_peer: bool,
        answered_peer: bool,
    },
    WaitInfo,
    Done,
}

/// Progress of a handshake after one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Send these packets and keep feeding packets.
    Continue(Vec<Packet>),
    /// Send these packets; the connection is established.
    Done(Vec<Packet>, Box<Agreement>),
}

#[derive(Debug, Default, Clone)]
struct PeerParts {
    node_id: u8,
    features: u64,
    state: Option<(Role, DiskState)>,
    sizes: Option<(u64, u64, u32)>,
    gi: Option<(GiView, u64, u64, bool)>,
}

/// One side of the handshake.
#[derive(Debug)]
pub struct Handshake {
    cfg: HandshakeConfig,
    local: NodeInfo,
    nonce: [u8; NONCE_BYTES],
    phase: Phase,
    version: u16,
    peer: PeerParts,
}

impl Handshake {
    /// `nonce` must be fresh random bytes from the caller's RNG.
    pub fn new(cfg: HandshakeConfig, local: NodeInfo, nonce: [u8; NONCE_BYTES]) -> Self {
        Self {
            cfg,
            local,
            nonce,
            phase: Phase::Start,
            version: 0,
            peer: PeerParts::default(),
        }
    }

    /// Updates what we will announce (before the info exchange).
    pub fn set_local(&mut self, local: NodeInfo) {
        self.local = local;
    }

    /// The first packet of our side.
    pub fn start(&mut self) -> Vec<Packet> {
        assert_eq!(self.phase, Phase::Start, "handshake started twice");
        self.phase = Phase::WaitHello;
        let auth = if self.cfg.shared_secret.is_some() {
            FEATURE_AUTH
        } else {
            0
        };
        vec![Packet::Hello {
            protocol_min: PROTOCOL_VERSION_MIN,
            protocol_max: PROTOCOL_VERSION_MAX,
            node_id: self.cfg.local_node_id,
            resource: self.cfg.resource.clone(),
            features: self.cfg.features | auth,
        }]
    }

    /// Feeds one packet from the peer.
    pub fn on_packet(&mut self, packet: Packet) -> Result<HandshakeStep, HandshakeError> {
        match (self.phase, packet) {
            (
                Phase::WaitHello,
                Packet::Hello {
                    protocol_min,
                    protocol_max,
                    node_id,
                    resource,
                    features,
                },
            ) => self.on_hello(protocol_min, protocol_max, node_id, resource, features),
            (Phase::WaitAuth { .. }, Packet::AuthChallenge { nonce }) => self.on_challenge(&nonce),
            (Phase::WaitAuth { .. }, Packet::AuthResponse { mac }) => self.on_response(&mac),
            (Phase::WaitInfo, packet) => self.on_info(packet),
            (Phase::Start | Phase::Done, _) => Err(HandshakeError::Finished),
            (phase, packet) => Err(HandshakeError::UnexpectedPacket {
                phase: phase_name(phase),
                got: packet.name(),
            }),
        }
    }

    fn on_hello(
        &mut self,
        min: u16,
        max: u16,
        node_id: u8,
        resource: String,
        features: u64,
    ) -> StepResult {
        let version = PROTOCOL_VERSION_MAX.min(max);
        if min > max || version < PROTOCOL_VERSION_MIN || version < min {
            return Err(HandshakeError::NoCommonVersion {
                local_min: PROTOCOL_VERSION_MIN,
                local_max: PROTOCOL_VERSION_MAX,
                peer_min: min,
                peer_max: max,
            });
        }
        if resource != self.cfg.resource {
            return Err(HandshakeError::WrongResource {
                local: self.cfg.resource.clone(),
                peer: resource,
            });
        }
        if node_id == self.cfg.local_node_id {
            return Err(HandshakeError::DuplicateNodeId(node_id));
        }
        if node_id != self.cfg.peer_node_id {
            return Err(HandshakeError::UnexpectedNode {
                expected: self.cfg.peer_node_id,
                got: node_id,
            });
        }
        let (ours, theirs) = (
            self.cfg.features & FEATURE_PROTOCOL_MASK,
            features & FEATURE_PROTOCOL_MASK,
        );
        if ours != 0 && theirs != 0 && ours != theirs {
            return Err(HandshakeError::ProtocolMismatch {
                local: protocol_name(ours),
                peer: protocol_name(theirs),
            });
        }
        self.version = version;
        self.peer.node_id = node_id;
        self.peer.features = features;
        match (
            self.cfg.shared_secret.is_some(),
            features & FEATURE_AUTH != 0,
        ) {
            (true, true) => {
                self.phase = Phase::WaitAuth {
                    verified_peer: false,
                    answered_peer: false,
                };
                Ok(HandshakeStep::Continue(vec![Packet::AuthChallenge {
                    nonce: self.nonce,
                }]))
            }
            (false, false) => {
                self.phase = Phase::WaitInfo;
                Ok(HandshakeStep::Continue(self.info_packets()))
            }
            (true, false) => Err(HandshakeError::SecretMissingOnPeer),
            (false, true) => Err(HandshakeError::SecretMissingLocally),
        }
    }

    fn secret(&self) -> &[u8] {
        self.cfg
            .shared_secret
            .as_deref()
            .expect("auth phase implies a secret")
    }

    fn on_challenge(&mut self, peer_nonce: &[u8; NONCE_BYTES]) -> StepResult {
        let Phase::WaitAuth {
            verified_peer,
            answered_peer,
        } = self.phase
        else {
            unreachable!()
        };
        if answered_peer {
            return Err(HandshakeError::UnexpectedPacket {
                phase: "authenticating",
                got: "AuthChallenge",
            });
        }
        if *peer_nonce == self.nonce {
            // A reflected challenge: answering it would let the peer replay our answer.
            return Err(HandshakeError::AuthFailed);
        }
        let mac = auth_response(
            self.secret(),
            peer_nonce,
            self.cfg.local_node_id,
            self.peer.node_id,
            &self.cfg.resource,
        );
        let mut out = vec![Packet::AuthResponse { mac }];
        self.phase = Phase::WaitAuth {
            verified_peer,
            answered_peer: true,
        };
        out.extend(self.maybe_auth_done());
        Ok(HandshakeStep::Continue(out))
    }

    fn on_response(&mut self, mac: &[u8]) -> StepResult {
        let Phase::WaitAuth {
            verified_peer,
            answered_peer,
        } = self.phase
        else {
            unreachable!()
        };
        if verified_peer {
            return Err(HandshakeError::UnexpectedPacket {
                phase: "authenticating",
                got: "AuthResponse",
            });
        }
        let ok = verify_response(
            self.secret(),
            &self.nonce,
            self.peer.node_id,
            self.cfg.local_node_id,
            &self.cfg.resource,
            mac,
        );
        if !ok {
            return Err(HandshakeError::AuthFailed);
        }
        self.phase = Phase::WaitAuth {
            verified_peer: true,
            answered_peer,
        };
        Ok(HandshakeStep::Continue(self.maybe_auth_done()))
    }

    fn maybe_auth_done(&mut self) -> Vec<Packet> {
        if self.phase
            == (Phase::WaitAuth {
                verified_peer: true,
                answered_peer: true,
            })
        {
            self.phase = Phase::WaitInfo;
            self.info_packets()
        } else {
            Vec::new()
        }
    }

    fn info_packets(&self) -> Vec<Packet> {
        let l = &self.local;
        vec![
            Packet::State {
                role: l.role,
                disk: l.disk,
                flags: 0,
            },
            Packet::Sizes {
                backing_bytes: l.backing_bytes,
                current_bytes: l.current_bytes,
                max_io_bytes: l.max_io_bytes,
            },
            Packet::GenerationIds {
                current: l.gi.current,
                bitmap: l.gi.bitmap,
                history: Box::new(l.gi.history),
                dirty_blocks: l.dirty_blocks,
                promoted_at_ms: l.promoted_at_ms,
                flags: u32::from(l.gi.crashed_primary) | (u32::from(l.discard_my_data) << 1),
            },
        ]
    }

    fn on_info(&mut self, packet: Packet) -> StepResult {
        let name = packet.name();
        let dup = || HandshakeError::UnexpectedPacket {
            phase: "exchanging state",
            got: name,
        };
        match packet {
            Packet::State { role, disk, .. } if self.peer.state.is_none() => {
                self.peer.state = Some((role, disk))
            }
            Packet::Sizes {
                backing_bytes,
                current_bytes,
                max_io_bytes,
            } if self.peer.sizes.is_none() => {
                self.peer.sizes = Some((backing_bytes, current_bytes, max_io_bytes));
            }
            Packet::GenerationIds {
                current,
                bitmap,
                history,
                dirty_blocks,
                promoted_at_ms,
                flags,
            } if self.peer.gi.is_none() => {
                let gi = GiView::from_wire(current, bitmap, *history, flags);
                self.peer.gi = Some((gi, dirty_blocks, promoted_at_ms, flags & 2 != 0));
            }
            _ => return Err(dup()),
        }
        match (self.peer.state, self.peer.sizes, self.peer.gi) {
            (
                Some((role, disk)),
                Some((backing_bytes, current_bytes, max_io_bytes)),
                Some((gi, dirty_blocks, promoted_at_ms, discard_my_data)),
            ) => {
                let peer = NodeInfo {
                    role,
                    disk,
                    backing_bytes,
                    current_bytes,
                    max_io_bytes,
                    gi,
                    dirty_blocks,
                    promoted_at_ms,
                    discard_my_data,
                };
                let agreement = self.agree(peer)?;
                self.phase = Phase::Done;
                Ok(HandshakeStep::Done(Vec::new(), Box::new(agreement)))
            }
            _ => Ok(HandshakeStep::Continue(Vec::new())),
        }
    }

    fn agree(&self, peer: NodeInfo) -> Result<Agreement, HandshakeError> {
        let size_bytes = agreed_size(&self.local, &peer)?;
        let max_io_bytes = match (self.local.max_io_bytes, peer.max_io_bytes) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        Ok(Agreement {
            protocol_version: self.version,
            peer_node_id: self.peer.node_id,
            peer_features: self.peer.features,
            peer,
            size_bytes,
            max_io_bytes,
            decision: decision(&self.local, &peer),
            authenticated: self.cfg.shared_secret.is_some(),
        })
    }
}

type StepResult = Result<HandshakeStep, HandshakeError>;

/// The generation decision, except that two Inconsistent disks never sync
/// between them (whatever their UUIDs say: a sync target's current UUID is
/// its source's sync UUID, which no other node knows).
fn decision(local: &NodeInfo, peer: &NodeInfo) -> SyncDecision {
    let decision = decide(&local.gi, &peer.gi);
    let both_inconsistent =
        local.disk == DiskState::Inconsistent && peer.disk == DiskState::Inconsistent;
    if both_inconsistent && decision != SyncDecision::BothJustCreated {
        SyncDecision::BothInconsistent
    } else {
        decision
    }
}

/// The smaller of the two backing sizes (a diskless side does not count);
/// refuses if that would cut data an UpToDate side has in use.
pub fn agreed_size(local: &NodeInfo, peer: &NodeInfo) -> Result<u64, HandshakeError> {
    let size = match (local.backing_bytes, peer.backing_bytes) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    };
    if peer.disk == DiskState::UpToDate && size < peer.current_bytes {
        return Err(HandshakeError::LocalDeviceTooSmall {
            local_bytes: size,
            peer_in_use_bytes: peer.current_bytes,
        });
    }
    if local.disk == DiskState::UpToDate && size < local.current_bytes {
        return Err(HandshakeError::PeerDeviceTooSmall {
            peer_bytes: size,
            local_in_use_bytes: local.current_bytes,
        });
    }
    Ok(size)
}

fn protocol_name(bits: u64) -> &'static str {
    match bits {
        crate::wire::FEATURE_PROTOCOL_A => "protocol A",
        crate::wire::FEATURE_PROTOCOL_B => "protocol B",
        crate::wire::FEATURE_PROTOCOL_C => "protocol C",
        _ => "an unknown protocol",
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Start => "not started",
        Phase::WaitHello => "waiting for Hello",
        Phase::WaitAuth { .. } => "authenticating",
        Phase::WaitInfo => "exchanging state",
        Phase::Done => "established",
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
