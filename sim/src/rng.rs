//! The simulator's only source of randomness: splitmix64 seeded with the run's
//! seed, so one `u64` decides a whole schedule.
//!
//! Owns: drawing numbers. Must never: read the clock, the environment or any
//! other entropy (that would make a seed unreplayable).

/// splitmix64 (Steele, Lea, Flood): tiny, fast, and good enough to pick actions.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// Uniform in `0..n` as an index.
    pub fn index(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).expect("usize fits u64");
        usize::try_from(self.below(n64)).expect("below n fits usize")
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < u64::from(permille)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// A non-zero random UUID different from the "just created" marker.
    pub fn uuid(&mut self) -> u64 {
        loop {
            let v = self.next_u64() & !0xFF;
            if v != 0 {
                return v;
            }
        }
    }
}
