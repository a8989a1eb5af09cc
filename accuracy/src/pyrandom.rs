//! CPython's `random` module, as far as the MMMU evaluator uses it: `seed(int)`,
//! `getrandbits(k)`, `_randbelow(n)` and `choice(seq)`, bit-exact.
//!
//! The official evaluator (`eval_utils.py`) calls `random.seed(42)` at import and
//! `random.choice(all_choices)` for every multiple-choice response it cannot parse; the scores it
//! prints depend on that sequence. References: CPython `Modules/_randommodule.c`
//! (`init_genrand`, `init_by_array`, `random_seed`, `_random_Random_getrandbits_impl`) and
//! `Lib/random.py` (`_randbelow_with_getrandbits`, `choice`), 3.11.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// A Mersenne Twister (MT19937) seeded and consumed the way CPython's `random.Random` does it.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PyRandom {
    /// `random.Random(seed)` / `random.seed(seed)` for an integer seed.
    ///
    /// CPython seeds an int through `init_by_array` with the 32-bit limbs of `abs(seed)`, least
    /// significant first (`[0]` for zero).
    pub fn new(seed: i128) -> Self {
        let mut n = seed.unsigned_abs();
        let mut key = Vec::new();
        while n != 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        Self::from_key(&key)
    }

    /// `init_by_array(key)` of the reference MT19937 code.
    pub fn from_key(key: &[u32]) -> Self {
        let mut r = Self::init_genrand(19_650_218);
        let mt = &mut r.mt;
        let (mut i, mut j) = (1usize, 0usize);
        let mut k = N.max(key.len());
        while k > 0 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key.get(j).copied().unwrap_or(0))
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            k -= 1;
        }
        mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(s: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = s;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        PyRandom { mt, index: N }
    }

    /// `genrand_uint32()`: the next raw 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            let mag = |y: u32| if y & 1 == 0 { 0 } else { MATRIX_A };
            for kk in 0..N - M {
                let y = (self.mt[kk] & UPPER_MASK) | (self.mt[kk + 1] & LOWER_MASK);
                self.mt[kk] = self.mt[kk + M] ^ (y >> 1) ^ mag(y);
            }
            for kk in N - M..N - 1 {
                let y = (self.mt[kk] & UPPER_MASK) | (self.mt[kk + 1] & LOWER_MASK);
                self.mt[kk] = self.mt[kk + M - N] ^ (y >> 1) ^ mag(y);
            }
            let y = (self.mt[N - 1] & UPPER_MASK) | (self.mt[0] & LOWER_MASK);
            self.mt[N - 1] = self.mt[M - 1] ^ (y >> 1) ^ mag(y);
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `getrandbits(k)` for `k <= 64`. Words are drawn least significant first; a partial top
    /// word keeps the high bits of its draw, as CPython does.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports k <= 64");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32() >> (64 - k));
        lo | (hi << 32)
    }

    /// `_randbelow_with_getrandbits(n)`: rejection sampling on `n.bit_length()` bits.
    /// Returns 0 for `n == 0` without drawing (CPython would raise).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `choice(seq)`: `seq[_randbelow(len(seq))]`; `None` (and no draw) for an empty slice, where
    /// CPython raises `IndexError`.
    pub fn choice<'a, T>(&mut self, seq: &'a [T]) -> Option<&'a T> {
        if seq.is_empty() {
            return None;
        }
        let i = self.randbelow(seq.len() as u64) as usize;
        seq.get(i)
    }

    /// `random()`: a float in [0, 1) from 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the spec §6.5 (CPython 3.11), and more from CPython 3.11.7 run here.
    #[test]
    fn getrandbits_after_seed_42() {
        let mut r = PyRandom::new(42);
        let got: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, [2746317213, 478163327, 107420369]);
    }

    #[test]
    fn choices_after_seed_42() {
        let choices = |n: u8| -> String {
            let letters: Vec<char> = (0..n).map(|i| (b'A' + i) as char).collect();
            let mut r = PyRandom::new(42);
            (0..10).map(|_| *r.choice(&letters).unwrap()).collect()
        };
        assert_eq!(choices(4), "AACBBBAADA");
        assert_eq!(choices(5), "AACBBBAEAE");
        assert_eq!(choices(9), "BAEDDCBIBG");
    }

    #[test]
    fn other_seeds_and_draws() {
        let mut r = PyRandom::new(42);
        assert_eq!(r.random(), 0.6394267984578837);
        assert_eq!(r.getrandbits(64), 13679192365072849617);
        assert_eq!(r.getrandbits(40), 267469214295);
        assert_eq!(r.randbelow(1000), 228);

        let two = |seed: i128| {
            let mut r = PyRandom::new(seed);
            [r.getrandbits(32), r.getrandbits(32)]
        };
        assert_eq!(two((1 << 40) + 5), [2166296868, 2220160828]);
        assert_eq!(two(0), [3626764237, 1654615998]);
        // Negative seeds use abs().
        assert_eq!(two(-42), [2746317213, 478163327]);
    }

    #[test]
    fn empty_choice_draws_nothing() {
        let mut a = PyRandom::new(42);
        let b = PyRandom::new(42);
        let empty: [u8; 0] = [];
        assert!(a.choice(&empty).is_none());
        assert_eq!(a.next_u32(), b.clone().next_u32());
    }
}
