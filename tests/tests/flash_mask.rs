//! cubek-attention's masking as this crate relies on it, on wgpu (lavapipe in CI).
//!
//! The routine's own causal mode gave wrong outputs on CUDA in its tensor-core form
//! (docs/kernels.md, session 15), so `FlashAttention::Tiles` passes a causal limit as a
//! materialised mask instead (`flash_tiles_causal`, kernels/cube.rs). The tensor-core form
//! cannot run here (lavapipe has no cooperative matrices); its unit form, which shares the
//! mask readers and the online softmax, does. This test asserts, against a host reference,
//! what the Tiles path builds: a `[queries, keys]` mask, `true` = masked, aligned bottom-right
//! (a chunk after cached keys), broadcast over batch and heads with stride 0, over queries
//! padded with zero rows to a whole stage; and, as a control, the routine's causal flag where
//! queries and keys are as many (where top-left and bottom-right alignment agree).

#![cfg(feature = "wgpu")]

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::wgpu::WgpuRuntime;
use burn_cubecl::kernel::attention::{AttentionStrategy, attention};

type B = CubeBackend<WgpuRuntime, f32, i32, u8>;

/// The routine computes in f16 tiles (queries, keys, values and probabilities rounded to
/// 2⁻¹¹ relative) with f32 sums; outputs are convex combinations of values in [-1, 1].
const F16_TILE_ERROR: f32 = 2e-3;

/// Batch × heads of every problem.
const HEADS: usize = 2;

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.618 + seed).sin()).collect()
}

/// Softmax attention on the host; `causal`: query `i` sees keys `0..=i + keys − queries`.
fn reference(q: &[f32], k: &[f32], v: &[f32], (queries, keys, d): (usize, usize, usize), causal: bool) -> Vec<f32> {
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0; HEADS * queries * d];
    for h in 0..HEADS {
        for i in 0..queries {
            let seen = if causal { i + keys - queries + 1 } else { keys };
            let s: Vec<f32> = (0..seen).map(|j| (0..d).map(|t| q[(h * queries + i) * d + t] * k[(h * keys + j) * d + t]).sum::<f32>() * scale).collect();
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for t in 0..d {
                out[(h * queries + i) * d + t] = (0..seen).map(|j| e[j] * v[(h * keys + j) * d + t]).sum::<f32>() / z;
            }
        }
    }
    out
}

/// Largest |got − expected| of the unit routine on `(queries, keys, d)`: with the causal limit
/// as a mask over queries padded to a multiple of `stage` (`Some`), or with the routine's causal
/// flag (`None`).
fn run(device: &burn::tensor::Device<B>, (queries, keys, d): (usize, usize, usize), mask_stage: Option<usize>) -> f32 {
    let (q, k, v) = (values(HEADS * queries * d, 0.1), values(HEADS * keys * d, 0.7), values(HEADS * keys * d, 1.3));
    let tensor = |x: &[f32], n: usize| Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), [1, HEADS, n, d]), device);
    let options = |is_causal| AttentionModuleOptions { scale: None, softcap: None, is_causal };
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let out = match mask_stage {
        Some(stage) => {
            let pad = queries.next_multiple_of(stage) - queries;
            let padded = Tensor::cat(vec![tensor(&q, queries), Tensor::<B, 4>::zeros([1, HEADS, pad, d], device)], 2);
            let rows = queries + pad;
            let mask = Tensor::<B, 2, Bool>::tril_mask([rows, keys], (keys - queries) as i64, device).unsqueeze::<4>().expand([1, HEADS, rows, keys]);
            attention::<WgpuRuntime>(prim(padded), prim(tensor(&k, keys)), prim(tensor(&v, keys)), Some(mask.into_primitive()), None, options(false), AttentionStrategy::FlashUnit)
        }
        None => attention::<WgpuRuntime>(prim(tensor(&q, queries)), prim(tensor(&k, keys)), prim(tensor(&v, keys)), None, None, options(true), AttentionStrategy::FlashUnit),
    }
    .expect("the unit routine runs on lavapipe");
    let got = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out)).narrow(2, 0, queries).into_data().to_vec::<f32>().unwrap();
    let expected = reference(&q, &k, &v, (queries, keys, d), true);
    got.iter().zip(&expected).map(|(g, e)| (g - e).abs()).fold(0.0, |m: f32, x| if x.is_nan() { f32::INFINITY } else { m.max(x) })
}

#[test]
fn a_materialised_causal_mask_is_right_bottom_right_broadcast_and_padded() {
    let device = Default::default();
    let mut failures = Vec::new();
    // As many keys as queries (a prefill from position 0), after cached keys, head dims of
    // CLIP (64) and Phi-3 (96), queries short of a stage.
    for problem in [(64, 64, 32), (16, 48, 32), (40, 100, 64), (40, 112, 64), (128, 128, 96)] {
        for stage in [1, 64] {
            let err = run(&device, problem, Some(stage));
            eprintln!("{problem:?} mask, queries padded to a multiple of {stage}: max error {err:.2e}");
            if err > F16_TILE_ERROR {
                failures.push(format!("{problem:?} stage {stage}: {err:.2e}"));
            }
        }
    }
    // The control: the routine's causal flag where queries and keys are as many.
    for problem in [(64, 64, 32), (128, 128, 96)] {
        let err = run(&device, problem, None);
        eprintln!("{problem:?} causal flag: max error {err:.2e}");
        if err > F16_TILE_ERROR {
            failures.push(format!("{problem:?} causal flag: {err:.2e}"));
        }
    }
    assert!(failures.is_empty(), "beyond {F16_TILE_ERROR:.0e}: {failures:?}");
}
