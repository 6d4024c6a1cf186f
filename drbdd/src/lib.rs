//! The drbdd daemon as a library: wiring of config, metadata, core, network, frontends
//! and the control socket. `drbdctl` reuses the control protocol types from here.
