//! Network faults between two daemons, injected by a userspace TCP proxy
//! that alice dials instead of bob: added delay (the sync still completes),
//! a black hole (ping/ping-timeout detects the dead peer, both sides go back
//! to Connecting) and a cut of both directions (reconnect with connect-int
//! backoff once the network heals). Data must be identical at the end.

mod replication_common;

use replication_common::{peer_of, Cluster, Proxy, ResOpts};

/// Two nodes, alice reaches bob only through the proxy.
fn cluster_behind_proxy() -> (Cluster, Proxy) {
    cluster_behind_proxy_with(ResOpts::default())
}

fn cluster_behind_proxy_with(mut opts: ResOpts) -> (Cluster, Proxy) {
    let probe = Cluster::new(2, &opts);
    let proxy = Proxy::start(probe.nodes[1].port);
    opts.peer_addr_override = vec![None, Some(format!("127.0.0.1:{}", proxy.port))];
    for i in 0..2 {
        probe.write_config(i, &opts);
    }
    let mut c = probe;
    c.bring_up_all();
    (c, proxy)
}

fn not_connected(st: &serde_json::Value, peer: &str) -> bool {
    peer_of(st, peer).is_some_and(|p| p["connection"] != "Connected")
}

#[test]
fn full_sync_completes_over_a_delayed_link() {
    let (c, proxy) = cluster_behind_proxy();
    proxy.set_delay_ms(20);
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
}

#[test]
fn ping_timeout_detects_a_black_holed_peer_and_reconnect_follows() {
    let (c, proxy) = cluster_behind_proxy();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    proxy.set_blackhole(true);
    c.wait_for("bob lost after ping timeout", 0, |st| {
        not_connected(st, "bob")
    });
    c.wait_for("alice lost after ping timeout", 1, |st| {
        not_connected(st, "alice")
    });
    let before = proxy.connections();
    proxy.heal();
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_peer(1, "alice", "Established", "UpToDate");
    assert!(proxy.connections() > before, "a new connection was made");
    c.assert_identical(0, 1);
}

#[test]
fn cut_link_reconnects_with_backoff_after_healing() {
    let (c, proxy) = cluster_behind_proxy();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    proxy.cut();
    c.wait_for("bob lost after the cut", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["connection"] == "Connecting")
    });
    c.wait_for("alice lost after the cut", 1, |st| {
        peer_of(st, "alice").is_some_and(|p| p["connection"] == "Connecting")
    });
    let text = c.ctl_ok(0, &["status", "r0"]);
    assert!(text.contains("bob connection:Connecting"), "{text}");
    proxy.heal();
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_peer(1, "alice", "Established", "UpToDate");
    c.assert_identical(0, 1);
}

#[test]
fn writes_during_link_cuts_end_identical_after_reconnect() {
    if !replication_common::have_tool("writes_during_link_cuts", "qemu-io") {
        return;
    }
    let (c, proxy) = cluster_behind_proxy();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    for round in 0u64..6 {
        if round % 2 == 0 {
            proxy.cut();
        }
        for k in 0u64..4 {
            let offset_kib = (round * 4 + k) * 268 % 12_000;
            let pattern = (round * 16 + k) % 250 + 1;
            c.qemu_io(
                0,
                &format!("write -P {pattern} {}k 192k", offset_kib / 4 * 4),
            );
        }
        if round % 2 == 1 {
            proxy.heal();
        }
    }
    proxy.heal();
    c.qemu_io(0, "flush");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_for("nothing out of sync", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["out_of_sync_kib"] == 0)
    });
    c.wait_disk(1, "UpToDate");
    c.assert_identical(0, 1);
}

#[test]
fn corrupted_stream_is_detected_and_the_connection_recovers() {
    if !replication_common::have_tool("corrupted_stream", "qemu-io") {
        return;
    }
    // As in DRBD, the data blocks themselves are checked only with
    // data-integrity-alg (the corruption lands in one); headers always are.
    let (c, proxy) = cluster_behind_proxy_with(ResOpts {
        net_extra: "data-integrity-alg = \"crc32c\"\n".into(),
        ..ResOpts::default()
    });
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    let before = proxy.connections();
    proxy.corrupt_next();
    c.qemu_io(0, "write -P 0x3c 0 1M");
    c.qemu_io(0, "flush");
    c.wait_for("a new connection after the corruption", 0, |_| {
        proxy.connections() > before
    });
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_for("nothing out of sync", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["out_of_sync_kib"] == 0)
    });
    c.assert_identical(0, 1);
    let logs = c.log(0) + &c.log(1);
    assert!(logs.contains("protocol error"), "corruption not reported");
}
