//! qemu-io, a real NBD client, against the in-process server over a
//! `MemTarget`: pattern writes (plain and FUA), flush, discard and
//! write-zeroes go over the wire, and the target's bytes afterwards are
//! exactly what the commands imply. Skips with a printed reason when qemu-io
//! is not installed.

mod common;

use common::{have_tool, serve_mem, Served};
use drbdd_nbd::ServerOptions;
use std::process::Command;

const MIB: usize = 1 << 20;

fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-t", "writeback", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.output().expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let clean =
        out.status.success() && !text.to_lowercase().contains("fail") && !text.contains("error");
    (clean, text)
}

fn have_qemu_io() -> bool {
    have_tool("qemu-io", &["--version"], "qemu-utils")
}

#[test]
fn qemu_io_writes_fua_flush_discard_and_zeroes_land_in_the_target() {
    if !have_qemu_io() {
        return;
    }
    let served: Served = serve_mem(16 * MIB as u64, ServerOptions::default());
    // Pre-fill the discard and zero ranges so their effect is visible.
    let (ok, out) = qemu_io(&served.uri(), &["write -P 0xff 2M 2M"]);
    assert!(ok, "prefill failed:\n{out}");
    let (ok, out) = qemu_io(
        &served.uri(),
        &[
            "write -P 0xa5 0 1M",
            "write -f -P 0x5a 1M 64k",
            "flush",
            "discard 2M 1M",
            "write -z 3M 1M",
            "read -P 0xa5 0 1M",
            "read -P 0x5a 1M 64k",
            "read -P 0 3M 1M",
        ],
    );
    assert!(ok, "qemu-io reported a failure:\n{out}");
    let snap = served.mem.snapshot();
    assert!(snap[..MIB].iter().all(|&b| b == 0xa5), "pattern write");
    assert!(
        snap[MIB..MIB + 65536].iter().all(|&b| b == 0x5a),
        "FUA write"
    );
    assert!(
        snap[MIB + 65536..2 * MIB].iter().all(|&b| b == 0),
        "untouched range"
    );
    assert!(
        snap[2 * MIB..3 * MIB].iter().all(|&b| b == 0),
        "discard (MemTarget zeroes)"
    );
    assert!(
        snap[3 * MIB..4 * MIB].iter().all(|&b| b == 0),
        "write-zeroes"
    );
    assert!(snap[4 * MIB..].iter().all(|&b| b == 0), "rest untouched");
}

#[test]
fn qemu_io_read_verifies_pattern_written_directly_into_the_target() {
    if !have_qemu_io() {
        return;
    }
    let served = serve_mem(4 * MIB as u64, ServerOptions::default());
    let (ok, out) = qemu_io(
        &served.uri(),
        &[
            "write -P 0x3c 512 4k",
            "read -P 0x3c 512 4k",
            "read -P 0 0 512",
        ],
    );
    assert!(ok, "{out}");
    let snap = served.mem.snapshot();
    assert!(snap[512..512 + 4096].iter().all(|&b| b == 0x3c));
    // A mismatching verify is reported by qemu-io: our check above is not vacuous.
    let (ok, _) = qemu_io(&served.uri(), &["read -P 0x77 512 4k"]);
    assert!(!ok, "qemu-io must notice a pattern mismatch");
}

#[test]
fn qemu_io_write_zeroes_without_unmap_uses_no_hole_path() {
    if !have_qemu_io() {
        return;
    }
    let served = serve_mem(8 * MIB as u64, ServerOptions::default());
    // `write -z` without -u asks for NBD_CMD_WRITE_ZEROES with NO_HOLE; a
    // 3 MiB range spans several max_io chunks of the emulation.
    let (ok, out) = qemu_io(
        &served.uri(),
        &[
            "write -P 0x11 0 4M",
            "write -z 512k 3M",
            "read -P 0 512k 3M",
        ],
    );
    assert!(ok, "{out}");
    let snap = served.mem.snapshot();
    assert!(snap[..512 * 1024].iter().all(|&b| b == 0x11));
    assert!(snap[512 * 1024..3 * MIB + 512 * 1024]
        .iter()
        .all(|&b| b == 0));
    assert!(snap[3 * MIB + 512 * 1024..4 * MIB]
        .iter()
        .all(|&b| b == 0x11));
}

#[test]
fn qemu_io_cannot_write_a_read_only_export() {
    if !have_qemu_io() {
        return;
    }
    let opts = ServerOptions {
        read_only: true,
        ..ServerOptions::default()
    };
    let served = serve_mem(4 * MIB as u64, opts);
    let out = Command::new("qemu-io")
        .args(["-r", "-f", "raw", &served.uri(), "-c", "read -P 0 0 4k"])
        .output()
        .expect("run qemu-io");
    assert!(
        out.status.success(),
        "read-only open and read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A writable open is refused by qemu itself: it sees NBD_FLAG_READ_ONLY.
    let (ok, text) = qemu_io(&served.uri(), &["write -P 0x1 0 4k"]);
    assert!(!ok, "write on a read-only export succeeded:\n{text}");
    assert!(
        served.mem.snapshot().iter().all(|&b| b == 0),
        "read-only export was modified"
    );
}

#[test]
fn qemu_io_over_tcp_listener_writes_reach_the_target() {
    if !have_qemu_io() {
        return;
    }
    let mem = std::sync::Arc::new(drbdd_blockio::mem::MemTarget::new(4 * MIB as u64));
    let target: std::sync::Arc<dyn drbdd_blockio::BlockTarget> = mem.clone();
    let mut map = std::collections::HashMap::new();
    map.insert("r0".to_string(), target);
    let exports: std::sync::Arc<dyn drbdd_nbd::ExportLookup> = std::sync::Arc::new(map);
    let addr = "127.0.0.1:0".parse().expect("addr");
    let server = drbdd_nbd::NbdServer::serve_tcp(addr, exports, ServerOptions::default())
        .expect("serve_tcp");
    let drbdd_nbd::ListenAddr::Tcp(bound) = server.addr().clone() else {
        panic!("tcp server reports a non-tcp address");
    };
    let (ok, out) = qemu_io(
        &format!("nbd://{bound}/r0"),
        &["write -P 0x6b 8k 8k", "read -P 0x6b 8k 8k"],
    );
    assert!(ok, "{out}");
    assert!(mem.snapshot()[8192..16384].iter().all(|&b| b == 0x6b));
    server.shutdown();
}
