//! Attention through a paged KV cache: a pool of key/value slots per layer, and one forward
//! pass's view of it — where each new token's keys and values are written, which slots each
//! sequence reads, and the masks. The decoder reads and writes through these
//! ([`Phi3Model::forward_paged`](crate::model::phi3::Phi3Model::forward_paged)); which sequences
//! share a pass and which blocks they own is the caller's business (the serving engine).
//!
//! New keys and values are rotated and scattered into the pool at their slots in one
//! [`kernels::rotary_write_paged`]. Decoding sequences (one new
//! token each) attend together through their block tables in one
//! [`kernels::paged_decode_attention`] (a kernel on the GPU backends; gather, mask and attend
//! composed from Burn ops elsewhere), whatever their lengths. A prefill chunk gathers its
//! sequence's slots and attends composed, with a causal mask.
//!
//! A pass is a flat list of tokens from several sequences (`[1, tokens, hidden]` through the
//! decoder); the decoding rows come first in the attention's output, then each chunk, and the
//! output is put back in token order.

use burn::tensor::{Bool, DType, Int, Tensor, TensorData, backend::Backend};

use crate::kernels::{self, Kernels};
use crate::model::nn::repeat_kv;
use crate::model::phi3::{RopeRegime, causal_mask};

/// Keys and values of one layer for every slot of the pool.
#[derive(Debug, Clone)]
pub struct PagedLayer<B: Backend> {
    /// `[slots, kv_heads, head_dim]`; `None` only while a write is in progress.
    k: Option<Tensor<B, 3>>,
    /// `[slots, kv_heads, head_dim]`.
    v: Option<Tensor<B, 3>>,
}

impl<B: Backend> PagedLayer<B> {
    /// Rotates the queries and keys of one pass's `qkv` with `cos`/`sin`, writes the keys and
    /// values at `batch`'s slots (in place where the pools are not shared) and returns the
    /// queries: one [`kernels::rotary_write_paged`].
    ///
    /// # Shapes
    /// `qkv`: `[1, tokens, (heads + 2·kv_heads)·head_dim]`; `cos`, `sin`: `[1, 1, tokens,
    /// head_dim]` → `[tokens, heads, head_dim]`
    pub fn rotate_write(&mut self, batch: &PagedBatch<B>, qkv: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, heads: usize) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        const FULL: &str = "the pool is only empty inside a write";
        let (k, v) = (self.k.take().expect(FULL), self.v.take().expect(FULL));
        let (q, k, v) = kernels::rotary_write_paged(qkv, cos, sin, k, v, &batch.write_slots, heads);
        (self.k, self.v) = (Some(k), Some(v));
        q
    }

    /// The keys and values at `slots`.
    ///
    /// # Shapes
    /// `slots`: `[n]` → (`[n, kv_heads, head_dim]`, `[n, kv_heads, head_dim]`)
    fn gather(&self, slots: Tensor<B, 1, Int>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (k, v) = self.pools();
        (k.clone().select(0, slots.clone()), v.clone().select(0, slots))
    }

    /// The key and value pools, `[slots, kv_heads, head_dim]` each.
    fn pools(&self) -> (&Tensor<B, 3>, &Tensor<B, 3>) {
        const FULL: &str = "the pool is only empty inside write";
        (self.k.as_ref().expect(FULL), self.v.as_ref().expect(FULL))
    }
}

/// The per-layer slot pools of a paged KV cache. Slot `s` holds one token's keys and values in
/// every layer; a cache of `num_blocks` blocks of `block_size` tokens has
/// `num_blocks × block_size` slots, block `b` owning slots `b·block_size ..(b+1)·block_size`.
#[derive(Debug, Clone)]
pub struct PagedKvCache<B: Backend> {
    /// One pool per decoder layer.
    pub layers: Vec<PagedLayer<B>>,
    slots: usize,
}

