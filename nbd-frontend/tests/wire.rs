//! Protocol-level tests with a hand-driven client over a real Unix socket:
//! hostile and malformed requests get the spec's error reply or a closed
//! connection while the server and other clients go on; many requests are in
//! flight per connection with the bound honoured; completions from another
//! thread reach the client; a Secondary target refuses NBD_OPT_GO with
//! NBD_REP_ERR_POLICY; shutdown closes connections and removes the socket.

mod common;

use common::{greet, read_option_reply, send_option, serve_mem, serve_targets, RawClient};
use drbdd_blockio::mem::MemTarget;
use drbdd_blockio::{
    AlignedBuf, BlockError, BlockRequest, BlockSession, BlockTarget, Completion, Geometry,
};
use drbdd_nbd::proto::{self, Command};
use drbdd_nbd::ServerOptions;
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn check_still_serving(socket: &std::path::Path) {
    let mut c = RawClient::go(socket, "r0").expect("a fresh client still gets served");
    assert_eq!(c.read(99, 0, 512).map(|d| d.len()), Ok(512));
}

#[test]
fn write_then_read_round_trips_and_reaches_the_target() {
    let served = serve_mem(4 * MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    assert_eq!(c.size_bytes, 4 * MIB);
    assert_ne!(c.flags & proto::FLAG_CAN_MULTI_CONN, 0);
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.write(1, 4096, &data), 0);
    assert_eq!(c.read(2, 4096, 8192), Ok(data.clone()));
    assert_eq!(&served.mem.snapshot()[4096..4096 + 8192], &data[..]);
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    c.s.write_all(&[0xde; 28]).unwrap();
    assert!(
        c.is_closed(),
        "server must close a connection that is out of sync"
    );
    check_still_serving(&served.socket);
}

#[test]
fn unknown_command_gets_einval_and_connection_continues() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    c.send(0, Command::Unknown(200), 7, 0, 512);
    assert_eq!(c.reply().unwrap(), (7, proto::NBD_EINVAL));
    assert_eq!(c.read(8, 0, 512).map(|d| d.len()), Ok(512));
}

#[test]
fn out_of_range_and_misaligned_requests_get_spec_errors() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    assert_eq!(
        c.read(1, MIB, 512),
        Err(proto::NBD_EINVAL),
        "read past the end"
    );
    assert_eq!(
        c.read(2, u64::MAX - 100, 512),
        Err(proto::NBD_EINVAL),
        "offset overflow"
    );
    assert_eq!(c.read(3, 100, 512), Err(proto::NBD_EINVAL), "misaligned");
    assert_eq!(
        c.write(4, MIB - 512, &[1u8; 1024]),
        proto::NBD_ENOSPC,
        "write past the end"
    );
    c.send(0, Command::WriteZeroes, 5, MIB, 4096);
    assert_eq!(c.reply().unwrap(), (5, proto::NBD_ENOSPC));
    c.send(
        proto::CMD_FLAG_NO_HOLE,
        Command::WriteZeroes,
        6,
        MIB - 512,
        4096,
    );
    assert_eq!(c.reply().unwrap(), (6, proto::NBD_ENOSPC));
    assert!(
        served.mem.snapshot().iter().all(|&b| b == 0),
        "nothing written by refused requests"
    );
    assert_eq!(c.read(7, 0, 512).map(|d| d.len()), Ok(512));
}

#[test]
fn oversized_read_and_write_get_einval_and_the_stream_stays_in_sync() {
    let served = serve_mem(8 * MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    assert_eq!(c.read(1, 0, 2 << 20), Err(proto::NBD_EINVAL));
    // A 2 MiB write (> max_io 1 MiB, < 32 MiB) is drained and refused.
    assert_eq!(c.write(2, 0, &vec![0x77u8; 2 << 20]), proto::NBD_EINVAL);
    assert!(served.mem.snapshot().iter().all(|&b| b == 0));
    assert_eq!(c.write(3, 0, &[0x42u8; 512]), 0);
    assert_eq!(c.read(4, 0, 512), Ok(vec![0x42u8; 512]));
}

#[test]
fn write_header_over_32_mib_closes_the_connection() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    c.send(0, Command::Write, 1, 0, 64 << 20);
    assert!(c.is_closed());
    check_still_serving(&served.socket);
}

