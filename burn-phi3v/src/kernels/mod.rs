//! The model's fused operations, behind a backend-extension trait.
//!
//! [`Kernels`] names the steps that Burn composes from several launches each and that the
//! model runs in every decoder layer: `Phi3RMSNorm`, the rotary embedding of queries and keys,
//! the `SiLU(gate) · up` of the MLP, the attention of a decode step, and the projections of a
//! step with a few token rows (`skinny_linear`). Each method's default
//! composes Burn ops as the reference does ([`composed`]), so every backend runs the model;
//! the CubeCL backends (CUDA, wgpu, ROCm, the plugin runtime, with or without fusion)
//! override them with one kernel each (`cube.rs`; `fusion.rs` registers them in Burn's fusion
//! stream).
//!
//! The model calls this module's functions ([`rms_norm`], [`rotary`], [`silu_mul`],
//! [`decode_attention`], [`linear`]), which take the backend's kernel unless [`set_fused_kernels`]`(false)`
//! or `PHI3V_FUSED_KERNELS=0` chose the composed path (to compare the two, or to work around a
//! kernel).
//!
//! A backend this crate does not know implements the trait with the defaults:
//! `impl burn_phi3v::kernels::Kernels for MyBackend {}` (in the crate that defines the backend
//! type, or on a newtype).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

use burn::tensor::{
    Bool, Int, Tensor, TensorPrimitive,
    activation::{sigmoid, silu},
    backend::Backend,
    ops::{FloatTensor, IntTensor},
};

use crate::model::nn::repeat_kv;

#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod cube_tiling;
#[cfg(feature = "cuda")]
mod cublas;
#[cfg(all(feature = "fusion", feature = "cube"))]
mod fusion;
mod tiling;

pub use tiling::{MATMUL_MANY_ROWS, MatmulRoutine, MatmulRows, MatmulTiling, matmul_tiling, set_matmul_tiling};

/// Fused operations of the model. Every method has a default composed from Burn ops.
///
/// Shapes are those of the model's tensors; the primitives carry them at run time.
pub trait Kernels: Backend {
    /// `Phi3RMSNorm`: `x / sqrt(mean(x²) + eps)` over the last dimension in f32, cast back to
    /// `x`'s dtype, times `weight`.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, hidden]`; `weight`: `[hidden]` → `[batch, seq, hidden]`
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        default_rms_norm::<Self>(x, weight, eps)
    }

    /// `nn.LayerNorm` (the vision tower's): `(x − mean) / sqrt(var + eps)` over the last
    /// dimension in f32 (biased variance), cast back to `x`'s dtype, times `weight` plus `bias`.
    ///
    /// # Shapes
    /// `x`: `[..., d]` (any rank); `weight`, `bias`: `[d]` → as `x`
    fn layer_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        default_layer_norm::<Self>(x, weight, bias, eps)
    }

    /// CLIP's quick-GELU, `x · σ(1.702 · x)`, with the sigmoid in f32, cast back to `x`'s
    /// dtype. With `bias`, of `x + bias` (the bias of the product before, added in f32 in the
    /// same pass over `x`: `fc1`'s output is read and written once instead of twice).
    ///
    /// # Shapes
    /// `x`: `[..., d]` (any rank); `bias`: `[d]` → as `x`
    fn quick_gelu(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        default_quick_gelu::<Self>(x, bias)
    }

    /// The residual add and the next `Phi3RMSNorm` in one pass: `sum = x + residual` (rounded
    /// to the dtype, as the reference adds before it normalises) and [`Kernels::rms_norm`] of
    /// `sum`. Returns `(sum, normed)`.
    ///
    /// # Shapes
    /// `x`, `residual`: `[batch, seq, hidden]`; `weight`: `[hidden]` → twice
    /// `[batch, seq, hidden]`
    fn add_rms_norm(x: FloatTensor<Self>, residual: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        default_add_rms_norm::<Self>(x, residual, weight, eps)
    }

    /// Rotary embedding of every head: `x·cos + rotate_half(x)·sin` per head of `head_dim`
    /// values, where `rotate_half([x1, x2]) = [−x2, x1]`.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, heads · head_dim]` (any strides); `cos`, `sin`:
    /// `[batch, 1, seq, head_dim]` → `[batch, seq, heads · head_dim]`
    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, head_dim: usize) -> FloatTensor<Self> {
        default_rotary::<Self>(x, cos, sin, head_dim)
    }

    /// A decode step's attention inputs from `qkv_proj`'s output in one pass: the query and key
    /// heads rotated ([`Kernels::rotary`]), the queries split out, the keys and values written
    /// into a cache's buffers after its first `cached` positions. Returns the queries and the
    /// two buffers: the same ones when nothing else holds them, else copies (the originals
    /// stay as they were).
    ///
    /// # Shapes
    /// `qkv`: `[batch, seq, (heads + 2·kv_heads)·head_dim]` (queries, keys, values); `cos`,
    /// `sin`: `[batch, 1, seq, head_dim]`; `k_cache`, `v_cache`:
    /// `[batch, kv_heads, capacity, head_dim]` with `cached + seq ≤ capacity`
    /// → `[batch, heads, seq, head_dim]` and the two buffers
    #[allow(clippy::too_many_arguments)]
    fn rotary_append(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        heads: usize,
        cached: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        default_rotary_append::<Self>(qkv, cos, sin, k_cache, v_cache, heads, cached)
    }

    /// [`Kernels::rotary_append`] for a paged cache (the serving engine's pass: a flat list of
    /// tokens from several sequences): rotates the queries and keys of `qkv`, writes each
    /// token's key and value heads at its pool row `slots[t]` (the pools are updated in place
    /// where nothing else holds them) and returns the rotated queries, one row per token.
    ///
    /// # Shapes
    /// `qkv`: `[1, tokens, (heads + 2·kv_heads)·head_dim]`; `cos`, `sin`: `[1, 1, tokens,
    /// head_dim]`; `k_pool`, `v_pool`: `[pool_rows, kv_heads, head_dim]`; `slots`: `[tokens, 1]`
    /// → `[tokens, heads, head_dim]` and the two pools
    #[allow(clippy::too_many_arguments)]
    fn rotary_write_paged(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_pool: FloatTensor<Self>,
        v_pool: FloatTensor<Self>,
        slots: IntTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        default_rotary_write_paged::<Self>(qkv, cos, sin, k_pool, v_pool, slots, heads)
    }

    /// The MLP's activation: `up · SiLU(gate)` where `[gate, up]` are the two halves of the
    /// last dimension.
    ///
    /// # Shapes
    /// `gate_up`: `[batch, seq, 2 · intermediate]` → `[batch, seq, intermediate]`
    fn silu_mul(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        default_silu_mul::<Self>(gate_up)
    }

    /// `x · weight` for a few rows (1 to [`SKINNY_ROWS`]: decode steps; [`linear`] sends
    /// [`skinny_min_rows`] and more), no bias.
    ///
    /// # Shapes
    /// `x`: `[rows, d_in]`; `weight`: `[d_in, d_out]` → `[rows, d_out]`
    fn skinny_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        default_skinny_linear::<Self>(x, weight)
    }

    /// [`Kernels::skinny_linear`] with the model's step before it and after it in the same
    /// pass over the weights: `Phi3RMSNorm` of `x` first (`norm`: its weight and epsilon),
    /// and then `epilogue` (a residual add, or `up · SiLU(gate)` of the two halves of the
    /// output). Each step rounds to the dtype where the composed steps do.
    ///
    /// # Shapes
    /// `x`: `[rows, d_in]`; `weight`: `[d_in, d_out]`; `norm`'s weight `[d_in]` → `[rows,
    /// d_out]`, or `[rows, d_out / 2]` after [`Epilogue::SiluMul`]
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, norm: Option<(FloatTensor<Self>, f64)>, epilogue: Epilogue<Self>) -> FloatTensor<Self> {
        default_fused_linear::<Self>(x, weight, norm, epilogue)
    }

    /// Attention of every query row over its keys, no mask beyond `causal`, `scale =
    /// 1/sqrt(head_dim)`, softmax and sums in f32: a prefill pass, the vision tower. `causal`
    /// hides key `j` from query `i` when `j > i + keys − queries` (aligned at the bottom-right
    /// corner, as Burn does: a chunk after cached keys sees them all); it needs `keys ≥
    /// queries`. Grouped-query heads as in [`Kernels::decode_attention`].
    ///
    /// # Shapes
    /// `q`: `[batch, heads, queries, head_dim]`; `k`, `v`: `[batch, kv_heads, keys, head_dim]`
    /// → `[batch, heads, queries, head_dim]`
    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool) -> FloatTensor<Self> {
        default_flash_attention::<Self>(q, k, v, causal)
    }

    /// [`Kernels::flash_attention`] by a flash kernel on tensor cores ([`FlashAttention::Mma`]):
    /// f16 or bf16 operands, f32 sums, `causal` aligned bottom-right. `staged`: whether the
    /// kernel that stages its scores in shared memory may run where the one that keeps them in
    /// register fragments cannot ([`FlashAttention::Mma`] asks for it; [`FlashAttention::Auto`]
    /// does not, the staged kernel being slower than [`scores_attention`] at CLIP's shape and
    /// at 4096 tokens). `None` where the backend has no such kernel or the kernel cannot take
    /// the problem here (each reason recorded for [`flash_attention_refusals`], except the
    /// register fragments' absence when `staged` is false); the caller then takes
    /// [`scores_attention`].
    ///
    /// # Shapes
    /// as [`Kernels::flash_attention`]
    fn mma_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool, staged: bool) -> Option<FloatTensor<Self>> {
        let _ = (q, k, v, causal, staged);
        None
    }

    /// Attention probabilities from raw scores: `softmax(scale · scores)` over the first `keys`
    /// columns, in f32, written in the scores' dtype; the columns past `keys` are padding
    /// (written as 0). `causal` hides key `j` from query `i` when `j > i + keys − queries`
    /// (bottom-right, as [`Kernels::flash_attention`]); a row with every key hidden comes out
    /// as zeros. [`FlashAttention::Scores`] runs it between two matmuls.
    ///
    /// # Shapes
    /// `scores`: `[batch, heads, queries, columns ≥ keys]` → the same
    fn attention_softmax(scores: FloatTensor<Self>, scale: f64, causal: bool, keys: usize) -> FloatTensor<Self> {
        default_attention_softmax::<Self>(scores, scale, causal, keys)
    }

    /// Bytes of attention scores one chunk of query rows of [`scores_attention`] may hold on
    /// `device`: [`SCORES_CHUNK_BYTES`] (half of wgpu's default limit on one storage binding)
    /// unless the backend allows more.
    fn scores_chunk_bytes(device: &Self::Device) -> usize {
        let _ = device;
        SCORES_CHUNK_BYTES
    }

    /// `lhs · rhs` by CubeCL's tensor-core matmul at `tiling` instead of the tiling Burn's
    /// autotune would run ([`MatmulTiling`]). Burn's matmul where the backend has no such
    /// kernel, and where the routine refuses the tiling or the problem (each refusal is
    /// recorded for [`matmul_tiling_refusals`]).
    ///
    /// # Shapes
    /// `lhs`: `[m, k]`; `rhs`: `[k, n]` (any strides) → `[m, n]`
    fn tiled_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>, tiling: MatmulTiling) -> FloatTensor<Self> {
        let _ = tiling;
        Self::float_matmul(lhs, rhs)
    }

    /// `lhs · rhs` by the device vendor's BLAS library, f32 accumulation: cuBLAS on the CUDA
    /// backend (loaded at run time). `None` where the backend has none (every other backend,
    /// and CUDA inside Burn's fusion stream) or the library refuses (each refusal recorded
    /// for [`blas_matmul_refusals`]); the caller then takes Burn's matmul.
    ///
    /// # Shapes
    /// `lhs`: `[..., m, k]`; `rhs`: `[..., k, n]`, the same leading (batch) dimensions, each
    /// matrix's rows or columns contiguous → `[..., m, n]`
    fn blas_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        let _ = (lhs, rhs);
        None
    }

    /// `x · weight (+ bias) (+ residual)` by the device vendor's BLAS with the additions in its
    /// epilogue (cuBLASLt on the CUDA backend: the output written once, no pass of its own per
    /// term), f32 accumulation. `None` where the backend has none or it refuses (as
    /// [`Kernels::blas_matmul`]).
    ///
    /// # Shapes
    /// `x`: `[m, k]`; `weight`: `[k, n]`; `bias`: `[n]`; `residual`: `[m, n]` → `[m, n]`
    fn blas_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>, residual: Option<FloatTensor<Self>>) -> Option<FloatTensor<Self>> {
        let _ = (x, weight, bias, residual);
        None
    }

    /// Attention of one new query row over every key, no mask, `scale = 1/sqrt(head_dim)`:
    /// a decode step. Keys and values have `kv_heads` heads (grouped-query attention: query
    /// head `h` reads kv head `h / (heads / kv_heads)`).
    ///
    /// # Shapes
    /// `q`: `[batch, heads, 1, head_dim]`; `k`, `v`: `[batch, kv_heads, keys, head_dim]`
    /// → `[batch, heads, 1, head_dim]`
    fn decode_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self> {
        default_decode_attention::<Self>(q, k, v)
    }

    /// [`Kernels::decode_attention`] of one query row per sequence over its own keys in a
    /// paged pool (a decode step of the serving engine): row `r`'s key `j < lengths[r]` is
    /// pool row `block_tables[r, j / block_size] · block_size + j % block_size`. `keys` is the
    /// longest row's length.
    ///
    /// # Shapes
    /// `q`: `[rows, heads, head_dim]`; `k_pool`, `v_pool`: `[slots, kv_heads, head_dim]`;
    /// `block_tables`: `[rows, blocks]` (`blocks · block_size ≥ keys`; entries past a row's
    /// own blocks name any valid block); `lengths`: `[rows]`, each in `1..=keys`
    /// → `[rows, heads, head_dim]`
    #[allow(clippy::too_many_arguments)]
    fn paged_decode_attention(
        q: FloatTensor<Self>,
        k_pool: FloatTensor<Self>,
        v_pool: FloatTensor<Self>,
        block_tables: IntTensor<Self>,
        lengths: IntTensor<Self>,
        block_size: usize,
        keys: usize,
    ) -> FloatTensor<Self> {
        default_paged_decode_attention::<Self>(q, k_pool, v_pool, block_tables, lengths, block_size, keys)
    }
}

