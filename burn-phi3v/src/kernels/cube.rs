//! [`Kernels`] as CubeCL kernels, for every CubeCL runtime (CUDA, wgpu, ROCm, the plugin
//! runtime): one launch per step where Burn's composition takes several.

use burn::tensor::DType;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement,
    kernel::into_contiguous,
    ops::numeric::empty_device_dtype,
    tensor::CubeTensor,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use super::{KernelPolicy, Kernels};

impl<R, F, I, BT> Kernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if !runs_here(&x.client) {
            return super::default_rms_norm::<Self>(x, weight, eps);
        }
        rms_norm(x, weight, eps)
    }

    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, head_dim: usize) -> FloatTensor<Self> {
        if !runs_here(&x.client) {
            return super::default_rotary::<Self>(x, cos, sin, head_dim);
        }
        rotary(x, cos, sin, head_dim)
    }

    fn silu_mul(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        if !runs_here(&gate_up.client) {
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

    fn decode_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self> {
        let head_dim = q.meta.shape()[3];
        if head_dim > ROW_UNITS as usize || head_dim == 0 || !runs_here(&q.client) {
            return super::default_decode_attention::<Self>(q, k, v);
        }
        decode_attention(q, k, v)
    }
}

/// Whether these kernels run on `client`'s runtime under the current [`KernelPolicy`]: by
/// default only where `tests/tests/kernels.rs` has passed on a device, which is wgpu's WGSL and
/// SPIR-V compilers (Mesa lavapipe, 2026-12-02/03). On CUDA (H200, 2026-12-03) 9 of 24 checks
/// gave wrong values (docs/kernels.md), so CUDA, and the runtimes sharing its C++ code
/// generator (HIP/ROCm, Metal's MSL, the plugin runtimes), compose the steps from Burn ops
/// unless `PHI3V_FUSED_KERNELS=1` forces the kernels.
fn runs_here<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    match super::kernel_policy() {
        KernelPolicy::Off => false,
        KernelPolicy::Forced => true,
        KernelPolicy::Verified => matches!(R::name(client), "wgpu<wgsl>" | "wgpu<spirv>"),
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

/// One cube per row: the sum of squares in f32 (each unit strides over the row, then a tree
/// reduction in shared memory), then `x · rsqrt(mean + eps)` cast to the dtype, times `weight`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rms_norm_kernel<E: Float>(
    x: &Tensor<E>,
    weight: &Tensor<E>,
    output: &mut Tensor<E>,
    eps: f32,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let width = x.shape(x.rank() - 1);
    // Rows beyond a dimension's 65535 cubes spread over a second one (see `row_cubes`).
    if CUBE_POS * width >= x.len() {
        terminate!();
    }
    let base = CUBE_POS * width;
    let unit = UNIT_POS as usize;

    // Each unit's partial sum accumulates in its shared-memory slot (a runtime variable; a
    // local initialised from a literal would be a compile-time constant in CubeCL).
    let mut sums = SharedMemory::<f32>::new(units);
    sums[unit] = f32::new(0.0);
    let mut i = unit;
    while i < width {
        let v = f32::cast_from(x[base + i]);
        sums[unit] += v * v;
        i += units;
    }
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

    let inv = f32::new(1.0) / f32::sqrt(sums[0] / f32::cast_from(width) + eps);
    let mut j = unit;
    while j < width {
        output[base + j] = E::cast_from(f32::cast_from(x[base + j]) * inv) * weight[j];
        j += units;
    }
}

/// `Phi3RMSNorm` over the last dimension; see [`Kernels::rms_norm`].
pub(crate) fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let weight = into_contiguous(weight);
    let shape = x.meta.shape().clone();
    let width = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / width.max(1);
    let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    if rows == 0 || width == 0 {
        return output;
    }
    let address = [x.required_address_type(), output.required_address_type()].into_iter().max().unwrap_or_default();
    let dtype = x.dtype;
    unsafe {
        rms_norm_kernel::launch_unchecked(
            &output.client,
            row_cubes(rows),
            CubeDim::new_1d(ROW_UNITS),
            address,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            eps as f32,
            ROW_UNITS as usize,
            dtype.into(),
        )
    };
    output
}

