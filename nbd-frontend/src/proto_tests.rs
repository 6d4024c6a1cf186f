//! Codec tests: field layouts match the protocol document, and hostile
//! input (truncated, oversized, bad magic, arbitrary bytes) is rejected with
//! an error, never a panic.

use super::*;
use proptest::prelude::*;

fn option_header(magic: u64, option: u32, len: u32) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn info_payload(name: &[u8], name_len: u32, requests: &[u16], count: u16) -> Vec<u8> {
    let mut v = name_len.to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&count.to_be_bytes());
    for r in requests {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_fixed_newstyle_no_zeroes() {
    let g = encode_greeting();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), 0b11);
}

#[test]
fn client_flags_accept_known_bits_and_reject_unknown_or_truncated() {
    assert_eq!(
        parse_client_flags(&3u32.to_be_bytes()),
        Ok(ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true
        })
    );
    assert_eq!(
        parse_client_flags(&4u32.to_be_bytes()),
        Err(ProtoError::UnknownClientFlags(4))
    );
    assert!(matches!(
        parse_client_flags(&[0, 0, 1]),
        Err(ProtoError::Truncated { .. })
    ));
}

#[test]
fn option_header_rejects_bad_magic_oversized_length_and_truncation() {
    assert_eq!(
        parse_option_header(&option_header(IHAVEOPT, OPT_GO, 10)),
        Ok(OptionHeader {
            option: OPT_GO,
            len_bytes: 10
        })
    );
    assert_eq!(
        parse_option_header(&option_header(NBD_MAGIC, OPT_GO, 10)),
        Err(ProtoError::BadMagic(NBD_MAGIC))
    );
    assert_eq!(
        parse_option_header(&option_header(IHAVEOPT, OPT_GO, u32::MAX)),
        Err(ProtoError::OptionTooLong(u32::MAX))
    );
    assert!(matches!(
        parse_option_header(&option_header(IHAVEOPT, 1, 0)[..15]),
        Err(ProtoError::Truncated { .. })
    ));
}

#[test]
fn go_payload_parses_name_and_info_requests() {
    let data = info_payload(b"r0", 2, &[INFO_BLOCK_SIZE, INFO_NAME], 2);
    assert_eq!(
        parse_option(OPT_GO, &data),
        Ok(ClientOption::Go(InfoRequest {
            name: "r0".into(),
            requested: vec![INFO_BLOCK_SIZE, INFO_NAME]
        }))
    );
}

#[test]
fn go_payload_with_lying_lengths_is_invalid_not_a_panic() {
    let name_too_long = info_payload(b"r0", 200, &[], 0);
    assert!(parse_option(OPT_GO, &name_too_long).is_err());
    let huge_name_len = info_payload(b"r0", u32::MAX, &[], 0);
    assert!(parse_option(OPT_INFO, &huge_name_len).is_err());
    let count_mismatch = info_payload(b"r0", 2, &[1], 5);
    assert!(parse_option(OPT_GO, &count_mismatch).is_err());
    let missing_count = 2u32
        .to_be_bytes()
        .iter()
        .chain(b"r0")
        .copied()
        .collect::<Vec<u8>>();
    assert!(parse_option(OPT_GO, &missing_count).is_err());
    assert!(parse_option(OPT_GO, &[0, 0]).is_err());
    let not_utf8 = info_payload(&[0xff, 0xfe], 2, &[], 0);
    assert!(parse_option(OPT_GO, &not_utf8).is_err());
}

#[test]
fn options_that_take_no_data_refuse_data_and_unknown_options_are_reported() {
    assert_eq!(parse_option(OPT_LIST, &[]), Ok(ClientOption::List));
    assert!(parse_option(OPT_LIST, &[1]).is_err());
    assert!(parse_option(OPT_STRUCTURED_REPLY, &[1]).is_err());
    assert_eq!(parse_option(OPT_ABORT, &[]), Ok(ClientOption::Abort));
    assert_eq!(parse_option(99, &[1, 2, 3]), Ok(ClientOption::Unknown(99)));
    assert_eq!(
        parse_option(OPT_EXPORT_NAME, b"r0"),
        Ok(ClientOption::ExportName("r0".into()))
    );
    assert!(parse_option(OPT_EXPORT_NAME, b"r\0").is_err());
}

