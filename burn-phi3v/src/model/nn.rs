//! Leaf blocks shared by the decoder and the vision tower. Weights keep the checkpoint's
//! names; numerically sensitive reductions run in f32 as the reference does.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::{
    Bool, Tensor,
    backend::Backend,
    module::{attention, attention_fallback},
    ops::AttentionModuleOptions,
};

use crate::error::Result;
use crate::kernels::{self, Kernels};
use crate::weights::Weights;

/// `nn.Linear` as stored by PyTorch (`weight` is `[out, in]`), applied as `x · weightᵀ + bias`.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[in, out]`: the checkpoint's `[out, in]` transposed once at load.
    pub weight: Tensor<B, 2>,
    /// `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `{prefix}.weight` (`[d_out, d_in]`) and, if `bias`, `{prefix}.bias` (`[d_out]`).
    pub fn load(w: &Weights<B>, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = w.tensor(&format!("{prefix}.weight"), [d_out, d_in])?.transpose();
        let bias = if bias {
            Some(w.tensor(&format!("{prefix}.bias"), [d_out])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Projections of the same input stored side by side as one (vLLM's stacked parameters,
    /// as its `QKVParallelLinear`): `{prefix}.{name}.weight` (`[d_out, d_in]`) and `.bias` for
    /// each of `names`, their outputs in that order, so one product computes them all.
    pub fn load_stacked(w: &Weights<B>, prefix: &str, names: &[&str], d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weights = names.iter().map(|n| w.tensor(&format!("{prefix}.{n}.weight"), [d_out, d_in])).collect::<Result<Vec<Tensor<B, 2>>>>()?;
        let bias = if bias {
            let biases = names.iter().map(|n| w.tensor(&format!("{prefix}.{n}.bias"), [d_out])).collect::<Result<Vec<Tensor<B, 1>>>>()?;
            Some(Tensor::cat(biases, 0))
        } else {
            None
        };
        Ok(Self { weight: Tensor::cat(weights, 0).transpose(), bias })
    }
}

impl<B: Kernels> Linear<B> {
    /// # Shapes
    /// `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        kernels::linear(x, &self.weight, self.bias.as_ref())
    }

    /// `residual + self.forward(x)`, the bias and the residual added in the product's epilogue
    /// where the backend can ([`kernels::linear_residual`]).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]`; `residual`: `[..., d_out]` → `[..., d_out]`
    pub fn forward_add<const D: usize>(&self, x: Tensor<B, D>, residual: Tensor<B, D>) -> Tensor<B, D> {
        kernels::linear_residual(x, &self.weight, self.bias.as_ref(), residual)
    }
}

/// CLIP's `nn.LayerNorm` (with bias), statistics in f32.
#[derive(Debug, Clone)]
pub struct LayerNorm<B: Backend> {
    /// `[d]`.
    pub weight: Tensor<B, 1>,
    /// `[d]`.
    pub bias: Tensor<B, 1>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Kernels> LayerNorm<B> {
    /// Loads `{prefix}.weight` and `{prefix}.bias`.
    pub fn load(w: &Weights<B>, prefix: &str, d: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(&format!("{prefix}.weight"), [d])?,
            bias: w.tensor(&format!("{prefix}.bias"), [d])?,
            eps,
        })
    }

    /// # Shapes
    /// `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        kernels::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// 0 = not decided yet, 1 = the backend's fused attention, 2 = composed (matmul, softmax, matmul).
static ATTENTION: AtomicU8 = AtomicU8::new(0);

/// Chooses Burn's composed attention (`attention_fallback`: matmul, f32-safe softmax, matmul)
/// instead of the backend's fused kernels, for both towers. A workaround switch for backends
/// whose fused attention misbehaves on some shapes; also set by `PHI3V_COMPOSED_ATTENTION=1`.
pub fn set_composed_attention(composed: bool) {
    ATTENTION.store(if composed { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether attention is composed from basic ops (see [`set_composed_attention`]).
pub fn composed_attention() -> bool {
    match ATTENTION.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("PHI3V_COMPOSED_ATTENTION").is_ok_and(|v| v == "1" || v == "true");
            set_composed_attention(on);
            on
        }
        v => v == 2,
    }
}

/// Scaled dot-product attention, `scale = 1/sqrt(head_dim)`.
///
/// # Shapes
/// `q`: `[batch, heads, queries, head_dim]`; `k`, `v`: `[batch, heads, keys, head_dim]`;
/// `mask`: `[batch, heads, queries, keys]` (`true` = masked) → `[batch, heads, queries, head_dim]`
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    is_causal: bool,
) -> Tensor<B, 4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    };
    if composed_attention() {
        attention_fallback(q, k, v, mask, None, options)
    } else if q.dims()[2] > FLASH_QUERIES {
        let [batch, heads, _, _] = q.dims();
        let rows = (CHUNK_SCORES / (batch * heads * k.dims()[2]).max(1)).clamp(1, FLASH_QUERIES);
        attend_composed_in_chunks(q, k, v, mask, is_causal, rows)
    } else {
        attention(q, k, v, mask, None, options)
    }
}

