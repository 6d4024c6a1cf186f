//! Generation-identifier presentation, in the shape DRBD users know from
//! `drbdadm get-gi` / `show-gi`. Owns: formatting only. Must never: change UUIDs
//! (generation changes are the replication core's decision).

use crate::superblock::Superblock;

/// A UUID as 16 upper-case hex digits.
pub fn format_uuid(uuid: u64) -> String {
    format!("{uuid:016X}")
}

/// The one-line GI tuple for peer `slot`:
/// `CURRENT:BITMAP:HISTORY1:HISTORY2:consistent:was-up-to-date:primary:crashed-primary:outdated:peer-outdated`.
fn gi_line(sb: &Superblock, slot: usize) -> String {
    let peer = sb.peers.get(slot).copied().unwrap_or_default();
    let f = sb.flags;
    let bits = [
        f.consistent,
        f.was_up_to_date,
        f.primary,
        f.crashed_primary,
        f.outdated,
        peer.flags.outdated,
    ];
    let flags: Vec<String> = bits.iter().map(|b| u8::from(*b).to_string()).collect();
    format!(
        "{}:{}:{}:{}:{}",
        format_uuid(sb.current_uuid),
        format_uuid(peer.bitmap_uuid),
        format_uuid(sb.history_uuids[0]),
        format_uuid(sb.history_uuids[1]),
        flags.join(":")
    )
}

/// The GI tuple for peer `slot` with a legend, like `drbdadm show-gi`.
pub fn show_gi(sb: &Superblock, slot: usize) -> String {
    let peer = match sb.peers.get(slot).and_then(|p| p.node_id) {
        Some(id) => format!("peer slot {slot} (node-id {id})"),
        None => format!("peer slot {slot} (unused)"),
    };
    let mut out = String::new();
    out.push_str(&format!("{peer}\n"));
    out.push_str("+--<  current data generation UUID  >-\n");
    out.push_str("|                +--<  bitmap's base data generation UUID  >-\n");
    out.push_str("|                |                +--<  younger history UUID  >-\n");
    out.push_str(
        "|                |                |                +--<  older history UUID  >-\n",
    );
    out.push_str("V                V                V                V\n");
    out.push_str(&gi_line(sb, slot));
    out.push('\n');
    out.push_str(
        "flags: consistent:was-up-to-date:primary:crashed-primary:outdated:peer-outdated\n",
    );
    out
}

/// One `get-gi` line per peer slot that has a node.
pub fn show_gi_all(sb: &Superblock) -> String {
    sb.peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            p.node_id
                .map(|id| format!("node-id {id}: {}\n", gi_line(sb, i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::{MdFlags, PeerSlot};

    #[test]
    fn gi_line_uses_16_hex_digits() {
        let mut peers = vec![PeerSlot::default(); 2];
        peers[0].node_id = Some(1);
        peers[0].bitmap_uuid = 0xAB;
        let sb = Superblock {
            node_id: 0,
            max_peers: 2,
            data_size_bytes: 1 << 20,
            al_extents: 7,
            flags: MdFlags {
                consistent: true,
                ..Default::default()
            },
            current_uuid: 0x51CC_8C0B_06D6_F75C,
            history_uuids: std::array::from_fn(|i| u64::from(i == 0)),
            peers,
        };
        assert_eq!(
            show_gi_all(&sb),
            "node-id 1: 51CC8C0B06D6F75C:00000000000000AB:0000000000000001:0000000000000000:1:0:0:0:0:0\n"
        );
        assert!(show_gi(&sb, 1).contains("(unused)"));
    }
}