/// [`Kernels::rms_norm`]'s default, for implementations that fall back to it.
fn default_rms_norm<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let x = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(x));
    let weight = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(weight));
    composed::rms_norm(x, weight, eps).into_primitive().tensor()
}

/// [`Kernels::layer_norm`]'s default, for implementations that fall back to it (as a
/// `[rows, d]` tensor: the composed steps do not depend on the rank).
fn default_layer_norm<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, bias: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    use burn::tensor::TensorMetadata;
    let shape = x.shape();
    let d = shape[shape.num_dims() - 1];
    let rows = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::float_reshape(x, burn::tensor::Shape::new([shape.num_elements() / d.max(1), d]))));
    let vector = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    B::float_reshape(composed::layer_norm(rows, vector(weight), vector(bias), eps).into_primitive().tensor(), shape)
}

/// [`Kernels::quick_gelu`]'s default, for implementations that fall back to it (as rows of the
/// last dimension: the steps are elementwise, the bias broadcast over the rows).
fn default_quick_gelu<B: Backend>(x: FloatTensor<B>, bias: Option<FloatTensor<B>>) -> FloatTensor<B> {
    use burn::tensor::TensorMetadata;
    let shape = x.shape();
    let d = shape[shape.num_dims() - 1];
    let rows = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::float_reshape(x, burn::tensor::Shape::new([shape.num_elements() / d.max(1), d]))));
    let rows = match bias {
        Some(b) => rows + Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(b)).unsqueeze(),
        None => rows,
    };
    B::float_reshape(composed::quick_gelu(rows).into_primitive().tensor(), shape)
}

/// [`Kernels::add_rms_norm`]'s default, for implementations that fall back to it.
fn default_add_rms_norm<B: Backend>(x: FloatTensor<B>, residual: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> (FloatTensor<B>, FloatTensor<B>) {
    let tensor = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
    let weight = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(weight));
    let (sum, normed) = composed::add_rms_norm(tensor(x), tensor(residual), weight, eps);
    (sum.into_primitive().tensor(), normed.into_primitive().tensor())
}

/// [`Kernels::rotary`]'s default, for implementations that fall back to it.
fn default_rotary<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>, head_dim: usize) -> FloatTensor<B> {
    let x = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(x));
    let cos = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(cos));
    let sin = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(sin));
    composed::rotary(x, &cos, &sin, head_dim).into_primitive().tensor()
}

/// [`Kernels::rotary_append`]'s default, for implementations that fall back to it.
#[allow(clippy::too_many_arguments)]
fn default_rotary_append<B: Kernels>(
    qkv: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    k_cache: FloatTensor<B>,
    v_cache: FloatTensor<B>,
    heads: usize,
    cached: usize,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let t3 = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
    let t4 = |t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let (q, k, v) = rotate_then_append(t3(qkv), &t4(cos), &t4(sin), t4(k_cache), t4(v_cache), heads, cached);
    (q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor())
}

/// [`Kernels::rotary_write_paged`]'s default: [`rotate_split`], the heads laid out one row per
/// token, then two `scatter_nd`s into the pools.
fn default_rotary_write_paged<B: Kernels>(
    qkv: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    k_pool: FloatTensor<B>,
    v_pool: FloatTensor<B>,
    slots: IntTensor<B>,
    heads: usize,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let t3 = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
    let t4 = |t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let (k_pool, v_pool, slots) = (t3(k_pool), t3(v_pool), Tensor::<B, 2, Int>::from_primitive(slots));
    let [_, kv_heads, hd] = k_pool.dims();
    let tokens = slots.dims()[0];
    let (q, k, v) = rotate_split(t3(qkv), &t4(cos), &t4(sin), heads, kv_heads);
    let rows = |x: Tensor<B, 4>, n: usize| x.swap_dims(1, 2).reshape([tokens, n, hd]); // [tokens, n, hd]
    let assign = burn::tensor::IndexingUpdateOp::Assign;
    let k_pool = k_pool.scatter_nd(slots.clone(), rows(k, kv_heads), assign);
    let v_pool = v_pool.scatter_nd(slots, rows(v, kv_heads), assign);
    (rows(q, heads).into_primitive().tensor(), k_pool.into_primitive().tensor(), v_pool.into_primitive().tensor())
}

/// [`Kernels::rotary_append`] as separate steps: [`rotate_split`], then two `slice_assign`s into
/// the buffers (in place where nothing else holds them).
fn rotate_then_append<B: Kernels>(
    qkv: Tensor<B, 3>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    k_cache: Tensor<B, 4>,
    v_cache: Tensor<B, 4>,
    heads: usize,
    cached: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, s, _] = qkv.dims();
    let [_, kv_heads, _, hd] = k_cache.dims();
    let (q, k, v) = rotate_split(qkv, cos, sin, heads, kv_heads);
    let at = [0..b, 0..kv_heads, cached..cached + s, 0..hd];
    (q, k_cache.slice_assign(at.clone(), k), v_cache.slice_assign(at, v))
}

/// Splits a `qkv_proj` output into rotated queries, rotated keys and values: one [`rotary`]
/// over the query and key columns together (they rotate alike), then the head split.
///
/// # Shapes
/// `qkv`: `[batch, seq, (heads + 2·kv_heads)·head_dim]`; `cos`, `sin`: `[batch, 1, seq,
/// head_dim]` → `[batch, heads, seq, head_dim]`, then twice `[batch, kv_heads, seq, head_dim]`
pub fn rotate_split<B: Kernels>(qkv: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, heads: usize, kv_heads: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, s, width] = qkv.dims();
    let hd = cos.dims()[3];
    let (h, kvh) = (heads, kv_heads);
    debug_assert_eq!(width, (h + 2 * kvh) * hd);
    let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2); // [b, n, s, hd]
    let qk = rotary(qkv.clone().narrow(2, 0, (h + kvh) * hd), cos, sin, hd);
    let q = split(qk.clone().narrow(2, 0, h * hd), h);
    let k = split(qk.narrow(2, h * hd, kvh * hd), kvh);
    let v = split(qkv.narrow(2, (h + kvh) * hd, kvh * hd), kvh);
    (q, k, v)
}

/// [`Kernels::silu_mul`]'s default, for implementations that fall back to it.
fn default_silu_mul<B: Backend>(gate_up: FloatTensor<B>) -> FloatTensor<B> {
    let gate_up = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(gate_up));
    composed::silu_mul(gate_up).into_primitive().tensor()
}

/// [`Kernels::skinny_linear`]'s default, for implementations that fall back to it.
fn default_skinny_linear<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>) -> FloatTensor<B> {
    let x = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
    let weight = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(weight));
    burn::tensor::module::linear(x, weight, None).into_primitive().tensor()
}

/// What [`Kernels::fused_linear`] does with the product.
#[derive(Debug, Clone)]
pub enum Epilogue<B: Backend> {
    /// Nothing: the product.
    None,
    /// `residual + product` (`[rows, d_out]`, the dtype of the product).
    Residual(FloatTensor<B>),
    /// `up · SiLU(gate)` of the product's halves `[gate | up]` (`Phi3MLP` after
    /// `gate_up_proj`).
    SiluMul,
}

/// [`Kernels::fused_linear`]'s default, for implementations that fall back to it: the
/// backend's [`Kernels::rms_norm`], [`Kernels::skinny_linear`] and [`Kernels::silu_mul`] one
/// after the other, the residual added by Burn.
pub(crate) fn default_fused_linear<B: Kernels>(x: FloatTensor<B>, weight: FloatTensor<B>, norm: Option<(FloatTensor<B>, f64)>, epilogue: Epilogue<B>) -> FloatTensor<B> {
    let t2 = |t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t));
    let x = match norm {
        Some((w, eps)) => {
            let [rows, d] = t2(x.clone()).dims();
            let x3 = t2(x).reshape([1, rows, d]).into_primitive().tensor();
            let normed = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(B::rms_norm(x3, w, eps)));
            normed.reshape([rows, d]).into_primitive().tensor()
        }
        None => x,
    };
    let product = B::skinny_linear(x, weight);
    match epilogue {
        Epilogue::None => product,
        Epilogue::Residual(residual) => (t2(residual) + t2(product)).into_primitive().tensor(),
        Epilogue::SiluMul => {
            let [rows, d] = t2(product.clone()).dims();
            let p3 = t2(product).reshape([1, rows, d]).into_primitive().tensor();
            let act = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(B::silu_mul(p3)));
            act.reshape([rows, d / 2]).into_primitive().tensor()
        }
    }
}

/// [`Kernels::flash_attention`]'s default: the model's attention (`model::nn::attend`, Burn's
/// `attention` or composed) with the key/value heads repeated.
pub(crate) fn default_flash_attention<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
    let tensor = |t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let (q, k, v) = (tensor(q), tensor(k), tensor(v));
    let rep = q.dims()[1] / k.dims()[1].max(1);
    crate::model::nn::attend(q, repeat_kv(k, rep), repeat_kv(v, rep), None, causal).into_primitive().tensor()
}

/// [`Kernels::attention_softmax`]'s default, for implementations that fall back to it.
pub(crate) fn default_attention_softmax<B: Backend>(scores: FloatTensor<B>, scale: f64, causal: bool, keys: usize) -> FloatTensor<B> {
    let scores = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(scores));
    composed::attention_softmax(scores, scale, causal, keys).into_primitive().tensor()
}

/// [`Kernels::decode_attention`]'s default, for implementations that fall back to it.
fn default_decode_attention<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>) -> FloatTensor<B> {
    let tensor = |t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    composed::decode_attention(tensor(q), tensor(k), tensor(v)).into_primitive().tensor()
}

/// [`Kernels::paged_decode_attention`]'s default, for implementations that fall back to it.
#[allow(clippy::too_many_arguments)]
fn default_paged_decode_attention<B: Kernels>(
    q: FloatTensor<B>,
    k_pool: FloatTensor<B>,
    v_pool: FloatTensor<B>,
    block_tables: IntTensor<B>,
    lengths: IntTensor<B>,
    block_size: usize,
    keys: usize,
) -> FloatTensor<B> {
    let t3 = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
    let tables = Tensor::<B, 2, Int>::from_primitive(block_tables);
    let lengths = Tensor::<B, 1, Int>::from_primitive(lengths);
    composed::paged_decode_attention(t3(q), t3(k_pool), t3(v_pool), tables, lengths, block_size, keys)
        .into_primitive()
        .tensor()
}

#[cfg(feature = "cpu")]
impl Kernels for burn::backend::Flex {}

/// The model's steps composed from Burn ops, as the reference writes them: the default of
/// every [`Kernels`] method and the reference its kernels are tested against.
pub mod composed {
    use super::*;

