//! The option sections shared by resources, `[common]` and connections: `net`, `disk`,
//! `options`, `handlers`. Each `apply_*` overrides a base value key by key, which gives DRBD's
//! inheritance (built-in default → `[common]` → resource → connection).
//!
//! Owns: option names, allowed values, ranges and DRBD units. Must never: check nodes.

use toml::de::DeTable;

use crate::error::ErrorKind;
use crate::model::{
    AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, CpuMask, Disk, Handlers, Net, OnIoError, OnNoQuorum,
    Options, Protocol, Quorum,
};
use crate::reader::{entries, Ctx, Val};

pub(crate) const NET_KEYS: &[&str] = &[
    "protocol",
    "shared-secret",
    "cram-hmac-alg",
    "verify-alg",
    "csums-alg",
    "data-integrity-alg",
    "after-sb-0pri",
    "after-sb-1pri",
    "after-sb-2pri",
    "timeout",
    "connect-int",
    "ping-int",
    "ping-timeout",
    "ko-count",
    "max-buffers",
    "sndbuf-size",
];
pub(crate) const DISK_KEYS: &[&str] = &[
    "on-io-error",
    "resync-rate",
    "c-plan-ahead",
    "c-fill-target",
    "c-max-rate",
    "c-min-rate",
    "disk-flushes",
    "md-flushes",
    "al-extents",
];
pub(crate) const OPTIONS_KEYS: &[&str] = &["quorum", "on-no-quorum", "auto-promote", "cpu-mask"];

/// Where a key known to drbdd belongs, for "wrong section" hints.
pub(crate) fn home_of(key: &str) -> Option<&'static str> {
    const HOMES: &[(&[&str], &str)] = &[
        (NET_KEYS, "[net] (or a connection's net)"),
        (DISK_KEYS, "[disk]"),
        (OPTIONS_KEYS, "[options]"),
        (crate::schema::NODE_KEYS, "an [on.<host>] section"),
        (
            crate::schema::TOP_KEYS,
            "the top of the file, before any [section]",
        ),
    ];
    if key == "device" {
        return Some(
            "nowhere: drbdd sets the device with `minor = <n>` in [on.<host>] (/dev/ublkb<n>)",
        );
    }
    if crate::model::Handlers::default()
        .entries()
        .iter()
        .any(|(k, _)| *k == key)
    {
        return Some("[handlers]");
    }
    HOMES
        .iter()
        .find(|(keys, _)| keys.contains(&key))
        .map(|(_, home)| *home)
}

/// Checksum algorithms drbdd implements (verify-alg, csums-alg).
pub(crate) const HASH_ALGS: &[&str] = &["crc32c", "sha256"];
/// `data-integrity-alg`: the frame CRC-32C extended over replicated data.
const DATA_INTEGRITY_ALGS: &[&str] = &["crc32c"];
const AFTER_SB_0PRI: &[&str] = &[
    "disconnect",
    "discard-younger-primary",
    "discard-older-primary",
    "discard-zero-changes",
    "discard-least-changes",
    "discard-node-<host>",
];
const AFTER_SB_1PRI: &[&str] = &[
    "disconnect",
    "consensus",
    "violently-as0p",
    "discard-secondary",
    "call-pri-lost-after-sb",
];
const AFTER_SB_2PRI: &[&str] = &["disconnect", "violently-as0p", "call-pri-lost-after-sb"];
const MAX_SHARED_SECRET_CHARS: usize = 64;

