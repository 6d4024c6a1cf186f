//! Where a resource's replication thread runs: DRBD's `cpu-mask`.
//!
//! DRBD binds the kernel threads of each resource to one CPU by default,
//! the resources spread over the CPUs (`drbd_calc_cpu_mask`), so a
//! replicated write's hand-overs between them stay on one CPU's caches;
//! `options { cpu-mask }` names the CPUs instead. drbdd does the same for
//! the resource actor (its receiver, sender and worker in one): by default
//! the CPU at position `minor % n` of the CPUs the process may use. The
//! ublk queue threads are not bound (they run where the application
//! submits; see `drbdd-ublk`).
//!
//! Owns: choosing the CPUs and binding the calling thread. Must never: bind
//! another thread, or fail a resource over it (a binding that cannot be
//! applied is logged and the thread runs unbound).

use drbdd_config::CpuMask;
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// The CPUs the resource's thread should run on: the configured mask
/// within `allowed`, or by default the one CPU `allowed[minor % n]`. Empty
/// when nothing fits (the mask names no CPU this process may use).
pub fn resource_cpus(mask: &CpuMask, allowed: &[usize], minor: u32) -> Vec<usize> {
    if allowed.is_empty() {
        return Vec::new();
    }
    if mask.is_empty() {
        let at = usize::try_from(minor).unwrap_or(0) % allowed.len();
        return vec![allowed[at]];
    }
    mask.cpus().filter(|c| allowed.contains(c)).collect()
}

/// The CPUs this process may use (the main thread's affinity, which
/// nothing binds).
pub fn process_cpus() -> Vec<usize> {
    let pid = rustix::process::getpid();
    match sched_getaffinity(Some(pid)) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|c| set.is_set(*c)).collect(),
        Err(e) => {
            tracing::warn!("sched_getaffinity: {e}; resource threads stay unbound");
            Vec::new()
        }
    }
}

/// Binds the calling thread to `cpus` (nothing when empty).
pub fn bind_current_thread(cpus: &[usize], resource: &str) {
    if cpus.is_empty() {
        return;
    }
    let mut set = CpuSet::new();
    for cpu in cpus.iter().filter(|c| **c < CpuSet::MAX_CPU) {
        set.set(*cpu);
    }
    match sched_setaffinity(None, &set) {
        Ok(()) => tracing::info!(resource, ?cpus, "resource thread bound (cpu-mask)"),
        Err(e) => tracing::warn!(resource, ?cpus, "resource thread stays unbound: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spreads_resources_by_minor_over_the_allowed_cpus() {
        let allowed = [0, 1, 4, 5];
        let none = CpuMask::default();
        assert_eq!(resource_cpus(&none, &allowed, 0), [0]);
        assert_eq!(resource_cpus(&none, &allowed, 1), [1]);
        assert_eq!(resource_cpus(&none, &allowed, 2), [4]);
        assert_eq!(resource_cpus(&none, &allowed, 7), [5]);
        assert!(resource_cpus(&none, &[], 3).is_empty());
    }

    #[test]
    fn a_configured_mask_is_kept_within_the_allowed_cpus() {
        let mask = CpuMask::parse("13").unwrap(); // CPUs 0, 1, 4
        assert_eq!(resource_cpus(&mask, &[0, 1, 2, 3, 4], 9), [0, 1, 4]);
        assert_eq!(resource_cpus(&mask, &[1, 2], 0), [1]);
        assert!(resource_cpus(&mask, &[2, 3], 0).is_empty());
    }

    #[test]
    fn binding_this_thread_is_visible_in_its_affinity() {
        let allowed = process_cpus();
        assert!(!allowed.is_empty(), "this process may run somewhere");
        let cpu = *allowed.last().unwrap();
        std::thread::spawn(move || {
            bind_current_thread(&[cpu], "test");
            let set = sched_getaffinity(None).unwrap();
            let bound: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|c| set.is_set(*c)).collect();
            assert_eq!(bound, [cpu]);
            // The process (main thread) keeps every CPU.
            assert_eq!(process_cpus(), allowed);
        })
        .join()
        .unwrap();
    }
}
