//! [`Kernels`] as CubeCL kernels, for every CubeCL runtime (CUDA, wgpu, ROCm, the plugin
//! runtime): one launch per step where Burn's composition takes several.

use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement,
    kernel::into_contiguous,
    ops::{numeric::empty_device_contiguous_dtype, permute},
    tensor::CubeTensor,
};
use cubecl::{calculate_cube_count_elemwise, prelude::barrier::{Barrier, copy_async}, prelude::*};

use super::{Epilogue, FlashAttention, KernelPolicy, Kernels, SkinnyTuning};

impl<R, F, I, BT> Kernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn scores_chunk_bytes(device: &Self::Device) -> usize {
        if R::name(&R::client(device)) == "cuda" { super::SCORES_CHUNK_BYTES_CUDA } else { super::SCORES_CHUNK_BYTES }
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if !runs_here(&x.client) {
            return super::default_rms_norm::<Self>(x, weight, eps);
        }
        rms_norm(x, weight, eps)
    }

    fn layer_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if !runs_here(&x.client) {
            return super::default_layer_norm::<Self>(x, weight, bias, eps);
        }
        layer_norm(x, weight, bias, eps)
    }

    fn quick_gelu(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        let width = x.meta.shape()[x.meta.shape().num_dims() - 1];
        let bias_fits = bias.as_ref().is_none_or(|b| b.dtype == x.dtype && b.meta.shape().num_elements() == width);
        if !runs_here(&x.client) || !bias_fits {
            return super::default_quick_gelu::<Self>(x, bias);
        }
        quick_gelu(x, bias)
    }

    fn add_rms_norm(x: FloatTensor<Self>, residual: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !runs_here(&x.client) || x.meta.shape() != residual.meta.shape() || x.dtype != residual.dtype {
            return super::default_add_rms_norm::<Self>(x, residual, weight, eps);
        }
        add_rms_norm(x, residual, weight, eps)
    }

    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, head_dim: usize) -> FloatTensor<Self> {
        if !runs_here(&x.client) {
            return super::default_rotary::<Self>(x, cos, sin, head_dim);
        }
        rotary(x, cos, sin, head_dim)
    }

    fn rotary_append(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        heads: usize,
        cached: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The kernel writes the buffers through their strides, values contiguous.
        let (kd, seq) = (k_cache.meta.shape().clone(), qkv.meta.shape()[1]);
        let fits = kd.num_dims() == 4
            && kd == *v_cache.meta.shape()
            && qkv.meta.shape()[2] == (heads + 2 * kd[1]) * kd[3]
            && kd[3] % 2 == 0
            && cached + seq <= kd[2]
            && k_cache.meta.strides()[3] == 1
            && v_cache.meta.strides()[3] == 1;
        if !fits || !runs_here(&qkv.client) {
            return super::default_rotary_append::<Self>(qkv, cos, sin, k_cache, v_cache, heads, cached);
        }
        rotary_append(qkv, cos, sin, k_cache, v_cache, heads, cached)
    }

    fn rotary_write_paged(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        k_pool: FloatTensor<Self>,
        v_pool: FloatTensor<Self>,
        slots: IntTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The kernel writes the pools through their strides, values contiguous (session 15's
        // first version assumed packed pools and failed the bf16 kernels test on a pitched copy).
        let pd = k_pool.meta.shape().clone();
        let fits = pd.num_dims() == 3
            && pd == *v_pool.meta.shape()
            && qkv.meta.shape()[0] == 1
            && qkv.meta.shape()[2] == (heads + 2 * pd[1]) * pd[2]
            && pd[2].is_multiple_of(2)
            && k_pool.meta.strides()[2] == 1
            && v_pool.meta.strides()[2] == 1
            && slots.meta.shape().num_elements() == qkv.meta.shape()[1];
        if !fits || !runs_here(&qkv.client) {
            return super::default_rotary_write_paged::<Self>(qkv, cos, sin, k_pool, v_pool, slots, heads);
        }
        rotary_write_paged(qkv, cos, sin, k_pool, v_pool, slots, heads)
    }

    fn silu_mul(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        // An odd last dimension (not a gate_up_proj output) has no row stride of 2 · width:
        // the composed default takes it (its halves end before the last column).
        let odd = gate_up.meta.shape().as_slice().last().is_some_and(|w| w % 2 == 1);
        if !runs_here(&gate_up.client) || odd {
            return super::default_silu_mul::<Self>(gate_up);
        }
        silu_mul(gate_up)
    }

    fn skinny_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        if !runs_here(&x.client) {
            return super::default_skinny_linear::<Self>(x, weight);
        }
        // The kernel reads the checkpoint's `[d_out, d_in]` rows: `weight` must be their
        // transposed view (what `Linear::load` makes), with at most SKINNY_ROWS rows of `x`.
        let shape = weight.meta.shape().clone();
        let transposed = weight.meta.strides()[0] == 1 && weight.meta.strides()[1] == shape[0];
        let rows = x.meta.shape()[0];
        if !transposed || rows == 0 || rows > super::SKINNY_ROWS {
            return super::default_skinny_linear::<Self>(x, weight);
        }
        skinny_linear(x, weight)
    }

    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, norm: Option<(FloatTensor<Self>, f64)>, epilogue: super::Epilogue<Self>) -> FloatTensor<Self> {
        let [rows, d_in] = [x.meta.shape()[0], x.meta.shape()[1]];
        let shape = weight.meta.shape().clone();
        let d_out = shape[1];
        let transposed = weight.meta.strides()[0] == 1 && weight.meta.strides()[1] == shape[0];
        let norm_fits = norm.as_ref().is_none_or(|(w, _)| w.meta.shape().num_elements() == d_in && w.dtype == x.dtype);
        let epilogue_fits = match &epilogue {
            super::Epilogue::None => true,
            super::Epilogue::Residual(r) => r.meta.shape().as_slice() == [rows, d_out] && r.dtype == x.dtype,
            super::Epilogue::SiluMul => d_out.is_multiple_of(2),
        };
        if !runs_here(&x.client) || !transposed || rows == 0 || rows > super::SKINNY_ROWS || !norm_fits || !epilogue_fits {
            return super::default_fused_linear::<Self>(x, weight, norm, epilogue);
        }
        // Above SKINNY_SPLIT_ROWS rows the per-element normalisation costs more arithmetic
        // than the product can hide (10 rows on the H200, session 12: `qkv_proj` 59 → 73 µs,
        // `gate_up_proj` 75 → 101 µs): the norm runs as its own kernel there, and wherever the
        // tensor-core products may take the rows (they have no norm before them).
        let (x, norm) = match norm {
            Some((w, eps)) if rows > SKINNY_SPLIT_ROWS || mma_linear_takes_rows(&x.client, x.dtype, rows) => (rms_norm(x, w, eps), None), // rows of the last dimension
            norm => (x, norm),
        };
        fused_linear::<R, F, I, BT>(x, weight, norm, epilogue)
    }

    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool) -> FloatTensor<Self> {
        let [queries, head_dim] = [q.meta.shape()[2], q.meta.shape()[3]];
        let (kv_heads, keys) = (k.meta.shape()[1], k.meta.shape()[2]);
        // The process's choice for this problem (forced: the crate's own kernel where the
        // choice is Burn's).
        let choice = match super::kernel_policy() {
            KernelPolicy::Forced => match super::flash_attention_choice().resolve() {
                FlashAttention::Burn => FlashAttention::Unit,
                choice => choice,
            },
            KernelPolicy::Verified => super::flash_attention_choice().resolve(),
            KernelPolicy::Off => FlashAttention::Burn,
        };
        if !runs_here(&q.client) {
            return super::default_flash_attention::<Self>(q, k, v, causal);
        }
        match choice {
            // `Scores` and `Mma` are chosen above this trait (`kernels::attention`); `Auto` is
            // resolved above.
            FlashAttention::Burn | FlashAttention::Scores | FlashAttention::Mma | FlashAttention::Auto => super::default_flash_attention::<Self>(q, k, v, causal),
            FlashAttention::Tiles { planes, seq_q, seq_kv } => {
                let half = matches!(q.dtype, DType::BF16 | DType::F16) && k.dtype == q.dtype && v.dtype == q.dtype;
                // Its causal outputs are wrong on CUDA at every tiling tried, through its causal
                // flag (relative error ~1.4, kernels test, docs/kernels.md session 15) and through
                // a materialised causal mask alike (0.80, session 18): causal problems keep Burn's
                // attention (`scores` is the fast causal choice). Above FLASH_QUERIES Burn's flash
                // kernels lost accuracy (docs/parity.md, session 11): those lengths keep the
                // composed chunks.
                let fits = half
                    && kv_heads == q.meta.shape()[1]
                    && !causal
                    && queries <= crate::model::nn::FLASH_QUERIES
                    && super::TILES_HEAD_DIMS.contains(&head_dim);
                if !fits {
                    return super::default_flash_attention::<Self>(q, k, v, causal);
                }
                // Its query rows come in stages of `planes · seq_q` tiles of 16: queries short of a
                // whole stage (CLIP's 577) are padded with zero rows, whose outputs are dropped.
                let stage = planes as usize * seq_q as usize * 16;
                let pad = queries.next_multiple_of(stage) - queries;
                // The routine computes in f16 tiles and reads the queries straight into them, so
                // it refuses bf16 queries ("Query global and tile types must be the same"): bf16
                // queries go in as f16 (keys and values are cast in its shared-memory stages),
                // and the output comes back in the queries' dtype.
                let tensor = |t: FloatTensor<Self>| Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(t));
                let mut padded = tensor(q.clone());
                if pad > 0 {
                    let [b, h, _, d] = [q.meta.shape()[0], q.meta.shape()[1], queries, head_dim];
                    let zeros = Tensor::<Self, 4>::zeros([b, h, pad, d], (&q.device, q.dtype));
                    padded = Tensor::cat(vec![padded, zeros], 2);
                }
                let padded = padded.cast(DType::F16).into_primitive().tensor();
                match tiled_flash_attention(padded, k.clone(), v.clone(), planes, seq_q, seq_kv) {
                    Ok(out) => tensor(out).narrow(2, 0, queries).cast(q.dtype).into_primitive().tensor(),
                    Err(e) => {
                        super::refuse_flash_attention(format!("{planes},{seq_q},{seq_kv} on {:?}: {e}", q.meta.shape().as_slice()));
                        super::default_flash_attention::<Self>(q, k, v, causal)
                    }
                }
            }
            FlashAttention::Unit => {
                let fits = q.meta.shape()[0] * q.meta.shape()[1] <= MAX_CUBES_PER_DIM && head_dim > 0 && head_dim <= FLASH_MAX_HEAD_DIM && kv_heads > 0 && q.meta.shape()[1].is_multiple_of(kv_heads) && (!causal || keys >= queries);
                if !fits {
                    return super::default_flash_attention::<Self>(q, k, v, causal);
                }
                flash_attention(q, k, v, causal)
            }
        }
    }

    fn mma_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool, staged: bool) -> Option<FloatTensor<Self>> {
        if !runs_here(&q.client) {
            return None;
        }
        let shape = q.meta.shape().clone();
        mma_attention(q, k, v, causal, staged).map_err(|e| super::refuse_flash_attention(format!("mma on {:?}: {e}", shape.as_slice()))).ok().flatten()
    }

    fn blas_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        // cuBLAS where R is CUDA's runtime (the plugin runtime's CUDA reference plugin and
        // the other runtimes have no vendor BLAS here).
        #[cfg(feature = "cuda")]
        return super::cublas::matmul(lhs, rhs);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (lhs, rhs);
            None
        }
    }

    fn blas_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>, residual: Option<FloatTensor<Self>>) -> Option<FloatTensor<Self>> {
        // cuBLASLt where R is CUDA's runtime (as `blas_matmul`).
        #[cfg(feature = "cuda")]
        return super::cublas::linear(x, weight, bias, residual);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, weight, bias, residual);
            None
        }
    }

    fn tiled_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>, tiling: super::MatmulTiling) -> FloatTensor<Self> {
        match super::cube_tiling::tiled_matmul(lhs.clone(), rhs.clone(), tiling) {
            Ok(out) => out,
            Err(e) => {
                let problem = [lhs.meta.shape()[0], lhs.meta.shape()[1], rhs.meta.shape()[1]];
                super::refuse_matmul_tiling(format!("{tiling} on m,k,n {problem:?} ({:?}): {}", lhs.dtype, e.trim()));
                Self::float_matmul(lhs, rhs)
            }
        }
    }

    fn attention_softmax(scores: FloatTensor<Self>, scale: f64, causal: bool, keys: usize) -> FloatTensor<Self> {
        if !runs_here(&scores.client) {
            return super::default_attention_softmax::<Self>(scores, scale, causal, keys);
        }
        attention_softmax(scores, scale, causal, keys)
    }

    fn decode_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self> {
        let head_dim = q.meta.shape()[3];
        if head_dim > ROW_UNITS as usize || head_dim == 0 || !runs_here(&q.client) {
            return super::default_decode_attention::<Self>(q, k, v);
        }
        decode_attention(q, k, v)
    }

    fn paged_decode_attention(
        q: FloatTensor<Self>,
        k_pool: FloatTensor<Self>,
        v_pool: FloatTensor<Self>,
        block_tables: IntTensor<Self>,
        lengths: IntTensor<Self>,
        block_size: usize,
        keys: usize,
    ) -> FloatTensor<Self> {
        // The planes kernel where the hardware planes fit the head (no units-over-keys variant).
        let head_dim = q.meta.shape()[2];
        let lanes = decode_plane(&q.client, head_dim).filter(|_| super::kernel_on("decode_attention_planes"));
        match lanes {
            Some(lanes) if runs_here(&q.client) && block_size > 0 => paged_decode_attention(q, k_pool, v_pool, block_tables, lengths, block_size, keys, lanes),
            _ => super::default_paged_decode_attention::<Self>(q, k_pool, v_pool, block_tables, lengths, block_size, keys),
        }
    }
}

/// Whether these kernels run on `client`'s runtime under the current [`KernelPolicy`]: by
/// default only where `tests/tests/kernels.rs` has passed on a device: wgpu's WGSL and SPIR-V
/// compilers (Mesa lavapipe, 2026-12-02/03), CUDA and the CUDA-dialect plugin runtime (H200,
/// 2026-12-03, once outputs were allocated contiguous). ROCm and Metal (same C++ generator,
/// never run here) compose the steps from Burn ops unless `PHI3V_FUSED_KERNELS=1` forces the
/// kernels.
fn runs_here<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    match super::kernel_policy() {
        KernelPolicy::Off => false,
        KernelPolicy::Forced => true,
        KernelPolicy::Verified => matches!(R::name(client), "wgpu<wgsl>" | "wgpu<spirv>" | "cuda" | "plugin-cuda"),
    }
}

/// Units per cube of the row kernels (a power of two: the reduction halves it).
const ROW_UNITS: u32 = 256;

/// Cubes per dimension a launch may ask for everywhere (wgpu's and Vulkan's limit).
const MAX_CUBES_PER_DIM: usize = 65535;

/// `n` cubes, one per row: one dimension up to [`MAX_CUBES_PER_DIM`], then two (the kernels
/// end the cubes past `n`; `CUBE_POS` numbers them across both dimensions).
fn row_cubes(n: usize) -> CubeCount {
    let x = n.min(MAX_CUBES_PER_DIM);
    CubeCount::new_2d(x as u32, n.div_ceil(x.max(1)) as u32)
}

// Every kernel writes its output as a contiguous row-major buffer, so outputs are allocated
// contiguous (`empty_device_contiguous_dtype`): CubeCL's CUDA runtime lays out a plain
// `empty_device_dtype` with rows padded to an aligned pitch wherever a row's bytes are not a
// multiple of it, and a kernel writing it linearly gave wrong values at those widths (SiLU·mul at
// 77, head_dim 96, …; docs/kernels.md, 2026-12-03). Sizes and strides are scalar arguments and
// buffers are `Array`s, not `Tensor`s: CubeCL writes a tensor argument's shape and strides into
// a device buffer at every launch (a host-to-device copy before the kernel), an array's not.
// Indices are `usize` (the launch's address type, 32 or 64 bits).

// The norms read and write rows in vectors of `N` values (`vectors = width / N` per row; each
// unit strides over the row's vectors); their f32 sums take the values in another order than
// with single values, so results may differ in the last bits of f32 between vector widths.

/// One cube per row: the sum of squares in f32 (each unit strides over the row, then a tree
/// reduction in shared memory), then `x · rsqrt(mean + eps)` cast to the dtype, times `weight`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rms_norm_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    rows: usize,
    vectors: usize,
    eps: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    // Rows beyond a dimension's 65535 cubes spread over a second one (see `row_cubes`).
    if CUBE_POS >= rows {
        terminate!();
    }
    let width = N::value();
    let base = CUBE_POS * vectors;
    let unit = UNIT_POS as usize;

    // Each unit's partial sum accumulates in its shared-memory slot (a runtime variable; a
    // local initialised from a literal would be a compile-time constant in CubeCL).
    let mut sums = SharedMemory::<f32>::new(units);
    sums[unit] = f32::new(0.0);
    let mut i = unit;
    while i < vectors {
        let xv = x[base + i];
        #[unroll]
        for e in 0..width {
            let v = f32::cast_from(xv[e]);
            sums[unit] += v * v;
        }
        i += units;
    }
    let inv = inverse_rms(&mut sums, unit, vectors * width, eps);
    write_rms_normed(x, weight, output, base, unit, vectors, inv, units);
}

/// `nn.LayerNorm` over rows: one cube per row, the mean and then the biased variance in f32
/// (two tree reductions in shared memory, as the composed path's two passes), then
/// `(x − mean) · rsqrt(var + eps)` cast to the dtype, times `weight`, plus `bias`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn layer_norm_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    bias: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    rows: usize,
    vectors: usize,
    eps: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    if CUBE_POS >= rows {
        terminate!();
    }
    let width = N::value();
    let base = CUBE_POS * vectors;
    let unit = UNIT_POS as usize;
    let count = f32::cast_from(vectors * width);
    let mut sums = SharedMemory::<f32>::new(units);
    sums[unit] = f32::new(0.0);
    let mut i = unit;
    while i < vectors {
        let xv = x[base + i];
        #[unroll]
        for e in 0..width {
            sums[unit] += f32::cast_from(xv[e]);
        }
        i += units;
    }
    let mean = cube_sum(&mut sums, unit) / count;
    // Every unit has read the sum before any slot is reused.
    sync_cube();
    sums[unit] = f32::new(0.0);
    let mut k = unit;
    while k < vectors {
        let xv = x[base + k];
        #[unroll]
        for e in 0..width {
            let d = f32::cast_from(xv[e]) - mean;
            sums[unit] += d * d;
        }
        k += units;
    }
    let inv = f32::new(1.0) / f32::sqrt(cube_sum(&mut sums, unit) / count + eps);
    let mut j = unit;
    while j < vectors {
        let xv = x[base + j];
        let (wv, bv) = (weight[j], bias[j]);
        let mut out = Vector::<E, N>::empty();
        #[unroll]
        for e in 0..width {
            out[e] = E::cast_from((f32::cast_from(xv[e]) - mean) * inv) * wv[e] + bv[e];
        }
        output[base + j] = out;
        j += units;
    }
}

/// [`rms_norm_kernel`] after a residual add: each unit writes `sum = x + residual` (in the
/// dtype) over its share of the row and sums its squares, then normalises the values it wrote
/// (a unit reads back only its own writes: no barrier needed for them).
#[cube(launch_unchecked, address_type = "dynamic")]
fn add_rms_norm_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    residual: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    sum: &mut Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    rows: usize,
    vectors: usize,
    eps: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    if CUBE_POS >= rows {
        terminate!();
    }
    let width = N::value();
    let base = CUBE_POS * vectors;
    let unit = UNIT_POS as usize;
    let mut sums = SharedMemory::<f32>::new(units);
    sums[unit] = f32::new(0.0);
    let mut i = unit;
    while i < vectors {
        let s = x[base + i] + residual[base + i];
        sum[base + i] = s;
        #[unroll]
        for e in 0..width {
            let v = f32::cast_from(s[e]);
            sums[unit] += v * v;
        }
        i += units;
    }
    let inv = inverse_rms(&mut sums, unit, vectors * width, eps);
    write_rms_normed(sum, weight, output, base, unit, vectors, inv, units);
}

/// The RMS norms' last step over one unit's strided share of a row (vectors `first, first +
/// step, …` below `vectors`, the row at `base`): `x · inv` cast to the dtype, times `weight`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_rms_normed<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    base: usize,
    first: usize,
    vectors: usize,
    inv: f32,
    #[comptime] step: usize,
) {
    let mut j = first;
    while j < vectors {
        let xv = x[base + j];
        let wv = weight[j];
        let mut out = Vector::<E, N>::empty();
        #[unroll]
        for e in 0..N::value() {
            out[e] = E::cast_from(f32::cast_from(xv[e]) * inv) * wv[e];
        }
        output[base + j] = out;
        j += step;
    }
}

/// `1 / sqrt(mean + eps)` of a row whose units hold their partial sums of squares in `sums`
/// (a tree reduction over the cube; every unit gets the result).
#[cube]
fn inverse_rms(sums: &mut SharedMemory<f32>, unit: usize, width: usize, eps: f32) -> f32 {
    f32::new(1.0) / f32::sqrt(cube_sum(sums, unit) / f32::cast_from(width) + eps)
}

/// The sum of the cube's `sums` slots (each unit's partial sum), by a tree reduction; every
/// unit gets it. The cube's unit count is a power of two.
#[cube]
fn cube_sum(sums: &mut SharedMemory<f32>, unit: usize) -> f32 {
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = sums[unit + active as usize];
            sums[unit] += other;
        }
        sync_cube();
        active /= 2;
    }
    sums[0]
}

/// The address type a launch over `tensors` needs: the widest any of them requires.
fn address_type<'a, R: CubeRuntime>(tensors: impl IntoIterator<Item = &'a CubeTensor<R>>) -> AddressType {
    tensors.into_iter().map(|t| t.required_address_type()).max().unwrap_or_default()
}

/// Launch geometry of a one-unit-per-output-vector kernel over `output` (contiguous) in
/// vectors of `vector_size` values: `(units, cube_dim, cube_count, address type)`.
fn elementwise_vectors<R: CubeRuntime>(input: &CubeTensor<R>, output: &CubeTensor<R>, vector_size: usize) -> (usize, CubeDim, CubeCount, AddressType) {
    let units = output.meta.shape().num_elements() / vector_size.max(1);
    let cube_dim = CubeDim::new(&output.client, units.max(1));
    let cube_count = calculate_cube_count_elemwise(&output.client, units.max(1), cube_dim);
    (units, cube_dim, cube_count, address_type([input, output]))
}

/// Values per load of the memory-bound kernels (the softmax, quick-GELU, SiLU·mul):
/// [`load_vector_size`] for rows of `width`, or 1 when `vector_loads` is off
/// (`PHI3V_KERNELS_OFF=vector_loads`, to measure what the vectors bring).
fn vector_loads<R: CubeRuntime>(buffers: &[&CubeTensor<R>], width: usize) -> usize {
    if super::kernel_on("vector_loads") { load_vector_size(buffers, width) } else { 1 }
}

/// The norms' vector width ([`vector_loads`]) for rows of `width`, and their units per cube:
/// a power of two from 32 to [`ROW_UNITS`], no more than the row's vectors need (CLIP's 1024
/// values in vectors of 8 take 128 units, not 256 with half of them idle).
fn norm_vectors<R: CubeRuntime>(buffers: &[&CubeTensor<R>], width: usize) -> (usize, usize) {
    let vector_size = vector_loads(buffers, width);
    let units = (width / vector_size).next_power_of_two().clamp(32, ROW_UNITS as usize);
    (vector_size, units)
}

/// Rows and width of a row kernel's operand (`[..., width]`).
fn row_layout<R: CubeRuntime>(x: &CubeTensor<R>) -> (usize, usize) {
    let shape = x.meta.shape();
    let width = shape[shape.num_dims() - 1];
    (shape.num_elements() / width.max(1), width)
}

/// `Phi3RMSNorm` over the last dimension; see [`Kernels::rms_norm`].
pub(crate) fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let weight = into_contiguous(weight);
    let (rows, width) = row_layout(&x);
    let output = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    if rows == 0 || width == 0 {
        return output;
    }
    let address = address_type([&x, &output]);
    let dtype = x.dtype;
    let (vector_size, units) = norm_vectors(&[&x, &weight, &output], width);
    unsafe {
        rms_norm_kernel::launch_unchecked(
            &output.client,
            row_cubes(rows),
            CubeDim::new_1d(units as u32),
            address,
            vector_size,
            x.into_array_arg(),
            weight.into_array_arg(),
            output.clone().into_array_arg(),
            rows,
            width / vector_size,
            eps as f32,
            units,
            dtype.into(),
        )
    };
    output
}

/// `nn.LayerNorm` over the last dimension; see [`Kernels::layer_norm`].
pub(crate) fn layer_norm<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, bias: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let (x, weight, bias) = (into_contiguous(x), into_contiguous(weight), into_contiguous(bias));
    let (rows, width) = row_layout(&x);
    let output = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    if rows == 0 || width == 0 {
        return output;
    }
    let address = address_type([&x, &output]);
    let dtype = x.dtype;
    let (vector_size, units) = norm_vectors(&[&x, &weight, &bias, &output], width);
    unsafe {
        layer_norm_kernel::launch_unchecked(
            &output.client,
            row_cubes(rows),
            CubeDim::new_1d(units as u32),
            address,
            vector_size,
            x.into_array_arg(),
            weight.into_array_arg(),
            bias.into_array_arg(),
            output.clone().into_array_arg(),
            rows,
            width / vector_size,
            eps as f32,
            units,
            dtype.into(),
        )
    };
    output
}