#[test]
fn garbage_and_truncated_handshakes_do_not_disturb_the_server() {
    let served = serve_mem(MIB, ServerOptions::default());
    // Unknown client flags.
    let mut s = std::os::unix::net::UnixStream::connect(&served.socket).unwrap();
    s.write_all(&[0xff; 64]).unwrap();
    drop(s);
    // Truncated option then hang up.
    let mut s = greet(&served.socket).unwrap();
    s.write_all(&proto::IHAVEOPT.to_be_bytes()).unwrap();
    drop(s);
    // Oversized option length.
    let mut s = greet(&served.socket).unwrap();
    let mut hdr = proto::IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&proto::OPT_GO.to_be_bytes());
    hdr.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&hdr).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut s, &mut b), Ok(0) | Err(_)),
        "closed on oversized option"
    );
    check_still_serving(&served.socket);
}

#[test]
fn unknown_export_and_unknown_options_are_answered_and_negotiation_continues() {
    let served = serve_mem(MIB, ServerOptions::default());
    let err = RawClient::go(&served.socket, "nope").unwrap_err();
    assert_eq!(err.reply_type, proto::REP_ERR_UNKNOWN);
    let mut s = greet(&served.socket).unwrap();
    send_option(&mut s, 4242, b"whatever").unwrap();
    assert_eq!(read_option_reply(&mut s).unwrap().1, proto::REP_ERR_UNSUP);
    send_option(&mut s, proto::OPT_STRUCTURED_REPLY, &[]).unwrap();
    assert_eq!(read_option_reply(&mut s).unwrap().1, proto::REP_ERR_UNSUP);
    send_option(&mut s, proto::OPT_LIST, &[]).unwrap();
    let (_, kind, data) = read_option_reply(&mut s).unwrap();
    assert_eq!(
        (kind, data),
        (proto::REP_SERVER, proto::encode_rep_server("r0"))
    );
    assert_eq!(read_option_reply(&mut s).unwrap().1, proto::REP_ACK);
    send_option(&mut s, proto::OPT_ABORT, &[]).unwrap();
    assert_eq!(read_option_reply(&mut s).unwrap().1, proto::REP_ACK);
}

#[test]
fn export_name_option_enters_transmission_old_style() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut s = greet(&served.socket).unwrap();
    send_option(&mut s, proto::OPT_EXPORT_NAME, b"r0").unwrap();
    let mut reply = [0u8; 10];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), MIB);
    let mut c = RawClient {
        s,
        size_bytes: MIB,
        flags: 0,
    };
    assert_eq!(c.write(1, 0, &[9u8; 512]), 0);
    assert_eq!(served.mem.snapshot()[..512], [9u8; 512]);
}

#[test]
fn pipelined_requests_with_reused_handles_each_get_one_reply() {
    let served = serve_mem(4 * MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    for i in 0..200u64 {
        c.send_write(
            proto::CMD_FLAG_FUA * u16::from(i % 2 == 0),
            i % 50,
            i * 4096,
            &[u8::try_from(i % 256).unwrap(); 4096],
        );
    }
    c.send(0, Command::Flush, 1000, 0, 0);
    let mut seen = std::collections::HashMap::new();
    for _ in 0..201 {
        let (h, err) = c.reply().unwrap();
        assert_eq!(err, 0);
        *seen.entry(h).or_insert(0) += 1;
    }
    assert_eq!(seen.get(&1000), Some(&1));
    assert!((0..50).all(|h| seen.get(&h) == Some(&4)));
    let snap = served.mem.snapshot();
    for i in 0..200usize {
        assert!(snap[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&b| usize::from(b) == i % 256));
    }
}

#[test]
fn disconnect_answers_in_flight_requests_first() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    for i in 0..10u64 {
        c.send_write(0, i, i * 512, &[1u8; 512]);
    }
    c.send(0, Command::Disconnect, 99, 0, 0);
    let handles: HashSet<u64> = (0..10).map(|_| c.reply().unwrap().0).collect();
    assert_eq!(handles, (0..10).collect());
    assert!(c.is_closed());
    assert!(served.mem.snapshot()[..5120].iter().all(|&b| b == 1));
}

