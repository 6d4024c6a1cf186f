//! Counters of what a run (or a batch of runs) exercised, printed as a
//! summary table so a reader can see the faults really happened.
//!
//! Owns: counting. Must never: influence the schedule.

use std::fmt;

macro_rules! counters {
    ($($name:ident),+ $(,)?) => {
        /// How often each fault, admin action and interesting path occurred.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Stats { $(pub $name: u64),+ }

        impl Stats {
            /// Adds another run's counters.
            pub fn add(&mut self, other: &Stats) { $(self.$name += other.$name;)+ }

            fn rows(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),+]
            }
        }
    };
}

counters!(
    schedules,
    events,
    packets,
    delayed_packets,
    reordered_across_connections,
    connection_drops,
    partitions,
    partitions_healed,
    crashes,
    restarts,
    lost_unflushed_writes,
    torn_md_writes,
    md_write_failures,
    eio_peer_writes,
    eio_resync_reads,
    eio_app_reads,
    slow_disk_periods,
    promotes,
    promotes_forced,
    demotes,
    admin_disconnects,
    admin_connects,
    invalidates,
    unrelated_data_refusals,
    md_recreated_for_unrelated_data,
    split_brains_detected,
    split_brain_resolutions,
    resyncs_finished,
    handshakes,
    writes_acked,
    fua_writes_acked,
    flushes_acked,
    reads_checked,
);

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<30} {:>12}", "counter", "total")?;
        for (name, value) in self.rows() {
            writeln!(f, "{name:<30} {value:>12}")?;
        }
        Ok(())
    }
}