/// The residual add and `Phi3RMSNorm` in one launch; see [`Kernels::add_rms_norm`]. `x` and
/// `residual` have the same shape and dtype.
pub(crate) fn add_rms_norm<R: CubeRuntime>(x: CubeTensor<R>, residual: CubeTensor<R>, weight: CubeTensor<R>, eps: f64) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x, residual, weight) = (into_contiguous(x), into_contiguous(residual), into_contiguous(weight));
    let (rows, width) = row_layout(&x);
    let empty = || empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
    let (sum, output) = (empty(), empty());
    if rows == 0 || width == 0 {
        return (sum, output);
    }
    let address = address_type([&x, &output]);
    let dtype = x.dtype;
    let (vector_size, units) = norm_vectors(&[&x, &residual, &weight, &sum, &output], width);
    unsafe {
        add_rms_norm_kernel::launch_unchecked(
            &output.client,
            row_cubes(rows),
            CubeDim::new_1d(units as u32),
            address,
            vector_size,
            x.into_array_arg(),
            residual.into_array_arg(),
            weight.into_array_arg(),
            sum.clone().into_array_arg(),
            output.clone().into_array_arg(),
            rows,
            width / vector_size,
            eps as f32,
            units,
            dtype.into(),
        )
    };
    (sum, output)
}

/// One unit per output value of `[batch, seq, width]` (contiguous): value `c` of a head reads
/// `c` and its partner `c ± half` of the same head (input rows at `b · x_batch + s · x_seq`,
/// values contiguous), and row `(batch, position)` of the tables.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rotary_kernel<E: Float>(
    x: &Array<E>,
    cos: &Array<E>,
    sin: &Array<E>,
    output: &mut Array<E>,
    total: usize,
    seq: usize,
    width: usize,
    x_batch: usize,
    x_seq: usize,
    #[comptime] head_dim: usize,
    #[define(E)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= total {
        terminate!();
    }
    let j = ABSOLUTE_POS % width;
    let row = ABSOLUTE_POS / width; // batch · seq + position
    let b = row / seq;
    let s = row % seq;
    let half = head_dim / 2;
    let c = j % head_dim;
    let input = b * x_batch + s * x_seq;
    let value = x[input + j];
    let table = row * head_dim + c;
    output[ABSOLUTE_POS] = rotate_value(x, input + j, value, c, half, cos, sin, table);
}

/// `value = x[at]` rotated as HF's `apply_rotary_pos_emb` does it, `value · cos + rotate_half ·
/// sin`, where `c` is its index in its head (`half` = head_dim / 2: the first half takes the
/// negated second, the second the first) and `table` its entry in the cos/sin tables. The one
/// rotation of [`rotary_kernel`], [`rotary_append_kernel`] and [`rotary_write_pool_kernel`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn rotate_value<E: Float>(x: &Array<E>, at: usize, value: E, c: usize, half: usize, cos: &Array<E>, sin: &Array<E>, table: usize) -> E {
    let rotated = if c < half { -x[at + half] } else { x[at - half] };
    value * cos[table] + rotated * sin[table]
}

/// Rotary embedding of every head; see [`Kernels::rotary`].
pub(crate) fn rotary<R: CubeRuntime>(x: CubeTensor<R>, cos: CubeTensor<R>, sin: CubeTensor<R>, head_dim: usize) -> CubeTensor<R> {
    let x = if x.meta.strides()[2] == 1 { x } else { into_contiguous(x) };
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let shape = x.meta.shape().clone();
    let (seq, width) = (shape[1], shape[2]);
    let (x_batch, x_seq) = (x.meta.strides()[0], x.meta.strides()[1]);
    let output = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let units = shape.num_elements();
    if units == 0 {
        return output;
    }
    let cube_dim = CubeDim::new(&x.client, units);
    let cube_count = calculate_cube_count_elemwise(&x.client, units, cube_dim);
    let address = address_type([&x, &output]);
    let dtype = x.dtype;
    unsafe {
        rotary_kernel::launch_unchecked(
            &output.client,
            cube_count,
            cube_dim,
            address,
            x.into_array_arg(),
            cos.into_array_arg(),
            sin.into_array_arg(),
            output.clone().into_array_arg(),
            units,
            seq,
            width,
            x_batch,
            x_seq,
            head_dim,
            dtype.into(),
        )
    };
    output
}

/// Where [`rotary_append_kernel`] reads and writes: the heads, the rows of `qkv`
/// (`[batch, seq, width]`, values contiguous) and the buffers' strides (values contiguous).
#[derive(CubeLaunch, CubeType)]
struct AppendLayout {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    seq: usize,
    /// `(heads + 2·kv_heads)·head_dim`.
    width: usize,
    /// Positions already in the buffers: the new ones go after them.
    cached: usize,
    x_batch: usize,
    x_seq: usize,
    k_batch: usize,
    k_head: usize,
    k_key: usize,
    v_batch: usize,
    v_head: usize,
    v_key: usize,
}

/// One unit per value of `qkv`: a query or key value is rotated ([`rotate_value`]) and
/// written to the queries (`[batch, heads, seq, head_dim]`, contiguous) or to the key buffer at
/// position `cached + s`; a value is copied to the value buffer there.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rotary_append_kernel<E: Float>(
    qkv: &Array<E>,
    cos: &Array<E>,
    sin: &Array<E>,
    q: &mut Array<E>,
    k_cache: &mut Array<E>,
    v_cache: &mut Array<E>,
    layout: AppendLayout,
    total: usize,
    #[define(E)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= total {
        terminate!();
    }
    let col = ABSOLUTE_POS % layout.width;
    let row = ABSOLUTE_POS / layout.width;
    let b = row / layout.seq;
    let s = row % layout.seq;
    let input = b * layout.x_batch + s * layout.x_seq;
    let value = qkv[input + col];
    let hd = layout.head_dim;
    let head = col / hd;
    let c = col % hd;
    let position = layout.cached + s;
    if head < layout.heads + layout.kv_heads {
        let half = hd / 2;
        let table = row * hd + c;
        let out = rotate_value(qkv, input + col, value, c, half, cos, sin, table);
        if head < layout.heads {
            q[((b * layout.heads + head) * layout.seq + s) * hd + c] = out;
        } else {
            let kh = head - layout.heads;
            k_cache[b * layout.k_batch + kh * layout.k_head + position * layout.k_key + c] = out;
        }
    } else {
        let vh = head - layout.heads - layout.kv_heads;
        v_cache[b * layout.v_batch + vh * layout.v_head + position * layout.v_key + c] = value;
    }
}

/// `t` itself where nothing else holds its buffer (a kernel may write it in place), else a
/// copy, counted for [`super::shared_buffer_copies`].
fn owned<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.can_mut() {
        return t;
    }
    super::SHARED_BUFFER_COPIES.add();
    t.copy()
}

/// The rotary embedding, head split and KV-cache append of a decode step; see
/// [`Kernels::rotary_append`]. A buffer something else holds is copied first.
pub(crate) fn rotary_append<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    k_cache: CubeTensor<R>,
    v_cache: CubeTensor<R>,
    heads: usize,
    cached: usize,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let qkv = if qkv.meta.strides()[2] == 1 { qkv } else { into_contiguous(qkv) };
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let (k_cache, v_cache) = (owned(k_cache), owned(v_cache));
    let [batch, seq, width] = [0, 1, 2].map(|i| qkv.meta.shape()[i]);
    let [kv_heads, head_dim] = [1, 3].map(|i| k_cache.meta.shape()[i]);
    let q = empty_device_contiguous_dtype(qkv.client.clone(), qkv.device.clone(), [batch, heads, seq, head_dim].into(), qkv.dtype);
    let units = batch * seq * width;
    if units == 0 {
        return (q, k_cache, v_cache);
    }
    let (ks, vs) = (k_cache.meta.strides().clone(), v_cache.meta.strides().clone());
    let layout = AppendLayoutLaunch::new(
        heads,
        kv_heads,
        head_dim,
        seq,
        width,
        cached,
        qkv.meta.strides()[0],
        qkv.meta.strides()[1],
        ks[0],
        ks[1],
        ks[2],
        vs[0],
        vs[1],
        vs[2],
    );
    let cube_dim = CubeDim::new(&qkv.client, units);
    let cube_count = calculate_cube_count_elemwise(&qkv.client, units, cube_dim);
    let address = address_type([&qkv, &k_cache, &v_cache, &q]);
    let dtype = qkv.dtype;
    unsafe {
        rotary_append_kernel::launch_unchecked(
            &q.client,
            cube_count,
            cube_dim,
            address,
            qkv.into_array_arg(),
            cos.into_array_arg(),
            sin.into_array_arg(),
            q.clone().into_array_arg(),
            k_cache.clone().into_array_arg(),
            v_cache.clone().into_array_arg(),
            layout,
            units,
            dtype.into(),
        )
    };
    (q, k_cache, v_cache)
}

/// Where [`rotary_write_pool_kernel`] reads and writes: the heads, the token stride of `qkv`
/// (`[1, tokens, width]`, values contiguous) and the pools' row and head strides (values
/// contiguous).
#[derive(CubeLaunch, CubeType)]
struct PoolWriteLayout {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// `(heads + 2·kv_heads)·head_dim`.
    width: usize,
    x_token: usize,
    k_row: usize,
    k_head: usize,
    v_row: usize,
    v_head: usize,
}

/// One unit per value of `qkv`: a query or key value is rotated ([`rotate_value`]) and written to the queries (`[tokens, heads, head_dim]`, contiguous) or to the key
/// pool at the token's slot (through the pools' strides); a value is copied to the value pool there.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rotary_write_pool_kernel<E: Float, I: Int>(
    qkv: &Array<E>,
    cos: &Array<E>,
    sin: &Array<E>,
    slots: &Array<I>,
    q: &mut Array<E>,
    k_pool: &mut Array<E>,
    v_pool: &mut Array<E>,
    layout: PoolWriteLayout,
    total: usize,
    #[define(E, I)] _dtypes: [StorageType; 2],
) {
    if ABSOLUTE_POS >= total {
        terminate!();
    }
    let col = ABSOLUTE_POS % layout.width;
    let token = ABSOLUTE_POS / layout.width;
    let input = token * layout.x_token;
    let value = qkv[input + col];
    let hd = layout.head_dim;
    let head = col / hd;
    let c = col % hd;
    let slot = u32::cast_from(slots[token]) as usize;
    if head < layout.heads + layout.kv_heads {
        let half = hd / 2;
        let table = token * hd + c;
        let out = rotate_value(qkv, input + col, value, c, half, cos, sin, table);
        if head < layout.heads {
            q[(token * layout.heads + head) * hd + c] = out;
        } else {
            k_pool[slot * layout.k_row + (head - layout.heads) * layout.k_head + c] = out;
        }
    } else {
        v_pool[slot * layout.v_row + (head - layout.heads - layout.kv_heads) * layout.v_head + c] = value;
    }
}

/// The rotary embedding, head split and paged-pool write of an engine pass; see
/// [`Kernels::rotary_write_paged`]. A pool something else holds is copied first.
pub(crate) fn rotary_write_paged<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    k_pool: CubeTensor<R>,
    v_pool: CubeTensor<R>,
    slots: CubeTensor<R>,
    heads: usize,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let qkv = if qkv.meta.strides()[2] == 1 { qkv } else { into_contiguous(qkv) };
    let (cos, sin, slots) = (into_contiguous(cos), into_contiguous(sin), into_contiguous(slots));
    let (k_pool, v_pool) = (owned(k_pool), owned(v_pool));
    let [tokens, width] = [qkv.meta.shape()[1], qkv.meta.shape()[2]];
    let [kv_heads, head_dim] = [k_pool.meta.shape()[1], k_pool.meta.shape()[2]];
    let q = empty_device_contiguous_dtype(qkv.client.clone(), qkv.device.clone(), [tokens, heads, head_dim].into(), qkv.dtype);
    let units = tokens * width;
    if units == 0 {
        return (q, k_pool, v_pool);
    }
    let (ks, vs) = (k_pool.meta.strides().clone(), v_pool.meta.strides().clone());
    let layout = PoolWriteLayoutLaunch::new(heads, kv_heads, head_dim, width, qkv.meta.strides()[1], ks[0], ks[1], vs[0], vs[1]);
    let cube_dim = CubeDim::new(&qkv.client, units);
    let cube_count = calculate_cube_count_elemwise(&qkv.client, units, cube_dim);
    let address = address_type([&qkv, &k_pool, &v_pool, &q]);
    let dtypes = [qkv.dtype.into(), slots.dtype.into()];
    unsafe {
        rotary_write_pool_kernel::launch_unchecked(
            &q.client,
            cube_count,
            cube_dim,
            address,
            qkv.into_array_arg(),
            cos.into_array_arg(),
            sin.into_array_arg(),
            slots.into_array_arg(),
            q.clone().into_array_arg(),
            k_pool.clone().into_array_arg(),
            v_pool.clone().into_array_arg(),
            layout,
            units,
            dtypes,
        )
    };
    (q, k_pool, v_pool)
}

/// One unit per vector of `N` output values of `[rows, width]` (`vectors = width / N` per row):
/// `up · SiLU(gate)` with SiLU in f32, where row `r` of the input holds `[gate, up]`
/// (`2 · width` values).
#[cube(launch_unchecked, address_type = "dynamic")]
fn silu_mul_kernel<E: Float, N: Size>(gate_up: &Array<Vector<E, N>>, output: &mut Array<Vector<E, N>>, total: usize, vectors: usize, #[define(E)] _dtype: StorageType) {
    if ABSOLUTE_POS >= total {
        terminate!();
    }
    let row = ABSOLUTE_POS / vectors;
    let i = ABSOLUTE_POS % vectors;
    let gate = gate_up[row * 2 * vectors + i];
    let up = gate_up[row * 2 * vectors + vectors + i];
    let mut out = Vector::<E, N>::empty();
    #[unroll]
    for e in 0..N::value() {
        let g = f32::cast_from(gate[e]);
        out[e] = up[e] * E::cast_from(g / (f32::new(1.0) + f32::exp(-g)));
    }
    output[ABSOLUTE_POS] = out;
}

/// `up · SiLU(gate)` over the two halves of the last dimension; see [`Kernels::silu_mul`].
pub(crate) fn silu_mul<R: CubeRuntime>(gate_up: CubeTensor<R>) -> CubeTensor<R> {
    let gate_up = into_contiguous(gate_up);
    let mut shape = gate_up.meta.shape().clone();
    let last = shape.num_dims() - 1;
    let whole = shape[last];
    shape[last] /= 2;
    let width = shape[last];
    let output = empty_device_contiguous_dtype(gate_up.client.clone(), gate_up.device.clone(), shape, gate_up.dtype);
    // Vectors where the halves start on whole vectors (an odd whole keeps single values).
    let vector_size = if whole.is_multiple_of(2) { vector_loads(&[&gate_up, &output], width) } else { 1 };
    let (units, cube_dim, cube_count, address) = elementwise_vectors(&gate_up, &output, vector_size);
    if units == 0 {
        return output;
    }
    let dtype: DType = gate_up.dtype;
    unsafe {
        silu_mul_kernel::launch_unchecked(
            &output.client,
            cube_count,
            cube_dim,
            address,
            vector_size,
            gate_up.into_array_arg(),
            output.clone().into_array_arg(),
            units,
            width / vector_size,
            dtype.into(),
        )
    };
    output
}

/// One unit per vector of `N` values: `x · σ(1.702 · x)` with the sigmoid in f32, of `x + bias`
/// (added in f32; `bias` holds a row's `row_vectors` vectors) when `has_bias`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn quick_gelu_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    bias: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    total: usize,
    row_vectors: usize,
    #[comptime] has_bias: bool,
    #[define(E)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= total {
        terminate!();
    }
    let xv = x[ABSOLUTE_POS];
    let mut bv = Vector::<E, N>::empty().fill(E::from_int(0));
    if has_bias {
        bv = bias[ABSOLUTE_POS % row_vectors];
    }
    let mut out = Vector::<E, N>::empty();
    #[unroll]
    for e in 0..N::value() {
        let v = f32::cast_from(xv[e]) + f32::cast_from(bv[e]);
        out[e] = E::cast_from(v / (f32::new(1.0) + f32::exp(f32::new(-1.702) * v)));
    }
    output[ABSOLUTE_POS] = out;
}

/// CLIP's quick-GELU, of `x + bias` with a bias of `x`'s last dimension and dtype; see
/// [`Kernels::quick_gelu`].
pub(crate) fn quick_gelu<R: CubeRuntime>(x: CubeTensor<R>, bias: Option<CubeTensor<R>>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().clone();
    let width = shape[shape.num_dims() - 1];
    let output = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    let has_bias = bias.is_some();
    // Without a bias the kernel is handed `x` again and never reads it.
    let bias = bias.map_or_else(|| x.clone(), into_contiguous);
    let vector_size = vector_loads(&[&x, &output, &bias], width);
    let (units, cube_dim, cube_count, address) = elementwise_vectors(&x, &output, vector_size);
    if units == 0 {
        return output;
    }
    let dtype: DType = x.dtype;
    let row_vectors = width / vector_size;
    unsafe {
        quick_gelu_kernel::launch_unchecked(
            &output.client,
            cube_count,
            cube_dim,
            address,
            vector_size,
            x.into_array_arg(),
            bias.into_array_arg(),
            output.clone().into_array_arg(),
            units,
            row_vectors,
            has_bias,
            dtype.into(),
        )
    };
    output
}

/// Sentinel below every score (the scores are finite: no mask).
const NO_SCORE: f32 = -3.0e38;

/// Where a decode attention reads its operands: heads and keys, and the strides of `q`
/// (`[batch, heads, 1, head_dim]`) and of `k`, `v` (`[batch, kv_heads, keys, head_dim]`, last
/// stride 1), in elements.
#[derive(CubeLaunch, CubeType)]
struct DecodeLayout {
    heads: usize,
    /// Query heads per key/value head.
    group: usize,
    keys: usize,
    q_batch: usize,
    q_head: usize,
    k_batch: usize,
    k_head: usize,
    k_key: usize,
    v_batch: usize,
    v_head: usize,
    v_key: usize,
}

/// A decode attention's [`DecodeLayout`] on the host, strides in elements.
#[derive(Clone, Copy)]
struct DecodeStrides {
    heads: usize,
    group: usize,
    keys: usize,
    /// `q`'s batch and head strides.
    q: [usize; 2],
    /// `k`'s batch, head and key strides (batch 0 for a paged pool).
    k: [usize; 3],
    /// `v`'s, as `k`'s.
    v: [usize; 3],
}

impl DecodeStrides {
    /// The launch argument, strides in vectors of `width` values.
    fn launch<R: CubeRuntime>(&self, width: usize) -> DecodeLayoutLaunch<R> {
        let (q, k, v) = (self.q.map(|s| s / width), self.k.map(|s| s / width), self.v.map(|s| s / width));
        DecodeLayoutLaunch::new(self.heads, self.group, self.keys, q[0], q[1], k[0], k[1], k[2], v[0], v[1], v[2])
    }
}

/// One cube per (batch, head) for one query row: the scores `q·k_j / sqrt(head_dim)` in f32
/// (units over keys, into `scores`), their maximum and the sum of `exp(score − max)` by tree
/// reductions in shared memory, then `Σ_j p_j v_j` with the units split into
/// `units / head_dim` groups over the keys, one output dimension per unit. Keys and values are
/// read through their strides (a cache view or a paged gather, no copy); a query head reads the
/// key/value head `h / group` (grouped-query attention).
#[cube(launch_unchecked, address_type = "dynamic")]
fn decode_attention_kernel<E: Float>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    scores: &mut Array<f32>,
    output: &mut Array<E>,
    layout: &DecodeLayout,
    batch_heads: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let bh = CUBE_POS;
    if bh >= batch_heads {
        terminate!();
    }
    let keys = layout.keys;
    let b = bh / layout.heads;
    let h = bh % layout.heads;
    let hk = h / layout.group;
    let unit = UNIT_POS as usize;
    let q_base = b * layout.q_batch + h * layout.q_head;
    let k_base = b * layout.k_batch + hk * layout.k_head;
    let v_base = b * layout.v_batch + hk * layout.v_head;
    let row = bh * keys;

    let mut q_shared = SharedMemory::<f32>::new(head_dim);
    if unit < head_dim {
        q_shared[unit] = f32::cast_from(q[q_base + unit]) * scale;
    }
    let mut reduce = SharedMemory::<f32>::new(units);
    reduce[unit] = f32::new(NO_SCORE);
    sync_cube();

    // Scores, and each unit's maximum.
    let mut j = unit;
    while j < keys {
        let key = k_base + j * layout.k_key;
        let mut dot = q_shared[0] * f32::cast_from(k[key]);
        for d in 1..head_dim {
            dot += q_shared[d] * f32::cast_from(k[key + d]);
        }
        scores[row + j] = dot;
        let best = reduce[unit];
        reduce[unit] = select(dot > best, dot, best);
        j += units;
    }
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let mine = reduce[unit];
            let other = reduce[unit + active as usize];
            reduce[unit] = select(other > mine, other, mine);
        }
        sync_cube();
        active /= 2;
    }
    let max = reduce[0];
    sync_cube();

    // exp(score − max) in place, and each unit's sum.
    reduce[unit] = f32::new(0.0);
    let mut j = unit;
    while j < keys {
        let e = f32::exp(scores[row + j] - max);
        scores[row + j] = e;
        reduce[unit] += e;
        j += units;
    }
    sync_storage();
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = reduce[unit + active as usize];
            reduce[unit] += other;
        }
        sync_cube();
        active /= 2;
    }
    let total = reduce[0];
    sync_cube();

    // Σ_j p_j v_j: group g of head_dim units takes keys g, g + groups, …
    let groups = units / head_dim;
    let mut partial = SharedMemory::<f32>::new(units);
    if unit < groups * head_dim {
        let g = unit / head_dim;
        let d = unit % head_dim;
        partial[unit] = f32::new(0.0);
        let mut j = g;
        while j < keys {
            partial[unit] += scores[row + j] * f32::cast_from(v[v_base + j * layout.v_key + d]);
            j += groups;
        }
    }
    sync_cube();
    if unit < head_dim {
        let mut sum = partial[unit];
        for g in 1..groups {
            sum += partial[g * head_dim + unit];
        }
        output[bh * head_dim + unit] = E::cast_from(sum / total);
    }
}

/// Attention of one query row per (batch, head) over every cached key; see
/// [`Kernels::decode_attention`]. Planes over keys ([`decode_attention_planes_kernel`]) where
/// the hardware planes are uniform and divide `head_dim`, else units over keys.
pub(crate) fn decode_attention<R: CubeRuntime>(q: CubeTensor<R>, k: CubeTensor<R>, v: CubeTensor<R>) -> CubeTensor<R> {
    let last_unit = |t: CubeTensor<R>| if t.meta.strides()[3] == 1 { t } else { into_contiguous(t) };
    let (q, k, v) = (last_unit(q), last_unit(k), last_unit(v));
    let shape = q.meta.shape().clone();
    let (batch, heads, head_dim) = (shape[0], shape[1], shape[3]);
    let (kv_heads, keys) = (k.meta.shape()[1], k.meta.shape()[2]);
    let output = empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), shape, q.dtype);
    if batch * heads == 0 || head_dim == 0 || keys == 0 {
        return output;
    }
    let (qs, ks, vs) = (q.meta.strides().clone(), k.meta.strides().clone(), v.meta.strides().clone());
    let strides = DecodeStrides { heads, group: heads / kv_heads.max(1), keys, q: [qs[0], qs[1]], k: [ks[0], ks[1], ks[2]], v: [vs[0], vs[1], vs[2]] };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dtype = q.dtype;
    let address = address_type([&q, &k, &v, &output]);
    if let Some(lanes) = decode_plane(&q.client, head_dim).filter(|_| super::kernel_on("decode_attention_planes")) {
        let output = decode_attention_planes(q, k, v, output, strides, batch * heads, keys, lanes, None);
        return output;
    }
    let scores = empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), [batch * heads, keys].into(), DType::F32);
    let address = address.max(scores.required_address_type());
    unsafe {
        decode_attention_kernel::launch_unchecked(
            &output.client,
            row_cubes(batch * heads),
            CubeDim::new_1d(ROW_UNITS),
            address,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            scores.into_array_arg(),
            output.clone().into_array_arg(),
            strides.launch(1),
            batch * heads,
            scale,
            head_dim,
            ROW_UNITS as usize,
            dtype.into(),
        )
    };
    output
}

/// Where a flash attention reads its operands and how many: heads, queries and keys, and the
/// strides of `q` (`[batch, heads, queries, head_dim]`) and of `k`, `v` (`[batch, kv_heads,
/// keys, head_dim]`), last strides 1, in elements (vectors of the load width where the kernel
/// loads vectors), and the output's (`[batch, heads, queries, head_dim]`, last stride 1, in
/// values; [`flash_operands`] lays it out as `[batch, queries, heads, head_dim]`).
#[derive(CubeLaunch, CubeType)]
struct FlashLayout {
    heads: usize,
    /// Query heads per key/value head.
    group: usize,
    queries: usize,
    keys: usize,
    q_batch: usize,
    q_head: usize,
    q_row: usize,
    k_batch: usize,
    k_head: usize,
    k_key: usize,
    v_batch: usize,
    v_head: usize,
    v_key: usize,
    o_batch: usize,
    o_head: usize,
    o_row: usize,
}

/// Largest head dimension of the flash attention kernel (its rows live in registers).
const FLASH_MAX_HEAD_DIM: usize = 128;
/// Query rows per cube of the flash attention kernel (one per unit).
const FLASH_BLOCK_Q: usize = 64;

