//! The resource file and `global.toml` schema: top-level keys, `[on.<host>]` nodes,
//! `frontend`, `[connection-mesh]` and `[[connection]]`.
//!
//! Owns: turning one document into a [`Resource`]/[`Global`] plus the positions that
//! `validate` needs. Must never: read files or compare resources with each other.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::error::{ConfigErrors, ErrorKind};
use crate::model::{
    Common, Connection, Frontends, Global, MetaDisk, Node, Resource, MAX_PEERS_LIMIT, NODE_ID_LIMIT,
};
use crate::reader::{entries, Ctx, Val};
use crate::sections::{apply_disk, apply_handlers, apply_net, apply_options};
use crate::validate::{check_resource, NodeSpans};

pub(crate) const TOP_KEYS: &[&str] = &[
    "resource",
    "frontend",
    "nbd-listen",
    "max-peers",
    "net",
    "disk",
    "options",
    "handlers",
    "on",
    "connection-mesh",
    "connection",
];
pub(crate) const NODE_KEYS: &[&str] = &[
    "node-id",
    "address",
    "minor",
    "disk",
    "meta-disk",
    "nbd-listen",
];
const MESH_KEYS: &[&str] = &["hosts", "net"];
const COMMON_KEYS: &[&str] = &[
    "frontend",
    "max-peers",
    "net",
    "disk",
    "options",
    "handlers",
];

/// A parsed resource plus the source positions cross-resource checks report.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) resource: Resource,
    pub(crate) spans: Vec<NodeSpans>,
}

/// Parses the TOML text into a document, recording syntax errors.
fn parse_doc<'i>(ctx: &mut Ctx, text: &'i str) -> DeTable<'i> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        ctx.err(
            span,
            ErrorKind::Syntax,
            format!("TOML syntax error: {}", e.message()),
        );
    }
    doc.into_inner()
}

fn finish<T>(mut ctx: Ctx, value: T) -> Result<T, ConfigErrors> {
    if ctx.errors.is_empty() {
        return Ok(value);
    }
    ctx.errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors { errors: ctx.errors })
}

/// Parses `global.toml`.
pub(crate) fn parse_global(path: &Path, text: &str) -> Result<Global, ConfigErrors> {
    let mut ctx = Ctx::new(path, text);
    let doc = parse_doc(&mut ctx, text);
    let mut global = Global::default();
    for (k, v) in entries(&doc) {
        if k.get_ref().as_ref() != "common" {
            ctx.unknown_key(k, "global.toml", &["common"]);
            continue;
        }
        if let Some(t) = ctx.table("common", v) {
            parse_common(&mut ctx, t, &mut global.common);
        }
    }
    finish(ctx, global)
}

fn parse_common(ctx: &mut Ctx, table: &DeTable<'_>, common: &mut Common) {
    for (k, v) in entries(table) {
        let key = k.get_ref().as_ref();
        match key {
            "frontend" => {
                if let Some(f) = frontend(ctx, v) {
                    common.frontend = Frontends { nbd_tcp: None, ..f };
                }
            }
            "max-peers" => {
                if let Some(n) = max_peers(ctx, v) {
                    common.max_peers = n;
                }
            }
            "net" => sub(ctx, v, key, |c, t| {
                apply_net(c, t, "[common.net]", &mut common.net, None)
            }),
            "disk" => sub(ctx, v, key, |c, t| {
                apply_disk(c, t, "[common.disk]", &mut common.disk)
            }),
            "options" => sub(ctx, v, key, |c, t| {
                apply_options(c, t, "[common.options]", &mut common.options)
            }),
            "handlers" => sub(ctx, v, key, |c, t| {
                apply_handlers(c, t, "[common.handlers]", &mut common.handlers)
            }),
            _ => ctx.unknown_key(k, "[common]", COMMON_KEYS),
        }
    }
}

fn sub(ctx: &mut Ctx, v: &Val<'_>, key: &str, f: impl FnOnce(&mut Ctx, &DeTable<'_>)) {
    if let Some(t) = ctx.table(key, v) {
        f(ctx, t);
    }
}

