//! cubek's tiled matmul kernels over the contraction length `k`, on every GPU test target
//! (`PHI3V_TEST_DEVICES`, `wgpu:*` and `cuda:*`), each kernel family forced in turn.
//!
//! Why: cubek-matmul 0.2.0 (Burn 0.21's matmul) rounds the number of k-stages of its
//! double-buffered kernels up to an even count and checks k bounds only when
//! `k % stage_k != 0`, so when `k` is an odd multiple of `stage_k` the last, phantom stage
//! reads past the end of both operands and adds what it finds (Burn issue 5626). Autotune
//! picks these kernels, so the model's matmuls went wrong wherever such a `k` met such a kernel:
//! every linear of the tiny checkpoints on the H100 (`k` = 32, 64) and the attention's `P·V`
//! at 776 / 792 / 2536 keys (8 × an odd number) on NVIDIA's Vulkan driver (docs/parity.md).
//! The workspace patches cubek-matmul (`patches/cubek-matmul`, `[patch.crates-io]` in the root
//! `Cargo.toml`) to check k bounds unless the stage count is even, and to keep f32 products in
//! f32 rather than TF32; this test forces each kernel family and asserts it multiplies
//! correctly, to f32 accuracy, at those `k`.
//!
//! The right-hand operand is the first `k` rows of a larger tensor whose other rows hold
//! 1000, so a read past row `k` cannot go unnoticed.
//!
//! Each target runs in its dtype (`PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16`): f32 checks every
//! kernel to f32 accuracy; bf16 reaches the tensor-core (cmma, mma) kernels that f32 does not
//! use, with operands exact in bf16, so the only error left is the output's rounding.

#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{Strategy, launch_ref};
use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;
use phi3v_tests::devices::test_targets;

/// Contraction lengths: every multiple of 4 up to 160 (odd and even multiples of every stage
/// depth a kernel may use, 4 to 64: the failing shapes and their controls), the attention's
/// key counts that failed on the H100 (776, 792), and lengths no stage divides.
fn ks() -> Vec<usize> {
    (1..=40).map(|i| 4 * i).chain([104, 776, 792, 1000, 1024, 33]).collect()
}

const M: usize = 40;
const N: usize = 48;

/// Every kernel family that accepts an inferred blueprint; the double-buffered ones are the
/// suspects, the single-buffered ones the control.
fn strategies() -> Vec<(&'static str, bool, Strategy)> {
    let unit = |t| DoubleUnitSelectionArgs { tile_size: t };
    let simple_unit = |t| SimpleUnitSelectionArgs { tile_size: t };
    vec![
        ("double_unit_min", true, Strategy::DoubleUnit(BlueprintStrategy::Inferred(unit(TileSizeSelection::MinTileSize)))),
        ("double_unit_max", true, Strategy::DoubleUnit(BlueprintStrategy::Inferred(unit(TileSizeSelection::MaxTileSize)))),
        ("double_cyclic_cmma", true, Strategy::DoubleCyclicCmma(BlueprintStrategy::Inferred(Default::default()))),
        ("double_cyclic_mma", true, Strategy::DoubleCyclicMma(BlueprintStrategy::Inferred(Default::default()))),
        ("double_tilewise_cmma", true, Strategy::DoubleTilewiseCmma(BlueprintStrategy::Inferred(Default::default()))),
        ("double_hybrid_cmma", true, Strategy::DoubleHybridCmma(BlueprintStrategy::Inferred(Default::default()))),
        ("ordered_double_cmma", true, Strategy::OrderedDoubleCmma(BlueprintStrategy::Inferred(Default::default()))),
        ("ordered_double_mma", true, Strategy::OrderedDoubleMma(BlueprintStrategy::Inferred(Default::default()))),
        ("specialized_cyclic_cmma", true, Strategy::SpecializedCyclicCmma(BlueprintStrategy::Inferred(Default::default()))),
        ("simple_unit_min", false, Strategy::SimpleUnit(BlueprintStrategy::Inferred(simple_unit(TileSizeSelection::MinTileSize)))),
        ("simple_cyclic_cmma", false, Strategy::SimpleCyclicCmma(BlueprintStrategy::Inferred(Default::default()))),
    ]
}

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.618 + seed).sin()).collect()
}

