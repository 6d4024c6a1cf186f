//! The daemon serves a resource through the pipeline and the NBD frontend:
//! real `drbdd`/`drbdctl` processes and a real client (qemu-io) on
//! `<run-dir>/r0.nbd`. Proves that a Primary takes writes, reads, flush,
//! discard, write-zeroes and FUA writes and that the bytes land in the backing
//! file's data area; that a Secondary refuses the NBD open with the promote
//! hint; that demotion is refused (exit 11, naming the client) while a client
//! holds the device and allowed once it disconnected; and that the device
//! counters show up in `status --statistics`.

mod datapath_common;

use datapath_common::{have_tools, qemu_io, qemu_io_ok, Node};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[test]
fn primary_serves_qemu_io_and_bytes_land_in_the_backing_file() {
    if !have_tools("primary_serves_qemu_io", &["qemu-io"]) {
        return;
    }
    let mut node = Node::new(64 * MIB, "");
    node.bring_up_primary();
    let uri = node.uri();
    qemu_io_ok(
        &uri,
        &[
            "write -P 0xa5 0 1M",
            "write -P 0x3c 1M 64k",
            "flush",
            "read -P 0xa5 0 1M",
            "read -P 0x3c 1M 64k",
            "write -P 0x77 2M 512k",
            "discard 2M 128k",
            "write -z 2304k 64k",
            "read -P 0x77 2176k 128k",
            "read -P 0 2304k 64k",
            "read -P 0x77 2368k 192k",
            "write -f -P 0xe1 20M 512k",
            "read -P 0xe1 20M 512k",
        ],
    );
    // The backing file's data area starts at offset 0.
    assert!(node.backing_bytes(0, 1 << 20).iter().all(|b| *b == 0xa5));
    assert!(node.backing_bytes(MIB, 64 << 10).iter().all(|b| *b == 0x3c));
    assert!(node
        .backing_bytes(2304 << 10, 64 << 10)
        .iter()
        .all(|b| *b == 0));
    assert!(node
        .backing_bytes(2368 << 10, 192 << 10)
        .iter()
        .all(|b| *b == 0x77));
    assert!(node
        .backing_bytes(20 * MIB, 512 << 10)
        .iter()
        .all(|b| *b == 0xe1));
    let text = node.ctl_ok(&["status", "r0", "--verbose", "--statistics"]);
    assert!(text.contains("disk:UpToDate"), "{text}");
    let st = node.status();
    let written = st["stats"]["written_kib"].as_u64().unwrap_or(0);
    let read = st["stats"]["read_kib"].as_u64().unwrap_or(0);
    assert!(written >= 1024 + 64 + 512 + 64 + 512, "status: {st}");
    assert!(read >= 1024 + 64 + 128 + 64 + 192 + 512, "status: {st}");
    assert!(text.contains(&format!("written:{written}")), "{text}");
    // Extents 0 and 5 entered the activity log; the flush wrote the bitmap.
    assert!(
        st["stats"]["al_writes"].as_u64().unwrap_or(0) >= 1,
        "status: {st}"
    );
    assert!(
        st["stats"]["bm_writes"].as_u64().unwrap_or(0) >= 1,
        "status: {st}"
    );
}

#[test]
fn secondary_refuses_nbd_open_with_the_promote_hint() {
    if !have_tools("secondary_refuses_nbd_open", &["qemu-io"]) {
        return;
    }
    let mut node = Node::new(16 * MIB, "");
    node.ctl_ok(&["create-md", "r0", "--force"]);
    node.start();
    node.ctl_ok(&["up", "r0"]);
    let mode = std::fs::metadata(node.socket())
        .expect("r0.nbd exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let out = qemu_io(&node.uri(), &["read 0 4k"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "open on a Secondary succeeded");
    assert!(err.contains("promote it first"), "qemu-io said: {err}");
    // After promotion the same client gets in.
    node.ctl_ok(&["primary", "r0", "--force"]);
    qemu_io_ok(&node.uri(), &["read 0 4k"]);
}

#[test]
fn demote_is_refused_while_a_client_holds_the_device_and_allowed_after() {
    if !have_tools("demote_is_refused_while_open", &["qemu-io"]) {
        return;
    }
    let mut node = Node::new(16 * MIB, "");
    node.bring_up_primary();
    // An interactive qemu-io keeps its connection until stdin says quit.
    let mut client = Command::new("qemu-io")
        .args(["-f", "raw", &node.uri()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-io");
    node.wait_for("the client's open", |st| {
        st["open_clients"].as_array().is_some_and(|a| !a.is_empty())
    });
    let out = node.ctl(&["secondary", "r0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "demote while open: {err}");
    assert!(
        err.contains("held open by nbd unix:") && err.contains("r0.nbd"),
        "refusal must name the client: {err}"
    );
    assert_eq!(node.status()["role"], "Primary");
    // The gate is open again: the client can still do I/O.
    let stdin = client.stdin.as_mut().expect("qemu-io stdin");
    writeln!(stdin, "write -P 0x42 0 4k").unwrap();
    writeln!(stdin, "quit").unwrap();
    let out = client.wait_with_output().expect("qemu-io exit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wrote 4096/4096"), "qemu-io: {text}");
    // Once the client is gone the demotion goes through.
    let start = Instant::now();
    loop {
        let out = node.ctl(&["secondary", "r0"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "demote still refused after the client left: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.status()["role"], "Secondary");
    assert!(node.backing_bytes(0, 4096).iter().all(|b| *b == 0x42));
    node.ctl_ok(&["down", "r0"]);
    assert!(!node.socket().exists(), "down leaves the NBD socket behind");
}

#[test]
fn nbd_listen_serves_the_export_over_tcp_too() {
    if !have_tools("nbd_listen_serves_tcp", &["qemu-io"]) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut node = Node::new_with(16 * MIB, "", &format!("nbd-listen = \"127.0.0.1:{port}\""));
    node.bring_up_primary();
    let uri = format!("nbd://127.0.0.1:{port}/r0");
    qemu_io_ok(&uri, &["write -P 0x5a 4k 8k", "read -P 0x5a 4k 8k"]);
    assert!(node.backing_bytes(4096, 8192).iter().all(|b| *b == 0x5a));
}
