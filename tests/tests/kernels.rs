//! The model's kernels (burn_phi3v::kernels) against their composed fallbacks on the same
//! device, on fresh random inputs each run (the seed is printed), at the model's real widths
//! and at awkward ones, on every test target. Tolerances: `OpTolerance` (per dtype, relative
//! to the largest magnitude), the one the conformance checks use.

use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorPrimitive, bf16, f16};
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::kernels::{self, KernelPolicy, Kernels, MmaLinearReads, kernel_policy, set_kernel_policy};
use phi3v_devices::DeviceFn;
use phi3v_tests::conformance::OpTolerance;
use phi3v_tests::devices::test_targets;
use phi3v_tests::rng::Rng;
use phi3v_tests::tolerance::{magnitude, max_abs_diff};

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The terms an attention check's bound allows for (see `flash`'s comment).
const ATTENTION_TERMS: usize = 4;

/// Held by each test for its whole run: the tests switch process-wide settings (the kernel
/// policy, the tensor-core product's tuning), and libtest runs tests on parallel threads.
static PROCESS_SETTINGS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What each output value of a check accumulates, which sets its error bound.
#[derive(Clone, Copy)]
enum Terms {
    /// `n` terms in the compute dtype (products, sums; 1 for elementwise steps).
    Dtype(usize),
    /// Statistics over `n` values in f32, then the output rounded once to the dtype (the
    /// norms): in half precision the output's rounding dominates, in f32 the statistics'
    /// summation does (a LayerNorm of 1024 offset values differed from the CPU's by 2.1e-6 on
    /// lavapipe, over the one-term bound of 1.9e-6; the composed form by 2.3e-6).
    F32Statistics(usize),
}

impl Terms {
    fn bound(self, tolerance: &OpTolerance) -> f32 {
        match self {
            Terms::Dtype(n) => tolerance.bound(n),
            Terms::F32Statistics(n) => tolerance.bound_f32_statistics(n),
        }
    }
}

/// One step's outputs on the host: the kernel's (twice, to catch races), the composed
/// fallback's, and what each output value accumulates.
struct Outputs {
    what: String,
    accumulated: Terms,
    fused: Vec<f32>,
    fused_again: Vec<f32>,
    composed: Vec<f32>,
}

/// Largest |reference − got| relative to the largest |reference| (∞ on NaN or a length
/// mismatch).
fn rel_err(reference: &[f32], got: &[f32]) -> f32 {
    max_abs_diff(reference, got) / magnitude(reference)
}

struct KernelJob {
    seed: u64,
    /// The inputs are rounded to this dtype on the host, so that the CPU witness (f32) sees
    /// exactly the values a half-precision target holds.
    inputs: DType,
    /// The CPU witness's outputs (computed first): each check on the target is compared as it
    /// runs, so that a device run cut short by its time limit still reports the checks it
    /// reached (the CUDA bf16 runs of sessions 20–24 compiled for 330–540 s and compared none).
    witness: Option<std::sync::Arc<Vec<Outputs>>>,
}

/// A check's verdict against the witness: whether it passes, and the line that says so.
fn verdict(o: &Outputs, w: &Outputs, tolerance: &OpTolerance) -> (bool, String) {
    let bound = o.accumulated.bound(tolerance);
    let (vs_composed, vs_cpu, composed_vs_cpu) = (rel_err(&o.composed, &o.fused), rel_err(&w.composed, &o.fused), rel_err(&w.composed, &o.composed));
    let repeat = rel_err(&o.fused, &o.fused_again);
    let pass = vs_composed <= bound && vs_cpu <= bound && repeat == 0.0;
    let line = format!(
        "{}: {vs_composed:.2e} vs composed, {vs_cpu:.2e} vs cpu (bound {bound:.2e}); repeat {repeat:.1e}; composed vs cpu {composed_vs_cpu:.2e}{}",
        o.what,
        if pass { "" } else { "  FAIL" }
    );
    (pass, line)
}