#[test]
fn two_connections_see_each_others_writes() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut a = RawClient::go(&served.socket, "r0").expect("GO a");
    let mut b = RawClient::go(&served.socket, "r0").expect("GO b");
    assert_eq!(a.write(1, 8192, &[0xab; 4096]), 0);
    b.send(0, Command::Flush, 2, 0, 0);
    assert_eq!(b.reply().unwrap(), (2, 0));
    assert_eq!(b.read(3, 8192, 4096), Ok(vec![0xab; 4096]));
}

#[test]
fn read_only_server_refuses_writes_with_eperm() {
    let opts = ServerOptions {
        read_only: true,
        ..ServerOptions::default()
    };
    let served = serve_mem(MIB, opts);
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    assert_ne!(c.flags & proto::FLAG_READ_ONLY, 0);
    assert_eq!(c.write(1, 0, &[1u8; 512]), proto::NBD_EPERM);
    c.send(0, Command::Trim, 2, 0, 4096);
    assert_eq!(c.reply().unwrap(), (2, proto::NBD_EPERM));
    c.send(0, Command::WriteZeroes, 3, 0, 4096);
    assert_eq!(c.reply().unwrap(), (3, proto::NBD_EPERM));
    assert_eq!(c.read(4, 0, 512), Ok(vec![0u8; 512]));
}

/// Refuses writable opens like a Secondary node.
#[derive(Debug)]
struct Secondary(MemTarget);

impl BlockTarget for Secondary {
    fn geometry(&self) -> Geometry {
        self.0.geometry()
    }
    fn open(&self, client: &str, writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        if writable {
            return Err(BlockError::ReadOnly(String::new()));
        }
        self.0.open(client, writable)
    }
}

#[test]
fn go_on_secondary_is_refused_with_policy_error_and_promote_hint() {
    let mem = Arc::new(MemTarget::new(MIB));
    let sec: Arc<dyn BlockTarget> = Arc::new(Secondary(MemTarget::new(MIB)));
    let served = serve_targets(vec![("r0".into(), sec)], ServerOptions::default(), mem);
    let err = RawClient::go(&served.socket, "r0").unwrap_err();
    assert_eq!(err.reply_type, proto::REP_ERR_POLICY);
    assert_eq!(
        err.message,
        "resource r0 is Secondary here; promote it first"
    );
}

/// Holds every request until the test releases it, then completes it from
/// the test's thread; records how many were outstanding at most.
#[derive(Default)]
struct Gate {
    pending: Mutex<Vec<(BlockRequest, AlignedBuf, Completion)>>,
    opened_as: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field(
                "pending",
                &self.pending.lock().map(|p| p.len()).unwrap_or(0),
            )
            .finish()
    }
}

#[derive(Debug)]
struct GateTarget(Arc<Gate>);

impl BlockTarget for GateTarget {
    fn geometry(&self) -> Geometry {
        MemTarget::new(MIB).geometry()
    }
    fn open(&self, client: &str, _writable: bool) -> Result<Arc<dyn BlockSession>, BlockError> {
        self.0.opened_as.lock().unwrap().push(client.to_owned());
        Ok(Arc::new(GateSession(Arc::clone(&self.0))))
    }
}

#[derive(Debug)]
struct GateSession(Arc<Gate>);

