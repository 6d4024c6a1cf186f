//! Resync bench: full initial sync throughput of a loopback pair against a raw
//! O_DIRECT copy of the same file (`dd iflag=direct oflag=direct`), and the time
//! and bytes on the wire to resync 10% dirty 4 KiB blocks after a disconnect,
//! compared with the dirty byte count.
//!
//! Owns: the resync section of the results. Must never: judge the numbers.
//! Bytes on the wire are TCP payload bytes (`ss -ti` bytes_sent summed over the
//! established sockets on the pair's ports, both directions).

use crate::drbdd::{self, DrbddPair, RESOURCE};
use crate::fio::nbd_unix_uri;
use crate::sys;
use crate::targets::{SetupEnv, EXPORT_NAME};
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Results of the resync section; each part has numbers or a skip reason.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ResyncReport {
    pub device_bytes: u64,
    /// Raw O_DIRECT copy of the backing file.
    pub raw_copy_mb_per_s: Option<f64>,
    pub raw_copy_skipped: Option<String>,
    /// Initial full sync of a protocol C pair.
    pub full_sync_s: Option<f64>,
    pub full_sync_mb_per_s: Option<f64>,
    /// Partial resync after writing 10% of the blocks while disconnected.
    pub dirty_bytes: Option<u64>,
    pub resync_s: Option<f64>,
    pub resync_wire_bytes: Option<u64>,
    /// wire bytes / dirty bytes.
    pub resync_wire_ratio: Option<f64>,
    pub drbdd_skipped: Option<String>,
}

fn secs_to_mb_per_s(bytes: u64, d: Duration) -> f64 {
    let b = bytes as f64;
    b / 1e6 / d.as_secs_f64().max(1e-9)
}

/// Times `dd` copying `src` to a new file with O_DIRECT on both sides.
pub fn raw_copy(src: &Path, dst: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sys::run_checked_within(
        Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dst.display()))
            .args([
                "bs=1M",
                "iflag=direct",
                "oflag=direct",
                "conv=fsync",
                "status=none",
            ]),
        Duration::from_secs(600),
    )?;
    let took = started.elapsed();
    let _ = std::fs::remove_file(dst);
    Ok(took)
}

