//! Checks that span several values: node-ids (unique, fit max-peers), ports, minors and
//! NBD listen addresses that must not clash on one machine, within a resource and across
//! the resources of a config directory.
//!
//! Owns: uniqueness and consistency rules. Must never: parse text.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use crate::error::{ConfigError, ErrorKind};
use crate::model::Resource;
use crate::reader::Ctx;

/// Where a node's values are in its file.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpans {
    pub(crate) header: Range<usize>,
    pub(crate) node_id: Range<usize>,
    pub(crate) address: Range<usize>,
    pub(crate) minor: Range<usize>,
    pub(crate) nbd_listen: Option<Range<usize>>,
}

/// Something a node holds exclusively on its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// A TCP port (replication `address` or `nbd-listen`).
    Port(SocketAddr, &'static str),
    /// A device minor (`/dev/ublkb<minor>`).
    Minor(u32),
}

/// One exclusive claim with its owner and position, for clash reports.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    resource: String,
    node: String,
    /// Nodes with the same replication IP run on the same machine.
    machine_ip: IpAddr,
    held: Held,
    path: PathBuf,
    line: usize,
    col: usize,
}

impl Claim {
    fn same_machine(&self, other: &Claim) -> bool {
        self.node == other.node || self.machine_ip == other.machine_ip
    }

    fn clashes(&self, other: &Claim) -> bool {
        if !self.same_machine(other) {
            return false;
        }
        match (self.held, other.held) {
            (Held::Port(a, _), Held::Port(b, _)) => {
                a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            (Held::Minor(a), Held::Minor(b)) => a == b,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self.held {
            Held::Port(a, what) => format!("{what} {a}"),
            Held::Minor(m) => format!("minor {m} (/dev/ublkb{m})"),
        }
    }

    fn owner(&self, other_resource: &str) -> String {
        let at = format!("{}:{}:{}", self.path.display(), self.line, self.col);
        if self.resource == other_resource {
            format!("node {} ({at})", self.node)
        } else {
            format!("resource \"{}\" node {} ({at})", self.resource, self.node)
        }
    }
}

/// The claims of one parsed resource.
pub(crate) fn claims_of(ctx: &Ctx, r: &Resource, spans: &[NodeSpans]) -> Vec<Claim> {
    let mut out = Vec::new();
    for (n, s) in r.nodes.iter().zip(spans) {
        let f = r.frontends_for(&n.name);
        let mut push = |held: Held, span: &Range<usize>| {
            let (line, col) = ctx.line_col(span.start);
            out.push(Claim {
                resource: r.name.clone(),
                node: n.name.clone(),
                machine_ip: n.address.ip(),
                held,
                path: r.source.clone(),
                line,
                col,
            });
        };
        push(Held::Port(n.address, "address"), &s.address);
        // Minors are claimed even without ublk so a config stays valid when ublk is enabled.
        push(Held::Minor(n.minor), &s.minor);
        if let Some(addr) = f.nbd_tcp {
            push(
                Held::Port(addr, "nbd-listen"),
                s.nbd_listen.as_ref().unwrap_or(&s.header),
            );
        }
    }
    out
}

/// Reports every later claim that clashes with an earlier one; `only_across` skips pairs
/// within one resource (already reported when that resource was parsed).
pub(crate) fn clashes(claims: &[Claim], only_across: bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, later) in claims.iter().enumerate() {
        let earlier = claims[..i].iter().find(|e| {
            let same_resource = e.resource == later.resource;
            let same_claim = same_resource && e.node == later.node && e.held == later.held;
            let skipped = only_across && same_resource;
            !skipped && !same_claim && e.clashes(later)
        });
        if let Some(e) = earlier {
            let why = match later.held {
                Held::Minor(_) => "each resource/node on one machine needs its own minor",
                Held::Port(..) => "each node and resource on one machine needs its own port",
            };
            errors.push(ConfigError {
                path: later.path.clone(),
                line: later.line,
                col: later.col,
                kind: ErrorKind::Duplicate,
                message: format!(
                    "{} of node {} clashes with {} of {} on the same machine; {why}",
                    later.describe(),
                    later.node,
                    e.describe(),
                    e.owner(&later.resource)
                ),
            });
        }
    }
    errors
}

/// Within-resource checks run after parsing.
pub(crate) fn check_resource(
    ctx: &mut Ctx,
    r: &Resource,
    spans: &[NodeSpans],
    frontend_span: Option<Range<usize>>,
) {
    check_node_ids(ctx, r, spans);
    let claims = claims_of(ctx, r, spans);
    ctx.errors.extend(clashes(&claims, false));
    if r.frontend.nbd_tcp.is_some() && !r.frontend.nbd {
        ctx.err(
            frontend_span.unwrap_or(0..0),
            ErrorKind::InvalidValue,
            "`nbd-listen` is set but `frontend` does not include \"nbd\"; add \"nbd\" to frontend or remove nbd-listen".to_owned(),
        );
    }
    for (n, s) in r.nodes.iter().zip(spans) {
        if n.nbd_listen.is_some() && !r.frontend.nbd {
            let span = s.nbd_listen.clone().unwrap_or_else(|| s.header.clone());
            ctx.err(span, ErrorKind::InvalidValue, format!("[on.{}] sets `nbd-listen` but `frontend` does not include \"nbd\"; add \"nbd\" to frontend or remove nbd-listen", n.name));
        }
    }
}

fn check_node_ids(ctx: &mut Ctx, r: &Resource, spans: &[NodeSpans]) {
    for (i, (n, s)) in r.nodes.iter().zip(spans).enumerate() {
        if n.node_id > r.max_peers {
            ctx.err(
                s.node_id.clone(),
                ErrorKind::InvalidValue,
                format!(
                    "node-id {} of [on.{}] does not fit max-peers {}: node-ids must be 0..={} (max-peers + 1 slots); raise max-peers (at most 31) or use a smaller node-id",
                    n.node_id, n.name, r.max_peers, r.max_peers
                ),
            );
        }
        if let Some((first, first_span)) = r.nodes[..i]
            .iter()
            .zip(spans)
            .find(|(o, _)| o.node_id == n.node_id)
        {
            let (line, col) = ctx.line_col(first_span.node_id.start);
            ctx.err(
                s.node_id.clone(),
                ErrorKind::Duplicate,
                format!(
                    "node-id {} of [on.{}] is already used by [on.{}] (line {line}, column {col}); every node needs its own node-id",
                    n.node_id, n.name, first.name
                ),
            );
        }
    }
}
