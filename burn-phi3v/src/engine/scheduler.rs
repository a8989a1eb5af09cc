//! The continuous-batching scheduler: which sequences run in the next pass, how many of their
//! tokens, and which blocks they hold. It knows token counts and blocks only — no tensors.
//!
//! Policy (vLLM's chunked-prefill scheduler, first come first served):
//! 1. Every running sequence that is decoding gets its one token, oldest first.
//! 2. Running sequences still prefilling get a chunk of what is left of the token budget.
//! 3. If nothing was preempted or left waiting for blocks, waiting sequences are admitted in
//!    arrival order while budget, sequence slots and blocks last (keeping a small reserve of
//!    free blocks for the running ones' growth); the first that does not fit stops admission.
//!
//! Prefix caching: a sequence that starts (or restarts after preemption) takes the registered
//! blocks its block hashes name, from its first block on, and computes only what follows (at
//! least its last token, whose logits it needs). After each pass the engine registers the full
//! blocks it computed ([`Scheduler::commit`]).
//!
//! A sequence short of blocks preempts the youngest running sequences younger than itself
//! (their blocks are freed; they wait and are recomputed when admitted again). With nothing
//! younger to preempt it sits this pass out, keeping its blocks. Priority is arrival, so the
//! oldest sequence always progresses, and every request that fits the pool alone completes.

use std::collections::BTreeMap;

use crate::engine::block_pool::BlockPool;
use crate::engine::prefix::BlockHash;

/// Where a sequence stands: `len` tokens known (prompt plus generated), the first `computed`
/// of them in the cache, held in `blocks`; `hashes` name its full blocks of known tokens (none
/// without prefix caching), the first `registered` of its blocks are registered.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqState {
    pub(crate) len: usize,
    pub(crate) computed: usize,
    pub(crate) blocks: Vec<u32>,
    pub(crate) hashes: Vec<BlockHash>,
    registered: usize,
}

impl SeqState {
    /// Gives its blocks back; nothing of it is cached any more.
    fn drop_cache(&mut self, pool: &mut BlockPool) {
        pool.release(&mut self.blocks);
        self.computed = 0;
        self.registered = 0;
    }
}

/// A sequence's part of the next pass: tokens `start..start + len`; `fresh` on its first
/// chunk after admission (which may start past 0: its cached prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheduled {
    pub(crate) id: u64,
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) fresh: bool,
}

/// Limits of one pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Tokens per pass.
    pub(crate) max_batched_tokens: usize,
    /// Sequences holding blocks at once.
    pub(crate) max_running: usize,
}

/// Sequences by arrival (their id), running or waiting, and the block pool.
#[derive(Debug)]
pub(crate) struct Scheduler {
    pub(crate) pool: BlockPool,
    limits: Limits,
    /// Free blocks admission leaves for the running sequences' growth.
    watermark: usize,
    running: BTreeMap<u64, SeqState>,
    waiting: BTreeMap<u64, SeqState>,
    pub(crate) preemptions: u64,
    /// Tokens admitted sequences took from the prefix cache instead of computing.
    pub(crate) cached_tokens: u64,
}

impl Scheduler {
    pub(crate) fn new(pool: BlockPool, limits: Limits) -> Self {
        Self {
            watermark: (pool.num_blocks() / 100).max(1),
            pool,
            limits,
            running: BTreeMap::new(),
            waiting: BTreeMap::new(),
            preemptions: 0,
            cached_tokens: 0,
        }
    }

    /// Queues a new sequence of `len` prompt tokens whose full blocks have `hashes`; ids must
    /// grow with arrival.
    pub(crate) fn add(&mut self, id: u64, len: usize, hashes: Vec<BlockHash>) {
        self.waiting.insert(id, SeqState { len, hashes, ..Default::default() });
    }

    /// A sequence, running or waiting.
    pub(crate) fn get(&self, id: u64) -> Option<&SeqState> {
        self.running.get(&id).or_else(|| self.waiting.get(&id))
    }

    /// Waiting sequences, oldest first.
    pub(crate) fn waiting_ids(&self) -> Vec<u64> {
        self.waiting.keys().copied().collect()
    }

