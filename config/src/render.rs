//! `Resource::to_toml`: the effective configuration (defaults filled in) in the same schema
//! the parser reads, for `drbdctl dump`. Parsing the output gives an equal `Resource`.
//!
//! Owns: TOML output. Must never: change values (it prints what was parsed).

use std::fmt::Write as _;

use crate::model::{
    AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, Disk, Handlers, MetaDisk, Net, OnIoError, OnNoQuorum,
    Options, Protocol, Quorum, Resource,
};
use crate::units::format_scaled;

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A table key: bare when possible, quoted otherwise (e.g. host names with dots).
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_owned()
    } else {
        quote(s)
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

pub(crate) fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::A => "A",
        Protocol::B => "B",
        Protocol::C => "C",
    }
}

fn after_sb_0pri_str(p: &AfterSb0Pri) -> String {
    match p {
        AfterSb0Pri::Disconnect => "disconnect".to_owned(),
        AfterSb0Pri::DiscardYoungerPrimary => "discard-younger-primary".to_owned(),
        AfterSb0Pri::DiscardOlderPrimary => "discard-older-primary".to_owned(),
        AfterSb0Pri::DiscardZeroChanges => "discard-zero-changes".to_owned(),
        AfterSb0Pri::DiscardLeastChanges => "discard-least-changes".to_owned(),
        AfterSb0Pri::DiscardNode(h) => format!("discard-node-{h}"),
    }
}

fn after_sb_1pri_str(p: AfterSb1Pri) -> &'static str {
    match p {
        AfterSb1Pri::Disconnect => "disconnect",
        AfterSb1Pri::Consensus => "consensus",
        AfterSb1Pri::ViolentlyAs0p => "violently-as0p",
        AfterSb1Pri::DiscardSecondary => "discard-secondary",
        AfterSb1Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
    }
}

fn after_sb_2pri_str(p: AfterSb2Pri) -> &'static str {
    match p {
        AfterSb2Pri::Disconnect => "disconnect",
        AfterSb2Pri::ViolentlyAs0p => "violently-as0p",
        AfterSb2Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
    }
}

/// (key, TOML value) for every net option.
fn net_lines(n: &Net) -> Vec<(&'static str, String)> {
    let mut v = vec![("protocol", quote(protocol_str(n.protocol)))];
    if let Some(s) = &n.shared_secret {
        v.push(("shared-secret", quote(s)));
    }
    v.push(("cram-hmac-alg", quote(&n.cram_hmac_alg)));
    for (k, alg) in [
        ("verify-alg", &n.verify_alg),
        ("csums-alg", &n.csums_alg),
        ("data-integrity-alg", &n.data_integrity_alg),
    ] {
        if let Some(a) = alg {
            v.push((k, quote(a)));
        }
    }
    v.extend([
        ("after-sb-0pri", quote(&after_sb_0pri_str(&n.after_sb_0pri))),
        ("after-sb-1pri", quote(after_sb_1pri_str(n.after_sb_1pri))),
        ("after-sb-2pri", quote(after_sb_2pri_str(n.after_sb_2pri))),
        (
            "timeout",
            format!("{}  # tenths of a second", n.timeout_ms / 100),
        ),
        (
            "connect-int",
            format!("{}  # seconds", n.connect_int_ms / 1000),
        ),
        ("ping-int", format!("{}  # seconds", n.ping_int_ms / 1000)),
        (
            "ping-timeout",
            format!("{}  # tenths of a second", n.ping_timeout_ms / 100),
        ),
        ("ko-count", n.ko_count.to_string()),
        ("max-buffers", n.max_buffers.to_string()),
        (
            "sndbuf-size",
            match n.sndbuf_size_bytes {
                0 => "0  # bytes, 0 = auto-tune".to_owned(),
                b => quote(&format_scaled(u64::from(b), 1)),
            },
        ),
    ]);
    v
}

fn disk_lines(d: &Disk) -> Vec<(&'static str, String)> {
    let on_io_error = match d.on_io_error {
        OnIoError::Detach => "detach",
        OnIoError::PassOn => "pass_on",
        OnIoError::CallLocalIoError => "call-local-io-error",
    };
    let rate = |kib: u32| quote(&format_scaled(u64::from(kib), 1024));
    vec![
        ("on-io-error", quote(on_io_error)),
        ("resync-rate", rate(d.resync_rate_kib)),
        (
            "c-plan-ahead",
            format!("{}  # tenths of a second", d.c_plan_ahead_ms / 100),
        ),
        (
            "c-fill-target",
            format!("{}  # 512-byte sectors", d.c_fill_target_sectors),
        ),
        ("c-max-rate", rate(d.c_max_rate_kib)),
        ("c-min-rate", rate(d.c_min_rate_kib)),
        ("disk-flushes", d.disk_flushes.to_string()),
        ("md-flushes", d.md_flushes.to_string()),
        ("al-extents", d.al_extents.to_string()),
    ]
}