fn round_to(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(v).to_f32(),
        DType::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

impl KernelJob {
    /// Every check's outputs, and the problems found on the way that are not a comparison (a
    /// routine refused): recorded, not asserted, so that one problem does not hide the
    /// comparisons of the checks after it (a device call is too dear to learn one thing).
    fn outputs<B: Kernels>(&self, device: &B::Device, dtype: DType, problems: &mut Vec<String>) -> Vec<Outputs> {
        let only_flash = only_flash();
        let mut rng = Rng(self.seed | 1);
        let mut input = |shape: Vec<usize>, scale: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| round_to(self.inputs, (rng.unit() * 2.0 - 1.0) * scale)).collect();
            (v, shape)
        };
        let tensor = |(v, shape): (Vec<f32>, Vec<usize>)| Tensor::<B, 1>::from_data(TensorData::new(v, [shape.iter().product::<usize>()]), (device, dtype));
        let mut checks = Vec::new();
        let host = |t: Tensor<B, 3>| -> Vec<f32> { t.into_data().convert::<f32>().into_vec().unwrap() };
        // Progress with the time since the start: a device run that runs out of its time says
        // which check it reached (three CUDA bf16 runs ended without a word, sessions 20–22).
        let start = std::time::Instant::now();
        let tolerance = OpTolerance::for_dtype(dtype);
        let mut compare = |what: String, accumulated: Terms, (fused, fused_again, composed): (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>)| {
            assert_eq!(fused.dims(), composed.dims(), "{what}");
            let o = Outputs { what, accumulated, fused: host(fused), fused_again: host(fused_again), composed: host(composed) };
            let elapsed = start.elapsed().as_secs_f64();
            match self.witness.as_ref().and_then(|w| w.get(checks.len())) {
                Some(w) => eprintln!("{elapsed:8.1} s  {}", verdict(&o, w, &tolerance).1),
                None => eprintln!("{elapsed:8.1} s  ran {}", o.what),
            }
            checks.push(o);
        };
        // The kernels forced on (tested even where they are not on by default), then composed.
        let policy = kernel_policy();
        let both = |f: &dyn Fn() -> Tensor<B, 3>| {
            set_kernel_policy(KernelPolicy::Forced);
            let fused = f();
            let fused_again = f();
            set_kernel_policy(KernelPolicy::Off);
            let composed = f();
            set_kernel_policy(policy);
            (fused, fused_again, composed)
        };

        // Every check but the flash attentions' unless `PHI3V_TEST_KERNEL_CHECKS=flash` ([`only_flash`]).
        if !only_flash {
            // RMSNorm: Phi-3's hidden 3072, a width under the 256 units of a row, one not a multiple
            // of them; one row and many.
            // 66000 rows: more cubes than one launch dimension holds (65535).
            // Rows of 77 and 6 values take vectors of 1 and 2 (the others 4 or 8).
            for (rows, width) in [(1, 3072), (7, 3072), (3, 100), (5, 1000), (66000, 8), (2, 77), (3, 6)] {
                let x = tensor(input(vec![rows * width], 2.0)).reshape([1, rows, width]);
                let weight = tensor(input(vec![width], 1.0));
                let outputs = both(&|| kernels::rms_norm(x.clone(), &weight, 1e-5));
                // Statistics in f32 on both sides: the dtype rounds the output once (`Terms`).
                compare(format!("rms_norm [1, {rows}, {width}]"), Terms::F32Statistics(width), outputs);
            }
            // CLIP's LayerNorm (mean and biased variance in f32, weight and bias in the dtype): its
            // width 1024 and rows of 577 tokens, widths under and off a cube's 256 units, 3-d input,
            // more rows than one launch dimension holds. Rows get a common offset so that a
            // variance taken without subtracting the mean first would lose digits.
            for (rows, width) in [(577, 1024), (3, 100), (5, 1000), (66000, 8), (2, 77)] {
                let x = (tensor(input(vec![rows * width], 2.0)) + 3.0).reshape([1, rows, width]);
                let weight = tensor(input(vec![width], 1.0));
                let bias = tensor(input(vec![width], 1.0));
                let outputs = both(&|| kernels::layer_norm(x.clone(), &weight, &bias, 1e-5));
                compare(format!("layer_norm [1, {rows}, {width}]"), Terms::F32Statistics(width), outputs);
            }
            // CLIP's quick-GELU over an fc1 output of 577 tokens × 4096, and a length off a cube's
            // units; inputs wide enough that the sigmoid saturates at both ends. Rows of 77 and 6
            // take vectors of 1 and 2 values (4096 and 1000 take 8 where the device loads 8). With
            // fc1's bias added in the kernel's pass: the composed side rounds the sum to the dtype
            // first, one rounding more.
            for (rows, width) in [(577, 4096), (3, 1000), (2, 77), (5, 6)] {
                let x = tensor(input(vec![rows * width], 12.0)).reshape([1, rows, width]);
                let outputs = both(&|| kernels::quick_gelu(x.clone(), None));
                compare(format!("quick_gelu [1, {rows}, {width}]"), Terms::Dtype(1), outputs);
                let bias = tensor(input(vec![width], 4.0));
                let outputs = both(&|| kernels::quick_gelu(x.clone(), Some(&bias)));
                compare(format!("quick_gelu with bias [1, {rows}, {width}]"), Terms::Dtype(2), outputs);
            }
            // The residual add fused with the norm after it: the sum and the normed sum side by side.
            for (rows, width) in [(1, 3072), (10, 3072), (3, 100), (66000, 8), (2, 77)] {
                let x = tensor(input(vec![rows * width], 2.0)).reshape([1, rows, width]);
                let residual = tensor(input(vec![rows * width], 2.0)).reshape([1, rows, width]);
                let weight = tensor(input(vec![width], 1.0));
                let outputs = both(&|| {
                    let (sum, normed) = kernels::add_rms_norm(x.clone(), residual.clone(), &weight, 1e-5);
                    Tensor::cat(vec![sum, normed], 2)
                });
                compare(format!("add_rms_norm [1, {rows}, {width}]"), Terms::F32Statistics(width), outputs);
            }

            // Rotary: queries and keys read from a fused qkv row (strided views) as the decoder
            // does: 32 heads of 96 (Phi-3), and 3 heads of 64 over 2 sequences of 5 positions.
            for (batch, seq, heads, head_dim) in [(1, 1, 32, 96), (2, 5, 3, 64), (1, 9, 4, 96)] {
                let width = heads * head_dim;
                let qkv = tensor(input(vec![batch * seq * 3 * width], 1.0)).reshape([batch, seq, 3 * width]);
                let angles = input(vec![batch * seq * head_dim / 2], 3.0).0;
                let table = |f: fn(f32) -> f32| {
                    let v: Vec<f32> = (0..batch * seq)
                        .flat_map(|r| (0..head_dim).map(move |i| (r, i % (head_dim / 2))))
                        .map(|(r, i)| round_to(self.inputs, f(angles[r * head_dim / 2 + i])))
                        .collect();
                    Tensor::<B, 4>::from_data(TensorData::new(v, [batch, 1, seq, head_dim]), (device, dtype))
                };
                let (cos, sin) = (table(f32::cos), table(f32::sin));
                for (name, start) in [("q", 0), ("k", width)] {
                    let rows = qkv.clone().narrow(2, start, width);
                    let outputs = both(&|| kernels::rotary(rows.clone(), &cos, &sin, head_dim));
                    compare(format!("rotary {name} [{batch}, {seq}, {heads}×{head_dim}]"), Terms::Dtype(2), outputs);
                }
            }

            // Rotation, head split and KV-cache append of a decode step (and of a chunk of 3), into
            // buffers with room to spare (their other positions must stay as they were: the
            // buffers are random, shared with the test, so the kernel copies them first). Phi-3's
            // 32 heads of 96; grouped-query 4 over 2 heads of 64 in two rows.
            for (batch, seq, heads, kv_heads, head_dim, capacity, cached) in [(1, 1, 32, 32, 96, 40, 17), (2, 3, 4, 2, 64, 9, 5)] {
                let width = (heads + 2 * kv_heads) * head_dim;
                let qkv = tensor(input(vec![batch * seq * width], 1.0)).reshape([batch, seq, width]);
                let table = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [batch, 1, seq, head_dim]), (device, dtype));
                let (cos, sin) = (table(input(vec![batch * seq * head_dim], 1.0).0), table(input(vec![batch * seq * head_dim], 1.0).0));
                let buffer = |(v, _): (Vec<f32>, Vec<usize>)| Tensor::<B, 4>::from_data(TensorData::new(v, [batch, kv_heads, capacity, head_dim]), (device, dtype));
                let (k_values, v_values) = (input(vec![batch * kv_heads * capacity * head_dim], 1.0), input(vec![batch * kv_heads * capacity * head_dim], 1.0));
                let (k_cache, v_cache) = (buffer(k_values.clone()), buffer(v_values.clone()));
                let flat = |t: Tensor<B, 4>| {
                    let n = t.shape().num_elements();
                    t.reshape([1, 1, n])
                };
                let outputs = both(&|| {
                    let (q, k, v) = kernels::rotary_append(qkv.clone(), &cos, &sin, k_cache.clone(), v_cache.clone(), heads, cached);
                    Tensor::cat(vec![flat(q), flat(k), flat(v)], 2)
                });
                compare(format!("rotary_append [{batch}, {seq}, {heads}+2×{kv_heads} heads of {head_dim}] after {cached} of {capacity}"), Terms::Dtype(2), outputs);
                // The buffers the test still holds were copied, not written.
                assert_eq!(host(flat(k_cache)), k_values.0, "rotary_append wrote into a shared key buffer");
                assert_eq!(host(flat(v_cache)), v_values.0, "rotary_append wrote into a shared value buffer");
            }

            // SiLU·mul over gate_up_proj's output: Phi-3's 2 × 8192, an odd half, and an odd whole
            // (not a gate_up_proj output: its last column is left out, as the composed step does).
            // Halves of 8192, 77, 10 (the odd whole: single values) and 6 take vectors of 8, 1, 1
            // and 2 values.
            for (rows, width) in [(1, 16384), (3, 16384), (2, 154), (3, 21), (4, 12)] {
                let gate_up = tensor(input(vec![rows * width], 3.0)).reshape([1, rows, width]);
                let outputs = both(&|| kernels::silu_mul(gate_up.clone()));
                compare(format!("silu_mul [1, {rows}, {width}]"), Terms::Dtype(1), outputs);
            }
            // Decode attention (`DECODE_CASES`), the variant the device runs by default.
            for case in DECODE_CASES {
                let (what, run) = decode_check::<B>(case, device, &mut |n| tensor(input(vec![n], 1.0)));
                compare(what, Terms::Dtype(case.head_dim()), both(&*run));
            }
            // Skinny products: 2 to 16 rows (decode steps of several sequences) against the
            // checkpoint-layout weight (`[d_out, d_in]` rows, used transposed as `Linear::load`
            // does); widths that are not multiples of the vector width or of a cube's 4 columns,
            // fewer columns than one cube takes, and 8192 inputs (the most planes per cube); 1 row
            // takes whatever `linear` routes (`PHI3V_SKINNY_MIN_ROWS`), 17 rows Burn's `linear` on
            // both sides.
            for (rows, d_in, d_out) in [(10, 1536, 136), (2, 300, 37), (16, 1000, 64), (3, 77, 20), (5, 96, 3), (1, 256, 16), (17, 64, 24), (4, 8192, 24)] {
                let x = tensor(input(vec![rows * d_in], 1.0)).reshape([1, rows, d_in]);
                let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                let outputs = both(&|| kernels::linear(x.clone(), &weight, None));
                compare(format!("linear [{rows}, {d_in}] · [{d_in}, {d_out}]"), Terms::Dtype(d_in), outputs);
            }
            // One row through the skinny kernel itself, whatever `linear` routes (`PHI3V_SKINNY_MIN_ROWS`);
            // 8192 inputs split over the most planes a cube has.
            for (d_in, d_out) in [(1536, 136), (300, 37), (8192, 40)] {
                let x = tensor(input(vec![d_in], 1.0)).reshape([1, d_in]);
                let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                let outputs = both(&|| {
                    let out = B::skinny_linear(x.clone().into_primitive().tensor(), weight.clone().into_primitive().tensor());
                    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape([1, 1, d_out])
                });
                compare(format!("skinny_linear [1, {d_in}] · [{d_in}, {d_out}]"), Terms::Dtype(d_in), outputs);
            }
            // The decoder layer's fused projections: the norm before `qkv_proj` / `gate_up_proj`
            // (with up · silu(gate) after the latter) and the residual add after `o_proj` /
            // `down_proj`, at 1, 3 (d_in split over planes), 10 and 16 rows (planes of their own
            // columns), widths off the vector width and a cube's columns; 17 rows compose.
            for (rows, d_in, d_out) in [(1, 1536, 136), (3, 300, 38), (10, 1000, 64), (16, 96, 10), (1, 8192, 40), (17, 64, 24)] {
                let x = tensor(input(vec![rows * d_in], 1.0)).reshape([1, rows, d_in]);
                let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                let norm = tensor(input(vec![d_in], 1.0));
                let residual = tensor(input(vec![rows * d_out], 1.0)).reshape([1, rows, d_out]);
                // The norm's scale from a first pass over the rows, then (`skinny_norm_after`) from
                // the squares summed beside the products.
                let after_was_on = kernels::kernel_on("skinny_norm_after");
                for after in [false, true] {
                    assert!(kernels::set_kernel_on("skinny_norm_after", after));
                    let how = if after { ", norm after" } else { "" };
                    let outputs = both(&|| kernels::norm_linear(x.clone(), &norm, 1e-5, &weight));
                    compare(format!("norm_linear [{rows}, {d_in}] · [{d_in}, {d_out}]{how}"), Terms::Dtype(d_in), outputs);
                    let outputs = both(&|| kernels::norm_linear_silu_mul(x.clone(), &norm, 1e-5, &weight));
                    compare(format!("norm_linear_silu_mul [{rows}, {d_in}] · [{d_in}, {d_out}]{how}"), Terms::Dtype(d_in), outputs);
                }
                kernels::set_kernel_on("skinny_norm_after", after_was_on);
                let outputs = both(&|| kernels::linear_add(x.clone(), &weight, residual.clone()));
                compare(format!("linear_add [{rows}, {d_in}] · [{d_in}, {d_out}]"), Terms::Dtype(d_in), outputs);
            }
        }

        // Flash attention (prefill, the vision tower): causal over as many keys as queries
        // (Phi-3's 96-dim heads, more rows than one 64-row block), causal after cached keys
        // (aligned bottom-right), not causal (CLIP's 64-dim heads), grouped-query heads, and
        // 128-dim heads. The composed side gets the causal mask explicitly (backends disagree on
        // where a causal flag aligns when keys outnumber queries).
        // `chunk_bytes` runs `scores_attention` with that chunk size instead of `attention`.
        let mut flash = |batch: usize, heads: usize, kv_heads: usize, queries: usize, keys: usize, head_dim: usize, causal: bool, tiling: &str, chunk_bytes: Option<usize>| {
            let q = tensor(input(vec![batch * heads * queries * head_dim], 2.0)).reshape([batch, heads, queries, head_dim]);
            let k = tensor(input(vec![batch * kv_heads * keys * head_dim], 2.0)).reshape([batch, kv_heads, keys, head_dim]);
            let v = tensor(input(vec![batch * kv_heads * keys * head_dim], 1.0)).reshape([batch, kv_heads, keys, head_dim]);
            let mask = Tensor::<B, 2, Bool>::tril_mask([queries, keys], (keys - queries) as i64, device)
                .unsqueeze::<4>()
                .expand([batch, heads, queries, keys]);
            let outputs = both(&|| {
                let out = if let (true, Some(bytes)) = (kernels::fused_kernels(), chunk_bytes) {
                    kernels::scores_attention(q.clone(), k.clone(), v.clone(), causal, bytes)
                } else if kernels::fused_kernels() {
                    kernels::attention(q.clone(), k.clone(), v.clone(), None, causal)
                } else {
                    kernels::attention(q.clone(), k.clone(), v.clone(), causal.then(|| mask.clone()), false)
                };
                out.reshape([1, batch * heads * queries, head_dim])
            });
            let how = if causal { "causal" } else { "full" };
            // An output row is a convex combination of value rows: its error does not grow with
            // the keys the way a sum's does, so the bound is that of a few terms (with `keys` it
            // was loose enough to pass session 15's wrong causal outputs at 1.4 relative error).
            compare(format!("flash_attention{tiling} [{batch}, {heads}/{kv_heads} heads, {queries} queries, {keys} keys, {head_dim}] {how}"), Terms::Dtype(ATTENTION_TERMS), outputs);
        };
        let flash_cases = [(1, 4, 4, 70, 70, 96, true), (2, 3, 3, 20, 50, 64, true), (2, 2, 2, 33, 33, 64, false), (1, 4, 2, 17, 40, 32, false), (1, 2, 1, 130, 130, 128, true)];
        // Under Burn's attention and under the default, `Auto`: the tensor-core flash kernel
        // from register fragments where it runs (CUDA, f16/bf16), `scores` elsewhere, never the
        // staged tensor-core kernel (slower than `scores` at CLIP's shape).
        let default_flash = kernels::flash_attention_choice();
        for choice in [kernels::FlashAttention::Burn, kernels::FlashAttention::Auto] {
            assert!(kernels::set_flash_attention(choice));
            let (mma_before, fragments_before) = (kernels::mma_attention_count(), kernels::mma_attention_fragment_count());
            for (batch, heads, kv_heads, queries, keys, head_dim, causal) in flash_cases {
                flash(batch, heads, kv_heads, queries, keys, head_dim, causal, &format!(" as {choice:?}"), None);
            }
            let (mma_ran, fragments_ran) = (kernels::mma_attention_count() - mma_before, kernels::mma_attention_fragment_count() - fragments_before);
            if mma_ran != fragments_ran {
                problems.push(format!("{choice:?} ran the staged tensor-core flash kernel {} times", mma_ran - fragments_ran));
            }
        }
        // CubeCL's tensor-core flash attention at tilings Burn's autotune does not try
        // (`FlashAttention::Tiles`: bf16/f16 without a causal limit on devices with tensor cores;
        // Burn's attention elsewhere): full over a partial key tile (64-dim heads, 100 keys),
        // full over fewer queries than a stage (padded with zero rows, as CLIP's 577), and causal
        // problems, over as many keys as queries and after cached keys, which must take Burn's
        // attention (the routine's causal outputs are wrong on CUDA through its causal flag and
        // through a materialised mask alike, sessions 15 and 18).
        for (planes, seq_q, seq_kv) in [(4, 1, 1), (4, 2, 2), (2, 2, 2), (4, 1, 4)] {
            let tiles = kernels::FlashAttention::Tiles { planes, seq_q, seq_kv };
            assert!(kernels::set_flash_attention(tiles), "{tiles:?}");
            let tiling = format!(" at {planes},{seq_q},{seq_kv}");
            flash(1, 4, 4, 128, 128, 96, true, &tiling, None);
            flash(2, 2, 2, 64, 100, 64, false, &tiling, None);
            flash(1, 2, 2, 33, 33, 64, false, &tiling, None); // queries padded to a whole stage
            flash(1, 2, 2, 40, 112, 64, true, &tiling, None); // after 72 cached keys, padded
            // 16-dim heads (the tiny checkpoints' CLIP): the routine's outputs were wrong there
            // (session 22), so they must take Burn's attention.
            flash(3, 2, 2, 577, 577, 16, false, &tiling, None);
        }
        // Two matmuls around the one-pass softmax (`FlashAttention::Scores`): every case above in
        // one chunk, then in chunks of 16 and of 7 query rows (causal chunks see fewer keys than
        // the whole; the last chunk is partial). Burn's matmuls under host ordering, the vendor's
        // BLAS (cuBLAS on CUDA) under stream ordering.
        assert!(kernels::set_flash_attention(kernels::FlashAttention::Scores));
        let default_ordering = kernels::blas_ordering();
        for ordering in [kernels::BlasOrdering::Host, kernels::BlasOrdering::Stream, kernels::BlasOrdering::Queued] {
            kernels::set_blas_ordering(ordering);
            for (batch, heads, kv_heads, queries, keys, head_dim, causal) in flash_cases {
                flash(batch, heads, kv_heads, queries, keys, head_dim, causal, &format!(" as scores, {ordering:?} ordering"), None);
            }
            let row_bytes = |batch: usize, heads: usize, keys: usize| batch * heads * keys * dtype.size();
            for (rows, causal) in [(16, true), (7, true), (16, false)] {
                let chunk = format!(" as scores in chunks of {rows} rows, {ordering:?} ordering");
                flash(1, 4, 4, 70, 70, 96, causal, &chunk, Some(rows * row_bytes(1, 4, 70)));
                flash(2, 3, 3, 20, 50, 64, causal, &chunk, Some(rows * row_bytes(2, 3, 50)));
            }
        }
        kernels::set_blas_ordering(default_ordering);
        // This crate's flash kernel on tensor cores (`FlashAttention::Mma`: f16/bf16 where the
        // device has 16×16×16 tiles, `scores` elsewhere): every case above, then more query rows
        // than a cube's 64 over several 64-key steps (causal, the cubes stopping at different
        // steps), fewer queries than keys without a mask over a partial last step, CLIP's 577
        // tokens at the tiny checkpoints' 16-dim heads, and 80-dim heads (not a multiple of the
        // 32 lanes that share a row's output columns).
        let (mma_before, fragments_before) = (kernels::mma_attention_count(), kernels::mma_attention_fragment_count());
        let copies_before = kernels::mma_attention_copy_count();
        assert!(kernels::set_flash_attention(kernels::FlashAttention::Mma));
        let mma_cases = [(1, 2, 2, 200, 200, 96, true), (2, 4, 4, 77, 150, 64, false), (3, 2, 2, 577, 577, 16, false), (1, 3, 3, 90, 90, 80, true)];
        for (batch, heads, kv_heads, queries, keys, head_dim, causal) in flash_cases.into_iter().chain(mma_cases) {
            flash(batch, heads, kv_heads, queries, keys, head_dim, causal, " as mma", None);
        }
        // Again with the register-fragment kernel's keys and values prefetched into registers
        // the other way (`mma_attention_prefetch`; head dimensions 16 to 64 take it).
        let prefetch = kernels::kernel_on("mma_attention_prefetch");
        kernels::set_kernel_on("mma_attention_prefetch", !prefetch);
        for (batch, heads, kv_heads, queries, keys, head_dim, causal) in flash_cases.into_iter().chain(mma_cases) {
            flash(batch, heads, kv_heads, queries, keys, head_dim, causal, &format!(" as mma, prefetch {}", !prefetch), None);
        }
        kernels::set_kernel_on("mma_attention_prefetch", prefetch);
        // Again with its keys and values copied into a ring of two steps the other way
        // (`mma_attention_copies`: asynchronous copies where the device has them; the cases'
        // 64-key steps run in both slots and both phases of each slot's barrier).
        let copies = kernels::kernel_on("mma_attention_copies");
        kernels::set_kernel_on("mma_attention_copies", !copies);
        for (batch, heads, kv_heads, queries, keys, head_dim, causal) in flash_cases.into_iter().chain(mma_cases) {
            flash(batch, heads, kv_heads, queries, keys, head_dim, causal, &format!(" as mma, copies {}", !copies), None);
        }
        kernels::set_kernel_on("mma_attention_copies", copies);
        let copies_ran = kernels::mma_attention_copy_count() - copies_before;
        let mma_ran = kernels::mma_attention_count() - mma_before;
        let fragments_ran = kernels::mma_attention_fragment_count() - fragments_before;
        eprintln!("mma attention: {mma_ran} launches on this target, {fragments_ran} of them from register fragments, {copies_ran} with their keys and values copied");
        let cuda_half = matches!(dtype, DType::F16 | DType::BF16) && format!("{device:?}").contains("Cuda");
        if cuda_half && mma_ran == 0 {
            problems.push(format!("the tensor-core flash kernel never ran on CUDA in {dtype:?}: {:?}", kernels::flash_attention_refusals()));
        }
        // CUDA's tensor-core devices have the register products and `ldmatrix` of both dtypes.
        if cuda_half && kernels::kernel_on("mma_attention_fragments") && fragments_ran != mma_ran {
            problems.push(format!("{fragments_ran} of {mma_ran} tensor-core flash attentions kept their scores in register fragments on CUDA in {dtype:?}"));
        }
        // CUDA's tensor-core devices copy asynchronously; every case's heads load in whole
        // 16-byte vectors there, so the pass with the copies on copies.
        if cuda_half && kernels::kernel_on("mma_attention_fragments") && copies_ran == 0 {
            problems.push(format!("the flash kernel's asynchronous copies never ran on CUDA in {dtype:?}"));
        }
        eprintln!("flash tilings refused on this target (Burn's attention ran instead): {:?}", kernels::flash_attention_refusals());
        assert!(kernels::set_flash_attention(default_flash));
        assert!(!kernels::set_flash_attention(kernels::FlashAttention::Tiles { planes: 0, seq_q: 1, seq_kv: 1 }), "no planes");
        assert_eq!(kernels::flash_attention_choice(), default_flash, "an invalid choice changed nothing");
        assert_eq!(kernels::FlashAttention::parse("4, 1,2"), Some(kernels::FlashAttention::Tiles { planes: 4, seq_q: 1, seq_kv: 2 }));
        assert_eq!(kernels::FlashAttention::parse("unit"), Some(kernels::FlashAttention::Unit));
        assert_eq!(kernels::FlashAttention::parse("scores"), Some(kernels::FlashAttention::Scores));
        assert_eq!(kernels::FlashAttention::parse("mma"), Some(kernels::FlashAttention::Mma));
        assert_eq!(kernels::FlashAttention::Mma.resolve(), kernels::FlashAttention::Mma);
        assert_eq!(kernels::FlashAttention::parse("0"), Some(kernels::FlashAttention::Burn));
        assert_eq!(kernels::FlashAttention::parse("auto"), Some(kernels::FlashAttention::Auto));
        assert_eq!(kernels::FlashAttention::parse(""), Some(kernels::FlashAttention::Auto));
        assert_eq!(kernels::FlashAttention::Auto.resolve(), kernels::FlashAttention::Mma);
        assert_eq!(kernels::FlashAttention::Burn.resolve(), kernels::FlashAttention::Burn);
        assert_eq!(kernels::FlashAttention::parse("4,1"), None);

        // The rest unless `PHI3V_TEST_KERNEL_CHECKS=flash`.
        if !only_flash {
            // The softmax between the two matmuls alone: rows narrower and wider than a cube's 256
            // units and than a plane, CLIP's 577 keys, causal over as many keys as queries, after
            // cached keys, and over fewer keys than queries (the first rows see no key: zeros);
            // more rows than one launch dimension holds (65535) at a cube per row and at 8 rows per
            // cube (a plane per row, where the device's planes have one width: CUDA, not lavapipe);
            // rows of more keys than a plane takes (4096: a cube per row). The last number is the
            // columns: past the keys they are padding, as `scores` pads CLIP's 577 keys to 584
            // (written as 0, left out of the sums).
            let softmax_cases = [
                (2, 3, 9, 9, true, 9),
                (1, 2, 5, 1000, false, 1000),
                (1, 2, 40, 300, true, 300),
                (1, 4, 6, 577, false, 577),
                (1, 1, 12, 5, true, 5),
                (1, 1, 70000, 3, false, 3),
                (1, 1, 600_000, 2, false, 2),
                (1, 2, 3, 5000, true, 5000),
                (1, 1, 2, 4100, false, 4100),
                (2, 3, 9, 577, false, 584),
                (1, 2, 20, 37, true, 40),
                (1, 1, 30, 20, true, 24),
            ];
            for (batch, heads, queries, keys, causal, columns) in softmax_cases {
                let scores = tensor(input(vec![batch * heads * queries * columns], 64.0)).reshape([batch, heads, queries, columns]);
                let outputs = both(&|| kernels::attention_softmax_padded(scores.clone(), 0.125, causal, keys).reshape([1, batch * heads * queries, columns]));
                let how = if causal { "causal" } else { "full" };
                // Each probability is divided by a sum of `keys` terms (in f32 on every side; at 4100
                // and 5000 keys the CPU's own composed softmax is 3–5e-6 from its fused one).
                compare(format!("attention_softmax [{batch}, {heads}, {queries}, {keys} of {columns}] {how}"), Terms::Dtype(keys), outputs);
            }

            // The engine's rotary + paged-pool write: 7 tokens written at scattered rows of a 40-row
            // pool (96-dim heads, 4 query and 2 key/value heads); the queries and both pools (the
            // rows not written must stay as they were).
            {
                let (tokens, heads, kv_heads, hd, pool_rows) = (7, 4, 2, 96, 40);
                let width = (heads + 2 * kv_heads) * hd;
                let qkv = tensor(input(vec![tokens * width], 1.0)).reshape([1, tokens, width]);
                let cos = tensor(input(vec![tokens * hd], 1.0)).reshape([1, 1, tokens, hd]);
                let sin = tensor(input(vec![tokens * hd], 1.0)).reshape([1, 1, tokens, hd]);
                let k_pool = tensor(input(vec![pool_rows * kv_heads * hd], 1.0)).reshape([pool_rows, kv_heads, hd]);
                let v_pool = tensor(input(vec![pool_rows * kv_heads * hd], 1.0)).reshape([pool_rows, kv_heads, hd]);
                let slots = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![33i64, 2, 17, 39, 0, 21, 8], [tokens, 1]), device);
                for (i, what) in ["queries", "key pool", "value pool"].into_iter().enumerate() {
                    let outputs = both(&|| {
                        let (q, k, v) = kernels::rotary_write_paged(qkv.clone(), &cos, &sin, k_pool.clone(), v_pool.clone(), &slots, heads);
                        let out = [q, k, v].into_iter().nth(i).expect("three outputs");
                        let [a, b, c] = out.dims();
                        out.reshape([1, a * b, c])
                    });
                    compare(format!("rotary_write_paged {what} [{tokens} tokens, {heads}/{kv_heads} heads, {hd}] into {pool_rows} rows"), Terms::Dtype(2), outputs);
                }
            }

            // The skinny kernel's other shapes (`SkinnyTuning`: weight rows per cube, loads per lane
            // that set the planes, loads in flight), at 1 and 3 rows (planes split d_in, with a
            // remainder after the deep loads) and 10 (planes of their own columns).
            let default_tuning = kernels::skinny_tuning();
            for (columns, lane_vectors, depth) in [(2, 4, 1), (8, 4, 1), (4, 1, 2), (4, 16, 4), (8, 2, 4)] {
                let tuning = kernels::SkinnyTuning { columns, lane_vectors, depth };
                assert!(kernels::set_skinny_tuning(tuning), "{tuning:?}");
                for (rows, d_in, d_out) in [(1, 2000, 40), (3, 8192, 22), (10, 1000, 36)] {
                    let x = tensor(input(vec![rows * d_in], 1.0)).reshape([1, rows, d_in]);
                    let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                    let norm = tensor(input(vec![d_in], 1.0));
                    let residual = tensor(input(vec![rows * d_out], 1.0)).reshape([1, rows, d_out]);
                    let what = format!("[{rows}, {d_in}] · [{d_in}, {d_out}] at {tuning:?}");
                    let outputs = both(&|| kernels::norm_linear_silu_mul(x.clone(), &norm, 1e-5, &weight));
                    compare(format!("norm_linear_silu_mul {what}"), Terms::Dtype(d_in), outputs);
                    let outputs = both(&|| kernels::linear_add(x.clone(), &weight, residual.clone()));
                    compare(format!("linear_add {what}"), Terms::Dtype(d_in), outputs);
                }
            }
            assert!(kernels::set_skinny_tuning(default_tuning));
            assert!(!kernels::set_skinny_tuning(kernels::SkinnyTuning { columns: 3, lane_vectors: 4, depth: 1 }), "odd columns");
            assert!(!kernels::set_skinny_tuning(kernels::SkinnyTuning { columns: 4, lane_vectors: 4, depth: 3 }), "depth 3");
            assert_eq!(kernels::skinny_tuning(), default_tuning, "an invalid tuning changed nothing");
            assert_eq!(kernels::SkinnyTuning::parse("8, 2,4"), Some(kernels::SkinnyTuning { columns: 8, lane_vectors: 2, depth: 4 }));
            assert_eq!(kernels::SkinnyTuning::parse("4,4"), None);

            // cubek-matmul's tensor-core routines at tilings of this crate's choosing (the weight as
            // the model holds it: transposed), against Burn's matmul: k not a multiple of a stage's,
            // m and n not multiples of a cube's block. Where a routine refuses (no tensor cores, as
            // on lavapipe), Burn's matmul runs and the refusal is printed.
            // The unit routines (register tiles) run on every CubeCL device, lavapipe included. Their
            // register tile's k (8) and n (one 16-byte vector of the dtype: 4 in f32, 8 in f16/bf16)
            // are multiples of the vector widths the devices load: CUDA refused k = 4 in bf16
            // (session 20) and n = 4 (session 21); lavapipe's f32 outputs at n = 8 were garbage in
            // the debug test build (session 21; right in a release `bench matmul`).
            let unit_tiling = format!("simple_unit:2,2,2:16,16:4,{},8", 16 / dtype.size());
            let tilings = ["double:2,2,2:2,2", "specialized_tma:2,4,2:2,1", "simple-mma:1,2,2:2,2", "ordered:2,4,2:2,1", "specialized:4,4,2:2,2", &unit_tiling, "double_unit:2,2,2:16,16"];
            for tiling in tilings {
                let tiling = kernels::MatmulTiling::parse(tiling).expect("a valid tiling");
                for (rows, d_in, d_out) in [(130, 200, 72), (64, 512, 96), (300, 96, 160)] {
                    let x = tensor(input(vec![rows * d_in], 1.0)).reshape([rows, d_in]);
                    let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                    let tiled = || kernels::tiled_matmul(x.clone(), weight.clone(), tiling).reshape([1, rows, d_out]);
                    let outputs = (tiled(), tiled(), x.clone().matmul(weight.clone()).reshape([1, rows, d_out]));
                    compare(format!("tiled_matmul [{rows}, {d_in}] · [{d_in}, {d_out}] at {tiling}"), Terms::Dtype(d_in), outputs);
                }
            }
            let refused = kernels::matmul_tiling_refusals();
            eprintln!("matmul tilings refused on this target (Burn's matmul ran instead): {refused:?}");
            if refused.iter().any(|r| r.contains("_unit:")) {
                problems.push(format!("a unit routine was refused: {refused:?}"));
            }
            // `linear` under a process-wide tiling per row class (PHI3V_MATMUL for 128 rows and more,
            // PHI3V_MATMUL_FEW between the skinny kernel's rows and 128): the tiled matmul, then the
            // bias (CLIP's projections have one), from 3-d inputs.
            for (class, batch, seq) in [(kernels::MatmulRows::Many, 2, 65), (kernels::MatmulRows::Few, 64, 1), (kernels::MatmulRows::Few, 1, 17)] {
                let tiling = kernels::MatmulTiling::parse("double:2,2,2:2,2").expect("a valid tiling");
                assert_eq!(kernels::MatmulRows::of(batch * seq), Some(class));
                let (d_in, d_out) = (96, 80);
                let x = tensor(input(vec![batch * seq * d_in], 1.0)).reshape([batch, seq, d_in]);
                let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                let bias = tensor(input(vec![d_out], 1.0));
                let previous = kernels::matmul_tiling(class);
                let linear = |tiling| {
                    assert!(kernels::set_matmul_tiling(class, tiling));
                    kernels::linear(x.clone(), &weight, Some(&bias))
                };
                let outputs = (linear(Some(tiling)), linear(Some(tiling)), linear(None));
                assert!(kernels::set_matmul_tiling(class, previous));
                compare(format!("linear [{batch}, {seq}, {d_in}] → {d_out} with bias at {tiling} ({class:?} rows)"), Terms::Dtype(d_in), outputs);
            }

            // A static decode batch of 10 rows with the skinny kernel's rows lowered to 3
            // (`PHI3V_SKINNY_MAX_ROWS`): its products join the few-rows class and run at its tiling,
            // the decoder's fused projections composed around them (norm, product, SiLU·mul or
            // residual add), against the same steps composed from Burn's ops. A unit tiling (runs
            // on every CubeCL device) and a tensor-core one (Burn's matmul where refused).
            let (default_max, default_few) = (kernels::skinny_max_rows(), kernels::matmul_tiling(kernels::MatmulRows::Few));
            assert!(!kernels::set_skinny_max_rows(kernels::SKINNY_ROWS + 1), "above the kernel's rows");
            assert_eq!(kernels::skinny_max_rows(), default_max, "an invalid setting changed nothing");
            for tiling in [unit_tiling.as_str(), "double:2,2,2:2,2"] {
                let tiling = kernels::MatmulTiling::parse(tiling).expect("a valid tiling");
                let (rows, d_in, d_out) = (10, 96, 80);
                let x = tensor(input(vec![rows * d_in], 1.0)).reshape([rows, 1, d_in]);
                let weight = tensor(input(vec![d_out * d_in], 0.05)).reshape([d_out, d_in]).transpose();
                let norm = tensor(input(vec![d_in], 1.0));
                let residual = tensor(input(vec![rows * d_out], 1.0)).reshape([rows, 1, d_out]);
                let steps = || {
                    let flat = |t: Tensor<B, 3>| t.reshape([1, rows, d_out]);
                    let silu = kernels::norm_linear_silu_mul(x.clone(), &norm, 1e-5, &weight).reshape([1, rows, d_out / 2]);
                    Tensor::cat(vec![flat(kernels::norm_linear(x.clone(), &norm, 1e-5, &weight)), flat(kernels::linear_add(x.clone(), &weight, residual.clone())), silu], 2)
                };
                assert!(kernels::set_skinny_max_rows(3) && kernels::set_matmul_tiling(kernels::MatmulRows::Few, Some(tiling)));
                assert_eq!(kernels::MatmulRows::of(rows), Some(kernels::MatmulRows::Few));
                let refusals = kernels::matmul_tiling_refusal_count();
                set_kernel_policy(KernelPolicy::Forced);
                let (tiled, tiled_again) = (steps(), steps());
                set_kernel_policy(KernelPolicy::Off);
                let composed = steps();
                set_kernel_policy(policy);
                assert!(kernels::set_skinny_max_rows(default_max) && kernels::set_matmul_tiling(kernels::MatmulRows::Few, default_few));
                if tiling.routine.unit() && kernels::matmul_tiling_refusal_count() != refusals {
                    problems.push(format!("{tiling} refused: {:?}", kernels::matmul_tiling_refusals()));
                }
                compare(format!("10-row decode projections (norm_linear, linear_add, norm_linear_silu_mul) with skinny rows ≤ 3 at {tiling}"), Terms::Dtype(d_in), (tiled, tiled_again, composed));
            }

            // The vendor's BLAS (cuBLAS on CUDA; the other backends have none and take Burn's
            // matmul): products of many rows through `kernels::linear`, with the weight as the
            // model holds it (the checkpoint's `[d_out, d_in]` rows, transposed), row-major, and with
            // a bias; 577 rows of CLIP's width.
            for (rows, d_in, d_out) in [(130, 200, 72), (300, 96, 160), (577, 1024, 256)] {
                let x = tensor(input(vec![rows * d_in], 1.0)).reshape([1, rows, d_in]);
                let checkpoint = tensor(input(vec![d_out * d_in], 1.0)).reshape([d_out, d_in]);
                let row_major = tensor(input(vec![d_in * d_out], 1.0)).reshape([d_in, d_out]);
                let bias = tensor(input(vec![d_out], 1.0));
                for (layout, weight, bias) in [("transposed", checkpoint.transpose(), None), ("row-major", row_major, Some(&bias))] {
                    // Under both orderings (`Stream`: on CubeCL's own stream, no host sync), with a
                    // kernel writing the input just before and one reading the output just after, so
                    // that a product not ordered with them reads or leaves stale values.
                    for ordering in [kernels::BlasOrdering::Host, kernels::BlasOrdering::Stream, kernels::BlasOrdering::Queued] {
                        kernels::set_blas_ordering(ordering);
                        let outputs = both(&|| kernels::linear(x.clone() * 0.5, &weight, bias) + 1.0);
                        compare(format!("blas_matmul [{rows}, {d_in}] · [{d_in}, {d_out}] {layout}, {ordering:?} ordering"), Terms::Dtype(d_in), outputs);
                        // The residual (and the bias) in the product's epilogue (cuBLASLt on CUDA),
                        // the residual written just before, the output read just after.
                        let residual = tensor(input(vec![rows * d_out], 1.0)).reshape([1, rows, d_out]);
                        let outputs = both(&|| kernels::linear_residual(x.clone(), &weight, bias, residual.clone() * 0.5) + 1.0);
                        compare(format!("linear_residual [{rows}, {d_in}] · [{d_in}, {d_out}] {layout}, {ordering:?} ordering"), Terms::Dtype(d_in), outputs);
                    }
                }
            }
            kernels::set_blas_ordering(default_ordering);
        }

        // Inputs must be random, never constant: a kernel reading the wrong element of a constant
        // tensor would pass.
        let x = tensor(input(vec![64], 1.0));
        let values: Vec<f32> = x.into_data().convert::<f32>().into_vec().unwrap();
        assert!(values.iter().any(|v| (v - values[0]).abs() > 1e-3), "inputs are not random");
        checks
    }
}

