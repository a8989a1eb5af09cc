//! The KV-cache block allocator: a fixed number of blocks of `block_size` token slots, handed
//! out to sequences and taken back. It only counts; the tensors live in
//! [`PagedKvCache`](crate::model::PagedKvCache).
//!
//! **Prefix caching** (vLLM's automatic prefix caching): a full block whose keys and values
//! are computed can be registered under the hash of everything before and in it
//! ([`BlockPool::register`]); a sequence whose prompt starts the same way takes those blocks
//! instead of computing them ([`BlockPool::take_cached`]). Blocks are reference-counted: a
//! block nobody holds keeps its contents and its hash until the pool needs it for something
//! else (least recently released first), so a prefix stays reusable after its requests end.
//! Registered blocks are never written again: a sequence only writes positions past its
//! cached prefix, and the engine gives a sequence whose keys must be recomputed new blocks.

use std::collections::{BTreeMap, HashMap};

use super::prefix::BlockHash;

/// A pool of `num_blocks` blocks of `block_size` tokens.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    num_blocks: usize,
    /// Blocks nobody holds and no hash names; the next one handed out is at the end.
    free: Vec<u32>,
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// The hash each block is registered under.
    hash_of: Vec<Option<BlockHash>>,
    /// Registered blocks by hash.
    by_hash: HashMap<BlockHash, u32>,
    /// Registered blocks nobody holds, by when they were released (oldest first): the ones
    /// handed out when `free` is empty.
    evictable: BTreeMap<u64, u32>,
    /// Each evictable block's key in `evictable`.
    released_at: Vec<u64>,
    clock: u64,
    peak_used: usize,
}

impl BlockPool {
    /// `num_blocks` free blocks of `block_size` tokens (both ≥ 1, checked by the engine).
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            by_hash: HashMap::new(),
            evictable: BTreeMap::new(),
            released_at: vec![0; num_blocks],
            clock: 0,
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

