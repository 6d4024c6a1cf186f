//! The configuration data model: what a validated resource looks like, DRBD's defaults, and
//! the lookups the daemon needs (local node, peers, per-connection net options).
//!
//! Owns: the public types. Must never: parse text or touch files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigErrors, ErrorKind};

/// Peer slots in the metadata when `max-peers` is not set.
pub const DEFAULT_MAX_PEERS: u8 = 7;
/// Largest `max-peers` (DRBD: node-ids 0..=31).
pub const MAX_PEERS_LIMIT: u8 = 31;
/// Node-ids must be below this.
pub const NODE_ID_LIMIT: u8 = 32;

/// Everything found in a config directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `global.toml` (defaults when absent).
    pub global: Global,
    /// One per `resources.d/*.toml`, sorted by name.
    pub resources: Vec<Resource>,
}

impl Config {
    /// The resource called `name`.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

/// `global.toml`: settings shared by all resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Global {
    /// `[common]`: defaults every resource starts from (DRBD's `common` section).
    pub common: Common,
}

/// Defaults for every resource; a resource file overrides them key by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// `frontend` default.
    pub frontend: Frontends,
    /// `max-peers` default.
    pub max_peers: u8,
    /// `[common.net]`.
    pub net: Net,
    /// `[common.disk]`.
    pub disk: Disk,
    /// `[common.options]`.
    pub options: Options,
    /// `[common.handlers]`.
    pub handlers: Handlers,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            frontend: Frontends::default(),
            max_peers: DEFAULT_MAX_PEERS,
            net: Net::default(),
            disk: Disk::default(),
            options: Options::default(),
            handlers: Handlers::default(),
        }
    }
}

/// One replicated resource (one file in `resources.d/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `resource = "r0"`.
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    /// Block-device frontends to export.
    pub frontend: Frontends,
    /// Peer slots in the metadata (default 7, max 31).
    pub max_peers: u8,
    /// `[on.<host>]` sections in file order.
    pub nodes: Vec<Node>,
    /// Every connection (connection-mesh expanded, then explicit `[[connection]]` pairs).
    pub connections: Vec<Connection>,
    /// `[connection-mesh] hosts` (empty when only `[[connection]]` entries are used).
    pub connection_mesh: Vec<String>,
    /// `[net]` (per-connection overrides live in `connections`).
    pub net: Net,
    /// `[disk]`.
    pub disk: Disk,
    /// `[options]`.
    pub options: Options,
    /// `[handlers]`.
    pub handlers: Handlers,
}

/// Which frontends export the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontends {
    /// Export over NBD (Unix socket in the run dir, plus TCP if `nbd_tcp`).
    pub nbd: bool,
    /// Export as `/dev/ublkb<minor>`.
    pub ublk: bool,
    /// `nbd-listen`: TCP address the NBD server also listens on.
    pub nbd_tcp: Option<SocketAddr>,
}

impl Default for Frontends {
    fn default() -> Self {
        Self {
            nbd: true,
            ublk: false,
            nbd_tcp: None,
        }
    }
}

/// `[on.<host>]`: one node of the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host name (the `<host>` in `[on.<host>]`).
    pub name: String,
    /// DRBD node-id, 0..=max-peers.
    pub node_id: u8,
    /// Replication address.
    pub address: SocketAddr,
    /// Device minor: `/dev/ublkb<minor>`.
    pub minor: u32,
    /// Backing block device or file; `None` = diskless (`disk = "none"`).
    pub disk: Option<PathBuf>,
    /// Where the metadata lives.
    pub meta_disk: MetaDisk,
    /// Per-node `nbd-listen`, overrides the resource's (several nodes on one machine).
    pub nbd_listen: Option<SocketAddr>,
}

/// `meta-disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaDisk {
    /// At the end of the backing device.
    Internal,
    /// On a separate device or file.
    External(PathBuf),
}

/// A connection between two nodes with its effective net options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The two host names.
    pub hosts: [String; 2],
    /// Effective net options (the resource's `[net]` plus this connection's overrides).
    pub net: Net,
}

impl Connection {
    /// True when this connection joins `a` and `b` (either order).
    pub fn joins(&self, a: &str, b: &str) -> bool {
        (self.hosts[0] == a && self.hosts[1] == b) || (self.hosts[0] == b && self.hosts[1] == a)
    }
}

/// Replication protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Asynchronous: complete when written locally and sent.
    A,
    /// Memory-synchronous: complete when the peer received it.
    B,
    /// Synchronous: complete when written on both disks.
    C,
}