impl DeviceFn for KernelJob {
    /// The checks' outputs and the problems that are not a comparison ([`KernelJob::outputs`]).
    type Output = (Vec<Outputs>, Vec<String>);
    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> Self::Output {
        let (products, on_stream, queued) = (kernels::blas_matmul_count(), kernels::blas_matmul_stream_count(), kernels::blas_matmul_queued_count());
        let (epilogues, queued_epilogues) = (kernels::blas_epilogue_count(), kernels::blas_epilogue_queued_count());
        let mut problems = Vec::new();
        let outputs = self.outputs::<B>(device, dtype, &mut problems);
        let on_stream = kernels::blas_matmul_stream_count() - on_stream;
        let queued = kernels::blas_matmul_queued_count() - queued;
        eprintln!("{} blas_matmul: {} products ({on_stream} on CubeCL's stream, {queued} of them queued), refusals {:?}", info.spec, kernels::blas_matmul_count() - products, kernels::blas_matmul_refusals());
        // Where the backend has a vendor BLAS (cuBLAS on CUDA), the checks above ran through it,
        // and under `BlasOrdering::Stream` on CubeCL's stream (the workspace patches cubecl-cuda
        // so that its resources name their stream).
        // `scores` chunks stay under wgpu's binding limit (128 MiB by default) on every backend
        // but CUDA, which takes larger ones (`Kernels::scores_chunk_bytes`).
        let chunk = B::scores_chunk_bytes(device);
        let expected = if info.backend == "cuda" { kernels::SCORES_CHUNK_BYTES_CUDA } else { kernels::SCORES_CHUNK_BYTES };
        if chunk != expected {
            problems.push(format!("scores chunks of {chunk} bytes on {}, expected {expected}", info.backend));
        }
        if cfg!(feature = "cuda") && info.backend == "cuda" && !only_flash() {
            if kernels::blas_matmul_count() == products {
                problems.push(format!("cuBLAS never ran: {:?}", kernels::blas_matmul_refusals()));
            }
            if on_stream == 0 {
                problems.push("no cuBLAS product ran on CubeCL's stream".into());
            }
            if kernels::blas_epilogue_count() == epilogues {
                problems.push(format!("no product added its bias or residual in cuBLASLt's epilogue: {:?}", kernels::blas_matmul_refusals()));
            }
            // Each check runs twice: the second run of a product queues it
            // (`BlasOrdering::Queued`, the workspace's cubecl-runtime patch).
            if queued == 0 {
                problems.push("no cuBLAS product was queued for CubeCL's device thread".into());
            }
            // The same for the products with a bias or residual in cuBLASLt's epilogue.
            if kernels::blas_epilogue_queued_count() == queued_epilogues {
                problems.push("no cuBLASLt product (bias, residual) was queued for CubeCL's device thread".into());
            }
        }
        (outputs, problems)
    }
}