/// Flash attention (online softmax), one unit per query row: its scaled query and its output
/// sums in f32 registers, its keys in order — score, and when the score is a new maximum the
/// sums rescaled by `exp(old max − new max)`, then `exp(score − max) · v` added. Cubes of
/// `block_q` rows of one (batch, head). No shared memory and no barrier: the units of a plane
/// read the same key at the same time (one load for all of them), and a barrier with this
/// much state live across it made the kernel take minutes to compile on lavapipe (LLVM's
/// coroutine frames). `causal` hides key `j` from query `i` when `j > i + keys − queries`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn flash_attention_kernel<E: Float>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    output: &mut Array<E>,
    layout: &FlashLayout,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] block_q: usize,
    #[comptime] causal: bool,
    #[define(E)] _dtype: StorageType,
) {
    let bh = CUBE_POS_Y as usize;
    let row = CUBE_POS_X as usize * block_q + UNIT_POS as usize;
    let queries = layout.queries;
    if row >= queries {
        terminate!();
    }
    let keys = layout.keys;
    let b = bh / layout.heads;
    let h = bh % layout.heads;
    let hk = h / layout.group;
    let mut end = keys;
    if causal {
        end = row + keys - queries + 1;
    }

    let mut qr = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let q_base = b * layout.q_batch + h * layout.q_head + row * layout.q_row;
    #[unroll]
    for d in 0..head_dim {
        qr[d] = f32::cast_from(q[q_base + d]) * scale;
        acc[d] = f32::new(0.0);
    }
    let mut max_score = f32::new(NO_SCORE);
    let mut total = f32::new(0.0);
    let k_base = b * layout.k_batch + hk * layout.k_head;
    let v_base = b * layout.v_batch + hk * layout.v_head;
    let mut key = 0usize;
    while key < end {
        let kr = k_base + key * layout.k_key;
        let mut score = f32::new(0.0);
        #[unroll]
        for d in 0..head_dim {
            score += qr[d] * f32::cast_from(k[kr + d]);
        }
        if score > max_score {
            let correction = f32::exp(max_score - score);
            total *= correction;
            #[unroll]
            for d in 0..head_dim {
                acc[d] *= correction;
            }
            max_score = score;
        }
        let p = f32::exp(score - max_score);
        total += p;
        let vr = v_base + key * layout.v_key;
        #[unroll]
        for d in 0..head_dim {
            acc[d] += p * f32::cast_from(v[vr + d]);
        }
        key += 1;
    }
    let out = b * layout.o_batch + h * layout.o_head + row * layout.o_row;
    let inv = select(total > f32::new(0.0), f32::new(1.0) / total, f32::new(0.0));
    #[unroll]
    for d in 0..head_dim {
        output[out + d] = E::cast_from(acc[d] * inv);
    }
}

/// One cube per row of scores `[rows = batch · heads · queries, stride]` (contiguous, read
/// and written in vectors of `N` values, `vectors = stride / N` per row; columns
/// `keys..stride` are padding): each unit keeps a running maximum and sum of
/// `exp(scale · s − max)` over its strided share of the keys the row's query sees (all `keys`,
/// or `0..i + keys − queries + 1` when causal), the pairs are merged by a tree reduction in
/// shared memory, then each unit writes its share of `exp(scale · s − max) / sum` (0 for hidden
/// keys and padding, and for a row that sees none).
#[cube(launch_unchecked, address_type = "dynamic")]
fn attention_softmax_kernel<E: Float, N: Size>(
    scores: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    rows: usize,
    queries: usize,
    keys: usize,
    vectors: usize,
    scale: f32,
    #[comptime] causal: bool,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    if CUBE_POS >= rows {
        terminate!();
    }
    let base = CUBE_POS * vectors;
    let unit = UNIT_POS as usize;
    let end = seen_keys(CUBE_POS, queries, keys, causal);
    let own = running_sum(scores, base, unit, end, scale, units);
    let mut maxima = SharedMemory::<f32>::new(units);
    let mut totals = SharedMemory::<f32>::new(units);
    maxima[unit] = own.max;
    totals[unit] = own.total;
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = unit + active as usize;
            let (m1, m2) = (maxima[unit], maxima[other]);
            let m = select(m2 > m1, m2, m1);
            totals[unit] = totals[unit] * f32::exp(m1 - m) + totals[other] * f32::exp(m2 - m);
            maxima[unit] = m;
        }
        sync_cube();
        active /= 2;
    }
    write_probabilities(scores, output, base, unit, vectors, end, scale, RunningSum { max: maxima[0], total: totals[0] }, units);
}

/// The keys `0..end` a row of scores sees: all, or when `causal` key `j` while
/// `j < i + keys − queries + 1` for the row's query `i` (none when that is ≤ 0).
#[cube]
fn seen_keys(row: usize, queries: usize, keys: usize, #[comptime] causal: bool) -> usize {
    let mut end = keys;
    if causal {
        // Unsigned: `limit − queries` clamped at 0.
        let limit = row % queries + keys + 1;
        let seen = limit - select(limit > queries, queries, limit);
        end = select(seen < keys, seen, keys);
    }
    end
}

/// A running maximum of `scale · s` and the sum of `exp(scale · s − max)` over some scores.
#[derive(CubeType)]
struct RunningSum {
    max: f32,
    total: f32,
}

/// [`RunningSum`] of one worker's strided share of a row's visible scores: the vectors
/// `first, first + step, …` of the row at `base` (in vectors of `N` scores) that hold keys
/// below `end`, each key in order.
#[cube]
fn running_sum<E: Float, N: Size>(scores: &Array<Vector<E, N>>, base: usize, first: usize, end: usize, scale: f32, #[comptime] step: usize) -> RunningSum {
    let width = N::value();
    let mut max_score = f32::new(NO_SCORE);
    let mut total = f32::new(0.0);
    let mut j = first;
    while j * width < end {
        let v = scores[base + j];
        #[unroll]
        for e in 0..width {
            if j * width + e < end {
                let x = f32::cast_from(v[e]) * scale;
                if x > max_score {
                    total = total * f32::exp(max_score - x) + f32::new(1.0);
                    max_score = x;
                } else {
                    total += f32::exp(x - max_score);
                }
            }
        }
        j += step;
    }
    RunningSum { max: max_score, total }
}

/// Writes one worker's strided share (vectors `first, first + step, …` below `vectors`, the
/// row's length) of a row's probabilities `exp(scale · s − max) / total` from the whole row's
/// [`RunningSum`]: 0 for the hidden keys and the padding (`≥ end`), and for a row that sees
/// none.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_probabilities<E: Float, N: Size>(
    scores: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    base: usize,
    first: usize,
    vectors: usize,
    end: usize,
    scale: f32,
    row: RunningSum,
    #[comptime] step: usize,
) {
    let width = N::value();
    let inv = select(row.total > f32::new(0.0), f32::new(1.0) / row.total, f32::new(0.0));
    let mut j = first;
    while j < vectors {
        let v = scores[base + j];
        let mut out = Vector::<E, N>::empty();
        #[unroll]
        for e in 0..width {
            let p = f32::exp(f32::cast_from(v[e]) * scale - row.max) * inv;
            out[e] = E::cast_from(select(j * width + e < end, p, f32::new(0.0)));
        }
        output[base + j] = out;
        j += step;
    }
}

/// Rows of scores per cube of [`attention_softmax_planes_kernel`] (one per plane).
const SOFTMAX_ROW_PLANES: usize = 8;

/// Most keys for which a row of scores takes a plane of its own
/// ([`attention_softmax_planes_kernel`]) rather than a cube of [`ROW_UNITS`] units: CLIP's 577
/// keys and prefill chunks of a few thousand. A cube of 256 units spends more on its eight
/// barriers than on a row of 577 (a lane of a 32-wide plane reads 18 of them).
const SOFTMAX_PLANE_MAX_KEYS: usize = 4096;

/// [`attention_softmax_kernel`] with one plane per row of scores ([`SOFTMAX_ROW_PLANES`] rows per
/// cube): each lane keeps the running maximum and sum of its strided share of the row's
/// vectors, the plane merges them with `plane_max` and `plane_sum` (no shared memory, no
/// barrier), then each lane writes its share. Rows past the last are whole planes, so every
/// plane that reaches the plane operations has all its lanes.
#[cube(launch_unchecked, address_type = "dynamic")]
fn attention_softmax_planes_kernel<E: Float, N: Size>(
    scores: &Array<Vector<E, N>>,
    output: &mut Array<Vector<E, N>>,
    rows: usize,
    queries: usize,
    keys: usize,
    vectors: usize,
    scale: f32,
    #[comptime] causal: bool,
    #[comptime] lanes: usize,
    #[define(E)] _dtype: StorageType,
) {
    let row = CUBE_POS * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
    if row >= rows {
        terminate!();
    }
    let base = row * vectors;
    let lane = UNIT_POS_X as usize;
    let end = seen_keys(row, queries, keys, causal);
    let own = running_sum(scores, base, lane, end, scale, lanes);
    let max = plane_max(own.max);
    // A lane that saw no key has total 0, whatever its maximum.
    let total = plane_sum(own.total * f32::exp(own.max - max));
    write_probabilities(scores, output, base, lane, vectors, end, scale, RunningSum { max, total }, lanes);
}

/// Attention probabilities from raw scores in one launch; see [`Kernels::attention_softmax`]:
/// a plane per row up to [`SOFTMAX_PLANE_MAX_KEYS`] keys where the device has planes of one
/// width ([`attention_softmax_planes_kernel`]), a cube per row otherwise
/// ([`attention_softmax_kernel`]).
pub(crate) fn attention_softmax<R: CubeRuntime>(scores: CubeTensor<R>, scale: f64, causal: bool, keys: usize) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let shape = scores.meta.shape().clone();
    let (queries, stride) = (shape[2], shape[3]);
    let keys = keys.min(stride);
    let rows = shape.num_elements() / stride.max(1);
    let output = empty_device_contiguous_dtype(scores.client.clone(), scores.device.clone(), shape, scores.dtype);
    if rows == 0 || stride == 0 {
        return output;
    }
    let address = address_type([&scores, &output]);
    let dtype = scores.dtype;
    // Scores in vectors of up to 8 (16 bytes of a 16-bit dtype: `scores` pads its rows to that).
    let vector_size = vector_loads(&[&scores, &output], stride);
    let vectors = stride / vector_size;
    if let Some(lanes) = uniform_plane(&scores.client).filter(|_| stride <= SOFTMAX_PLANE_MAX_KEYS && super::kernel_on("attention_softmax_planes")) {
        unsafe {
            attention_softmax_planes_kernel::launch_unchecked(
                &output.client,
                row_cubes(rows.div_ceil(SOFTMAX_ROW_PLANES)),
                CubeDim::new_2d(lanes as u32, SOFTMAX_ROW_PLANES as u32),
                address,
                vector_size,
                scores.into_array_arg(),
                output.clone().into_array_arg(),
                rows,
                queries,
                keys,
                vectors,
                scale as f32,
                causal,
                lanes,
                dtype.into(),
            )
        };
        return output;
    }
    unsafe {
        attention_softmax_kernel::launch_unchecked(
            &output.client,
            row_cubes(rows),
            CubeDim::new_1d(ROW_UNITS),
            address,
            vector_size,
            scores.into_array_arg(),
            output.clone().into_array_arg(),
            rows,
            queries,
            keys,
            vectors,
            scale as f32,
            causal,
            ROW_UNITS as usize,
            dtype.into(),
        )
    };
    output
}

/// CubeCL's tensor-core flash attention (cubek's blackbox-accelerated routine) with the given
/// tiling ([`FlashAttention::Tiles`]); `Err` when the routine refuses the problem or tiling
/// (the caller then takes Burn's attention). Without a causal limit: the routine's causal
/// outputs are wrong on CUDA (sessions 15 and 18).
fn tiled_flash_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    planes: u8,
    seq_q: u8,
    seq_kv: u8,
) -> Result<CubeTensor<R>, String> {
    use burn::tensor::ops::AttentionModuleOptions;
    use burn_cubecl::kernel::attention::{AttentionStrategy, attention};
    use cubek::attention::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;
    let strategy = AttentionStrategy::FlashBlackboxAccelerated(BlackboxAcceleratedStrategy { num_planes: planes, seq_q, seq_kv });
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
    attention::<R>(q, k, v, None, None, options, strategy).map_err(|e| format!("{e:?}"))
}

/// A flash kernel's operands with their last dimension contiguous (copied where it is not),
/// and its output `[batch, heads, queries, head_dim]` in the queries' dtype, laid out as
/// `[batch, queries, heads, head_dim]`: the heads of a query side by side, so that the caller's
/// merge of the heads (`swap_dims(1, 2)`, then `[batch, queries, heads · head_dim]`) is a view,
/// not a copy.
fn flash_operands<R: CubeRuntime>(q: CubeTensor<R>, k: CubeTensor<R>, v: CubeTensor<R>) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let last_unit = |t: CubeTensor<R>| if t.meta.strides()[3] == 1 { t } else { into_contiguous(t) };
    let (q, k, v) = (last_unit(q), last_unit(k), last_unit(v));
    let [batch, heads, queries, head_dim] = [0, 1, 2, 3].map(|d| q.meta.shape()[d]);
    let merged = empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), [batch, queries, heads, head_dim].into(), q.dtype);
    (q, k, v, permute(merged, &[0, 2, 1, 3]))
}

/// [`FlashLayout`] of [`flash_operands`], the operands' strides in vectors of `width` values
/// (`width` divides the batch, head and row strides), the output's in values.
fn flash_layout<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, output: &CubeTensor<R>, width: usize) -> FlashLayoutLaunch<R> {
    let [qs, ks, vs] = [q, k, v].map(|t| [0, 1, 2].map(|d| t.meta.strides()[d] / width));
    let os = [0, 1, 2].map(|d| output.meta.strides()[d]);
    let (heads, queries) = (q.meta.shape()[1], q.meta.shape()[2]);
    let (kv_heads, keys) = (k.meta.shape()[1], k.meta.shape()[2]);
    FlashLayoutLaunch::new(heads, heads / kv_heads.max(1), queries, keys, qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], os[0], os[1], os[2])
}

/// Attention of every query over its keys; see [`Kernels::flash_attention`].
pub(crate) fn flash_attention<R: CubeRuntime>(q: CubeTensor<R>, k: CubeTensor<R>, v: CubeTensor<R>, causal: bool) -> CubeTensor<R> {
    let (q, k, v, output) = flash_operands(q, k, v);
    let [batch, heads, queries, head_dim] = [q.meta.shape()[0], q.meta.shape()[1], q.meta.shape()[2], q.meta.shape()[3]];
    if batch * heads * queries == 0 || head_dim == 0 {
        return output;
    }
    let layout = flash_layout(&q, &k, &v, &output, 1);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dtype = q.dtype;
    let address = address_type([&q, &k, &v, &output]);
    unsafe {
        flash_attention_kernel::launch_unchecked(
            &output.client,
            CubeCount::new_2d(queries.div_ceil(FLASH_BLOCK_Q) as u32, (batch * heads) as u32),
            CubeDim::new_1d(FLASH_BLOCK_Q as u32),
            address,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            output.clone().into_array_arg(),
            layout,
            scale,
            head_dim,
            FLASH_BLOCK_Q,
            causal,
            dtype.into(),
        )
    };
    output
}

/// Query rows of one plane of [`mma_attention_kernel`] (one 16-row tile of the MMA shape).
const MMA_TILE: usize = 16;
/// Planes per cube of [`mma_attention_kernel`]: they share each step's staged keys and values.
const MMA_PLANES: usize = 4;
/// Keys per step of [`mma_attention_kernel`]'s loop (a multiple of [`MMA_TILE`]).
const MMA_KEYS: usize = 64;
/// Lanes per plane [`mma_attention_kernel`] is written for (two lanes per query row in the
/// softmax, a column of every row each in the outputs).
const MMA_LANES: usize = 32;
/// Values [`mma_attention_kernel`] adds to each row of its shared buffers beyond the row's
/// width: 16 bytes in the 16-bit dtype (its queries, keys, values and probabilities), 4 f32 in
/// the f32 scores and partial outputs, so that the rows of a 16×16 tile start on different
/// banks. Unpadded, rows of 64 keys or 96 dims start on the same few banks and every tile load
/// and store waits on bank conflicts (Nsight Compute, H100, session 26: L1 83 % busy while the
/// tensor cores and memory idled).
const MMA_PAD: usize = 8;
/// [`MMA_PAD`]'s counterpart in the f32 buffers (16 bytes).
const MMA_PAD_F32: usize = 4;

/// Flash attention on tensor cores (`cmma`: 16×16×16 tiles of the input dtype, f32 sums):
/// cubes of [`MMA_PLANES`] planes, each plane owning 16 query rows of one (batch, head), stage
/// their queries once, then walk the keys in steps of [`MMA_KEYS`]: the cube stages the step's
/// keys and values in shared memory (zeros past the last key), each plane multiplies its
/// queries by the keys into f32 scores; two lanes per row (half the step's keys each, read in
/// an order that puts the 32 lanes on 32 banks) update the row's running maximum and sum and
/// write `exp(scale · s − max)` in the dtype; the plane multiplies those by the values into f32
/// partial outputs, and each lane rescales and adds the columns it owns (`lane + 32·c` of each
/// of the 16 rows, kept in registers; the rows' factors shuffled from the lanes that hold
/// them). `causal` hides key `j` from query `i` when `j > i + keys − queries`; a cube stops at
/// the last key its last row sees, and a plane skips the steps its rows see nothing of.
/// Operands are read in vectors of `N` values (strides in vectors); the output is contiguous
/// `[batch, heads, queries, head_dim]`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn mma_attention_kernel<E: Float, N: Size>(
    q: &Array<Vector<E, N>>,
    k: &Array<Vector<E, N>>,
    v: &Array<Vector<E, N>>,
    output: &mut Array<E>,
    layout: &FlashLayout,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] vectors: usize,
    #[comptime] causal: bool,
    #[define(E)] _dtype: StorageType,
) {
    let (queries, keys) = (layout.queries, layout.keys);
    let plane = UNIT_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let unit = plane * MMA_LANES + lane;
    let units = MMA_PLANES * MMA_LANES;
    let block_q = MMA_PLANES * MMA_TILE;
    let FlashCube { b, h, hk, q0, end, plane_end } = flash_cube(layout, plane, causal);
    // Output columns per lane: `lane + 32·c` for c below this (16-dim heads leave lanes idle).
    let columns = comptime!(head_dim.div_ceil(MMA_LANES));
    // Row strides of the shared buffers (padded: `MMA_PAD`): queries, keys and values;
    // probabilities; f32 scores; f32 partial outputs.
    let hs = comptime!(MmaStrides::new(head_dim).heads);
    let ps = comptime!(MmaStrides::new(head_dim).probabilities);
    let ss = comptime!(MmaStrides::new(head_dim).scores);
    let os = comptime!(MmaStrides::new(head_dim).outputs);

    let mut q_s = SharedMemory::<E>::new_aligned(block_q * hs, 32usize);
    let mut k_s = SharedMemory::<E>::new_aligned(MMA_KEYS * hs, 32usize);
    let mut v_s = SharedMemory::<E>::new_aligned(MMA_KEYS * hs, 32usize);
    let mut p_s = SharedMemory::<E>::new_aligned(block_q * ps, 32usize);
    // The f32 scores (rows of `ss`) and, later in each step, the f32 partial outputs (rows of
    // `os`) share one buffer: a cube-wide barrier separates every use of one from the next use
    // of the other.
    let mut f_s = SharedMemory::<f32>::new_aligned(comptime!(block_q * ss.max(os)), 32usize);

    // The cube's queries, zero rows past the last.
    stage_queries::<E, N>(q, &mut q_s, layout, b * layout.q_batch + h * layout.q_head, q0, unit, units, block_q, vectors, hs);

    // The softmax's row (`r` of the plane's 16) and half of each step's keys, for this lane.
    let r = lane % MMA_TILE;
    let half = lane / MMA_TILE;
    let row = q0 + plane * MMA_TILE + r;
    let mut row_end = keys;
    if causal {
        let seen = row + keys - queries + 1;
        row_end = select(seen < keys, seen, keys);
    }
    let half_keys = comptime!(MMA_KEYS / 2);
    let mut acc = Array::<f32>::new(comptime!(MMA_TILE * columns));
    #[unroll]
    for a in 0..MMA_TILE * columns {
        acc[a] = f32::new(0.0);
    }
    let mut max_score = f32::new(NO_SCORE);
    let mut total = f32::new(0.0);
    let plane_q = plane * MMA_TILE * hs;
    let plane_p = plane * MMA_TILE * ps;
    let plane_s = plane * MMA_TILE * ss;
    let plane_o = plane * MMA_TILE * os;
    let k_base = b * layout.k_batch + hk * layout.k_head;
    let v_base = b * layout.v_batch + hk * layout.v_head;

    let mut k0 = 0usize;
    while k0 < end {
        // The step's keys and values (zeros past the last).
        sync_cube();
        stage_keys_values::<E, N>(k, v, &mut k_s, &mut v_s, layout, k_base, v_base, k0, unit, units, MMA_KEYS, vectors, hs);
        sync_cube();
        let active = k0 < plane_end;

        // Scores of the plane's 16 rows: q (16 × head_dim) · kᵀ (head_dim × MMA_KEYS); kᵀ's
        // tile (c, t) is keys 16t.. at dims 16c.., a column-major tile of k's rows.
        if active {
            plane_tile_product::<E>(&q_s, plane_q, hs, &k_s, 1usize, hs, hs, cmma::MatrixLayout::ColMajor, &mut f_s, plane_s, ss, head_dim, MMA_KEYS);
        }
        sync_cube();

        // The row's running maximum and sum over the step's keys it sees; probabilities
        // relative to the new maximum, in the dtype, for the second product. Column
        // `(j + r + 16·half) mod 32` of the lane's half at step `j`: the 32 lanes on 32 banks.
        let mut correction = f32::new(1.0);
        if active {
            let at = plane_s + r * ss + half * half_keys;
            let at_p = plane_p + r * ps + half * half_keys;
            let first = k0 + half * half_keys;
            let mut step_max = max_score;
            #[unroll]
            for j in 0..half_keys {
                let col = (j + r + half * MMA_TILE) % half_keys;
                let score = f_s[at + col] * scale;
                step_max = select(first + col < row_end && score > step_max, score, step_max);
            }
            let other = plane_shuffle_xor(step_max, MMA_TILE as u32);
            let new_max = select(other > step_max, other, step_max);
            correction = f32::exp(max_score - new_max);
            let mut sum = f32::new(0.0);
            #[unroll]
            for j in 0..half_keys {
                let col = (j + r + half * MMA_TILE) % half_keys;
                let p = select(first + col < row_end, f32::exp(f_s[at + col] * scale - new_max), f32::new(0.0));
                sum += p;
                p_s[at_p + col] = E::cast_from(p);
            }
            total = total * correction + sum + plane_shuffle_xor(sum, MMA_TILE as u32);
            max_score = new_max;
        }
        sync_cube();

        // The step's outputs of the plane's rows: p (16 × MMA_KEYS) · v (MMA_KEYS × head_dim);
        // v's tile (c, t) is keys 16c.. at dims 16t.., row-major.
        if active {
            plane_tile_product::<E>(&p_s, plane_p, ps, &v_s, hs, 1usize, hs, cmma::MatrixLayout::RowMajor, &mut f_s, plane_o, os, MMA_KEYS, head_dim);
        }
        sync_cube();
        if active {
            // Row `i`'s factor from lane `i` (its first half's lane).
            #[unroll]
            for i in 0..MMA_TILE {
                let factor = plane_shuffle(correction, i as u32);
                #[unroll]
                for c in 0..columns {
                    let d = lane + c * MMA_LANES;
                    if d < head_dim {
                        acc[i * columns + c] = acc[i * columns + c] * factor + f_s[plane_o + i * os + d];
                    }
                }
            }
        }
        k0 += MMA_KEYS;
    }

    let inv = select(total > f32::new(0.0), f32::new(1.0) / total, f32::new(0.0));
    #[unroll]
    for i in 0..MMA_TILE {
        let factor = plane_shuffle(inv, i as u32);
        let out_row = q0 + plane * MMA_TILE + i;
        #[unroll]
        for c in 0..columns {
            let d = lane + c * MMA_LANES;
            if out_row < queries && d < head_dim {
                output[b * layout.o_batch + h * layout.o_head + out_row * layout.o_row + d] = E::cast_from(acc[i * columns + c] * factor);
            }
        }
    }
}

/// Where a cube of the tensor-core flash kernels works ([`flash_cube`]).
#[derive(CubeType)]
struct FlashCube {
    /// Its batch, head and key/value head.
    b: usize,
    h: usize,
    hk: usize,
    /// Its first query row.
    q0: usize,
    /// Keys seen by its last row and by the last row of the calling unit's plane (rows past
    /// `queries` see no more than the last real one; a plane with no row before `queries`
    /// sees none).
    end: usize,
    plane_end: usize,
}

/// [`FlashCube`] of the cube at `CUBE_POS` ([`MMA_PLANES`] planes of 16 query rows of one
/// (batch, head)) for a unit of plane `plane`.
#[cube]
fn flash_cube(layout: &FlashLayout, plane: usize, #[comptime] causal: bool) -> FlashCube {
    let bh = CUBE_POS_Y as usize;
    let h = bh % layout.heads;
    let q0 = CUBE_POS_X as usize * MMA_PLANES * MMA_TILE;
    let (queries, keys) = (layout.queries, layout.keys);
    let mut end = keys;
    let mut plane_end = keys;
    if causal {
        let last = q0 + MMA_PLANES * MMA_TILE;
        end = select(last < queries, last, queries) + keys - queries;
        let plane_last = q0 + (plane + 1) * MMA_TILE;
        plane_end = select(plane_last < queries, plane_last, queries) + keys - queries;
    }
    // A plane whose rows all lie past the last query (the last cube's) computes nothing.
    if q0 + plane * MMA_TILE >= queries {
        plane_end = 0;
    }
    FlashCube { b: bh / layout.heads, h, hk: h / layout.group, q0, end, plane_end }
}

