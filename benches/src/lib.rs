//! drbdd benchmark runner: fio on file-backed targets (raw O_DIRECT file,
//! qemu-nbd, nbdkit, drbdd standalone and loopback pairs), a resync bench, a
//! callgrind CPU-cost micro-benchmark and the thread switches per I/O of the
//! drbdd daemons, reported as medians with ratios to the raw-file baseline.
//!
//! Owns: everything under benches/. Must never: assert on timings; a row that
//! cannot run is skipped with a printed reason.

pub mod cpu;
pub mod drbdd;
pub mod fio;
pub mod report;
pub mod resync;
pub mod switches;
pub mod sys;
pub mod targets;
pub mod vm;
