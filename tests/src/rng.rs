//! A small seeded generator (xorshift64*) for the randomized tests (engine stress, load), so
//! they need no dependency and replay exactly from their seed.

/// xorshift64* over a non-zero seed.
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// Uniform in `[0, 1)`, 24 bits.
    pub fn unit(&mut self) -> f32 {
        self.below(1 << 24) as f32 / (1 << 24) as f32
    }
}
