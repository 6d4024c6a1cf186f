//! Proves that every validation rule reports the right file, line and column with a message
//! that says what is wrong and what is allowed, and that all problems of a file are reported
//! together. Each test feeds a small resource file to `parse_resource` and inspects the errors.

use std::path::Path;

use drbdd_config::{parse_resource, ConfigError, ErrorKind};

/// Two nodes on one machine; lines are numbered in the comments for the assertions below.
const BASE_NODES: &str = "\
[on.alice]
node-id = 0
address = \"127.0.0.1:7789\"
minor = 0
disk = \"/tmp/a.img\"
[on.bob]
node-id = 1
address = \"127.0.0.1:7790\"
minor = 1
disk = \"/tmp/b.img\"
";

fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse_resource(Path::new("/etc/drbdd/resources.d/r0.toml"), text) {
        Ok(r) => panic!("expected errors, got {r:?}"),
        Err(e) => e.errors,
    }
}

/// The single error of `kind`, asserting there is exactly one.
fn one(errors: &[ConfigError], kind: ErrorKind) -> ConfigError {
    let found: Vec<&ConfigError> = errors.iter().filter(|e| e.kind == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind:?} error in {errors:#?}");
    found[0].clone()
}

#[test]
fn valid_base_config_parses() {
    let r = parse_resource(
        Path::new("r0.toml"),
        &format!("resource = \"r0\"\n{BASE_NODES}"),
    )
    .unwrap();
    assert_eq!(r.nodes.len(), 2);
}

#[test]
fn unknown_key_reports_position_and_suggestion() {
    let text = format!("resource = \"r0\"\n[net]\nprotocl = \"C\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::UnknownKey);
    assert_eq!((e.line, e.col), (3, 1));
    assert!(
        e.message.contains("unknown key `protocl` in [net]"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("did you mean `protocol`?"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("allowed keys: protocol, shared-secret"),
        "{}",
        e.message
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("/etc/drbdd/resources.d/r0.toml:3:1: unknown key"),
        "{shown}"
    );
}

#[test]
fn unknown_key_in_node_section_suggests_node_keys() {
    let text = format!("resource = \"r0\"\n{BASE_NODES}metadisk = \"internal\"\n");
    let e = one(&errors_of(&text), ErrorKind::UnknownKey);
    assert_eq!((e.line, e.col), (12, 1));
    assert!(
        e.message.contains("in [on.bob]; did you mean `meta-disk`?"),
        "{}",
        e.message
    );
}

#[test]
fn wrong_type_reports_value_position() {
    let text = format!("resource = \"r0\"\n[net]\ntimeout = \"long\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::WrongType);
    assert_eq!((e.line, e.col), (3, 11));
    assert!(
        e.message
            .contains("`timeout` must be an integer (tenths of a second), found string"),
        "{}",
        e.message
    );
}

#[test]
fn protocol_d_is_rejected_with_allowed_values() {
    let text = format!("resource = \"r0\"\n[net]\nprotocol = \"D\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (3, 12));
    assert!(
        e.message.contains("protocol must be A, B or C"),
        "{}",
        e.message
    );
}

#[test]
fn out_of_range_numbers_say_the_range_and_unit() {
    let text = format!("resource = \"r0\"\n[disk]\nal-extents = 10\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (3, 14));
    assert!(
        e.message.contains("allowed 67..=65534 (4 MiB extents)"),
        "{}",
        e.message
    );
}

#[test]
fn bad_enum_value_suggests_nearest() {
    let text =
        format!("resource = \"r0\"\n[net]\nafter-sb-1pri = \"discard-secundary\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!(e.line, 3);
    assert!(
        e.message.contains("did you mean \"discard-secondary\"?"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("allowed: disconnect, consensus"),
        "{}",
        e.message
    );
}

#[test]
fn duplicate_node_id_points_at_second_and_names_first() {
    let text = format!(
        "resource = \"r0\"\n{}",
        BASE_NODES.replace("node-id = 1", "node-id = 0")
    );
    let e = one(&errors_of(&text), ErrorKind::Duplicate);
    assert_eq!((e.line, e.col), (8, 11));
    assert!(
        e.message
            .contains("node-id 0 of [on.bob] is already used by [on.alice] (line 3, column 11)"),
        "{}",
        e.message
    );
}

#[test]
fn duplicate_minor_on_one_machine_is_an_error() {
    let text = format!(
        "resource = \"r0\"\n{}",
        BASE_NODES.replace("minor = 1", "minor = 0")
    );
    let e = one(&errors_of(&text), ErrorKind::Duplicate);
    assert_eq!((e.line, e.col), (10, 9));
    assert!(
        e.message
            .contains("minor 0 (/dev/ublkb0) of node bob clashes with minor 0"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("node alice (/etc/drbdd/resources.d/r0.toml:5:9)"),
        "{}",
        e.message
    );
}

#[test]
fn same_minor_on_different_machines_is_fine() {
    let text = format!(
        "resource = \"r0\"\n{}",
        BASE_NODES
            .replace("minor = 1", "minor = 0")
            .replace("127.0.0.1:7790", "10.0.0.2:7789")
    );
    assert!(parse_resource(Path::new("r0.toml"), &text).is_ok());
}

#[test]
fn two_nodes_on_the_same_address_and_port_clash() {
    let text = format!("resource = \"r0\"\n{}", BASE_NODES.replace("7790", "7789"));
    let e = one(&errors_of(&text), ErrorKind::Duplicate);
    assert_eq!((e.line, e.col), (9, 11));
    assert!(
        e.message.contains(
            "address 127.0.0.1:7789 of node bob clashes with address 127.0.0.1:7789 of node alice"
        ),
        "{}",
        e.message
    );
}

#[test]
fn node_id_must_be_below_32() {
    let text = format!(
        "resource = \"r0\"\n{}",
        BASE_NODES.replace("node-id = 1", "node-id = 32")
    );
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (8, 11));
    assert!(e.message.contains("allowed 0..=31"), "{}", e.message);
}

#[test]
fn node_id_must_fit_the_peer_slots() {
    let text = format!(
        "resource = \"r0\"\nmax-peers = 1\n{}",
        BASE_NODES.replace("node-id = 1", "node-id = 2")
    );
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (9, 11));
    assert!(
        e.message
            .contains("node-id 2 of [on.bob] does not fit max-peers 1: node-ids must be 0..=1"),
        "{}",
        e.message
    );
}

#[test]
fn bad_address_explains_the_format() {
    let text = format!(
        "resource = \"r0\"\n{}",
        BASE_NODES.replace("127.0.0.1:7790", "bob.example:7789")
    );
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (9, 11));
    assert!(
        e.message.contains("bad address \"bob.example:7789\""),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("IPv6 \"[fd00::1]:7789\""),
        "{}",
        e.message
    );
}

#[test]
fn ipv6_and_drbd_prefixed_addresses_are_accepted() {
    let text = format!(
        "resource = \"r0\"\n{}",
        BASE_NODES
            .replace("\"127.0.0.1:7789\"", "\"ipv6 [fd00::1]:7789\"")
            .replace("\"127.0.0.1:7790\"", "\"ipv4 10.0.0.2:7789\"")
    );
    let r = parse_resource(Path::new("r0.toml"), &text).unwrap();
    assert_eq!(r.nodes[0].address.to_string(), "[fd00::1]:7789");
    assert_eq!(r.nodes[1].address.to_string(), "10.0.0.2:7789");
}

#[test]
fn invalid_resource_name_is_rejected() {
    let text = format!("resource = \"r 0/x\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (1, 12));
    assert!(
        e.message.contains("resource name \"r 0/x\" is invalid"),
        "{}",
        e.message
    );
}

#[test]
fn file_name_must_match_resource_name() {
    let text = format!("resource = \"r1\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::NameMismatch);
    assert_eq!((e.line, e.col), (1, 12));
    assert!(
        e.message.contains("rename the file to \"r1.toml\""),
        "{}",
        e.message
    );
    // Other extensions (e.g. the shipped .example) are not checked.
    assert!(parse_resource(Path::new("x.toml.example"), &text).is_ok());
}

#[test]
fn connection_naming_unknown_host_is_reported() {
    let text = format!(
        "resource = \"r0\"\n{BASE_NODES}[connection-mesh]\nhosts = [\"alice\", \"bobb\"]\n"
    );
    let e = one(&errors_of(&text), ErrorKind::UnknownHost);
    assert_eq!((e.line, e.col), (13, 19));
    assert!(
        e.message
            .contains("unknown host \"bobb\"; did you mean \"bob\"?"),
        "{}",
        e.message
    );
    let text =
        format!("resource = \"r0\"\n{BASE_NODES}[[connection]]\nhosts = [\"carol\", \"bob\"]\n");
    let e = one(&errors_of(&text), ErrorKind::UnknownHost);
    assert_eq!((e.line, e.col), (13, 10));
}

#[test]
fn unsupported_cram_hmac_alg_says_sha256_only() {
    let text = format!(
        "resource = \"r0\"\n[net]\nshared-secret = \"s\"\ncram-hmac-alg = \"sha1\"\n{BASE_NODES}"
    );
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (4, 17));
    assert!(e.message.contains("\"sha256\" only"), "{}", e.message);
}

#[test]
fn data_integrity_alg_other_than_crc32c_is_refused() {
    let text = format!("resource = \"r0\"\n[net]\ndata-integrity-alg = \"sha256\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!(e.line, 3);
    assert!(
        e.message.contains("data-integrity-alg") && e.message.contains("allowed: crc32c"),
        "{}",
        e.message
    );
}

#[test]
fn missing_node_keys_point_at_the_section_header() {
    let text = "resource = \"r0\"\n[on.alice]\nnode-id = 0\n";
    let errors = errors_of(text);
    let missing: Vec<&ConfigError> = errors
        .iter()
        .filter(|e| e.kind == ErrorKind::Missing)
        .collect();
    assert_eq!(missing.len(), 3, "{errors:#?}");
    assert!(missing.iter().all(|e| (e.line, e.col) == (2, 1)));
    assert!(
        missing[0]
            .message
            .contains("[on.alice] is missing `address`"),
        "{}",
        missing[0].message
    );
}

#[test]
fn all_errors_of_a_file_are_reported_in_line_order() {
    let text = format!(
        "resource = \"r0\"\nfrontned = \"nbd\"\n[net]\nprotocol = \"D\"\nping-int = 0\n[disk]\non-io-error = \"explode\"\n{}",
        BASE_NODES.replace("node-id = 1", "node-id = 0")
    );
    let errors = errors_of(&text);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 4, 5, 7, 14], "{errors:#?}");
    let shown = drbdd_config::ConfigErrors { errors }.to_string();
    assert_eq!(shown.lines().count(), 5);
}

#[test]
fn toml_syntax_errors_have_positions() {
    let text = format!("resource = \"r0\"\n[net]\nprotocol = C\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::Syntax);
    assert_eq!(e.line, 3);
    assert!(e.message.starts_with("TOML syntax error"), "{}", e.message);
}

#[test]
fn three_nodes_without_connections_is_an_error() {
    let text = format!(
        "resource = \"r0\"\n{BASE_NODES}[on.carol]\nnode-id = 2\naddress = \"127.0.0.1:7791\"\nminor = 2\ndisk = \"none\"\n"
    );
    let e = one(&errors_of(&text), ErrorKind::Missing);
    assert!(
        e.message
            .contains("add [connection-mesh] hosts = [\"alice\", \"bob\", \"carol\"]"),
        "{}",
        e.message
    );
}

#[test]
fn nbd_listen_without_nbd_frontend_is_an_error() {
    let text = format!(
        "resource = \"r0\"\nfrontend = \"ublk\"\nnbd-listen = \"127.0.0.1:10809\"\n{BASE_NODES}"
    );
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (2, 12));
    assert!(
        e.message.contains("does not include \"nbd\""),
        "{}",
        e.message
    );
}

#[test]
fn shared_nbd_listen_for_nodes_on_one_machine_clashes() {
    let text = format!("resource = \"r0\"\nnbd-listen = \"127.0.0.1:10809\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::Duplicate);
    assert!(
        e.message
            .contains("nbd-listen 127.0.0.1:10809 of node bob clashes"),
        "{}",
        e.message
    );
}

#[test]
fn bad_size_suffix_is_rejected() {
    let text = format!("resource = \"r0\"\n[disk]\nresync-rate = \"10X\"\n{BASE_NODES}");
    let e = one(&errors_of(&text), ErrorKind::InvalidValue);
    assert_eq!((e.line, e.col), (3, 15));
    assert!(
        e.message.contains("allowed suffixes: s, k, M, G"),
        "{}",
        e.message
    );
}

#[test]
fn missing_local_node_names_the_nodes_there_are() {
    let r = parse_resource(
        Path::new("r0.toml"),
        &format!("resource = \"r0\"\n{BASE_NODES}"),
    )
    .unwrap();
    assert_eq!(r.local_node("bob").unwrap().node_id, 1);
    let e = r.local_node("carol").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("r0.toml: no [on.carol] section in resource \"r0\""),
        "{msg}"
    );
    assert!(msg.contains("nodes are: alice, bob"), "{msg}");
    assert_eq!(e.errors[0].kind, ErrorKind::UnknownHost);
}

#[test]
fn key_in_the_wrong_section_says_where_it_belongs() {
    let text =
        format!("resource = \"r0\"\nprotocol = \"C\"\n[net]\nal-extents = 3000\n{BASE_NODES}");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].col), (2, 1));
    assert!(
        errors[0].message.contains("`protocol` belongs in [net]"),
        "{}",
        errors[0].message
    );
    assert_eq!((errors[1].line, errors[1].col), (4, 1));
    assert!(
        errors[1].message.contains("`al-extents` belongs in [disk]"),
        "{}",
        errors[1].message
    );
}

#[test]
fn drbd_device_key_points_to_minor() {
    let text = format!("resource = \"r0\"\n{BASE_NODES}device = \"/dev/drbd1\"\n");
    let e = one(&errors_of(&text), ErrorKind::UnknownKey);
    assert_eq!((e.line, e.col), (12, 1));
    assert!(e.message.contains("`minor = <n>`"), "{}", e.message);
}
