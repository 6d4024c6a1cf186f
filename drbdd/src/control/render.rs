//! Text layouts users know from DRBD 9: `drbdadm status` (user's guide 11.2.4)
//! and `drbdsetup events2` (11.2.5).
//!
//! Owns: formatting only, from [`ResourceStatus`] snapshots. Must never: query
//! or change state.

use super::proto::{PeerStatus, ResourceStatus, ResyncProgress};
use drbdd_replication::state::{ConnState, ReplState};
use std::fmt::Write as _;

/// `drbdadm status` text for one resource, newline-terminated.
pub fn status_text(st: &ResourceStatus, verbose: bool, statistics: bool) -> String {
    let mut out = String::new();
    if verbose {
        let _ = writeln!(
            out,
            "{} node-id:{} role:{} suspended:{}",
            st.name,
            st.node_id,
            st.role,
            yes_no(st.suspended)
        );
        let _ = writeln!(out, "  volume:0 minor:{} disk:{}", st.minor, st.disk);
    } else {
        let _ = writeln!(out, "{} role:{}", st.name, st.role);
        let _ = writeln!(out, "  disk:{}", st.disk);
    }
    if statistics {
        let s = &st.stats;
        let _ = writeln!(
            out,
            "      size:{} read:{} written:{} al-writes:{} bm-writes:{} upper-pending:{} lower-pending:{}",
            st.size_bytes / 1024,
            s.read_kib,
            s.written_kib,
            s.al_writes,
            s.bm_writes,
            s.upper_pending,
            s.lower_pending
        );
    }
    for peer in &st.peers {
        peer_text(&mut out, peer, verbose, statistics);
    }
    out
}

fn peer_text(out: &mut String, p: &PeerStatus, verbose: bool, statistics: bool) {
    let connected = p.connection == ConnState::Connected;
    if verbose {
        let _ = writeln!(out, "  {} node-id:{} peer:{}", p.name, p.node_id, p.address);
        let _ = writeln!(out, "    connection:{} role:{}", p.connection, p.role);
        if connected {
            let _ = writeln!(
                out,
                "    volume:0 replication:{} peer-disk:{}{}",
                p.replication,
                p.peer_disk,
                done_text(p)
            );
        }
    } else if connected {
        let _ = writeln!(out, "  {} role:{}", p.name, p.role);
        if p.replication == ReplState::Established {
            let _ = writeln!(out, "    peer-disk:{}", p.peer_disk);
        } else {
            let _ = writeln!(
                out,
                "    replication:{} peer-disk:{}{}",
                p.replication,
                p.peer_disk,
                done_text(p)
            );
        }
    } else {
        let _ = writeln!(out, "  {} connection:{}", p.name, p.connection);
    }
    if statistics && connected {
        let _ = writeln!(
            out,
            "      received:{} sent:{} out-of-sync:{}",
            p.received_kib, p.sent_kib, p.out_of_sync_kib
        );
    }
    if verbose || statistics {
        if let Some(r) = &p.resync {
            let _ = writeln!(out, "      {}", resync_text(r));
        }
    }
}

/// `resync: done:… total:… rate:… eta:…` (KiB, KiB/s, seconds).
fn resync_text(r: &ResyncProgress) -> String {
    let eta = r.eta_s.map_or_else(
        || "unknown".to_owned(),
        |s| format!("{}:{:02}", s / 60, s % 60),
    );
    format!(
        "resync: done:{} total:{} rate:{}K/s eta:{eta}",
        r.done_kib, r.total_kib, r.rate_kib_per_s
    )
}