    /// See [`Kernels::layer_norm`].
    pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, bias: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(burn::tensor::FloatDType::F32);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = ((x - mean) / (var + eps).sqrt()).cast(dtype);
        x * weight.unsqueeze() + bias.unsqueeze()
    }

    /// See [`Kernels::quick_gelu`]: `x · sigmoid(1.702 · x)` as HF's `QuickGELUActivation`
    /// writes it (Burn's sigmoid runs in f32).
    pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        x.clone() * sigmoid(x * 1.702)
    }

    /// See [`Kernels::rms_norm`].
    pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = x.cast(burn::tensor::FloatDType::F32);
        let variance = x.clone().square().mean_dim(2);
        let x = (x * (variance + eps).sqrt().recip()).cast(dtype);
        x * weight.unsqueeze()
    }

    /// See [`Kernels::attention_softmax`]: Burn's NaN-safe softmax (as its attention
    /// fallback's) over f32 scores with the causal keys and the padding filled with −∞.
    pub fn attention_softmax<B: Backend>(scores: Tensor<B, 4>, scale: f64, causal: bool, keys: usize) -> Tensor<B, 4> {
        let dtype = scores.dtype();
        let [batch, heads, queries, columns] = scores.dims();
        let keys = keys.min(columns);
        let mut x = scores.cast(burn::tensor::FloatDType::F32) * scale;
        let device = x.device();
        // Key `j` hidden from query `i`: `j > i + keys − queries` when causal (which hides the
        // padding too), `j ≥ keys` otherwise.
        let hidden = if causal {
            Some(Tensor::<B, 2, Bool>::tril_mask([queries, columns], keys as i64 - queries as i64, &device))
        } else {
            (keys < columns).then(|| Tensor::<B, 1, Int>::arange(0..columns as i64, &device).greater_equal_elem(keys as i64).unsqueeze::<2>().expand([queries, columns]))
        };
        if let Some(hidden) = hidden {
            x = x.mask_fill(hidden.unsqueeze::<4>().expand([batch, heads, queries, columns]), f32::NEG_INFINITY);
        }
        let max = x.clone().max_dim(3).clamp_min(f32::MIN);
        let e = (x - max).exp();
        let total = e.clone().sum_dim(3).clamp_min(f32::MIN_POSITIVE);
        (e / total).cast(dtype)
    }

    /// See [`Kernels::add_rms_norm`].
    pub fn add_rms_norm<B: Backend>(x: Tensor<B, 3>, residual: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let sum = x + residual;
        (sum.clone(), rms_norm(sum, weight, eps))
    }

    /// See [`Kernels::rotary`].
    pub fn rotary<B: Backend>(x: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, head_dim: usize) -> Tensor<B, 3> {
        let [b, s, width] = x.dims();
        let x = x.reshape([b, s, width / head_dim, head_dim]);
        let (cos, sin) = (cos.clone().swap_dims(1, 2), sin.clone().swap_dims(1, 2)); // [b, s, 1, hd]
        let half = head_dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        (x * cos + rotated * sin).reshape([b, s, width])
    }

    /// See [`Kernels::decode_attention`]: the model's attention (`model::nn::attend`) after
    /// repeating the kv heads.
    pub fn decode_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let rep = q.dims()[1] / k.dims()[1].max(1);
        crate::model::nn::attend(q, repeat_kv(k, rep), repeat_kv(v, rep), None, false)
    }

    /// See [`Kernels::paged_decode_attention`]: each row's keys gathered from the pool (the
    /// slots computed on the device from the block tables, `keys` per row), keys past a row's
    /// length masked, then [`attend`](crate::model::nn::attend).
    pub fn paged_decode_attention<B: Kernels>(
        q: Tensor<B, 3>,
        k_pool: Tensor<B, 3>,
        v_pool: Tensor<B, 3>,
        block_tables: Tensor<B, 2, Int>,
        lengths: Tensor<B, 1, Int>,
        block_size: usize,
        keys: usize,
    ) -> Tensor<B, 3> {
        let [rows, heads, hd] = q.dims();
        let kv_heads = k_pool.dims()[1];
        let bs = block_size as i64;
        let j = Tensor::<B, 1, Int>::arange(0..keys as i64, &q.device()); // [keys]
        let blocks = block_tables.select(1, j.clone().div_scalar(bs)); // [rows, keys]
        let slots = blocks.mul_scalar(bs) + j.clone().remainder_scalar(bs).reshape([1, keys]).expand([rows, keys]);
        let masked = j.reshape([1, keys]).expand([rows, keys]).greater_equal(lengths.reshape([rows, 1]).expand([rows, keys]));
        let slots = slots.reshape([rows * keys]);
        let heads_of = |pool: Tensor<B, 3>| {
            let t = pool.select(0, slots.clone()).reshape([rows, keys, kv_heads, hd]).swap_dims(1, 2); // [rows, kvh, keys, hd]
            repeat_kv(t, heads / kv_heads)
        };
        let mask = masked.reshape([rows, 1, 1, keys]).expand([rows, heads, 1, keys]);
        let out = crate::model::nn::attend(q.reshape([rows, heads, 1, hd]), heads_of(k_pool), heads_of(v_pool), Some(mask), false);
        out.reshape([rows, heads, hd])
    }

    /// See [`Kernels::silu_mul`].
    pub fn silu_mul<B: Backend>(gate_up: Tensor<B, 3>) -> Tensor<B, 3> {
        let intermediate = gate_up.dims()[2] / 2;
        let gate = gate_up.clone().narrow(2, 0, intermediate);
        let up = gate_up.narrow(2, intermediate, intermediate);
        up * silu(gate)
    }
}

/// Where the backends' own kernels run (see [`set_kernel_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPolicy {
    /// Nowhere: every step is composed from Burn ops (`PHI3V_FUSED_KERNELS=0`).
    Off,
    /// Where a backend's kernels have passed `tests/tests/kernels.rs` against their composed
    /// fallbacks on a real device (the default; see [`Kernels`]' implementations).
    Verified,
    /// Everywhere a backend has them, verified or not (`PHI3V_FUSED_KERNELS=1`): to test or
    /// measure them on a new device.
    Forced,
}

/// 0 = not decided yet, 1 = Verified, 2 = Off, 3 = Forced.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// Chooses where the backends' [`Kernels`] run for every later call; the default comes from
/// `PHI3V_FUSED_KERNELS` (`0`/`false`: off, `1`/`true`/`force`: forced, unset: verified).
pub fn set_kernel_policy(policy: KernelPolicy) {
    let v = match policy {
        KernelPolicy::Verified => 1,
        KernelPolicy::Off => 2,
        KernelPolicy::Forced => 3,
    };
    FUSED.store(v, Ordering::Relaxed);
}

/// The current [`KernelPolicy`].
pub fn kernel_policy() -> KernelPolicy {
    match FUSED.load(Ordering::Relaxed) {
        0 => {
            let policy = match std::env::var("PHI3V_FUSED_KERNELS").as_deref() {
                Ok("0" | "false" | "off") => KernelPolicy::Off,
                Ok("1" | "true" | "force" | "forced") => KernelPolicy::Forced,
                _ => KernelPolicy::Verified,
            };
            set_kernel_policy(policy);
            policy
        }
        1 => KernelPolicy::Verified,
        2 => KernelPolicy::Off,
        _ => KernelPolicy::Forced,
    }
}

/// `false` turns the backends' [`Kernels`] off; `true` restores the default,
/// [`KernelPolicy::Verified`].
pub fn set_fused_kernels(fused: bool) {
    set_kernel_policy(if fused { KernelPolicy::Verified } else { KernelPolicy::Off });
}

/// Whether the backends' [`Kernels`] may run at all (the policy is not [`KernelPolicy::Off`]);
/// a backend may still use its composed default where its kernels are not verified.
pub fn fused_kernels() -> bool {
    kernel_policy() != KernelPolicy::Off
}

/// The model's kernels by name, each of which can be turned off alone (see [`kernel_on`]);
/// `decode_attention_planes` off keeps decode attention on its units-over-keys variant;
/// `decode_attention_split` off keeps each (batch, head) of the planes variant in one cube
/// (no split of the keys over several cubes and no combining launch); `blas_matmul` off keeps
/// the products of many rows ([`blas_min_rows`]) on Burn's matmul instead of cuBLAS (CUDA);
/// `attention_softmax_planes` off keeps the softmax at one cube per row of scores (its
/// plane-per-row variant runs up to 4096 keys where the device's planes have one width);
/// `vector_loads` off has the memory-bound kernels (the norms, the attention softmax,
/// quick-GELU, SiLU·mul) read and write one value at a time (else vectors of up to 8 where
/// the row length allows);
/// `add_rms_norm` off adds with Burn, then normalises with `rms_norm`; `rotary_append` off
/// rotates with `rotary`, then appends with Burn's `slice_assign`; `mma_linear` off keeps the
/// few-row products on the CUDA-core skinny kernel where tensor cores could take them
/// ([`MmaLinearTuning`]); `mma_linear_runs` off has the register-fragment product
/// ([`MmaLinearReads::Fragments`]) take its planes' blocks of `d_in` one at a time, strided
/// by the planes, instead of in runs of `depth` adjacent blocks; `mma_fragments_waves` off
/// halves the register-fragment product's columns per cube to two cubes per multiprocessor
/// instead of fitting its planes and columns per cube to whole waves of cubes on the device's
/// multiprocessors (`chunk` the most columns, `planes` the fewest planes);
/// `decode_attention_early_values` on has the decode attention's lanes load a tile's value
/// rows together with its key rows (in flight during the scores' sums and the softmax) instead
/// of after the softmax; `mma_attention_fragments` off has [`FlashAttention::Mma`] stage its
/// scores and probabilities in shared memory for `cmma` tiles instead of keeping them in
/// `mma.m16n8k16` register fragments; `skinny_norm_after` off has the skinny product with a
/// norm before it make a first pass over the input rows before the products, instead of
/// summing each row's squares beside its products and scaling the sums at the end;
/// `mma_attention_prefetch` off has the register-fragment flash kernel load each step's keys
/// and values when the step starts (every lane waiting on memory, then storing them into
/// shared memory one value at a time) instead of loading them into registers during the step
/// before and storing whole vectors (up to 64-dim heads); `quick_gelu_bias` off has the product
/// before quick-GELU add its bias (a pass of its own over `fc1`'s output) instead of the
/// activation's kernel; `blas_epilogue` off has the vendor's BLAS compute a product of many
/// rows alone, its bias and residual then added by passes of their own, instead of in the
/// product's epilogue ([`Kernels::blas_linear`]); `mma_attention_copies` on has the
/// register-fragment flash kernel copy each step's keys and values into a ring of two slots of
/// shared memory asynchronously (`cp.async`, one step ahead; no registers held for them)
/// instead of through registers (`mma_attention_prefetch`) or loads at the step's start.
pub const KERNEL_NAMES: [&str; 28] = [
    "rms_norm",
    "layer_norm",
    "quick_gelu",
    "add_rms_norm",
    "rotary",
    "rotary_append",
    "rotary_write_paged",
    "silu_mul",
    "decode_attention",
    "decode_attention_planes",
    "decode_attention_split",
    "skinny_linear",
    "fused_linear",
    "blas_matmul",
    "flash_attention",
    "attention_softmax",
    "attention_softmax_planes",
    "vector_loads",
    "mma_linear",
    "mma_linear_runs",
    "mma_fragments_waves",
    "decode_attention_early_values",
    "mma_attention_fragments",
    "skinny_norm_after",
    "mma_attention_prefetch",
    "quick_gelu_bias",
    "blas_epilogue",
    "mma_attention_copies",
];

/// Whether the backend's kernel `name` (one of [`KERNEL_NAMES`]) runs: [`fused_kernels`] is
/// on and it is not turned off: by `PHI3V_KERNELS_OFF` (a comma-separated list of names, read
/// once), by default ([`KERNELS_OFF_BY_DEFAULT`], unless `PHI3V_KERNELS_ON` names it) or later
/// by [`set_kernel_on`]. Turning one kernel off works around it on a device
/// where it misbehaves, or measures it.
pub fn kernel_on(name: &str) -> bool {
    fused_kernels() && kernel_bit(name).is_none_or(|bit| kernels_off().load(Ordering::Relaxed) & bit == 0)
}

/// Turns kernel `name` (one of [`KERNEL_NAMES`]) on or off for every later launch of the
/// process, over `PHI3V_KERNELS_OFF`; `false` (nothing changed) for a name not in the list.
pub fn set_kernel_on(name: &str, on: bool) -> bool {
    let Some(bit) = kernel_bit(name) else {
        return false;
    };
    if on {
        kernels_off().fetch_and(!bit, Ordering::Relaxed);
    } else {
        kernels_off().fetch_or(bit, Ordering::Relaxed);
    }
    true
}

/// Kernel `name`'s bit in the mask of kernels off: bit `i` for `KERNEL_NAMES[i]`.
fn kernel_bit(name: &str) -> Option<u32> {
    KERNEL_NAMES.iter().position(|n| *n == name).map(|i| 1 << i)
}

const _: () = assert!(KERNEL_NAMES.len() <= 32, "one bit per kernel in a u32");

/// Kernels off unless turned on (`PHI3V_KERNELS_ON` or [`set_kernel_on`]): not faster than
/// what runs without them (docs/kernels.md). `mma_linear_runs` (session 30): the
/// register-fragment product's planes in runs of adjacent blocks; on the H200 (session 32)
/// its 10-row projections were 133.0–139.2 µs per layer against the strided blocks'
/// 111.2–136.4. `decode_attention_early_values` (session 31): the decode attention's value rows
/// loaded with its key rows; on the H200 (session 32) no faster at 10 rows (73.4 and 69.1 µs
/// per layer against 71.0 and 67.8) nor at 1 row (whole step 4.15 ms against 4.16 and 4.18).
/// (Session 31's `mma_fragments_waves` and `skinny_norm_after` were here until session 32
/// measured them faster, and `mma_attention_prefetch` until session 33 did; the two decode
/// attention variants that were here, session 28's one lane per query value and session 29's
/// rows copied into shared memory, right and slower, were removed in sessions 29 and 30.)
/// `mma_attention_copies` (session 36): right on the H100 and 2.5–13.5 % faster (session 37),
/// off until the kernels test's flash checks have run it on CUDA.
pub const KERNELS_OFF_BY_DEFAULT: [&str; 3] = ["mma_linear_runs", "decode_attention_early_values", "mma_attention_copies"];

