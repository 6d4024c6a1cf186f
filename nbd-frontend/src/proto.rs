//! The NBD wire format, sans-IO: constants, parsers from byte slices and
//! encoders into byte vectors.
//!
//! Owns: every magic number, flag and code of the fixed-newstyle handshake and
//! the transmission phase that this server speaks, and the bounds on what a
//! client may send. Must never: touch a socket, a `BlockTarget` or a clock —
//! everything here is a pure function so it can be unit- and property-tested
//! against hostile input. Field layouts follow the NBD protocol document
//! (NetworkBlockDevice/nbd doc/proto.md); all integers are big-endian.

/// "NBDMAGIC": first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle magic, sent by the server and prefixed to every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission-phase request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server → client, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (client → server, 32 bits).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (16 bits).
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option codes.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;

/// Information types of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// NBD error values (simple reply `error` field). These are the protocol's
/// own numbers, not the host errno values (they happen to match on Linux).
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Longest option payload we read; longer options close the connection
/// (names are at most 4096 bytes, plus the info-request list).
pub const MAX_OPTION_BYTES: u32 = 16 * 1024;
/// Longest string (export name) the protocol allows.
pub const MAX_STRING_BYTES: usize = 4096;
/// A write payload above this closes the connection instead of being
/// drained: we will not read unbounded data from a client.
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;

/// Bytes of the server's opening greeting.
pub const GREETING_BYTES: usize = 18;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_BYTES: usize = 16;
/// Bytes of a transmission request header.
pub const REQUEST_BYTES: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_BYTES: usize = 16;

/// Why client bytes could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("need {need} bytes, got {got}")]
    Truncated { need: usize, got: usize },
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("client sent unknown handshake flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("option payload of {0} bytes exceeds the limit of {MAX_OPTION_BYTES}")]
    OptionTooLong(u32),
    #[error("malformed option: {0}")]
    MalformedOption(&'static str),
}

fn take<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], ProtoError> {
    let end = at.checked_add(N).ok_or(ProtoError::Truncated {
        need: usize::MAX,
        got: buf.len(),
    })?;
    buf.get(at..end)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(ProtoError::Truncated {
            need: end,
            got: buf.len(),
        })
}

fn be_u16(buf: &[u8], at: usize) -> Result<u16, ProtoError> {
    take::<2>(buf, at).map(u16::from_be_bytes)
}

fn be_u32(buf: &[u8], at: usize) -> Result<u32, ProtoError> {
    take::<4>(buf, at).map(u32::from_be_bytes)
}

fn be_u64(buf: &[u8], at: usize) -> Result<u64, ProtoError> {
    take::<8>(buf, at).map(u64::from_be_bytes)
}

/// The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting() -> [u8; GREETING_BYTES] {
    let mut out = [0u8; GREETING_BYTES];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// What the client answered to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Parses the client's 32-bit flags; unknown bits are an error (the spec
/// requires the server to close the connection then).
pub fn parse_client_flags(buf: &[u8]) -> Result<ClientFlags, ProtoError> {
    let flags = be_u32(buf, 0)?;
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(ProtoError::UnknownClientFlags(flags));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// The fixed part of a client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len_bytes: u32,
}

/// Parses an option header; checks the magic and the payload bound so the
/// caller never allocates what a hostile client asks for.
pub fn parse_option_header(buf: &[u8]) -> Result<OptionHeader, ProtoError> {
    let magic = be_u64(buf, 0)?;
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic(magic));
    }
    let option = be_u32(buf, 8)?;
    let len_bytes = be_u32(buf, 12)?;
    if len_bytes > MAX_OPTION_BYTES {
        return Err(ProtoError::OptionTooLong(len_bytes));
    }
    Ok(OptionHeader { option, len_bytes })
}

/// A parsed option the server knows how to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// Old-style finish: no reply envelope, errors close the connection.
    ExportName(String),
    Abort,
    List,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    /// Any option we do not implement (answered with `NBD_REP_ERR_UNSUP`).
    Unknown(u32),
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requested: Vec<u16>,
}

/// An option that parsed badly but still deserves an `NBD_REP_ERR_INVALID`
/// reply (fixed newstyle: the connection stays open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOption {
    pub option: u32,
    pub reason: &'static str,
}

fn parse_name(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.len() > MAX_STRING_BYTES {
        return Err("export name longer than 4096 bytes");
    }
    let name = std::str::from_utf8(bytes).map_err(|_| "export name is not UTF-8")?;
    if name.contains('\0') {
        return Err("export name contains NUL");
    }
    Ok(name.to_owned())
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest, &'static str> {
    let name_len = be_u32(data, 0).map_err(|_| "info request shorter than its name length")?;
    let name_len = usize::try_from(name_len).map_err(|_| "name length overflows")?;
    let name_end = 4usize
        .checked_add(name_len)
        .ok_or("name length overflows")?;
    let name_bytes = data
        .get(4..name_end)
        .ok_or("name length exceeds option length")?;
    let name = parse_name(name_bytes)?;
    let count = be_u16(data, name_end).map_err(|_| "info request lacks its request count")?;
    let list = &data[name_end + 2..];
    if list.len() != usize::from(count) * 2 {
        return Err("info request count does not match option length");
    }
    let requested = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, requested })
}

