//! Who may connect: a peer with the wrong shared secret is refused and the
//! refusal is logged (the connection never reaches Connected), and garbage
//! sent to the replication port neither crashes nor stalls the daemon — it
//! still connects to the real peer and syncs afterwards.
//!
//! How: real daemons on loopback (see `replication_common`); the garbage
//! comes from plain TCP clients of the test.

mod replication_common;

use replication_common::{peer_of, Cluster, ResOpts, DEADLINE};
use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

#[test]
fn peer_with_wrong_shared_secret_is_refused_and_logged() {
    let mut c = Cluster::new(
        2,
        &ResOpts {
            secrets: vec![Some("right-secret".into()), Some("wrong-secret".into())],
            ..ResOpts::default()
        },
    );
    c.bring_up_all();
    let start = Instant::now();
    let refused =
        |log: &str| log.contains("handshake refused") || log.contains("refused the connection");
    while start.elapsed() < DEADLINE && !(refused(&c.log(0)) && refused(&c.log(1))) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for i in 0..2 {
        assert!(
            refused(&c.log(i)),
            "no refusal logged on {}:\n{}",
            c.nodes[i].name,
            c.log(i)
        );
        let st = c.status(i);
        let other = if i == 0 { "bob" } else { "alice" };
        let p = peer_of(&st, other).unwrap();
        assert_ne!(p["connection"], "Connected", "{st}");
        assert_eq!(st["disk"], "Inconsistent", "{st}");
    }
}

#[test]
fn garbage_on_the_replication_port_does_not_stop_the_real_peer() {
    let mut c = Cluster::new(
        2,
        &ResOpts {
            secrets: vec![Some("s3cr3t".into()), Some("s3cr3t".into())],
            ..ResOpts::default()
        },
    );
    c.ctl_ok(0, &["create-md", "r0", "--force"]);
    c.start_daemon(0);
    c.ctl_ok(0, &["up", "r0"]);
    // Garbage of several shapes at alice's port while bob is not up yet:
    // short, long, a valid-looking preamble followed by junk, and a client
    // that connects and just stays silent.
    let addr = format!("127.0.0.1:{}", c.nodes[0].port);
    let mut silent = TcpStream::connect(&addr).unwrap();
    // A flood of clients that never send anything.
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    for junk in [
        b"hello".to_vec(),
        vec![0xff; 1 << 20],
        [b"dRBd".as_slice(), &[1, 1, 0, 0], &[0xee; 4096]].concat(),
    ] {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(&junk);
        }
    }
    let _ = silent.write_all(b"");
    c.ctl_ok(1, &["create-md", "r0", "--force"]);
    c.start_daemon(1);
    c.ctl_ok(1, &["up", "r0"]);
    c.wait_peer(0, "bob", "Established", "Inconsistent");
    c.ctl_ok(0, &["primary", "r0", "--force"]);
    c.wait_disk(1, "UpToDate");
    c.wait_peer(0, "bob", "Established", "UpToDate");
    c.assert_identical(0, 1);
    // And once more while connected: the established connection survives.
    if let Ok(mut s) = TcpStream::connect(&addr) {
        let _ = s.write_all(&[0x42; 65536]);
    }
    let bob_addr = format!("127.0.0.1:{}", c.nodes[1].port);
    if let Ok(mut s) = TcpStream::connect(&bob_addr) {
        let _ = s.write_all(&[0x17; 65536]);
    }
    // A valid preamble claiming to be alice must not replace the live link.
    let mut impostor = TcpStream::connect(&bob_addr).unwrap();
    impostor
        .write_all(&[b"dRBd".as_slice(), &[1, 0, 1, 0], &[0x99; 4096]].concat())
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < DEADLINE && !c.log(1).contains("refused a second connection") {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        c.log(1).contains("refused a second connection"),
        "{}",
        c.log(1)
    );
    let st = c.status(1);
    assert_eq!(
        peer_of(&st, "alice").unwrap()["connection"],
        "Connected",
        "{st}"
    );
    c.ctl_ok(0, &["status", "r0"]);
    c.wait_peer(0, "bob", "Established", "UpToDate");
    drop(silent);
    drop(flood);
}