/// The kernels turned off, a bit each ([`kernel_bit`]): [`KERNELS_OFF_BY_DEFAULT`] less those
/// `PHI3V_KERNELS_ON` names, and those `PHI3V_KERNELS_OFF` names (both comma-separated lists,
/// read once; names not in [`KERNEL_NAMES`] are ignored). One atomic load per launch.
fn kernels_off() -> &'static AtomicU32 {
    static OFF: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    OFF.get_or_init(|| {
        let names = |var: &str| -> Vec<String> { std::env::var(var).map(|v| v.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect()).unwrap_or_default() };
        let on = names("PHI3V_KERNELS_ON");
        let off = KERNELS_OFF_BY_DEFAULT.iter().map(|n| n.to_string()).filter(|n| !on.contains(n)).chain(names("PHI3V_KERNELS_OFF"));
        AtomicU32::new(off.filter_map(|n| kernel_bit(&n)).fold(0, |mask, bit| mask | bit))
    })
}

/// [`Kernels::layer_norm`] on tensors (composed when its kernel is off).
pub fn layer_norm<B: Kernels, const D: usize>(x: Tensor<B, D>, weight: &Tensor<B, 1>, bias: &Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    if !kernel_on("layer_norm") {
        return composed::layer_norm(x, weight.clone(), bias.clone(), eps);
    }
    let out = <B as Kernels>::layer_norm(x.into_primitive().tensor(), weight.clone().into_primitive().tensor(), bias.clone().into_primitive().tensor(), eps);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`Kernels::quick_gelu`] on tensors, of `x + bias` with a bias (composed when its kernel is
/// off).
///
/// # Shapes
/// `x`: `[..., d]`; `bias`: `[d]` → as `x`
pub fn quick_gelu<B: Kernels, const D: usize>(x: Tensor<B, D>, bias: Option<&Tensor<B, 1>>) -> Tensor<B, D> {
    let (x, bias) = match bias {
        Some(b) if !kernel_on("quick_gelu") || !kernel_on("quick_gelu_bias") => (x + b.clone().unsqueeze(), None),
        _ => (x, bias.map(|b| b.clone().into_primitive().tensor())),
    };
    if !kernel_on("quick_gelu") {
        return composed::quick_gelu(x);
    }
    Tensor::from_primitive(TensorPrimitive::Float(B::quick_gelu(x.into_primitive().tensor(), bias)))
}

/// [`Kernels::rms_norm`] on tensors (composed when [`fused_kernels`] is off).
pub fn rms_norm<B: Kernels>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    if !kernel_on("rms_norm") {
        return composed::rms_norm(x, weight.clone(), eps);
    }
    let out = B::rms_norm(x.into_primitive().tensor(), weight.clone().into_primitive().tensor(), eps);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`Kernels::add_rms_norm`] on tensors: `(x + residual, rms_norm(x + residual))`; a Burn add
/// then [`rms_norm`] when its kernel is off.
pub fn add_rms_norm<B: Kernels>(x: Tensor<B, 3>, residual: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> (Tensor<B, 3>, Tensor<B, 3>) {
    if !kernel_on("add_rms_norm") || x.dims() != residual.dims() {
        let sum = x + residual;
        return (sum.clone(), rms_norm(sum, weight, eps));
    }
    let (sum, normed) = B::add_rms_norm(x.into_primitive().tensor(), residual.into_primitive().tensor(), weight.clone().into_primitive().tensor(), eps);
    (Tensor::from_primitive(TensorPrimitive::Float(sum)), Tensor::from_primitive(TensorPrimitive::Float(normed)))
}

/// [`Kernels::rotary`] on tensors (composed when [`fused_kernels`] is off).
pub fn rotary<B: Kernels>(x: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, head_dim: usize) -> Tensor<B, 3> {
    if !kernel_on("rotary") {
        return composed::rotary(x, cos, sin, head_dim);
    }
    let out = B::rotary(
        x.into_primitive().tensor(),
        cos.clone().into_primitive().tensor(),
        sin.clone().into_primitive().tensor(),
        head_dim,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`Kernels::rotary_append`] on tensors: `(queries, k_cache, v_cache)`; [`rotary`] then
/// Burn's `slice_assign` when its kernel is off.
pub fn rotary_append<B: Kernels>(
    qkv: Tensor<B, 3>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    k_cache: Tensor<B, 4>,
    v_cache: Tensor<B, 4>,
    heads: usize,
    cached: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    if !kernel_on("rotary_append") {
        return rotate_then_append(qkv, cos, sin, k_cache, v_cache, heads, cached);
    }
    let p = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let (q, k, v) = B::rotary_append(qkv.into_primitive().tensor(), p(cos.clone()), p(sin.clone()), p(k_cache), p(v_cache), heads, cached);
    let t = |x| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x));
    (t(q), t(k), t(v))
}

/// [`Kernels::rotary_write_paged`] on tensors (composed when the `rotary_write_paged` kernel is
/// off); see there for the shapes.
#[allow(clippy::too_many_arguments)]
pub fn rotary_write_paged<B: Kernels>(
    qkv: Tensor<B, 3>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    k_pool: Tensor<B, 3>,
    v_pool: Tensor<B, 3>,
    slots: &Tensor<B, 2, Int>,
    heads: usize,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let p = |t: Tensor<B, 3>| t.into_primitive().tensor();
    let (c, s) = (cos.clone().into_primitive().tensor(), sin.clone().into_primitive().tensor());
    let (q, k, v) = if kernel_on("rotary_write_paged") {
        B::rotary_write_paged(p(qkv), c, s, p(k_pool), p(v_pool), slots.clone().into_primitive(), heads)
    } else {
        default_rotary_write_paged::<B>(p(qkv), c, s, p(k_pool), p(v_pool), slots.clone().into_primitive(), heads)
    };
    let t = |x| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(x));
    (t(q), t(k), t(v))
}

/// [`Kernels::silu_mul`] on tensors (composed when [`fused_kernels`] is off).
pub fn silu_mul<B: Kernels>(gate_up: Tensor<B, 3>) -> Tensor<B, 3> {
    if !kernel_on("silu_mul") {
        return composed::silu_mul(gate_up);
    }
    Tensor::from_primitive(TensorPrimitive::Float(B::silu_mul(gate_up.into_primitive().tensor())))
}

/// Attention for prefill and the vision tower: [`Kernels::flash_attention`] when there is no
/// mask beyond `causal` (and `keys ≥ queries` if causal) and its kernel is on, else the
/// model's attention (`model::nn::attend`) with `mask`. Key/value heads may be fewer than the
/// query heads (grouped-query attention).
///
/// `causal` with a `mask` says the mask *is* the bottom-right causal one (new queries after
/// cached keys, `keys > queries`): backends disagree on how a causal flag aligns there, so
/// the mask is applied, except by [`FlashAttention::Scores`] and [`FlashAttention::Mma`], which
/// apply the same limit themselves (`Scores` skips the keys no query of a chunk sees, `Mma` the
/// steps of keys no query of a cube sees).
///
/// # Shapes
/// `q`: `[batch, heads, queries, head_dim]`; `k`, `v`: `[batch, kv_heads, keys, head_dim]`;
/// `mask`: `[batch, heads, queries, keys]` (`true` = hidden) → `[batch, heads, queries,
/// head_dim]`
pub fn attention<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Option<Tensor<B, 4, Bool>>, causal: bool) -> Tensor<B, 4> {
    let [_, heads, queries, _] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    let grouped = kv_heads > 0 && heads.is_multiple_of(kv_heads);
    let flash = grouped && (!causal || keys >= queries) && kernel_on("flash_attention");
    let asked = flash_attention_choice();
    let choice = asked.resolve();
    if flash && matches!(choice, FlashAttention::Scores | FlashAttention::Mma) && (mask.is_none() || causal) {
        let staged = asked == FlashAttention::Mma;
        if choice == FlashAttention::Mma
            && let Some(out) = B::mma_attention(q.clone().into_primitive().tensor(), k.clone().into_primitive().tensor(), v.clone().into_primitive().tensor(), causal, staged)
        {
            return Tensor::from_primitive(TensorPrimitive::Float(out));
        }
        let chunk_bytes = B::scores_chunk_bytes(&q.device());
        return scores_attention(q, k, v, causal, chunk_bytes);
    }
    // An explicit causal mask stands for the flag (see above).
    let causal = causal && mask.is_none();
    if mask.is_none() && flash {
        let out = B::flash_attention(q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor(), causal);
        return Tensor::from_primitive(TensorPrimitive::Float(out));
    }
    let rep = heads / kv_heads.max(1);
    crate::model::nn::attend(q, repeat_kv(k, rep), repeat_kv(v, rep), mask, causal)
}

/// Bytes of attention scores one chunk of [`scores_attention`] holds by default
/// ([`Kernels::scores_chunk_bytes`]): 64 MiB, half of wgpu's default limit on one storage
/// binding (1024 queries × 1024 keys × 32 heads in bf16 is one chunk).
pub const SCORES_CHUNK_BYTES: usize = 1 << 26;

/// [`Kernels::scores_chunk_bytes`] on CUDA, which has no binding limit: 256 MiB, so that CLIP's
/// 17 crops (183 MB of scores) are one chunk. In three 64 MiB chunks `scores` took 760.6 µs
/// there, in one 489.8 (H100, bf16, docs/kernels.md session 22). A chunk's scores and
/// probabilities (512 MiB at most) must fit beside the engine's KV pool, which leaves 10 % of
/// the free memory by default; a prefill of 8192 tokens (32 heads, 4 GiB of scores) goes in 16.
pub const SCORES_CHUNK_BYTES_CUDA: usize = 1 << 28;

/// [`FlashAttention::Scores`]: `softmax(q·kᵀ/√d)·v` as a batched product ([`scores_product`]:
/// cuBLAS on CubeCL's stream on CUDA, Burn's matmul elsewhere), [`attention_softmax_padded`]
/// (one pass, f32 inside) and the second product, over chunks of query rows whose scores fit in
/// `chunk_bytes`; the keys are zero-padded to a multiple of [`SCORES_KEY_ALIGN`].
/// A causal chunk multiplies only the keys its last query sees (rows `r0..r1` see keys
/// `0..r1 + keys − queries`), so a causal prefill does about half the work of a full one.
/// `causal` needs `keys ≥ queries`.
///
/// # Shapes
/// as [`attention`] without a mask
pub fn scores_attention<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, causal: bool, chunk_bytes: usize) -> Tensor<B, 4> {
    let [batch, heads, queries, head_dim] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    let rep = heads / kv_heads.max(1);
    let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
    let scale = 1.0 / (head_dim as f64).sqrt();
    // Zero keys and values up to a multiple of SCORES_KEY_ALIGN: the scores' rows (the first
    // product's output, the second's input) then start on 16-byte boundaries, which cuBLAS's
    // fast kernels need (at CLIP's 577 keys its products ran ~4× slower, docs/kernels.md
    // session 22). The softmax writes 0 for the padding, whose zero values then add nothing.
    let padded = keys.next_multiple_of(SCORES_KEY_ALIGN);
    let (k, v) = if padded > keys {
        let zeros = Tensor::<B, 4>::zeros([batch, heads, padded - keys, head_dim], (&q.device(), q.dtype()));
        (Tensor::cat(vec![k, zeros.clone()], 2), Tensor::cat(vec![v, zeros], 2))
    } else {
        (k, v)
    };
    let row_bytes = (batch * heads * padded * q.dtype().size()).max(1);
    let rows = (chunk_bytes / row_bytes).clamp(1, queries.max(1));
    let chunks: Vec<Tensor<B, 4>> = (0..queries)
        .step_by(rows)
        .map(|r0| {
            let n = rows.min(queries - r0);
            let seen = if causal { r0 + n + keys - queries } else { keys };
            let columns = seen.next_multiple_of(SCORES_KEY_ALIGN);
            let scores = scores_product(q.clone().narrow(2, r0, n), k.clone().narrow(2, 0, columns).swap_dims(2, 3));
            scores_product(attention_softmax_padded(scores, scale, causal, seen), v.clone().narrow(2, 0, columns))
        })
        .collect();
    if chunks.len() == 1 { chunks.into_iter().next().expect("one chunk") } else { Tensor::cat(chunks, 2) }
}

/// One of [`scores_attention`]'s two batched products: the vendor's BLAS when its products are
/// ordered on the backend's own stream ([`BlasOrdering::Stream`] or [`BlasOrdering::Queued`],
/// no host sync), Burn's matmul otherwise (ordered by the host, cuBLAS was slower here than
/// Burn's matmul: docs/kernels.md session 20). Until session 24 `Queued` took Burn's matmul
/// here, which made a 4096-token prefill 37 ms slower under it (docs/kernels.md).
///
/// # Shapes
/// `lhs`: `[batch, heads, m, k]`, `rhs`: `[batch, heads, k, n]` → `[batch, heads, m, n]`
pub fn scores_product<B: Kernels>(lhs: Tensor<B, 4>, rhs: Tensor<B, 4>) -> Tensor<B, 4> {
    if blas_ordering() != BlasOrdering::Host
        && let Some(out) = blas_matmul(lhs.clone(), rhs.clone())
    {
        return out;
    }
    lhs.matmul(rhs)
}

/// [`Kernels::attention_softmax`] on tensors over all their columns (composed when its kernel
/// is off).
pub fn attention_softmax<B: Kernels>(scores: Tensor<B, 4>, scale: f64, causal: bool) -> Tensor<B, 4> {
    let keys = scores.dims()[3];
    attention_softmax_padded(scores, scale, causal, keys)
}