    /// Blocks no sequence holds (cached ones included: they are handed out when needed).
    pub fn free_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.num_blocks - self.free_blocks()
    }

    /// Blocks registered under a hash (held or not).
    pub fn cached_blocks(&self) -> usize {
        self.by_hash.len()
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

    /// Extends `table` to hold `tokens` tokens with blocks nobody holds (free ones first, then
    /// the least recently released cached ones, which lose their hash). All or nothing:
    /// returns false, leaving `table` as it was, when the pool has too few.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let missing = self.blocks_for(tokens).saturating_sub(table.len());
        if missing > self.free_blocks() {
            return false;
        }
        for _ in 0..missing {
            let block = match self.free.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.evictable.pop_first().expect("counted above");
                    if let Some(h) = self.hash_of[b as usize].take() {
                        self.by_hash.remove(&h);
                    }
                    b
                }
            };
            self.refs[block as usize] = 1;
            table.push(block);
        }
        self.peak_used = self.peak_used.max(self.used_blocks());
        true
    }

    /// Gives every block of `table` back (emptying it): a block nobody else holds becomes free,
    /// or evictable if it is registered.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for block in table.drain(..).rev() {
            let b = block as usize;
            self.refs[b] -= 1;
            if self.refs[b] > 0 {
                continue;
            }
            if self.hash_of[b].is_some() {
                self.clock += 1;
                self.released_at[b] = self.clock;
                self.evictable.insert(self.clock, block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// How many of `hashes` (a chain of block hashes, first block first) name registered
    /// blocks, from the first on, and how many of those nobody holds now.
    pub fn cached_prefix(&self, hashes: &[BlockHash]) -> (usize, usize) {
        let mut unheld = 0;
        let n = hashes
            .iter()
            .take_while(|h| match self.by_hash.get(h) {
                Some(&b) => {
                    unheld += usize::from(self.refs[b as usize] == 0);
                    true
                }
                None => false,
            })
            .count();
        (n, unheld)
    }

    /// Appends the registered blocks of the first `n` of `hashes` to `table`, holding them
    /// (`n` from [`BlockPool::cached_prefix`]).
    pub fn take_cached(&mut self, hashes: &[BlockHash], n: usize, table: &mut Vec<u32>) {
        for h in &hashes[..n] {
            let block = self.by_hash[h];
            let b = block as usize;
            if self.refs[b] == 0 {
                self.evictable.remove(&self.released_at[b]);
            }
            self.refs[b] += 1;
            table.push(block);
        }
        self.peak_used = self.peak_used.max(self.used_blocks());
    }

    /// Registers `block` (held, full and computed) under `hash`, unless another block already
    /// is (two sequences computed the same prefix at once: the first stays) or `block` has a
    /// hash.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        let b = block as usize;
        if self.hash_of[b].is_none() && !self.by_hash.contains_key(&hash) {
            self.hash_of[b] = Some(hash);
            self.by_hash.insert(hash, block);
        }
    }

    /// Forgets every registered block nobody holds (they become free).
    pub fn clear_cached(&mut self) {
        while let Some((_, block)) = self.evictable.pop_first() {
            if let Some(h) = self.hash_of[block as usize].take() {
                self.by_hash.remove(&h);
            }
            self.free.push(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(ns: &[u64]) -> Vec<BlockHash> {
        ns.iter().map(|&n| BlockHash::from(n)).collect()
    }

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

    #[test]
    fn registered_blocks_are_shared_kept_after_release_and_evicted_last_and_oldest_first() {
        let mut pool = BlockPool::new(4, 4);
        let mut a = Vec::new();
        assert!(pool.grow(&mut a, 12)); // blocks 0, 1, 2
        pool.register(a[0], BlockHash::from(100));
        pool.register(a[1], BlockHash::from(101));
        pool.register(a[1], BlockHash::from(999)); // a block keeps its first hash
        assert_eq!(pool.cached_blocks(), 2);
        // A second sequence with the same first two blocks shares them.
        assert_eq!(pool.cached_prefix(&hs(&[100, 101, 102])), (2, 0));
        let mut b = Vec::new();
        pool.take_cached(&hs(&[100, 101]), 2, &mut b);
        assert_eq!(b, [0, 1]);
        assert_eq!(pool.used_blocks(), 3, "shared blocks count once");
        // Another block cannot take the hash of a registered one.
        let mut c = Vec::new();
        assert!(pool.grow(&mut c, 1)); // block 3
        pool.register(c[0], BlockHash::from(100));
        assert_eq!(pool.cached_prefix(&hs(&[100])), (1, 0));
        pool.release(&mut c);
        assert_eq!(pool.free_blocks(), 1, "an unregistered block is free again");
        // `a` ends: its registered blocks stay held by `b`; block 2 is free.
        pool.release(&mut a);
        assert_eq!(pool.used_blocks(), 2);
        // `b` ends: both registered blocks are kept, unheld, and still count as free.
        pool.release(&mut b);
        assert_eq!((pool.used_blocks(), pool.free_blocks(), pool.cached_blocks()), (0, 4, 2));
        assert_eq!(pool.cached_prefix(&hs(&[100, 101])), (2, 2));
        // Growing takes free blocks first (the last freed first), then the least recently
        // released cached one (block 1 was released before block 0: `release` walks the table
        // backwards).
        let mut d = Vec::new();
        assert!(pool.grow(&mut d, 12));
        assert_eq!(d, [2, 3, 1]);
        assert_eq!(pool.cached_prefix(&hs(&[100, 101])), (1, 1), "block 1 lost its hash");
        // Taking an unheld cached block holds it again.
        let mut e = Vec::new();
        pool.take_cached(&hs(&[100]), 1, &mut e);
        assert_eq!((e.as_slice(), pool.free_blocks()), (&[0u32][..], 0));
        pool.release(&mut d);
        pool.release(&mut e);
        pool.clear_cached();
        assert_eq!((pool.free_blocks(), pool.cached_blocks()), (4, 0));
        assert_eq!(pool.peak_used_blocks(), 4);
    }
}