/// Applies a `[net]` table onto `net`. `hosts` (when known) checks `discard-node-<host>`.
pub(crate) fn apply_net(
    ctx: &mut Ctx,
    table: &DeTable<'_>,
    section: &str,
    net: &mut Net,
    hosts: Option<&[String]>,
) {
    for (k, v) in entries(table) {
        let key = k.get_ref().as_ref();
        match key {
            "protocol" => {
                if let Some(p) = protocol(ctx, v) {
                    net.protocol = p;
                }
            }
            "shared-secret" => {
                if let Some(s) = ctx.nonempty_string(key, v) {
                    if s.chars().count() > MAX_SHARED_SECRET_CHARS {
                        ctx.invalid(v, format!("`shared-secret` is longer than {MAX_SHARED_SECRET_CHARS} characters; use at most {MAX_SHARED_SECRET_CHARS}"));
                    } else {
                        net.shared_secret = Some(s);
                    }
                }
            }
            "cram-hmac-alg" => {
                if let Some(s) = ctx.string(key, v) {
                    if s == "sha256" {
                        net.cram_hmac_alg = s.to_owned();
                    } else {
                        ctx.invalid(v, format!("`cram-hmac-alg` = \"{s}\" is not supported; drbdd authenticates peers (shared-secret) with \"sha256\" only"));
                    }
                }
            }
            "verify-alg" => net.verify_alg = hash_alg(ctx, key, v).or(net.verify_alg.take()),
            "csums-alg" => net.csums_alg = hash_alg(ctx, key, v).or(net.csums_alg.take()),
            "data-integrity-alg" => {
                net.data_integrity_alg = ctx
                    .choice(key, v, DATA_INTEGRITY_ALGS)
                    .map(str::to_owned)
                    .or(net.data_integrity_alg.take());
            }
            "after-sb-0pri" => {
                if let Some(p) = after_sb_0pri(ctx, v, hosts) {
                    net.after_sb_0pri = p;
                }
            }
            "after-sb-1pri" => {
                if let Some(p) = after_sb_1pri(ctx, v) {
                    net.after_sb_1pri = p;
                }
            }
            "after-sb-2pri" => {
                if let Some(p) = after_sb_2pri(ctx, v) {
                    net.after_sb_2pri = p;
                }
            }
            _ => apply_net_number(ctx, k, v, section, net),
        }
    }
}

fn apply_net_number(
    ctx: &mut Ctx,
    k: &toml::Spanned<std::borrow::Cow<'_, str>>,
    v: &Val<'_>,
    section: &str,
    net: &mut Net,
) {
    let key = k.get_ref().as_ref();
    let (slot, n) = match key {
        "timeout" => (
            &mut net.timeout_ms,
            ctx.int(key, v, 1, 600, "tenths of a second")
                .map(|n| n * 100),
        ),
        "connect-int" => (
            &mut net.connect_int_ms,
            ctx.int(key, v, 1, 120, "seconds").map(|n| n * 1000),
        ),
        "ping-int" => (
            &mut net.ping_int_ms,
            ctx.int(key, v, 1, 120, "seconds").map(|n| n * 1000),
        ),
        "ping-timeout" => (
            &mut net.ping_timeout_ms,
            ctx.int(key, v, 1, 300, "tenths of a second")
                .map(|n| n * 100),
        ),
        "ko-count" => (&mut net.ko_count, ctx.int(key, v, 0, 200, "timeouts")),
        "max-buffers" => (
            &mut net.max_buffers,
            ctx.int(key, v, 32, 131_072, "buffers"),
        ),
        "sndbuf-size" => (
            &mut net.sndbuf_size_bytes,
            ctx.scaled(key, v, 1, 0, 10 << 20, "bytes, 0 = auto"),
        ),
        _ => return ctx.unknown_key(k, section, NET_KEYS),
    };
    if let Some(n) = n.and_then(|n| u32::try_from(n).ok()) {
        *slot = n;
    }
}

fn protocol(ctx: &mut Ctx, v: &Val<'_>) -> Option<Protocol> {
    let s = ctx.string("protocol", v)?;
    match s {
        "A" => Some(Protocol::A),
        "B" => Some(Protocol::B),
        "C" => Some(Protocol::C),
        _ => {
            ctx.invalid(
                v,
                format!(
                    "protocol must be A, B or C, not \"{s}\" (A: async, B: memory-sync, C: sync)"
                ),
            );
            None
        }
    }
}

