//! Fixed-newstyle option haggling: answers each client option and decides
//! when the connection enters transmission, or closes.
//!
//! Owns: the policy of which options we support (GO, INFO, EXPORT_NAME, LIST,
//! ABORT; STRUCTURED_REPLY is refused with `NBD_REP_ERR_UNSUP`, so only
//! simple replies are used), opening the `BlockTarget` for the chosen export,
//! and the transmission flags we advertise. Must never: read more option bytes
//! than `proto::MAX_OPTION_BYTES`, answer more than `MAX_OPTIONS` options,
//! or panic on client input. `answer_option` is pure apart from opening the
//! target, so it is tested without sockets.

use crate::proto::{self, ClientOption, InfoRequest};
use crate::{ExportLookup, ServerOptions};
use drbdd_blockio::{
    BlockError, BlockSession, BlockTarget, Geometry, LOGICAL_BLOCK_BYTES, PHYSICAL_BLOCK_BYTES,
};
use std::io::{Read, Write};
use std::sync::Arc;

/// Options a client may send before we consider it abusive and close.
pub(crate) const MAX_OPTIONS: usize = 1024;

/// Everything transmission needs about the export the client chose.
#[derive(Debug)]
pub(crate) struct Negotiated {
    pub(crate) export_name: String,
    pub(crate) session: Arc<dyn BlockSession>,
    pub(crate) geometry: Geometry,
    pub(crate) read_only: bool,
}

/// What the connection does after an option was answered.
#[derive(Debug)]
pub(crate) enum Next {
    Continue,
    /// Close without entering transmission (abort, or an error with no reply envelope).
    Close,
    Transmit(Negotiated),
}

/// Bytes to send and what to do next.
#[derive(Debug)]
pub(crate) struct OptionAnswer {
    pub(crate) reply: Vec<u8>,
    pub(crate) next: Next,
}

/// What `answer_option` needs to know about the server.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) exports: &'a dyn ExportLookup,
    pub(crate) opts: &'a ServerOptions,
    pub(crate) client_name: &'a str,
    pub(crate) no_zeroes: bool,
    pub(crate) shutting_down: bool,
}

/// The transmission flags we advertise for an export.
pub(crate) fn transmission_flags(g: &Geometry, read_only: bool, multi_conn: bool) -> u16 {
    let mut flags = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH | proto::FLAG_SEND_FUA;
    // Write-zeroes is always offered: without target support (or with
    // NO_HOLE) it is carried out as writes of zeroes.
    flags |= proto::FLAG_SEND_WRITE_ZEROES;
    if g.supports_discard {
        flags |= proto::FLAG_SEND_TRIM;
    }
    if multi_conn {
        flags |= proto::FLAG_CAN_MULTI_CONN;
    }
    if read_only {
        flags |= proto::FLAG_READ_ONLY;
    }
    flags
}

/// Looks an export up; the empty name means "the only export" when there is one.
fn resolve(exports: &dyn ExportLookup, name: &str) -> Option<(String, Arc<dyn BlockTarget>)> {
    if let Some(t) = exports.lookup(name) {
        return Some((name.to_owned(), t));
    }
    if name.is_empty() {
        if let [only] = exports.names().as_slice() {
            return exports.lookup(only).map(|t| (only.clone(), t));
        }
    }
    None
}

fn error_reply(option: u32, reply_type: u32, message: &str) -> OptionAnswer {
    OptionAnswer {
        reply: proto::encode_option_reply(option, reply_type, message.as_bytes()),
        next: Next::Continue,
    }
}

/// The message a client sees when the target refused a writable open.
pub(crate) fn refusal_message(export: &str, err: &BlockError) -> String {
    match err {
        BlockError::ReadOnly(reason) if reason.is_empty() => {
            format!("resource {export} is Secondary here; promote it first")
        }
        BlockError::ReadOnly(reason) => {
            format!("resource {export} is Secondary here; promote it first ({reason})")
        }
        other => format!("resource {export} cannot be opened: {other}"),
    }
}

