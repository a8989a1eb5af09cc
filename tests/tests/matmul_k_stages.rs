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
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
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
    strategy: String,
    double_buffered: bool,
    k: usize,
    result: Result<f32, String>,
}

/// Launches `strategy` on `lhs · rhs` (each given as host data, shape and whether to pass it as
/// a transposed view) and returns the largest ratio of |got − expected| to what `precision`
/// allows, or the launch's error. `rhs` rows past `k` (if the data holds more) must not be read.
#[allow(clippy::too_many_arguments)]
fn launch_and_check<R: CubeRuntime, E: FloatElement>(
    device: &R::Device,
    precision: Precision,
    strategy: &Strategy,
    (m, k, n): (usize, usize, usize),
    a: Vec<f32>,
    lhs_transposed: bool,
    b: Vec<f32>,
    rhs_rows: usize,
    rhs_transposed: bool,
) -> Result<f32, String> {
    type B<R, E> = CubeBackend<R, E, i32, u8>;
    // Logical operands, row-major: a [m, k], b [k, n] (the first k of rhs_rows rows).
    let at = |i: usize, p: usize| if lhs_transposed { a[p * m + i] } else { a[i * k + p] };
    let bt = |p: usize, j: usize| if rhs_transposed { b[j * rhs_rows + p] } else { b[p * n + j] };
    let expected: Vec<f32> = (0..m * n)
        .map(|ij| (0..k).map(|p| f64::from(at(ij / n, p)) * f64::from(bt(p, ij % n))).sum::<f64>() as f32)
        .collect();
    let lhs = if lhs_transposed {
        Tensor::<B<R, E>, 2>::from_data(TensorData::new(a, [k, m]).convert::<E>(), device).transpose()
    } else {
        Tensor::<B<R, E>, 2>::from_data(TensorData::new(a, [m, k]).convert::<E>(), device)
    };
    let rhs = if rhs_transposed {
        Tensor::<B<R, E>, 2>::from_data(TensorData::new(b, [n, rhs_rows]).convert::<E>(), device).slice([0..n, 0..k]).transpose()
    } else {
        Tensor::<B<R, E>, 2>::from_data(TensorData::new(b, [rhs_rows, n]).convert::<E>(), device).slice([0..k, 0..n])
    };
    let output = Tensor::<B<R, E>, 2>::zeros([m, n], device);
    let (lhs, rhs, output) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor(), output.into_primitive().tensor());
    let client = output.client.clone();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.dtype.into(),
        rhs: rhs.dtype.into(),
        out: output.dtype.into(),
    });
    let (lhs_dtype, rhs_dtype) = (lhs.dtype, rhs.dtype);
    launch_ref(
        strategy,
        &client,
        InputBinding::new(lhs.binding(), lhs_dtype.into()),
        InputBinding::new(rhs.binding(), rhs_dtype.into()),
        output.clone().binding(),
        &mut dtypes,
    )
    .map_err(|e| format!("{e:?}").chars().take(120).collect::<String>())?;
    let got = Tensor::<B<R, E>, 2>::from_primitive(TensorPrimitive::Float(output)).into_data().convert::<f32>().to_vec::<f32>().unwrap();
    Ok(got
        .iter()
        .zip(&expected)
        .map(|(g, e)| (g - e).abs() / precision.allowed(k, *e))
        .fold(0.0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) }))
}

/// A set of kernel launches run on one device of runtime `R` in float type `E`.
trait Probe {
    fn run<R: CubeRuntime, E: FloatElement>(&self, device: &R::Device, precision: Precision) -> Vec<Outcome>;
}

/// Every tiled strategy at every `k`; the rhs is the first `k` rows of a tensor whose other rows
/// hold 1000.
struct TiledAtEveryK;

impl Probe for TiledAtEveryK {
    fn run<R: CubeRuntime, E: FloatElement>(&self, device: &R::Device, precision: Precision) -> Vec<Outcome> {
        let mut out = Vec::new();
        for (strategy_name, double_buffered, strategy) in strategies() {
            for k in ks() {
                let a = precision.operands(M * k, 0);
                let mut b_big = precision.operands((k + 64) * N, 1);
                b_big[k * N..].iter_mut().for_each(|v| *v = 1000.0);
                let result = launch_and_check::<R, E>(device, precision, &strategy, (M, k, N), a, false, b_big, k + 64, false);
                out.push(Outcome { strategy: strategy_name.to_string(), double_buffered, k, result });
            }
        }
        out
    }
}