fn hash_alg(ctx: &mut Ctx, key: &str, v: &Val<'_>) -> Option<String> {
    ctx.choice(key, v, HASH_ALGS).map(str::to_owned)
}

fn after_sb_0pri(ctx: &mut Ctx, v: &Val<'_>, hosts: Option<&[String]>) -> Option<AfterSb0Pri> {
    let s = ctx.string("after-sb-0pri", v)?;
    if let Some(host) = s.strip_prefix("discard-node-") {
        if let Some(hosts) = hosts {
            if !hosts.iter().any(|h| h == host) {
                ctx.err(
                    v.span(),
                    ErrorKind::UnknownHost,
                    format!(
                        "`after-sb-0pri` = \"{s}\" names unknown host \"{host}\"; hosts are: {}",
                        hosts.join(", ")
                    ),
                );
                return None;
            }
        }
        return Some(AfterSb0Pri::DiscardNode(host.to_owned()));
    }
    Some(match ctx.choice("after-sb-0pri", v, AFTER_SB_0PRI)? {
        "disconnect" => AfterSb0Pri::Disconnect,
        "discard-younger-primary" => AfterSb0Pri::DiscardYoungerPrimary,
        "discard-older-primary" => AfterSb0Pri::DiscardOlderPrimary,
        "discard-zero-changes" => AfterSb0Pri::DiscardZeroChanges,
        "discard-least-changes" => AfterSb0Pri::DiscardLeastChanges,
        _ => {
            ctx.invalid(v, "`after-sb-0pri`: write discard-node-<host> with a host name, e.g. \"discard-node-alice\"".to_owned());
            return None;
        }
    })
}

fn after_sb_1pri(ctx: &mut Ctx, v: &Val<'_>) -> Option<AfterSb1Pri> {
    Some(match ctx.choice("after-sb-1pri", v, AFTER_SB_1PRI)? {
        "consensus" => AfterSb1Pri::Consensus,
        "violently-as0p" => AfterSb1Pri::ViolentlyAs0p,
        "discard-secondary" => AfterSb1Pri::DiscardSecondary,
        "call-pri-lost-after-sb" => AfterSb1Pri::CallPriLostAfterSb,
        _ => AfterSb1Pri::Disconnect,
    })
}

fn after_sb_2pri(ctx: &mut Ctx, v: &Val<'_>) -> Option<AfterSb2Pri> {
    Some(match ctx.choice("after-sb-2pri", v, AFTER_SB_2PRI)? {
        "violently-as0p" => AfterSb2Pri::ViolentlyAs0p,
        "call-pri-lost-after-sb" => AfterSb2Pri::CallPriLostAfterSb,
        _ => AfterSb2Pri::Disconnect,
    })
}

