//! The foundation, end to end with real processes: a `drbdd` per test on temp
//! config and run directories, driven by the real `drbdctl`. Proves the admin
//! life cycle (create-md, up, status, promote/demote with drbdadm's exit codes,
//! down), the events2 dump and stream, the metadata safety checks (file-system
//! signature, too-small device, resource up), the control socket's robustness
//! (garbage, oversized and wrong-version requests), the run-dir lock, the
//! "daemon unreachable" exit code and clean SIGTERM shutdown.
//!
//! Run with `cargo build -p drbdd -p drbdctl && cargo test -p drbdd-tests --test foundation_daemon`.

use drbdd_tests::{have_tool, TestNode};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn up_status_promote_demote_down_follow_drbd_states_and_exit_codes() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    assert_eq!(
        n.ctl_ok(&["status", "r0"]),
        "r0 role:Secondary\n  disk:Inconsistent\n  bob connection:StandAlone\n"
    );

    let refused = n.ctl(&["primary", "r0"]);
    assert_eq!(refused.code, 17, "{refused:?}");
    assert!(refused.stderr.contains("no UpToDate data"), "{refused:?}");

    n.ctl_ok(&["primary", "r0", "--force"]);
    let st = n.ctl_ok(&["status", "r0"]);
    assert!(st.starts_with("r0 role:Primary\n  disk:UpToDate\n"), "{st}");

    let down = n.ctl(&["down", "r0"]);
    assert_eq!(down.code, 11, "down of a Primary is refused: {down:?}");
    assert!(down.stderr.contains("demote"), "{down:?}");

    n.ctl_ok(&["demote", "r0"]);
    let st = n.ctl_ok(&["status", "r0"]);
    assert!(
        st.starts_with("r0 role:Secondary\n  disk:UpToDate\n"),
        "{st}"
    );

    n.ctl_ok(&["down", "r0"]);
    let after = n.ctl(&["status", "r0"]);
    assert_eq!(after.code, 10, "{after:?}");
    assert!(after.stderr.contains("r0"), "{after:?}");
    assert_eq!(n.ctl_ok(&["status"]), "", "nothing is up");

    // The forced promotion is durable: up again attaches UpToDate.
    n.ctl_ok(&["up", "r0"]);
    assert!(n.ctl_ok(&["status", "r0"]).contains("disk:UpToDate"));
    let json = n.ctl_ok(&["status", "r0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json");
    assert_eq!(v[0]["role"], "Secondary");
    assert_eq!(v[0]["peers"][0]["connection"], "StandAlone");
}

#[test]
fn detach_goes_diskless_and_attach_restores_the_disk() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    n.ctl_ok(&["detach", "r0"]);
    assert!(n.ctl_ok(&["status", "r0"]).contains("  disk:Diskless\n"));
    assert_eq!(n.ctl(&["primary", "r0", "--force"]).code, 17);
    n.ctl_ok(&["attach", "r0"]);
    assert!(n
        .ctl_ok(&["status", "r0"])
        .contains("  disk:Inconsistent\n"));
}