/// `after-sb-0pri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSb0Pri {
    /// `disconnect`
    Disconnect,
    /// `discard-younger-primary`
    DiscardYoungerPrimary,
    /// `discard-older-primary`
    DiscardOlderPrimary,
    /// `discard-zero-changes`
    DiscardZeroChanges,
    /// `discard-least-changes`
    DiscardLeastChanges,
    /// `discard-node-<host>`
    DiscardNode(String),
}

/// `after-sb-1pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb1Pri {
    /// `disconnect`
    Disconnect,
    /// `consensus`
    Consensus,
    /// `violently-as0p`
    ViolentlyAs0p,
    /// `discard-secondary`
    DiscardSecondary,
    /// `call-pri-lost-after-sb`
    CallPriLostAfterSb,
}

/// `after-sb-2pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb2Pri {
    /// `disconnect`
    Disconnect,
    /// `violently-as0p`
    ViolentlyAs0p,
    /// `call-pri-lost-after-sb`
    CallPriLostAfterSb,
}

/// `[net]` options. TOML uses DRBD's units; fields carry explicit ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// `protocol` (default C).
    pub protocol: Protocol,
    /// `shared-secret` for peer authentication.
    pub shared_secret: Option<String>,
    /// `cram-hmac-alg` (only "sha256" is supported).
    pub cram_hmac_alg: String,
    /// `verify-alg` for online verify.
    pub verify_alg: Option<String>,
    /// `csums-alg` for checksum-based resync.
    pub csums_alg: Option<String>,
    /// `data-integrity-alg`: only "crc32c", which extends the frame CRC over
    /// the replicated data blocks (unset, as DRBD's default, TCP's checksum
    /// alone protects them; either peer setting it turns it on).
    pub data_integrity_alg: Option<String>,
    /// `after-sb-0pri`.
    pub after_sb_0pri: AfterSb0Pri,
    /// `after-sb-1pri`.
    pub after_sb_1pri: AfterSb1Pri,
    /// `after-sb-2pri`.
    pub after_sb_2pri: AfterSb2Pri,
    /// `timeout` (TOML: tenths of a second; default 60 = 6 s).
    pub timeout_ms: u32,
    /// `connect-int` (TOML: seconds; default 10).
    pub connect_int_ms: u32,
    /// `ping-int` (TOML: seconds; default 10).
    pub ping_int_ms: u32,
    /// `ping-timeout` (TOML: tenths of a second; default 5 = 500 ms).
    pub ping_timeout_ms: u32,
    /// `ko-count` (default 7; 0 = off).
    pub ko_count: u32,
    /// `max-buffers` (default 2048).
    pub max_buffers: u32,
    /// `sndbuf-size` in bytes (default 0 = auto-tune).
    pub sndbuf_size_bytes: u32,
}

impl Default for Net {
    fn default() -> Self {
        Self {
            protocol: Protocol::C,
            shared_secret: None,
            cram_hmac_alg: "sha256".to_owned(),
            verify_alg: None,
            csums_alg: None,
            data_integrity_alg: None,
            after_sb_0pri: AfterSb0Pri::Disconnect,
            after_sb_1pri: AfterSb1Pri::Disconnect,
            after_sb_2pri: AfterSb2Pri::Disconnect,
            timeout_ms: 6_000,
            connect_int_ms: 10_000,
            ping_int_ms: 10_000,
            ping_timeout_ms: 500,
            ko_count: 7,
            max_buffers: 2048,
            sndbuf_size_bytes: 0,
        }
    }
}

/// `on-io-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIoError {
    /// `detach`: drop the backing device, continue diskless.
    Detach,
    /// `pass_on`: report the error upwards.
    PassOn,
    /// `call-local-io-error`: run the `local-io-error` handler.
    CallLocalIoError,
}

/// `[disk]` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `on-io-error` (default detach).
    pub on_io_error: OnIoError,
    /// `resync-rate` in KiB/s (default 250k).
    pub resync_rate_kib: u32,
    /// `c-plan-ahead` (TOML: tenths of a second; default 20 = 2 s; 0 = fixed rate).
    pub c_plan_ahead_ms: u32,
    /// `c-fill-target` in 512-byte sectors (default 100).
    pub c_fill_target_sectors: u64,
    /// `c-max-rate` in KiB/s (default 100M).
    pub c_max_rate_kib: u32,
    /// `c-min-rate` in KiB/s (default 250k).
    pub c_min_rate_kib: u32,
    /// `disk-flushes` (default true).
    pub disk_flushes: bool,
    /// `md-flushes` (default true).
    pub md_flushes: bool,
    /// `al-extents` (default 1237).
    pub al_extents: u32,
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            on_io_error: OnIoError::Detach,
            resync_rate_kib: 250,
            c_plan_ahead_ms: 2_000,
            c_fill_target_sectors: 100,
            c_max_rate_kib: 100 * 1024,
            c_min_rate_kib: 250,
            disk_flushes: true,
            md_flushes: true,
            al_extents: 1237,
        }
    }
}

