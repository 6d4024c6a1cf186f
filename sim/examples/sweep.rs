//! Runs a range of seeds and prints failures: `cargo run -p drbdd-sim --example sweep -- 0 500`.
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (lo, hi) = (
        args.first().copied().unwrap_or(0),
        args.get(1).copied().unwrap_or(200),
    );
    let r = drbdd_sim::run_batch(lo..hi, drbdd_sim::Mutation::None);
    let mut kinds = std::collections::BTreeMap::new();
    for (seed, f) in &r.failures {
        let n = drbdd_sim::SimConfig::for_seed(*seed).nodes;
        let k: String = format!(
            "N={n} {}",
            f.split(':')
                .nth(1)
                .unwrap_or(f)
                .chars()
                .take(60)
                .collect::<String>()
        );
        kinds.entry(k).or_insert_with(Vec::new).push(*seed);
    }
    for (k, seeds) in &kinds {
        println!(
            "{} x {k} e.g. seeds {:?}",
            seeds.len(),
            &seeds[..seeds.len().min(5)]
        );
    }
    println!(
        "{} failures / {} schedules, {:.0}/s\n{}",
        r.failures.len(),
        hi - lo,
        r.schedules_per_second(),
        r.stats
    );
}
