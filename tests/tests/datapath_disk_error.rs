//! A failing backing device detaches (on-io-error detach): the daemon's
//! backing "device" is a file served by nbdkit's error filter through
//! nbdfuse, so writes fail with EIO exactly while a trigger file exists.
//! Proves the failed write reaches the client as an I/O error, the resource
//! goes `disk:Diskless` (the data path stops, the metadata is left alone),
//! and after the fault is gone `attach` brings the disk back UpToDate with
//! the data written before the failure intact; with pass_on the error only
//! reaches the client; with call-local-io-error the handler runs (a failing
//! activity-log write detaches too, as in DRBD). Needs nbdkit, nbdfuse,
//! qemu-io and /dev/fuse; skips with a printed reason otherwise.

mod datapath_common;
mod faulty_disk;

use datapath_common::{have_fuse, have_tools, qemu_io, qemu_io_ok, Node};
use faulty_disk::{wait_until, FaultyDisk};
use std::path::Path;

const MIB: u64 = 1 << 20;

fn point_config_at(node: &Node, disk: &Path) {
    let path = node.root.path().join("etc/resources.d/r0.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let old = format!("disk = \"{}\"", node.disk.display());
    assert!(text.contains(&old));
    let text = text.replace(&old, &format!("disk = \"{}\"", disk.display()));
    std::fs::write(path, text).unwrap();
}

#[test]
fn write_error_detaches_to_diskless_and_attach_brings_the_data_back() {
    let test = "write_error_detaches_to_diskless";
    if !have_fuse(test) || !have_tools(test, &["nbdkit", "nbdfuse", "qemu-io"]) {
        return;
    }
    let faulty = FaultyDisk::start(64 * MIB);
    let mut node = Node::new(MIB, "[disk]\non-io-error = \"detach\"");
    point_config_at(&node, &faulty.disk());
    node.disk = faulty.disk();
    node.bring_up_primary();
    let uri = node.uri();
    qemu_io_ok(&uri, &["write -P 0x21 0 64k", "flush"]);

    faulty.set_failing(true);
    let out = qemu_io(&uri, &["write -P 0x22 1M 64k"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("write failed: Input/output error"),
        "the failed write must reach the client: {text}"
    );
    node.wait_for("disk:Diskless after the write error", |st| {
        st["disk"] == "Diskless"
    });
    assert!(
        node.log().contains("local disk failed"),
        "the daemon log names the failure"
    );

    faulty.set_failing(false);
    node.secondary_after_clients_leave();
    node.ctl_ok(&["attach", "r0"]);
    node.wait_for("disk:UpToDate after attach", |st| st["disk"] == "UpToDate");
    node.ctl_ok(&["primary", "r0"]);
    qemu_io_ok(&uri, &["read -P 0x21 0 64k"]);
    node.secondary_after_clients_leave();
    node.ctl_ok(&["down", "r0"]);
    node.stop();
}

#[test]
fn pass_on_reports_the_error_and_keeps_the_disk() {
    let test = "pass_on_keeps_the_disk";
    if !have_fuse(test) || !have_tools(test, &["nbdkit", "nbdfuse", "qemu-io"]) {
        return;
    }
    let faulty = FaultyDisk::start(64 * MIB);
    let mut node = Node::new(MIB, "[disk]\non-io-error = \"pass_on\"");
    point_config_at(&node, &faulty.disk());
    node.disk = faulty.disk();
    node.bring_up_primary();
    let uri = node.uri();
    // Extent 0 is in the activity log first, so the failing write is a data
    // write (a failing metadata write detaches whatever the policy).
    qemu_io_ok(&uri, &["write -P 0x30 1M 64k", "flush"]);
    faulty.set_failing(true);
    let out = qemu_io(&uri, &["write -P 0x31 1M 64k"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "{text}");
    faulty.set_failing(false);
    // The disk stays attached and the next write goes through.
    assert_eq!(node.status()["disk"], "UpToDate");
    qemu_io_ok(&uri, &["write -P 0x32 1M 64k", "read -P 0x32 1M 64k"]);
    node.secondary_after_clients_leave();
}

#[test]
fn call_local_io_error_runs_the_handler_and_detaches() {
    let test = "call_local_io_error_runs_the_handler";
    if !have_fuse(test) || !have_tools(test, &["nbdkit", "nbdfuse", "qemu-io"]) {
        return;
    }
    let faulty = FaultyDisk::start(64 * MIB);
    let marker = faulty.dir().join("handler-ran");
    let mut node = Node::new(
        MIB,
        &format!(
            "[disk]\non-io-error = \"call-local-io-error\"\n\
             [handlers]\nlocal-io-error = \"echo $DRBD_RESOURCE > {}\"",
            marker.display()
        ),
    );
    point_config_at(&node, &faulty.disk());
    node.disk = faulty.disk();
    node.bring_up_primary();
    faulty.set_failing(true);
    let out = qemu_io(&node.uri(), &["write -P 0x41 2M 4k"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("write failed"), "{text}");
    node.wait_for("disk:Diskless", |st| st["disk"] == "Diskless");
    wait_until("the local-io-error handler's marker", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t.trim() == "r0")
    });
    faulty.set_failing(false);
}