/// ` done:12.3` while a resync runs (DRBD prints the percentage done).
fn done_text(p: &PeerStatus) -> String {
    p.done_tenths_percent
        .map(|t| format!(" done:{}.{}", t / 10, t % 10))
        .unwrap_or_default()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The `resource` object of events2 (without the leading verb).
fn resource_obj(st: &ResourceStatus) -> String {
    format!(
        "resource name:{} role:{} suspended:{}",
        st.name,
        st.role,
        yes_no(st.suspended)
    )
}

fn device_obj(st: &ResourceStatus, statistics: bool) -> String {
    let mut s = format!(
        "device name:{} volume:0 minor:{} disk:{} client:no",
        st.name, st.minor, st.disk
    );
    if statistics {
        let _ = write!(
            s,
            " size:{} read:{} written:{} al-writes:{} bm-writes:{} upper-pending:{} lower-pending:{}",
            st.size_bytes / 1024,
            st.stats.read_kib,
            st.stats.written_kib,
            st.stats.al_writes,
            st.stats.bm_writes,
            st.stats.upper_pending,
            st.stats.lower_pending
        );
    }
    s
}

fn connection_obj(st: &ResourceStatus, p: &PeerStatus) -> String {
    format!(
        "connection name:{} peer-node-id:{} conn-name:{} connection:{} role:{}",
        st.name, p.node_id, p.name, p.connection, p.role
    )
}

fn peer_device_obj(st: &ResourceStatus, p: &PeerStatus, statistics: bool) -> String {
    let mut s = format!(
        "peer-device name:{} peer-node-id:{} conn-name:{} volume:0 replication:{} peer-disk:{} resync-suspended:no",
        st.name, p.node_id, p.name, p.replication, p.peer_disk
    );
    if statistics {
        let _ = write!(
            s,
            " received:{} sent:{} out-of-sync:{}",
            p.received_kib, p.sent_kib, p.out_of_sync_kib
        );
    }
    s
}

/// Every object of a resource, in events2 order: resource, connections,
/// device, peer devices.
fn objects(st: &ResourceStatus, statistics: bool) -> Vec<String> {
    let mut v = vec![resource_obj(st)];
    v.extend(st.peers.iter().map(|p| connection_obj(st, p)));
    v.push(device_obj(st, statistics));
    v.extend(st.peers.iter().map(|p| peer_device_obj(st, p, statistics)));
    v
}

/// The initial `exists ...` lines for one resource (the caller adds `exists -`).
pub fn events_exists(st: &ResourceStatus, statistics: bool) -> Vec<String> {
    objects(st, statistics)
        .into_iter()
        .map(|o| format!("exists {o}"))
        .collect()
}

/// `create ...` lines for a resource that just came up.
pub fn events_create(st: &ResourceStatus) -> Vec<String> {
    objects(st, false)
        .into_iter()
        .map(|o| format!("create {o}"))
        .collect()
}

/// `destroy ...` lines for a resource taken down (objects in reverse order).
pub fn events_destroy(st: &ResourceStatus) -> Vec<String> {
    let mut v: Vec<String> = objects(st, false)
        .into_iter()
        .map(|o| format!("destroy {o}"))
        .collect();
    v.reverse();
    v
}

/// `change ...` lines for every object that differs between two snapshots of
/// the same resource.
pub fn events_change(old: &ResourceStatus, new: &ResourceStatus) -> Vec<String> {
    let before = objects(old, false);
    objects(new, false)
        .into_iter()
        .enumerate()
        .filter(|(i, o)| before.get(*i) != Some(o))
        .map(|(_, o)| format!("change {o}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::DeviceStats;
    use drbdd_replication::state::{DiskState, ReplState, Role};

    fn sample() -> ResourceStatus {
        ResourceStatus {
            name: "r0".into(),
            node_id: 0,
            role: Role::Secondary,
            suspended: false,
            minor: 0,
            disk: DiskState::Inconsistent,
            size_bytes: 1 << 20,
            open_clients: Vec::new(),
            current_uuid: None,
            stats: DeviceStats::default(),
            peers: vec![PeerStatus {
                name: "bob".into(),
                node_id: 1,
                address: "127.0.0.2:7789".into(),
                connection: ConnState::StandAlone,
                role: Role::Unknown,
                peer_disk: DiskState::DUnknown,
                replication: ReplState::Off,
                out_of_sync_kib: 0,
                received_kib: 0,
                sent_kib: 0,
                done_tenths_percent: None,
                resync_sent_kib: 0,
                resync_received_kib: 0,
                resync: None,
            }],
        }
    }

    #[test]
    fn status_matches_drbd9_layout() {
        assert_eq!(
            status_text(&sample(), false, false),
            "r0 role:Secondary\n  disk:Inconsistent\n  bob connection:StandAlone\n"
        );
        let mut connected = sample();
        connected.peers[0].connection = ConnState::Connected;
        connected.peers[0].role = Role::Secondary;
        connected.peers[0].peer_disk = DiskState::UpToDate;
        connected.peers[0].replication = ReplState::Established;
        assert_eq!(
            status_text(&connected, false, false),
            "r0 role:Secondary\n  disk:Inconsistent\n  bob role:Secondary\n    peer-disk:UpToDate\n"
        );
    }

    #[test]
    fn status_during_resync_shows_replication_and_done_like_drbd9() {
        let mut st = sample();
        st.role = Role::Primary;
        st.disk = DiskState::UpToDate;
        let p = &mut st.peers[0];
        p.connection = ConnState::Connected;
        p.role = Role::Secondary;
        p.peer_disk = DiskState::Inconsistent;
        p.replication = ReplState::SyncSource;
        p.done_tenths_percent = Some(456);
        assert_eq!(
            status_text(&st, false, false),
            "r0 role:Primary\n  disk:UpToDate\n  bob role:Secondary\n    replication:SyncSource peer-disk:Inconsistent done:45.6\n"
        );
        assert!(status_text(&st, true, false)
            .contains("    volume:0 replication:SyncSource peer-disk:Inconsistent done:45.6\n"));
        st.peers[0].resync = Some(ResyncProgress {
            total_kib: 1000,
            done_kib: 456,
            rate_kib_per_s: 20,
            eta_s: Some(125),
        });
        assert!(status_text(&st, true, false)
            .contains("      resync: done:456 total:1000 rate:20K/s eta:2:05\n"));
        assert!(!status_text(&st, false, false).contains("resync:"));
    }

    #[test]
    fn events_change_lists_only_changed_objects() {
        let old = sample();
        let mut new = sample();
        new.role = Role::Primary;
        assert_eq!(
            events_change(&old, &new),
            vec!["change resource name:r0 role:Primary suspended:no".to_string()]
        );
        let exists = events_exists(&old, false);
        assert_eq!(
            exists[0],
            "exists resource name:r0 role:Secondary suspended:no"
        );
        assert!(exists[1].starts_with(
            "exists connection name:r0 peer-node-id:1 conn-name:bob connection:StandAlone"
        ));
        assert!(exists[2].starts_with("exists device name:r0 volume:0 minor:0 disk:Inconsistent"));
        assert!(exists[3].starts_with("exists peer-device name:r0 peer-node-id:1"));
    }
}
