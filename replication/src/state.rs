//! The state vocabulary of a resource, with DRBD's names: roles, disk states,
//! connection states and replication states (user's guide 11.2.6–11.2.9).
//!
//! Owns: the enums and their display names. Must never: decide transitions
//! (that is the job of the resource state machine).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name DRBD prints for this state.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses DRBD's name (case-insensitive).
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(text))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// The role of a resource on a node.
    Role { Primary => "Primary", Secondary => "Secondary", Unknown => "Unknown" }
);

named_enum!(
    /// The state of a node's local (or a peer's) backing device.
    DiskState {
        Diskless => "Diskless",
        Attaching => "Attaching",
        Detaching => "Detaching",
        Failed => "Failed",
        Negotiating => "Negotiating",
        Inconsistent => "Inconsistent",
        Outdated => "Outdated",
        DUnknown => "DUnknown",
        Consistent => "Consistent",
        UpToDate => "UpToDate",
    }
);

named_enum!(
    /// The state of the connection to one peer.
    ConnState {
        StandAlone => "StandAlone",
        Disconnecting => "Disconnecting",
        Unconnected => "Unconnected",
        Timeout => "Timeout",
        BrokenPipe => "BrokenPipe",
        NetworkFailure => "NetworkFailure",
        ProtocolError => "ProtocolError",
        TearDown => "TearDown",
        Connecting => "Connecting",
        Connected => "Connected",
    }
);

named_enum!(
    /// The replication state towards one connected peer.
    ReplState {
        Off => "Off",
        Established => "Established",
        StartingSyncS => "StartingSyncS",
        StartingSyncT => "StartingSyncT",
        WFBitMapS => "WFBitMapS",
        WFBitMapT => "WFBitMapT",
        WFSyncUUID => "WFSyncUUID",
        SyncSource => "SyncSource",
        SyncTarget => "SyncTarget",
        VerifyS => "VerifyS",
        VerifyT => "VerifyT",
        PausedSyncS => "PausedSyncS",
        PausedSyncT => "PausedSyncT",
        Ahead => "Ahead",
        Behind => "Behind",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DiskState::ALL {
            assert_eq!(DiskState::parse(d.as_str()), Some(*d));
        }
        assert_eq!(ReplState::parse("synctarget"), Some(ReplState::SyncTarget));
        assert_eq!(Role::parse("Tertiary"), None);
    }
}