/// Whether `PHI3V_TEST_KERNEL_CHECKS=flash` limits [`KernelJob`] to its flash attention
/// checks (a device call that checks a change to the flash kernels in a minute or two, where the
/// whole list takes about ten on CUDA).
fn only_flash() -> bool {
    std::env::var("PHI3V_TEST_KERNEL_CHECKS").is_ok_and(|v| v.trim() == "flash")
}

/// Each kernel must equal its composed fallback on the same device and the CPU's f32 result
/// (the witness: the same seed gives the CPU the same inputs), within the dtype's
/// `OpTolerance`, and give the same values when run twice. The composed fallback's own error
/// against the witness is printed: when the two disagree, it names the side that is wrong.
#[test]
fn kernels_equal_their_composed_fallbacks_on_every_target() {
    let _settings = PROCESS_SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    let seed = clock_seed();
    let mut failed = Vec::new();
    for (spec, dtype) in test_targets() {
        let (witness, witness_problems) = burn_phi3v::device::with_device_dtype("cpu", Some(DType::F32), KernelJob { seed, inputs: dtype, witness: None }).unwrap();
        let witness = std::sync::Arc::new(witness);
        let job = KernelJob { seed, inputs: dtype, witness: Some(witness.clone()) };
        let (outputs, problems) = burn_phi3v::device::with_device_dtype(&spec, Some(dtype), job).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!((only_flash() || outputs.len() >= 30) && outputs.len() == witness.len(), "{spec}: the kernel list ran short");
        let tolerance = OpTolerance::for_dtype(dtype);
        for (o, w) in outputs.iter().zip(witness.iter()) {
            let (pass, line) = verdict(o, w, &tolerance);
            eprintln!("{spec} {} {line}", dtype_name(dtype));
            if !pass {
                failed.push(format!("{spec} {}: {line}", dtype_name(dtype)));
            }
        }
        failed.extend(witness_problems.iter().map(|p| format!("cpu (witness) f32: {p}")));
        failed.extend(problems.iter().map(|p| format!("{spec} {}: {p}", dtype_name(dtype))));
    }
    assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n"));
}

