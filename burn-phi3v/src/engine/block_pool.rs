//! The KV-cache block allocator: a fixed number of blocks of `block_size` token slots, handed
//! out to sequences and taken back whole. It only counts; the tensors live in
//! [`PagedKvCache`](crate::model::PagedKvCache).

/// A pool of `num_blocks` blocks of `block_size` tokens.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    num_blocks: usize,
    /// Free block ids; the next one handed out is at the end.
    free: Vec<u32>,
    peak_used: usize,
}

impl BlockPool {
    /// `num_blocks` free blocks of `block_size` tokens (both ≥ 1, checked by the engine).
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
            peak_used: 0,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Token slots in the pool.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Blocks not held by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.num_blocks - self.free.len()
    }

    /// The most blocks ever held at once.
    pub fn peak_used_blocks(&self) -> usize {
        self.peak_used
    }

    /// Starts the peak over from the blocks held now.
    pub fn reset_peak(&mut self) {
        self.peak_used = self.used_blocks();
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Extends `table` to hold `tokens` tokens. All or nothing: returns false, leaving `table`
    /// as it was, when the pool has too few free blocks.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let missing = self.blocks_for(tokens).saturating_sub(table.len());
        if missing > self.free.len() {
            return false;
        }
        table.extend(self.free.drain(self.free.len() - missing..).rev());
        self.peak_used = self.peak_used.max(self.used_blocks());
        true
    }

    /// Returns every block of `table` to the pool.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.extend(table.drain(..).rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_all_or_nothing_and_releases() {
        let mut pool = BlockPool::new(4, 16);
        assert_eq!(pool.capacity_tokens(), 64);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(pool.grow(&mut a, 17)); // 2 blocks
        assert_eq!(a, [0, 1]);
        assert!(pool.grow(&mut a, 32)); // still 2
        assert_eq!(pool.used_blocks(), 2);
        assert!(!pool.grow(&mut b, 48), "3 blocks do not fit in 2");
        assert!(b.is_empty());
        assert!(pool.grow(&mut b, 20));
        assert_eq!(pool.free_blocks(), 0);
        pool.release(&mut a);
        assert!(a.is_empty());
        assert_eq!(pool.free_blocks(), 2);
        assert_eq!(pool.peak_used_blocks(), 4);
        let mut c = Vec::new();
        assert!(pool.grow(&mut c, 1));
        assert_eq!(c, [0], "freed blocks are reused first");
    }
}
