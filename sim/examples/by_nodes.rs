//! Counters per cluster size: `cargo run -p drbdd-sim --example by_nodes -- 0 2000`.
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (lo, hi) = (
        args.first().copied().unwrap_or(0),
        args.get(1).copied().unwrap_or(500),
    );
    let mut per = std::collections::BTreeMap::new();
    for seed in lo..hi {
        let n = drbdd_sim::SimConfig::for_seed(seed).nodes;
        let out = drbdd_sim::run_seed(seed, false, drbdd_sim::Mutation::None);
        per.entry(n)
            .or_insert_with(drbdd_sim::Stats::default)
            .add(&out.stats);
    }
    for (n, s) in per {
        println!(
            "N={n}: schedules {} unrelated {} create-md {} split brains {} invalidates {}",
            s.schedules,
            s.unrelated_data_refusals,
            s.md_recreated_for_unrelated_data,
            s.split_brains_detected,
            s.invalidates
        );
    }
}