/// Quarter steps in [-1, 1]: exact in bf16, so bf16 products and their f32 sums are exact.
fn grid_values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 5 + seed) % 9) as f32 * 0.25 - 1.0).collect()
}

/// How a dtype's run is checked: its operands and the error it may show at one output.
#[derive(Clone, Copy)]
enum Precision {
    /// f32 operands and output: a few ulps per term ([`tolerance`]).
    F32,
    /// bf16-exact operands, bf16 output: the output's rounding (2⁻⁹ relative, 2⁻⁸ allowed).
    Bf16,
}

impl Precision {
    fn operands(self, n: usize, seed: usize) -> Vec<f32> {
        match self {
            Precision::F32 => values(n, 0.3 + 0.6 * seed as f32),
            Precision::Bf16 => grid_values(n, seed),
        }
    }

    fn allowed(self, k: usize, expected: f32) -> f32 {
        match self {
            Precision::F32 => tolerance(k),
            Precision::Bf16 => expected.abs() / 256.0 + 1e-3,
        }
    }
}

/// What one kernel did at one `k`: its largest error against the host product, or why it
/// did not run.
struct Outcome {
    strategy: &'static str,
    double_buffered: bool,
    k: usize,
    result: Result<f32, String>,
}

/// Runs every strategy at every `k` on one device of runtime `R` in float type `E`; an
/// outcome's error is the largest ratio of |got − expected| to what `precision` allows (≤ 1
/// passes).
fn run<R: CubeRuntime, E: FloatElement>(device: &R::Device, precision: Precision) -> Vec<Outcome> {
    type B<R, E> = CubeBackend<R, E, i32, u8>;
    let mut out = Vec::new();
    for (strategy_name, double_buffered, strategy) in strategies() {
        for k in ks() {
            let a = precision.operands(M * k, 0);
            let mut b_big = precision.operands((k + 64) * N, 1);
            b_big[k * N..].iter_mut().for_each(|v| *v = 1000.0);
            let expected: Vec<f32> = (0..M * N)
                .map(|ij| {
                    let (i, j) = (ij / N, ij % N);
                    (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b_big[p * N + j])).sum::<f64>() as f32
                })
                .collect();
            let lhs = Tensor::<B<R, E>, 2>::from_data(TensorData::new(a, [M, k]).convert::<E>(), device);
            let rhs = Tensor::<B<R, E>, 2>::from_data(TensorData::new(b_big, [k + 64, N]).convert::<E>(), device).slice([0..k, 0..N]);
            let output = Tensor::<B<R, E>, 2>::zeros([M, N], device);
            let (lhs, rhs, output) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor(), output.into_primitive().tensor());
            let client = output.client.clone();
            let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
                lhs: lhs.dtype.into(),
                rhs: rhs.dtype.into(),
                out: output.dtype.into(),
            });
            let (lhs_dtype, rhs_dtype) = (lhs.dtype, rhs.dtype);
            let launched = launch_ref(
                &strategy,
                &client,
                InputBinding::new(lhs.binding(), lhs_dtype.into()),
                InputBinding::new(rhs.binding(), rhs_dtype.into()),
                output.clone().binding(),
                &mut dtypes,
            );
            let result = match launched {
                Err(e) => Err(format!("{e:?}").chars().take(80).collect()),
                Ok(()) => {
                    let got = Tensor::<B<R, E>, 2>::from_primitive(TensorPrimitive::Float(output)).into_data().convert::<f32>().to_vec::<f32>().unwrap();
                    Ok(got
                        .iter()
                        .zip(&expected)
                        .map(|(g, e)| (g - e).abs() / precision.allowed(k, *e))
                        .fold(0.0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) }))
                }
            };
            out.push(Outcome { strategy: strategy_name, double_buffered, k, result });
        }
    }
    out
}

/// f32 products of `k` terms of size ≤ 1 accumulated in f32: a few ulps per term. TF32 (10-bit
/// mantissa inputs, which the patch turns off for f32) is ~100× further off and fails this; a
/// phantom stage adds ~1000 per term.
fn tolerance(k: usize) -> f32 {
    1e-5 + 2e-6 * k as f32
}