/// [`Kernels::attention_softmax`] on tensors whose columns past `keys` are padding (composed
/// when its kernel is off).
pub fn attention_softmax_padded<B: Kernels>(scores: Tensor<B, 4>, scale: f64, causal: bool, keys: usize) -> Tensor<B, 4> {
    if !kernel_on("attention_softmax") {
        return composed::attention_softmax(scores, scale, causal, keys);
    }
    Tensor::from_primitive(TensorPrimitive::Float(B::attention_softmax(scores.into_primitive().tensor(), scale, causal, keys)))
}

/// [`scores_attention`] pads the keys to a multiple of this many (16 bytes of a 16-bit dtype).
pub const SCORES_KEY_ALIGN: usize = 8;

/// Which GPU kernel [`Kernels::flash_attention`] runs on the CubeCL backends under
/// [`KernelPolicy::Verified`]. `PHI3V_FLASH_ATTENTION` sets it for a process (read once):
/// unset or `auto` → [`FlashAttention::Auto`]; `0`/`burn` → [`FlashAttention::Burn`];
/// `1`/`unit` → [`FlashAttention::Unit`]; `planes,seq_q,seq_kv` (e.g. `4,1,2`) →
/// [`FlashAttention::Tiles`]; `scores` → [`FlashAttention::Scores`]; `mma` →
/// [`FlashAttention::Mma`]. [`set_flash_attention`]
/// sets it at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttention {
    /// The default: this crate's flash kernel on tensor cores with its scores in register
    /// fragments ([`FlashAttention::Mma`] without its staged kernel) where it runs (CUDA, f16
    /// and bf16), else [`FlashAttention::Scores`], causal or not. Session 32 (H200, bf16,
    /// docs/kernels.md): 95.9–104.6 µs against `scores`' 111.4 at 1×32×1024×1024×96 causal,
    /// 255.9–269.5 against 419.1–429.5 at CLIP's 17×16×577×64; the image encode at num_crops
    /// 16 20.0 ms against 25.0. From session 22 to 31 `Scores` everywhere (the fastest of the
    /// choices right on CUDA then); until session 22 the vision tower took
    /// [`FlashAttention::VISION_TILES`] on CUDA, whose outputs were wrong at 16-dim heads
    /// (docs/parity.md, session 22).
    Auto,
    /// Burn's attention (its autotune picks among its flash and composed kernels).
    Burn,
    /// This crate's CUDA-core kernel: one unit per query row, f32 sums in registers.
    Unit,
    /// CubeCL's tensor-core flash attention (cubek's "blackbox accelerated" routine, 16×16
    /// tiles in f16 with f32 sums) with a tiling Burn's autotune does not try: `planes` planes
    /// per cube, each owning `seq_q` tiles of 16 query rows, and `seq_kv` tiles of 16 keys per
    /// step of the loop over the keys. Only for attention without a causal mask (the vision
    /// tower's; the routine's causal mode gave wrong outputs on CUDA, docs/kernels.md session
    /// 15; a materialised causal mask is wrong too, session 18), bf16/f16 inputs (bf16 queries
    /// go in as f16) with as many key as query heads, up to 4096 queries, at the head
    /// dimensions [`TILES_HEAD_DIMS`] (16-dim heads gave wrong outputs, session 22); the others,
    /// and tilings the routine refuses, take [`FlashAttention::Burn`]'s path.
    Tiles {
        /// Planes per cube (1–16).
        planes: u8,
        /// Query tiles per plane (1–8).
        seq_q: u8,
        /// Key tiles per step (1–16).
        seq_kv: u8,
    },
    /// Not a flash kernel: the scores materialised, chunk by chunk, between Burn's two
    /// (tensor-core) matmuls, with this crate's one-pass [`Kernels::attention_softmax`] in
    /// place of Burn's eight elementwise and reduction passes in the dtype
    /// ([`scores_attention`]); causal chunks skip the keys none of their queries see. Any
    /// dtype, causal or not; grouped-query heads are repeated.
    Scores,
    /// This crate's flash kernel on tensor cores ([`Kernels::mma_attention`]: 16-row query
    /// tiles, steps of 64 keys, scores and probability·value products on 16×16×16 tiles with
    /// f32 sums, the online softmax in f32 between them), causal or not, grouped-query heads
    /// read in place; f16/bf16 on devices with such tiles, head dimensions 16, 32, 48, …, 128.
    /// The scores stay in `mma.m16n8k16` register fragments where the device has them (CUDA;
    /// `mma_attention_fragments`), else they are staged in shared memory for `cmma` tiles.
    /// Elsewhere, [`FlashAttention::Scores`]. [`FlashAttention::Auto`] takes it without the
    /// staged kernel.
    Mma,
}

impl FlashAttention {
    /// The tensor-core tiling fastest of those timed for CLIP's 577 × 64 heads on the H200
    /// (docs/kernels.md session 18): 4 planes of 2 query tiles, 2 key tiles per step. Opt-in
    /// (`PHI3V_FLASH_ATTENTION=4,2,2`); [`FlashAttention::Auto`] gave it the vision tower on
    /// CUDA until session 22.
    pub const VISION_TILES: Self = Self::Tiles { planes: 4, seq_q: 2, seq_kv: 2 };

    /// The choice that runs: for [`FlashAttention::Auto`], [`FlashAttention::Mma`] (its
    /// register-fragment kernel only, [`FlashAttention::Scores`] where that cannot run); any
    /// other choice itself.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto => Self::Mma,
            choice => choice,
        }
    }

    /// Whether the kernels take these values.
    pub fn is_valid(&self) -> bool {
        match *self {
            Self::Tiles { planes, seq_q, seq_kv } => (1..=16).contains(&planes) && (1..=8).contains(&seq_q) && (1..=16).contains(&seq_kv),
            _ => true,
        }
    }

    /// Reads `PHI3V_FLASH_ATTENTION`'s syntax; `None` when it is not one of them or invalid.
    pub fn parse(s: &str) -> Option<Self> {
        let choice = match s.trim() {
            "" | "auto" => Self::Auto,
            "0" | "false" | "off" | "burn" => Self::Burn,
            "1" | "true" | "on" | "unit" => Self::Unit,
            "scores" => Self::Scores,
            "mma" => Self::Mma,
            tiles => {
                let v: Vec<u8> = tiles.split(',').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
                match v.as_slice() {
                    [planes, seq_q, seq_kv] => Self::Tiles { planes: *planes, seq_q: *seq_q, seq_kv: *seq_kv },
                    _ => return None,
                }
            }
        };
        choice.is_valid().then_some(choice)
    }

    fn pack(self) -> u32 {
        match self {
            Self::Burn => 1,
            Self::Unit => 2,
            Self::Scores => 4,
            Self::Auto => 5,
            Self::Mma => 6,
            Self::Tiles { planes, seq_q, seq_kv } => 3 | (planes as u32) << 8 | (seq_q as u32) << 16 | (seq_kv as u32) << 24,
        }
    }

    fn unpack(v: u32) -> Self {
        match v & 0xff {
            1 => Self::Burn,
            2 => Self::Unit,
            4 => Self::Scores,
            5 => Self::Auto,
            6 => Self::Mma,
            _ => Self::Tiles { planes: (v >> 8) as u8, seq_q: (v >> 16) as u8, seq_kv: (v >> 24) as u8 },
        }
    }
}

/// The head dimensions at which [`FlashAttention::Tiles`] runs: those its outputs were checked
/// at on CUDA (CLIP's 64; at 16 they were wrong, docs/parity.md session 22).
pub const TILES_HEAD_DIMS: [usize; 1] = [64];

/// 0 = not read from the environment yet.
static FLASH_ATTENTION: AtomicU32 = AtomicU32::new(0);

/// The [`FlashAttention`] choice for every later call; `false` (nothing changed) when invalid.
pub fn set_flash_attention(choice: FlashAttention) -> bool {
    if choice.is_valid() {
        FLASH_ATTENTION.store(choice.pack(), Ordering::Relaxed);
    }
    choice.is_valid()
}

/// The current [`FlashAttention`] choice (an invalid `PHI3V_FLASH_ATTENTION` leaves the default).
pub fn flash_attention_choice() -> FlashAttention {
    match FLASH_ATTENTION.load(Ordering::Relaxed) {
        0 => {
            let choice = std::env::var("PHI3V_FLASH_ATTENTION").ok().and_then(|v| FlashAttention::parse(&v)).unwrap_or(FlashAttention::Auto);
            set_flash_attention(choice);
            choice
        }
        v => FlashAttention::unpack(v),
    }
}

/// Why a CubeCL routine at a chosen tiling did not run (each distinct reason once, at most 256),
/// and how many times it did not (every refusal, repeats included).
struct Refusals(std::sync::Mutex<Vec<String>>, std::sync::atomic::AtomicUsize);

impl Refusals {
    const fn new() -> Self {
        Self(std::sync::Mutex::new(Vec::new()), std::sync::atomic::AtomicUsize::new(0))
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.1.load(Ordering::Relaxed)
    }

    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    fn record(&self, reason: String) {
        self.1.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.0.lock()
            && r.len() < 256
            && !r.contains(&reason)
        {
            r.push(reason);
        }
    }
}

static FLASH_REFUSALS: Refusals = Refusals::new();
static MATMUL_REFUSALS: Refusals = Refusals::new();

/// Why [`FlashAttention::Tiles`] took Burn's attention instead since the process started: the
/// tensor-core routine's setup errors, each distinct one once, with the tiling it refused.
pub fn flash_attention_refusals() -> Vec<String> {
    FLASH_REFUSALS.list()
}

/// Records a refusal for [`flash_attention_refusals`].
#[cfg_attr(not(feature = "cube"), allow(dead_code))]
pub(crate) fn refuse_flash_attention(reason: String) {
    FLASH_REFUSALS.record(reason);
}

/// Why [`Kernels::tiled_matmul`] took Burn's matmul instead since the process started: the
/// routine's setup errors, each distinct one once, with the tiling and problem it refused.
pub fn matmul_tiling_refusals() -> Vec<String> {
    MATMUL_REFUSALS.list()
}

/// How many calls of [`Kernels::tiled_matmul`] took Burn's matmul instead since the process
/// started (repeats of one refusal included, unlike [`matmul_tiling_refusals`]).
pub fn matmul_tiling_refusal_count() -> usize {
    MATMUL_REFUSALS.count()
}

/// Records a refusal for [`matmul_tiling_refusals`].
#[cfg_attr(not(feature = "cube"), allow(dead_code))]
pub(crate) fn refuse_matmul_tiling(reason: String) {
    MATMUL_REFUSALS.record(reason);
}

static BLAS_REFUSALS: Refusals = Refusals::new();
static BLAS_PRODUCTS: LaunchCount = LaunchCount::new();

/// Why [`Kernels::blas_matmul`] refused since the process started (cuBLAS not found, a dtype
/// or layout it does not take, a failing call), each distinct reason once.
pub fn blas_matmul_refusals() -> Vec<String> {
    BLAS_REFUSALS.list()
}

/// How many products [`Kernels::blas_matmul`] computed since the process started.
pub fn blas_matmul_count() -> usize {
    BLAS_PRODUCTS.get()
}

/// How many attentions [`Kernels::mma_attention`]'s kernel computed since the process started.
pub fn mma_attention_count() -> usize {
    MMA_ATTENTIONS.get()
}

/// How many of [`mma_attention_count`]'s attentions kept their scores in register fragments
/// (`mma_attention_fragments`).
pub fn mma_attention_fragment_count() -> usize {
    MMA_ATTENTION_FRAGMENTS.get()
}