/// One unit per output value: value `c` of a head reads `c` and its partner `c ± half` of the
/// same head (strided input, last-dimension stride 1), and row `(batch, position)` of the
/// tables.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rotary_kernel<E: Float>(
    x: &Tensor<E>,
    cos: &Tensor<E>,
    sin: &Tensor<E>,
    output: &mut Tensor<E>,
    #[comptime] head_dim: usize,
    #[define(E)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let seq = output.shape(1);
    let width = output.shape(2);
    let j = ABSOLUTE_POS % width;
    let row = ABSOLUTE_POS / width; // batch · seq + position
    let b = row / seq;
    let s = row % seq;
    let half = head_dim / 2;
    let c = j % head_dim;
    let input = b * x.stride(0) + s * x.stride(1);
    let value = x[input + j];
    let table = row * head_dim + c;
    let rotated = if c < half { -x[input + j + half] } else { x[input + j - half] };
    output[ABSOLUTE_POS] = value * cos[table] + rotated * sin[table];
}

/// Rotary embedding of every head; see [`Kernels::rotary`].
pub(crate) fn rotary<R: CubeRuntime>(x: CubeTensor<R>, cos: CubeTensor<R>, sin: CubeTensor<R>, head_dim: usize) -> CubeTensor<R> {
    let x = if x.meta.strides()[2] == 1 { x } else { into_contiguous(x) };
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let shape = x.meta.shape().clone();
    let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let units = shape.num_elements();
    if units == 0 {
        return output;
    }
    let cube_dim = CubeDim::new(&x.client, units);
    let cube_count = calculate_cube_count_elemwise(&x.client, units, cube_dim);
    let address = [x.required_address_type(), output.required_address_type()].into_iter().max().unwrap_or_default();
    let dtype = x.dtype;
    unsafe {
        rotary_kernel::launch_unchecked(
            &output.client,
            cube_count,
            cube_dim,
            address,
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            head_dim,
            dtype.into(),
        )
    };
    output
}

/// One unit per output value: `up · SiLU(gate)` with SiLU in f32.
#[cube(launch_unchecked, address_type = "dynamic")]
fn silu_mul_kernel<E: Float>(gate_up: &Tensor<E>, output: &mut Tensor<E>, #[define(E)] _dtype: StorageType) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let width = output.shape(output.rank() - 1);
    let row = ABSOLUTE_POS / width;
    let i = ABSOLUTE_POS % width;
    let gate = f32::cast_from(gate_up[row * 2 * width + i]);
    let up = gate_up[row * 2 * width + width + i];
    let silu = gate / (f32::new(1.0) + f32::exp(-gate));
    output[ABSOLUTE_POS] = up * E::cast_from(silu);
}

/// `up · SiLU(gate)` over the two halves of the last dimension; see [`Kernels::silu_mul`].
pub(crate) fn silu_mul<R: CubeRuntime>(gate_up: CubeTensor<R>) -> CubeTensor<R> {
    let gate_up = into_contiguous(gate_up);
    let mut shape = gate_up.meta.shape().clone();
    let last = shape.num_dims() - 1;
    shape[last] /= 2;
    let output = empty_device_dtype(gate_up.client.clone(), gate_up.device.clone(), shape.clone(), gate_up.dtype);
    let units = shape.num_elements();
    if units == 0 {
        return output;
    }
    let cube_dim = CubeDim::new(&gate_up.client, units);
    let cube_count = calculate_cube_count_elemwise(&gate_up.client, units, cube_dim);
    let address = [gate_up.required_address_type(), output.required_address_type()].into_iter().max().unwrap_or_default();
    let dtype: DType = gate_up.dtype;
    unsafe {
        silu_mul_kernel::launch_unchecked(
            &output.client,
            cube_count,
            cube_dim,
            address,
            gate_up.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            dtype.into(),
        )
    };
    output
}

