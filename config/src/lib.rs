//! Resource configuration: TOML resource files mirroring DRBD's `resource`/`on`/`net`/`disk`
//! sections, parsed and validated with file:line:column errors.
//!
//! Owns: the config data model and its validation. Must never: open sockets or devices.
#![forbid(unsafe_code)]