/// How many of [`mma_attention_fragment_count`]'s attentions copied their keys and values
/// into shared memory asynchronously (`mma_attention_copies`).
pub fn mma_attention_copy_count() -> usize {
    MMA_ATTENTION_COPIES.get()
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn refuse_blas_matmul(reason: String) {
    BLAS_REFUSALS.record(reason);
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn count_blas_matmul(ordering: BlasOrdering) {
    BLAS_PRODUCTS.add();
    if ordering != BlasOrdering::Host {
        BLAS_STREAM_PRODUCTS.add();
    }
    if ordering == BlasOrdering::Queued {
        BLAS_QUEUED_PRODUCTS.add();
    }
}

static BLAS_EPILOGUES: LaunchCount = LaunchCount::new();

/// How many of [`blas_matmul_count`]'s products added a bias or residual in their epilogue
/// ([`Kernels::blas_linear`]).
pub fn blas_epilogue_count() -> usize {
    BLAS_EPILOGUES.get()
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn count_blas_epilogue(ordering: BlasOrdering) {
    BLAS_EPILOGUES.add();
    if ordering == BlasOrdering::Queued {
        BLAS_QUEUED_EPILOGUES.add();
    }
}

static BLAS_QUEUED_EPILOGUES: LaunchCount = LaunchCount::new();

/// How many of [`blas_epilogue_count`]'s products were queued for CubeCL's device thread
/// ([`BlasOrdering::Queued`]).
pub fn blas_epilogue_queued_count() -> usize {
    BLAS_QUEUED_EPILOGUES.get()
}

static BLAS_STREAM_PRODUCTS: LaunchCount = LaunchCount::new();
static BLAS_QUEUED_PRODUCTS: LaunchCount = LaunchCount::new();

/// How many of [`blas_matmul_count`]'s products ran on CubeCL's stream
/// ([`BlasOrdering::Stream`] or [`BlasOrdering::Queued`]).
pub fn blas_matmul_stream_count() -> usize {
    BLAS_STREAM_PRODUCTS.get()
}

/// How many of [`blas_matmul_stream_count`]'s products were queued for CubeCL's device thread
/// ([`BlasOrdering::Queued`]) rather than enqueued after a round trip.
pub fn blas_matmul_queued_count() -> usize {
    BLAS_QUEUED_PRODUCTS.get()
}

/// How a [`Kernels::blas_matmul`] product on CUDA is ordered with CubeCL's kernels
/// (`PHI3V_CUBLAS_ORDER`: `stream`, the default, `queued` or `host`; [`set_blas_ordering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlasOrdering {
    /// By the host: CubeCL's stream is synchronised, cuBLAS runs on a stream of its own, which
    /// is synchronised before the output is handed back (~70–120 µs per product on the H100).
    Host,
    /// The default: on CubeCL's own stream (read from the tensors' resources, which name it
    /// only with the workspace's cubecl-cuda patch, `patches/cubecl-cuda`), no host
    /// synchronisation; the resources are asked for from the calling thread, three round trips
    /// to CubeCL's device thread (~45 µs of host time per product on the H200). Products whose
    /// three tensors are not on one stream, or whose stream is not named, are ordered by the
    /// host. On the H200 (docs/kernels.md session 21) a 1024 × 3072 → 9216 product took 84.8 µs
    /// against the host ordering's 146.8 (PyTorch 81.8), and a phi3v-128k prefill of 1024 tokens
    /// 21.5 ms against 41.6.
    Stream,
    /// As [`BlasOrdering::Stream`], but the resource look-ups and the cuBLAS call are queued
    /// for CubeCL's device thread like a kernel launch, so the calling thread does not wait
    /// (`kernels/cublas.rs`; needs the `queued-blas` feature and the workspace's cubecl-runtime
    /// patch, else it is [`BlasOrdering::Stream`]). The first product of each shape, dtype,
    /// layout and streams takes the round trip, so that a refusal still falls back to Burn's
    /// matmul. Opt-in (`PHI3V_CUBLAS_ORDER=queued`) until it has run on a GPU (written in
    /// session 23, when no GPU was lent; docs/kernels.md).
    Queued,
}

static BLAS_ORDERING: AtomicUsize = AtomicUsize::new(0);

/// Sets the [`BlasOrdering`] for the products that follow.
pub fn set_blas_ordering(ordering: BlasOrdering) {
    BLAS_ORDERING.store(1 + ordering as usize, Ordering::Relaxed);
}

/// The current [`BlasOrdering`] (`PHI3V_CUBLAS_ORDER` until [`set_blas_ordering`]: `host`,
/// `queued`, else [`BlasOrdering::Stream`]).
pub fn blas_ordering() -> BlasOrdering {
    match BLAS_ORDERING.load(Ordering::Relaxed) {
        0 => {
            let ordering = match std::env::var("PHI3V_CUBLAS_ORDER").as_deref().map(str::trim) {
                Ok("host") => BlasOrdering::Host,
                Ok("queued") => BlasOrdering::Queued,
                _ => BlasOrdering::Stream,
            };
            set_blas_ordering(ordering);
            ordering
        }
        1 => BlasOrdering::Host,
        2 => BlasOrdering::Stream,
        _ => BlasOrdering::Queued,
    }
}

/// How many times since the process started a kernel that writes a KV cache in place
/// ([`Kernels::rotary_append`], [`Kernels::rotary_write_paged`]) found the buffer held by
/// another tensor and wrote into a copy of it instead. A decode loop that owns its cache keeps
/// this at zero; each copy moves the whole buffer.
pub fn shared_buffer_copies() -> usize {
    SHARED_BUFFER_COPIES.get()
}

pub(crate) static SHARED_BUFFER_COPIES: LaunchCount = LaunchCount::new();

/// Whether [`Kernels::flash_attention`] runs one of this crate's choices rather than Burn's
/// attention under [`KernelPolicy::Verified`] (see [`flash_attention_choice`]).
pub fn flash_attention_opted_in() -> bool {
    flash_attention_choice() != FlashAttention::Burn
}

/// [`Kernels::decode_attention`] on tensors: one query row (`q`'s third dimension is 1);
/// composed when [`fused_kernels`] is off or there are several query rows.
///
/// The kernel keeps `batch · heads · keys` f32 scores; a batch whose scores would exceed
/// [`DECODE_SCORES`] runs in slices of batch rows (a single row always runs whole).
pub fn decode_attention<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    if !kernel_on("decode_attention") || q.dims()[2] != 1 {
        return composed::decode_attention(q, k, v);
    }
    decode_attention_in_slices(q, k, v, DECODE_SCORES)
}

/// [`Kernels::paged_decode_attention`] on tensors (composed when the `decode_attention` kernel
/// is off).
///
/// # Shapes
/// `q`: `[rows, heads, head_dim]`; `k_pool`, `v_pool`: `[slots, kv_heads, head_dim]`;
/// `block_tables`: `[rows, blocks]`; `lengths`: `[rows]` → `[rows, heads, head_dim]`
pub fn paged_decode_attention<B: Kernels>(
    q: Tensor<B, 3>,
    k_pool: &Tensor<B, 3>,
    v_pool: &Tensor<B, 3>,
    block_tables: &Tensor<B, 2, Int>,
    lengths: &Tensor<B, 1, Int>,
    block_size: usize,
    keys: usize,
) -> Tensor<B, 3> {
    let (tables, lengths) = (block_tables.clone(), lengths.clone());
    if !kernel_on("decode_attention") {
        return composed::paged_decode_attention(q, k_pool.clone(), v_pool.clone(), tables, lengths, block_size, keys);
    }
    let f = |t: &Tensor<B, 3>| t.clone().into_primitive().tensor();
    let out = B::paged_decode_attention(f(&q), f(k_pool), f(v_pool), tables.into_primitive(), lengths.into_primitive(), block_size, keys);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`decode_attention`]'s kernel over slices of batch rows holding at most `max_scores` scores.
fn decode_attention_in_slices<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, max_scores: usize) -> Tensor<B, 4> {
    let [batch, heads, _, _] = q.dims();
    let rows = (max_scores / (heads * k.dims()[2]).max(1)).max(1);
    if batch > rows {
        let slices = (0..batch).step_by(rows).map(|start| {
            let n = rows.min(batch - start);
            let slice = |t: &Tensor<B, 4>| t.clone().narrow(0, start, n);
            decode_attention_in_slices(slice(&q), slice(&k), slice(&v), max_scores)
        });
        return Tensor::cat(slices.collect(), 0);
    }
    let out = B::decode_attention(q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Scores one decode-attention launch may hold: 2²⁴ f32 (64 MiB), under wgpu's default 128 MiB
/// limit on one storage binding (Burn's wgpu server panics past it rather than failing).
pub const DECODE_SCORES: usize = 1 << 24;

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type B = burn::backend::Flex;

    /// Slicing the batch (as a launch over too many scores does) gives the unsliced result,
    /// for slice sizes that do and do not divide the batch.
    #[test]
    fn decode_attention_in_slices_equals_one_launch() {
        let random = |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default());
        let (q, k, v) = (random([5, 2, 1, 8]), random([5, 2, 7, 8]), random([5, 2, 7, 8]));
        let whole = decode_attention_in_slices(q.clone(), k.clone(), v.clone(), usize::MAX);
        for rows in [1, 2, 3, 5] {
            let sliced = decode_attention_in_slices(q.clone(), k.clone(), v.clone(), rows * 2 * 7);
            assert_eq!(sliced.dims(), [5, 2, 1, 8]);
            let d: f32 = (sliced - whole.clone()).abs().max().into_scalar();
            assert!(d < 1e-6, "{rows} rows per slice: Δ {d}");
        }
    }
}

/// Most rows [`Kernels::skinny_linear`] takes (each unit of the GPU kernel keeps `rows × 4`
/// f32 sums in registers).
pub const SKINNY_ROWS: usize = 16;

/// The shape of the GPU kernel behind [`Kernels::skinny_linear`] and
/// [`Kernels::fused_linear`] (CubeCL backends): how many weight rows a cube (or plane) reads
/// at once, how many vector loads per weight row each lane makes when a cube's planes split
/// `d_in` (few rows), and how many of those loads a lane issues before it multiplies. Every
/// setting computes the same sums in the same order per lane; they differ in speed only
/// (docs/kernels.md). `PHI3V_SKINNY=columns,lane_vectors,depth` sets it for a process (read
/// once; an invalid value leaves the default), [`set_skinny_tuning`] at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkinnyTuning {
    /// Weight rows read together: 2, 4 (default) or 8 (even: SiLU·mul pairs gate and up rows).
    pub columns: usize,
    /// Vector loads per weight row per lane that decide how many planes split `d_in`
    /// (1–64; default 4).
    pub lane_vectors: usize,
    /// Loads per weight row a lane has in flight before its arithmetic: 1 (default), 2 or 4.
    pub depth: usize,
}

impl Default for SkinnyTuning {
    fn default() -> Self {
        Self { columns: 4, lane_vectors: 4, depth: 1 }
    }
}

impl SkinnyTuning {
    /// Whether the kernel takes these values.
    pub fn is_valid(&self) -> bool {
        matches!(self.columns, 2 | 4 | 8) && (1..=64).contains(&self.lane_vectors) && matches!(self.depth, 1 | 2 | 4)
    }

    /// `columns,lane_vectors,depth`, if valid.
    pub fn parse(s: &str) -> Option<Self> {
        let t = match *tuning_values(s)?.as_slice() {
            [columns, lane_vectors, depth] => Self { columns, lane_vectors, depth },
            _ => return None,
        };
        t.is_valid().then_some(t)
    }
}

impl PackedTuning for SkinnyTuning {
    const VARIABLE: &str = "PHI3V_SKINNY";

    fn parse(s: &str) -> Option<Self> {
        Self::parse(s)
    }

    fn is_valid(&self) -> bool {
        Self::is_valid(self)
    }

    fn pack(self) -> u32 {
        (self.columns | self.lane_vectors << 8 | self.depth << 16) as u32
    }

    fn unpack(v: u32) -> Self {
        let v = v as usize;
        Self { columns: v & 0xff, lane_vectors: (v >> 8) & 0xff, depth: v >> 16 }
    }
}

/// A kernel shape that a process reads once from an environment variable and that can be set
/// at any time ([`SkinnyTuning`], [`MmaLinearTuning`]): held packed in one `u32`, 0 meaning
/// "not read yet", so that every launch reads it without a lock.
trait PackedTuning: Copy + Default {
    /// The environment variable it is read from.
    const VARIABLE: &str;
    fn parse(s: &str) -> Option<Self>;
    fn is_valid(&self) -> bool;
    /// Never 0 for a valid value.
    fn pack(self) -> u32;
    fn unpack(v: u32) -> Self;
}

/// Stores `tuning` in `cell` for every later launch; `false` (nothing changed) when invalid.
fn store_tuning<T: PackedTuning>(cell: &AtomicU32, tuning: T) -> bool {
    if tuning.is_valid() {
        cell.store(tuning.pack(), Ordering::Relaxed);
    }
    tuning.is_valid()
}

/// The tuning in `cell`, read from its environment variable the first time (an invalid or
/// missing value gives the default).
fn load_tuning<T: PackedTuning>(cell: &AtomicU32) -> T {
    match cell.load(Ordering::Relaxed) {
        0 => {
            let t = std::env::var(T::VARIABLE).ok().and_then(|v| T::parse(&v)).unwrap_or_default();
            store_tuning(cell, t);
            t
        }
        v => T::unpack(v),
    }
}

/// Comma-separated unsigned integers (spaces around them allowed), `None` if any is not one.
fn tuning_values(s: &str) -> Option<Vec<usize>> {
    s.split(',').map(|p| p.trim().parse().ok()).collect()
}

/// 0 = not read from the environment yet.
static SKINNY_TUNING: AtomicU32 = AtomicU32::new(0);

/// The skinny kernel's shape for every later launch; `false` (nothing changed) when invalid.
pub fn set_skinny_tuning(tuning: SkinnyTuning) -> bool {
    store_tuning(&SKINNY_TUNING, tuning)
}

/// The current [`SkinnyTuning`].
pub fn skinny_tuning() -> SkinnyTuning {
    load_tuning(&SKINNY_TUNING)
}