/// Sentinel below every score (the scores are finite: no mask).
const NO_SCORE: f32 = -3.0e38;

/// One cube per (batch, head) for one query row: the scores `q·k_j / sqrt(head_dim)` in f32
/// (units over keys, into `scores`), their maximum and the sum of `exp(score − max)` by tree
/// reductions in shared memory, then `Σ_j p_j v_j` with the units split into
/// `units / head_dim` groups over the keys, one output dimension per unit. Keys and values are
/// read through their strides (a cache view or a paged gather, no copy); a query head reads the
/// key/value head `h / (heads / kv_heads)` (grouped-query attention).
#[cube(launch_unchecked, address_type = "dynamic")]
fn decode_attention_kernel<E: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    scores: &mut Tensor<f32>,
    output: &mut Tensor<E>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
    #[define(E)] _dtype: StorageType,
) {
    let heads = q.shape(1);
    let kv_heads = k.shape(1);
    let keys = k.shape(2);
    let bh = CUBE_POS;
    if bh >= q.shape(0) * heads {
        terminate!();
    }
    let b = bh / heads;
    let h = bh % heads;
    let hk = h / (heads / kv_heads);
    let unit = UNIT_POS as usize;
    let q_base = b * q.stride(0) + h * q.stride(1);
    let k_base = b * k.stride(0) + hk * k.stride(1);
    let v_base = b * v.stride(0) + hk * v.stride(1);
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
        let key = k_base + j * k.stride(2);
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
            partial[unit] += scores[row + j] * f32::cast_from(v[v_base + j * v.stride(2) + d]);
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
/// [`Kernels::decode_attention`].
pub(crate) fn decode_attention<R: CubeRuntime>(q: CubeTensor<R>, k: CubeTensor<R>, v: CubeTensor<R>) -> CubeTensor<R> {
    let last_unit = |t: CubeTensor<R>| if t.meta.strides()[3] == 1 { t } else { into_contiguous(t) };
    let (q, k, v) = (last_unit(q), last_unit(k), last_unit(v));
    let shape = q.meta.shape().clone();
    let (batch, heads, head_dim) = (shape[0], shape[1], shape[3]);
    let keys = k.meta.shape()[2];
    let output = empty_device_dtype(q.client.clone(), q.device.clone(), shape, q.dtype);
    if batch * heads == 0 || head_dim == 0 {
        return output;
    }
    let scores = empty_device_dtype(q.client.clone(), q.device.clone(), [batch * heads, keys.max(1)].into(), DType::F32);
    let address = [k.required_address_type(), v.required_address_type(), scores.required_address_type()]
        .into_iter()
        .max()
        .unwrap_or_default();
    let dtype = q.dtype;
    unsafe {
        decode_attention_kernel::launch_unchecked(
            &output.client,
            row_cubes(batch * heads),
            CubeDim::new_1d(ROW_UNITS),
            address,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            scores.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            1.0 / (head_dim as f32).sqrt(),
            head_dim,
            ROW_UNITS as usize,
            dtype.into(),
        )
    };
    output
}

/// Output columns per cube of the skinny product: one plane (32 units) each.
const SKINNY_COLUMNS: u32 = 8;

/// `x · weightᵀ` for `rows` ≤ 16 rows of `x` (`[rows, d_in]`, contiguous) and the checkpoint's
/// weight rows (`[d_out, d_in]`, contiguous), both read in vectors of `N` values. A cube of 8
/// planes takes 8 output columns, one plane per column: its 32 lanes stream that weight row
/// once, vector by vector, and multiply each vector with the same vector of every input row
/// (the inputs stay in the caches: every plane reads them), accumulating `rows` f32 sums per
/// lane with no barrier in the loop; the lanes' sums meet in shared memory at the end.
#[cube(launch_unchecked, address_type = "dynamic")]
fn skinny_linear_kernel<E: Float, N: Size>(
    x: &Tensor<Vector<E, N>>,
    weight: &Tensor<Vector<E, N>>,
    output: &mut Tensor<E>,
    #[comptime] rows: usize,
    #[define(E)] _dtype: StorageType,
) {
    let width = N::value();
    let vectors = x.shape(1) / width;
    let d_out = output.shape(1);
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let column = CUBE_POS * 8 + plane;

    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = f32::new(0.0);
    }
    if column < d_out {
        let row_base = column * vectors;
        let mut j = lane;
        while j < vectors {
            let w = weight[row_base + j];
            #[unroll]
            for r in 0..rows {
                let xv = x[r * vectors + j];
                let mut dot = f32::cast_from(w[0]) * f32::cast_from(xv[0]);
                #[unroll]
                for e in 1..width {
                    dot += f32::cast_from(w[e]) * f32::cast_from(xv[e]);
                }
                acc[r] += dot;
            }
            j += 32;
        }
    }
    // Lane partials of (plane, row) at (plane · rows + row) · 32 + lane.
    let mut partials = SharedMemory::<f32>::new(rows * 256);
    #[unroll]
    for r in 0..rows {
        partials[(plane * rows + r) * 32 + lane] = acc[r];
    }
    sync_cube();
    if unit < 8 * rows {
        let out_column = CUBE_POS * 8 + unit / rows;
        let r = unit % rows;
        if out_column < d_out {
            let mut sum = partials[unit * 32];
            for l in 1..32 {
                sum += partials[unit * 32 + l];
            }
            output[r * d_out + out_column] = E::cast_from(sum);
        }
    }
}