    /// Replaces `id`'s block hashes (its known tokens' blocks, first block first). Those of
    /// blocks it holds must not change (the engine changes them only with nothing cached:
    /// waiting, or just restarted).
    pub(crate) fn set_hashes(&mut self, id: u64, hashes: Vec<BlockHash>) {
        if let Some(s) = self.running.get_mut(&id).or_else(|| self.waiting.get_mut(&id)) {
            debug_assert!(s.registered == 0 || hashes.starts_with(&s.hashes[..s.registered]));
            s.hashes = hashes;
        }
    }

    /// Registers `id`'s full computed blocks under their hashes (after the pass that computed
    /// them).
    pub(crate) fn commit(&mut self, id: u64) {
        let Some(s) = self.running.get_mut(&id) else { return };
        let full = (s.computed / self.pool.block_size()).min(s.hashes.len()).min(s.blocks.len());
        for i in s.registered..full {
            self.pool.register(s.blocks[i], s.hashes[i]);
        }
        s.registered = s.registered.max(full);
    }

    /// A running sequence.
    pub(crate) fn running(&self, id: u64) -> Option<&SeqState> {
        self.running.get(&id)
    }

    /// Running sequences, oldest first.
    pub(crate) fn running_iter(&self) -> impl Iterator<Item = (u64, &SeqState)> {
        self.running.iter().map(|(&id, s)| (id, s))
    }

    /// Sequences running and waiting.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len())
    }

    /// Nothing running or waiting.
    pub(crate) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// A token was generated for `id`.
    pub(crate) fn append(&mut self, id: u64) {
        if let Some(s) = self.running.get_mut(&id) {
            s.len += 1;
        }
    }

    /// Drops `id`'s cache: it is prefilled again, in new blocks (its old ones may be shared or
    /// registered, so they are never rewritten).
    pub(crate) fn restart(&mut self, id: u64) {
        if let Some(s) = self.running.get_mut(&id) {
            s.drop_cache(&mut self.pool);
        }
    }

    /// Forgets `id`, running or waiting, and frees its blocks.
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(mut s) = self.running.remove(&id).or_else(|| self.waiting.remove(&id)) {
            self.pool.release(&mut s.blocks);
        }
    }

    /// Plans the next pass; the planned tokens count as computed from here on.
    pub(crate) fn schedule(&mut self) -> Vec<Scheduled> {
        let mut plan = Vec::new();
        let mut budget = self.limits.max_batched_tokens;
        let mut preempted = false;
        let mut short_of_blocks = false;
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for decoding in [true, false] {
            for &id in &ids {
                let Some(s) = self.running.get(&id) else { continue }; // preempted meanwhile
                let need = s.len - s.computed;
                if need == 0 || (need == 1) != decoding || budget == 0 {
                    continue;
                }
                let len = need.min(budget);
                match self.reserve(id, s.computed + len, &mut plan, &mut budget) {
                    Reserve::Done { preempted: p } => preempted |= p,
                    Reserve::ShortOfBlocks { preempted: p } => {
                        preempted |= p;
                        short_of_blocks = true;
                        continue;
                    }
                }
                let s = self.running.get_mut(&id).expect("reserve keeps the sequence running");
                plan.push(Scheduled { id, start: s.computed, len, fresh: false });
                s.computed += len;
                budget -= len;
            }
        }
        if !preempted && !short_of_blocks {
            self.admit(&mut plan, &mut budget);
        }
        plan
    }

    /// Gives `id` blocks for `tokens` tokens, preempting younger running sequences (and
    /// taking them out of `plan`, refunding `budget`) as needed.
    fn reserve(&mut self, id: u64, tokens: usize, plan: &mut Vec<Scheduled>, budget: &mut usize) -> Reserve {
        let mut preempted = false;
        loop {
            let s = self.running.get_mut(&id).expect("only running sequences reserve");
            if self.pool.grow(&mut s.blocks, tokens) {
                return Reserve::Done { preempted };
            }
            let Some(victim) = self.running.range(id + 1..).next_back().map(|(&v, _)| v) else {
                return Reserve::ShortOfBlocks { preempted };
            };
            let mut v = self.running.remove(&victim).expect("just found");
            v.drop_cache(&mut self.pool);
            self.waiting.insert(victim, v);
            if let Some(i) = plan.iter().position(|p| p.id == victim) {
                *budget += plan.remove(i).len;
            }
            self.preemptions += 1;
            preempted = true;
        }
    }

    /// Admits waiting sequences in arrival order (see the module documentation), each with its
    /// cached prefix.
    fn admit(&mut self, plan: &mut Vec<Scheduled>, budget: &mut usize) {
        let bs = self.pool.block_size();
        while *budget > 0 && self.running.len() < self.limits.max_running {
            let Some(mut entry) = self.waiting.first_entry() else { break };
            let s = entry.get_mut();
            debug_assert!(s.computed == 0 && s.blocks.is_empty(), "waiting sequences hold nothing");
            // Cached blocks, leaving at least the last token to compute.
            let usable = s.hashes.len().min((s.len - 1) / bs);
            let (cached_blocks, unheld) = self.pool.cached_prefix(&s.hashes[..usable]);
            let cached = cached_blocks * bs;
            let len = (s.len - cached).min(*budget);
            let reserve = if self.running.is_empty() { 0 } else { self.watermark };
            let new_blocks = self.pool.blocks_for(cached + len) - cached_blocks;
            if self.pool.free_blocks() - unheld < new_blocks + reserve {
                break;
            }
            self.pool.take_cached(&s.hashes, cached_blocks, &mut s.blocks);
            if !self.pool.grow(&mut s.blocks, cached + len) {
                s.drop_cache(&mut self.pool); // not reached: counted above
                break;
            }
            s.computed = cached;
            s.registered = cached_blocks;
            self.cached_tokens += cached as u64;
            let (id, mut s) = entry.remove_entry();
            plan.push(Scheduled { id, start: s.computed, len, fresh: true });
            s.computed += len;
            *budget -= len;
            self.running.insert(id, s);
        }
    }
}

