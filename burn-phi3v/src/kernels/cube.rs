//! [`Kernels`] as CubeCL kernels, for every CubeCL runtime (CUDA, wgpu, ROCm, the plugin
//! runtime): one launch per step where Burn's composition takes several.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement,
    kernel::into_contiguous,
    ops::numeric::empty_device_dtype,
    tensor::CubeTensor,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use super::Kernels;

impl<R, F, I, BT> Kernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_norm(x, weight, eps)
    }

    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, head_dim: usize) -> FloatTensor<Self> {
        rotary(x, cos, sin, head_dim)
    }

    fn silu_mul(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        silu_mul(gate_up)
    }
}

/// Units per cube of the row kernels (a power of two: the reduction halves it).
const ROW_UNITS: u32 = 256;

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
            CubeCount::new_1d(rows as u32),
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