/// Parses and validates one resource file, starting from `global`'s `[common]` defaults.
pub(crate) fn parse_resource_full(
    path: &Path,
    text: &str,
    global: &Global,
) -> Result<Parsed, ConfigErrors> {
    let mut ctx = Ctx::new(path, text);
    let doc = parse_doc(&mut ctx, text);
    let common = &global.common;
    let mut r = Resource {
        name: String::new(),
        source: path.to_owned(),
        frontend: common.frontend,
        max_peers: common.max_peers,
        nodes: Vec::new(),
        connections: Vec::new(),
        connection_mesh: Vec::new(),
        net: common.net.clone(),
        disk: common.disk.clone(),
        options: common.options,
        handlers: common.handlers.clone(),
    };
    check_keys(&mut ctx, &doc, "the resource file", TOP_KEYS);
    let frontend_span = top_level(&mut ctx, &doc, path, &mut r);
    let spans = match doc.get("on") {
        Some(v) => nodes(&mut ctx, v, &mut r.nodes),
        None => {
            let msg = "no nodes: add one `[on.<host>]` section per node with node-id, address, minor and disk";
            ctx.err(0..0, ErrorKind::Missing, msg.to_owned());
            Vec::new()
        }
    };
    option_sections(&mut ctx, &doc, &mut r);
    connections(
        &mut ctx,
        doc.get("connection-mesh"),
        doc.get("connection"),
        &mut r,
    );
    check_resource(&mut ctx, &r, &spans, frontend_span);
    finish(ctx, Parsed { resource: r, spans })
}

/// `resource`, `max-peers`, `frontend`, `nbd-listen`; returns where the frontend is set.
fn top_level(
    ctx: &mut Ctx,
    doc: &DeTable<'_>,
    path: &Path,
    r: &mut Resource,
) -> Option<Range<usize>> {
    match doc.get("resource") {
        Some(v) => resource_name(ctx, v, path, &mut r.name),
        None => ctx.err(
            0..0,
            ErrorKind::Missing,
            "missing `resource = \"<name>\"` (the resource name, e.g. \"r0\")".to_owned(),
        ),
    }
    if let Some(v) = doc.get("max-peers") {
        r.max_peers = max_peers(ctx, v).unwrap_or(r.max_peers);
    }
    if let Some(v) = doc.get("frontend") {
        r.frontend = frontend(ctx, v).unwrap_or(r.frontend);
    }
    let mut frontend_span = doc.get("frontend").map(|v| v.span());
    if let Some(v) = doc.get("nbd-listen") {
        r.frontend.nbd_tcp = address(ctx, "nbd-listen", v);
        frontend_span = frontend_span.or(Some(v.span()));
    }
    frontend_span
}

/// `[net]`, `[disk]`, `[options]`, `[handlers]` over the `[common]` defaults.
fn option_sections(ctx: &mut Ctx, doc: &DeTable<'_>, r: &mut Resource) {
    let hosts: Vec<String> = r.nodes.iter().map(|n| n.name.clone()).collect();
    if let Some(v) = doc.get("net") {
        sub(ctx, v, "net", |c, t| {
            apply_net(c, t, "[net]", &mut r.net, Some(&hosts))
        });
    }
    if let Some(v) = doc.get("disk") {
        sub(ctx, v, "disk", |c, t| {
            apply_disk(c, t, "[disk]", &mut r.disk)
        });
    }
    if let Some(v) = doc.get("options") {
        sub(ctx, v, "options", |c, t| {
            apply_options(c, t, "[options]", &mut r.options)
        });
    }
    if let Some(v) = doc.get("handlers") {
        sub(ctx, v, "handlers", |c, t| {
            apply_handlers(c, t, "[handlers]", &mut r.handlers)
        });
    }
}

