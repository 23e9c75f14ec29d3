//! The harness's one pseudo-random generator (xorshift64*): the data of the lower-layer files
//! and the tars, so that nothing can compress or deduplicate it. Fixed seeds: the same bytes on
//! every run and every system.

/// xorshift64* (Vigna): small, fast, and good enough for incompressible test data.
pub struct XorShift(u64);

impl XorShift {
    /// `seed` must not be zero.
    pub const fn new(seed: u64) -> XorShift {
        XorShift(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fill `buf` with the next words, little-endian (a short tail takes a word's first bytes).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for w in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            w.copy_from_slice(&x[..w.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sequence_and_fill() {
        let mut r = XorShift::new(1);
        let first = r.next_u64();
        assert_eq!(first, 5_180_492_295_206_395_165);
        let mut buf = [0u8; 11];
        let mut r = XorShift::new(1);
        r.fill(&mut buf);
        assert_eq!(buf[..8], first.to_le_bytes());
    }
}
