//! Deterministic simulation of a whole drbdd cluster: the real replication core and
//! metadata logic on a simulated clock, network and disks, driven by one seed.
#![forbid(unsafe_code)]