impl<B: Backend> PagedKvCache<B> {
    /// A zeroed pool of `slots` slots for `num_layers` layers of `kv_heads × head_dim` keys and
    /// values in `dtype`, in the device's persistent memory (`Backend::memory_persistent_allocations`,
    /// as the weights are): on the CubeCL backends each layer's pool is then one allocation of
    /// its own size. In CubeCL's sliced pages (1/16, 1/64, … of the device's memory on CUDA),
    /// layer pools of 906 MB went five to a 5.3 GB page on the H100, so the 58 GB pool of 128
    /// requests of 1152 tokens took ~69 GB and the first step's activations found no room
    /// (docs/benchmarks.md, session 26).
    pub fn new(num_layers: usize, slots: usize, kv_heads: usize, head_dim: usize, device: &B::Device, dtype: DType) -> Self {
        let layers = B::memory_persistent_allocations(device, (), |()| {
            let zeros = || Some(Tensor::<B, 3>::zeros([slots, kv_heads, head_dim], (device, dtype)));
            (0..num_layers).map(|_| PagedLayer { k: zeros(), v: zeros() }).collect()
        });
        Self { layers, slots }
    }

    /// Number of slots (tokens) per layer.
    pub fn slots(&self) -> usize {
        self.slots
    }
}

/// One sequence's part of a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct PagedRow<'a> {
    /// The blocks holding the sequence, in position order (position `p` lives in slot
    /// `block_table[p / block_size] · block_size + p % block_size`).
    pub block_table: &'a [u32],
    /// Positions `0..cached` are already in the pool.
    pub cached: usize,
    /// New tokens in this pass, at positions `cached..cached + new`.
    pub new: usize,
    /// The LongRoPE regime the sequence is rotated in.
    pub regime: RopeRegime,
}

impl PagedRow<'_> {
    fn slot(&self, position: usize, block_size: usize) -> i64 {
        (self.block_table[position / block_size] as usize * block_size + position % block_size) as i64
    }
}

/// The decoding rows of a pass (one new token each), attended together through their block
/// tables by [`kernels::paged_decode_attention`], whatever their lengths.
#[derive(Debug, Clone)]
struct DecodeRows<B: Backend> {
    rows: usize,
    /// `[rows]`: each row's token among the pass's tokens; `None` when the pass is these rows'
    /// tokens in order.
    query_index: Option<Tensor<B, 1, Int>>,
    /// `[rows, blocks]`: each row's block table, padded with its first block.
    block_tables: Tensor<B, 2, Int>,
    /// `[rows]`: each row's key count (cached positions plus the new one).
    lengths: Tensor<B, 1, Int>,
    /// The longest row's key count.
    keys: usize,
}

/// A prefill chunk of one sequence: `[1, heads, queries, keys]`, composed attention.
#[derive(Debug, Clone)]
struct ChunkRows<B: Backend> {
    queries: usize,
    keys: usize,
    /// `[queries]`: each query's index among the pass's tokens.
    query_index: Tensor<B, 1, Int>,
    /// `[keys]`: the pool slot of each key.
    key_slots: Tensor<B, 1, Int>,
    /// `[1, 1, queries, keys]`, `true` = masked: the bottom-right causal mask of a chunk after
    /// cached keys, given beside the causal flag (`kernels::attention`); `None` for a chunk
    /// that is the whole sequence (queries = keys).
    mask: Option<Tensor<B, 4, Bool>>,
}