fn open(
    ctx: &Ctx<'_>,
    name: &str,
    target: &Arc<dyn BlockTarget>,
) -> Result<Negotiated, BlockError> {
    let read_only = ctx.opts.read_only;
    let session = target.open(ctx.client_name, !read_only)?;
    Ok(Negotiated {
        export_name: name.to_owned(),
        session,
        geometry: target.geometry(),
        read_only,
    })
}

fn info_replies(
    option: u32,
    name: &str,
    req: &InfoRequest,
    g: &Geometry,
    flags: u16,
    opts: &ServerOptions,
) -> Vec<u8> {
    let mut out = proto::encode_option_reply(
        option,
        proto::REP_INFO,
        &proto::encode_info_export(g.size_bytes, flags),
    );
    // Block sizes are sent whether requested or not (the spec allows it):
    // requests must be 512-byte aligned for the target to accept them.
    let min = LOGICAL_BLOCK_BYTES.max(g.logical_block_bytes);
    let preferred = PHYSICAL_BLOCK_BYTES.max(g.physical_block_bytes);
    let block = proto::encode_info_block_size(min, preferred, g.max_io_bytes);
    out.extend(proto::encode_option_reply(option, proto::REP_INFO, &block));
    if req.requested.contains(&proto::INFO_NAME) {
        let info = proto::encode_info_string(proto::INFO_NAME, name);
        out.extend(proto::encode_option_reply(option, proto::REP_INFO, &info));
    }
    if let Some(text) = opts
        .description
        .as_deref()
        .filter(|_| req.requested.contains(&proto::INFO_DESCRIPTION))
    {
        let info = proto::encode_info_string(proto::INFO_DESCRIPTION, text);
        out.extend(proto::encode_option_reply(option, proto::REP_INFO, &info));
    }
    out.extend(proto::encode_option_reply(option, proto::REP_ACK, &[]));
    out
}

fn answer_info(ctx: &Ctx<'_>, option: u32, req: &InfoRequest) -> OptionAnswer {
    let Some((name, target)) = resolve(ctx.exports, &req.name) else {
        return error_reply(
            option,
            proto::REP_ERR_UNKNOWN,
            &format!("no export named {:?} here", req.name),
        );
    };
    if option == proto::OPT_INFO {
        let g = target.geometry();
        let flags = transmission_flags(&g, ctx.opts.read_only, ctx.opts.multi_conn);
        return OptionAnswer {
            reply: info_replies(option, &name, req, &g, flags, ctx.opts),
            next: Next::Continue,
        };
    }
    match open(ctx, &name, &target) {
        Ok(neg) => {
            let flags = transmission_flags(&neg.geometry, neg.read_only, ctx.opts.multi_conn);
            let reply = info_replies(option, &name, req, &neg.geometry, flags, ctx.opts);
            OptionAnswer {
                reply,
                next: Next::Transmit(neg),
            }
        }
        Err(e) => {
            tracing::info!(client = ctx.client_name, export = %name, error = %e, "NBD open refused");
            error_reply(option, proto::REP_ERR_POLICY, &refusal_message(&name, &e))
        }
    }
}

fn answer_export_name(ctx: &Ctx<'_>, name: &str) -> OptionAnswer {
    let close = OptionAnswer {
        reply: Vec::new(),
        next: Next::Close,
    };
    if ctx.shutting_down {
        return close;
    }
    let Some((name, target)) = resolve(ctx.exports, name) else {
        tracing::info!(
            client = ctx.client_name,
            export = name,
            "NBD_OPT_EXPORT_NAME for unknown export: closing"
        );
        return close;
    };
    match open(ctx, &name, &target) {
        Ok(neg) => {
            let flags = transmission_flags(&neg.geometry, neg.read_only, ctx.opts.multi_conn);
            let reply =
                proto::encode_export_name_reply(neg.geometry.size_bytes, flags, ctx.no_zeroes);
            OptionAnswer {
                reply,
                next: Next::Transmit(neg),
            }
        }
        Err(e) => {
            // EXPORT_NAME has no error reply: the spec says close.
            tracing::info!(
                client = ctx.client_name,
                "{}: closing",
                refusal_message(&name, &e)
            );
            close
        }
    }
}