enum Reserve {
    Done { preempted: bool },
    ShortOfBlocks { preempted: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(ns: &[u64]) -> Vec<BlockHash> {
        ns.iter().map(|&n| BlockHash::from(n)).collect()
    }

    fn sched(blocks: usize, tokens: usize, running: usize) -> Scheduler {
        Scheduler::new(
            BlockPool::new(blocks, 4),
            Limits {
                max_batched_tokens: tokens,
                max_running: running,
            },
        )
    }

    /// Runs planned passes, appending a token to every sequence whose prefill completed.
    fn finish_pass(s: &mut Scheduler, plan: &[Scheduled]) {
        for p in plan {
            if p.start + p.len == s.running(p.id).expect("running").len {
                s.append(p.id);
            }
        }
    }

    #[test]
    fn long_prompts_are_chunked_and_decodes_go_first() {
        let mut s = sched(100, 8, 10);
        s.add(0, 3, vec![]);
        assert_eq!(s.schedule(), [Scheduled { id: 0, start: 0, len: 3, fresh: true }]);
        finish_pass(&mut s, &[Scheduled { id: 0, start: 0, len: 3, fresh: true }]);
        s.add(1, 20, vec![]);
        let plan = s.schedule();
        // The decode of 0 first, then 7 of 1's 20 prompt tokens.
        assert_eq!(plan, [Scheduled { id: 0, start: 3, len: 1, fresh: false }, Scheduled { id: 1, start: 0, len: 7, fresh: true }]);
        finish_pass(&mut s, &plan);
        let plan = s.schedule();
        assert_eq!(plan, [Scheduled { id: 0, start: 4, len: 1, fresh: false }, Scheduled { id: 1, start: 7, len: 7, fresh: false }]);
    }

    #[test]
    fn a_full_pool_preempts_the_youngest_and_resumes_it() {
        // 5 blocks of 4 tokens; two sequences of 7 prompt tokens take 2 blocks each.
        let mut s = sched(5, 64, 10);
        s.add(0, 7, vec![]);
        s.add(1, 7, vec![]);
        let plan = s.schedule();
        assert_eq!(plan.len(), 2, "{plan:?}");
        finish_pass(&mut s, &plan);
        let plan = s.schedule(); // both decode position 7: still in their second block
        assert_eq!(plan.len(), 2);
        finish_pass(&mut s, &plan);
        // Position 8 needs a third block each; one is free: 0 takes it, 1 (younger, nothing
        // younger to preempt) sits out holding its blocks.
        let mut plan = s.schedule();
        assert_eq!(plan, [Scheduled { id: 0, start: 8, len: 1, fresh: false }]);
        assert_eq!(s.preemptions, 0);
        for _ in 9..12 {
            finish_pass(&mut s, &plan);
            plan = s.schedule();
            assert_eq!(plan.len(), 1);
        }
        finish_pass(&mut s, &plan);
        // Position 12 needs a fourth block: 0 preempts 1, which waits to be recomputed.
        let plan = s.schedule();
        assert_eq!(plan, [Scheduled { id: 0, start: 12, len: 1, fresh: false }]);
        assert_eq!(s.preemptions, 1);
        assert_eq!(s.counts(), (1, 1));
        s.remove(0);
        let plan = s.schedule();
        assert_eq!(plan, [Scheduled { id: 1, start: 0, len: 9, fresh: true }], "recompute of prompt + generated");
        assert!(s.pool.peak_used_blocks() <= 5);
    }

    #[test]
    fn admission_is_first_come_first_served() {
        let mut s = sched(4, 64, 10);
        s.add(0, 12, vec![]); // 3 blocks
        s.add(1, 8, vec![]); // 2 blocks: does not fit next to 0
        s.add(2, 1, vec![]); // would fit, but must not overtake 1
        assert_eq!(s.schedule(), [Scheduled { id: 0, start: 0, len: 12, fresh: true }]);
        assert_eq!(s.counts(), (1, 2));
    }

    #[test]
    fn running_cap_and_token_budget_hold() {
        let mut s = sched(100, 5, 2);
        for id in 0..4 {
            s.add(id, 2, vec![]);
        }
        let plan = s.schedule();
        assert_eq!(plan.iter().map(|p| p.id).collect::<Vec<_>>(), [0, 1]);
        assert!(plan.iter().map(|p| p.len).sum::<usize>() <= 5);
    }

    #[test]
    fn a_cached_prefix_is_taken_not_computed_and_the_last_token_always_is() {
        // Blocks of 4 tokens. Sequence 0: 10 tokens, full blocks hashed [1, 2].
        let mut s = sched(10, 64, 10);
        s.add(0, 10, hs(&[1, 2]));
        let plan = s.schedule();
        assert_eq!(plan, [Scheduled { id: 0, start: 0, len: 10, fresh: true }]);
        s.commit(0);
        assert_eq!(s.pool.cached_blocks(), 2);
        // Same first block, different second: one block (4 tokens) taken.
        s.add(1, 9, hs(&[1, 3]));
        // Identical 8-token prompt: both blocks match, but the last token must be computed, so
        // only the first block is taken.
        s.add(2, 8, hs(&[1, 2]));
        // 12 tokens with both blocks: 8 taken, 4 computed.
        s.add(3, 12, hs(&[1, 2, 7]));
        let plan = s.schedule();
        assert_eq!(
            plan,
            [
                Scheduled { id: 1, start: 4, len: 5, fresh: true },
                Scheduled { id: 2, start: 4, len: 4, fresh: true },
                Scheduled { id: 3, start: 8, len: 4, fresh: true },
            ]
        );
        assert_eq!(s.cached_tokens, 4 + 4 + 8);
        let blocks = |s: &Scheduler, id| s.running(id).unwrap().blocks.clone();
        assert_eq!(blocks(&s, 1)[0], blocks(&s, 0)[0], "the first block is shared");
        assert_eq!(blocks(&s, 3)[..2], blocks(&s, 0)[..2]);
        // 0: 3 blocks; 1: 2 new (9 tokens); 2: 1 new; 3: 1 new. Shared ones count once.
        assert_eq!(s.pool.used_blocks(), 7);
        // Everyone ends; the registered blocks stay cached and a later copy of 3 takes all three.
        for id in 0..3 {
            s.commit(id);
        }
        s.commit(3);
        for id in 0..4 {
            s.remove(id);
        }
        assert_eq!(s.pool.used_blocks(), 0);
        s.add(4, 13, hs(&[1, 2, 7]));
        assert_eq!(s.schedule(), [Scheduled { id: 4, start: 12, len: 1, fresh: true }]);
        // A restart gives the blocks back and prefills from 0 in new ones.
        finish_pass(&mut s, &[Scheduled { id: 4, start: 12, len: 1, fresh: true }]);
        let shared = blocks(&s, 4);
        s.restart(4);
        s.set_hashes(4, hs(&[9, 9, 9]));
        let plan = s.schedule();
        assert_eq!(plan, [Scheduled { id: 4, start: 0, len: 14, fresh: false }]);
        assert!(blocks(&s, 4).iter().all(|b| !shared[..3].contains(b)), "registered blocks are not rewritten");
    }
}