/// One forward pass's view of a paged KV cache, built on the host from the rows' block tables.
#[derive(Debug, Clone)]
pub struct PagedBatch<B: Backend> {
    /// Position of each new token in its sequence.
    positions: Vec<usize>,
    /// LongRoPE regime of each new token (its sequence's).
    regimes: Vec<RopeRegime>,
    /// `[tokens, 1]`: the slot each new token's keys and values are written to.
    write_slots: Tensor<B, 2, Int>,
    block_size: usize,
    decode: Option<DecodeRows<B>>,
    chunks: Vec<ChunkRows<B>>,
    /// `[tokens]`: where each token's output is in the groups' concatenated outputs; `None`
    /// when that order is already the tokens' order.
    output_index: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> PagedBatch<B> {
    /// The pass over `rows`, whose new tokens are laid out one row after another. Every row has
    /// at least one new token, and its block table covers `cached + new` positions.
    pub fn new(rows: &[PagedRow<'_>], block_size: usize, device: &B::Device) -> Self {
        let int1 = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let starts: Vec<usize> = rows
            .iter()
            .scan(0, |acc, r| {
                let s = *acc;
                *acc += r.new;
                Some(s)
            })
            .collect();
        let tokens: usize = rows.iter().map(|r| r.new).sum();
        let positions: Vec<usize> = rows.iter().flat_map(|r| r.cached..r.cached + r.new).collect();
        let regimes: Vec<RopeRegime> = rows.iter().flat_map(|r| std::iter::repeat_n(r.regime, r.new)).collect();
        let write: Vec<i64> = rows
            .iter()
            .flat_map(|r| (r.cached..r.cached + r.new).map(move |p| r.slot(p, block_size)))
            .collect();
        let write_slots = Tensor::<B, 2, Int>::from_data(TensorData::new(write, [tokens, 1]), device);

        let mut order = Vec::with_capacity(tokens); // flat token index, in output order
        // Decoding rows: one query each, all in one kernel launch through their block tables
        // (their lengths are run-time values: no padding, no mask, no new shapes per step).
        let decoding: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].new == 1).collect();
        let decode = (!decoding.is_empty()).then(|| {
            let keys = decoding.iter().map(|&i| rows[i].cached + 1).max().unwrap_or(1);
            let blocks = keys.div_ceil(block_size);
            let tables: Vec<i64> = decoding
                .iter()
                .flat_map(|&i| {
                    let table = rows[i].block_table;
                    (0..blocks).map(move |b| *table.get(b).unwrap_or(&table[0]) as i64)
                })
                .collect();
            order.extend(decoding.iter().map(|&i| starts[i]));
            let in_order = decoding.len() == tokens && order.iter().enumerate().all(|(k, &t)| k == t);
            DecodeRows {
                rows: decoding.len(),
                query_index: (!in_order).then(|| int1(decoding.iter().map(|&i| starts[i] as i64).collect())),
                block_tables: Tensor::from_data(TensorData::new(tables, [decoding.len(), blocks]), device),
                lengths: int1(decoding.iter().map(|&i| (rows[i].cached + 1) as i64).collect()),
                keys,
            }
        });
        // Prefill chunks: one each, causal over the chunk after its cached prefix.
        let mut chunks = Vec::new();
        for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.new > 1) {
            let keys = r.cached + r.new;
            order.extend(starts[i]..starts[i] + r.new);
            chunks.push(ChunkRows {
                queries: r.new,
                keys,
                query_index: int1((starts[i]..starts[i] + r.new).map(|t| t as i64).collect()),
                key_slots: int1((0..keys).map(|p| r.slot(p, block_size)).collect()),
                mask: (r.cached > 0).then(|| causal_mask::<B>(1, 1, r.new, keys, device)),
            });
        }
        let identity = order.iter().enumerate().all(|(k, &t)| k == t);
        let output_index = (!identity).then(|| {
            let mut index = vec![0i64; tokens];
            for (k, &t) in order.iter().enumerate() {
                index[t] = k as i64;
            }
            int1(index)
        });
        Self {
            positions,
            regimes,
            write_slots,
            block_size,
            decode,
            chunks,
            output_index,
        }
    }

    /// Number of new tokens in the pass.
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }

    /// Position of each new token in its sequence.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// LongRoPE regime of each new token.
    pub fn regimes(&self) -> &[RopeRegime] {
        &self.regimes
    }
}

