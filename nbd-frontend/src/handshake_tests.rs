//! Option haggling tests without sockets: each option's reply bytes and next
//! step, the Secondary refusal, and whole handshakes over an in-memory
//! stream including hostile ones (bad magic, oversized option, option flood).

use super::*;
use drbdd_blockio::mem::MemTarget;
use std::collections::HashMap;
use std::io::Cursor;

/// A target whose writable open is refused, like a Secondary node.
#[derive(Debug)]
struct SecondaryTarget(MemTarget);

impl BlockTarget for SecondaryTarget {
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

fn exports() -> HashMap<String, Arc<dyn BlockTarget>> {
    let mut m: HashMap<String, Arc<dyn BlockTarget>> = HashMap::new();
    m.insert("r0".into(), Arc::new(MemTarget::new(1 << 20)));
    m.insert(
        "sec".into(),
        Arc::new(SecondaryTarget(MemTarget::new(1 << 20))),
    );
    m
}

/// Splits option replies into (option, type, data).
fn replies(mut bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(&bytes[0..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
        let option = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(bytes[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[16..20].try_into().unwrap()) as usize;
        out.push((option, kind, bytes[20..20 + len].to_vec()));
        bytes = &bytes[20 + len..];
    }
    out
}

fn go(name: &str, requests: &[u16]) -> ClientOption {
    ClientOption::Go(InfoRequest {
        name: name.into(),
        requested: requests.to_vec(),
    })
}

fn answer(opt: ClientOption, option: u32, opts: &ServerOptions) -> OptionAnswer {
    let ex = exports();
    let ctx = Ctx {
        exports: &ex,
        opts,
        client_name: "test",
        no_zeroes: true,
        shutting_down: false,
    };
    answer_option(&ctx, option, Ok(opt))
}

#[test]
fn go_on_known_export_sends_export_and_block_size_info_then_ack_and_transmits() {
    let a = answer(
        go("r0", &[proto::INFO_NAME]),
        proto::OPT_GO,
        &ServerOptions::default(),
    );
    let r = replies(&a.reply);
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].1, proto::REP_INFO);
    let flags = transmission_flags(&MemTarget::new(1 << 20).geometry(), false, true);
    assert_eq!(r[0].2, proto::encode_info_export(1 << 20, flags));
    assert_eq!(r[1].2, proto::encode_info_block_size(512, 4096, 1 << 20));
    assert_eq!(r[2].2, proto::encode_info_string(proto::INFO_NAME, "r0"));
    assert_eq!((r[3].0, r[3].1), (proto::OPT_GO, proto::REP_ACK));
    assert!(matches!(a.next, Next::Transmit(ref n) if n.export_name == "r0" && !n.read_only));
}

#[test]
fn empty_export_name_is_not_guessed_when_several_exports_exist() {
    let a = answer(go("", &[]), proto::OPT_GO, &ServerOptions::default());
    assert_eq!(replies(&a.reply)[0].1, proto::REP_ERR_UNKNOWN);
}

#[test]
fn go_on_unknown_export_replies_err_unknown_and_continues() {
    let a = answer(go("nope", &[]), proto::OPT_GO, &ServerOptions::default());
    let r = replies(&a.reply);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1, proto::REP_ERR_UNKNOWN);
    assert!(matches!(a.next, Next::Continue));
}

#[test]
fn go_on_secondary_replies_err_policy_with_promote_hint() {
    let a = answer(go("sec", &[]), proto::OPT_GO, &ServerOptions::default());
    let r = replies(&a.reply);
    assert_eq!(r[0].1, proto::REP_ERR_POLICY);
    assert_eq!(
        String::from_utf8_lossy(&r[0].2),
        "resource sec is Secondary here; promote it first"
    );
    assert!(matches!(a.next, Next::Continue));
}