/// Query rows above which Burn 0.21's attention autotune prefers its flash kernels over the
/// composed one. Those kernels are not accurate there: on CUDA and on Vulkan they put the
/// 4455-token fixture case 7.8e-4 off in the hidden states and 6.7e-3 in the logits in f32,
/// where composed attention gives 7.4e-6 and 5.0e-5, and in bf16 on CUDA the case agreed with
/// the reference on 2327 of 4455 top-1 tokens (session 11; docs/parity.md). So attention over
/// more queries runs composed, in chunks of query rows, in every dtype.
pub(crate) const FLASH_QUERIES: usize = 4096;

/// Attention scores one chunk may hold (`batch · heads · rows · keys`): 2²⁴, 64 MiB in f32,
/// under wgpu's default 128 MiB limit on one storage binding (a 146 MB chunk failed to
/// allocate on lavapipe).
const CHUNK_SCORES: usize = 1 << 24;

/// [`attend`] composed from matmul and softmax, over chunks of at most `rows` query rows
/// ([`attend`] passes [`FLASH_QUERIES`], fewer when the keys are many, so that one chunk's
/// scores stay within [`CHUNK_SCORES`]).
/// `is_causal` masks as Burn does: aligned at the bottom-right corner (key `j` is hidden from
/// query `i` when `j > i + keys − queries`).
fn attend_composed_in_chunks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    is_causal: bool,
    rows: usize,
) -> Tensor<B, 4> {
    let [batch, heads, queries, _] = q.dims();
    let keys = k.dims()[2];
    let rows = rows.max(1);
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    let device = q.device();
    let mut chunks = Vec::with_capacity(queries.div_ceil(rows));
    for start in (0..queries).step_by(rows) {
        let n = rows.min(queries - start);
        let mut chunk_mask = mask.as_ref().map(|m| m.clone().narrow(2, start, n));
        if is_causal {
            let offset = (start + keys) as i64 - queries as i64;
            let causal = Tensor::<B, 2, Bool>::tril_mask([n, keys], offset, &device)
                .unsqueeze::<4>()
                .expand([batch, heads, n, keys]);
            chunk_mask = Some(match chunk_mask {
                Some(m) => m.bool_or(causal),
                None => causal,
            });
        }
        let chunk = attention_fallback(q.clone().narrow(2, start, n), k.clone(), v.clone(), chunk_mask, None, options);
        chunks.push(chunk);
    }
    Tensor::cat(chunks, 2)
}

/// Grouped-query attention: each of the `kv_heads` heads repeated `rep` times, consecutively
/// (HF's `repeat_kv`); `rep = 1` returns `x` (Phi-3-vision: 32 heads, 32 kv heads).
///
/// # Shapes
/// `[batch, kv_heads, seq, head_dim]` → `[batch, kv_heads · rep, seq, head_dim]`
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    if rep == 1 {
        return x;
    }
    let [b, kvh, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, rep, t, hd])
        .reshape([b, kvh * rep, t, hd])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type B = crate::backends::cpu::Cpu;

    fn random(shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn max_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// The attention softmax over padded scores (as `scores_attention` pads the keys) equals the
    /// softmax over the real keys alone, with zeros in the padding, causal or not.
    #[test]
    fn padded_softmax_equals_the_softmax_of_the_keys() {
        for (queries, keys, columns, causal) in [(5, 5, 8, true), (3, 9, 16, true), (4, 6, 8, false), (2, 7, 7, false)] {
            let scores = random([2, 3, queries, columns]);
            let padded = crate::kernels::attention_softmax_padded(scores.clone(), 0.5, causal, keys);
            let alone = crate::kernels::attention_softmax(scores.narrow(3, 0, keys), 0.5, causal);
            assert!(max_diff(padded.clone().narrow(3, 0, keys), alone) < 1e-6, "{queries}×{keys} of {columns}");
            if columns > keys {
                let pad: f32 = padded.narrow(3, keys, columns - keys).abs().max().into_scalar();
                assert_eq!(pad, 0.0, "{queries}×{keys} of {columns}: padding");
            }
        }
    }

    /// Chunked composed attention equals Burn's composed attention in one piece: causal with as
    /// many keys as queries, causal with more keys (bottom-right aligned), an explicit mask, and
    /// both, for chunk sizes that do and do not divide the queries.
    #[test]
    fn chunked_attention_equals_one_piece() {
        let options = |is_causal| AttentionModuleOptions { scale: None, softcap: None, is_causal };
        for (queries, keys) in [(13, 13), (7, 20), (1, 9)] {
            let (q, k, v) = (random([2, 3, queries, 8]), random([2, 3, keys, 8]), random([2, 3, keys, 8]));
            let bits: Vec<bool> = (0..2 * 3 * queries * keys).map(|i| (i * 7919) % 5 == 0).collect();
            let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(bits, [2, 3, queries, keys]), &Default::default());
            for (m, is_causal) in [(None, true), (Some(mask.clone()), false), (Some(mask), true)] {
                let whole = attention_fallback(q.clone(), k.clone(), v.clone(), m.clone(), None, options(is_causal));
                for rows in [1, 4, 5, queries, 100] {
                    let chunked = attend_composed_in_chunks(q.clone(), k.clone(), v.clone(), m.clone(), is_causal, rows);
                    assert_eq!(chunked.dims(), whole.dims());
                    let d = max_diff(chunked, whole.clone());
                    assert!(d < 1e-5, "{queries}×{keys} causal={is_causal} rows={rows}: Δ {d}");
                }
            }
        }
    }
}
