//! A resource with `frontend = ["ublk"]` on a kernel without `ublk_drv`: `up`
//! and `primary` are refused with exit 10 and a message that says what to do
//! (load ublk_drv or use the NBD frontend), and nothing changes. The real
//! `/dev/ublkb<minor>` is tested in the VM (`tests/vm/run.sh --drbdd`).
//!
//! Run with `cargo build -p drbdd -p drbdctl && cargo test -p drbdd-tests --test ublk_unavailable`.

use drbdd_tests::{free_port, TestNode};
use std::path::Path;

const HINT: &str = "ublk not available: load ublk_drv (kernel >= 6.0) or use the NBD frontend";

/// True (after printing why) when this host has ublk, so the refusal cannot be seen.
fn host_has_ublk(test: &str) -> bool {
    let present = Path::new("/dev/ublk-control").exists();
    if present {
        eprintln!("SKIP: {test}: /dev/ublk-control exists on this host (ublk_drv is loaded)");
    }
    present
}

/// Writes r0 for alice (local) and bob with the given `frontend` value.
fn write_r0(node: &TestNode, frontend: &str) {
    let port = free_port();
    let text = format!(
        "resource = \"r0\"\nfrontend = {frontend}\n\
         [on.alice]\nnode-id = 0\naddress = \"127.0.0.1:{port}\"\nminor = 0\ndisk = \"{}\"\n\
         [on.bob]\nnode-id = 1\naddress = \"127.0.0.2:{port}\"\nminor = 0\ndisk = \"/tmp/unused-bob.img\"\n",
        node.disk().display()
    );
    std::fs::write(node.config_dir().join("resources.d/r0.toml"), text).expect("write r0.toml");
}

#[test]
fn up_of_a_ublk_resource_without_ublk_drv_is_refused_with_exit_10_and_the_hint() {
    if host_has_ublk("up_of_a_ublk_resource_without_ublk_drv") {
        return;
    }
    let mut n = TestNode::new();
    write_r0(&n, r#"["ublk"]"#);
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    let up = n.ctl(&["up", "r0"]);
    assert_eq!(up.code, 10, "{up:?}");
    assert!(up.stderr.contains(HINT), "{up:?}");
    assert!(
        up.stderr.contains("r0"),
        "the message names the resource: {up:?}"
    );
    assert_eq!(n.ctl_ok(&["status"]), "", "nothing is up after the refusal");
    // The NBD frontend works on the same host: switching the config is the way out.
    write_r0(&n, r#"["nbd"]"#);
    n.ctl_ok(&["up", "r0"]);
    assert!(n.run_dir().join("r0.nbd").exists(), "NBD socket after up");
    assert_eq!(n.stop_daemon(), Some(0), "clean SIGTERM; log:\n{}", n.log());
}

#[test]
fn primary_after_switching_to_ublk_is_refused_with_exit_10_and_stays_secondary() {
    if host_has_ublk("primary_after_switching_to_ublk") {
        return;
    }
    let mut n = TestNode::new();
    write_r0(&n, r#"["nbd"]"#);
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    write_r0(&n, r#"["nbd", "ublk"]"#);
    n.ctl_ok(&["adjust", "r0"]);
    let primary = n.ctl(&["primary", "r0", "--force"]);
    assert_eq!(primary.code, 10, "{primary:?}");
    assert!(primary.stderr.contains(HINT), "{primary:?}");
    let st = n.ctl_ok(&["status", "r0"]);
    assert!(st.starts_with("r0 role:Secondary\n"), "{st}");
    assert!(
        st.contains("disk:Inconsistent"),
        "promotion did not happen: {st}"
    );
    assert_eq!(n.stop_daemon(), Some(0), "clean SIGTERM; log:\n{}", n.log());
}