/// The flash kernels' staging of a cube's `block_q` query rows from `q0` (zero rows past the
/// last query) into `q_s`, rows `stride` values apart, by units `unit, unit + units, …` of
/// `vectors` loads per row from `q_base`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_queries<E: Float, N: Size>(
    q: &Array<Vector<E, N>>,
    q_s: &mut SharedMemory<E>,
    layout: &FlashLayout,
    q_base: usize,
    q0: usize,
    unit: usize,
    units: usize,
    #[comptime] block_q: usize,
    #[comptime] vectors: usize,
    #[comptime] stride: usize,
) {
    let width = N::value();
    let mut i = unit;
    while i < block_q * vectors {
        let r = i / vectors;
        let c = i % vectors;
        let mut value = Vector::<E, N>::empty().fill(E::from_int(0));
        if q0 + r < layout.queries {
            value = q[q_base + (q0 + r) * layout.q_row + c];
        }
        #[unroll]
        for e in 0..width {
            q_s[r * stride + c * width + e] = value[e];
        }
        i += units;
    }
}

/// The flash kernels' staging of keys and values `k0..k0 + rows` into `k_s` and `v_s`, rows
/// `stride` values apart (zeros past the last key: a zero value times a zero probability adds
/// nothing, where stale memory could hold a NaN).
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_keys_values<E: Float, N: Size>(
    k: &Array<Vector<E, N>>,
    v: &Array<Vector<E, N>>,
    k_s: &mut SharedMemory<E>,
    v_s: &mut SharedMemory<E>,
    layout: &FlashLayout,
    k_base: usize,
    v_base: usize,
    k0: usize,
    unit: usize,
    units: usize,
    #[comptime] rows: usize,
    #[comptime] vectors: usize,
    #[comptime] stride: usize,
) {
    let width = N::value();
    let mut i = unit;
    while i < rows * vectors {
        let key = k0 + i / vectors;
        let c = i % vectors;
        let mut kv = Vector::<E, N>::empty().fill(E::from_int(0));
        let mut vv = Vector::<E, N>::empty().fill(E::from_int(0));
        if key < layout.keys {
            kv = k[k_base + key * layout.k_key + c];
            vv = v[v_base + key * layout.v_key + c];
        }
        let at = (i / vectors) * stride + c * width;
        #[unroll]
        for e in 0..width {
            k_s[at + e] = kv[e];
            v_s[at + e] = vv[e];
        }
        i += units;
    }
}

/// [`mma_attention_fragments_kernel`]'s keys and values of the step from `k0` into this unit's
/// registers (`mma_attention_prefetch`): vector `unit + i · units` of the step's rows is
/// register `i` (zeros past the last key), so the loads are in flight while the cube multiplies
/// the step before.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_keys_values<E: Float, N: Size>(
    k: &Array<Vector<E, N>>,
    v: &Array<Vector<E, N>>,
    k_r: &mut Array<Vector<E, N>>,
    v_r: &mut Array<Vector<E, N>>,
    layout: &FlashLayout,
    k_base: usize,
    v_base: usize,
    k0: usize,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] loads: usize,
    #[comptime] vectors: usize,
) {
    #[unroll]
    for i in 0..loads {
        let at = unit + i * units;
        let key = k0 + at / vectors;
        let c = at % vectors;
        let mut kv = Vector::<E, N>::empty().fill(E::from_int(0));
        let mut vv = Vector::<E, N>::empty().fill(E::from_int(0));
        if key < layout.keys {
            kv = k[k_base + key * layout.k_key + c];
            vv = v[v_base + key * layout.v_key + c];
        }
        k_r[i] = kv;
        v_r[i] = vv;
    }
}

/// [`load_keys_values`]'s registers into `k_s` and `v_s` (rows `stride` values apart), a vector
/// per store.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_keys_values<E: Float, N: Size>(
    k_r: &Array<Vector<E, N>>,
    v_r: &Array<Vector<E, N>>,
    k_s: &mut SharedMemory<E>,
    v_s: &mut SharedMemory<E>,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] loads: usize,
    #[comptime] vectors: usize,
    #[comptime] stride: usize,
) {
    let rows = comptime!(loads * units / vectors);
    // Vectors per shared row (`stride` is the head dimension and the pad, both whole vectors).
    let row_vectors = comptime!(stride / ((stride - MMA_PAD) / vectors));
    let mut k_view = k_s.slice_mut(0, rows * stride).into_vectorized().with_vector_size::<N>();
    let mut v_view = v_s.slice_mut(0, rows * stride).into_vectorized().with_vector_size::<N>();
    #[unroll]
    for i in 0..loads {
        let at = unit + i * units;
        let to = (at / vectors) * row_vectors + at % vectors;
        k_view[to] = k_r[i];
        v_view[to] = v_r[i];
    }
}

/// One plane's 16 rows of `a · b` on 16×16×16 tiles with f32 sums (`cmma`), into `out`: `a`
/// holds the 16 rows of `inner` values from `a_at`, `a_row` apart (row-major); `b`'s tile
/// (c, t) — its rows `16c..` and columns `16t..` — starts at `16 · (c · b_inner + t · b_outer)`,
/// in `b_layout` with `b_row` between its rows (row-major) or its columns (column-major); the
/// 16 × `width` product goes to `out` from `out_at`, rows `out_row` apart.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plane_tile_product<E: Float>(
    a: &SharedMemory<E>,
    a_at: usize,
    #[comptime] a_row: usize,
    b: &SharedMemory<E>,
    #[comptime] b_inner: usize,
    #[comptime] b_outer: usize,
    #[comptime] b_row: usize,
    b_layout: cmma::MatrixLayout,
    out: &mut SharedMemory<f32>,
    out_at: usize,
    #[comptime] out_row: usize,
    #[comptime] inner: usize,
    #[comptime] width: usize,
) {
    // A 16-row tile with rows `row` apart spans this many values from its start.
    let (a_span, b_span, out_span) = comptime!(((MMA_TILE - 1) * a_row + MMA_TILE, (MMA_TILE - 1) * b_row + MMA_TILE, (MMA_TILE - 1) * out_row + MMA_TILE));
    #[unroll]
    for t in 0..width / MMA_TILE {
        let product = cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, f32::new(0.0));
        #[unroll]
        for c in 0..inner / MMA_TILE {
            let at = a_at + c * MMA_TILE;
            let am = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::A, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor, &a.slice(at, at + a_span), comptime!(a_row as u32));
            let bt = (c * b_inner + t * b_outer) * MMA_TILE;
            let bm = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, b_layout, &b.slice(bt, bt + b_span), comptime!(b_row as u32));
            cmma::execute::<E, E, f32, f32>(&am, &bm, &product, &product);
        }
        let at = out_at + t * MMA_TILE;
        cmma::store(&mut out.slice_mut(at, at + out_span), &product, comptime!(out_row as u32), cmma::MatrixLayout::RowMajor);
    }
}

/// Keys per step of [`mma_attention_fragments_kernel`]: 8 tiles of 8 keys for the scores, 4
/// steps of 16 for the values.
const MMA_FRAGMENT_KEYS: usize = 64;

/// [`mma_attention_kernel`] with the scores and probabilities in registers (`mma.m16n8k16` of
/// the dtype with f32 sums, CubeCL's `MmaDefinition`; the `mma_attention_fragments` switch): cubes
/// of [`MMA_PLANES`] planes, each owning 16 query rows of one (batch, head), stage their queries
/// in shared memory and load them once into A fragments (`ldmatrix`); then per step of
/// [`MMA_FRAGMENT_KEYS`] keys the cube stages the keys and values (zeros past the last key;
/// with `copies`, copied a step ahead, [`mma_attention_copied_steps`]), and each plane
/// ([`mma_attention_fragments_step`])
/// - multiplies its queries by the keys: the B fragments of 8 keys each are the key rows as
///   stored (`ldmatrix`), the scores 8 tiles of 16 rows × 8 keys in the accumulator layout (lane
///   `4g + t` holds rows `g` and `g + 8`, keys `2t, 2t + 1` of each tile);
/// - updates each row's running maximum over the keys it sees (the four lanes of a row meet by
///   two shuffles), rescales its outputs and its share of the row's sum, and turns the scores
///   into probabilities in the dtype: the accumulator layout of two key tiles is the A fragment
///   of 16 keys, so they stay in the lane's registers;
/// - multiplies them by the values: the B fragments are the value rows transposed on the way
///   in (`ldmatrix.trans`), the outputs 16 rows × `head_dim` in f32 registers.
/// At the end the four lanes of each row add their sums, and each lane writes its two rows'
/// columns `2t, 2t + 1` of every 8-column tile. `causal` hides key `j` from query `i` when
/// `j > i + keys − queries`; a cube stops after the last key its last row sees, and a plane
/// skips the steps its rows see nothing of. Shared rows are `head_dim + 8` values apart (16
/// bytes more: `ldmatrix`'s eight 16-byte rows fall on different banks).
#[cube(launch_unchecked, address_type = "dynamic")]
fn mma_attention_fragments_kernel<E: Float, N: Size>(
    q: &Array<Vector<E, N>>,
    k: &Array<Vector<E, N>>,
    v: &Array<Vector<E, N>>,
    k_values: &Array<E>,
    v_values: &Array<E>,
    output: &mut Array<E>,
    layout: &FlashLayout,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] vectors: usize,
    #[comptime] causal: bool,
    #[comptime] prefetch: bool,
    #[comptime] copies: bool,
    #[define(E)] _dtype: StorageType,
) {
    let (queries, keys) = (layout.queries, layout.keys);
    let plane = UNIT_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let unit = plane * MMA_LANES + lane;
    let units = comptime!(MMA_PLANES * MMA_LANES);
    let block_q = MMA_PLANES * MMA_TILE;
    let FlashCube { b, h, hk, q0, end, plane_end } = flash_cube(layout, plane, causal);
    let (g, t) = (lane / 4, lane % 4);
    // `ldmatrix`: lane `l` gives the address of row `l % 8` of matrix `l / 8`.
    let (matrix, matrix_row) = (lane / 8, lane % 8);
    let stride = comptime!(head_dim + MMA_PAD);
    // 16-value steps of head_dim (the queries' k), 8-column tiles of the outputs.
    let steps = comptime!(head_dim / MMA_TILE);
    let tiles = comptime!(head_dim / MMA_FRAGMENT_COLUMNS);

    let mut q_s = SharedMemory::<E>::new_aligned(block_q * stride, 32usize);
    // A step's keys and values; with `copies`, a ring of two steps'.
    let slots = comptime!(if copies { 2usize } else { 1usize });
    let mut k_s = SharedMemory::<E>::new_aligned(comptime!(slots * MMA_FRAGMENT_KEYS * stride), 32usize);
    let mut v_s = SharedMemory::<E>::new_aligned(comptime!(slots * MMA_FRAGMENT_KEYS * stride), 32usize);

    // The cube's queries, zero rows past the last.
    stage_queries::<E, N>(q, &mut q_s, layout, b * layout.q_batch + h * layout.q_head, q0, unit, units, block_q, vectors, stride);
    sync_cube();
    let mma = cmma::MmaDefinition::<E, E, f32>::new(16usize, 8usize, 16usize);
    // The plane's A fragments of the queries, 4 registers per 16 values of head_dim: matrices
    // (rows 0–7, values 0–7), (rows 8–15, 0–7), (rows 0–7, 8–15), (rows 8–15, 8–15).
    let mut qa = Array::<Vector<E, Const<2>>>::new(comptime!(4 * steps));
    #[unroll]
    for c in 0..steps {
        let at = (plane * MMA_TILE + (matrix % 2) * 8 + matrix_row) * stride + c * MMA_TILE + (matrix / 2) * 8;
        let regs = mma.load_matrix::<E, Const<2>>(&q_s.slice(at, at + 8), cmma::MatrixIdent::A, 4usize, false);
        #[unroll]
        for x in 0..4usize {
            qa[4 * c + x] = regs[x];
        }
    }

    // Keys seen by this lane's rows g and g + 8.
    let row_lo = q0 + plane * MMA_TILE + g;
    let row_hi = row_lo + 8;
    let mut sees_lo = keys;
    let mut sees_hi = keys;
    if causal {
        sees_lo = min(row_lo + 1 + keys - queries, keys);
        sees_hi = min(row_hi + 1 + keys - queries, keys);
    }
    // Rows g and g + 8 of each output tile (the accumulator layout), their running maxima and
    // this lane's shares of their sums.
    let mut out = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * tiles));
    #[unroll]
    for x in 0..2 * tiles {
        out[x] = Vector::new(f32::new(0.0));
    }
    // Running maxima and this lane's shares of the sums of rows g and g + 8: [max_lo, max_hi,
    // sum_lo, sum_hi].
    let mut running = Array::<f32>::new(4usize);
    running[0] = f32::new(NO_SCORE);
    running[1] = f32::new(NO_SCORE);
    running[2] = f32::new(0.0);
    running[3] = f32::new(0.0);
    let k_base = b * layout.k_batch + hk * layout.k_head;
    let v_base = b * layout.v_batch + hk * layout.v_head;
    if copies {
        // Offsets in values: the layout's are in vectors of the load width, one copy each.
        let width = N::value();
        mma_attention_copied_steps::<E>(
            k_values, v_values, &mut k_s, &mut v_s, &qa, &mut out, &mut running, layout, k_base * width, v_base * width, end, plane_end, sees_lo, sees_hi, scale, unit, lane, head_dim, width,
        );
    } else {
        // With `prefetch`, each step's keys and values come from registers loaded during the
        // step before (the first step's here).
        let loads = comptime!(MMA_FRAGMENT_KEYS * vectors / units);
        let mut k_r = Array::<Vector<E, N>>::new(loads);
        let mut v_r = Array::<Vector<E, N>>::new(loads);
        if prefetch {
            load_keys_values::<E, N>(k, v, &mut k_r, &mut v_r, layout, k_base, v_base, 0, unit, units, loads, vectors);
        }
        let mut k0 = 0usize;
        while k0 < end {
            // The step's keys and values (zeros past the last).
            sync_cube();
            if prefetch {
                store_keys_values::<E, N>(&k_r, &v_r, &mut k_s, &mut v_s, unit, units, loads, vectors, stride);
                sync_cube();
                let next = k0 + MMA_FRAGMENT_KEYS;
                if next < end {
                    load_keys_values::<E, N>(k, v, &mut k_r, &mut v_r, layout, k_base, v_base, next, unit, units, loads, vectors);
                }
            } else {
                stage_keys_values::<E, N>(k, v, &mut k_s, &mut v_s, layout, k_base, v_base, k0, unit, units, MMA_FRAGMENT_KEYS, vectors, stride);
                sync_cube();
            }
            if k0 < plane_end {
                mma_attention_fragments_step::<E>(&qa, &k_s, &v_s, 0, &mut out, &mut running, k0, sees_lo, sees_hi, scale, lane, head_dim);
            }
            k0 += MMA_FRAGMENT_KEYS;
        }
    }

    // The rows' sums from their four lanes, then this lane's columns of rows g and g + 8.
    let sum_lo = quad_sum(running[2]);
    let sum_hi = quad_sum(running[3]);
    let inv_lo = select(sum_lo > f32::new(0.0), f32::new(1.0) / sum_lo, f32::new(0.0));
    let inv_hi = select(sum_hi > f32::new(0.0), f32::new(1.0) / sum_hi, f32::new(0.0));
    #[unroll]
    for x in 0..tiles {
        let column = x * MMA_FRAGMENT_COLUMNS + 2 * t;
        let (lo, hi) = (out[2 * x], out[2 * x + 1]);
        if row_lo < queries {
            let at = b * layout.o_batch + h * layout.o_head + row_lo * layout.o_row + column;
            output[at] = E::cast_from(lo[0] * inv_lo);
            output[at + 1] = E::cast_from(lo[1] * inv_lo);
        }
        if row_hi < queries {
            let at = b * layout.o_batch + h * layout.o_head + row_hi * layout.o_row + column;
            output[at] = E::cast_from(hi[0] * inv_hi);
            output[at + 1] = E::cast_from(hi[1] * inv_hi);
        }
    }
}

/// [`mma_attention_fragments_kernel`]'s steps with its keys and values copied (`copies`):
/// a ring of two slots of a step's rows each (`k_s`, `v_s`), filled by asynchronous copies of
/// `copy` values (`cp.async` on CUDA) from `k` and `v` (the layout's strides times `copy`;
/// `k_base`, `v_base` in values), each slot with a barrier every unit arrives on once its
/// copies into it are issued. While a step multiplies from one slot, the next step's copies
/// land in the other, which the cube leaves only once every plane is past the step before (a
/// barrier of the cube); no lane holds the next step's rows in registers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_attention_copied_steps<E: Float>(
    k: &Array<E>,
    v: &Array<E>,
    k_s: &mut SharedMemory<E>,
    v_s: &mut SharedMemory<E>,
    qa: &Array<Vector<E, Const<2>>>,
    out: &mut Array<Vector<f32, Const<2>>>,
    running: &mut Array<f32>,
    layout: &FlashLayout,
    k_base: usize,
    v_base: usize,
    end: usize,
    plane_end: usize,
    sees_lo: usize,
    sees_hi: usize,
    scale: f32,
    unit: usize,
    lane: usize,
    #[comptime] head_dim: usize,
    #[comptime] copy: usize,
) {
    let slot_values = comptime!(MMA_FRAGMENT_KEYS * (head_dim + MMA_PAD));
    let b0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let b1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    // The ring helpers take up to five slots; this ring has two (slots 2.. never come).
    copy_keys_values::<E>(k, v, k_s, v_s, 0, layout, k_base, v_base, 0, unit, head_dim, copy);
    ring_arrive(&b0, &b1, &b1, &b1, &b1, 0);
    let mut step = 0usize;
    let mut k0 = 0usize;
    while k0 < end {
        let slot = step % 2;
        let next = k0 + MMA_FRAGMENT_KEYS;
        if next < end {
            // The other slot held the step before: free once every plane is past it.
            sync_cube();
            copy_keys_values::<E>(k, v, k_s, v_s, (1 - slot) * slot_values, layout, k_base, v_base, next, unit, head_dim, copy);
            ring_arrive(&b0, &b1, &b1, &b1, &b1, 1 - slot);
        }
        ring_wait(&b0, &b1, &b1, &b1, &b1, slot, u32::cast_from((step / 2) % 2));
        if k0 < plane_end {
            mma_attention_fragments_step::<E>(qa, k_s, v_s, slot * slot_values, out, running, k0, sees_lo, sees_hi, scale, lane, head_dim);
        }
        k0 = next;
        step += 1;
    }
}

/// [`mma_attention_copied_steps`]' copies of keys and values `k0..k0 + MMA_FRAGMENT_KEYS` into
/// `k_s` and `v_s` from `slot` (rows `head_dim + MMA_PAD` values apart), `copy` values a copy
/// by units `unit, unit + 128, …`; rows past the last key are zeros, stored (a zero value times
/// a zero probability adds nothing, where stale memory could hold a NaN).
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_keys_values<E: Float>(
    k: &Array<E>,
    v: &Array<E>,
    k_s: &mut SharedMemory<E>,
    v_s: &mut SharedMemory<E>,
    slot: usize,
    layout: &FlashLayout,
    k_base: usize,
    v_base: usize,
    k0: usize,
    unit: usize,
    #[comptime] head_dim: usize,
    #[comptime] copy: usize,
) {
    let (per_row, stride) = comptime!((head_dim / copy, head_dim + MMA_PAD));
    let (k_key, v_key) = (layout.k_key * copy, layout.v_key * copy);
    let mut i = unit;
    while i < MMA_FRAGMENT_KEYS * per_row {
        let row = i / per_row;
        let c = (i % per_row) * copy;
        let key = k0 + row;
        let to = slot + row * stride + c;
        if key < layout.keys {
            let (from_k, from_v) = (k_base + key * k_key + c, v_base + key * v_key + c);
            copy_async::<E>(&k.slice(from_k, from_k + copy), &mut k_s.slice_mut(to, to + copy), comptime!(copy as u32));
            copy_async::<E>(&v.slice(from_v, from_v + copy), &mut v_s.slice_mut(to, to + copy), comptime!(copy as u32));
        } else {
            #[unroll]
            for e in 0..copy {
                k_s[to + e] = E::from_int(0);
                v_s[to + e] = E::from_int(0);
            }
        }
        i += MMA_PLANES * MMA_LANES;
    }
}

/// One step of [`mma_attention_fragments_kernel`] for one plane (see there): the scores of its
/// queries (`qa`'s A fragments) against keys `k0..k0 + MMA_FRAGMENT_KEYS` (rows from `slot` in
/// `k_s`), the rows' running maxima and sums in `running` (`[max_lo, max_hi, sum_lo, sum_hi]`)
/// and the outputs in `out` rescaled, then the probabilities times the values (from `slot` in
/// `v_s`) added to `out`. Keys from `sees_lo` (row g) and `sees_hi` (row g + 8) on count for
/// nothing.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_attention_fragments_step<E: Float>(
    qa: &Array<Vector<E, Const<2>>>,
    k_s: &SharedMemory<E>,
    v_s: &SharedMemory<E>,
    slot: usize,
    out: &mut Array<Vector<f32, Const<2>>>,
    running: &mut Array<f32>,
    k0: usize,
    sees_lo: usize,
    sees_hi: usize,
    scale: f32,
    lane: usize,
    #[comptime] head_dim: usize,
) {
    let t = lane % 4;
    let (matrix, matrix_row) = (lane / 8, lane % 8);
    let stride = comptime!(head_dim + MMA_PAD);
    let steps = comptime!(head_dim / MMA_TILE);
    let tiles = comptime!(head_dim / MMA_FRAGMENT_COLUMNS);
    let key_tiles = comptime!(MMA_FRAGMENT_KEYS / MMA_FRAGMENT_COLUMNS);
    let mma = cmma::MmaDefinition::<E, E, f32>::new(16usize, 8usize, 16usize);
    // Scores: tile n holds keys 8n.. of the step.
    let mut s = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * key_tiles));
    #[unroll]
    for x in 0..2 * key_tiles {
        s[x] = Vector::new(f32::new(0.0));
    }
    #[unroll]
    for c in 0..steps {
        let mut a = Array::<Vector<E, Const<2>>>::new(4usize);
        #[unroll]
        for x in 0..4usize {
            a[x] = qa[4 * c + x];
        }
        #[unroll]
        for pair in 0..key_tiles / 2 {
            // Matrices (keys 0–7, values 0–7), (keys 0–7, 8–15), (keys 8–15, 0–7),
            // (keys 8–15, 8–15) of keys 16·pair..: B registers of two key tiles.
            let at = (pair * 16 + (matrix / 2) * 8 + matrix_row) * stride + c * MMA_TILE + (matrix % 2) * 8;
            let kb = mma.load_matrix::<E, Const<2>>(&k_s.slice(slot + at, slot + at + 8), cmma::MatrixIdent::B, 4usize, false);
            #[unroll]
            for half in 0..2usize {
                mma_step::<E>(&a, kb[2 * half], kb[2 * half + 1], &mut s, comptime!(2 * pair + half));
            }
        }
    }
    // The rows' maxima over the keys they see, met across the row's four lanes.
    let mut top_lo = running[0];
    let mut top_hi = running[1];
    #[unroll]
    for n in 0..key_tiles {
        let (lo, hi) = (s[2 * n], s[2 * n + 1]);
        #[unroll]
        for e in 0..2usize {
            let key = k0 + n * MMA_FRAGMENT_COLUMNS + 2 * t + e;
            let (x_lo, x_hi) = (lo[e] * scale, hi[e] * scale);
            top_lo = select(key < sees_lo && x_lo > top_lo, x_lo, top_lo);
            top_hi = select(key < sees_hi && x_hi > top_hi, x_hi, top_hi);
        }
    }
    top_lo = quad_max(top_lo);
    top_hi = quad_max(top_hi);
    let (fix_lo, fix_hi) = (f32::exp(running[0] - top_lo), f32::exp(running[1] - top_hi));
    let (max_lo, max_hi) = (top_lo, top_hi);
    let mut sum_lo = running[2] * fix_lo;
    let mut sum_hi = running[3] * fix_hi;
    #[unroll]
    for x in 0..tiles {
        let mut lo = out[2 * x];
        let mut hi = out[2 * x + 1];
        #[unroll]
        for e in 0..2usize {
            lo[e] *= fix_lo;
            hi[e] *= fix_hi;
        }
        out[2 * x] = lo;
        out[2 * x + 1] = hi;
    }
    // Probabilities in the dtype: key tiles 2j and 2j + 1 are the A fragment of keys
    // 16j.. (rows g and g + 8 of keys 2t, 2t + 1, then of keys 2t + 8, 2t + 9).
    let mut p = Array::<Vector<E, Const<2>>>::new(comptime!(2 * key_tiles));
    #[unroll]
    for n in 0..key_tiles {
        let (lo, hi) = (s[2 * n], s[2 * n + 1]);
        let mut p_lo = Vector::<E, Const<2>>::empty();
        let mut p_hi = Vector::<E, Const<2>>::empty();
        #[unroll]
        for e in 0..2usize {
            let key = k0 + n * MMA_FRAGMENT_COLUMNS + 2 * t + e;
            let x_lo = select(key < sees_lo, f32::exp(lo[e] * scale - max_lo), f32::new(0.0));
            let x_hi = select(key < sees_hi, f32::exp(hi[e] * scale - max_hi), f32::new(0.0));
            sum_lo += x_lo;
            sum_hi += x_hi;
            p_lo[e] = E::cast_from(x_lo);
            p_hi[e] = E::cast_from(x_hi);
        }
        p[2 * n] = p_lo;
        p[2 * n + 1] = p_hi;
    }
    // Outputs: probabilities (16 rows × 16 keys) times values (16 keys × 8 columns).
    #[unroll]
    for j in 0..key_tiles / 2 {
        let mut a = Array::<Vector<E, Const<2>>>::new(4usize);
        #[unroll]
        for x in 0..4usize {
            a[x] = p[4 * j + x];
        }
        #[unroll]
        for c in 0..steps {
            // Matrices (keys 0–7, columns 0–7), (keys 8–15, 0–7), (keys 0–7, 8–15),
            // (keys 8–15, 8–15) of keys 16j.., transposed: B registers of two column tiles.
            let at = (j * 16 + (matrix % 2) * 8 + matrix_row) * stride + c * MMA_TILE + (matrix / 2) * 8;
            let vb = mma.load_matrix::<E, Const<2>>(&v_s.slice(slot + at, slot + at + 8), cmma::MatrixIdent::B, 4usize, true);
            #[unroll]
            for half in 0..2usize {
                mma_step::<E>(&a, vb[2 * half], vb[2 * half + 1], out, comptime!(2 * c + half));
            }
        }
    }
    running[0] = max_lo;
    running[1] = max_hi;
    running[2] = sum_lo;
    running[3] = sum_hi;
}

