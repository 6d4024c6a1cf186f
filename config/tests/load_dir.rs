//! Proves `load_dir`: a config directory with `global.toml` and several resource files loads
//! with `[common]` defaults applied, and clashes between resources (same port, same minor on
//! one machine, same resource name) and errors in several files are all reported with file
//! and line. Each test builds a directory under a temp dir.

use std::path::Path;

use drbdd_config::{load_dir, ErrorKind, Protocol};

fn node(name: &str, id: u8, addr: &str, minor: u32) -> String {
    format!("[on.{name}]\nnode-id = {id}\naddress = \"{addr}\"\nminor = {minor}\ndisk = \"/tmp/{name}.img\"\n")
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// r0 and r1, each on alice (127.0.0.1) and bob (127.0.0.2), with distinct ports and minors.
fn two_resources(dir: &Path) {
    let r0 = format!(
        "resource = \"r0\"\n{}{}",
        node("alice", 0, "127.0.0.1:7789", 0),
        node("bob", 1, "127.0.0.2:7789", 0)
    );
    let r1 = format!(
        "resource = \"r1\"\n[net]\nprotocol = \"C\"\n{}{}",
        node("alice", 0, "127.0.0.1:7790", 1),
        node("bob", 1, "127.0.0.2:7790", 1)
    );
    write(dir, "resources.d/r0.toml", &r0);
    write(dir, "resources.d/r1.toml", &r1);
}

#[test]
fn loads_all_resources_with_common_defaults_from_global() {
    let dir = tempfile::tempdir().unwrap();
    two_resources(dir.path());
    write(dir.path(), "global.toml", "[common]\nmax-peers = 3\n[common.net]\nprotocol = \"A\"\n[common.disk]\nal-extents = 6001\n");
    write(dir.path(), "resources.d/README", "not a resource");
    let config = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r0", "r1"]);
    assert_eq!(config.global.common.net.protocol, Protocol::A);
    let r0 = config.resource("r0").unwrap();
    assert_eq!(r0.net.protocol, Protocol::A, "inherits [common.net]");
    assert_eq!(r0.disk.al_extents, 6001);
    assert_eq!(r0.max_peers, 3);
    assert_eq!(
        config.resource("r1").unwrap().net.protocol,
        Protocol::C,
        "resource overrides common"
    );
    assert!(config.resource("r9").is_none());
}

#[test]
fn missing_global_file_means_builtin_defaults() {
    let dir = tempfile::tempdir().unwrap();
    two_resources(dir.path());
    let config = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.resource("r0").unwrap().disk.al_extents, 1237);
}

#[test]
fn same_port_in_two_resources_is_reported_at_the_second() {
    let dir = tempfile::tempdir().unwrap();
    two_resources(dir.path());
    let r1 = format!(
        "resource = \"r1\"\n{}{}",
        node("alice", 0, "127.0.0.1:7789", 1),
        node("bob", 1, "127.0.0.2:7790", 1)
    );
    write(dir.path(), "resources.d/r1.toml", &r1);
    let errors = load_dir(dir.path()).unwrap_err().errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.kind, ErrorKind::Duplicate);
    assert!(e.path.ends_with("resources.d/r1.toml"));
    assert_eq!((e.line, e.col), (4, 11));
    assert!(e.message.contains("address 127.0.0.1:7789 of node alice clashes with address 127.0.0.1:7789 of resource \"r0\" node alice"), "{}", e.message);
}

#[test]
fn same_minor_on_one_host_in_two_resources_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    two_resources(dir.path());
    let r1 = format!(
        "resource = \"r1\"\n{}{}",
        node("alice", 0, "127.0.0.1:7790", 0),
        node("bob", 1, "127.0.0.2:7790", 1)
    );
    write(dir.path(), "resources.d/r1.toml", &r1);
    let errors = load_dir(dir.path()).unwrap_err().errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].col), (5, 9));
    assert!(errors[0].message.contains("minor 0 (/dev/ublkb0) of node alice clashes with minor 0 (/dev/ublkb0) of resource \"r0\" node alice"), "{}", errors[0].message);
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    two_resources(dir.path());
    write(
        dir.path(),
        "global.toml",
        "[common.net]\nprotocol = \"D\"\n",
    );
    let r1 = std::fs::read_to_string(dir.path().join("resources.d/r1.toml"))
        .unwrap()
        .replace("resource = \"r1\"", "resource = \"r0\"");
    write(dir.path(), "resources.d/r1.toml", &r1);
    let err = load_dir(dir.path()).unwrap_err();
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].ends_with("global.toml:2:12: protocol must be A, B or C, not \"D\" (A: async, B: memory-sync, C: sync)"), "{shown}");
    assert!(lines[1].ends_with("r1.toml:1:12: resource \"r0\" is in file \"r1.toml\"; rename the file to \"r0.toml\" or change `resource` (one resource per file, named after it)"), "{shown}");
}

#[test]
fn missing_resource_directory_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert_eq!(err.errors[0].kind, ErrorKind::Io);
    assert!(
        err.to_string().contains("cannot read resource directory"),
        "{err}"
    );
}

#[test]
fn unknown_key_in_global_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    two_resources(dir.path());
    write(dir.path(), "global.toml", "[comon.net]\nprotocol = \"A\"\n");
    let e = &load_dir(dir.path()).unwrap_err().errors[0];
    assert_eq!((e.line, e.col, e.kind), (1, 2, ErrorKind::UnknownKey));
    assert!(
        e.message.contains("did you mean `common`?"),
        "{}",
        e.message
    );
}