/// Resource and host names: used in file names, paths and messages.
pub(crate) fn valid_name(name: &str, max_chars: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_chars
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn resource_name(ctx: &mut Ctx, v: &Val<'_>, path: &Path, name: &mut String) {
    let Some(s) = ctx.string("resource", v) else {
        return;
    };
    if !valid_name(s, 63) {
        ctx.invalid(v, format!("resource name \"{s}\" is invalid; use 1-63 characters from A-Z a-z 0-9 _ . - not starting with . or -"));
        return;
    }
    *name = s.to_owned();
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let stem = path.file_stem().and_then(|s| s.to_str());
    if let (true, Some(stem)) = (is_toml, stem) {
        if stem != s {
            ctx.err(v.span(), ErrorKind::NameMismatch, format!("resource \"{s}\" is in file \"{stem}.toml\"; rename the file to \"{s}.toml\" or change `resource` (one resource per file, named after it)"));
        }
    }
}

fn max_peers(ctx: &mut Ctx, v: &Val<'_>) -> Option<u8> {
    let n = ctx.int(
        "max-peers",
        v,
        1,
        u64::from(MAX_PEERS_LIMIT),
        "peer slots in the metadata",
    )?;
    u8::try_from(n).ok()
}

/// `frontend = "nbd"` or `frontend = ["nbd", "ublk"]`.
fn frontend(ctx: &mut Ctx, v: &Val<'_>) -> Option<Frontends> {
    let items: Vec<(&str, Range<usize>)> = match v.get_ref() {
        DeValue::String(s) => vec![(s.as_ref(), v.span())],
        DeValue::Array(_) => ctx.string_list("frontend", v)?,
        _ => {
            ctx.invalid(
                v,
                "`frontend` must be \"nbd\", \"ublk\" or a list like [\"nbd\", \"ublk\"]"
                    .to_owned(),
            );
            return None;
        }
    };
    if items.is_empty() {
        ctx.invalid(
            v,
            "`frontend` is empty; allowed: \"nbd\", \"ublk\" or both".to_owned(),
        );
        return None;
    }
    let mut f = Frontends {
        nbd: false,
        ublk: false,
        nbd_tcp: None,
    };
    for (name, span) in items {
        let slot = match name {
            "nbd" => &mut f.nbd,
            "ublk" => &mut f.ublk,
            other => {
                ctx.err(
                    span,
                    ErrorKind::InvalidValue,
                    format!("unknown frontend \"{other}\"; allowed: \"nbd\", \"ublk\""),
                );
                return None;
            }
        };
        if *slot {
            ctx.err(
                span,
                ErrorKind::Duplicate,
                format!("frontend \"{name}\" is listed twice"),
            );
        }
        *slot = true;
    }
    Some(f)
}

/// `"10.0.0.1:7789"`, `"[fd00::1]:7789"`; DRBD's `ipv4 `/`ipv6 ` prefixes are accepted.
pub(crate) fn address(ctx: &mut Ctx, key: &str, v: &Val<'_>) -> Option<SocketAddr> {
    let s = ctx.string(key, v)?;
    let bare = s
        .strip_prefix("ipv4 ")
        .or_else(|| s.strip_prefix("ipv6 "))
        .unwrap_or(s)
        .trim();
    match bare.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Some(a),
        _ => {
            ctx.invalid(v, format!("bad address \"{s}\" in `{key}`; expected an IP address and port: IPv4 \"10.0.0.1:7789\" or IPv6 \"[fd00::1]:7789\" (host names are not allowed)"));
            None
        }
    }
}

fn nodes(ctx: &mut Ctx, v: &Val<'_>, out: &mut Vec<Node>) -> Vec<NodeSpans> {
    let Some(table) = ctx.table("on", v) else {
        return Vec::new();
    };
    let mut spans = Vec::new();
    for (k, nv) in entries(table) {
        let name = k.get_ref().as_ref();
        if !valid_name(name, 253) {
            ctx.err(k.span(), ErrorKind::InvalidValue, format!("host name \"{name}\" is invalid; use A-Z a-z 0-9 _ . - not starting with . or -"));
            continue;
        }
        let Some(t) = ctx.table(name, nv) else {
            continue;
        };
        if let Some((node, s)) = node(ctx, name, nv.span(), t) {
            out.push(node);
            spans.push(s);
        }
    }
    spans
}