#[test]
fn read_only_server_opens_secondary_read_only_and_advertises_it() {
    let opts = ServerOptions {
        read_only: true,
        ..ServerOptions::default()
    };
    let a = answer(go("sec", &[]), proto::OPT_GO, &opts);
    let r = replies(&a.reply);
    let flags = u16::from_be_bytes([r[0].2[10], r[0].2[11]]);
    assert_ne!(flags & proto::FLAG_READ_ONLY, 0);
    assert!(matches!(a.next, Next::Transmit(ref n) if n.read_only));
}

#[test]
fn info_answers_without_opening_and_continues() {
    let a = answer(
        ClientOption::Info(InfoRequest {
            name: "sec".into(),
            requested: vec![],
        }),
        proto::OPT_INFO,
        &ServerOptions::default(),
    );
    let r = replies(&a.reply);
    assert_eq!(r.last().map(|x| x.1), Some(proto::REP_ACK));
    assert!(matches!(a.next, Next::Continue));
}

#[test]
fn structured_reply_and_unknown_options_reply_err_unsup() {
    let a = answer(
        ClientOption::StructuredReply,
        proto::OPT_STRUCTURED_REPLY,
        &ServerOptions::default(),
    );
    assert_eq!(replies(&a.reply)[0].1, proto::REP_ERR_UNSUP);
    let a = answer(ClientOption::Unknown(42), 42, &ServerOptions::default());
    assert_eq!(replies(&a.reply)[0].0, 42);
    assert_eq!(replies(&a.reply)[0].1, proto::REP_ERR_UNSUP);
}

#[test]
fn list_names_every_export_then_acks() {
    let a = answer(
        ClientOption::List,
        proto::OPT_LIST,
        &ServerOptions::default(),
    );
    let r = replies(&a.reply);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].2, proto::encode_rep_server("r0"));
    assert_eq!(r[1].2, proto::encode_rep_server("sec"));
    assert_eq!(r[2].1, proto::REP_ACK);
}

#[test]
fn abort_acks_and_closes() {
    let a = answer(
        ClientOption::Abort,
        proto::OPT_ABORT,
        &ServerOptions::default(),
    );
    assert_eq!(replies(&a.reply)[0].1, proto::REP_ACK);
    assert!(matches!(a.next, Next::Close));
}

#[test]
fn export_name_sends_size_and_flags_or_closes_silently() {
    let a = answer(
        ClientOption::ExportName("r0".into()),
        proto::OPT_EXPORT_NAME,
        &ServerOptions::default(),
    );
    assert_eq!(a.reply.len(), 10);
    assert_eq!(&a.reply[0..8], &(1u64 << 20).to_be_bytes());
    assert!(matches!(a.next, Next::Transmit(_)));
    for name in ["nope", "sec"] {
        let a = answer(
            ClientOption::ExportName(name.into()),
            proto::OPT_EXPORT_NAME,
            &ServerOptions::default(),
        );
        assert!(a.reply.is_empty());
        assert!(matches!(a.next, Next::Close));
    }
}

#[test]
fn invalid_option_payload_gets_err_invalid() {
    let ex = exports();
    let opts = ServerOptions::default();
    let ctx = Ctx {
        exports: &ex,
        opts: &opts,
        client_name: "t",
        no_zeroes: false,
        shutting_down: false,
    };
    let bad = proto::parse_option(proto::OPT_GO, &[0, 0, 0, 9]);
    let a = answer_option(&ctx, proto::OPT_GO, bad);
    assert_eq!(replies(&a.reply)[0].1, proto::REP_ERR_INVALID);
    assert!(matches!(a.next, Next::Continue));
}

#[test]
fn options_during_shutdown_get_err_shutdown() {
    let ex = exports();
    let opts = ServerOptions::default();
    let ctx = Ctx {
        exports: &ex,
        opts: &opts,
        client_name: "t",
        no_zeroes: false,
        shutting_down: true,
    };
    let a = answer_option(&ctx, proto::OPT_GO, Ok(go("r0", &[])));
    assert_eq!(replies(&a.reply)[0].1, proto::REP_ERR_SHUTDOWN);
}

