//! Leaf blocks shared by the decoder and the vision tower. Weights keep the checkpoint's
//! names; numerically sensitive reductions run in f32 as the reference does.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::{
    Bool, DType, FloatDType, Tensor,
    backend::Backend,
    module::{attention, attention_fallback, linear},
    ops::AttentionModuleOptions,
};

use crate::error::Result;
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

    /// # Shapes
    /// `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.weight.clone(), self.bias.clone())
    }
}

/// Casts to f32 for a reduction, remembering the dtype to return to.
pub(crate) fn to_f32<const D: usize, B: Backend>(x: Tensor<B, D>) -> (Tensor<B, D>, DType) {
    let dtype = x.dtype();
    (x.cast(FloatDType::F32), dtype)
}

/// Casts back to `dtype` after an f32 step.
pub(crate) fn from_f32<const D: usize, B: Backend>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    x.cast(dtype)
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

impl<B: Backend> LayerNorm<B> {
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
        let (x, dtype) = to_f32(x);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = (x - mean) / (var + self.eps).sqrt();
        let x = from_f32(x, dtype);
        x * self.weight.clone().unsqueeze() + self.bias.clone().unsqueeze()
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
    } else {
        attention(q, k, v, mask, None, options)
    }
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
