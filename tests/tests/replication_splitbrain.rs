//! Split brain and its manual recovery (guide 13.3 / 11.17): both nodes
//! write while disconnected; on reconnect the handshake detects split brain
//! and, with the default after-sb policies, both sides stay StandAlone. The
//! victim runs `connect --discard-my-data`, the survivor `connect`; the
//! victim becomes sync target and ends with the survivor's data.

mod replication_common;

use replication_common::{have_tool, peer_of, Cluster, ResOpts};

#[test]
fn split_brain_is_detected_and_discard_my_data_resolves_it() {
    if !have_tool("split_brain", "qemu-io") {
        return;
    }
    let mut c = Cluster::new(2, &ResOpts::default());
    c.bring_up_all();
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.ctl_ok(0, &["disconnect", "r0"]);
    c.ctl_ok(1, &["disconnect", "r0"]);
    c.qemu_io(0, "write -P 0xaa 0 256k");
    c.ctl_ok(1, &["primary", "r0"]);
    c.qemu_io(1, "write -P 0xbb 128k 256k");
    c.ctl_ok(0, &["secondary", "r0"]);
    c.ctl_ok(1, &["secondary", "r0"]);
    c.ctl_ok(0, &["connect", "r0"]);
    c.ctl_ok(1, &["connect", "r0"]);
    c.wait_for("split brain leaves alice StandAlone", 0, |st| {
        peer_of(st, "bob").is_some_and(|p| p["connection"] == "StandAlone")
    });
    assert!(
        c.log(0).to_lowercase().contains("split"),
        "split brain not logged:\n{}",
        c.log(0)
    );
    c.ctl_ok(1, &["connect", "r0", "--discard-my-data"]);
    c.ctl_ok(0, &["connect", "r0"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.wait_disk(1, "UpToDate");
    c.assert_identical(0, 1);
    c.ctl_ok(0, &["primary", "r0"]);
    c.qemu_io(0, "read -P 0xaa 0 256k");
}
