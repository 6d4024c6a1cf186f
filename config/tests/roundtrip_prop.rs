//! Property test: for any valid combination of net, disk and options values, the
//! `to_toml` dump parses back to an equal `Resource` (what `drbdctl dump` prints is exactly
//! what the daemon runs with).

use std::path::Path;

use drbdd_config::{parse_resource, OnIoError, OnNoQuorum, Protocol, Quorum, Resource};
use proptest::prelude::*;

const BASE: &str = "\
resource = \"r0\"
[on.alice]
node-id = 0
address = \"10.0.0.1:7789\"
minor = 0
disk = \"/tmp/a.img\"
[on.bob]
node-id = 1
address = \"10.0.0.2:7789\"
minor = 0
disk = \"/tmp/b.img\"
";

fn base() -> Resource {
    parse_resource(Path::new("r0.toml"), BASE).unwrap()
}

proptest! {
    #[test]
    fn dump_of_any_valid_options_parses_back_equal(
        protocol in prop_oneof![Just(Protocol::A), Just(Protocol::B), Just(Protocol::C)],
        timeout in 1u32..=600, connect_int in 1u32..=120, ping_int in 1u32..=120,
        ping_timeout in 1u32..=300, ko_count in 0u32..=200, max_buffers in 32u32..=131_072,
        sndbuf in 0u32..=(10 << 20), resync in 1u32..=(4 << 20), plan in 0u32..=300,
        fill in 0u64..=(1 << 20), max_rate in 250u32..=(4 << 20), min_rate in 0u32..=(4 << 20),
        al in 67u32..=65_534, flushes in any::<bool>(), quorum_nodes in 0u8..=3,
        secret in proptest::option::of("[ -~]{1,64}"),
        handler in proptest::option::of("[ -~\\n\\t]{1,40}"),
    ) {
        let mut r = base();
        r.net.protocol = protocol;
        r.net.timeout_ms = timeout * 100;
        r.net.connect_int_ms = connect_int * 1000;
        r.net.ping_int_ms = ping_int * 1000;
        r.net.ping_timeout_ms = ping_timeout * 100;
        r.net.ko_count = ko_count;
        r.net.max_buffers = max_buffers;
        r.net.sndbuf_size_bytes = sndbuf;
        r.net.shared_secret = secret;
        r.disk.resync_rate_kib = resync;
        r.disk.c_plan_ahead_ms = plan * 100;
        r.disk.c_fill_target_sectors = fill;
        r.disk.c_max_rate_kib = max_rate;
        r.disk.c_min_rate_kib = min_rate;
        r.disk.al_extents = al;
        r.disk.disk_flushes = flushes;
        r.disk.md_flushes = !flushes;
        r.disk.on_io_error = if flushes { OnIoError::PassOn } else { OnIoError::CallLocalIoError };
        r.options.quorum = if quorum_nodes == 0 { Quorum::Majority } else { Quorum::Nodes(quorum_nodes) };
        r.options.on_no_quorum = OnNoQuorum::IoError;
        r.handlers.split_brain = handler;
        for c in &mut r.connections {
            c.net = r.net.clone();
        }
        let dumped = r.to_toml();
        let back = parse_resource(Path::new("r0.toml"), &dumped);
        prop_assert_eq!(back.as_ref().ok(), Some(&r), "{:?}\n{}", back.as_ref().err(), dumped);
    }
}