fn node(
    ctx: &mut Ctx,
    name: &str,
    header: Range<usize>,
    t: &DeTable<'_>,
) -> Option<(Node, NodeSpans)> {
    let section = format!("[on.{name}]");
    check_keys(ctx, t, &section, NODE_KEYS);
    let required = [
        ("node-id", "0..=31, unique in the resource"),
        ("address", "replication IP:port, e.g. \"10.0.0.1:7789\""),
        ("minor", "device minor, /dev/ublkb<minor>"),
        ("disk", "backing device or file, or \"none\" for diskless"),
    ];
    for (key, what) in required {
        if t.get(key).is_none() {
            let msg = format!("{section} is missing `{key}` ({what})");
            ctx.err(header.clone(), ErrorKind::Missing, msg);
        }
    }
    let (Some(id_v), Some(addr_v), Some(minor_v), Some(disk_v)) = (
        t.get("node-id"),
        t.get("address"),
        t.get("minor"),
        t.get("disk"),
    ) else {
        return None;
    };
    let node_id = ctx
        .int("node-id", id_v, 0, u64::from(NODE_ID_LIMIT - 1), "node-id")
        .and_then(|n| u8::try_from(n).ok());
    let addr = address(ctx, "address", addr_v);
    let minor = ctx
        .int("minor", minor_v, 0, (1 << 20) - 1, "device minor")
        .and_then(|n| u32::try_from(n).ok());
    let disk = ctx
        .nonempty_string("disk", disk_v)
        .map(|d| (d != "none").then(|| PathBuf::from(d)));
    let meta_disk = match t.get("meta-disk") {
        None => Some(MetaDisk::Internal),
        Some(v) => ctx
            .nonempty_string("meta-disk", v)
            .map(|m| match m.as_str() {
                "internal" => MetaDisk::Internal,
                _ => MetaDisk::External(PathBuf::from(m)),
            }),
    };
    let nbd_listen = t.get("nbd-listen").map(|v| address(ctx, "nbd-listen", v));
    let spans = NodeSpans {
        header,
        node_id: id_v.span(),
        address: addr_v.span(),
        minor: minor_v.span(),
        nbd_listen: t.get("nbd-listen").map(|v| v.span()),
    };
    let node = Node {
        name: name.to_owned(),
        node_id: node_id?,
        address: addr?,
        minor: minor?,
        disk: disk?,
        meta_disk: meta_disk?,
        nbd_listen: match nbd_listen {
            Some(a) => Some(a?),
            None => None,
        },
    };
    Some((node, spans))
}