/// The largest of `x` over the four lanes `4g..4g + 4` of a plane (two shuffles).
#[cube]
fn quad_max(x: f32) -> f32 {
    let a = plane_shuffle_xor(x, 1u32);
    let y = select(a > x, a, x);
    let b = plane_shuffle_xor(y, 2u32);
    select(b > y, b, y)
}

/// The sum of `x` over the four lanes `4g..4g + 4` of a plane (two shuffles).
#[cube]
fn quad_sum(x: f32) -> f32 {
    let y = x + plane_shuffle_xor(x, 1u32);
    y + plane_shuffle_xor(y, 2u32)
}

/// Why the device cannot run [`mma_attention_fragments_kernel`] for `dtype`, `None` when it can:
/// the register products of [`mma_fragments_refusal`] and `ldmatrix` of the dtype.
fn mma_attention_fragments_refusal<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> Option<String> {
    mma_fragments_refusal(client, dtype).or_else(|| (!client.properties().features.matmul.ldmatrix.contains(&dtype.into())).then(|| format!("no {dtype:?} ldmatrix")))
}

/// Most 32-bit registers one lane of [`mma_attention_fragments_kernel`] holds for each operand
/// of the next step with `mma_attention_prefetch`, beside its queries', scores' and outputs'
/// ones: 16 is head dimension 64 in 16-bit vectors of 8. (On the H100, session 33, the
/// prefetch took CLIP's 64-dim attention from 254–262 to 229–244 µs, and Phi-3's 96-dim
/// prefill attention, at 24 registers, from 98–101 to 107–109 µs at 1024 tokens.)
const MMA_PREFETCH_MAX_REGISTERS: usize = 16;

/// Whether [`mma_attention_fragments_kernel`] prefetches each step's keys and values into
/// registers for this head dimension, load width and dtype: the cube's units split the step's
/// vectors evenly, and each holds at most [`MMA_PREFETCH_MAX_REGISTERS`] registers per operand
/// (a vector of under 4 bytes still takes a whole register).
fn mma_attention_prefetch_fits(head_dim: usize, width: usize, dtype_bytes: usize) -> bool {
    let (vectors, units) = (head_dim / width, MMA_PLANES * MMA_LANES);
    let loads = MMA_FRAGMENT_KEYS * vectors / units;
    (MMA_FRAGMENT_KEYS * vectors).is_multiple_of(units) && loads * (width * dtype_bytes).div_ceil(4) <= MMA_PREFETCH_MAX_REGISTERS
}

/// Whether [`mma_attention_fragments_kernel`] copies its keys and values into a ring of two
/// steps (`mma_attention_copies`) for this head dimension, load width and dtype: the device's
/// asynchronous copies of a load vector each ([`copies_async`]), and the queries and the ring
/// within the shared memory.
fn mma_attention_copies_fit<R: CubeRuntime>(client: &ComputeClient<R>, head_dim: usize, width: usize, dtype_bytes: usize) -> bool {
    let shared = (MMA_PLANES * MMA_TILE + 4 * MMA_FRAGMENT_KEYS) * (head_dim + MMA_PAD) * dtype_bytes;
    copies_async(client, width * dtype_bytes) && shared <= client.properties().hardware.max_shared_memory_size
}

/// Largest head dimension [`mma_attention`] takes (each lane holds `16 · ⌈head_dim / 32⌉`
/// output sums in registers); it takes the multiples of 16 (the tile) up to this.
const MMA_MAX_HEAD_DIM: usize = 128;

/// Why [`mma_attention`] cannot run this problem here, `None` when it can: tensor cores with
/// 16×16×16 tiles of the dtype and f32 sums, 32-lane planes with shuffles, a supported head
/// dimension, as many query heads as a multiple of the key/value heads, and the shared memory.
fn mma_attention_refusal<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, causal: bool) -> Option<String> {
    let properties = q.client.properties();
    let dtype = q.dtype;
    let [batch, heads, queries, head_dim] = [q.meta.shape()[0], q.meta.shape()[1], q.meta.shape()[2], q.meta.shape()[3]];
    let (kv_heads, keys) = (k.meta.shape()[1], k.meta.shape()[2]);
    let shared = mma_attention_shared_bytes(head_dim, dtype.size());
    if k.dtype != dtype || v.dtype != dtype {
        Some(format!("{dtype:?} queries, {:?} keys, {:?} values", k.dtype, v.dtype))
    } else if let Some(reason) = tensor_core_refusal(&q.client, dtype) {
        Some(reason)
    } else if head_dim == 0 || !head_dim.is_multiple_of(MMA_TILE) || head_dim > MMA_MAX_HEAD_DIM {
        Some(format!("head dimension {head_dim}"))
    } else if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || (causal && keys < queries) {
        Some(format!("{heads} query heads over {kv_heads} key heads, {queries} queries over {keys} keys"))
    } else if batch * heads > MAX_CUBES_PER_DIM {
        Some(format!("{} (batch, head) pairs", batch * heads))
    } else if shared > properties.hardware.max_shared_memory_size {
        Some(format!("{shared} bytes of shared memory, the device has {}", properties.hardware.max_shared_memory_size))
    } else {
        None
    }
}

/// Row strides (values) of [`mma_attention_kernel`]'s shared buffers, padded ([`MMA_PAD`],
/// [`MMA_PAD_F32`]); the kernel and the host's count of its shared memory both take them here.
struct MmaStrides {
    /// Queries, keys and values.
    heads: usize,
    /// Probabilities (the dtype).
    probabilities: usize,
    /// f32 scores.
    scores: usize,
    /// f32 partial outputs.
    outputs: usize,
}

impl MmaStrides {
    fn new(head_dim: usize) -> Self {
        Self { heads: head_dim + MMA_PAD, probabilities: MMA_KEYS + MMA_PAD, scores: MMA_KEYS + MMA_PAD_F32, outputs: head_dim + MMA_PAD_F32 }
    }
}

/// Shared memory of one [`mma_attention_kernel`] cube: queries, keys and values,
/// probabilities, and the buffer the scores and the partial outputs share.
fn mma_attention_shared_bytes(head_dim: usize, dtype_bytes: usize) -> usize {
    let rows = MMA_PLANES * MMA_TILE;
    let s = MmaStrides::new(head_dim);
    (rows * s.heads + 2 * MMA_KEYS * s.heads + rows * s.probabilities) * dtype_bytes + rows * s.scores.max(s.outputs) * 4
}

/// [`Kernels::mma_attention`]: [`mma_attention_fragments_kernel`] where it runs (switch on, no
/// refusal), else [`mma_attention_kernel`] when `staged`, else `Ok(None)` (no refusal recorded);
/// `Err` with the reason where the chosen kernel cannot run the problem (see
/// [`mma_attention_refusal`]).
pub(crate) fn mma_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    causal: bool,
    staged: bool,
) -> Result<Option<CubeTensor<R>>, String> {
    let fragments = super::kernel_on("mma_attention_fragments") && mma_attention_fragments_refusal(&q.client, q.dtype).is_none();
    if !staged && !fragments {
        return Ok(None);
    }
    if let Some(reason) = mma_attention_refusal(&q, &k, &v, causal) {
        return Err(reason);
    }
    let (q, k, v, output) = flash_operands(q, k, v);
    let [batch, heads, queries, head_dim] = [q.meta.shape()[0], q.meta.shape()[1], q.meta.shape()[2], q.meta.shape()[3]];
    if batch * heads * queries == 0 {
        return Ok(Some(output));
    }
    // Vectors where every row start is a whole number of them (offsets, then strides; the
    // load widths are powers of two).
    let mut width = if super::kernel_on("vector_loads") { load_vector_size(&[&q, &k, &v], head_dim) } else { 1 };
    while width > 1 && [&q, &k, &v].iter().any(|t| t.meta.strides()[..3].iter().any(|s| !s.is_multiple_of(width))) {
        width /= 2;
    }
    let layout = flash_layout(&q, &k, &v, &output, width);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dtype = q.dtype;
    let address = address_type([&q, &k, &v, &output]);
    super::MMA_ATTENTIONS.add();
    if fragments {
        super::MMA_ATTENTION_FRAGMENTS.add();
        let copies = super::kernel_on("mma_attention_copies") && mma_attention_copies_fit(&q.client, head_dim, width, dtype.size());
        let prefetch = !copies && super::kernel_on("mma_attention_prefetch") && mma_attention_prefetch_fits(head_dim, width, dtype.size());
        if copies {
            super::MMA_ATTENTION_COPIES.add();
        }
        unsafe {
            mma_attention_fragments_kernel::launch_unchecked(
                &output.client,
                CubeCount::new_2d(queries.div_ceil(MMA_PLANES * MMA_TILE) as u32, (batch * heads) as u32),
                CubeDim::new_2d(MMA_LANES as u32, MMA_PLANES as u32),
                address,
                width,
                q.into_array_arg(),
                k.clone().into_array_arg(),
                v.clone().into_array_arg(),
                k.into_array_arg(),
                v.into_array_arg(),
                output.clone().into_array_arg(),
                layout,
                scale,
                head_dim,
                head_dim / width,
                causal,
                prefetch,
                copies,
                dtype.into(),
            )
        };
        return Ok(Some(output));
    }
    unsafe {
        mma_attention_kernel::launch_unchecked(
            &output.client,
            CubeCount::new_2d(queries.div_ceil(MMA_PLANES * MMA_TILE) as u32, (batch * heads) as u32),
            CubeDim::new_2d(MMA_LANES as u32, MMA_PLANES as u32),
            address,
            width,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            output.clone().into_array_arg(),
            layout,
            scale,
            head_dim,
            head_dim / width,
            causal,
            dtype.into(),
        )
    };
    Ok(Some(output))
}

/// A paged cache's block tables and row lengths (`Int` tensors), entries per table row, and
/// tokens per block; see [`Pages`].
type PageTables<R> = (CubeTensor<R>, CubeTensor<R>, usize, usize);

/// Launches [`decode_attention_planes_kernel`] (and [`decode_attention_combine_kernel`] when
/// the keys are split) into `output`: `keys` is the longest row's key count; `pages` reads the
/// keys through block tables.
#[allow(clippy::too_many_arguments)]
fn decode_attention_planes<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    output: CubeTensor<R>,
    strides: DecodeStrides,
    batch_heads: usize,
    keys: usize,
    lanes: usize,
    pages: Option<PageTables<R>>,
) -> CubeTensor<R> {
    let client = q.client.clone();
    let (dtype, head_dim) = (q.dtype, q.meta.shape()[q.meta.shape().num_dims() - 1]);
    let (splits, chunk) = decode_splits(&client, batch_heads, keys);
    // Each split's unnormalised output, maximum and sum: `head_dim + 2` values per cube (one
    // unused value when the keys are not split).
    let partial_values = if splits > 1 { batch_heads * splits * (head_dim + 2) } else { 1 };
    let partials = empty_device_contiguous_dtype(client.clone(), q.device.clone(), [partial_values].into(), DType::F32);
    let paged = pages.is_some();
    // Without pages the kernel reads neither table: one unused value stands for both.
    let (tables, lengths, blocks, block_size) = pages.unwrap_or_else(|| {
        let none = empty_device_contiguous_dtype(client.clone(), q.device.clone(), [1].into(), DType::I32);
        (none.clone(), none, 1, 1)
    });
    let int_dtype = tables.dtype;
    let address = address_type([&q, &k, &v, &output, &partials, &tables]);
    unsafe {
        decode_attention_planes_kernel::launch_unchecked(
            &client,
            row_cubes(batch_heads * splits),
            CubeDim::new_2d(lanes as u32, DECODE_PLANES),
            address,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            output.clone().into_array_arg(),
            partials.clone().into_array_arg(),
            PagesLaunch::new(tables.into_array_arg(), lengths.into_array_arg(), blocks, block_size),
            strides.launch(1),
            batch_heads,
            splits,
            chunk,
            1.0 / (head_dim as f32).sqrt(),
            head_dim,
            lanes,
            head_dim / lanes,
            DECODE_PLANES as usize,
            DECODE_TILE,
            paged,
            super::kernel_on("decode_attention_early_values"),
            [dtype.into(), int_dtype.into()],
        )
    };
    if splits > 1 {
        unsafe {
            decode_attention_combine_kernel::launch_unchecked(
                &client,
                row_cubes(batch_heads),
                CubeDim::new_1d(head_dim as u32),
                address,
                partials.into_array_arg(),
                output.clone().into_array_arg(),
                batch_heads,
                splits,
                head_dim,
                dtype.into(),
            )
        };
    }
    output
}

/// Decode attention over a paged pool with planes of `lanes` units ([`decode_plane`]); see
/// [`Kernels::paged_decode_attention`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_decode_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k_pool: CubeTensor<R>,
    v_pool: CubeTensor<R>,
    block_tables: CubeTensor<R>,
    lengths: CubeTensor<R>,
    block_size: usize,
    keys: usize,
    lanes: usize,
) -> CubeTensor<R> {
    let [rows, heads, head_dim] = [0, 1, 2].map(|i| q.meta.shape()[i]);
    let last_unit = |t: CubeTensor<R>| if t.meta.strides()[2] == 1 { t } else { into_contiguous(t) };
    let (q, k, v) = (last_unit(q), last_unit(k_pool), last_unit(v_pool));
    let (tables, lengths) = (into_contiguous(block_tables), into_contiguous(lengths));
    let blocks = tables.meta.shape()[1];
    let kv_heads = k.meta.shape()[1];
    let output = empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), [rows, heads, head_dim].into(), q.dtype);
    if rows * heads == 0 || keys == 0 {
        return output;
    }
    let (qs, ks, vs) = (q.meta.strides().clone(), k.meta.strides().clone(), v.meta.strides().clone());
    // Rows of the pool are the keys; no batch stride (the block tables place each row).
    let strides = DecodeStrides { heads, group: heads / kv_heads.max(1), keys, q: [qs[0], qs[1]], k: [0, ks[1], ks[0]], v: [0, vs[1], vs[0]] };
    decode_attention_planes(q, k, v, output, strides, rows * heads, keys, lanes, Some((tables, lengths, blocks, block_size)))
}

/// Planes per cube of [`decode_attention_planes_kernel`].
const DECODE_PLANES: u32 = 8;
/// Keys a plane scores at once in [`decode_attention_planes_kernel`] (their loads and plane
/// sums are independent, so they overlap).
const DECODE_TILE: usize = 8;
/// Cubes per multiprocessor that splitting the keys aims for (flash-decoding): few (batch,
/// head) pairs would leave most multiprocessors idle, each cube reading its whole cache row.
const DECODE_CUBES_PER_SM: usize = 4;
/// Multiprocessors assumed where the runtime does not say.
const DEFAULT_SMS: usize = 4;

/// The device's multiprocessors ([`DEFAULT_SMS`] where the runtime does not say).
fn multiprocessors<R: CubeRuntime>(client: &ComputeClient<R>) -> usize {
    client.properties().hardware.num_streaming_multiprocessors.map_or(DEFAULT_SMS, |n| n as usize)
}

/// How [`decode_attention_planes_kernel`] splits the keys of each (batch, head): `(splits,
/// chunk)`, `chunk` keys per cube (whole rounds of the cube's planes and tiles), enough cubes
/// for [`DECODE_CUBES_PER_SM`] per multiprocessor. `(1, keys)` when one cube per pair fills the
/// device or `decode_attention_split` is off.
fn decode_splits<R: CubeRuntime>(client: &ComputeClient<R>, batch_heads: usize, keys: usize) -> (usize, usize) {
    let sms = multiprocessors(client);
    let round = DECODE_PLANES as usize * DECODE_TILE;
    let wanted = (DECODE_CUBES_PER_SM * sms).div_ceil(batch_heads.max(1));
    let splits = wanted.clamp(1, keys.div_ceil(round).max(1));
    if splits == 1 || !super::kernel_on("decode_attention_split") {
        return (1, keys);
    }
    let chunk = keys.div_ceil(splits).next_multiple_of(round);
    (keys.div_ceil(chunk), chunk)
}

/// Where a paged decode attention finds each row's keys: row `b`'s key `j < lengths[b]` is
/// pool row `tables[b · blocks + j / block_size] · block_size + j % block_size`.
#[derive(CubeLaunch, CubeType)]
struct Pages<I: Int> {
    tables: Array<I>,
    lengths: Array<I>,
    /// Block-table entries per row.
    blocks: usize,
    block_size: usize,
}

/// The pool row (paged) or cache position (not paged) of key `j` of the row whose block table
/// starts at `table`.
#[cube]
fn key_row<I: Int>(pages: &Pages<I>, table: usize, j: usize, #[comptime] paged: bool) -> usize {
    if paged {
        (u32::cast_from(pages.tables[table + j / pages.block_size]) as usize) * pages.block_size + j % pages.block_size
    } else {
        j
    }
}

/// Decode attention with planes over keys: `splits` cubes per (batch, head), each over `chunk`
/// consecutive keys, of [`DECODE_PLANES`] planes of `lanes` units (the hardware plane). Lane
/// `l` of a plane holds the query values `l, l + lanes, …` (`per_lane = head_dim / lanes` of
/// them); the plane takes keys in tiles of `tile`: each lane's partial dot products, one plane
/// sum per key, then an online softmax (running maximum and sum) and the weighted values
/// accumulated per lane, reading each key and value row once with consecutive lanes on
/// consecutive values; with `early_values` (the switch `decode_attention_early_values`) each
/// lane loads its values of the tile's value rows together with its key loads, so that they
/// are in flight while the scores' plane sums and the softmax run, at `tile · per_lane` more
/// registers. The planes' results meet in shared memory at the end: the output when
/// the keys are not split, else the cube's unnormalised output, maximum and sum into
/// `partials` (`head_dim + 2` values per cube) for [`decode_attention_combine_kernel`]. No
/// scores buffer and no cube-wide barrier in the loop.
#[cube(launch_unchecked, address_type = "dynamic")]
fn decode_attention_planes_kernel<E: Float, I: Int>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    output: &mut Array<E>,
    partials: &mut Array<f32>,
    pages: &Pages<I>,
    layout: &DecodeLayout,
    batch_heads: usize,
    splits: usize,
    chunk: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] lanes: usize,
    #[comptime] per_lane: usize,
    #[comptime] planes: usize,
    #[comptime] tile: usize,
    #[comptime] paged: bool,
    #[comptime] early_values: bool,
    #[define(E, I)] _dtypes: [StorageType; 2],
) {
    let cube = CUBE_POS;
    if cube >= batch_heads * splits {
        terminate!();
    }
    let DecodeKeys { bh, b, h, hk, lo, hi, table } = decode_keys(pages, layout, cube, splits, chunk, paged);
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let k_base = b * layout.k_batch + hk * layout.k_head + lane;
    let v_base = b * layout.v_batch + hk * layout.v_head + lane;
    let q_base = b * layout.q_batch + h * layout.q_head + lane;

    let mut query = Array::<f32>::new(per_lane);
    let mut acc = Array::<f32>::new(per_lane);
    #[unroll]
    for i in 0..per_lane {
        query[i] = f32::cast_from(q[q_base + i * lanes]) * scale;
        acc[i] = f32::new(0.0);
    }
    // This plane's running maximum score and sum of exp(score − maximum).
    let mut state = Array::<f32>::new(2usize);
    state[0usize] = f32::new(NO_SCORE);
    state[1usize] = f32::new(0.0);
    let mut scores = Array::<f32>::new(tile);
    // With `early_values`, the tile's value rows, loaded beside its key rows.
    let mut values = Array::<E>::new(comptime!(if early_values { tile * per_lane } else { 1 }));

    let last = hi - 1;
    let mut start = lo + plane * tile;
    while start < hi {
        // Keys past the cube's last read that key and are masked out of the softmax.
        #[unroll]
        for t in 0..tile {
            let j = select(start + t < hi, start + t, last);
            let row = key_row(pages, table, j, paged);
            let key = k_base + row * layout.k_key;
            let mut dot = query[0usize] * f32::cast_from(k[key]);
            #[unroll]
            for i in 1..per_lane {
                dot += query[i] * f32::cast_from(k[key + i * lanes]);
            }
            scores[t] = dot;
            if early_values {
                let value = v_base + row * layout.v_key;
                #[unroll]
                for i in 0..per_lane {
                    values[t * per_lane + i] = v[value + i * lanes];
                }
            }
        }
        let mut best = state[0usize];
        #[unroll]
        for t in 0..tile {
            let s = select(start + t < hi, plane_sum(scores[t]), f32::new(NO_SCORE));
            scores[t] = s;
            best = select(s > best, s, best);
        }
        let correction = f32::exp(state[0usize] - best);
        let mut sum = state[1usize] * correction;
        #[unroll]
        for i in 0..per_lane {
            acc[i] *= correction;
        }
        #[unroll]
        for t in 0..tile {
            let p = f32::exp(scores[t] - best);
            sum += p;
            if early_values {
                #[unroll]
                for i in 0..per_lane {
                    acc[i] += p * f32::cast_from(values[t * per_lane + i]);
                }
            } else {
                let j = select(start + t < hi, start + t, last);
                let value = v_base + key_row(pages, table, j, paged) * layout.v_key;
                #[unroll]
                for i in 0..per_lane {
                    acc[i] += p * f32::cast_from(v[value + i * lanes]);
                }
            }
        }
        state[0usize] = best;
        state[1usize] = sum;
        start += planes * tile;
    }

    // The planes' maxima, sums and accumulators meet in shared memory (a plane with no key
    // left has maximum NO_SCORE and weighs nothing).
    let mut stats = SharedMemory::<f32>::new(planes * 2);
    let mut parts = SharedMemory::<f32>::new(planes * head_dim);
    if UNIT_POS_X == 0 {
        stats[plane * 2] = state[0usize];
        stats[plane * 2 + 1] = state[1usize];
    }
    #[unroll]
    for i in 0..per_lane {
        parts[plane * head_dim + lane + i * lanes] = acc[i];
    }
    sync_cube();
    decode_attention_finish::<E>(&stats, &parts, output, partials, bh, cube, splits, head_dim, planes, 1usize);
}

/// The keys of a decode attention cube (`splits` per (batch, head), `chunk` keys each): its
/// (batch, head) `bh`, batch `b`, head `h` and key/value head `hk`, its keys `lo..hi` (an empty
/// range where a paged row is shorter than the longest, which leaves the cube's state empty),
/// and where its row's block table starts.
#[derive(CubeType)]
struct DecodeKeys {
    bh: usize,
    b: usize,
    h: usize,
    hk: usize,
    lo: usize,
    hi: usize,
    table: usize,
}

#[cube]
fn decode_keys<I: Int>(pages: &Pages<I>, layout: &DecodeLayout, cube: usize, splits: usize, chunk: usize, #[comptime] paged: bool) -> DecodeKeys {
    let bh = cube / splits;
    let b = bh / layout.heads;
    let keys = if paged { u32::cast_from(pages.lengths[b]) as usize } else { layout.keys };
    let lo = (cube % splits) * chunk;
    let h = bh % layout.heads;
    DecodeKeys { bh, b, h, hk: h / layout.group, lo, hi: select(keys > lo, min(keys, lo + chunk), lo), table: b * pages.blocks }
}

/// The end of the decode attention kernels, after the cube's barrier: `stats` holds each
/// plane's maximum score and sum of weights, `parts` each plane's `rows` accumulators of
/// `head_dim` values (at `(plane · rows + r) · head_dim`); one unit per output value weighs
/// them by the planes' maxima and writes the output (`splits == 1`) or the cube's
/// unnormalised output, maximum and sum into `partials` for
/// [`decode_attention_combine_kernel`]. A plane with no key has maximum `NO_SCORE` and weighs
/// nothing.
#[cube]
#[allow(clippy::too_many_arguments)]
fn decode_attention_finish<E: Float>(
    stats: &SharedMemory<f32>,
    parts: &SharedMemory<f32>,
    output: &mut Array<E>,
    partials: &mut Array<f32>,
    bh: usize,
    cube: usize,
    splits: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[comptime] rows: usize,
) {
    let unit = UNIT_POS as usize;
    if unit < head_dim {
        let mut big = stats[0];
        for p in 1..planes {
            let m = stats[p * 2];
            big = select(m > big, m, big);
        }
        let mut total = f32::new(0.0);
        let mut sum = f32::new(0.0);
        for p in 0..planes {
            let w = f32::exp(stats[p * 2] - big);
            total += stats[p * 2 + 1] * w;
            let mut plane_sum = f32::new(0.0);
            #[unroll]
            for r in 0..rows {
                plane_sum += parts[(p * rows + r) * head_dim + unit];
            }
            sum += plane_sum * w;
        }
        if splits == 1 {
            output[bh * head_dim + unit] = E::cast_from(sum / total);
        } else {
            let base = cube * (head_dim + 2);
            partials[base + unit] = sum;
            if unit == 0 {
                partials[base + head_dim] = big;
                partials[base + head_dim + 1] = total;
            }
        }
    }
}