/// Values per vector load: the widest of 8, 4, 2 that the runtime loads at once for this
/// dtype, that divides `d_in`, and that both buffers' offsets are aligned to; else 1.
fn skinny_vector_size<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>, d_in: usize) -> usize {
    let bytes = x.dtype.size();
    let aligned = |t: &CubeTensor<R>, n: usize| t.handle.offset_start.unwrap_or(0) % (n * bytes) as u64 == 0;
    x.client
        .io_optimized_vector_sizes(bytes)
        .map(|n| n as usize)
        .filter(|&n| n <= 8 && d_in % n == 0 && aligned(x, n) && aligned(weight, n))
        .max()
        .unwrap_or(1)
}

/// `x · weight` for a few rows; see [`Kernels::skinny_linear`]. `weight` is the transposed
/// view of contiguous `[d_out, d_in]` rows.
pub(crate) fn skinny_linear<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let [rows, d_in] = [x.meta.shape()[0], x.meta.shape()[1]];
    let d_out = weight.meta.shape()[1];
    // The checkpoint's rows again: `[d_out, d_in]`, last dimension contiguous.
    let weight = CubeBackend::<R, f32, i32, u8>::float_swap_dims(weight, 0, 1);
    let output = empty_device_dtype(x.client.clone(), x.device.clone(), [rows, d_out].into(), x.dtype);
    if d_out == 0 {
        return output;
    }
    let vector_size = skinny_vector_size(&x, &weight, d_in);
    let address = [x.required_address_type(), weight.required_address_type(), output.required_address_type()]
        .into_iter()
        .max()
        .unwrap_or_default();
    let dtype = x.dtype;
    unsafe {
        skinny_linear_kernel::launch_unchecked(
            &output.client,
            row_cubes(d_out.div_ceil(SKINNY_COLUMNS as usize)),
            CubeDim::new_2d(32, SKINNY_COLUMNS),
            address,
            vector_size,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            rows,
            dtype.into(),
        )
    };
    output
}
