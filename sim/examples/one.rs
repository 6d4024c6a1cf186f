//! Replays one seed with the trace: `cargo run -p drbdd-sim --example one -- <seed>`.
fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    eprintln!("{:?}", drbdd_sim::SimConfig::for_seed(seed));
    let out = drbdd_sim::run_seed(seed, true, drbdd_sim::Mutation::None);
    println!("{:?}", out.failure);
}