/// Whether the device copies `bytes` at a time asynchronously from global into shared memory,
/// with barriers in shared memory to wait on (`cp.async` and `mbarrier` on CUDA from compute
/// capability 8.0; copies of 4, 8 or 16 bytes).
fn copies_async<R: CubeRuntime>(client: &ComputeClient<R>, bytes: usize) -> bool {
    let properties = client.properties();
    matches!(bytes, 4 | 8 | 16) && properties.features.copy_async && properties.supports_type(cubecl::ir::OpaqueType::Barrier(cubecl::ir::BarrierLevel::Cube))
}

/// The output of split decode attention: one cube of `head_dim` units per (batch, head)
/// weighs its `splits` partial outputs, maxima and sums (flash-decoding's combine).
#[cube(launch_unchecked, address_type = "dynamic")]
fn decode_attention_combine_kernel<E: Float>(
    partials: &Array<f32>,
    output: &mut Array<E>,
    batch_heads: usize,
    splits: usize,
    #[comptime] head_dim: usize,
    #[define(E)] _dtype: StorageType,
) {
    let bh = CUBE_POS;
    if bh >= batch_heads {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let stride = head_dim + 2;
    let base = bh * splits * stride;
    let mut big = partials[base + head_dim];
    for s in 1..splits {
        let m = partials[base + s * stride + head_dim];
        big = select(m > big, m, big);
    }
    let mut total = f32::new(0.0);
    let mut sum = f32::new(0.0);
    for s in 0..splits {
        let at = base + s * stride;
        let w = f32::exp(partials[at + head_dim] - big);
        total += partials[at + head_dim + 1] * w;
        sum += partials[at + unit] * w;
    }
    output[bh * head_dim + unit] = E::cast_from(sum / total);
}

/// The hardware plane size when every plane of `client` has it and plane operations work.
fn uniform_plane<R: CubeRuntime>(client: &ComputeClient<R>) -> Option<usize> {
    let properties = client.properties();
    let (min, max) = (properties.hardware.plane_size_min, properties.hardware.plane_size_max);
    let uniform = min == max && max > 0;
    (properties.features.plane.contains(cubecl::features::Plane::Ops) && uniform).then_some(max as usize)
}

/// [`uniform_plane`] where it divides `head_dim` and [`DECODE_PLANES`] planes cover it, so
/// that [`decode_attention_planes_kernel`] can split `head_dim` values over the lanes.
fn decode_plane<R: CubeRuntime>(client: &ComputeClient<R>, head_dim: usize) -> Option<usize> {
    uniform_plane(client).filter(|&lanes| head_dim.is_multiple_of(lanes) && head_dim <= DECODE_PLANES as usize * lanes)
}

/// Most rows for which the skinny product splits `d_in` over a cube's planes. With more rows a
/// cube's arithmetic per weight load grows and the input rows are read once per cube: on the
/// H200 (session 11) the split made 10-row products 1.1–1.7× slower (`gate_up_proj` 51 → 89
/// µs) than session 10's planes of their own columns, while it made one-row products 1.4–2×
/// faster than Burn's GEMV; cubes of one plane were in between (61 µs).
const SKINNY_SPLIT_ROWS: usize = 3;
/// Planes per cube (each with its own columns) above [`SKINNY_SPLIT_ROWS`] rows: session 10's
/// shape, 8 columns per cube.
const SKINNY_COLUMN_PLANES: usize = 2;
/// Most planes per cube of the skinny product.
const SKINNY_MAX_PLANES: usize = 8;
/// Shared memory the skinny product's lane partials may take where planes cannot sum (bytes).
const SKINNY_SHARED_BYTES: usize = 32 * 1024;

/// `x · weightᵀ` for `rows` ≤ 16 rows of `x` (`[rows, d_in]`, contiguous) and the checkpoint's
/// weight rows (`[d_out, d_in]`, contiguous), both read in vectors of `N` values, by cubes of
/// `planes` planes of `lanes` units, each plane's lanes over `columns` weight rows at once
/// (one weight load per row in flight together, each input vector read and converted once for
/// all of them, `rows × columns` f32 sums per unit and no barrier in the loop):
/// - `split` (few rows): the cube's planes share its `columns` weight rows and split `d_in`
///   between them (split-K inside the cube: unit `u` takes vectors `u, u + planes·lanes, …`),
///   so that one row and few columns still keep enough loads in flight;
/// - else: each plane has `columns` weight rows of its own over the whole of `d_in` (lane `l`
///   takes vectors `l, l + lanes, …`); with more rows a cube's arithmetic per weight load
///   grows and its planes share the input rows through the cache.
///
/// Each lane issues `depth` loads per weight row (strided as above) before it multiplies, then
/// finishes with single loads; every lane adds its products in the same order at any depth.
///
/// Fused steps (comptime): `norm` makes the input `Phi3RMSNorm(x)` with `norm_weight` and
/// `eps` (each cube sums the rows' squares first); `silu` pairs the weight rows (a group's
/// first `columns / 2` are gate rows `o`, the others the up rows `o + d_out`) and writes
/// `up · SiLU(gate)` to output column `o` of `d_out`; `add` adds `residual` to the output.
/// Each step rounds to `E` where the composed steps do.
///
/// The sums meet by plane sums and shared memory (`plane_reduce`, where the hardware plane is
/// `lanes`), else through one shared-memory slot per unit. Columns past `d_out` read the last
/// weight row and are not written.
#[cube(launch_unchecked, address_type = "dynamic")]
fn skinny_linear_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    norm_weight: &Array<Vector<E, N>>,
    residual: &Array<E>,
    output: &mut Array<E>,
    vectors: usize,
    d_out: usize,
    eps: f32,
    #[comptime] rows: usize,
    #[comptime] planes: usize,
    #[comptime] lanes: usize,
    #[comptime] columns: usize,
    #[comptime] depth: usize,
    #[comptime] split: bool,
    #[comptime] plane_reduce: bool,
    #[comptime] norm: bool,
    #[comptime] norm_after: bool,
    #[comptime] silu: bool,
    #[comptime] add: bool,
    #[define(E)] _dtype: StorageType,
) {
    let width = N::value();
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let units = planes * lanes;
    let sums = rows * columns;
    // Output columns per group: one per weight row, or one per (gate, up) pair.
    let outs = comptime![if silu { columns / 2 } else { columns }];
    // Units sharing `columns` weight rows form a group: the cube (split) or each plane (not).
    let groups = comptime![if split { 1 } else { planes }];
    let mut group = plane;
    if split {
        group = 0;
    }
    // The group's first output column; where this unit starts and how it strides over d_in.
    let first = (CUBE_POS * groups + group) * outs;
    let (start, step) = if split { (unit, units) } else { (lane, lanes) };
    // Where each unit's part of a cube-wide sum goes: per plane after a plane sum, else per unit.
    let parts_cube = comptime![if plane_reduce { planes } else { planes * lanes }];
    let mut part_cube = unit;
    if plane_reduce {
        part_cube = plane;
    }

    // The norm's 1 / sqrt(mean(x²) + eps) of each row, from every unit's share of the row
    // (with `norm_after`, at the end from the squares summed beside the products).
    let mut inv = Array::<f32>::new(rows);
    if norm && !norm_after {
        #[unroll]
        for r in 0..rows {
            inv[r] = f32::new(0.0);
        }
        let mut j = unit;
        while j < vectors {
            #[unroll]
            for r in 0..rows {
                let xv = x[r * vectors + j];
                #[unroll]
                for e in 0..width {
                    let v = f32::cast_from(xv[e]);
                    inv[r] += v * v;
                }
            }
            j += units;
        }
        let mut squares = SharedMemory::<f32>::new(rows * parts_cube);
        #[unroll]
        for r in 0..rows {
            let s = if plane_reduce { plane_sum(inv[r]) } else { inv[r] };
            if !plane_reduce || lane == 0 {
                squares[r * parts_cube + part_cube] = s;
            }
        }
        sync_cube();
        #[unroll]
        for r in 0..rows {
            let mut total = squares[r * parts_cube];
            for p in 1..parts_cube {
                total += squares[r * parts_cube + p];
            }
            inv[r] = f32::new(1.0) / f32::sqrt(total / f32::cast_from(vectors * width) + eps);
        }
    }

    // With `norm_after`, every row's squares after its `rows × columns` sums.
    let held = comptime!(if norm && norm_after { sums + rows } else { sums });
    let mut acc = Array::<f32>::new(held);
    #[unroll]
    for i in 0..held {
        acc[i] = f32::new(0.0);
    }
    let mut bases = Array::<usize>::new(columns);
    #[unroll]
    for c in 0..columns {
        if c < outs {
            bases[c] = min(first + c, d_out - 1) * vectors;
        } else {
            bases[c] = (d_out + min(first + c - outs, d_out - 1)) * vectors;
        }
    }
    let mut w = Array::<Vector<E, N>>::new(columns * depth);
    let mut xs = Array::<f32>::new(width);
    let mut j = start;
    if depth > 1 {
        // `depth` loads per weight row in flight, then their arithmetic in load order.
        while j + (depth - 1) * step < vectors {
            #[unroll]
            for k in 0..depth {
                #[unroll]
                for c in 0..columns {
                    w[k * columns + c] = weight[bases[c] + j + k * step];
                }
            }
            #[unroll]
            for k in 0..depth {
                skinny_accumulate::<E, N>(x, norm_weight, &w, k * columns, &inv, &mut xs, &mut acc, j + k * step, vectors, rows, columns, norm, norm_after);
            }
            j += depth * step;
        }
    }
    while j < vectors {
        #[unroll]
        for c in 0..columns {
            w[c] = weight[bases[c] + j];
        }
        skinny_accumulate::<E, N>(x, norm_weight, &w, 0, &inv, &mut xs, &mut acc, j, vectors, rows, columns, norm, norm_after);
        j += step;
    }
    // Sum i (= r · columns + c) of every unit of a group: `parts` partials per sum, at
    // `(group · sums + i) · parts + p`.
    let parts = comptime![match (split, plane_reduce) {
        (true, true) => planes,
        (true, false) => planes * lanes,
        (false, true) => 1,
        (false, false) => lanes,
    }];
    // This unit's part within its group: its plane or unit when split, its lane or 0 when not.
    let mut part = if split { unit } else { lane };
    if plane_reduce {
        part = plane;
        if !split {
            part = 0;
        }
    }
    let mut partials = SharedMemory::<f32>::new(groups * held * parts);
    #[unroll]
    for i in 0..held {
        let s = if plane_reduce { plane_sum(acc[i]) } else { acc[i] };
        if !plane_reduce || lane == 0 {
            partials[(group * held + i) * parts + part] = s;
        }
    }
    sync_cube();
    // One unit per (group, row, output column) adds its partials and writes the output.
    let per_group = rows * outs;
    let mut k = unit;
    while k < groups * per_group {
        let (g, r, o) = (k / per_group, (k % per_group) / outs, k % outs);
        let column = (CUBE_POS * groups + g) * outs + o;
        if column < d_out {
            let at = (g * held + r * columns + o) * parts;
            let mut sum = partials[at];
            for p in 1..parts {
                sum += partials[at + p];
            }
            // With `norm_after`, the row's scale from the group's squares (the group's units
            // cover the whole row).
            let mut scale = f32::new(1.0);
            if norm && norm_after {
                let squares_at = (g * held + sums + r) * parts;
                let mut squares = partials[squares_at];
                for p in 1..parts {
                    squares += partials[squares_at + p];
                }
                scale = f32::new(1.0) / f32::sqrt(squares / f32::cast_from(vectors * width) + eps);
            }
            sum *= scale;
            // With SiLU·mul, the up row's sums are `outs` sums later.
            let mut up = f32::new(0.0);
            if silu {
                let up_at = at + outs * parts;
                up = partials[up_at];
                for p in 1..parts {
                    up += partials[up_at + p];
                }
                up *= scale;
            }
            write_linear_output::<E>(output, residual, r * d_out + column, sum, up, silu, add);
        }
        k += units;
    }
}

/// [`skinny_linear_kernel`]'s arithmetic on one vector of `d_in` (index `j`): every row's input
/// vector (normalised when `norm`) times the `columns` weight vectors at `w[w_at..]`, added to
/// `acc` (`rows × columns`). With `norm_after` the input is only scaled by the norm's weight,
/// and the row's squares go to `acc[rows · columns + r]` (the kernel applies `1 / rms` to the
/// sums at the end).
#[cube]
#[allow(clippy::too_many_arguments)]
fn skinny_accumulate<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    norm_weight: &Array<Vector<E, N>>,
    w: &Array<Vector<E, N>>,
    w_at: usize,
    inv: &Array<f32>,
    xs: &mut Array<f32>,
    acc: &mut Array<f32>,
    j: usize,
    vectors: usize,
    #[comptime] rows: usize,
    #[comptime] columns: usize,
    #[comptime] norm: bool,
    #[comptime] norm_after: bool,
) {
    let width = N::value();
    let mut nv = w[w_at];
    if norm {
        nv = norm_weight[j];
    }
    #[unroll]
    for r in 0..rows {
        let xv = x[r * vectors + j];
        #[unroll]
        for e in 0..width {
            if norm && norm_after {
                let value = f32::cast_from(xv[e]);
                acc[comptime!(rows * columns) + r] += value * value;
                xs[e] = value * f32::cast_from(nv[e]);
            } else if norm {
                xs[e] = f32::cast_from(E::cast_from(f32::cast_from(xv[e]) * inv[r]) * nv[e]);
            } else {
                xs[e] = f32::cast_from(xv[e]);
            }
        }
        #[unroll]
        for c in 0..columns {
            let wc = w[w_at + c];
            let mut dot = f32::cast_from(wc[0]) * xs[0];
            #[unroll]
            for e in 1..width {
                dot += f32::cast_from(wc[e]) * xs[e];
            }
            acc[r * columns + c] += dot;
        }
    }
}

/// Values per vector load: the widest of 8, 4, 2 that the runtime loads at once for this
/// dtype, that divides `d_in` (a row's length), and that every buffer's offset is aligned to;
/// else 1.
fn load_vector_size<R: CubeRuntime>(buffers: &[&CubeTensor<R>], d_in: usize) -> usize {
    let bytes = buffers[0].dtype.size();
    let aligned = |t: &CubeTensor<R>, n: usize| t.handle.offset_start.unwrap_or(0).is_multiple_of((n * bytes) as u64);
    buffers[0]
        .client
        .io_optimized_vector_sizes(bytes)
        .filter(|&n| n <= 8 && d_in.is_multiple_of(n) && buffers.iter().all(|t| aligned(t, n)))
        .max()
        .unwrap_or(1)
}

/// The skinny product's cube shape for `rows` rows of `vectors` vector loads: `(lanes,
/// planes, split, plane_reduce)`. Lanes are the hardware plane where it is uniform and plane
/// sums work (then planes sum their lanes), else 32 (lane partials through shared memory,
/// which bounds the planes). Up to [`SKINNY_SPLIT_ROWS`] rows the planes split `d_in`: enough
/// of them that each lane makes about `tuning.lane_vectors` loads per column, at most
/// [`SKINNY_MAX_PLANES`]; above, [`SKINNY_COLUMN_PLANES`] planes of their own columns.
fn skinny_shape<R: CubeRuntime>(client: &ComputeClient<R>, rows: usize, vectors: usize, tuning: SkinnyTuning) -> (usize, usize, bool, bool) {
    let (lanes, plane_reduce) = match uniform_plane(client) {
        Some(lanes) => (lanes, true),
        None => (32, false),
    };
    let split = rows <= SKINNY_SPLIT_ROWS;
    let wanted = if split { vectors.div_ceil(lanes * tuning.lane_vectors).clamp(1, SKINNY_MAX_PLANES) } else { SKINNY_COLUMN_PLANES };
    // Shared memory per cube where lanes' partials go through it: planes · rows · columns · lanes f32.
    let shared_limit = if plane_reduce { SKINNY_MAX_PLANES } else { (SKINNY_SHARED_BYTES / (4 * rows * tuning.columns * lanes)).max(1) };
    (lanes, wanted.min(shared_limit), split, plane_reduce)
}

/// `x · weight` for a few rows; see [`Kernels::skinny_linear`]. `weight` is the transposed
/// view of contiguous `[d_out, d_in]` rows.
pub(crate) fn skinny_linear<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>) -> CubeTensor<R> {
    // No epilogue: the element types only name `Epilogue`'s backend; they play no part.
    fused_linear::<R, f32, i32, u8>(x, weight, None, Epilogue::None)
}

/// `x · weight` for a few rows with the norm before and `epilogue` after; see
/// [`Kernels::fused_linear`]. `weight` is the transposed view of contiguous `[d_out, d_in]`
/// rows; `residual` has the output's shape and dtype.
pub(crate) fn fused_linear<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    norm: Option<(CubeTensor<R>, f64)>,
    epilogue: Epilogue<CubeBackend<R, F, I, BT>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let [rows, d_in] = [x.meta.shape()[0], x.meta.shape()[1]];
    let silu = matches!(epilogue, Epilogue::SiluMul);
    // Output columns: one per weight row, or one per (gate, up) pair.
    let d_out = weight.meta.shape()[1] / if silu { 2 } else { 1 };
    // The checkpoint's rows again: `[d_out, d_in]`, last dimension contiguous.
    let weight = CubeBackend::<R, f32, i32, u8>::float_swap_dims(weight, 0, 1);
    let output = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), [rows, d_out].into(), x.dtype);
    if d_out == 0 {
        return output;
    }
    let (norm_weight, eps) = match norm {
        Some((w, eps)) => (Some(into_contiguous(w)), eps),
        None => (None, 0.0),
    };
    let residual = match epilogue {
        Epilogue::Residual(r) => Some(into_contiguous(r)),
        _ => None,
    };
    if norm_weight.is_none()
        && let Some(MmaLinearShape { planes, chunk, reads, depth, vector_size }) = mma_linear_shape(&x, &weight, rows, d_in, d_out, silu)
    {
        let address = address_type([&x, &weight, &output].into_iter().chain(residual.iter()));
        let (dtype, add) = (x.dtype, residual.is_some());
        let residual = residual.unwrap_or_else(|| x.clone());
        super::MMA_LINEARS.add();
        if reads == super::MmaLinearReads::Fragments {
            super::MMA_LINEAR_FRAGMENTS.add();
            unsafe {
                mma_linear_fragments_kernel::launch_unchecked(
                    &output.client,
                    row_cubes(d_out.div_ceil(chunk)),
                    CubeDim::new_2d(MMA_LANES as u32, planes as u32),
                    address,
                    vector_size,
                    x.into_array_arg(),
                    weight.into_array_arg(),
                    residual.into_array_arg(),
                    output.clone().into_array_arg(),
                    rows,
                    d_out,
                    d_in / vector_size,
                    planes,
                    chunk / MMA_FRAGMENT_COLUMNS,
                    depth,
                    super::kernel_on("mma_linear_runs"),
                    silu,
                    add,
                    dtype.into(),
                )
            };
            return output;
        }
        if reads == super::MmaLinearReads::CopyAsync {
            super::MMA_LINEAR_COPIES.add();
            let tiles = d_out / MMA_TILE;
            let cubes = mma_linear_async_cubes(&output.client, tiles, planes, chunk, depth + 1, silu, dtype);
            unsafe {
                mma_linear_async_kernel::launch_unchecked(
                    &output.client,
                    CubeCount::Static(cubes as u32, 1, 1),
                    CubeDim::new_2d(MMA_LANES as u32, planes as u32),
                    address,
                    x.into_array_arg(),
                    weight.into_array_arg(),
                    residual.into_array_arg(),
                    output.clone().into_array_arg(),
                    rows,
                    d_in,
                    d_out,
                    tiles,
                    planes,
                    chunk,
                    vector_size,
                    depth + 1,
                    silu,
                    add,
                    dtype.into(),
                )
            };
            return output;
        }
        unsafe {
            mma_linear_kernel::launch_unchecked(
                &output.client,
                row_cubes(d_out.div_ceil(MMA_TILE)),
                CubeDim::new_2d(MMA_LANES as u32, planes as u32),
                address,
                vector_size,
                x.into_array_arg(),
                weight.clone().into_array_arg(),
                weight.into_array_arg(),
                residual.into_array_arg(),
                output.clone().into_array_arg(),
                rows,
                d_in,
                d_out,
                d_in / vector_size,
                planes,
                chunk,
                chunk / vector_size,
                silu,
                add,
                reads == super::MmaLinearReads::Registers,
                depth,
                dtype.into(),
            )
        };
        return output;
    }
    let mut buffers = vec![&x, &weight];
    buffers.extend(norm_weight.iter());
    let vector_size = load_vector_size(&buffers, d_in);
    let vectors = d_in / vector_size;
    let tuning = super::skinny_tuning();
    let (lanes, planes, split, plane_reduce) = skinny_shape(&x.client, rows, vectors, tuning);
    let group_columns = if silu { tuning.columns / 2 } else { tuning.columns };
    let cube_columns = if split { group_columns } else { planes * group_columns };
    let address = address_type([&x, &weight, &output].into_iter().chain(residual.iter()));
    let dtype = x.dtype;
    let (norm, add) = (norm_weight.is_some(), residual.is_some());
    // Unused buffers are stood in for by ones of the right kind (never read).
    let norm_weight = norm_weight.unwrap_or_else(|| weight.clone());
    let residual = residual.unwrap_or_else(|| x.clone());
    unsafe {
        skinny_linear_kernel::launch_unchecked(
            &output.client,
            row_cubes(d_out.div_ceil(cube_columns)),
            CubeDim::new_2d(lanes as u32, planes as u32),
            address,
            vector_size,
            x.into_array_arg(),
            weight.into_array_arg(),
            norm_weight.into_array_arg(),
            residual.into_array_arg(),
            output.clone().into_array_arg(),
            vectors,
            d_out,
            eps as f32,
            rows,
            planes,
            lanes,
            tuning.columns,
            tuning.depth,
            split,
            plane_reduce,
            norm,
            norm && super::kernel_on("skinny_norm_after"),
            silu,
            add,
            dtype.into(),
        )
    };
    output
}

/// `x · weightᵀ` for 1 to 16 rows of `x` on tensor cores (`cmma`, 16×16×16 tiles of the dtype,
/// f32 sums): the rows are the 16-row A tile (rows past `rows` hold zeros), the checkpoint's
/// weight rows the column-major B tiles (each weight value read once). Each cube owns 16 output
/// columns (with `silu`, also the 16 up rows `d_out..` after them); its `planes` planes split
/// `d_in` in chunks of `chunk` values (plane `p` takes chunks `p, p + planes, …`), staging each
/// chunk of the input rows in a shared buffer of its own (rows `chunk + MMA_PAD` apart).
///
/// Each lane holds its part of the plane's next `depth` chunks in registers (vectors of `N`:
/// `x_loads` of the input rows and, `staged`, `loads` of the weight rows), so that their loads
/// are in flight while the tensor cores multiply the current chunk; the plane stores a chunk
/// into its shared buffers just before it multiplies it and loads the chunk `depth` ahead into
/// the registers it freed. Not `staged`: the weight tiles are read straight from global memory
/// (the loads of one step then wait for the step before: tensor-core loads are not reordered).
/// The planes' f32 sums meet in shared memory, and one unit per (row, column) adds them and
/// writes the output through [`write_linear_output`]. `x` and `weight_v` are read in vectors of
/// `N` values, `row_vectors` per row and `vectors` per chunk; `weight` is the same buffer as
/// `weight_v`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn mma_linear_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight_v: &Array<Vector<E, N>>,
    weight: &Array<E>,
    residual: &Array<E>,
    output: &mut Array<E>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    row_vectors: usize,
    #[comptime] planes: usize,
    #[comptime] chunk: usize,
    #[comptime] vectors: usize,
    #[comptime] silu: bool,
    #[comptime] add: bool,
    #[comptime] staged: bool,
    #[comptime] depth: usize,
    #[define(E)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    // Row stride of a plane's staged rows (inputs and weights), in values and in vectors, and
    // the values a 16-row tile spans in them.
    let xs = comptime!(chunk + MMA_PAD);
    let xv = comptime!((chunk + MMA_PAD) / (chunk / vectors));
    let x_span = comptime!((MMA_TILE - 1) * (chunk + MMA_PAD) + MMA_TILE);
    // Weight tiles per chunk (the up rows' too with SiLU·mul), and each lane's vector loads of
    // one chunk: weights (staged) and input rows.
    let tiles = comptime!(if silu { 2usize } else { 1usize });
    let loads = comptime!(tiles * MMA_TILE * vectors / MMA_LANES);
    let x_loads = comptime!(MMA_TILE * vectors / MMA_LANES);
    let column0 = CUBE_POS * MMA_TILE;
    // Cubes past the last columns (a launch grid rounded up) read the last tile, write nothing.
    let n0 = min(column0, d_out - MMA_TILE);
    let ld = u32::cast_from(d_in);
    let w_span = (MMA_TILE - 1) * d_in + MMA_TILE;
    let gate_at = n0 * d_in;
    let up_at = (d_out + n0) * d_in;

    let mut x_s = SharedMemory::<E>::new_aligned(comptime!(planes * MMA_TILE * (chunk + MMA_PAD)), 32usize);
    let plane_x = plane * MMA_TILE * xs;
    // The plane's weight rows (staged): tile `g`'s 16 rows from `plane_w + g · 16 · xs`.
    let mut w_s = SharedMemory::<E>::new_aligned(comptime!(if staged { planes * tiles * MMA_TILE * (chunk + MMA_PAD) } else { 8usize }), 32usize);
    let plane_w = plane * tiles * MMA_TILE * xs;
    // Rows past the input's: zeros (their sums are never written; zeros keep them finite).
    let mut i = rows * xs + lane;
    while i < MMA_TILE * xs {
        x_s[plane_x + i] = E::from_int(0);
        i += MMA_LANES;
    }
    let gate = cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, f32::new(0.0));
    let up = cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, f32::new(0.0));
    let chunks = d_in / chunk;
    // Slot `s` of the registers holds chunk `c + s · planes` of the current round.
    let mut x_held = Array::<Vector<E, N>>::new(comptime!(depth * x_loads));
    let mut held = Array::<Vector<E, N>>::new(comptime!(if staged { depth * loads } else { 1usize }));
    #[unroll]
    for s in 0..depth {
        let first = plane + s * planes;
        if first < chunks {
            mma_linear_loads::<E, N>(x, weight_v, &mut x_held, &mut held, s, n0, rows, d_out, row_vectors, first, lane, vectors, x_loads, loads, staged);
        }
    }
    let mut c = plane;
    while c < chunks {
        #[unroll]
        for s in 0..depth {
            let current = c + s * planes;
            if current < chunks {
                // The chunk's input rows (and weights) into the plane's buffers, after their
                // last use.
                sync_plane();
                let mut x_view = x_s.slice_mut(plane_x, plane_x + MMA_TILE * xs).into_vectorized().with_vector_size::<N>();
                #[unroll]
                for l in 0..x_loads {
                    let at = lane + l * MMA_LANES;
                    if at / vectors < rows {
                        x_view[(at / vectors) * xv + at % vectors] = x_held[s * x_loads + l];
                    }
                }
                if staged {
                    let mut w_view = w_s.slice_mut(plane_w, plane_w + tiles * MMA_TILE * xs).into_vectorized().with_vector_size::<N>();
                    #[unroll]
                    for l in 0..loads {
                        let at = lane + l * MMA_LANES;
                        w_view[(at / vectors) * xv + at % vectors] = held[s * loads + l];
                    }
                }
                sync_plane();
                let ahead = current + depth * planes;
                if ahead < chunks {
                    mma_linear_loads::<E, N>(x, weight_v, &mut x_held, &mut held, s, n0, rows, d_out, row_vectors, ahead, lane, vectors, x_loads, loads, staged);
                }
                if staged {
                    mma_linear_chunk::<E>(&x_s, plane_x, &w_s, plane_w, &gate, &up, chunk, xs, silu);
                } else {
                    let k0 = current * chunk;
                    #[unroll]
                    for t in 0..chunk / MMA_TILE {
                        let a_at = plane_x + t * MMA_TILE;
                        let a = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::A, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor, &x_s.slice(a_at, a_at + x_span), comptime!(xs as u32));
                        let k = k0 + t * MMA_TILE;
                        let b = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, cmma::MatrixLayout::ColMajor, &weight.slice(gate_at + k, gate_at + k + w_span), ld);
                        cmma::execute::<E, E, f32, f32>(&a, &b, &gate, &gate);
                        if silu {
                            let b_up = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, cmma::MatrixLayout::ColMajor, &weight.slice(up_at + k, up_at + k + w_span), ld);
                            cmma::execute::<E, E, f32, f32>(&a, &b_up, &up, &up);
                        }
                    }
                }
            }
        }
        c += depth * planes;
    }

    mma_linear_output::<E>(&gate, &up, output, residual, rows, d_out, column0, planes, silu, add);
}