#[test]
fn tiled_matmul_kernels_are_exact_at_every_k() {
    let mut ran_double_buffered = 0;
    let mut bad = Vec::new();
    let mut devices = 0;
    for (spec, dtype) in test_targets() {
        let bf16 = dtype == DType::BF16;
        let outcomes = match spec.split(':').next() {
            #[cfg(feature = "wgpu")]
            Some("wgpu" | "vulkan") => {
                let index: usize = spec.split(':').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let adapters = burn_phi3v::backends::wgpu::adapters();
                let device = adapters.get(index).map(|a| a.device.clone()).unwrap_or_default();
                if bf16 {
                    eprintln!("{spec}: no bf16 on wgpu; skipped");
                    continue;
                }
                run::<burn_cubecl::cubecl::wgpu::WgpuRuntime, f32>(&device, Precision::F32)
            }
            #[cfg(feature = "cuda")]
            Some("cuda") => {
                let index: usize = spec.split(':').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let device = burn_cubecl::cubecl::cuda::CudaDevice::new(index);
                if bf16 {
                    run::<burn_cubecl::cubecl::cuda::CudaRuntime, half::bf16>(&device, Precision::Bf16)
                } else {
                    run::<burn_cubecl::cubecl::cuda::CudaRuntime, f32>(&device, Precision::F32)
                }
            }
            _ => continue,
        };
        devices += 1;
        for o in outcomes {
            match o.result {
                Ok(err) => {
                    eprintln!("{spec} {dtype:?}: {} k={}: max |Δ| / allowed {err:.3e}", o.strategy, o.k);
                    ran_double_buffered += usize::from(o.double_buffered);
                    if !(err <= 1.0) {
                        bad.push(format!("{spec} {dtype:?}: {} at k={} is off by {err:e} × the allowed error", o.strategy, o.k));
                    }
                }
                Err(why) => eprintln!("{spec} {dtype:?}: {} k={}: not available here ({why})", o.strategy, o.k),
            }
        }
    }
    eprintln!("{devices} GPU device(s) checked");
    if devices > 0 {
        assert!(ran_double_buffered > 0, "no double-buffered kernel could be launched: the test checked nothing");
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// One decode query against every key count from 4448 to 4464 through Burn's autotuned matmul
/// (`q · Kᵀ` with `Kᵀ` a transposed view, as the composed attention does): these lengths share
/// one autotune key (m, n, k rounded to powers of two), so the kernel tuned on the first is
/// reused for the others. cubek-matmul 0.2.0 could pick a GEMV kernel that needs n to be a
/// multiple of the plane size and then panic on 4457 (lavapipe, long_context_two_images); the
/// patch runs such shapes with the naive kernel. Runs on every test device.
struct VecMatOverKeys;

impl phi3v_devices::DeviceFn for VecMatOverKeys {
    type Output = Vec<(usize, f32)>;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: &B::Device,
        _: &burn_phi3v::device::DeviceInfo,
        _: burn::tensor::DType,
    ) -> Self::Output {
        const HEAD_DIM: usize = 16;
        (4448..=4464)
            .map(|n| {
                let q = values(HEAD_DIM, 0.2);
                let k = values(n * HEAD_DIM, 0.7);
                let expected: Vec<f32> = (0..n)
                    .map(|j| (0..HEAD_DIM).map(|d| f64::from(q[d]) * f64::from(k[j * HEAD_DIM + d])).sum::<f64>() as f32)
                    .collect();
                let qt = Tensor::<B, 2>::from_data(TensorData::new(q, [1, HEAD_DIM]), device);
                let kt = Tensor::<B, 2>::from_data(TensorData::new(k, [n, HEAD_DIM]), device);
                let got = qt.matmul(kt.transpose()).into_data().convert::<f32>().to_vec::<f32>().unwrap();
                (n, got.iter().zip(&expected).map(|(g, e)| (g - e).abs()).fold(0.0f32, f32::max))
            })
            .collect()
    }
}

#[test]
fn autotuned_vecmat_runs_at_every_length_of_one_key() {
    let mut bad = Vec::new();
    for (spec, _) in test_targets() {
        for (n, err) in phi3v_devices::with_device(&spec, Some("f32"), VecMatOverKeys).unwrap() {
            if !(err <= tolerance(16)) {
                bad.push(format!("{spec}: q·Kᵀ over {n} keys is off by {err:e}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