/// Parses an option's payload. `Err` means: reply `NBD_REP_ERR_INVALID`.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, InvalidOption> {
    let invalid = |reason| InvalidOption { option, reason };
    let expect_empty = |opt: ClientOption| {
        if data.is_empty() {
            Ok(opt)
        } else {
            Err(invalid("option takes no data"))
        }
    };
    match option {
        OPT_EXPORT_NAME => parse_name(data)
            .map(ClientOption::ExportName)
            .map_err(invalid),
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => expect_empty(ClientOption::List),
        OPT_STRUCTURED_REPLY => expect_empty(ClientOption::StructuredReply),
        OPT_INFO => parse_info_request(data)
            .map(ClientOption::Info)
            .map_err(invalid),
        OPT_GO => parse_info_request(data)
            .map(ClientOption::Go)
            .map_err(invalid),
        other => Ok(ClientOption::Unknown(other)),
    }
}

/// An option reply: header plus payload.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).expect("option reply payloads are built by us and small");
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_REP_SERVER` payload for `NBD_OPT_LIST`.
pub fn encode_rep_server(name: &str) -> Vec<u8> {
    let len = u32::try_from(name.len()).expect("export names are short");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

/// `NBD_INFO_EXPORT` payload.
pub fn encode_info_export(size_bytes: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = INFO_EXPORT.to_be_bytes().to_vec();
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE` payload.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut out = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [min, preferred, max] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` payload.
pub fn encode_info_string(info_type: u16, text: &str) -> Vec<u8> {
    let mut out = info_type.to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes
/// unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(
    size_bytes: u64,
    transmission_flags: u16,
    no_zeroes: bool,
) -> Vec<u8> {
    let mut out = size_bytes.to_be_bytes().to_vec();
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// What a transmission request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    /// A command type we do not implement (answered with `NBD_EINVAL`).
    Unknown(u16),
}

/// A parsed request header (a write's payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset_bytes: u64,
    pub len_bytes: u32,
}

impl Request {
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }

    pub fn no_hole(&self) -> bool {
        self.flags & CMD_FLAG_NO_HOLE != 0
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_bytes(&self) -> u32 {
        if self.command == Command::Write {
            self.len_bytes
        } else {
            0
        }
    }
}

/// Parses a 28-byte request header. A bad magic means the stream is out of
/// sync: the caller must close the connection.
pub fn parse_request(buf: &[u8]) -> Result<Request, ProtoError> {
    let magic = be_u32(buf, 0)?;
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic(u64::from(magic)));
    }
    let command = match be_u16(buf, 6)? {
        CMD_READ => Command::Read,
        CMD_WRITE => Command::Write,
        CMD_DISC => Command::Disconnect,
        CMD_FLUSH => Command::Flush,
        CMD_TRIM => Command::Trim,
        CMD_WRITE_ZEROES => Command::WriteZeroes,
        other => Command::Unknown(other),
    };
    Ok(Request {
        flags: be_u16(buf, 4)?,
        command,
        handle: be_u64(buf, 8)?,
        offset_bytes: be_u64(buf, 16)?,
        len_bytes: be_u32(buf, 24)?,
    })
}

/// Encodes a request header (used by tests and fuzzers that play client).
pub fn encode_request(req: &Request) -> [u8; REQUEST_BYTES] {
    let cmd = match req.command {
        Command::Read => CMD_READ,
        Command::Write => CMD_WRITE,
        Command::Disconnect => CMD_DISC,
        Command::Flush => CMD_FLUSH,
        Command::Trim => CMD_TRIM,
        Command::WriteZeroes => CMD_WRITE_ZEROES,
        Command::Unknown(c) => c,
    };
    let mut out = [0u8; REQUEST_BYTES];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&req.flags.to_be_bytes());
    out[6..8].copy_from_slice(&cmd.to_be_bytes());
    out[8..16].copy_from_slice(&req.handle.to_be_bytes());
    out[16..24].copy_from_slice(&req.offset_bytes.to_be_bytes());
    out[24..28].copy_from_slice(&req.len_bytes.to_be_bytes());
    out
}

/// A simple reply header (read data, if any, follows it).
pub fn encode_simple_reply(handle: u64, error: u32) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut out = [0u8; SIMPLE_REPLY_BYTES];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out
}

/// Maps a host errno (from `BlockError::errno`) to the NBD error value.
/// Unknown errnos become `NBD_EIO`: the client must see a failure.
pub fn nbd_error_from_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS => NBD_EPERM,
        libc::EIO => NBD_EIO,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC => NBD_ENOSPC,
        libc::EOVERFLOW => NBD_EOVERFLOW,
        libc::EOPNOTSUPP => NBD_ENOTSUP,
        libc::ESHUTDOWN => NBD_ESHUTDOWN,
        _ => NBD_EIO,
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