/// Attention of a pass's queries over the pool (after this pass's keys and values were
/// written): the decoding rows through their block tables in one
/// [`kernels::paged_decode_attention`], each prefill chunk gathered, then attended ([`kernels::attention`]).
///
/// # Shapes
/// `q`: `[tokens, heads, head_dim]` (rotated) → `[tokens, heads · head_dim]`
pub fn paged_attention<B: Kernels>(q: Tensor<B, 3>, layer: &PagedLayer<B>, batch: &PagedBatch<B>) -> Tensor<B, 2> {
    let [tokens, heads, hd] = q.dims();
    let mut outputs: Vec<Tensor<B, 2>> = Vec::new();
    if let Some(d) = &batch.decode {
        let q = match &d.query_index {
            Some(index) => q.clone().select(0, index.clone()),
            None => q.clone(),
        };
        let (k, v) = layer.pools();
        let out = kernels::paged_decode_attention(q, k, v, &d.block_tables, &d.lengths, batch.block_size, d.keys);
        outputs.push(out.reshape([d.rows, heads * hd]));
    }
    for c in &batch.chunks {
        let (nq, nk) = (c.queries, c.keys);
        let q = q.clone().select(0, c.query_index.clone()).reshape([1, nq, heads, hd]).swap_dims(1, 2); // [1, h, nq, hd]
        let (k, v) = layer.gather(c.key_slots.clone()); // [nk, kvh, hd]
        let kvh = k.dims()[1];
        let kv = |t: Tensor<B, 3>| repeat_kv(t.reshape([1, nk, kvh, hd]).swap_dims(1, 2), heads / kvh); // [1, h, nk, hd]
        let mask = c.mask.clone().map(|m| m.expand([1, heads, nq, nk]));
        let out = kernels::attention(q, kv(k), kv(v), mask, true); // [1, h, nq, hd]
        outputs.push(out.swap_dims(1, 2).reshape([nq, heads * hd]));
    }
    let out = if outputs.len() == 1 { outputs.pop().expect("one output") } else { Tensor::cat(outputs, 0) }; // [tokens, h·hd], in output order
    match &batch.output_index {
        Some(index) => out.select(0, index.clone()),
        None => out,
    }
    .reshape([tokens, heads * hd])
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::model::nn::attend;
    use crate::backends::cpu::{Cpu, device};
    use burn::tensor::Distribution;

    /// Decoding rows over a pool read through their block tables equal attention over each
    /// row's own keys, whether the rows have one length or several (block tables of different
    /// lengths, the shorter padded).
    #[test]
    fn decode_rows_attend_over_their_own_keys() {
        let dev = device();
        let (heads, kv_heads, hd, block) = (4, 2, 8, 4);
        let pool = || Some(Tensor::<Cpu, 3>::random([64, kv_heads, hd], Distribution::Normal(0.0, 1.0), &dev));
        let layer = PagedLayer { k: pool(), v: pool() };
        let tables: [&[u32]; 2] = [&[3, 7, 1], &[0, 5, 2]];
        for cached in [[9, 9], [9, 6]] {
            let rows: Vec<PagedRow<'_>> = (0..2)
                .map(|i| PagedRow { block_table: tables[i], cached: cached[i], new: 1, regime: RopeRegime::Short })
                .collect();
            let batch = PagedBatch::<Cpu>::new(&rows, block, &dev);
            let q = Tensor::<Cpu, 3>::random([2, heads, hd], Distribution::Normal(0.0, 1.0), &dev);
            let got = paged_attention(q.clone(), &layer, &batch);
            for (i, r) in rows.iter().enumerate() {
                let n = r.cached + 1;
                let slots: Vec<i64> = (0..n).map(|p| r.slot(p, block)).collect();
                let slots = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(slots, [n]), &dev);
                let (k, v) = layer.gather(slots);
                let heads_of = |t: Tensor<Cpu, 3>| repeat_kv(t.reshape([1, n, kv_heads, hd]).swap_dims(1, 2), heads / kv_heads);
                let qi = q.clone().narrow(0, i, 1).reshape([1, 1, heads, hd]).swap_dims(1, 2);
                let want = attend(qi, heads_of(k), heads_of(v), None, false).swap_dims(1, 2).reshape([1, heads * hd]);
                let diff = (got.clone().narrow(0, i, 1) - want).abs().max().into_scalar();
                assert!(diff < 1e-5, "lengths {cached:?}, row {i}: Δ {diff}");
            }
        }
    }
}