#[test]
fn create_md_refuses_an_ext4_formatted_device_unless_forced() {
    if !have_tool("mkfs.ext4") {
        eprintln!("SKIP: mkfs.ext4 not installed (e2fsprogs)");
        return;
    }
    let n = TestNode::new();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(n.disk())
        .stdout(Stdio::null())
        .status()
        .expect("run mkfs.ext4")
        .success();
    assert!(ok, "mkfs.ext4 failed");
    let out = n.ctl(&["create-md", "r0"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("ext4"), "names the signature: {out:?}");
    assert!(
        out.stderr.contains("--force"),
        "says how to override: {out:?}"
    );
    n.ctl_ok(&["create-md", "r0", "--force"]);
    n.ctl_ok(&["check-md", "r0"]);
}

#[test]
fn create_md_refuses_a_too_small_device_naming_the_minimum() {
    let n = TestNode::new();
    n.set_disk_size(64 << 10);
    let out = n.ctl(&["create-md", "r0"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("need at least"), "{out:?}");
}

#[test]
fn metadata_commands_refuse_while_the_resource_is_up() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    let dump = n.ctl_ok(&["dump-md", "r0"]);
    assert!(!dump.is_empty());
    assert!(n
        .ctl_ok(&["show-gi", "r0"])
        .contains("current data generation UUID"));
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    for args in [
        &["create-md", "r0", "--force"][..],
        &["dump-md", "r0"][..],
        &["check-md", "r0"][..],
    ] {
        let out = n.ctl(args);
        assert_eq!(out.code, 10, "{args:?}: {out:?}");
        assert!(out.stderr.contains("drbdctl down r0"), "{out:?}");
    }
    n.ctl_ok(&["down", "r0"]);
    n.ctl_ok(&["check-md", "r0"]);

    // dump-md / restore-md round trip, after the metadata changed in between.
    let saved = n.dir.path().join("md.dump");
    std::fs::write(&saved, &dump).expect("save dump");
    n.ctl_ok(&["up", "r0"]);
    n.ctl_ok(&["primary", "r0", "--force"]);
    n.ctl_ok(&["secondary", "r0"]);
    n.ctl_ok(&["down", "r0"]);
    assert_ne!(
        n.ctl_ok(&["dump-md", "r0"]),
        dump,
        "promotion changed the metadata"
    );
    n.ctl_ok(&["restore-md", "r0", saved.to_str().expect("utf-8 path")]);
    assert_eq!(n.ctl_ok(&["dump-md", "r0"]), dump, "restored byte for byte");
}

#[test]
fn events_now_dumps_every_object_then_the_end_marker() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    let text = n.ctl_ok(&["events", "--now"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "exists resource name:r0 role:Secondary suspended:no"
    );
    assert!(
        lines[1].starts_with(
            "exists connection name:r0 peer-node-id:1 conn-name:bob connection:StandAlone"
        ),
        "{text}"
    );
    assert!(
        lines[2].starts_with("exists device name:r0 volume:0 minor:0 disk:Inconsistent"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("exists peer-device name:r0 peer-node-id:1 conn-name:bob volume:0"),
        "{text}"
    );
    assert_eq!(lines[4], "exists -");
    assert_eq!(lines.len(), 5, "{text}");
}

#[test]
fn events_stream_reports_role_changes() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    let mut child = Command::new(drbdd_tests::bin("drbdctl"))
        .args(["events"])
        .env("DRBDD_RUN_DIR", n.run_dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn drbdctl events");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines.next().expect("events line").expect("read");
        if line == "exists -" {
            break;
        }
    }
    n.ctl_ok(&["primary", "r0", "--force"]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(lines.next().expect("change line").expect("read"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains(&"change resource name:r0 role:Primary suspended:no".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("change device name:r0 volume:0 minor:0 disk:UpToDate")),
        "{seen:?}"
    );
}

#[test]
fn malformed_control_requests_get_errors_and_the_daemon_keeps_serving() {
    let mut n = TestNode::new();
    n.start_daemon();
    let garbage = n.raw_request(b"this is not json\n");
    assert!(garbage.contains("\"kind\":\"malformed\""), "{garbage}");

    let mut big = vec![b'x'; 70 * 1024];
    big.push(b'\n');
    let oversized = n.raw_request(&big);
    assert!(oversized.contains("longer than 65536 bytes"), "{oversized}");

    let wrong = n.raw_request(b"{\"version\":2,\"cmd\":\"ping\"}\n");
    assert!(wrong.contains("\"kind\":\"version-mismatch\""), "{wrong}");
    assert!(wrong.contains("daemon speaks 1"), "{wrong}");

    let unknown = n.raw_request(b"{\"version\":1,\"cmd\":\"self-destruct\"}\n");
    assert!(unknown.contains("\"kind\":\"malformed\""), "{unknown}");

    let ping = n.raw_request(b"{\"version\":1,\"cmd\":\"ping\"}\n");
    assert!(ping.contains("\"pid\":"), "daemon still serves: {ping}");
    assert_eq!(n.ctl_ok(&["status"]), "");
}

#[test]
fn a_second_daemon_on_the_same_run_dir_is_refused_naming_the_pid() {
    let mut n = TestNode::new();
    n.start_daemon();
    let pid = n.daemon.as_ref().expect("daemon").id();
    let second = n.spawn_daemon().wait_with_output().expect("second drbdd");
    assert_eq!(second.status.code(), Some(10));
    assert!(
        n.log()
            .contains(&format!("another drbdd (pid {pid}) is already running")),
        "{}",
        n.log()
    );
    assert_eq!(n.ctl_ok(&["status"]), "", "the first daemon still serves");
}

#[test]
fn unreachable_daemon_exits_20_with_a_reason() {
    let n = TestNode::new();
    let out = n.ctl(&["status"]);
    assert_eq!(out.code, 20, "{out:?}");
    assert!(out.stderr.contains("cannot reach drbdd"), "{out:?}");
    assert_eq!(n.ctl(&["up", "r0"]).code, 20);
}

#[test]
fn sigterm_removes_the_socket_and_persists_metadata() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    n.ctl_ok(&["primary", "r0", "--force"]);
    assert_eq!(n.stop_daemon(), Some(0), "clean exit; log:\n{}", n.log());
    assert!(!n.socket().exists(), "socket removed");
    assert!(n.log().contains("drbdd stopped"), "{}", n.log());
    // Metadata survived: consistent and up to date (show-gi flags column).
    let gi = n.ctl_ok(&["show-gi", "r0"]);
    assert!(
        gi.contains(":1:1:"),
        "consistent and was-up-to-date flags set: {gi}"
    );
    n.start_daemon();
    n.ctl_ok(&["up", "r0"]);
    assert!(n.ctl_ok(&["status", "r0"]).contains("disk:UpToDate"));
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn check_and_dump_validate_the_config_without_a_daemon() {
    let n = TestNode::new();
    assert!(n.ctl_ok(&["check"]).contains("valid"));
    let dump = n.ctl_ok(&["dump", "r0"]);
    assert!(dump.contains("resource = \"r0\""), "{dump}");
    std::fs::write(
        n.config_dir().join("resources.d/bad.toml"),
        "resource = \"bad\"\nbogus = 1\n",
    )
    .expect("write bad config");
    let out = n.ctl(&["check"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("bad.toml"), "{out:?}");
}

#[test]
fn adjust_brings_up_configured_resources_and_rejects_a_broken_config() {
    let mut n = TestNode::new();
    n.ctl_ok(&["create-md", "r0"]);
    n.start_daemon();
    n.ctl_ok(&["adjust"]);
    assert!(n.ctl_ok(&["status"]).starts_with("r0 role:Secondary\n"));
    n.ctl_ok(&["adjust", "r0"]);
    std::fs::write(
        n.config_dir().join("resources.d/broken.toml"),
        "resource = \"broken\"\nnonsense = true\n",
    )
    .expect("write broken config");
    let out = n.ctl(&["adjust"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("nothing changed"), "{out:?}");
    assert!(n
        .ctl_ok(&["status", "r0"])
        .starts_with("r0 role:Secondary\n"));
}

#[test]
fn drbdctl_reports_a_daemon_speaking_another_protocol_version() {
    use std::io::Write;
    let n = TestNode::new();
    std::fs::create_dir_all(n.run_dir()).expect("run dir");
    let listener = std::os::unix::net::UnixListener::bind(n.socket()).expect("bind fake daemon");
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(s.try_clone().expect("clone"))
            .read_line(&mut line)
            .expect("read request");
        s.write_all(
            b"{\"version\":2,\"error\":{\"kind\":\"version-mismatch\",\"message\":\"x\"}}\n",
        )
        .expect("answer");
    });
    let out = n.ctl(&["status"]);
    fake.join().expect("fake daemon");
    assert_eq!(out.code, 10, "{out:?}");
    assert!(
        out.stderr
            .contains("drbdctl speaks control protocol 1, daemon speaks 2: upgrade"),
        "{out:?}"
    );
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let n = TestNode::new();
    assert_eq!(n.ctl(&["frobnicate"]).code, 1);
    assert_eq!(n.ctl(&["primary"]).code, 1, "missing resource");
    let help = n.ctl(&["primary", "--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("--force"), "{help:?}");
}

#[test]
fn non_root_callers_are_refused_with_a_reason() {
    if !have_tool("setpriv") || unsafe_geteuid_is_not_root() {
        eprintln!("SKIP: needs root and setpriv to run drbdctl as another user");
        return;
    }
    let mut n = TestNode::new();
    n.start_daemon();
    let out: drbdd_tests::CtlOutput = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(drbdd_tests::bin("drbdctl"))
        .args(["status"])
        .env("DRBDD_RUN_DIR", n.run_dir())
        .output()
        .expect("run setpriv drbdctl")
        .into();
    if out.stderr.contains("Permission denied") && !out.stderr.contains("drbdctl") {
        eprintln!("SKIP: cannot execute drbdctl as uid 65534: {out:?}");
        return;
    }
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("run drbdctl as root"), "{out:?}");
    assert_eq!(n.ctl_ok(&["status"]), "", "root still served");
}

fn unsafe_geteuid_is_not_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() != 0 }
}