/// A decode attention check: one query row per sequence over its keys.
#[derive(Clone, Copy)]
enum DecodeCase {
    /// `(batch, heads, kv_heads, keys, capacity, head_dim)`: a cache of `capacity` keys per
    /// sequence, its first `keys` read (a strided narrow).
    Cache(usize, usize, usize, usize, usize, usize),
    /// `(heads, kv_heads, head_dim, block_size, lengths)`: the engine's paged pool, each
    /// sequence's blocks a scattered permutation of it.
    Paged(usize, usize, usize, usize, &'static [usize]),
}

impl DecodeCase {
    fn head_dim(self) -> usize {
        match self {
            DecodeCase::Cache(.., head_dim) | DecodeCase::Paged(_, _, head_dim, ..) => head_dim,
        }
    }
}

/// Decode attention: Phi-3's 32 heads of 96 over 1024 keys; grouped-query heads (4 over 2)
/// reading a cache view with spare capacity; one key; head_dim 128; 67200 (batch, head) cubes
/// (two launch dimensions); through block tables, Phi-3's heads over sequences of different
/// lengths (the longest split over cubes on a GPU) and grouped-query heads with a one-key
/// sequence.
const DECODE_CASES: [DecodeCase; 7] = [
    DecodeCase::Cache(1, 32, 32, 1024, 1024, 96),
    DecodeCase::Cache(3, 4, 2, 37, 50, 64),
    DecodeCase::Cache(2, 2, 2, 1, 1, 96),
    DecodeCase::Cache(1, 2, 1, 300, 301, 128),
    DecodeCase::Cache(2100, 32, 32, 2, 2, 8),
    DecodeCase::Paged(32, 32, 96, 16, &[1024, 700, 33]),
    DecodeCase::Paged(4, 2, 64, 4, &[9, 1]),
];

/// The decode attention's switches [`DecodeJob`] checks both ways.
const DECODE_SWITCHES: [&str; 1] = ["decode_attention_early_values"];

/// A [`DecodeCase`]'s name and the call that computes it (`[sequences, heads, head_dim]`), its
/// inputs drawn from `values` (`n` random values).
#[allow(clippy::type_complexity)]
fn decode_check<B: Kernels>(case: DecodeCase, device: &B::Device, values: &mut dyn FnMut(usize) -> Tensor<B, 1>) -> (String, Box<dyn Fn() -> Tensor<B, 3>>) {
    match case {
        DecodeCase::Cache(batch, heads, kv_heads, keys, capacity, head_dim) => {
            let q = values(batch * heads * head_dim).reshape([batch, heads, 1, head_dim]);
            let mut cache = || values(batch * kv_heads * capacity * head_dim).reshape([batch, kv_heads, capacity, head_dim]).narrow(2, 0, keys);
            let (k, v) = (cache(), cache());
            let what = format!("decode_attention [{batch}, {heads}/{kv_heads} heads, {keys} keys, {head_dim}]");
            (what, Box::new(move || kernels::decode_attention(q.clone(), k.clone(), v.clone()).reshape([batch, heads, head_dim])))
        }
        DecodeCase::Paged(heads, kv_heads, head_dim, block_size, lengths) => {
            let rows = lengths.len();
            let keys: usize = *lengths.iter().max().unwrap();
            let blocks = keys.div_ceil(block_size);
            let pool_blocks = (rows * blocks + 1..).find(|n| (2..*n).all(|d| n % d != 0)).unwrap(); // a prime
            let tables: Vec<i64> = (0..rows * blocks).map(|i| ((i * 7 + 1) % pool_blocks) as i64).collect();
            let block_tables = Tensor::<B, 2, Int>::from_data(TensorData::new(tables, [rows, blocks]), device);
            let row_lengths = Tensor::<B, 1, Int>::from_data(TensorData::new(lengths.iter().map(|&n| n as i64).collect::<Vec<_>>(), [rows]), device);
            let q = values(rows * heads * head_dim).reshape([rows, heads, head_dim]);
            let mut pool = || values(pool_blocks * block_size * kv_heads * head_dim).reshape([pool_blocks * block_size, kv_heads, head_dim]);
            let (k, v) = (pool(), pool());
            let what = format!("paged_decode_attention [{heads}/{kv_heads} heads of {head_dim}, blocks of {block_size}, lengths {lengths:?}]");
            (what, Box::new(move || kernels::paged_decode_attention(q.clone(), &k, &v, &block_tables, &row_lengths, block_size, keys)))
        }
    }
}

/// Decode attention's kernels on [`DECODE_CASES`] (whichever variant the device runs: the
/// planes kernel on CUDA, one unit per query row where the planes have no single width),
/// against the composed fallback on the same device and the CPU's f32 result of the same
/// inputs, and equal when run twice, with and without each switch of [`DECODE_SWITCHES`].
/// (The main kernels test holds the kernels to the composed result only.)
struct DecodeJob {
    seed: u64,
    inputs: DType,
}

impl DeviceFn for DecodeJob {
    /// Per case: its name, head size and outputs (the kernel's twice, the composed one).
    type Output = Vec<(String, usize, [Vec<f32>; 3])>;
    fn run<B: Kernels>(self, device: &B::Device, _info: &DeviceInfo, dtype: DType) -> Self::Output {
        let mut rng = Rng(self.seed | 1);
        let inputs = self.inputs;
        let mut values = |n: usize| -> Tensor<B, 1> {
            let v: Vec<f32> = (0..n).map(|_| round_to(inputs, rng.unit() * 2.0 - 1.0)).collect();
            Tensor::from_data(TensorData::new(v, [n]), (device, dtype))
        };
        let host = |t: Tensor<B, 3>| -> Vec<f32> { t.into_data().convert::<f32>().into_vec().unwrap() };
        let policy = kernel_policy();
        let mut results = Vec::new();
        for switch in DECODE_SWITCHES {
            let was_on = kernels::kernel_on(switch);
            for on in [false, true] {
                kernels::set_kernel_on(switch, on);
                for case in DECODE_CASES {
                    let (what, run) = decode_check::<B>(case, device, &mut values);
                    set_kernel_policy(KernelPolicy::Off);
                    let composed = host(run());
                    set_kernel_policy(KernelPolicy::Forced);
                    let (fused, fused_again) = (host(run()), host(run()));
                    set_kernel_policy(policy);
                    results.push((format!("{what}, {switch} {}", if on { "on" } else { "off" }), case.head_dim(), [fused, fused_again, composed]));
                }
            }
            kernels::set_kernel_on(switch, was_on);
        }
        results
    }
}

#[test]
fn decode_attention_equals_the_composed_and_cpu_results() {
    let _settings = PROCESS_SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    let seed = clock_seed();
    let mut failed = Vec::new();
    for (spec, dtype) in test_targets() {
        let witness = burn_phi3v::device::with_device_dtype("cpu", Some(DType::F32), DecodeJob { seed, inputs: dtype }).unwrap();
        let results = burn_phi3v::device::with_device_dtype(&spec, Some(dtype), DecodeJob { seed, inputs: dtype }).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(results.len(), 2 * DECODE_SWITCHES.len() * DECODE_CASES.len(), "{spec}: the case list ran short");
        let tolerance = OpTolerance::for_dtype(dtype);
        for ((what, head_dim, [fused, fused_again, composed]), (_, _, [_, _, cpu])) in results.iter().zip(witness.iter()) {
            // Against the composed steps (which may round the scores and probabilities to the
            // dtype): the dtype's bound over the head's terms. Against the CPU: the kernels keep
            // scores, softmax and sums in f32 and round the output once.
            let (bound, bound_cpu) = (Terms::Dtype(*head_dim).bound(&tolerance), Terms::F32Statistics(*head_dim).bound(&tolerance));
            let (vs_composed, vs_cpu) = (rel_err(composed, fused), rel_err(cpu, fused));
            let pass = vs_composed <= bound && vs_cpu <= bound_cpu && fused == fused_again;
            let line = format!("{what}: {vs_composed:.2e} vs composed (bound {bound:.2e}), {vs_cpu:.2e} vs cpu (bound {bound_cpu:.2e}), repeat {}", if fused == fused_again { "equal" } else { "DIFFERS" });
            eprintln!("{spec} {} {line}{}", dtype_name(dtype), if pass { "" } else { "  FAIL" });
            if !pass {
                failed.push(format!("{spec} {}: {line}", dtype_name(dtype)));
            }
        }
    }
    assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n"));
}

/// The few-row products on tensor cores (`kernels::MmaLinearTuning`, f16 and bf16 where the
/// device has them; elsewhere these are the CUDA-core skinny kernel's cases again): the decode
/// projections at 4 to 16 rows with each epilogue, against the CPU's f32 product of the same
/// inputs (rounded to the target's dtype on the host) and the composed fallback on the same
/// device. Weights whose `d_in` or output columns are not multiples of the 16-wide tile take the
/// skinny kernel.
struct MmaLinearJob {
    seed: u64,
    /// The dtype the inputs are rounded to on the host (the target's, also for the CPU witness).
    inputs: DType,
}

/// `(rows, d_in, d_out, epilogue)`: 0 none (`linear`), 1 the norm before (`norm_linear`), 2
/// the norm before and `up · SiLU(gate)` after (`d_out` weight rows, `d_out / 2` outputs), 3
/// the residual add after (`linear_add`).
/// `d_in` 48 takes chunks of 16 values (and, being no multiple of 32, not the register
/// fragments). Those of 17408 and 16896 columns have enough for the register fragments' cubes
/// to stay 64 and 32 columns wide on a GPU of up to 136 multiprocessors (the H100's and H200's 132:
/// fewer than 2 cubes per multiprocessor halve them, and the smaller cases take 16), and
/// `d_in` 96 leaves blocks for the fragments' loop after its depth-wide steps. Fitted to whole
/// waves (`mma_fragments_waves`) on 132 multiprocessors, 9216 columns take cubes of 5 tiles
/// (`qkv_proj`'s shape), 17408 of 3, and 48 columns of `d_in` 3072 cubes of 32 planes.
const MMA_LINEAR_CASES: [(usize, usize, usize, u8); 12] = [
    (4, 256, 64, 3),
    (10, 3072, 1024, 2),
    (16, 8192, 128, 1),
    (10, 3072, 48, 0),
    (10, 64, 16, 3),
    (13, 512, 96, 2),
    (5, 48, 32, 0),
    (10, 1000, 64, 0),
    (7, 96, 40, 3),
    (10, 96, 17408, 3),
    (6, 128, 16896, 2),
    (10, 64, 9216, 0),
];

/// The ways of reading the inputs the tensor-core product is checked in: `(reads, depth,
/// chunk, planes, switches on)`, through registers with 1 to 4 chunks held ahead, weights
/// straight from global memory, asynchronous copies into rings of 2 and 4 chunks, and register
/// fragments with 1 to 4 blocks in flight, cubes of up to 64 or 32 columns, 8 or 16 planes, each
/// plane's blocks in runs of `depth` adjacent ones (the switch `mma_linear_runs`) or strided
/// by the planes, and cubes fitted to whole waves (`mma_fragments_waves`: also 32 planes, and
/// tile counts that are not powers of two) or not. The switches of [`MMA_LINEAR_SWITCHES`] not
/// named are off.
const MMA_LINEAR_READINGS: [(MmaLinearReads, usize, usize, usize, &[&str]); 13] = [
    (MmaLinearReads::Registers, 1, 64, 8, &[]),
    (MmaLinearReads::Registers, 2, 64, 8, &[]),
    (MmaLinearReads::Registers, 4, 64, 8, &[]),
    (MmaLinearReads::Global, 2, 64, 8, &[]),
    (MmaLinearReads::CopyAsync, 1, 64, 8, &[]),
    (MmaLinearReads::CopyAsync, 3, 64, 8, &[]),
    (MmaLinearReads::Fragments, 1, 64, 8, &["mma_linear_runs"]),
    (MmaLinearReads::Fragments, 2, 64, 8, &["mma_linear_runs"]),
    (MmaLinearReads::Fragments, 4, 32, 8, &["mma_linear_runs"]),
    (MmaLinearReads::Fragments, 2, 64, 8, &[]),
    (MmaLinearReads::Fragments, 2, 32, 16, &[]),
    (MmaLinearReads::Fragments, 2, 64, 16, &["mma_fragments_waves"]),
    (MmaLinearReads::Fragments, 4, 64, 8, &["mma_linear_runs", "mma_fragments_waves"]),
];

/// The tensor-core product's switches a reading of [`MMA_LINEAR_READINGS`] may turn on.
const MMA_LINEAR_SWITCHES: [&str; 2] = ["mma_linear_runs", "mma_fragments_waves"];

/// [`MMA_LINEAR_READINGS`], or those whose way of reading is numbered in
/// `PHI3V_TEST_MMA_READS` (comma-separated [`MmaLinearReads::index`]es: a device call checking
/// one new way spends no time on the others).
fn mma_linear_readings() -> Vec<(MmaLinearReads, usize, usize, usize, &'static [&'static str])> {
    let only: Option<Vec<usize>> = std::env::var("PHI3V_TEST_MMA_READS").ok().map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    MMA_LINEAR_READINGS.iter().copied().filter(|r| only.as_ref().is_none_or(|o| o.contains(&r.0.index()))).collect()
}