/// Answers one parsed option (or an option whose payload failed to parse).
pub(crate) fn answer_option(
    ctx: &Ctx<'_>,
    option: u32,
    parsed: Result<ClientOption, proto::InvalidOption>,
) -> OptionAnswer {
    let opt = match parsed {
        Ok(opt) => opt,
        Err(_) if option == proto::OPT_EXPORT_NAME => {
            return OptionAnswer {
                reply: Vec::new(),
                next: Next::Close,
            }
        }
        Err(bad) => return error_reply(option, proto::REP_ERR_INVALID, bad.reason),
    };
    if ctx.shutting_down && !matches!(opt, ClientOption::Abort | ClientOption::ExportName(_)) {
        return error_reply(option, proto::REP_ERR_SHUTDOWN, "server is shutting down");
    }
    match opt {
        ClientOption::ExportName(name) => answer_export_name(ctx, &name),
        ClientOption::Abort => OptionAnswer {
            reply: proto::encode_option_reply(option, proto::REP_ACK, &[]),
            next: Next::Close,
        },
        ClientOption::List => {
            let mut reply = Vec::new();
            for name in ctx.exports.names() {
                reply.extend(proto::encode_option_reply(
                    option,
                    proto::REP_SERVER,
                    &proto::encode_rep_server(&name),
                ));
            }
            reply.extend(proto::encode_option_reply(option, proto::REP_ACK, &[]));
            OptionAnswer {
                reply,
                next: Next::Continue,
            }
        }
        ClientOption::Info(req) | ClientOption::Go(req) => answer_info(ctx, option, &req),
        ClientOption::StructuredReply => error_reply(
            option,
            proto::REP_ERR_UNSUP,
            "structured replies are not supported; simple replies only",
        ),
        ClientOption::Unknown(code) => {
            error_reply(code, proto::REP_ERR_UNSUP, "option not supported")
        }
    }
}

/// Why a handshake ended without transmission.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("socket error during handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation during handshake: {0}")]
    Proto(#[from] proto::ProtoError),
    #[error("client sent more than {MAX_OPTIONS} options")]
    TooManyOptions,
}

/// Drives the handshake over a stream. `Ok(None)`: the client aborted or we
/// closed as the spec demands; `Ok(Some)`: enter transmission.
pub(crate) fn negotiate<S: Read + Write>(
    stream: &mut S,
    exports: &dyn ExportLookup,
    opts: &ServerOptions,
    client_name: &str,
    shutting_down: &dyn Fn() -> bool,
) -> Result<Option<Negotiated>, HandshakeError> {
    stream.write_all(&proto::encode_greeting())?;
    stream.flush()?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags)?;
    let client = proto::parse_client_flags(&flags)?;
    let mut data = Vec::new();
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; proto::OPTION_HEADER_BYTES];
        stream.read_exact(&mut header)?;
        let header = proto::parse_option_header(&header)?;
        let len = usize::try_from(header.len_bytes)
            .map_err(|_| proto::ProtoError::OptionTooLong(header.len_bytes))?;
        data.resize(len, 0);
        stream.read_exact(&mut data)?;
        let ctx = Ctx {
            exports,
            opts,
            client_name,
            no_zeroes: client.no_zeroes,
            shutting_down: shutting_down(),
        };
        let answer = answer_option(
            &ctx,
            header.option,
            proto::parse_option(header.option, &data),
        );
        stream.write_all(&answer.reply)?;
        stream.flush()?;
        match answer.next {
            Next::Continue => {}
            Next::Close => return Ok(None),
            Next::Transmit(neg) => return Ok(Some(neg)),
        }
    }
    Err(HandshakeError::TooManyOptions)
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