/// The shape of the tensor-core product behind [`Kernels::skinny_linear`] and
/// [`Kernels::fused_linear`] on CubeCL backends whose device multiplies 16×16×16 tiles of the
/// dtype (f16, bf16) with f32 sums: from `min_rows` rows of `x` (to [`SKINNY_ROWS`]) the
/// product runs on tensor cores instead of the CUDA-core skinny kernel, where each weight value
/// times 10 rows is 10 multiply-adds of one lane. A cube owns 16 output columns; `planes`
/// planes split `d_in` in chunks of `chunk` values, and keep the next `depth` chunks in flight
/// while they multiply the current one, the way `reads` says ([`MmaLinearReads`]).
/// `PHI3V_MMA_LINEAR=planes,chunk,min_rows,reads[,depth]` (reads 0 global, 1 registers, 2
/// asynchronous copies, 3 register fragments: then `chunk` is the output columns per cube)
/// sets it for a process (read once; an invalid value leaves the
/// default), [`set_mma_linear_tuning`] at any time; `PHI3V_KERNELS_OFF=mma_linear` turns the
/// kernel off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmaLinearTuning {
    /// Planes per cube: 1, 2, 4, 8 or 16 (default).
    pub planes: usize,
    /// Values of `d_in` a plane stages at a time: 16, 32, 64, 128 or 256. With
    /// [`MmaLinearReads::Fragments`] (the default), the most output columns a cube owns (16, 32
    /// or 64 — the default; more take 64).
    pub chunk: usize,
    /// Fewest rows the kernel takes, 1 to [`SKINNY_ROWS`] (default 4: up to 3 rows the skinny
    /// kernel also fuses the norm before the product).
    pub min_rows: usize,
    /// How the chunks reach the tensor cores (default [`MmaLinearReads::Fragments`]).
    pub reads: MmaLinearReads,
    /// Chunks a plane has in flight ahead of the one it multiplies: 1 to 4 (the register
    /// kernel's 1, [`Self::REGISTERS`]: on the H100 deeper register rings took the registers
    /// that let a second cube share a multiprocessor, and the 10-row step was slower,
    /// docs/kernels.md session 28; the fragments' default 2). Held in
    /// registers, the chunk shrinks where they would take more than
    /// [`MMA_LINEAR_HELD_VECTORS`] vector registers per lane; copied asynchronously, where the
    /// ring of `depth + 1` chunks would not fit the device's shared memory. With
    /// [`MmaLinearReads::Fragments`], the blocks of 32 values whose loads a plane issues
    /// together (fewer where a lane would hold more than 16 weight loads).
    pub depth: usize,
}

/// How [`MmaLinearTuning`]'s planes read their chunks of the input rows and the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaLinearReads {
    /// The input rows through registers into shared memory; the weights by tensor-core loads
    /// straight from global memory (the loads of one step wait for the step before: tensor-core
    /// loads are not reordered).
    Global,
    /// Both through registers into shared memory: each lane holds its part of the next `depth`
    /// chunks, so their loads are in flight while the current chunk is multiplied.
    Registers,
    /// Both copied into a ring of `depth + 1` chunks in shared memory by asynchronous copies
    /// (`cp.async` on CUDA), with no registers held; where the device lacks them, as
    /// `Registers`.
    CopyAsync,
    /// Neither staged nor copied: each lane loads its own share of the tensor-core operands
    /// (16 bytes of a weight row per tile, 16 of each of two input rows) straight into the
    /// registers of `mma.m16n8k16` steps, and a cube owns `chunk` output columns (16, 32 or
    /// 64, sharing each input load) instead of 16; its planes split `d_in` in blocks of 32
    /// values, `depth` blocks in flight. Where the device lacks these register products (CUDA
    /// only), `d_in` is not a multiple of 32 or the buffers take no 16-byte loads, as
    /// `Registers`.
    Fragments,
}

impl MmaLinearReads {
    /// The way numbered `n` in `PHI3V_MMA_LINEAR` (0, 1, 2, 3), if any.
    pub fn from_index(n: usize) -> Option<Self> {
        [Self::Global, Self::Registers, Self::CopyAsync, Self::Fragments].get(n).copied()
    }

    /// Its number in `PHI3V_MMA_LINEAR`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Most vector loads (of up to 16 bytes) a lane of the tensor-core product holds in registers
/// for the chunks ahead ([`MmaLinearTuning::depth`]).
pub const MMA_LINEAR_HELD_VECTORS: usize = 32;

impl Default for MmaLinearTuning {
    /// Register fragments, 16 planes, cubes of up to 64 columns (fitted to whole waves of the
    /// device with `mma_fragments_waves`, on by default), 2 blocks in flight. Session 30 (H100):
    /// fragments with cubes of up to 32 columns, projections at 10 rows 134.4 µs per layer
    /// against the `cmma` register kernel's 145.0. Session 32 (H200, docs/kernels.md): whole
    /// waves from up to 64 columns, 10 parallel requests 145.5 tokens/s each (median of six
    /// runs) against 141.5 for 32 columns without waves, alternating in the same calls. Where
    /// the fragments are refused, [`Self::REGISTERS`].
    fn default() -> Self {
        Self { planes: 16, chunk: 64, min_rows: 4, reads: MmaLinearReads::Fragments, depth: 2 }
    }
}

impl MmaLinearTuning {
    /// The register kernel's shape (8 planes, chunks of 64, from 4 rows, depth 1: the fastest
    /// on the H100 in sessions 28–29), also what runs where register fragments
    /// ([`MmaLinearReads::Fragments`]) are asked for and refused.
    pub const REGISTERS: Self = Self { planes: 8, chunk: 64, min_rows: 4, reads: MmaLinearReads::Registers, depth: 1 };

    /// Whether the kernel takes these values.
    pub fn is_valid(&self) -> bool {
        matches!(self.planes, 1 | 2 | 4 | 8 | 16) && matches!(self.chunk, 16 | 32 | 64 | 128 | 256) && (1..=SKINNY_ROWS).contains(&self.min_rows) && (1..=4).contains(&self.depth)
    }

    /// `planes,chunk,min_rows,reads[,depth]` (reads 0 to 3, [`MmaLinearReads::from_index`];
    /// without `depth`, the default's), if valid.
    pub fn parse(s: &str) -> Option<Self> {
        let (planes, chunk, min_rows, reads, depth) = match *tuning_values(s)?.as_slice() {
            [planes, chunk, min_rows, reads] => (planes, chunk, min_rows, reads, Self::default().depth),
            [planes, chunk, min_rows, reads, depth] => (planes, chunk, min_rows, reads, depth),
            _ => return None,
        };
        let t = Self { planes, chunk, min_rows, reads: MmaLinearReads::from_index(reads)?, depth };
        t.is_valid().then_some(t)
    }
}

impl PackedTuning for MmaLinearTuning {
    const VARIABLE: &str = "PHI3V_MMA_LINEAR";

    fn parse(s: &str) -> Option<Self> {
        Self::parse(s)
    }

    fn is_valid(&self) -> bool {
        Self::is_valid(self)
    }

    fn pack(self) -> u32 {
        (self.planes | self.chunk << 8 | self.min_rows << 18 | self.reads.index() << 24 | self.depth << 26) as u32
    }

    fn unpack(v: u32) -> Self {
        let v = v as usize;
        // An unknown `reads` (never packed) reads as the default's.
        let reads = MmaLinearReads::from_index((v >> 24) & 3).unwrap_or(Self::default().reads);
        Self { planes: v & 0xff, chunk: (v >> 8) & 0x3ff, min_rows: (v >> 18) & 0x3f, reads, depth: (v >> 26) & 0x3f }
    }
}

/// 0 = not read from the environment yet.
static MMA_LINEAR_TUNING: AtomicU32 = AtomicU32::new(0);

/// The tensor-core product's shape for every later launch; `false` (nothing changed) when
/// invalid.
pub fn set_mma_linear_tuning(tuning: MmaLinearTuning) -> bool {
    store_tuning(&MMA_LINEAR_TUNING, tuning)
}

/// The current [`MmaLinearTuning`].
pub fn mma_linear_tuning() -> MmaLinearTuning {
    load_tuning(&MMA_LINEAR_TUNING)
}

/// How many products the tensor-core product kernel ([`MmaLinearTuning`]) computed since the
/// process started.
pub fn mma_linear_count() -> usize {
    MMA_LINEARS.get()
}

/// How many of the tensor-core products ([`mma_linear_count`]) copied their chunks
/// asynchronously ([`MmaLinearReads::CopyAsync`]) since the process started.
pub fn mma_linear_copy_count() -> usize {
    MMA_LINEAR_COPIES.get()
}

/// How many of the tensor-core products ([`mma_linear_count`]) loaded their operands straight
/// into register fragments ([`MmaLinearReads::Fragments`]) since the process started.
pub fn mma_linear_fragment_count() -> usize {
    MMA_LINEAR_FRAGMENTS.get()
}

/// How many times something happened since the process started: launches of one kernel
/// variant (for the tests to check that the variant they ask for ran: a kernel that cannot
/// take a problem falls back without a word), products by one route, copies of a shared buffer.
pub(crate) struct LaunchCount(AtomicUsize);

impl LaunchCount {
    const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) static MMA_ATTENTIONS: LaunchCount = LaunchCount::new();
pub(crate) static MMA_ATTENTION_FRAGMENTS: LaunchCount = LaunchCount::new();
pub(crate) static MMA_ATTENTION_COPIES: LaunchCount = LaunchCount::new();
pub(crate) static MMA_LINEARS: LaunchCount = LaunchCount::new();
pub(crate) static MMA_LINEAR_COPIES: LaunchCount = LaunchCount::new();
pub(crate) static MMA_LINEAR_FRAGMENTS: LaunchCount = LaunchCount::new();

/// Fewest rows [`linear`] sends to [`Kernels::skinny_linear`]: 1, or `PHI3V_SKINNY_MIN_ROWS`
/// (read once, clamped to 1..=[`SKINNY_ROWS`]). One-row products (a decode step of one
/// sequence) take the kernel too: Burn's matmul launch costs the host about five times as much
/// (docs/kernels.md, session 11); `2` sends them back to Burn's matmul.
pub fn skinny_min_rows() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("PHI3V_SKINNY_MIN_ROWS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(1, |n| n.clamp(1, SKINNY_ROWS))
    })
}

/// 0 = not read from the environment yet; else the setting + 1.
static SKINNY_MAX_ROWS: AtomicUsize = AtomicUsize::new(0);

/// Most rows [`linear`] and the fused projections send to [`Kernels::skinny_linear`] and
/// [`Kernels::fused_linear`]: [`SKINNY_ROWS`] by default, `PHI3V_SKINNY_MAX_ROWS` for a process
/// (read once, clamped to 0..=[`SKINNY_ROWS`]; 0 sends every product elsewhere), and
/// [`set_skinny_max_rows`] at any time. Products above it take the [`MatmulRows::Few`] class,
/// so that a static decode batch of 4–16 rows can run at a tensor-core tiling
/// (`PHI3V_MATMUL_FEW`) instead of the CUDA-core skinny kernel, which at 10 rows does as much
/// arithmetic per weight byte as the cores allow (docs/kernels.md, session 11).
pub fn skinny_max_rows() -> usize {
    match SKINNY_MAX_ROWS.load(Ordering::Relaxed) {
        0 => {
            let n = std::env::var("PHI3V_SKINNY_MAX_ROWS").ok().and_then(|v| v.trim().parse::<usize>().ok()).map_or(SKINNY_ROWS, |n| n.min(SKINNY_ROWS));
            set_skinny_max_rows(n);
            n
        }
        v => v - 1,
    }
}

/// Sets [`skinny_max_rows`]; `false` (and no change) above [`SKINNY_ROWS`].
pub fn set_skinny_max_rows(rows: usize) -> bool {
    let valid = rows <= SKINNY_ROWS;
    if valid {
        SKINNY_MAX_ROWS.store(rows + 1, Ordering::Relaxed);
    }
    valid
}