/// Whether [`MMA_LINEAR_CASES`]' case fits the tensor-core tile.
fn mma_linear_fits(d_in: usize, d_out: usize, epilogue: u8) -> bool {
    let outputs = if epilogue == 2 { d_out / 2 } else { d_out };
    d_in.is_multiple_of(16) && outputs.is_multiple_of(16)
}

/// Whether a case that fits the tensor-core tile also takes the register fragments: `d_in` in
/// whole blocks of 32 (the test's buffers take 16-byte loads).
fn mma_fragments_fit(d_in: usize) -> bool {
    d_in.is_multiple_of(32)
}

/// One case's outputs on the host: the kernels' (twice) and the composed fallback's.
struct ProductOutputs {
    what: String,
    d_in: usize,
    fused: Vec<f32>,
    fused_again: Vec<f32>,
    composed: Vec<f32>,
}

impl DeviceFn for MmaLinearJob {
    /// Every case's outputs (each way of reading the inputs), how many tensor-core products
    /// ran, how many of them copied their chunks asynchronously, and how many loaded register
    /// fragments.
    type Output = (Vec<ProductOutputs>, usize, usize, usize);
    fn run<B: Kernels>(self, device: &B::Device, _info: &DeviceInfo, dtype: DType) -> Self::Output {
        let mut rng = Rng(self.seed | 1);
        let mut input = |n: usize, scale: f32| -> Tensor<B, 1> {
            let v: Vec<f32> = (0..n).map(|_| round_to(self.inputs, (rng.unit() * 2.0 - 1.0) * scale)).collect();
            Tensor::from_data(TensorData::new(v, [n]), (device, dtype))
        };
        let host = |t: Tensor<B, 3>| -> Vec<f32> { t.into_data().convert::<f32>().into_vec().unwrap() };
        let policy = kernel_policy();
        let (before, copies_before, fragments_before) = (kernels::mma_linear_count(), kernels::mma_linear_copy_count(), kernels::mma_linear_fragment_count());
        let mut results = Vec::new();
        let tuning = kernels::mma_linear_tuning();
        let switches_were_on = MMA_LINEAR_SWITCHES.map(kernels::kernel_on);
        for (reads, depth, chunk, planes, on) in mma_linear_readings() {
            assert!(kernels::set_mma_linear_tuning(kernels::MmaLinearTuning { reads, depth, chunk, planes, ..tuning }));
            for switch in MMA_LINEAR_SWITCHES {
                assert!(kernels::set_kernel_on(switch, on.contains(&switch)));
            }
            for &(rows, d_in, d_out, epilogue) in &MMA_LINEAR_CASES {
                let x = input(rows * d_in, 1.0).reshape([1, rows, d_in]);
                let weight = input(d_out * d_in, 0.05).reshape([d_out, d_in]).transpose();
                let norm = input(d_in, 1.0);
                let residual = input(rows * d_out, 1.0).reshape([1, rows, d_out]);
                let run = || match epilogue {
                    0 => kernels::linear(x.clone(), &weight, None),
                    1 => kernels::norm_linear(x.clone(), &norm, 1e-5, &weight),
                    2 => kernels::norm_linear_silu_mul(x.clone(), &norm, 1e-5, &weight),
                    _ => kernels::linear_add(x.clone(), &weight, residual.clone()),
                };
                set_kernel_policy(KernelPolicy::Forced);
                let (fused, fused_again) = (host(run()), host(run()));
                set_kernel_policy(KernelPolicy::Off);
                let composed = host(run());
                set_kernel_policy(policy);
                let what = format!("[{rows}, {d_in}] · [{d_in}, {d_out}], epilogue {epilogue}, {reads:?} reads, depth {depth}, chunk {chunk}, {planes} planes, on {on:?}");
                results.push(ProductOutputs { what, d_in, fused, fused_again, composed });
            }
        }
        assert!(kernels::set_mma_linear_tuning(tuning));
        for (switch, was_on) in MMA_LINEAR_SWITCHES.into_iter().zip(switches_were_on) {
            kernels::set_kernel_on(switch, was_on);
        }
        let fragments = kernels::mma_linear_fragment_count() - fragments_before;
        (results, kernels::mma_linear_count() - before, kernels::mma_linear_copy_count() - copies_before, fragments)
    }
}