/// The end of the tensor-core products ([`mma_linear_kernel`], [`mma_linear_async_kernel`]):
/// every plane's f32 sums (`gate`, and `up` with `silu`) meet in shared memory, side by side
/// (tile `g` of plane `p` at `(p · tiles + g) · 16 · os`), and one unit per (row, column)
/// adds them and writes the output through [`write_linear_output`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_linear_output<E: Float>(
    gate: &cmma::Matrix<f32>,
    up: &cmma::Matrix<f32>,
    output: &mut Array<E>,
    residual: &Array<E>,
    rows: usize,
    d_out: usize,
    column0: usize,
    #[comptime] planes: usize,
    #[comptime] silu: bool,
    #[comptime] add: bool,
) {
    let plane = UNIT_POS_Y as usize;
    let tiles = comptime!(if silu { 2usize } else { 1usize });
    // Row stride of the planes' f32 sums.
    let os = comptime!(MMA_TILE + MMA_PAD_F32);
    let o_span = comptime!((MMA_TILE - 1) * (MMA_TILE + MMA_PAD_F32) + MMA_TILE);
    let mut sums = SharedMemory::<f32>::new_aligned(comptime!(planes * tiles * MMA_TILE * (MMA_TILE + MMA_PAD_F32)), 32usize);
    let at = plane * tiles * MMA_TILE * os;
    cmma::store(&mut sums.slice_mut(at, at + o_span), gate, comptime!(os as u32), cmma::MatrixLayout::RowMajor);
    if silu {
        let at_up = at + MMA_TILE * os;
        cmma::store(&mut sums.slice_mut(at_up, at_up + o_span), up, comptime!(os as u32), cmma::MatrixLayout::RowMajor);
    }
    sync_cube();
    let mut k = UNIT_POS as usize;
    while k < rows * MMA_TILE {
        let r = k / MMA_TILE;
        let o = k % MMA_TILE;
        let column = column0 + o;
        if column < d_out {
            let mut sum = f32::new(0.0);
            let mut up_sum = f32::new(0.0);
            #[unroll]
            for p in 0..planes {
                sum += sums[p * tiles * MMA_TILE * os + r * os + o];
                if silu {
                    up_sum += sums[(p * tiles + 1) * MMA_TILE * os + r * os + o];
                }
            }
            write_linear_output::<E>(output, residual, r * d_out + column, sum, up_sum, silu, add);
        }
        k += comptime!(planes * MMA_LANES);
    }
}

/// One chunk of the tensor-core products from shared memory: the 16 input rows from `a_at`
/// (row-major) times the weight rows from `b_at` (the B tiles, column-major; with `silu` the
/// 16 up rows `16 · stride` values after them), rows `stride` values apart in both, summed into
/// `gate` (and `up`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_linear_chunk<E: Float>(
    a: &SharedMemory<E>,
    a_at: usize,
    b: &SharedMemory<E>,
    b_at: usize,
    gate: &cmma::Matrix<f32>,
    up: &cmma::Matrix<f32>,
    #[comptime] chunk: usize,
    #[comptime] stride: usize,
    #[comptime] silu: bool,
) {
    let span = comptime!((MMA_TILE - 1) * stride + MMA_TILE);
    #[unroll]
    for t in 0..chunk / MMA_TILE {
        let at = a_at + t * MMA_TILE;
        let am = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::A, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor, &a.slice(at, at + span), comptime!(stride as u32));
        let bt = b_at + t * MMA_TILE;
        let bm = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, cmma::MatrixLayout::ColMajor, &b.slice(bt, bt + span), comptime!(stride as u32));
        cmma::execute::<E, E, f32, f32>(&am, &bm, gate, gate);
        if silu {
            let ut = bt + MMA_TILE * stride;
            let um = cmma::Matrix::<E>::from_slice(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, cmma::MatrixLayout::ColMajor, &b.slice(ut, ut + span), comptime!(stride as u32));
            cmma::execute::<E, E, f32, f32>(&am, &um, up, up);
        }
    }
}

/// Output columns of one tensor-core step of [`mma_linear_fragments_kernel`] (the `n` of
/// `mma.m16n8k16`).
const MMA_FRAGMENT_COLUMNS: usize = 8;
/// Values one lane of [`mma_linear_fragments_kernel`] loads at once (16 bytes of f16 or bf16);
/// the four lanes of a group load one block of `4 · 8 = 32` values of `d_in`.
const MMA_FRAGMENT_VECTOR: usize = 8;
/// Values of `d_in` in one block of [`mma_linear_fragments_kernel`].
const MMA_FRAGMENT_BLOCK: usize = 4 * MMA_FRAGMENT_VECTOR;
/// Most output columns per cube of [`mma_linear_fragments_kernel`]: 8 tiles (16 with SiLU·mul),
/// each lane holding `depth` 16-byte loads of every tile.
const MMA_FRAGMENT_MAX_COLUMNS: usize = 64;

/// `x · weightᵀ` for 1 to 16 rows on tensor cores from register fragments (`mma.m16n8k16` of
/// the dtype with f32 sums, CubeCL's `MmaDefinition`): no shared memory until the planes' sums
/// meet. A cube owns `tiles` tiles of 8 output columns (with `silu`, also the `tiles` tiles of
/// up rows `d_out..` after them); its `planes` planes split `d_in` in blocks of 32 values
/// (`runs`: plane `p` takes runs of `depth` adjacent blocks from `p · depth`, every
/// `depth · planes` blocks; else blocks `p, p + planes, …`), `depth` blocks at a time: every
/// load of them is issued before the first product.
///
/// Within a group of four lanes (`g = lane / 4`, `t = lane % 4`), lane `t` loads values
/// `8t..8t + 8` of a block in one 16-byte load: of weight row `g` of each tile, and of input
/// rows `g` and `g + 8` (zeros past `rows`). A dot product may take `d_in` in any order as long
/// as both sides take the same one, so the block's values are given to the two 16-deep steps of
/// `mma.m16n8k16` in an order that makes each lane's share contiguous: the lane's fragment
/// values `2t, 2t + 1, 2t + 8, 2t + 9` (PTX's layout of the A columns and the B rows for
/// `.f16`/`.bf16`) are its loaded values `4h..4h + 4` in step `h`. Each weight value is read
/// once, by one 16-byte load of a lane, and the input rows' loads serve all the cube's tiles.
/// The lane's sums are rows `g` and `g + 8`, columns `2t, 2t + 1` of each tile (PTX's
/// accumulator layout); the planes' sums meet in shared memory and one unit per (row, column)
/// writes the output through [`write_linear_output`]. Columns past `d_out` read the last weight
/// row and are not written. `row_vectors = d_in / 8`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn mma_linear_fragments_kernel<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    residual: &Array<E>,
    output: &mut Array<E>,
    rows: usize,
    d_out: usize,
    row_vectors: usize,
    #[comptime] planes: usize,
    #[comptime] tiles: usize,
    #[comptime] depth: usize,
    #[comptime] runs: bool,
    #[comptime] silu: bool,
    #[comptime] add: bool,
    #[define(E)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let g = lane / 4;
    let t = lane % 4;
    let columns = comptime!(tiles * MMA_FRAGMENT_COLUMNS);
    // B tiles: the gate (or only) tiles, then with SiLU·mul the up tiles.
    let b_tiles = comptime!(if silu { 2 * tiles } else { tiles });
    let column0 = CUBE_POS * columns;
    // Where this lane's weight row of each B tile starts, at its vector `t`.
    let mut bases = Array::<usize>::new(b_tiles);
    #[unroll]
    for i in 0..b_tiles {
        let o = min(column0 + (i % tiles) * MMA_FRAGMENT_COLUMNS + g, d_out - 1);
        let mut row = o;
        if i >= tiles {
            row = d_out + o;
        }
        bases[i] = row * row_vectors + t;
    }
    let (low, high) = (g < rows, g + 8 < rows);
    let (x_low, x_high) = (g * row_vectors + t, (g + 8) * row_vectors + t);
    let zero = Vector::<E, N>::new(E::from_int(0));
    // Two accumulator registers (rows g and g + 8) per B tile.
    let mut acc = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * b_tiles));
    #[unroll]
    for i in 0..2 * b_tiles {
        acc[i] = Vector::new(f32::new(0.0));
    }
    let blocks = row_vectors / 4;
    let mut w = Array::<Vector<E, N>>::new(comptime!(depth * b_tiles));
    let mut xs = Array::<Vector<E, N>>::new(comptime!(2 * depth));
    // Plane `p`'s blocks: with `runs`, runs of `depth` adjacent blocks (`p · depth..`, then
    // every `depth · planes`), so that a group's lanes read `depth · 64` adjacent bytes of each
    // weight row; else single blocks `p, p + planes, …`, `depth` of them at a time.
    let (first, gap, stride) = if runs { (plane * depth, 1usize, depth * planes) } else { (plane, planes, depth * planes) };
    let mut kb = first;
    while kb + (depth - 1) * gap < blocks {
        #[unroll]
        for d in 0..depth {
            let at = (kb + d * gap) * 4;
            #[unroll]
            for i in 0..b_tiles {
                w[d * b_tiles + i] = weight[bases[i] + at];
            }
            xs[2 * d] = zero;
            xs[2 * d + 1] = zero;
            if low {
                xs[2 * d] = x[x_low + at];
            }
            if high {
                xs[2 * d + 1] = x[x_high + at];
            }
        }
        #[unroll]
        for d in 0..depth {
            mma_fragments_block::<E, N>(&w, d * b_tiles, xs[2 * d], xs[2 * d + 1], &mut acc, b_tiles);
        }
        kb += stride;
    }
    // The blocks left: with `runs`, the rest of this plane's last run (none past `blocks`);
    // else its last blocks one at a time.
    let mut end = blocks;
    if runs {
        end = min(kb + depth, blocks);
    }
    while kb < end {
        let at = kb * 4;
        #[unroll]
        for i in 0..b_tiles {
            w[i] = weight[bases[i] + at];
        }
        xs[0] = zero;
        xs[1] = zero;
        if low {
            xs[0] = x[x_low + at];
        }
        if high {
            xs[1] = x[x_high + at];
        }
        mma_fragments_block::<E, N>(&w, 0, xs[0], xs[1], &mut acc, b_tiles);
        kb += gap;
    }

    // The planes' sums: tile `i` of plane `p` at `((p · b_tiles + i) · 16 + row) · 8 + column`.
    let mut sums = SharedMemory::<f32>::new(comptime!(planes * b_tiles * MMA_TILE * MMA_FRAGMENT_COLUMNS));
    #[unroll]
    for i in 0..b_tiles {
        let at = ((plane * b_tiles + i) * MMA_TILE + g) * MMA_FRAGMENT_COLUMNS + 2 * t;
        let (near, far) = (acc[2 * i], acc[2 * i + 1]);
        sums[at] = near[0];
        sums[at + 1] = near[1];
        sums[at + 8 * MMA_FRAGMENT_COLUMNS] = far[0];
        sums[at + 8 * MMA_FRAGMENT_COLUMNS + 1] = far[1];
    }
    sync_cube();
    let mut k = UNIT_POS as usize;
    while k < rows * columns {
        let r = k / columns;
        let o = k % columns;
        let column = column0 + o;
        if column < d_out {
            let at = ((o / MMA_FRAGMENT_COLUMNS) * MMA_TILE + r) * MMA_FRAGMENT_COLUMNS + o % MMA_FRAGMENT_COLUMNS;
            let mut sum = f32::new(0.0);
            let mut up = f32::new(0.0);
            #[unroll]
            for p in 0..planes {
                sum += sums[p * b_tiles * MMA_TILE * MMA_FRAGMENT_COLUMNS + at];
                if silu {
                    up += sums[(p * b_tiles + tiles) * MMA_TILE * MMA_FRAGMENT_COLUMNS + at];
                }
            }
            write_linear_output::<E>(output, residual, r * d_out + column, sum, up, silu, add);
        }
        k += comptime!(planes * MMA_LANES);
    }
}

/// One block of 32 values of `d_in` for [`mma_linear_fragments_kernel`]: the lane's input
/// vectors of rows `g` (`x_low`) and `g + 8` (`x_high`) times its weight vector of each of the
/// `b_tiles` tiles (`w[w_at..]`), as two `mma.m16n8k16` steps per tile added to `acc`.
#[cube]
fn mma_fragments_block<E: Float, N: Size>(
    w: &Array<Vector<E, N>>,
    w_at: usize,
    x_low: Vector<E, N>,
    x_high: Vector<E, N>,
    acc: &mut Array<Vector<f32, Const<2>>>,
    #[comptime] b_tiles: usize,
) {
    #[unroll]
    for h in 0..2usize {
        // The A registers: (row g, columns 2t, 2t + 1), (row g + 8, same), (row g, columns
        // 2t + 8, 2t + 9), (row g + 8, same) = loaded values 4h, 4h + 1 then 4h + 2, 4h + 3.
        let mut a = Array::<Vector<E, Const<2>>>::new(4usize);
        a[0] = fragment_pair::<E, N>(x_low, comptime!(4 * h));
        a[1] = fragment_pair::<E, N>(x_high, comptime!(4 * h));
        a[2] = fragment_pair::<E, N>(x_low, comptime!(4 * h + 2));
        a[3] = fragment_pair::<E, N>(x_high, comptime!(4 * h + 2));
        #[unroll]
        for i in 0..b_tiles {
            let wv = w[w_at + i];
            // The B registers: (rows 2t, 2t + 1, column g), (rows 2t + 8, 2t + 9, column g).
            mma_step::<E>(&a, fragment_pair::<E, N>(wv, comptime!(4 * h)), fragment_pair::<E, N>(wv, comptime!(4 * h + 2)), acc, i);
        }
    }
}

/// One `mma.m16n8k16` step of the register-fragment kernels: the 8-column tile `tile` of
/// `acc` (its rows g and g + 8 at `acc[2 · tile]` and `acc[2 · tile + 1]`, PTX's accumulator
/// layout) plus the A registers `a` times the B registers `b0`, `b1`.
#[cube]
fn mma_step<E: Float>(a: &Array<Vector<E, Const<2>>>, b0: Vector<E, Const<2>>, b1: Vector<E, Const<2>>, acc: &mut Array<Vector<f32, Const<2>>>, #[comptime] tile: usize) {
    let mma = cmma::MmaDefinition::<E, E, f32>::new(16usize, 8usize, 16usize);
    let mut b = Array::<Vector<E, Const<2>>>::new(2usize);
    b[0] = b0;
    b[1] = b1;
    let mut c = Array::<Vector<f32, Const<2>>>::new(2usize);
    c[0] = acc[2 * tile];
    c[1] = acc[2 * tile + 1];
    let d = mma.execute::<Const<2>, Const<2>, Const<2>>(a, &b, &c);
    acc[2 * tile] = d[0];
    acc[2 * tile + 1] = d[1];
}

/// Values `at` and `at + 1` of `v` as one register of two.
#[cube]
fn fragment_pair<E: Float, N: Size>(v: Vector<E, N>, #[comptime] at: usize) -> Vector<E, Const<2>> {
    let mut pair = Vector::<E, Const<2>>::empty();
    pair[0] = v[at];
    pair[1] = v[at + 1];
    pair
}

/// [`mma_linear_fragments_kernel`]'s output columns per cube and blocks in flight for `d_out`
/// columns on `sms` multiprocessors, from the tuning's `chunk` (at most
/// [`MMA_FRAGMENT_MAX_COLUMNS`]) and `depth`: the columns halve (to 16) while the product
/// would have fewer than [`MMA_FRAGMENT_CUBES_PER_SM`] cubes per multiprocessor (the cubes
/// split no more than `d_in` between their planes), then the depth shrinks until a lane holds
/// at most [`MMA_FRAGMENT_HELD_VECTORS`] weight loads.
fn mma_fragments_shape(chunk: usize, depth: usize, d_out: usize, silu: bool, sms: usize) -> (usize, usize) {
    let mut columns = chunk.clamp(2 * MMA_FRAGMENT_COLUMNS, MMA_FRAGMENT_MAX_COLUMNS);
    while columns > 2 * MMA_FRAGMENT_COLUMNS && d_out.div_ceil(columns) < MMA_FRAGMENT_CUBES_PER_SM * sms {
        columns /= 2;
    }
    let b_tiles = columns / MMA_FRAGMENT_COLUMNS * if silu { 2 } else { 1 };
    let mut depth = depth.max(1);
    while depth > 1 && depth * b_tiles > MMA_FRAGMENT_HELD_VECTORS {
        depth -= 1;
    }
    (columns, depth)
}

/// Fewest cubes per multiprocessor [`mma_fragments_shape`] keeps while it can narrow the cubes.
const MMA_FRAGMENT_CUBES_PER_SM: usize = 2;
/// Most 16-byte weight loads a lane of [`mma_linear_fragments_kernel`] holds (64 registers).
const MMA_FRAGMENT_HELD_VECTORS: usize = 16;

/// Threads of [`mma_linear_fragments_kernel`] a multiprocessor holds at once: 65 536 registers
/// at 64 per thread (Nsight Compute on the H100, session 30: 2 cubes of 16 planes each; a cube
/// of 32 planes is held to 64 registers by its launch bound).
const MMA_FRAGMENT_SM_THREADS: usize = 1024;
/// Most 16-byte weight loads a lane of [`mma_fragments_waves`]' shapes holds: `depth · b_tiles`
/// of session 30's fastest shape (4 tiles, depth 2), at 64 registers per thread.
const MMA_FRAGMENT_WAVE_HELD_VECTORS: usize = 8;

/// [`mma_linear_fragments_kernel`]'s shape fitted to whole waves (the switch
/// `mma_fragments_waves`): `(planes, columns, depth)` for a product of `d_in` by `d_out`
/// columns on `sms` multiprocessors. Cubes of the tuning's `planes`, or twice as many (up to
/// [`MMA_FRAGMENT_SM_THREADS`] threads), and 2 to `chunk / 8` tiles of 8 columns (any count, not
/// only powers of two) are weighed by the work of the busiest plane: the waves of cubes the
/// device runs one after another (as many at once per multiprocessor as its threads and shared
/// memory allow) times a wave's work: the tiles of a cube times the blocks of 32 values of
/// `d_in` each of its planes takes, plus [`MMA_FRAGMENT_WAVE_FILL`]. The least work wins; between equals, the fewer cubes. `qkv_proj` of Phi-3 on
/// 132 multiprocessors takes 5 tiles (231 cubes, one wave) where [`mma_fragments_shape`]'s 4
/// make 288 cubes (1.09 waves, the last one nearly empty). The depth is the tuning's, shrunk
/// until a lane holds at most [`MMA_FRAGMENT_WAVE_HELD_VECTORS`] weight loads. `None` when the
/// planes' sums fit no shape's shared memory.
fn mma_fragments_waves(tuning: &super::MmaLinearTuning, d_in: usize, d_out: usize, silu: bool, sms: usize, max_shared: usize) -> Option<(usize, usize, usize)> {
    let (planes, chunk, depth) = (tuning.planes, tuning.chunk, tuning.depth);
    let blocks = d_in.div_ceil(MMA_FRAGMENT_BLOCK);
    let most_tiles = chunk.clamp(2 * MMA_FRAGMENT_COLUMNS, MMA_FRAGMENT_MAX_COLUMNS) / MMA_FRAGMENT_COLUMNS;
    let mut best: Option<((usize, usize), (usize, usize))> = None;
    for planes in [planes, 2 * planes].into_iter().filter(|p| (1..=MMA_FRAGMENT_SM_THREADS / MMA_LANES).contains(p)) {
        for tiles in 2..=most_tiles {
            let b_tiles = tiles * if silu { 2 } else { 1 };
            let shared = mma_fragments_shared(planes, b_tiles);
            if shared > max_shared {
                continue;
            }
            let per_sm = (MMA_FRAGMENT_SM_THREADS / (planes * MMA_LANES)).min(max_shared / shared).max(1);
            let cubes = d_out.div_ceil(tiles * MMA_FRAGMENT_COLUMNS);
            let work = cubes.div_ceil(per_sm * sms.max(1)) * (tiles * blocks.div_ceil(planes) + MMA_FRAGMENT_WAVE_FILL);
            if best.is_none_or(|(key, _)| (work, cubes) < key) {
                best = Some(((work, cubes), (planes, tiles)));
            }
        }
    }
    best.map(|(_, (planes, tiles))| {
        let b_tiles = tiles * if silu { 2 } else { 1 };
        (planes, tiles * MMA_FRAGMENT_COLUMNS, depth.clamp(1, (MMA_FRAGMENT_WAVE_HELD_VECTORS / b_tiles).max(1)))
    })
}

/// What a wave of [`mma_linear_fragments_kernel`]'s cubes costs beyond its blocks, in blocks of
/// one tile: its first loads' latency and its planes' sums at the end. About one DRAM latency
/// (~0.7 µs) against ~0.65 µs per tile-block of each of 32 warps per multiprocessor at the H100's
/// 3.35 TB/s: 2 tips three waves of 3 tiles (the busiest plane's 27 tile-blocks) for
/// `qkv_proj` over one of 5 (30).
const MMA_FRAGMENT_WAVE_FILL: usize = 2;

/// Bytes of shared memory [`mma_linear_fragments_kernel`] takes for its planes' f32 sums.
fn mma_fragments_shared(planes: usize, b_tiles: usize) -> usize {
    planes * b_tiles * MMA_TILE * MMA_FRAGMENT_COLUMNS * 4
}

/// Whether the tensor-core products may take `rows` rows of `dtype` on `client`: turned on,
/// from the tuning's `min_rows` to one tile of rows, on tensor cores ([`tensor_core_refusal`]).
/// The shape of a given product ([`mma_linear_shape`]) may still refuse it.
fn mma_linear_takes_rows<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType, rows: usize) -> bool {
    super::kernel_on("mma_linear") && (super::mma_linear_tuning().min_rows..=MMA_TILE).contains(&rows) && tensor_core_refusal(client, dtype).is_none()
}

/// Why the device cannot run [`mma_linear_fragments_kernel`] for `dtype`, `None` when it can:
/// it needs `mma.m16n8k16` of the dtype with f32 sums and PTX's register layout of its
/// fragments (CUDA; ROCm's `MmaDefinition` lays them out otherwise).
fn mma_fragments_refusal<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> Option<String> {
    let mma = cubecl::ir::features::MmaConfig { a_type: dtype.into(), b_type: dtype.into(), cd_type: DType::F32.into(), m: 16, n: 8, k: 16 };
    if let Some(why) = tensor_core_refusal(client, dtype) {
        Some(why)
    } else if !matches!(R::name(client), "cuda" | "plugin-cuda") {
        Some(format!("{} (PTX's fragment layout: CUDA only)", R::name(client)))
    } else if !client.properties().features.matmul.mma.contains(&mma) {
        Some(format!("no {dtype:?} m16n8k16 register products with f32 sums"))
    } else {
        None
    }
}

/// Most chunks in [`mma_linear_async_kernel`]'s ring (`depth + 1`, one barrier each).
const MMA_ASYNC_MAX_STAGES: usize = 5;