/// The two GEMV kernel families forced on every layout and shape class: vec·mat with a
/// row-major and a column-major rhs, mat·vec with a row-major and a column-major lhs, lengths
/// that are and are not multiples of the plane size, and a problem that is no GEMV at all.
/// Autotune's key rounds shapes and does not separate these layouts, so a GEMV kernel tuned on
/// one runs on the others: cubek-matmul 0.2.0 then failed ("Vecmat plane parallel only supports
/// col major rhs", found on CUDA in the engine's decode attention) and autotune panicked. With
/// the patch every launch must succeed (the naive kernel runs what the GEMV kernel cannot) and
/// be exact.
struct GemvEveryLayout;

impl Probe for GemvEveryLayout {
    fn run<R: CubeRuntime, E: FloatElement>(&self, device: &R::Device, precision: Precision) -> Vec<Outcome> {
        let families = [
            ("gemv_plane_parallel", Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default()))),
            ("gemv_unit_perpendicular", Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default()))),
        ];
        // (m, k, n, lhs transposed, rhs transposed)
        let problems = [
            (1, 96, 64, false, false),
            (1, 96, 64, false, true),
            (1, 100, 50, false, false),
            (1, 100, 50, false, true),
            (64, 96, 1, false, false),
            (64, 96, 1, true, false),
            (50, 100, 1, true, false),
            (4, 96, 8, false, false),
        ];
        let mut out = Vec::new();
        for (family, strategy) in &families {
            for (m, k, n, lt, rt) in problems {
                let a = precision.operands(m * k, 0);
                let b = precision.operands(k * n, 1);
                let result = launch_and_check::<R, E>(device, precision, strategy, (m, k, n), a, lt, b, k, rt);
                let layout = |t: bool| if t { "col-major" } else { "row-major" };
                let name = format!("{family} [{m}, {k}]·[{k}, {n}] lhs {} rhs {}", layout(lt), layout(rt));
                out.push(Outcome { strategy: name, double_buffered: false, k, result });
            }
        }
        out
    }
}

/// Runs `probe` on every GPU test target (`wgpu:*` in f32, `cuda:*` in f32 or bf16), returning
/// each target's outcomes.
fn on_gpu_targets(probe: &impl Probe) -> Vec<(String, DType, Vec<Outcome>)> {
    let mut all = Vec::new();
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
                probe.run::<burn_cubecl::cubecl::wgpu::WgpuRuntime, f32>(&device, Precision::F32)
            }
            #[cfg(feature = "cuda")]
            Some("cuda") => {
                let index: usize = spec.split(':').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let device = burn_cubecl::cubecl::cuda::CudaDevice::new(index);
                if bf16 {
                    probe.run::<burn_cubecl::cubecl::cuda::CudaRuntime, half::bf16>(&device, Precision::Bf16)
                } else {
                    probe.run::<burn_cubecl::cubecl::cuda::CudaRuntime, f32>(&device, Precision::F32)
                }
            }
            _ => continue,
        };
        all.push((spec, dtype, outcomes));
    }
    all
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
    for (spec, dtype, outcomes) in on_gpu_targets(&TiledAtEveryK) {
        devices += 1;
        for o in outcomes {
            match o.result {
                Ok(err) => {
                    eprintln!("{spec} {dtype:?}: {} k={}: max |Δ| / allowed {err:.3e}", o.strategy, o.k);
                    ran_double_buffered += usize::from(o.double_buffered);
                    if err.is_nan() || err > 1.0 {
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
            if err.is_nan() || err > tolerance(16) {
                bad.push(format!("{spec}: q·Kᵀ over {n} keys is off by {err:e}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn gemv_kernels_run_every_layout_or_fall_back() {
    let mut bad = Vec::new();
    let mut devices = 0;
    for (spec, dtype, outcomes) in on_gpu_targets(&GemvEveryLayout) {
        devices += 1;
        for o in outcomes {
            match o.result {
                Ok(err) if err <= 1.0 => eprintln!("{spec} {dtype:?}: {}: max |Δ| / allowed {err:.3e}", o.strategy),
                Ok(err) => bad.push(format!("{spec} {dtype:?}: {} is off by {err:e} × the allowed error", o.strategy)),
                Err(why) => bad.push(format!("{spec} {dtype:?}: {} failed to launch: {why}", o.strategy)),
            }
        }
    }
    eprintln!("{devices} GPU device(s) checked");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