/// `nn.Linear` (`x · weight + bias`): [`Kernels::skinny_linear`] for [`skinny_min_rows`] to
/// [`skinny_max_rows`] rows without bias, [`Kernels::tiled_matmul`] for more rows when a
/// [`matmul_tiling`] is set for their [`MatmulRows`] class, else [`Kernels::blas_matmul`] from
/// [`blas_min_rows`] rows where the backend has a vendor BLAS, Burn's `linear` otherwise (and
/// when [`fused_kernels`] is off).
///
/// # Shapes
/// `x`: `[..., d_in]`; `weight`: `[d_in, d_out]`; `bias`: `[d_out]` → `[..., d_out]`
pub fn linear<B: Kernels, const D: usize>(x: Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Tensor<B, D> {
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = x.shape().num_elements() / d_in.max(1);
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    let x = x.reshape([rows, d_in]);
    let add_bias = |y: Tensor<B, 2>| match bias {
        Some(b) => y + b.clone().unsqueeze_dim(0),
        None => y,
    };
    // A tiling set for the product's row class (`PHI3V_MATMUL`, `PHI3V_MATMUL_FEW`) first: the
    // user asked for it.
    if let Some(tiling) = row_class_tiling(rows) {
        return add_bias(tiled_matmul(x, weight.clone(), tiling)).reshape(out_dims);
    }
    // The vendor's BLAS for the products of many rows (prefill, the vision tower, static and
    // engine decode batches of 64 sequences or more; see `Kernels::blas_matmul`), the bias in
    // its epilogue where it can. Fewer rows keep the kernels below.
    if rows >= blas_min_rows() {
        if let Some(bias) = bias
            && let Some(y) = blas_epilogue(&x, weight, Some(bias), None)
        {
            return y.reshape(out_dims);
        }
        if let Some(y) = blas_matmul(x.clone(), weight.clone()) {
            return add_bias(y).reshape(out_dims);
        }
    }
    if bias.is_some() || !skinny(rows) {
        // As one [rows, d_in] product: Burn's `linear` on [batch, seq, d_in] broadcasts the
        // weight into a batched product, which at one token per row (a static decode batch)
        // is `batch` products of one row, each reading the whole weight (64 rows on the H200:
        // `gate_up_proj` 1443 µs instead of ~80, docs/kernels.md session 15).
        return burn::tensor::module::linear(x, weight.clone(), bias.cloned()).reshape(out_dims);
    }
    let out = B::skinny_linear(x.into_primitive().tensor(), weight.clone().into_primitive().tensor());
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape(out_dims)
}

/// Fewest rows of a product [`linear`] hands the vendor's BLAS: [`BLAS_STREAM_MIN_ROWS`] when
/// its products run on the backend's stream ([`BlasOrdering::Stream`], [`BlasOrdering::Queued`]),
/// [`MATMUL_MANY_ROWS`] when the host orders them (its syncs cost more than cuBLAS gains on
/// 64-row products and 10-row decode steps: docs/kernels.md session 20). `PHI3V_BLAS_MIN_ROWS`
/// (read once, at least 1) sets it for a process under any ordering, to measure cuBLAS on
/// fewer rows (with `PHI3V_SKINNY_MAX_ROWS=0` for the products the skinny kernels take).
pub fn blas_min_rows() -> usize {
    static SET: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let set = *SET.get_or_init(|| std::env::var("PHI3V_BLAS_MIN_ROWS").ok().and_then(|v| v.trim().parse::<usize>().ok()).map(|n| n.max(1)));
    set.unwrap_or(match blas_ordering() {
        BlasOrdering::Stream | BlasOrdering::Queued => BLAS_STREAM_MIN_ROWS,
        BlasOrdering::Host => MATMUL_MANY_ROWS,
    })
}

/// Fewest rows of a product [`linear`] hands the vendor's BLAS under [`BlasOrdering::Stream`]:
/// on the H200 cuBLAS on CubeCL's stream took 47–50 µs for the 64-row products of a decode
/// step (3072 → 9216, 3072 → 16384, 8192 → 3072) where Burn's matmul and the model's kernels
/// took 83–154 (docs/kernels.md session 21). Between 17 and 63 rows is not measured.
pub const BLAS_STREAM_MIN_ROWS: usize = 64;

/// `residual + linear(x, weight, bias)`: on many rows, the vendor's BLAS with the bias and the
/// residual added in the product's epilogue (see [`Kernels::blas_linear`]), else [`linear`] and
/// an add.
///
/// # Shapes
/// `x`: `[..., d_in]`; `weight`: `[d_in, d_out]`; `bias`: `[d_out]`; `residual`: `[..., d_out]`
/// → `[..., d_out]`
pub fn linear_residual<B: Kernels, const D: usize>(x: Tensor<B, D>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>, residual: Tensor<B, D>) -> Tensor<B, D> {
    let d_in = weight.dims()[0];
    let rows = x.shape().num_elements() / d_in.max(1);
    let dims = residual.dims();
    // A tiling set for the row class takes the product (see `linear`).
    if row_class_tiling(rows).is_none() && rows >= blas_min_rows() {
        let flat = |t: &Tensor<B, D>, d: usize| t.clone().reshape([rows, d]);
        if let Some(y) = blas_epilogue(&flat(&x, d_in), weight, bias, Some(&flat(&residual, dims[D - 1]))) {
            return y.reshape(dims);
        }
    }
    residual + linear(x, weight, bias)
}

/// The tiling set for the row class of a product over `rows` rows (`PHI3V_MATMUL`,
/// `PHI3V_MATMUL_FEW`, [`set_matmul_tiling`]), which [`linear`] runs before anything else;
/// `None` where none is set or the model's kernels are off.
fn row_class_tiling(rows: usize) -> Option<MatmulTiling> {
    MatmulRows::of(rows).filter(|_| fused_kernels()).and_then(matmul_tiling)
}

/// [`Kernels::blas_linear`] on tensors where `blas_matmul` and `blas_epilogue` are on
/// ([`kernel_on`]) and it runs; `None` otherwise (the tensors handed over are clones: the
/// caller's stay as they were).
fn blas_epilogue<B: Kernels>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>, residual: Option<&Tensor<B, 2>>) -> Option<Tensor<B, 2>> {
    if !kernel_on("blas_matmul") || !kernel_on("blas_epilogue") {
        return None;
    }
    let tensor = |t: Tensor<B, 2>| t.into_primitive().tensor();
    let bias = bias.map(|b| b.clone().into_primitive().tensor());
    let y = B::blas_linear(tensor(x.clone()), tensor(weight.clone()), bias, residual.cloned().map(tensor))?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// [`Kernels::blas_matmul`] on tensors where its kernel is on ([`kernel_on`]) and it runs;
/// `None` otherwise.
fn blas_matmul<B: Kernels, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Option<Tensor<B, D>> {
    if !kernel_on("blas_matmul") {
        return None;
    }
    vendor_matmul(lhs, rhs)
}

/// [`Kernels::blas_matmul`] on tensors, whatever the policy (to measure it: `phi3v bench
/// matmul`'s `blas` choice); `None` where the backend has no vendor BLAS or it refused.
pub fn vendor_matmul<B: Kernels, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Option<Tensor<B, D>> {
    B::blas_matmul(lhs.into_primitive().tensor(), rhs.into_primitive().tensor()).map(|y| Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// [`Kernels::tiled_matmul`] on tensors.
///
/// # Shapes
/// `lhs`: `[m, k]`; `rhs`: `[k, n]` → `[m, n]`
pub fn tiled_matmul<B: Kernels>(lhs: Tensor<B, 2>, rhs: Tensor<B, 2>, tiling: MatmulTiling) -> Tensor<B, 2> {
    let out = B::tiled_matmul(lhs.into_primitive().tensor(), rhs.into_primitive().tensor(), tiling);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Whether a product over `rows` rows takes [`Kernels::skinny_linear`] (see [`linear`]).
fn skinny(rows: usize) -> bool {
    kernel_on("skinny_linear") && (skinny_min_rows()..=skinny_max_rows()).contains(&rows)
}

/// What follows a product in [`fused`].
enum Then<B: Backend> {
    Nothing,
    Residual(Tensor<B, 3>),
    SiluMul,
}

/// `then(linear(norm(x)))`: [`Kernels::fused_linear`] where [`linear`] takes the skinny
/// kernel (and `fused_linear` is on), else [`rms_norm`], [`linear`] and the residual add or
/// [`silu_mul`] one after the other.
fn fused<B: Kernels>(x: Tensor<B, 3>, weight: &Tensor<B, 2>, norm: Option<(&Tensor<B, 1>, f64)>, then: Then<B>) -> Tensor<B, 3> {
    let [b, s, d_in] = x.dims();
    let d_out = weight.dims()[1];
    let rows = b * s;
    if !kernel_on("fused_linear") || !skinny(rows) {
        let x = match norm {
            Some((w, eps)) => rms_norm(x, w, eps),
            None => x,
        };
        return match then {
            Then::Nothing => linear(x, weight, None),
            Then::Residual(r) => linear_residual(x, weight, None, r),
            Then::SiluMul => silu_mul(linear(x, weight, None)),
        };
    }
    let flat = |t: Tensor<B, 3>, d: usize| t.reshape([rows, d]).into_primitive().tensor();
    let (epilogue, width) = match then {
        Then::Nothing => (Epilogue::None, d_out),
        Then::Residual(r) => (Epilogue::Residual(flat(r, d_out)), d_out),
        Then::SiluMul => (Epilogue::SiluMul, d_out / 2),
    };
    let norm = norm.map(|(w, eps)| (w.clone().into_primitive().tensor(), eps));
    let out = B::fused_linear(flat(x, d_in), weight.clone().into_primitive().tensor(), norm, epilogue);
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape([b, s, width])
}

/// `linear(rms_norm(x))` (a norm and the projection after it, no bias), in one launch on
/// a few rows (see [`Kernels::fused_linear`]).
///
/// # Shapes
/// `x`: `[batch, seq, d_in]`; `norm`: `[d_in]`; `weight`: `[d_in, d_out]` → `[batch, seq, d_out]`
pub fn norm_linear<B: Kernels>(x: Tensor<B, 3>, norm: &Tensor<B, 1>, eps: f64, weight: &Tensor<B, 2>) -> Tensor<B, 3> {
    fused(x, weight, Some((norm, eps)), Then::Nothing)
}

/// `silu_mul(linear(rms_norm(x)))`: the norm before `Phi3MLP` and its `gate_up_proj` with
/// `up · SiLU(gate)` after, in one launch on a few rows (see [`Kernels::fused_linear`]).
///
/// # Shapes
/// `x`: `[batch, seq, d_in]`; `norm`: `[d_in]`; `weight`: `[d_in, 2 · inter]` → `[batch, seq, inter]`
pub fn norm_linear_silu_mul<B: Kernels>(x: Tensor<B, 3>, norm: &Tensor<B, 1>, eps: f64, weight: &Tensor<B, 2>) -> Tensor<B, 3> {
    fused(x, weight, Some((norm, eps)), Then::SiluMul)
}

/// `residual + linear(x)` (no bias), in one launch on a few rows (see [`Kernels::fused_linear`]).
///
/// # Shapes
/// `x`: `[batch, seq, d_in]`; `weight`: `[d_in, d_out]`; `residual`: `[batch, seq, d_out]` → same
pub fn linear_add<B: Kernels>(x: Tensor<B, 3>, weight: &Tensor<B, 2>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
    fused(x, weight, None, Then::Residual(residual))
}

#[cfg(test)]
mod kernel_switch_tests {
    use super::{KERNEL_NAMES, fused_kernels, kernel_bit, kernel_on, set_kernel_on};

    #[test]
    fn each_kernel_has_a_bit_of_its_own_and_switches() {
        let bits: Vec<u32> = KERNEL_NAMES.iter().map(|n| kernel_bit(n).expect("listed")).collect();
        assert_eq!(bits.iter().fold(0, |m, b| m | b).count_ones() as usize, KERNEL_NAMES.len());
        assert!(!set_kernel_on("no_such_kernel", false));
        assert!(kernel_on("no_such_kernel") == fused_kernels(), "names not listed are never off");
        // A CUDA-only kernel: flipping it touches no test on this machine.
        let name = "mma_linear";
        let before = kernel_on(name);
        assert!(set_kernel_on(name, true));
        assert_eq!(kernel_on(name), fused_kernels());
        assert!(set_kernel_on(name, false));
        assert!(!kernel_on(name));
        assert!(set_kernel_on(name, before));
        assert_eq!(kernel_on(name), before);
    }
}

#[cfg(test)]
mod mma_linear_tuning_tests {
    use super::{MmaLinearReads, MmaLinearTuning, PackedTuning, SkinnyTuning};

    #[test]
    fn tunings_parse_and_pack_round_trip() {
        let t = MmaLinearTuning::parse("16, 256, 10, 0").expect("valid");
        assert_eq!(t, MmaLinearTuning { planes: 16, chunk: 256, min_rows: 10, reads: MmaLinearReads::Global, depth: MmaLinearTuning::default().depth });
        let deep = MmaLinearTuning::parse("4,32,16,1,4").expect("valid");
        assert_eq!(deep, MmaLinearTuning { planes: 4, chunk: 32, min_rows: 16, reads: MmaLinearReads::Registers, depth: 4 });
        let copied = MmaLinearTuning::parse("8,128,4,2,3").expect("valid");
        assert_eq!(copied, MmaLinearTuning { planes: 8, chunk: 128, min_rows: 4, reads: MmaLinearReads::CopyAsync, depth: 3 });
        let fragments = MmaLinearTuning::parse("16,32,4,3,2").expect("valid");
        assert_eq!(fragments, MmaLinearTuning { planes: 16, chunk: 32, min_rows: 4, reads: MmaLinearReads::Fragments, depth: 2 });
        for t in [t, deep, copied, fragments, MmaLinearTuning::default(), MmaLinearTuning { planes: 1, chunk: 16, min_rows: 1, reads: MmaLinearReads::Global, depth: 1 }] {
            assert_eq!(MmaLinearTuning::unpack(t.pack()), t);
            assert_ne!(t.pack(), 0, "0 means not read yet");
        }
    }

    #[test]
    fn skinny_tunings_parse_and_pack_round_trip() {
        let t = SkinnyTuning::parse(" 8, 64, 4").expect("valid");
        assert_eq!(t, SkinnyTuning { columns: 8, lane_vectors: 64, depth: 4 });
        for t in [t, SkinnyTuning::default(), SkinnyTuning { columns: 2, lane_vectors: 1, depth: 1 }] {
            assert_eq!(SkinnyTuning::unpack(t.pack()), t);
            assert_ne!(t.pack(), 0, "0 means not read yet");
        }
        for s in ["", "4,4", "3,4,1", "4,0,1", "4,65,1", "4,4,3", "4,4,1,1", "x,4,1"] {
            assert_eq!(SkinnyTuning::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn invalid_tunings_are_refused() {
        for s in ["", "8,64,4", "8,64,4,4", "3,64,4,1", "8,48,4,1", "8,64,0,1", "8,64,17,1", "8,64,4,1,0", "8,64,4,1,5", "8,64,4,1,2,1", "a,64,4,1"] {
            assert_eq!(MmaLinearTuning::parse(s), None, "{s:?}");
        }
    }
}