/// `quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// `off`
    Off,
    /// `majority`
    Majority,
    /// `all`
    All,
    /// A fixed number of nodes.
    Nodes(u8),
}

/// `on-no-quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNoQuorum {
    /// `suspend-io` (DRBD's default): freeze I/O until quorum returns.
    SuspendIo,
    /// `io-error`: fail I/O.
    IoError,
}

/// `[options]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `quorum` (default off).
    pub quorum: Quorum,
    /// `on-no-quorum` (default suspend-io).
    pub on_no_quorum: OnNoQuorum,
    /// `auto-promote` (default yes).
    pub auto_promote: bool,
    /// `cpu-mask` (default empty: one CPU per resource, see [`CpuMask`]).
    pub cpu_mask: CpuMask,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            quorum: Quorum::Off,
            on_no_quorum: OnNoQuorum::SuspendIo,
            auto_promote: true,
            cpu_mask: CpuMask::default(),
        }
    }
}

/// `cpu-mask`: the CPUs the resource's replication thread may run on, as
/// DRBD's hexadecimal mask (`"3"` = CPUs 0 and 1; commas between 32-bit
/// groups, as Linux prints masks, are allowed). Empty (`"0"`, the default)
/// means DRBD's default: the thread is bound to one CPU, chosen by the
/// resource's minor, so resources spread over the CPUs and each one's
/// hand-overs stay on one CPU's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuMask([u64; CpuMask::WORDS]);

impl CpuMask {
    /// Highest number of CPUs a mask can name.
    pub const MAX_CPUS: usize = Self::WORDS * 64;
    const WORDS: usize = 16;

    /// Parses a hexadecimal mask (optional `0x`, commas ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits: Vec<char> = text
            .trim()
            .trim_start_matches("0x")
            .trim_start_matches("0X")
            .chars()
            .filter(|c| *c != ',')
            .collect();
        if digits.is_empty() {
            return Err("is empty; give a hexadecimal CPU mask such as \"3\" (CPUs 0 and 1) or \"0\" for the default".into());
        }
        let mut mask = CpuMask::default();
        for (i, c) in digits.iter().rev().enumerate() {
            let Some(nibble) = c.to_digit(16) else {
                return Err(format!(
                    "is not a hexadecimal CPU mask (`{c}` is not a hex digit); e.g. \"3\" for CPUs 0 and 1"
                ));
            };
            if nibble == 0 {
                continue;
            }
            let bit = i * 4;
            if bit >= Self::MAX_CPUS {
                return Err(format!(
                    "names CPUs beyond the {} supported",
                    Self::MAX_CPUS
                ));
            }
            mask.0[bit / 64] |= u64::from(nibble) << (bit % 64);
        }
        Ok(mask)
    }

    /// Builds a mask from CPU numbers (those past [`Self::MAX_CPUS`] are ignored).
    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut mask = CpuMask::default();
        for cpu in cpus.into_iter().filter(|c| *c < Self::MAX_CPUS) {
            mask.0[cpu / 64] |= 1 << (cpu % 64);
        }
        mask
    }

    /// No CPU named: the default placement.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The CPUs named, ascending.
    pub fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        (0..Self::MAX_CPUS).filter(|c| self.0[c / 64] & (1 << (c % 64)) != 0)
    }

    /// The mask in hexadecimal, without leading zeros (`"0"` when empty).
    pub fn to_hex(&self) -> String {
        let Some(top) = self.0.iter().rposition(|w| *w != 0) else {
            return "0".into();
        };
        let mut text = format!("{:x}", self.0[top]);
        for w in self.0[..top].iter().rev() {
            text.push_str(&format!("{w:016x}"));
        }
        text
    }
}