fn options_lines(o: &Options) -> Vec<(&'static str, String)> {
    let quorum = match o.quorum {
        Quorum::Off => quote("off"),
        Quorum::Majority => quote("majority"),
        Quorum::All => quote("all"),
        Quorum::Nodes(n) => n.to_string(),
    };
    let on_no_quorum = match o.on_no_quorum {
        OnNoQuorum::SuspendIo => "suspend-io",
        OnNoQuorum::IoError => "io-error",
    };
    vec![
        ("quorum", quorum),
        ("on-no-quorum", quote(on_no_quorum)),
        ("auto-promote", o.auto_promote.to_string()),
        ("cpu-mask", quote(&o.cpu_mask.to_hex())),
    ]
}

fn handler_lines(h: &Handlers) -> Vec<(&'static str, String)> {
    h.entries()
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|cmd| (*k, quote(cmd))))
        .collect()
}

fn section(out: &mut String, header: &str, lines: &[(&str, String)]) {
    let _ = writeln!(out, "\n[{header}]");
    for (k, v) in lines {
        let _ = writeln!(out, "{k} = {v}");
    }
}

/// Renders the effective configuration of `r`.
pub(crate) fn render(r: &Resource) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# effective configuration of resource {} (from {})",
        r.name,
        r.source.display()
    );
    let _ = writeln!(out, "resource = {}", quote(&r.name));
    let mut fronts = Vec::new();
    if r.frontend.nbd {
        fronts.push("nbd".to_owned());
    }
    if r.frontend.ublk {
        fronts.push("ublk".to_owned());
    }
    let _ = writeln!(out, "frontend = {}", list(&fronts));
    if let Some(a) = r.frontend.nbd_tcp {
        let _ = writeln!(out, "nbd-listen = {}", quote(&a.to_string()));
    }
    let _ = writeln!(out, "max-peers = {}", r.max_peers);
    section(&mut out, "net", &net_lines(&r.net));
    section(&mut out, "disk", &disk_lines(&r.disk));
    section(&mut out, "options", &options_lines(&r.options));
    let handlers = handler_lines(&r.handlers);
    if !handlers.is_empty() {
        section(&mut out, "handlers", &handlers);
    }
    for n in &r.nodes {
        let mut lines = vec![
            ("node-id", n.node_id.to_string()),
            ("address", quote(&n.address.to_string())),
            ("minor", format!("{}  # /dev/ublkb{}", n.minor, n.minor)),
            (
                "disk",
                quote(
                    &n.disk
                        .as_ref()
                        .map_or_else(|| "none".to_owned(), |d| d.display().to_string()),
                ),
            ),
            (
                "meta-disk",
                quote(&match &n.meta_disk {
                    MetaDisk::Internal => "internal".to_owned(),
                    MetaDisk::External(p) => p.display().to_string(),
                }),
            ),
        ];
        if let Some(a) = n.nbd_listen {
            lines.push(("nbd-listen", quote(&a.to_string())));
        }
        section(&mut out, &format!("on.{}", key(&n.name)), &lines);
    }
    render_connections(&mut out, r);
    out
}

fn render_connections(out: &mut String, r: &Resource) {
    if !r.connection_mesh.is_empty() {
        section(
            out,
            "connection-mesh",
            &[("hosts", list(&r.connection_mesh))],
        );
    }
    let base = net_lines(&r.net);
    for c in &r.connections {
        let in_mesh =
            r.connection_mesh.contains(&c.hosts[0]) && r.connection_mesh.contains(&c.hosts[1]);
        let lines = net_lines(&c.net);
        let overrides: Vec<(&str, String)> =
            lines.into_iter().filter(|l| !base.contains(l)).collect();
        // Connections start from the resource's net and can only set options, so printing
        // the differing lines is enough to reproduce them.
        if in_mesh && overrides.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n[[connection]]\nhosts = {}", list(&c.hosts));
        if !overrides.is_empty() {
            let _ = writeln!(out, "[connection.net]");
            for (k, v) in overrides {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
    }
}