/// Applies a `[disk]` table onto `disk`.
pub(crate) fn apply_disk(ctx: &mut Ctx, table: &DeTable<'_>, section: &str, disk: &mut Disk) {
    const RATE_MAX_KIB: u64 = 4 << 20;
    for (k, v) in entries(table) {
        let key = k.get_ref().as_ref();
        let kib = "KiB/s";
        match key {
            "on-io-error" => {
                disk.on_io_error = match ctx.choice(
                    key,
                    v,
                    &["detach", "pass_on", "pass-on", "call-local-io-error"],
                ) {
                    Some("detach") => OnIoError::Detach,
                    Some("pass_on" | "pass-on") => OnIoError::PassOn,
                    Some(_) => OnIoError::CallLocalIoError,
                    None => disk.on_io_error,
                }
            }
            "disk-flushes" => disk.disk_flushes = ctx.boolean(key, v).unwrap_or(disk.disk_flushes),
            "md-flushes" => disk.md_flushes = ctx.boolean(key, v).unwrap_or(disk.md_flushes),
            "c-fill-target" => {
                if let Some(n) = ctx.scaled(key, v, 512, 0, 1 << 20, "512-byte sectors") {
                    disk.c_fill_target_sectors = n;
                }
            }
            _ => {
                let (slot, n) = match key {
                    "resync-rate" => (
                        &mut disk.resync_rate_kib,
                        ctx.scaled(key, v, 1024, 1, RATE_MAX_KIB, kib),
                    ),
                    "c-max-rate" => (
                        &mut disk.c_max_rate_kib,
                        ctx.scaled(key, v, 1024, 250, RATE_MAX_KIB, kib),
                    ),
                    "c-min-rate" => (
                        &mut disk.c_min_rate_kib,
                        ctx.scaled(key, v, 1024, 0, RATE_MAX_KIB, kib),
                    ),
                    "c-plan-ahead" => (
                        &mut disk.c_plan_ahead_ms,
                        ctx.int(key, v, 0, 300, "tenths of a second")
                            .map(|n| n * 100),
                    ),
                    "al-extents" => (
                        &mut disk.al_extents,
                        ctx.int(key, v, 67, 65_534, "4 MiB extents"),
                    ),
                    _ => {
                        ctx.unknown_key(k, section, DISK_KEYS);
                        continue;
                    }
                };
                if let Some(n) = n.and_then(|n| u32::try_from(n).ok()) {
                    *slot = n;
                }
            }
        }
    }
}

/// Applies an `[options]` table onto `options`.
pub(crate) fn apply_options(
    ctx: &mut Ctx,
    table: &DeTable<'_>,
    section: &str,
    options: &mut Options,
) {
    for (k, v) in entries(table) {
        let key = k.get_ref().as_ref();
        match key {
            "quorum" => {
                if let Some(q) = quorum(ctx, v) {
                    options.quorum = q;
                }
            }
            "on-no-quorum" => {
                options.on_no_quorum = match ctx.choice(key, v, &["suspend-io", "io-error"]) {
                    Some("io-error") => OnNoQuorum::IoError,
                    Some(_) => OnNoQuorum::SuspendIo,
                    None => options.on_no_quorum,
                }
            }
            "auto-promote" => {
                options.auto_promote = ctx.boolean(key, v).unwrap_or(options.auto_promote)
            }
            "cpu-mask" => {
                if let Some(text) = ctx.string(key, v) {
                    match CpuMask::parse(text) {
                        Ok(mask) => options.cpu_mask = mask,
                        Err(why) => ctx.invalid(v, format!("`cpu-mask` = \"{text}\" {why}")),
                    }
                }
            }
            _ => ctx.unknown_key(k, section, OPTIONS_KEYS),
        }
    }
}

fn quorum(ctx: &mut Ctx, v: &Val<'_>) -> Option<Quorum> {
    if let toml::de::DeValue::Integer(_) = v.get_ref() {
        let n = ctx.int("quorum", v, 1, 32, "nodes")?;
        return u8::try_from(n).ok().map(Quorum::Nodes);
    }
    match ctx.string("quorum", v)? {
        "off" => Some(Quorum::Off),
        "majority" => Some(Quorum::Majority),
        "all" => Some(Quorum::All),
        s => {
            ctx.invalid(v, format!("`quorum` = \"{s}\" is not allowed; allowed: \"off\", \"majority\", \"all\" or a number of nodes"));
            None
        }
    }
}

/// Applies a `[handlers]` table onto `handlers`.
pub(crate) fn apply_handlers(
    ctx: &mut Ctx,
    table: &DeTable<'_>,
    section: &str,
    handlers: &mut Handlers,
) {
    let allowed: Vec<&str> = Handlers::default()
        .entries()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    for (k, v) in entries(table) {
        let key = k.get_ref().as_ref();
        if handlers.slot_mut(key).is_none() {
            ctx.unknown_key(k, section, &allowed);
            continue;
        }
        let cmd = ctx.nonempty_string(key, v);
        if let (Some(slot), Some(cmd)) = (handlers.slot_mut(key), cmd) {
            *slot = Some(cmd);
        }
    }
}