#[test]
fn transmission_flags_follow_geometry_and_options() {
    let mut g = MemTarget::new(1 << 20).geometry();
    let f = transmission_flags(&g, false, true);
    for bit in [
        proto::FLAG_HAS_FLAGS,
        proto::FLAG_SEND_FLUSH,
        proto::FLAG_SEND_FUA,
        proto::FLAG_SEND_TRIM,
        proto::FLAG_SEND_WRITE_ZEROES,
        proto::FLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(f & bit, 0, "bit {bit:#x}");
    }
    assert_eq!(f & proto::FLAG_READ_ONLY, 0);
    g.supports_discard = false;
    let f = transmission_flags(&g, true, false);
    assert_eq!(f & (proto::FLAG_SEND_TRIM | proto::FLAG_CAN_MULTI_CONN), 0);
    assert_ne!(f & proto::FLAG_READ_ONLY, 0);
}

/// Client bytes in, server bytes out.
struct Duplex {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn client_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = proto::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn run(input: Vec<u8>) -> (Result<Option<Negotiated>, HandshakeError>, Vec<u8>) {
    let ex = exports();
    let mut d = Duplex {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    let r = negotiate(&mut d, &ex, &ServerOptions::default(), "t", &|| false);
    (r, d.output)
}

#[test]
fn full_handshake_with_unknown_option_then_go_enters_transmission() {
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend(client_option(77, b"junk"));
    let mut go_data = 2u32.to_be_bytes().to_vec();
    go_data.extend_from_slice(b"r0");
    go_data.extend_from_slice(&0u16.to_be_bytes());
    input.extend(client_option(proto::OPT_GO, &go_data));
    let (r, out) = run(input);
    assert!(matches!(r, Ok(Some(ref n)) if n.export_name == "r0"));
    assert_eq!(&out[..18], &proto::encode_greeting());
    let rs = replies(&out[18..]);
    assert_eq!(rs[0].1, proto::REP_ERR_UNSUP);
    assert_eq!(rs.last().map(|x| x.1), Some(proto::REP_ACK));
}

#[test]
fn handshake_closes_on_unknown_client_flags() {
    let (r, _) = run(0x80u32.to_be_bytes().to_vec());
    assert!(matches!(
        r,
        Err(HandshakeError::Proto(
            proto::ProtoError::UnknownClientFlags(0x80)
        ))
    ));
}

#[test]
fn handshake_closes_on_bad_option_magic() {
    let mut input = 1u32.to_be_bytes().to_vec();
    input.extend_from_slice(&[0u8; 16]);
    let (r, _) = run(input);
    assert!(matches!(
        r,
        Err(HandshakeError::Proto(proto::ProtoError::BadMagic(0)))
    ));
}

#[test]
fn handshake_closes_on_oversized_option_without_reading_it() {
    let mut input = 1u32.to_be_bytes().to_vec();
    let mut header = client_option(proto::OPT_GO, &[]);
    header[12..16].copy_from_slice(&(64u32 << 20).to_be_bytes());
    input.extend(header);
    let (r, _) = run(input);
    assert!(matches!(
        r,
        Err(HandshakeError::Proto(proto::ProtoError::OptionTooLong(_)))
    ));
}

#[test]
fn handshake_closes_on_truncated_option_data() {
    let mut input = 1u32.to_be_bytes().to_vec();
    let mut header = client_option(proto::OPT_GO, &[]);
    header[12..16].copy_from_slice(&100u32.to_be_bytes());
    input.extend(header);
    input.extend_from_slice(&[0u8; 10]);
    let (r, _) = run(input);
    assert!(matches!(r, Err(HandshakeError::Io(_))));
}

#[test]
fn handshake_closes_after_option_flood() {
    let mut input = 1u32.to_be_bytes().to_vec();
    for _ in 0..=MAX_OPTIONS {
        input.extend(client_option(proto::OPT_LIST, &[]));
    }
    let (r, _) = run(input);
    assert!(matches!(r, Err(HandshakeError::TooManyOptions)));
}