/// `[handlers]`: commands run on events (run with `/bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Handlers {
    /// `split-brain`
    pub split_brain: Option<String>,
    /// `fence-peer`
    pub fence_peer: Option<String>,
    /// `unfence-peer`
    pub unfence_peer: Option<String>,
    /// `local-io-error`
    pub local_io_error: Option<String>,
    /// `pri-on-incon-degr`
    pub pri_on_incon_degr: Option<String>,
    /// `pri-lost-after-sb`
    pub pri_lost_after_sb: Option<String>,
    /// `pri-lost`
    pub pri_lost: Option<String>,
    /// `initial-split-brain`
    pub initial_split_brain: Option<String>,
    /// `before-resync-target`
    pub before_resync_target: Option<String>,
    /// `after-resync-target`
    pub after_resync_target: Option<String>,
    /// `before-resync-source`
    pub before_resync_source: Option<String>,
    /// `out-of-sync`
    pub out_of_sync: Option<String>,
    /// `quorum-lost`
    pub quorum_lost: Option<String>,
    /// `disconnected`
    pub disconnected: Option<String>,
}

impl Handlers {
    /// (TOML key, command) for every handler, set or not, in schema order.
    pub fn entries(&self) -> [(&'static str, &Option<String>); 14] {
        [
            ("split-brain", &self.split_brain),
            ("fence-peer", &self.fence_peer),
            ("unfence-peer", &self.unfence_peer),
            ("local-io-error", &self.local_io_error),
            ("pri-on-incon-degr", &self.pri_on_incon_degr),
            ("pri-lost-after-sb", &self.pri_lost_after_sb),
            ("pri-lost", &self.pri_lost),
            ("initial-split-brain", &self.initial_split_brain),
            ("before-resync-target", &self.before_resync_target),
            ("after-resync-target", &self.after_resync_target),
            ("before-resync-source", &self.before_resync_source),
            ("out-of-sync", &self.out_of_sync),
            ("quorum-lost", &self.quorum_lost),
            ("disconnected", &self.disconnected),
        ]
    }

    /// The slot for TOML key `key`.
    pub(crate) fn slot_mut(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "split-brain" => &mut self.split_brain,
            "fence-peer" => &mut self.fence_peer,
            "unfence-peer" => &mut self.unfence_peer,
            "local-io-error" => &mut self.local_io_error,
            "pri-on-incon-degr" => &mut self.pri_on_incon_degr,
            "pri-lost-after-sb" => &mut self.pri_lost_after_sb,
            "pri-lost" => &mut self.pri_lost,
            "initial-split-brain" => &mut self.initial_split_brain,
            "before-resync-target" => &mut self.before_resync_target,
            "after-resync-target" => &mut self.after_resync_target,
            "before-resync-source" => &mut self.before_resync_source,
            "out-of-sync" => &mut self.out_of_sync,
            "quorum-lost" => &mut self.quorum_lost,
            "disconnected" => &mut self.disconnected,
            _ => return None,
        })
    }
}

impl Resource {
    /// The `[on.<node_name>]` node; the error lists the nodes there are.
    pub fn local_node(&self, node_name: &str) -> Result<&Node, ConfigErrors> {
        self.nodes
            .iter()
            .find(|n| n.name == node_name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                ConfigErrors::single(ConfigError {
                    path: self.source.clone(),
                    line: 0,
                    col: 0,
                    kind: ErrorKind::UnknownHost,
                    message: format!(
                        "no [on.{node_name}] section in resource \"{}\" for this host; \
                         nodes are: {}; add an [on.{node_name}] section or pass --node <name>",
                        self.name,
                        known.join(", ")
                    ),
                })
            })
    }

    /// The node with `node_id`.
    pub fn node_by_id(&self, node_id: u8) -> Option<&Node> {
        self.nodes.iter().find(|n| n.node_id == node_id)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Nodes `node_name` connects to, in connection order.
    pub fn peers_of(&self, node_name: &str) -> Vec<&Node> {
        self.connections
            .iter()
            .filter_map(|c| {
                if c.hosts[0] == node_name {
                    self.node(&c.hosts[1])
                } else if c.hosts[1] == node_name {
                    self.node(&c.hosts[0])
                } else {
                    None
                }
            })
            .collect()
    }

    /// Net options for the connection `a`–`b` (the resource's `[net]` when there is none).
    pub fn net_for(&self, a: &str, b: &str) -> Net {
        self.connections
            .iter()
            .find(|c| c.joins(a, b))
            .map_or_else(|| self.net.clone(), |c| c.net.clone())
    }

    /// Frontends for one node: the node's `nbd-listen` overrides the resource's.
    pub fn frontends_for(&self, node_name: &str) -> Frontends {
        let mut f = self.frontend;
        if let Some(addr) = self.node(node_name).and_then(|n| n.nbd_listen) {
            f.nbd_tcp = Some(addr);
        }
        f
    }

    /// Where this resource came from, for messages.
    pub fn source_path(&self) -> &Path {
        &self.source
    }
}