/// [`mma_linear_kernel`] with its chunks copied, not loaded, by cubes that stay: `x · weightᵀ`
/// for 1 to 16 rows of `x` on tensor cores, over `tiles` tiles of 16 output columns (with
/// `silu`, also the 16 up rows `d_out..` after each). The launch has fewer cubes than tiles
/// (as many as the multiprocessors hold at once); cube `i` takes tiles `i, i + cubes, …`, each
/// in `steps` steps: its `planes` planes split `d_in` in chunks of `chunk` values (step `s` of
/// plane `p` is chunk `p + s · planes`). The input rows and weight rows of a step go into a
/// ring of `stages` slots of shared memory by asynchronous copies of `copy` values (16 bytes
/// where aligned; `cp.async` on CUDA), each slot with a barrier of its own that every unit
/// arrives on once its copies into the slot are issued, and that completes when they have
/// landed. A plane waits for its slot, issues the copies of the step `stages - 1` ahead (the
/// cube's steps run on across its tiles, so the next tile's first chunks are in flight while
/// the current one ends) into the slot the step before freed, and multiplies; after a tile's
/// last step the planes' sums go out through [`mma_linear_output`] and start again from zero.
/// Every unit arrives on every step (a plane past the last chunk copies nothing and
/// multiplies nothing), so the barriers' phases stay in step. Each slot holds, per plane, the
/// 16 input rows (rows `rows..` zeros, written once) then the `tiles · 16` weight rows, rows
/// `chunk + MMA_PAD` values apart.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::manual_div_ceil)] // plain integer ops in the kernel
fn mma_linear_async_kernel<E: Float>(
    x: &Array<E>,
    weight: &Array<E>,
    residual: &Array<E>,
    output: &mut Array<E>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    tiles: usize,
    #[comptime] planes: usize,
    #[comptime] chunk: usize,
    #[comptime] copy: usize,
    #[comptime] stages: usize,
    #[comptime] silu: bool,
    #[comptime] add: bool,
    #[define(E)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let cube = CUBE_POS_X as usize;
    let cubes = CUBE_COUNT_X as usize;
    let xs = comptime!(chunk + MMA_PAD);
    let row_tiles = comptime!(if silu { 2usize } else { 1usize });
    // Values of one plane's part of a slot, and of a whole slot.
    let plane_values = comptime!((1 + row_tiles) * MMA_TILE * (chunk + MMA_PAD));
    let slot_values = comptime!(planes * (1 + row_tiles) * MMA_TILE * (chunk + MMA_PAD));
    let mut ring = SharedMemory::<E>::new_aligned(comptime!(stages * planes * (1 + row_tiles) * MMA_TILE * (chunk + MMA_PAD)), 32usize);
    // Rows past the input's: zeros in every slot (their sums are never written; zeros keep
    // them finite). No copy writes them.
    #[unroll]
    for slot in 0..stages {
        let base = slot * slot_values + plane * plane_values;
        let mut i = rows * xs + lane;
        while i < MMA_TILE * xs {
            ring[base + i] = E::from_int(0);
            i += MMA_LANES;
        }
    }
    let b0 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let b1 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let b2 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let b3 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let b4 = Barrier::shared(CUBE_DIM, UNIT_POS == 0);
    let gate = cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, f32::new(0.0));
    let up = cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, f32::new(0.0));
    let chunks = d_in / chunk;
    let steps = (chunks + planes - 1) / planes;
    // This cube's tiles and steps over all of them.
    let my_tiles = select(cube < tiles, (tiles - cube + cubes - 1) / cubes, 0);
    let total = my_tiles * steps;
    #[unroll]
    for first in 0..stages - 1 {
        if first < total {
            let base = first * slot_values + plane * plane_values;
            let n0 = (cube + (first / steps) * cubes) * MMA_TILE;
            mma_linear_copies::<E>(x, weight, &mut ring, base, plane + (first % steps) * planes, chunks, n0, rows, d_in, d_out, lane, chunk, copy, row_tiles);
            ring_arrive(&b0, &b1, &b2, &b3, &b4, first);
        }
    }
    let mut g = 0usize;
    while g < total {
        let slot = g % stages;
        ring_wait(&b0, &b1, &b2, &b3, &b4, slot, u32::cast_from((g / stages) % 2));
        // The slot the step before multiplied from, free once the plane's lanes are past it.
        sync_plane();
        let ahead = g + stages - 1;
        if ahead < total {
            let ahead_slot = ahead % stages;
            let base = ahead_slot * slot_values + plane * plane_values;
            let n0 = (cube + (ahead / steps) * cubes) * MMA_TILE;
            mma_linear_copies::<E>(x, weight, &mut ring, base, plane + (ahead % steps) * planes, chunks, n0, rows, d_in, d_out, lane, chunk, copy, row_tiles);
            ring_arrive(&b0, &b1, &b2, &b3, &b4, ahead_slot);
        }
        let s = g % steps;
        if plane + s * planes < chunks {
            let base = slot * slot_values + plane * plane_values;
            mma_linear_chunk::<E>(&ring, base, &ring, base + MMA_TILE * xs, &gate, &up, chunk, xs, silu);
        }
        if s == steps - 1 {
            // The tile's last step: its sums out (after the last tile's sums were read), and
            // from zero for the next.
            sync_cube();
            mma_linear_output::<E>(&gate, &up, output, residual, rows, d_out, (cube + (g / steps) * cubes) * MMA_TILE, planes, silu, add);
            cmma::fill(&gate, f32::new(0.0));
            cmma::fill(&up, f32::new(0.0));
        }
        g += 1;
    }
}

/// [`mma_linear_async_kernel`]'s copies of chunk `c` (none past `chunks`) for one lane into the
/// plane's part of a slot from `base`: weight rows `n0..` (then up rows `d_out + n0..`; `tiles`
/// groups of 16 rows) after the 16 input rows, input rows `0..rows`, `copy` values a copy.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_linear_copies<E: Float>(
    x: &Array<E>,
    weight: &Array<E>,
    ring: &mut SharedMemory<E>,
    base: usize,
    c: usize,
    chunks: usize,
    n0: usize,
    rows: usize,
    d_in: usize,
    d_out: usize,
    lane: usize,
    #[comptime] chunk: usize,
    #[comptime] copy: usize,
    #[comptime] tiles: usize,
) {
    let xs = comptime!(chunk + MMA_PAD);
    let per_row = comptime!(chunk / copy);
    if c < chunks {
        let k0 = c * chunk;
        #[unroll]
        for l in 0..comptime!(tiles * MMA_TILE * chunk / copy / MMA_LANES) {
            let at = lane + l * MMA_LANES;
            let row = at / per_row;
            let v = at % per_row;
            // Rows 16.. are the up rows (SiLU·mul).
            let mut first = n0 + row;
            if row >= MMA_TILE {
                first = d_out + n0 + row - MMA_TILE;
            }
            let from = first * d_in + k0 + v * copy;
            let to = base + (MMA_TILE + row) * xs + v * copy;
            copy_async::<E>(&weight.slice(from, from + copy), &mut ring.slice_mut(to, to + copy), comptime!(copy as u32));
        }
        #[unroll]
        for l in 0..comptime!(MMA_TILE * chunk / copy / MMA_LANES) {
            let at = lane + l * MMA_LANES;
            let r = at / per_row;
            if r < rows {
                let v = at % per_row;
                let from = r * d_in + k0 + v * copy;
                let to = base + r * xs + v * copy;
                copy_async::<E>(&x.slice(from, from + copy), &mut ring.slice_mut(to, to + copy), comptime!(copy as u32));
            }
        }
    }
}

/// Slot `slot`'s barrier of a ring of asynchronous copies ([`mma_linear_async_kernel`]; up to
/// [`MMA_ASYNC_MAX_STAGES`] slots): the unit's copies
/// issued so far complete on it, and the unit arrives.
#[cube]
fn ring_arrive(b0: &Barrier, b1: &Barrier, b2: &Barrier, b3: &Barrier, b4: &Barrier, slot: usize) {
    if slot == 0 {
        b0.commit_copy_async();
        b0.arrive();
    } else if slot == 1 {
        b1.commit_copy_async();
        b1.arrive();
    } else if slot == 2 {
        b2.commit_copy_async();
        b2.arrive();
    } else if slot == 3 {
        b3.commit_copy_async();
        b3.arrive();
    } else {
        b4.commit_copy_async();
        b4.arrive();
    }
}

/// Waits for phase `phase` of slot `slot`'s barrier of a ring of asynchronous copies (see
/// [`ring_arrive`]).
#[cube]
fn ring_wait(b0: &Barrier, b1: &Barrier, b2: &Barrier, b3: &Barrier, b4: &Barrier, slot: usize, phase: u32) {
    if slot == 0 {
        b0.wait_parity(phase);
    } else if slot == 1 {
        b1.wait_parity(phase);
    } else if slot == 2 {
        b2.wait_parity(phase);
    } else if slot == 3 {
        b3.wait_parity(phase);
    } else {
        b4.wait_parity(phase);
    }
}

/// One output value of the few-row products ([`skinny_linear_kernel`], [`mma_linear_kernel`])
/// from its f32 sums, rounding to `E` where the composed steps do: `up · SiLU(gate)` (`silu`:
/// `sum` is the gate row's, `up` the up row's), `residual + sum` (`add`), else `sum`.
#[cube]
fn write_linear_output<E: Float>(output: &mut Array<E>, residual: &Array<E>, index: usize, sum: f32, up: f32, #[comptime] silu: bool, #[comptime] add: bool) {
    if silu {
        let gate = f32::cast_from(E::cast_from(sum));
        output[index] = E::cast_from(up) * E::cast_from(gate / (f32::new(1.0) + f32::exp(-gate)));
    } else if add {
        output[index] = E::cast_from(sum) + residual[index];
    } else {
        output[index] = E::cast_from(sum);
    }
}

/// [`mma_linear_kernel`]'s loads of chunk `c` for one lane into register slot `slot`: input
/// vector `lane + 32·l` (`l` below `x_loads`; rows `rows..` are not read) and, `staged`, weight
/// vector `lane + 32·l` (`l` below `loads`) of the chunk's rows, gate rows `n0..` then up rows
/// `d_out + n0..`; `vectors` per row of the chunk.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_linear_loads<E: Float, N: Size>(
    x: &Array<Vector<E, N>>,
    weight: &Array<Vector<E, N>>,
    x_held: &mut Array<Vector<E, N>>,
    held: &mut Array<Vector<E, N>>,
    slot: usize,
    n0: usize,
    rows: usize,
    d_out: usize,
    row_vectors: usize,
    c: usize,
    lane: usize,
    #[comptime] vectors: usize,
    #[comptime] x_loads: usize,
    #[comptime] loads: usize,
    #[comptime] staged: bool,
) {
    if staged {
        #[unroll]
        for l in 0..loads {
            let at = lane + l * MMA_LANES;
            let row = at / vectors;
            // Rows 16.. are the up rows (SiLU·mul).
            let mut first = n0 + row;
            if row >= MMA_TILE {
                first = d_out + n0 + row - MMA_TILE;
            }
            held[slot * loads + l] = weight[first * row_vectors + c * vectors + at % vectors];
        }
    }
    #[unroll]
    for l in 0..x_loads {
        let at = lane + l * MMA_LANES;
        let r = at / vectors;
        if r < rows {
            x_held[slot * x_loads + l] = x[r * row_vectors + c * vectors + at % vectors];
        }
    }
}

/// Why the device cannot multiply 16×16×16 tiles of `dtype` on tensor cores with f32 sums
/// (`cmma`) in planes of [`MMA_LANES`] lanes, `None` when it can.
fn tensor_core_refusal<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> Option<String> {
    let mma = cubecl::ir::features::MmaConfig { a_type: dtype.into(), b_type: dtype.into(), cd_type: DType::F32.into(), m: 16, n: 16, k: 16 };
    if !matches!(dtype, DType::F16 | DType::BF16) {
        Some(format!("{dtype:?} (f16 and bf16 only)"))
    } else if !client.properties().features.matmul.cmma.contains(&mma) {
        Some(format!("no {dtype:?} 16×16×16 tensor-core tiles with f32 sums"))
    } else if uniform_plane(client) != Some(MMA_LANES) {
        Some(format!("planes of {:?} lanes, not {MMA_LANES}", uniform_plane(client)))
    } else {
        None
    }
}

/// [`mma_linear_async_kernel`]'s shared memory per cube: the ring of `stages` chunks (input
/// rows and weight rows) and the planes' f32 sums.
fn mma_linear_async_shared(planes: usize, chunk: usize, stages: usize, silu: bool, dtype: DType) -> usize {
    let tiles = if silu { 2 } else { 1 };
    stages * planes * (1 + tiles) * MMA_TILE * (chunk + MMA_PAD) * dtype.size() + planes * tiles * MMA_TILE * (MMA_TILE + MMA_PAD_F32) * 4
}

/// Cubes [`mma_linear_async_kernel`] launches for `tiles` tiles of columns: as many as the
/// multiprocessors hold at once (by shared memory and by units, [`MMA_ASYNC_UNITS_PER_SM`]), at
/// most one per tile.
fn mma_linear_async_cubes<R: CubeRuntime>(client: &ComputeClient<R>, tiles: usize, planes: usize, chunk: usize, stages: usize, silu: bool, dtype: DType) -> usize {
    let hardware = &client.properties().hardware;
    let sms = multiprocessors(client);
    let by_shared = hardware.max_shared_memory_size / mma_linear_async_shared(planes, chunk, stages, silu, dtype).max(1);
    let by_units = MMA_ASYNC_UNITS_PER_SM / (planes * MMA_LANES);
    (sms * by_shared.min(by_units).max(1)).min(tiles).max(1)
}

/// Units a multiprocessor runs at once (2048 on NVIDIA's since Volta), for
/// [`mma_linear_async_cubes`].
const MMA_ASYNC_UNITS_PER_SM: usize = 2048;

/// [`mma_linear_kernel`]'s or [`mma_linear_async_kernel`]'s launch shape: the tuning's planes,
/// the way of reading the chunks and the chunks in flight ahead, the chunk, and the values per
/// vector load (or copy) of `x` and the weight.
struct MmaLinearShape {
    planes: usize,
    chunk: usize,
    reads: super::MmaLinearReads,
    depth: usize,
    vector_size: usize,
}

/// The shape of the tensor-core products for a product ([`MmaLinearShape`]), or `None` where
/// they cannot take it: no tensor-core tiles of the dtype, `d_in` or the output columns not a
/// multiple of 16 (the tile), a weight whose rows do not start 32 bytes apart from a 32-byte
/// boundary (tensor-core loads), fewer rows than the tuning's `min_rows`, or shared memory the
/// device lacks. `chunk` is the tuning's, halved until it divides `d_in` and, held in
/// registers, a lane holds at most [`MMA_LINEAR_HELD_VECTORS`](super::MMA_LINEAR_HELD_VECTORS)
/// vectors for the `depth` chunks ahead (input rows, and weights unless read from global
/// memory); copied, until the ring of `depth + 1` chunks fits the shared memory. Copies need
/// the device's asynchronous copies and barriers, and copies of 4 to 16 bytes; without them
/// the chunks go through registers. Register fragments ([`mma_linear_fragments_kernel`]) need
/// its register products ([`mma_fragments_refusal`]), `d_in` a multiple of 32, 16-byte loads
/// of both buffers and the planes' sums within the shared memory; `chunk` is then the tuning's
/// columns per cube (at most [`MMA_FRAGMENT_MAX_COLUMNS`]); without them, as held in registers.
fn mma_linear_shape<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>, rows: usize, d_in: usize, d_out: usize, silu: bool) -> Option<MmaLinearShape> {
    use super::MmaLinearReads;
    let tuning = super::mma_linear_tuning();
    let dtype = x.dtype;
    let weight_aligned = weight.handle.offset_start.unwrap_or(0).is_multiple_of(32);
    if weight.dtype != dtype || !mma_linear_takes_rows(&x.client, dtype, rows) {
        return None;
    }
    if d_in == 0 || !d_in.is_multiple_of(MMA_TILE) || d_out == 0 || !d_out.is_multiple_of(MMA_TILE) || !weight_aligned {
        return None;
    }
    let tiles = if silu { 2 } else { 1 };
    let width = load_vector_size(&[x, weight], d_in);
    let properties = x.client.properties();
    let max_shared = properties.hardware.max_shared_memory_size;
    // The planes' f32 sums at the end.
    let sums = tuning.planes * tiles * MMA_TILE * (MMA_TILE + MMA_PAD_F32) * 4;
    let copies = copies_async(&x.client, width * dtype.size());
    if tuning.reads == MmaLinearReads::Fragments
        && width == MMA_FRAGMENT_VECTOR
        && d_in.is_multiple_of(MMA_FRAGMENT_BLOCK)
        && mma_fragments_refusal(&x.client, dtype).is_none()
    {
        let sms = multiprocessors(&x.client);
        let shape = if super::kernel_on("mma_fragments_waves") {
            mma_fragments_waves(&tuning, d_in, d_out, silu, sms, max_shared)
        } else {
            let (columns, depth) = mma_fragments_shape(tuning.chunk, tuning.depth, d_out, silu, sms);
            let shared = mma_fragments_shared(tuning.planes, tiles * columns / MMA_FRAGMENT_COLUMNS);
            (shared <= max_shared).then_some((tuning.planes, columns, depth))
        };
        if let Some((planes, columns, depth)) = shape {
            return Some(MmaLinearShape { planes, chunk: columns, reads: MmaLinearReads::Fragments, depth, vector_size: width });
        }
    }
    // Register fragments refused: the register kernel in its own shape (the tuning's `chunk`
    // counts output columns there, its `depth` blocks of 32 values), from the tuning's rows.
    let tuning = match tuning.reads {
        MmaLinearReads::Fragments => super::MmaLinearTuning { min_rows: tuning.min_rows, ..super::MmaLinearTuning::REGISTERS },
        _ => tuning,
    };
    let mut chunk = tuning.chunk;
    if tuning.reads == MmaLinearReads::CopyAsync && copies {
        let stages = tuning.depth + 1;
        let shared = |chunk: usize| mma_linear_async_shared(tuning.planes, chunk, stages, silu, dtype);
        while chunk > MMA_TILE && (!d_in.is_multiple_of(chunk) || shared(chunk) > max_shared) {
            chunk /= 2;
        }
        let fits = d_in.is_multiple_of(chunk) && shared(chunk) <= max_shared && stages <= MMA_ASYNC_MAX_STAGES;
        return fits.then_some(MmaLinearShape { planes: tuning.planes, chunk, reads: MmaLinearReads::CopyAsync, depth: tuning.depth, vector_size: width });
    }
    let reads = if tuning.reads == MmaLinearReads::Global { MmaLinearReads::Global } else { MmaLinearReads::Registers };
    let staged = reads == MmaLinearReads::Registers;
    // Vectors a lane holds for the chunks ahead: the input rows', and the weights' when staged.
    let held = |chunk: usize| tuning.depth * (1 + if staged { tiles } else { 0 }) * MMA_TILE * (chunk / width) / MMA_LANES;
    while !d_in.is_multiple_of(chunk) || (chunk > MMA_TILE && held(chunk) > super::MMA_LINEAR_HELD_VECTORS) {
        chunk /= 2;
    }
    let rows_staged = if staged { 1 + tiles } else { 1 };
    let shared = tuning.planes * MMA_TILE * rows_staged * (chunk + MMA_PAD) * dtype.size() + sums;
    (shared <= max_shared).then_some(MmaLinearShape { planes: tuning.planes, chunk, reads, depth: tuning.depth, vector_size: width })
}

#[cfg(test)]
mod tests {
    use super::{mma_attention_prefetch_fits, mma_fragments_shape, mma_fragments_waves};
    use crate::kernels::MmaLinearTuning;

    /// `comptime!(…)` runs its expression as plain Rust while a kernel is expanded: a launch-time
    /// `Size`'s `value()` or any other cube function there panics at the kernel's first launch
    /// ("Unexpanded Cube functions should not be called"). Branches only CUDA compiles (the
    /// asynchronous copies) never reach lavapipe, so this reads the kernels' source instead:
    /// session 37's copies read their load width as `comptime!(N::value())` and every launch of
    /// them panicked on the H100.
    #[test]
    fn comptime_blocks_call_no_cube_function() {
        // The kernels: the file up to its tests (whose text names the patterns).
        let whole = include_str!("cube.rs");
        let source = &whole[..whole.find(concat!("#[cfg(test)]\n", "mod tests {")).expect("the tests module")];
        let mut offenders = Vec::new();
        for (at, _) in source.match_indices("comptime!") {
            // The macro's argument: from its opening bracket to the matching close.
            let rest = &source[at + "comptime!".len()..];
            let mut depth = 0usize;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' | '[' | '{' => depth += 1,
                        ')' | ']' | '}' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i + 1);
            let body = &rest[..end];
            if ["::value()", "cast_from(", "__expand"].iter().any(|call| body.contains(call)) {
                let line = source[..at].matches('\n').count() + 1;
                offenders.push(format!("cube.rs:{line}: comptime!{body}"));
            }
        }
        assert!(offenders.is_empty(), "cube functions inside comptime!: {offenders:#?}");
    }

    /// [`mma_fragments_waves`] from a tuning of `planes`, `chunk` and `depth`.
    fn waves(planes: usize, chunk: usize, depth: usize, d_in: usize, d_out: usize, silu: bool, max_shared: usize) -> Option<(usize, usize, usize)> {
        mma_fragments_waves(&MmaLinearTuning { planes, chunk, depth, ..MmaLinearTuning::default() }, d_in, d_out, silu, 132, max_shared)
    }

    /// The register fragments' cubes narrow until a 132-multiprocessor GPU has 2 per
    /// multiprocessor (not below 16 columns), and the blocks in flight shrink to 16 weight loads
    /// per lane: Phi-3's projections at 10 rows and cases of the kernels test.
    #[test]
    fn fragment_cubes_narrow_and_their_depth_fits_the_registers() {
        // o_proj, down_proj (3072 columns): 16 columns, 192 cubes.
        assert_eq!(mma_fragments_shape(64, 2, 3072, false, 132), (16, 2));
        // qkv_proj (9216): 32 columns, 288 cubes.
        assert_eq!(mma_fragments_shape(64, 4, 9216, false, 132), (32, 4));
        // gate_up_proj (8192 outputs, each of a gate and an up row): 16 columns, 4 B tiles.
        assert_eq!(mma_fragments_shape(64, 4, 8192, true, 132), (16, 4));
        // Wide enough for 64 columns; the depth then shrinks to 16 / 8 = 2 (1 with SiLU·mul).
        assert_eq!(mma_fragments_shape(64, 4, 17408, false, 132), (64, 2));
        assert_eq!(mma_fragments_shape(64, 4, 17408, true, 132), (64, 1));
        // Few columns: 16, and never wider than 64 or narrower than 16.
        assert_eq!(mma_fragments_shape(256, 1, 16, false, 132), (16, 1));
        assert_eq!(mma_fragments_shape(256, 1, 1 << 20, false, 132), (64, 1));
        assert_eq!(mma_fragments_shape(16, 3, 1 << 20, true, 132), (16, 3));
    }

    /// The flash kernel's prefetch takes 16-bit heads of 16 to 64 values in vectors of 8 (and
    /// 32 in vectors of 2: 8 registers per operand), not 80 or 96 (20 and 24 registers: slower
    /// at Phi-3's 96 on the H100), 128 (32) nor 64 in single values (32).
    #[test]
    fn flash_prefetch_fits_the_registers() {
        for head_dim in [16, 32, 48, 64] {
            assert!(mma_attention_prefetch_fits(head_dim, 8, 2), "{head_dim}");
        }
        assert!(mma_attention_prefetch_fits(32, 2, 2));
        for (head_dim, width) in [(80, 8), (96, 8), (128, 8), (64, 1)] {
            assert!(!mma_attention_prefetch_fits(head_dim, width, 2), "{head_dim} in vectors of {width}");
        }
    }

    /// Fitted to whole waves on 132 multiprocessors (shared memory of the H100's 227 KiB per
    /// cube), Phi-3's projections at 10 rows take one wave each, or two full ones: `qkv_proj` 5
    /// tiles of 16 planes (231 cubes), `o_proj` and `down_proj` 3 tiles of 32 planes (128
    /// cubes, half the blocks per plane), `gate_up_proj` 4 tiles of 16 planes (256 cubes,
    /// 8 B tiles: depth 1). The depth holds at most 8 weight loads per lane.
    #[test]
    fn fragment_cubes_fit_whole_waves() {
        let h100 = 227 * 1024;
        assert_eq!(waves(16, 64, 2, 3072, 9216, false, h100), Some((16, 40, 1)));
        assert_eq!(waves(16, 64, 2, 3072, 3072, false, h100), Some((32, 24, 2)));
        assert_eq!(waves(16, 64, 2, 8192, 3072, false, h100), Some((32, 24, 2)));
        assert_eq!(waves(16, 64, 2, 3072, 8192, true, h100), Some((16, 32, 1)));
        // The tuning's columns bound the tiles: at 32 columns qkv_proj has no one-wave shape,
        // and takes 32 planes of 3 tiles (384 cubes, 3 waves of 3 blocks per plane).
        assert_eq!(waves(16, 32, 2, 3072, 9216, false, h100), Some((32, 24, 2)));
        // Shared memory of 48 KiB: 32 planes of 3 tiles (48 KiB of sums) still fit; of 4 KiB,
        // no shape's sums do.
        assert_eq!(waves(16, 64, 2, 3072, 3072, false, 48 * 1024), Some((32, 24, 2)));
        assert_eq!(waves(16, 16, 4, 64, 64, false, 4 * 1024), None);
        // Few columns: one cube of 2 tiles, with the more planes where d_in has blocks for them.
        assert_eq!(waves(16, 64, 2, 3072, 16, false, h100), Some((32, 16, 2)));
        assert_eq!(waves(16, 64, 2, 64, 16, false, h100), Some((16, 16, 2)));
    }
}
