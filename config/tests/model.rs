//! Proves the effective configuration: DRBD's defaults when options are left out, unit
//! conversion (tenths of a second, seconds, k/M suffixes), connection-mesh expansion with
//! per-connection overrides, the `to_toml` dump parsing back to an equal resource, and that
//! the shipped sample config validates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use drbdd_config::{
    parse_resource, AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, CpuMask, Disk, Frontends, MetaDisk, Net,
    OnIoError, OnNoQuorum, Options, Protocol, Quorum, Resource,
};

const MINIMAL: &str = "\
resource = \"r0\"
[on.alice]
node-id = 0
address = \"127.0.0.1:7789\"
minor = 0
disk = \"/tmp/a.img\"
[on.bob]
node-id = 1
address = \"127.0.0.1:7790\"
minor = 1
disk = \"none\"
meta-disk = \"/tmp/b.md\"
";

fn parse(text: &str) -> Resource {
    parse_resource(Path::new("r0.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn left_out_options_take_drbd_defaults() {
    let r = parse(MINIMAL);
    let net = &r.net;
    assert_eq!(net.protocol, Protocol::C);
    assert_eq!(net.timeout_ms, 6_000);
    assert_eq!(net.connect_int_ms, 10_000);
    assert_eq!(net.ping_int_ms, 10_000);
    assert_eq!(net.ping_timeout_ms, 500);
    assert_eq!(net.ko_count, 7);
    assert_eq!(net.max_buffers, 2048);
    assert_eq!(net.sndbuf_size_bytes, 0);
    assert_eq!(net.cram_hmac_alg, "sha256");
    assert_eq!(net.shared_secret, None);
    assert_eq!(net.after_sb_0pri, AfterSb0Pri::Disconnect);
    assert_eq!(net.after_sb_1pri, AfterSb1Pri::Disconnect);
    assert_eq!(net.after_sb_2pri, AfterSb2Pri::Disconnect);
    let disk = &r.disk;
    assert_eq!(disk.on_io_error, OnIoError::Detach);
    assert_eq!(disk.al_extents, 1237);
    assert_eq!(disk.resync_rate_kib, 250);
    assert_eq!(disk.c_plan_ahead_ms, 2_000);
    assert_eq!(disk.c_fill_target_sectors, 100);
    assert_eq!(disk.c_max_rate_kib, 102_400);
    assert_eq!(disk.c_min_rate_kib, 250);
    assert!(disk.disk_flushes && disk.md_flushes);
    assert_eq!(
        r.options,
        Options {
            quorum: Quorum::Off,
            on_no_quorum: OnNoQuorum::SuspendIo,
            auto_promote: true,
            cpu_mask: CpuMask::default(),
        }
    );
    assert_eq!(
        r.frontend,
        Frontends {
            nbd: true,
            ublk: false,
            nbd_tcp: None
        }
    );
    assert_eq!(r.max_peers, 7);
}

#[test]
fn nodes_are_read_in_file_order_with_diskless_and_external_meta() {
    let r = parse(MINIMAL);
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(r.nodes[0].disk, Some(PathBuf::from("/tmp/a.img")));
    assert_eq!(r.nodes[0].meta_disk, MetaDisk::Internal);
    assert_eq!(r.nodes[1].disk, None);
    assert_eq!(
        r.nodes[1].meta_disk,
        MetaDisk::External(PathBuf::from("/tmp/b.md"))
    );
    assert_eq!(r.node_by_id(1).map(|n| n.name.as_str()), Some("bob"));
    assert!(r.node_by_id(5).is_none());
}

#[test]
fn drbd_units_and_suffixes_are_converted() {
    let text = format!(
        "{MINIMAL}[net]\ntimeout = 30\nconnect-int = 3\nping-int = 2\nping-timeout = 10\nsndbuf-size = \"512k\"\n\
         [disk]\nresync-rate = \"40M\"\nc-plan-ahead = 0\nc-fill-target = \"1M\"\nc-max-rate = \"1G\"\nc-min-rate = 0\n\
         disk-flushes = \"no\"\non-io-error = \"pass_on\"\n[options]\nquorum = 2\non-no-quorum = \"io-error\"\nauto-promote = false\ncpu-mask = \"0x3,00000004\"\n"
    );
    let r = parse(&text);
    assert_eq!(
        (
            r.net.timeout_ms,
            r.net.connect_int_ms,
            r.net.ping_int_ms,
            r.net.ping_timeout_ms
        ),
        (3_000, 3_000, 2_000, 1_000)
    );
    assert_eq!(r.net.sndbuf_size_bytes, 512 * 1024);
    assert_eq!(r.disk.resync_rate_kib, 40 * 1024);
    assert_eq!(r.disk.c_plan_ahead_ms, 0);
    assert_eq!(r.disk.c_fill_target_sectors, 2048);
    assert_eq!(r.disk.c_max_rate_kib, 1024 * 1024);
    assert_eq!(r.disk.c_min_rate_kib, 0);
    assert!(!r.disk.disk_flushes);
    assert_eq!(r.disk.on_io_error, OnIoError::PassOn);
    assert_eq!(
        r.options,
        Options {
            quorum: Quorum::Nodes(2),
            on_no_quorum: OnNoQuorum::IoError,
            auto_promote: false,
            cpu_mask: CpuMask::from_cpus([2, 32, 33]),
        }
    );
}

#[test]
fn two_nodes_without_connections_get_an_implicit_connection() {
    let r = parse(MINIMAL);
    assert_eq!(r.connections.len(), 1);
    assert!(r.connections[0].joins("bob", "alice"));
    assert_eq!(r.peers_of("alice")[0].name, "bob");
    assert_eq!(r.peers_of("bob")[0].name, "alice");
}

const THREE: &str = "\
resource = \"r0\"
frontend = [\"nbd\", \"ublk\"]
max-peers = 2
[net]
protocol = \"A\"
shared-secret = \"s3cr\\\"et\"
verify-alg = \"crc32c\"
after-sb-0pri = \"discard-node-alice\"
[handlers]
split-brain = \"echo split\"
fence-peer = \"/bin/true\"
[on.alice]
node-id = 0
address = \"127.0.0.1:7789\"
minor = 0
disk = \"/tmp/a.img\"
nbd-listen = \"127.0.0.1:10809\"
[on.bob]
node-id = 1
address = \"127.0.0.1:7790\"
minor = 1
disk = \"/tmp/b.img\"
nbd-listen = \"127.0.0.1:10810\"
[on.\"carol.example\"]
node-id = 2
address = \"[::1]:7791\"
minor = 2
disk = \"none\"
[connection-mesh]
hosts = [\"alice\", \"bob\", \"carol.example\"]
[[connection]]
hosts = [\"bob\", \"alice\"]
net = { protocol = \"C\", max-buffers = 8000 }
";

#[test]
fn mesh_expands_to_all_pairs_and_connection_overrides_net() {
    let r = parse(THREE);
    assert_eq!(r.connections.len(), 3);
    assert_eq!(r.net_for("alice", "bob").protocol, Protocol::C);
    assert_eq!(r.net_for("alice", "bob").max_buffers, 8000);
    assert_eq!(
        r.net_for("alice", "bob").shared_secret.as_deref(),
        Some("s3cr\"et")
    );
    assert_eq!(r.net_for("carol.example", "alice").protocol, Protocol::A);
    let peers: Vec<&str> = r.peers_of("bob").iter().map(|n| n.name.as_str()).collect();
    assert_eq!(peers, ["alice", "carol.example"]);
    assert_eq!(
        r.net.after_sb_0pri,
        AfterSb0Pri::DiscardNode("alice".to_owned())
    );
    assert_eq!(r.handlers.fence_peer.as_deref(), Some("/bin/true"));
    let bob_nbd: SocketAddr = "127.0.0.1:10810".parse().unwrap();
    assert_eq!(
        r.frontends_for("bob"),
        Frontends {
            nbd: true,
            ublk: true,
            nbd_tcp: Some(bob_nbd)
        }
    );
}

#[test]
fn dump_parses_back_to_an_equal_resource() {
    for text in [MINIMAL, THREE] {
        let r = parse(text);
        let dumped = r.to_toml();
        let back = parse_resource(Path::new("r0.toml"), &dumped)
            .unwrap_or_else(|e| panic!("{e}\n{dumped}"));
        assert_eq!(back, r, "{dumped}");
    }
}

#[test]
fn dump_shows_defaults_and_only_overriding_connections() {
    let dumped = parse(THREE).to_toml();
    for line in [
        "al-extents = 1237",
        "timeout = 60",
        "resync-rate = \"250k\"",
        "c-max-rate = \"100M\"",
        "[on.\"carol.example\"]",
    ] {
        assert!(dumped.contains(line), "missing {line:?} in\n{dumped}");
    }
    assert_eq!(dumped.matches("[[connection]]").count(), 1, "{dumped}");
    assert!(
        dumped.contains("[connection.net]\nprotocol = \"C\"\nmax-buffers = 8000\n"),
        "{dumped}"
    );
}

#[test]
fn dump_round_trips_every_non_default_option() {
    let mut r = parse(MINIMAL);
    r.net = Net {
        protocol: Protocol::B,
        shared_secret: Some("x".into()),
        verify_alg: Some("sha256".into()),
        csums_alg: Some("crc32c".into()),
        data_integrity_alg: Some("crc32c".into()),
        after_sb_0pri: AfterSb0Pri::DiscardLeastChanges,
        after_sb_1pri: AfterSb1Pri::CallPriLostAfterSb,
        after_sb_2pri: AfterSb2Pri::ViolentlyAs0p,
        timeout_ms: 100,
        connect_int_ms: 1000,
        ping_int_ms: 120_000,
        ping_timeout_ms: 30_000,
        ko_count: 0,
        max_buffers: 32,
        sndbuf_size_bytes: 1000,
        ..Net::default()
    };
    r.disk = Disk {
        on_io_error: OnIoError::CallLocalIoError,
        resync_rate_kib: 1,
        c_plan_ahead_ms: 0,
        c_fill_target_sectors: 7,
        c_max_rate_kib: 250,
        c_min_rate_kib: 3,
        disk_flushes: false,
        md_flushes: false,
        al_extents: 67,
    };
    r.options.quorum = Quorum::All;
    r.handlers.quorum_lost = Some("logger \"lost\"\n".into());
    for c in &mut r.connections {
        c.net = r.net.clone();
    }
    let dumped = r.to_toml();
    let back =
        parse_resource(Path::new("r0.toml"), &dumped).unwrap_or_else(|e| panic!("{e}\n{dumped}"));
    assert_eq!(back, r, "{dumped}");
}

#[test]
fn shipped_sample_config_validates() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/resources.d/r0.toml.example");
    let text = std::fs::read_to_string(&path).unwrap();
    let r = parse_resource(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.name, "r0");
    assert_eq!(r.nodes.len(), 3);
    assert_eq!(r.connections.len(), 3);
    assert_eq!(r.net_for("alice", "bob").max_buffers, 8000);
    assert_eq!(r.net_for("alice", "charlie").max_buffers, 2048);
    assert_eq!(r.disk.c_fill_target_sectors, 100);
}

#[test]
fn explicit_connections_without_mesh_form_the_topology_and_round_trip() {
    let text = "\
resource = \"r0\"
[on.hub]
node-id = 0
address = \"10.0.0.1:7789\"
minor = 0
disk = \"/tmp/hub.img\"
[on.left]
node-id = 1
address = \"10.0.0.2:7789\"
minor = 0
disk = \"/tmp/left.img\"
[on.right]
node-id = 2
address = \"10.0.0.3:7789\"
minor = 0
disk = \"/tmp/right.img\"
[[connection]]
hosts = [\"hub\", \"left\"]
[[connection]]
hosts = [\"hub\", \"right\"]
[connection.net]
protocol = \"A\"
";
    let r = parse(text);
    assert!(r.connection_mesh.is_empty());
    let hub_peers: Vec<&str> = r.peers_of("hub").iter().map(|n| n.name.as_str()).collect();
    assert_eq!(hub_peers, ["left", "right"]);
    assert_eq!(r.peers_of("left").len(), 1);
    assert_eq!(r.net_for("right", "hub").protocol, Protocol::A);
    assert_eq!(r.net_for("left", "hub").protocol, Protocol::C);
    assert_eq!(
        r.net_for("left", "right").protocol,
        Protocol::C,
        "no connection: resource net"
    );
    let dumped = r.to_toml();
    assert_eq!(dumped.matches("[[connection]]").count(), 2, "{dumped}");
    assert_eq!(parse(&dumped), r);
}

#[test]
fn cpu_mask_parses_drbd_hex_and_names_what_is_wrong() {
    assert!(CpuMask::parse("0").unwrap().is_empty());
    assert_eq!(
        CpuMask::parse("3").unwrap().cpus().collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        CpuMask::parse("0x10,00000001")
            .unwrap()
            .cpus()
            .collect::<Vec<_>>(),
        [0, 36]
    );
    let wide = CpuMask::from_cpus([1, 64, 200]);
    assert_eq!(CpuMask::parse(&wide.to_hex()).unwrap(), wide);
    assert_eq!(CpuMask::default().to_hex(), "0");
    assert!(CpuMask::parse("").unwrap_err().contains("empty"));
    assert!(CpuMask::parse("3g")
        .unwrap_err()
        .contains("`g` is not a hex digit"));
    let too_wide = format!("1{}", "0".repeat(256));
    assert!(CpuMask::parse(&too_wide).unwrap_err().contains("beyond"));
    // In a file: the error points at the value and says what to write.
    let text = format!("{MINIMAL}[options]\ncpu-mask = \"zz\"\n");
    let err = parse_resource(Path::new("r0.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("r0.toml:") && err.contains("cpu-mask"),
        "{err}"
    );
    assert!(err.contains("hexadecimal"), "{err}");
}