/// Reads `hosts = [...]`: known, distinct host names.
fn hosts(
    ctx: &mut Ctx,
    section: &str,
    t: &DeTable<'_>,
    header: Range<usize>,
    known: &[String],
) -> Option<Vec<String>> {
    let Some(v) = t.get("hosts") else {
        ctx.err(
            header,
            ErrorKind::Missing,
            format!("{section} is missing `hosts = [\"<host>\", ...]`"),
        );
        return None;
    };
    let list = ctx.string_list("hosts", v)?;
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for (h, span) in list {
        if !known.iter().any(|k| k == h) {
            let hint = crate::suggest::did_you_mean(
                h,
                &known.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .map(|s| format!("did you mean \"{s}\"? "))
            .unwrap_or_default();
            ctx.err(span, ErrorKind::UnknownHost, format!("{section} names unknown host \"{h}\"; {hint}hosts with an [on.<host>] section: {}", known.join(", ")));
            ok = false;
        } else if out.iter().any(|o| o == h) {
            ctx.err(
                span,
                ErrorKind::Duplicate,
                format!("host \"{h}\" is listed twice in {section}"),
            );
            ok = false;
        } else {
            out.push(h.to_owned());
        }
    }
    ok.then_some(out)
}

fn connections(
    ctx: &mut Ctx,
    mesh: Option<&Val<'_>>,
    explicit: Option<&Val<'_>>,
    r: &mut Resource,
) {
    let known: Vec<String> = r.nodes.iter().map(|n| n.name.clone()).collect();
    if let Some(v) = mesh {
        mesh_connections(ctx, v, &known, r);
    }
    if let Some(v) = explicit {
        explicit_connections(ctx, v, &known, r);
    }
    if mesh.is_none() && explicit.is_none() {
        if known.len() == 2 {
            // Like drbdadm for two-host resources: an implicit connection between them.
            let hosts = [known[0].clone(), known[1].clone()];
            r.connections.push(Connection {
                hosts,
                net: r.net.clone(),
            });
            r.connection_mesh = known;
        } else if known.len() > 2 {
            let quoted: Vec<String> = known.iter().map(|h| format!("\"{h}\"")).collect();
            let msg = format!(
                "resource has {} nodes but no connections; add [connection-mesh] hosts = [{}] or [[connection]] entries",
                known.len(),
                quoted.join(", ")
            );
            ctx.err(0..0, ErrorKind::Missing, msg);
        }
    }
}

/// `[connection-mesh]`: every pair of `hosts`, with optional `[connection-mesh.net]`.
fn mesh_connections(ctx: &mut Ctx, v: &Val<'_>, known: &[String], r: &mut Resource) {
    let Some(t) = ctx.table("connection-mesh", v) else {
        return;
    };
    check_keys(ctx, t, "[connection-mesh]", MESH_KEYS);
    let mut net = r.net.clone();
    if let Some(nv) = t.get("net") {
        sub(ctx, nv, "net", |c, nt| {
            apply_net(c, nt, "[connection-mesh.net]", &mut net, Some(known))
        });
    }
    let Some(h) = hosts(ctx, "[connection-mesh]", t, v.span(), known) else {
        return;
    };
    if h.len() < 2 {
        ctx.invalid(v, "[connection-mesh] needs at least two hosts".to_owned());
    }
    for (i, a) in h.iter().enumerate() {
        for b in &h[i + 1..] {
            let hosts = [a.clone(), b.clone()];
            r.connections.push(Connection {
                hosts,
                net: net.clone(),
            });
        }
    }
    r.connection_mesh = h;
}

/// `[[connection]]` entries: add a pair or override the net options of a mesh pair.
fn explicit_connections(ctx: &mut Ctx, v: &Val<'_>, known: &[String], r: &mut Resource) {
    let DeValue::Array(items) = v.get_ref() else {
        let msg = "`connection` must be an array of tables: write [[connection]] sections";
        ctx.invalid(v, msg.to_owned());
        return;
    };
    let mut seen: Vec<[String; 2]> = Vec::new();
    for item in items.iter() {
        let Some(t) = ctx.table("connection", item) else {
            continue;
        };
        check_keys(ctx, t, "[[connection]]", MESH_KEYS);
        let Some(h) = hosts(ctx, "[[connection]]", t, item.span(), known) else {
            continue;
        };
        let Ok([a, b]) = <[String; 2]>::try_from(h) else {
            let msg = "[[connection]] needs exactly two hosts: hosts = [\"<a>\", \"<b>\"]";
            ctx.invalid(item, msg.to_owned());
            continue;
        };
        if seen
            .iter()
            .any(|p| (p[0] == a && p[1] == b) || (p[0] == b && p[1] == a))
        {
            let msg = format!("a second [[connection]] between {a} and {b}; merge them into one");
            ctx.err(item.span(), ErrorKind::Duplicate, msg);
            continue;
        }
        seen.push([a.clone(), b.clone()]);
        let mut net = r.net.clone();
        if let Some(nv) = t.get("net") {
            sub(ctx, nv, "net", |c, nt| {
                apply_net(c, nt, "[connection.net]", &mut net, Some(known))
            });
        }
        match r.connections.iter_mut().find(|c| c.joins(&a, &b)) {
            Some(c) => c.net = net,
            None => r.connections.push(Connection { hosts: [a, b], net }),
        }
    }
}

fn check_keys(ctx: &mut Ctx, t: &DeTable<'_>, section: &str, allowed: &[&str]) {
    for (k, _) in entries(t) {
        if !allowed.contains(&k.get_ref().as_ref()) {
            ctx.unknown_key(k, section, allowed);
        }
    }
}
