//! ublk frontend: serves `/dev/ublkb<minor>` from a `BlockTarget` through libublk.