/// Sums `bytes_sent:` over every socket in `ss -tin` output.
pub fn parse_ss_bytes_sent(text: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|t| t.strip_prefix("bytes_sent:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// TCP payload bytes sent on established sockets using any of `ports`.
pub fn wire_bytes(ports: &[u16]) -> anyhow::Result<u64> {
    let filter: Vec<String> = ports
        .iter()
        .map(|p| format!("sport = :{p} or dport = :{p}"))
        .collect();
    let out = sys::run_checked(
        Command::new("ss")
            .args(["-tinH", "state", "established"])
            .arg(format!("( {} )", filter.join(" or "))),
    )?;
    Ok(parse_ss_bytes_sent(&out))
}

/// Runs the resync section. Never fails: missing pieces become skip reasons.
pub fn run(env: &SetupEnv) -> ResyncReport {
    let mut rep = ResyncReport {
        device_bytes: env.size_bytes,
        ..ResyncReport::default()
    };
    let src = crate::targets::raw_file(env);
    match raw_copy(&src, &env.work_dir.join("raw-copy.img")) {
        Ok(d) => rep.raw_copy_mb_per_s = Some(secs_to_mb_per_s(env.size_bytes, d)),
        Err(e) => rep.raw_copy_skipped = Some(format!("{e:#}")),
    }
    let pair = match DrbddPair::start(env, 'C', "resync-pair-c") {
        Ok(p) => p,
        Err(why) => {
            rep.drbdd_skipped = Some(why);
            return rep;
        }
    };
    rep.full_sync_s = Some(pair.full_sync.as_secs_f64());
    rep.full_sync_mb_per_s = Some(secs_to_mb_per_s(env.size_bytes, pair.full_sync));
    if let Err(e) = partial_resync(env, &pair, &mut rep) {
        rep.drbdd_skipped = Some(format!("partial resync: {e:#}"));
    }
    rep
}

/// Takes bob down (alice keeps tracking what bob misses), dirties 10% of the
/// 4 KiB blocks on alice, brings bob up again and waits for it to be UpToDate.
fn partial_resync(env: &SetupEnv, pair: &DrbddPair, rep: &mut ResyncReport) -> anyhow::Result<()> {
    pair.bob.ctl(&["down", RESOURCE])?;
    let dirty_bytes = (env.size_bytes / 10) / 4096 * 4096;
    let uri = nbd_unix_uri(&pair.primary_nbd_socket(), EXPORT_NAME);
    sys::run_checked_within(
        Command::new("fio").args([
            "--name=dirty-10pct",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            &format!("--io_size={dirty_bytes}"),
            "--output-format=json",
        ]),
        Duration::from_secs(600),
    )?;
    let ports: Vec<u16> = pair_ports(pair);
    let started = Instant::now();
    pair.bob.ctl(&["up", RESOURCE])?;
    drbdd::wait_peer_up_to_date(
        &pair.alice,
        "bob",
        Duration::from_secs(env.drbdd.sync_timeout_s),
    )?;
    let took = started.elapsed();
    let wire = wire_bytes(&ports)?;
    rep.dirty_bytes = Some(dirty_bytes);
    rep.resync_s = Some(took.as_secs_f64());
    rep.resync_wire_bytes = Some(wire);
    let ratio = wire as f64 / dirty_bytes.max(1) as f64;
    rep.resync_wire_ratio = Some(ratio);
    Ok(())
}

/// The replication ports of both nodes, read back from alice's resource file.
fn pair_ports(pair: &DrbddPair) -> Vec<u16> {
    let path = pair
        .alice
        .config_dir
        .join("resources.d")
        .join(format!("{RESOURCE}.toml"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("address = \""))
        .filter_map(|a| a.trim_end_matches('"').parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .collect()
}

/// Markdown lines for the resync section.
pub fn markdown(rep: &ResyncReport) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let mut s = format!("Resync ({} MiB device)\n\n", rep.device_bytes >> 20);
    s.push_str(&format!(
        "- raw O_DIRECT copy (dd bs=1M): {} MB/s{}\n",
        f(rep.raw_copy_mb_per_s),
        rep.raw_copy_skipped
            .as_ref()
            .map_or(String::new(), |w| format!(" (SKIPPED: {w})"))
    ));
    if let Some(why) = &rep.drbdd_skipped {
        s.push_str(&format!("- drbdd full sync / 10% resync: SKIPPED: {why}\n"));
    }
    if rep.full_sync_s.is_some() {
        s.push_str(&format!(
            "- drbdd full sync: {} s, {} MB/s\n",
            f(rep.full_sync_s),
            f(rep.full_sync_mb_per_s)
        ));
    }
    if let (Some(d), Some(w)) = (rep.dirty_bytes, rep.resync_wire_bytes) {
        s.push_str(&format!(
            "- drbdd resync of 10% dirty: {d} dirty bytes, {} s, {w} bytes on the wire ({}x dirty)\n",
            f(rep.resync_s),
            f(rep.resync_wire_ratio)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_sample_sums_bytes_sent_of_both_ends() {
        let text = include_str!("../tests/data/ss-tinH-loopback-pair.txt");
        assert_eq!(parse_ss_bytes_sent(text), 100_010);
        assert_eq!(parse_ss_bytes_sent(""), 0);
    }

    #[test]
    fn throughput_is_bytes_over_seconds_in_mb() {
        assert!((secs_to_mb_per_s(200_000_000, Duration::from_secs(2)) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn skipped_drbdd_part_is_shown_with_its_reason() {
        let rep = ResyncReport {
            device_bytes: 64 << 20,
            raw_copy_mb_per_s: Some(512.0),
            drbdd_skipped: Some("target/release/drbdd does not exist".into()),
            ..ResyncReport::default()
        };
        let md = markdown(&rep);
        assert!(
            md.contains("raw O_DIRECT copy (dd bs=1M): 512.00 MB/s"),
            "{md}"
        );
        assert!(
            md.contains("SKIPPED: target/release/drbdd does not exist"),
            "{md}"
        );
    }
}