/// Each case equal when run twice, within the dtype's bound of the composed product on the
/// same device (`Terms::Dtype`: that side may sum in the dtype), and within one output rounding
/// of the CPU's f32 product (`Terms::F32Statistics`: the kernels sum in f32 and round the
/// product, the normed input and the epilogue's steps to the dtype, as the composed steps do;
/// 16 ulps of the dtype cover those few roundings). On CUDA in f16 and bf16 (tensor cores),
/// every case that fits the tile ran on them, twice each way of reading the inputs
/// ([`MMA_LINEAR_READINGS`]), the asynchronous copies and the register fragments where asked
/// for and the case takes them.
#[test]
fn tensor_core_products_equal_the_composed_ones() {
    let _settings = PROCESS_SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    let seed = clock_seed();
    let mut failed = Vec::new();
    for (spec, dtype) in test_targets() {
        let (witness, _, _, _) = burn_phi3v::device::with_device_dtype("cpu", Some(DType::F32), MmaLinearJob { seed, inputs: dtype }).unwrap();
        let job = MmaLinearJob { seed, inputs: dtype };
        let (results, products, copies, fragments) = burn_phi3v::device::with_device_dtype(&spec, Some(dtype), job).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let tolerance = OpTolerance::for_dtype(dtype);
        for (o, w) in results.iter().zip(witness.iter()) {
            let (vs_composed, vs_cpu) = (rel_err(&o.composed, &o.fused), rel_err(&w.composed, &o.fused));
            let (bound, bound_cpu) = (Terms::Dtype(o.d_in).bound(&tolerance), Terms::F32Statistics(o.d_in).bound(&tolerance));
            let repeat = o.fused == o.fused_again;
            let pass = vs_composed <= bound && vs_cpu <= bound_cpu && repeat;
            let line = format!(
                "{}: {vs_composed:.2e} vs composed (bound {bound:.2e}), {vs_cpu:.2e} vs cpu (bound {bound_cpu:.2e}), repeat {}",
                o.what,
                if repeat { "equal" } else { "DIFFERS" }
            );
            eprintln!("{spec} {} mma_linear {line}{}", dtype_name(dtype), if pass { "" } else { "  FAIL" });
            if !pass {
                failed.push(format!("{spec} {}: {line}", dtype_name(dtype)));
            }
        }
        let tensor_cores = spec.starts_with("cuda") && matches!(dtype, DType::F16 | DType::BF16) && kernels::kernel_on("mma_linear");
        let fits = |&&(rows, d_in, d_out, e): &&(usize, usize, usize, u8)| rows >= kernels::mma_linear_tuning().min_rows && mma_linear_fits(d_in, d_out, e);
        let fitting = MMA_LINEAR_CASES.iter().filter(fits).count();
        let fitting_fragments = MMA_LINEAR_CASES.iter().filter(fits).filter(|c| mma_fragments_fit(c.1)).count();
        // Each case twice per way of reading the inputs.
        let readings = mma_linear_readings();
        let expected = if tensor_cores { 2 * readings.len() * fitting } else { 0 };
        // CUDA's tensor-core devices (compute capability 8.0 and later) have the asynchronous copies.
        let copy_readings = readings.iter().filter(|r| r.0 == MmaLinearReads::CopyAsync).count();
        let expected_copies = if tensor_cores { 2 * copy_readings * fitting } else { 0 };
        // And the register fragments (`mma.m16n8k16`, compute capability 8.0 and later).
        let fragment_readings = readings.iter().filter(|r| r.0 == MmaLinearReads::Fragments).count();
        let expected_fragments = if tensor_cores { 2 * fragment_readings * fitting_fragments } else { 0 };
        eprintln!(
            "{spec} {}: {products} tensor-core products (expected {expected}), {copies} of them copied (expected {expected_copies}), {fragments} from register fragments (expected {expected_fragments})",
            dtype_name(dtype)
        );
        if products != expected || copies != expected_copies || fragments != expected_fragments {
            failed.push(format!(
                "{spec} {}: {products} tensor-core products, expected {expected}; {copies} copied, expected {expected_copies}; {fragments} from fragments, expected {expected_fragments}",
                dtype_name(dtype)
            ));
        }
    }
    assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n"));
}