impl BlockSession for GateSession {
    fn submit(&self, req: BlockRequest, buf: AlignedBuf, done: Completion) {
        self.0.pending.lock().unwrap().push((req, buf, done));
    }
}

fn wait_pending(gate: &Gate, n: usize) {
    let t0 = Instant::now();
    while gate.pending.lock().unwrap().len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "only {} pending",
            gate.pending.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends 40 reads of `len_bytes` and checks at most `bound` reach the
/// target at once; completes each batch from another thread.
fn check_in_flight_bound(opts: ServerOptions, len_bytes: u32, bound: usize) {
    let gate = Arc::new(Gate::default());
    let target: Arc<dyn BlockTarget> = Arc::new(GateTarget(Arc::clone(&gate)));
    let served = serve_targets(
        vec![("r0".into(), target)],
        opts,
        Arc::new(MemTarget::new(0)),
    );
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    let prefix = format!("nbd unix:{} conn #", served.socket.display());
    assert!(gate.opened_as.lock().unwrap()[0].starts_with(&prefix));
    for i in 0..40u64 {
        c.send(0, Command::Read, i, 0, len_bytes);
    }
    let mut answered = 0;
    while answered < 40 {
        wait_pending(&gate, (40 - answered).min(bound));
        std::thread::sleep(Duration::from_millis(50));
        let batch: Vec<_> = std::mem::take(&mut *gate.pending.lock().unwrap());
        assert!(
            batch.len() <= bound,
            "{} requests in flight, bound is {bound}",
            batch.len()
        );
        let n = batch.len();
        let completer = std::thread::spawn(move || {
            for (_, buf, done) in batch {
                done(Ok(buf));
            }
        });
        completer.join().unwrap();
        for _ in 0..n {
            let (_, err) = c.reply().unwrap();
            assert_eq!(err, 0);
            let mut data = vec![0u8; len_bytes as usize];
            std::io::Read::read_exact(&mut c.s, &mut data).unwrap();
        }
        answered += n;
    }
}

#[test]
fn in_flight_requests_are_bounded_by_count_and_completed_from_another_thread() {
    let opts = ServerOptions {
        max_in_flight: 8,
        ..ServerOptions::default()
    };
    check_in_flight_bound(opts, 512, 8);
}

#[test]
fn in_flight_requests_are_bounded_by_buffer_bytes() {
    let opts = ServerOptions {
        max_in_flight_bytes: 64 << 10,
        ..ServerOptions::default()
    };
    check_in_flight_bound(opts, 16 << 10, 4);
}

#[test]
fn shutdown_closes_connections_and_removes_the_socket() {
    let served = serve_mem(MIB, ServerOptions::default());
    let mut c = RawClient::go(&served.socket, "r0").expect("GO");
    let mut idle = greet(&served.socket).unwrap();
    let socket = served.socket.clone();
    let t0 = Instant::now();
    served.server.shutdown();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert!(c.is_closed());
    let mut b = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(&mut idle, &mut b),
        Ok(0) | Err(_)
    ));
    assert!(!socket.exists(), "socket file removed");
    drop(served.dir);
}

#[test]
fn unix_socket_is_mode_0600_and_a_stale_socket_file_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("nbd-test")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a dead socket file
    let mut map: std::collections::HashMap<String, Arc<dyn BlockTarget>> =
        std::collections::HashMap::new();
    map.insert("r0".into(), Arc::new(MemTarget::new(MIB)));
    let exports: Arc<dyn drbdd_nbd::ExportLookup> = Arc::new(map);
    let server =
        drbdd_nbd::NbdServer::serve_unix(&path, Arc::clone(&exports), ServerOptions::default())
            .expect("stale socket replaced");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let second = drbdd_nbd::NbdServer::serve_unix(&path, exports, ServerOptions::default());
    assert!(
        matches!(second, Err(drbdd_nbd::ServeError::SocketInUse(_))),
        "live socket must not be stolen"
    );
    check_still_serving(&path);
    server.shutdown();
}