#[test]
fn option_reply_layout_is_magic_option_type_length_data() {
    let r = encode_option_reply(OPT_GO, REP_ERR_POLICY, b"no");
    assert_eq!(&r[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&r[8..12], &OPT_GO.to_be_bytes());
    assert_eq!(&r[12..16], &(0x8000_0002u32).to_be_bytes());
    assert_eq!(&r[16..20], &2u32.to_be_bytes());
    assert_eq!(&r[20..], b"no");
}

#[test]
fn export_name_reply_has_124_zero_bytes_unless_no_zeroes() {
    assert_eq!(
        encode_export_name_reply(1 << 20, 1, false).len(),
        8 + 2 + 124
    );
    assert_eq!(encode_export_name_reply(1 << 20, 1, true).len(), 8 + 2);
}

#[test]
fn request_header_parses_fields_and_rejects_bad_magic_and_truncation() {
    let req = Request {
        flags: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        command: Command::WriteZeroes,
        handle: 0xdead_beef_0000_0001,
        offset_bytes: 4096,
        len_bytes: 8192,
    };
    let bytes = encode_request(&req);
    assert_eq!(&bytes[0..4], &[0x25, 0x60, 0x95, 0x13]);
    let parsed = parse_request(&bytes).expect("valid request");
    assert_eq!(parsed, req);
    assert!(parsed.fua() && parsed.no_hole());
    assert_eq!(parsed.payload_bytes(), 0);
    let mut bad = bytes;
    bad[0] = 0;
    assert!(matches!(parse_request(&bad), Err(ProtoError::BadMagic(_))));
    assert!(matches!(
        parse_request(&bytes[..27]),
        Err(ProtoError::Truncated { .. })
    ));
}

#[test]
fn unknown_command_types_parse_as_unknown() {
    let mut bytes = encode_request(&Request {
        flags: 0,
        command: Command::Read,
        handle: 1,
        offset_bytes: 0,
        len_bytes: 512,
    });
    bytes[6..8].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(
        parse_request(&bytes).map(|r| r.command),
        Ok(Command::Unknown(7))
    );
}

#[test]
fn simple_reply_layout_is_magic_error_handle() {
    let r = encode_simple_reply(42, NBD_EIO);
    assert_eq!(&r[0..4], &[0x67, 0x44, 0x66, 0x98]);
    assert_eq!(&r[4..8], &5u32.to_be_bytes());
    assert_eq!(&r[8..16], &42u64.to_be_bytes());
}

#[test]
fn block_errors_map_to_nbd_error_values() {
    use drbdd_blockio::BlockError;
    assert_eq!(nbd_error_from_errno(BlockError::Io.errno()), NBD_EIO);
    assert_eq!(
        nbd_error_from_errno(BlockError::OutOfRange.errno()),
        NBD_EINVAL
    );
    assert_eq!(
        nbd_error_from_errno(BlockError::NoSpace.errno()),
        NBD_ENOSPC
    );
    assert_eq!(
        nbd_error_from_errno(BlockError::ReadOnly(String::new()).errno()),
        NBD_EPERM
    );
    assert_eq!(
        nbd_error_from_errno(BlockError::NotSupported.errno()),
        NBD_ENOTSUP
    );
    assert_eq!(
        nbd_error_from_errno(BlockError::ShuttingDown.errno()),
        NBD_ESHUTDOWN
    );
    assert_eq!(nbd_error_from_errno(libc::EBUSY), NBD_EIO);
}

fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Read),
        Just(Command::Write),
        Just(Command::Disconnect),
        Just(Command::Flush),
        Just(Command::Trim),
        Just(Command::WriteZeroes),
        (8u16..).prop_map(Command::Unknown),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_any_parser(bytes in proptest::collection::vec(any::<u8>(), 0..64), option in any::<u32>()) {
        let _ = parse_client_flags(&bytes);
        let _ = parse_option_header(&bytes);
        let _ = parse_option(option, &bytes);
        let _ = parse_request(&bytes);
    }

    #[test]
    fn info_payload_with_arbitrary_lengths_never_panics(name_len in any::<u32>(), count in any::<u16>(),
                                                       name in proptest::collection::vec(any::<u8>(), 0..32),
                                                       reqs in proptest::collection::vec(any::<u16>(), 0..8)) {
        let data = info_payload(&name, name_len, &reqs, count);
        let _ = parse_option(OPT_GO, &data);
    }

    #[test]
    fn request_encode_parse_round_trips(flags in any::<u16>(), command in any_command(), handle in any::<u64>(),
                                        offset_bytes in any::<u64>(), len_bytes in any::<u32>()) {
        let req = Request { flags, command, handle, offset_bytes, len_bytes };
        prop_assert_eq!(parse_request(&encode_request(&req)), Ok(req));
    }
}
