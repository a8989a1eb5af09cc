//! Per-op conformance of a device against the CPU: what a vendor runs first on a new device
//! (`phi3v-plugin-conformance`), before the model's fixture parity suite.
//!
//! Every op runs on the device in each dtype asked for, and on the CPU in f32 from the same
//! inputs (drawn from a seed, then rounded to the dtype on the host, so both sides start from
//! identical values). The error is the largest absolute difference relative to the reference's
//! largest magnitude, compared with [`OpTolerance`]. Inputs are random for every seed; never
//! constant, never zero.

use burn::tensor::{
    Bool, DType, Int, Tensor, TensorData,
    activation::{gelu, log_softmax, sigmoid, silu, softmax},
    module::{conv2d, embedding, linear},
    ops::ConvOptions,
};
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::model::nn::{LayerNorm, attend, set_composed_attention};
use burn_phi3v::kernels::{self, KernelPolicy, Kernels, kernel_policy, set_kernel_policy};
use burn_phi3v::model::phi3::Phi3RmsNorm;
use phi3v_devices::DeviceFn;

use crate::rng::Rng;

/// How far a device may be from the CPU on one op: `ulps` units of the dtype's machine epsilon,
/// relative to the reference's largest magnitude, times `sqrt(n)` for an op that accumulates
/// `n` terms (a matmul's `k`, a reduction's length) in the dtype. Written once, per dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpTolerance {
    /// Machine epsilon of the compute dtype.
    pub epsilon: f32,
    /// Units of `epsilon` allowed.
    pub ulps: f32,
}

impl OpTolerance {
    /// The tolerance for a compute dtype.
    pub fn for_dtype(dtype: DType) -> OpTolerance {
        let epsilon = match dtype {
            DType::F16 => 2f32.powi(-10),
            DType::BF16 => 2f32.powi(-7),
            _ => f32::EPSILON,
        };
        OpTolerance { epsilon, ulps: 16.0 }
    }

    /// The allowed relative error for an op accumulating `n` terms.
    pub fn bound(&self, n: usize) -> f32 {
        self.ulps * self.epsilon * (n.max(1) as f32).sqrt()
    }

    /// The allowed relative error for an op whose statistics sum `n` values in f32 and whose
    /// output is rounded once to the dtype (the norms): in half precision the rounding
    /// dominates, in f32 the summation.
    pub fn bound_f32_statistics(&self, n: usize) -> f32 {
        self.bound(1) + OpTolerance::for_dtype(DType::F32).bound(n)
    }
}

/// One op's output on one side.
#[derive(Debug, Clone)]
pub struct OpOutput {
    /// What ran, with its shapes.
    pub op: String,
    /// The dtype its inputs were rounded to (and the device computed in).
    pub dtype: DType,
    /// Terms accumulated per output value (1 for elementwise ops).
    pub accumulated: usize,
    /// The output, as f32 (empty when it could not be read).
    pub values: Vec<f32>,
    /// Why the output could not be read back (a launch or execution error on the device;
    /// after one, a CubeCL server refuses the ops that follow too).
    pub error: Option<String>,
}

/// One op's comparison.
#[derive(Debug, Clone)]
pub struct OpCheck {
    /// What ran.
    pub op: String,
    /// Its dtype.
    pub dtype: DType,
    /// Largest absolute difference from the CPU.
    pub max_abs_err: f32,
    /// `max_abs_err` over the reference's largest magnitude.
    pub rel_err: f32,
    /// The allowed `rel_err`.
    pub bound: f32,
    /// Whether it is within the bound (and finite, and of the right length, and was read).
    pub pass: bool,
    /// The device's error for this op, if its output could not be read.
    pub error: Option<String>,
}

/// The op list, run as a [`DeviceFn`]: on the device under test with `compute = None` (each
/// dtype computes in itself), on the CPU with `compute = Some(F32)`.
#[derive(Debug, Clone)]
pub struct OpSuite {
    /// Seed of the inputs.
    pub seed: u64,
    /// Dtypes to run every op in.
    pub dtypes: Vec<DType>,
    /// Compute dtype override (the reference's f32).
    pub compute: Option<DType>,
    /// Also the model's large shapes (a decode-step and a prefill-size matmul).
    pub large: bool,
}

struct Ctx<'a, B: Kernels> {
    device: &'a B::Device,
    round: DType,
    compute: DType,
    rng: Rng,
    out: Vec<OpOutput>,
}

fn round_to(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

impl<B: Kernels> Ctx<'_, B> {
    /// Values uniform in `±scale`, rounded to the dtype, as host data.
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| round_to((self.rng.unit() * 2.0 - 1.0) * scale, self.round)).collect()
    }

    fn input<const D: usize>(&mut self, shape: [usize; D], scale: f32) -> Tensor<B, D> {
        let v = self.values(shape.iter().product(), scale);
        Tensor::from_data(TensorData::new(v, shape), (self.device, self.compute))
    }

    /// Like `input`, magnitudes in `[lo, lo + scale]` (divisors, logarithms, roots).
    fn positive<const D: usize>(&mut self, shape: [usize; D], lo: f32, scale: f32) -> Tensor<B, D> {
        let v = self.values(shape.iter().product(), scale);
        let v = v.into_iter().map(|x| round_to(lo + x.abs(), self.round)).collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(v, shape), (self.device, self.compute))
    }

    fn indices<const D: usize>(&mut self, shape: [usize; D], below: usize) -> Tensor<B, D, Int> {
        let n = shape.iter().product();
        let v: Vec<i64> = (0..n).map(|_| self.rng.below(below as u64) as i64).collect();
        Tensor::from_data(TensorData::new(v, shape), self.device)
    }

    fn record<const D: usize>(&mut self, op: impl Into<String>, accumulated: usize, t: Tensor<B, D>) {
        let op = op.into();
        // A device error is this op's failure, not the tool's: the table names it.
        let (values, error) = match t.try_into_data() {
            Ok(data) => (data.convert::<f32>().to_vec::<f32>().expect("f32 data"), None),
            Err(e) => (Vec::new(), Some(format!("{e}").lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" / "))),
        };
        // Progress on stderr: on a device where an op stalls, the last line names the op before.
        eprintln!("  {} {}: {op}", dtype_name(self.round), if error.is_some() { "FAILED" } else { "done" });
        self.out.push(OpOutput { op, dtype: self.round, accumulated, values, error });
    }
}

impl DeviceFn for OpSuite {
    type Output = Vec<OpOutput>;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, _: DType) -> Vec<OpOutput> {
        let mut out = Vec::new();
        for (i, &dtype) in self.dtypes.iter().enumerate() {
            let mut c = Ctx::<B> {
                device,
                round: dtype,
                compute: self.compute.unwrap_or(dtype),
                rng: Rng(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1) | 1),
                out: Vec::new(),
            };
            matmuls(&mut c, self.large);
            reductions(&mut c);
            elementwise(&mut c);
            indexing(&mut c);
            attention(&mut c);
            model_ops(&mut c);
            out.append(&mut c.out);
        }
        out
    }
}

fn matmuls<B: Kernels>(c: &mut Ctx<B>, large: bool) {
    let mut shapes = vec![(1, 96, 64), (7, 33, 65), (64, 256, 96), (100, 96, 128), (16, 192, 576)];
    if large {
        shapes.extend([(16, 3072, 9216), (1024, 3072, 3072)]);
    }
    let scale = |k: usize| 1.0 / (k as f32).sqrt().sqrt();
    for (m, k, n) in shapes {
        let a = c.input([m, k], scale(k));
        let b = c.input([k, n], scale(k));
        c.record(format!("matmul [{m}, {k}]·[{k}, {n}]"), k, a.matmul(b));
    }
    let (a, b) = (c.input([3, 37, 64], 0.5), c.input([3, 64, 50], 0.5));
    c.record("batched matmul [3, 37, 64]·[3, 64, 50]", 64, a.matmul(b));
    // The model's Linear: the checkpoint's [out, in] weight as a transposed view, plus a bias.
    let (x, w, bias) = (c.input([2, 9, 80], 0.5), c.input([48, 80], 0.5), c.input([48], 0.5));
    c.record("linear [2, 9, 80] · [48, 80]ᵀ + bias", 80, linear(x, w.transpose(), Some(bias)));
}

fn reductions<B: Kernels>(c: &mut Ctx<B>) {
    let x = c.input([6, 1000], 1.0);
    c.record("sum_dim [6, 1000] dim 1", 1000, x.clone().sum_dim(1));
    c.record("mean_dim [6, 1000] dim 1", 1000, x.clone().mean_dim(1));
    c.record("max_dim [6, 1000] dim 1", 1, x.clone().max_dim(1));
    c.record("min_dim [6, 1000] dim 1", 1, x.clone().min_dim(1));
    // Ties are possible after rounding: compare the value at the index, not the index.
    let idx = x.clone().argmax(1);
    c.record("argmax [6, 1000] dim 1 (value at index)", 1, x.clone().gather(1, idx));
    let (var, mean) = x.clone().var_mean_bias(1);
    c.record("var_mean_bias [6, 1000]: variance", 1000, var);
    c.record("var_mean_bias [6, 1000]: mean", 1000, mean);
    c.record("sum [6, 1000]", 6000, x.sum());
    let y = c.input([4, 8, 77], 4.0);
    c.record("softmax [4, 8, 77] dim 2", 77, softmax(y.clone(), 2));
    c.record("log_softmax [4, 8, 77] dim 2", 77, log_softmax(y.clone(), 2));
    c.record("cumsum [4, 8, 77] dim 2", 77, y.cumsum(2));
}

fn elementwise<B: Kernels>(c: &mut Ctx<B>) {
    let s = "[3, 257]";
    let (x, y) = (c.input([3, 257], 2.0), c.input([3, 257], 2.0));
    let p = c.positive([3, 257], 0.5, 2.0);
    let row = c.input([1, 257], 1.0);
    c.record(format!("add {s}"), 1, x.clone() + y.clone());
    c.record(format!("sub {s}"), 1, x.clone() - y.clone());
    c.record(format!("mul {s}"), 1, x.clone() * y.clone());
    c.record(format!("div {s}"), 1, x.clone() / p.clone());
    c.record(format!("add, broadcast [1, 257] {s}"), 1, x.clone() + row);
    c.record(format!("mul_scalar, add_scalar {s}"), 1, x.clone() * 0.37 + 1.5);
    c.record(format!("exp {s}"), 1, x.clone().exp());
    c.record(format!("log {s}"), 1, p.clone().log());
    c.record(format!("sqrt {s}"), 1, p.clone().sqrt());
    c.record(format!("recip {s}"), 1, p.clone().recip());
    c.record(format!("powf_scalar 1.5 {s}"), 1, p.clone().powf_scalar(1.5));
    c.record(format!("square {s}"), 1, x.clone().square());
    c.record(format!("tanh {s}"), 1, x.clone().tanh());
    c.record(format!("sigmoid {s}"), 1, sigmoid(x.clone()));
    c.record(format!("silu {s}"), 1, silu(x.clone()));
    c.record(format!("gelu {s}"), 1, gelu(x.clone()));
    c.record(format!("erf {s}"), 1, x.clone().erf());
    c.record(format!("cos {s}"), 1, x.clone().cos());
    c.record(format!("sin {s}"), 1, x.clone().sin());
    c.record(format!("neg, abs {s}"), 1, x.clone().neg().abs());
    c.record(format!("clamp ±0.5 {s}"), 1, x.clone().clamp(-0.5, 0.5));
    c.record(format!("mask_where x > y {s}"), 1, x.clone().mask_where(x.clone().greater(y.clone()), y.clone()));
    c.record(format!("mask_fill x < 0 {s}"), 1, x.clone().mask_fill(x.clone().lower_elem(0.0), -3.0));
    c.record(format!("cast f32 and back {s}"), 1, x.clone().cast(DType::F32).exp().cast(c.compute));
}

fn indexing<B: Kernels>(c: &mut Ctx<B>) {
    let t = c.input([50, 64], 1.0);
    let rows = c.indices([20], 50);
    c.record("select dim 0 [50, 64] by 20 indices", 1, t.clone().select(0, rows));
    let cols = c.indices([50, 7], 64);
    c.record("gather dim 1 [50, 64] by [50, 7]", 1, t.clone().gather(1, cols));
    c.record("narrow, cat [50, 64]", 1, Tensor::cat(vec![t.clone().narrow(1, 32, 32), t.clone().narrow(1, 0, 32)], 1));
    let u = c.input([2, 5, 7, 3], 1.0);
    c.record("permute, reshape [2, 5, 7, 3]", 1, u.clone().permute([0, 2, 3, 1]).reshape([14, 15]));
    c.record("swap_dims, expand, add", 1, u.clone().swap_dims(1, 2) + u.narrow(1, 0, 1).swap_dims(1, 2).expand([2, 7, 5, 3]));
    let patch = c.input([10, 32], 3.0);
    c.record("slice_assign [50, 64]", 1, t.clone().slice_assign([10..20, 8..40], patch));
    // The paged KV cache's write: whole rows of a pool replaced at slot indices (distinct slots).
    let pool = c.input([64, 4, 8], 1.0);
    let mut slots: Vec<i64> = (0..64).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, c.rng.below(i as u64 + 1) as usize);
    }
    let slots = Tensor::<B, 2, Int>::from_data(TensorData::new(slots[..10].to_vec(), [10, 1]), c.device);
    let values = c.input([10, 4, 8], 2.0);
    c.record("scatter_nd assign [64, 4, 8] at 10 slots", 1, pool.scatter_nd(slots, values, burn::tensor::IndexingUpdateOp::Assign));
    let ids = c.indices([3, 11], 500);
    let table = c.input([500, 64], 1.0);
    c.record("embedding [500, 64] by [3, 11]", 1, embedding(table, ids));
}

fn attention<B: Kernels>(c: &mut Ctx<B>) {
    // (batch, heads, queries, keys, head_dim, causal, explicit bottom-right mask)
    let shapes = [
        (1, 4, 37, 37, 64, true, false),
        (2, 4, 50, 50, 96, true, false),
        (1, 2, 145, 145, 64, false, false),
        (1, 4, 1, 100, 96, false, false),
        (1, 2, 16, 80, 128, false, true),
    ];
    for (b, h, q, k, d, causal, masked) in shapes {
        let (qs, ks, vs) = (c.input([b, h, q, d], 1.0), c.input([b, h, k, d], 1.0), c.input([b, h, k, d], 1.0));
        let mask = masked.then(|| {
            let m: Vec<bool> = (0..q).flat_map(|i| (0..k).map(move |j| j > k - q + i)).collect();
            Tensor::<B, 4, Bool>::from_data(TensorData::new(m, [1, 1, q, k]), c.device).expand([b, h, q, k])
        });
        for composed in [false, true] {
            set_composed_attention(composed);
            let o = attend(qs.clone(), ks.clone(), vs.clone(), mask.clone(), causal);
            let kind = match (causal, masked) {
                (true, _) => "causal",
                (_, true) => "bottom-right mask",
                _ => "no mask",
            };
            let how = if composed { "composed" } else { "fused" };
            c.record(format!("attention [{b}, {h}, {q}→{k}, {d}] {kind}, {how}"), k, o);
        }
        set_composed_attention(false);
    }
}

fn model_ops<B: Kernels>(c: &mut Ctx<B>) {
    // The model's fused steps (burn_phi3v::kernels), each with the backend's kernel and
    // composed from Burn ops; the CPU reference composes both.
    let x = c.input([2, 9, 256], 2.0);
    let ln = LayerNorm { weight: c.input([256], 1.0), bias: c.input([256], 0.5), eps: 1e-5 };
    c.record("CLIP LayerNorm [2, 9, 256]", 256, ln.forward(x.clone()));
    let norm = Phi3RmsNorm { weight: c.input([256], 1.0), eps: 1e-5 };
    let residual = c.input([2, 9, 256], 2.0);
    // Rotary embedding of queries read from a fused qkv row, as the decoder does (a strided
    // view), with cos/sin of host-drawn angles (LongRoPE tables are such values).
    let qkv = c.input([2, 9, 3 * 4 * 96], 1.0);
    let q = qkv.clone().narrow(2, 4 * 96, 4 * 96);
    let angles = c.values(2 * 9 * 48, 3.0);
    let table = |f: fn(f32) -> f32| {
        let v: Vec<f32> = (0..18).flat_map(|p| (0..96).map(move |i| (p, i % 48))).map(|(p, i)| f(angles[p * 48 + i])).collect();
        Tensor::<B, 4>::from_data(TensorData::new(v, [2, 1, 9, 96]), (c.device, c.compute))
    };
    let (cos, sin) = (table(f32::cos), table(f32::sin));
    let (k_cache, v_cache) = (c.input([2, 4, 12, 96], 1.0), c.input([2, 4, 12, 96], 1.0));
    // Phi3MLP's activation over gate_up_proj's output, up · silu(gate).
    let gate_up = c.input([2, 9, 384], 3.0);
    // A decode step's attention over a cache view with spare capacity (37 of 40 positions).
    let dq = c.input([2, 4, 1, 96], 1.0);
    let (dk, dv) = (c.input([2, 4, 40, 96], 1.0).narrow(2, 0, 37), c.input([2, 4, 40, 96], 1.0).narrow(2, 0, 37));
    // The same through a paged pool: 2 rows of 9 and 5 keys in blocks of 4, scattered blocks.
    let (pool_k, pool_v) = (c.input([64, 4, 96], 1.0), c.input([64, 4, 96], 1.0));
    let tables = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![7i64, 2, 13, 5, 11, 5], [2, 3]), c.device);
    let lengths = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![9i64, 5], [2]), c.device);
    let pq = c.input([2, 4, 96], 1.0);
    // Prefill attention (flash): 4 heads of 96 over 70 positions, causal.
    let (fq, fk, fv) = (c.input([1, 4, 70, 96], 2.0), c.input([1, 4, 70, 96], 2.0), c.input([1, 4, 70, 96], 1.0));
    // The softmax between the two products of attention, causal over 70 keys.
    let scores = c.input([1, 4, 70, 70], 8.0);
    // Projections of a decode step (1 and 3 token rows) with a checkpoint-layout weight.
    let weight = c.input([40, 256], 0.1).transpose();
    let (x1, x3) = (c.input([1, 1, 256], 1.0), c.input([1, 3, 256], 1.0));
    // The kernels forced on (checked even where they are not on by default), then composed.
    let policy = kernel_policy();
    for fused in [true, false] {
        set_kernel_policy(if fused { KernelPolicy::Forced } else { KernelPolicy::Off });
        let how = if fused { "kernel" } else { "composed" };
        c.record(format!("Phi3RMSNorm [2, 9, 256], {how}"), 256, norm.forward(x.clone()));
        let (sum, normed) = kernels::add_rms_norm(x.clone(), residual.clone(), &norm.weight, norm.eps);
        c.record(format!("residual add + Phi3RMSNorm [2, 9, 256] (sum, normed), {how}"), 256, Tensor::cat(vec![sum, normed], 2));
        c.record(format!("rotary, 4 heads of 96 from a qkv row [2, 9, 384], {how}"), 1, kernels::rotary(q.clone(), &cos, &sin, 96));
        // Rotation, head split and KV-cache append in one: 4 query heads, 4 kv heads of 96,
        // after 3 cached positions of 12.
        let (rq, rk, rv) = kernels::rotary_append(qkv.clone(), &cos, &sin, k_cache.clone(), v_cache.clone(), 4, 3);
        c.record(format!("rotary + KV-cache append [2, 9, 3×384] (q, k, v), {how}"), 1, Tensor::cat(vec![rq.reshape([2, 4, 9 * 96]), rk.reshape([2, 4, 12 * 96]), rv.reshape([2, 4, 12 * 96])], 2));
        c.record(format!("up·silu(gate) [2, 9, 384], {how}"), 1, kernels::silu_mul(gate_up.clone()));
        c.record(format!("decode attention [2, 4, 1→37, 96] over a cache view, {how}"), 37, kernels::decode_attention(dq.clone(), dk.clone(), dv.clone()));
        let paged = kernels::paged_decode_attention(pq.clone(), &pool_k, &pool_v, &tables, &lengths, 4, 9);
        c.record(format!("paged decode attention [2 rows of 9, 5 keys, 4 heads of 96, blocks of 4], {how}"), 9, paged);
        let flash = kernels::attention(fq.clone(), fk.clone(), fv.clone(), None, true);
        c.record(format!("causal attention [1, 4, 70, 96] (prefill), {how}"), 70, flash);
        c.record(format!("attention softmax [1, 4, 70, 70] causal, {how}"), 2, kernels::attention_softmax(scores.clone(), 0.125, true));
        // The same attention as two products around that softmax, in chunks of 16 query rows.
        let chunked = kernels::scores_attention(fq.clone(), fk.clone(), fv.clone(), true, 16 * 4 * 70 * c.compute.size());
        c.record(format!("causal attention [1, 4, 70, 96] as scores in chunks, {how}"), 70, chunked);
        for x in [&x1, &x3] {
            let rows = x.dims()[1];
            c.record(format!("linear [{rows}, 256] · [256, 40] (decode-step rows), {how}"), 256, kernels::linear(x.clone(), &weight, None));
            // With the decoder layer's fused steps: the norm before, the residual add or
            // up · silu(gate) after.
            c.record(format!("RMSNorm then linear [{rows}, 256] · [256, 40], {how}"), 256, kernels::norm_linear(x.clone(), &norm.weight, norm.eps, &weight));
            let act = kernels::norm_linear_silu_mul(x.clone(), &norm.weight, norm.eps, &weight);
            c.record(format!("RMSNorm, linear [{rows}, 256] · [256, 40], up·silu(gate), {how}"), 256, act);
            let res = residual.clone().narrow(0, 0, 1).narrow(1, 0, rows).narrow(2, 0, 40);
            c.record(format!("linear [{rows}, 256] · [256, 40] + residual, {how}"), 256, kernels::linear_add(x.clone(), &weight, res));
        }
    }
    set_kernel_policy(policy);
    // cubek-matmul's tensor-core routines at tilings of this crate's choosing (PHI3V_MATMUL):
    // Burn's matmul where a routine refuses (no tensor cores, or a tiling the device cannot run).
    let (a, w) = (c.input([130, 200], 1.0), c.input([72, 200], 0.1).transpose());
    for tiling in ["double:2,2,2:2,2", "specialized_tma:4,4,2:2,2"] {
        let t = kernels::MatmulTiling::parse(tiling).expect("a valid tiling");
        c.record(format!("tiled matmul [130, 200] · [200, 72] at {tiling}"), 200, kernels::tiled_matmul(a.clone(), w.clone(), t));
    }
    let h = c.input([2, 9, 128], 3.0);
    c.record("quick_gelu [2, 9, 128]", 1, h.clone() * sigmoid(h * 1.702));
    // CLIP's patch embedding: 14×14 patches, stride 14, no bias.
    let px = c.input([2, 3, 56, 56], 1.0);
    let w = c.input([32, 3, 14, 14], 0.1);
    let conv = conv2d(px, w, None, ConvOptions::new([14, 14], [0, 0], [1, 1], 1));
    c.record("conv2d [2, 3, 56, 56] * [32, 3, 14, 14] stride 14", 3 * 14 * 14, conv);
}

/// Compares the device's outputs with the CPU's.
pub fn compare(reference: &[OpOutput], got: &[OpOutput]) -> Vec<OpCheck> {
    reference
        .iter()
        .zip(got)
        .map(|(r, g)| {
            let bound = OpTolerance::for_dtype(g.dtype).bound(g.accumulated);
            let error = g.error.clone().or_else(|| r.error.as_ref().map(|e| format!("on the CPU: {e}")));
            if error.is_some() {
                return OpCheck { op: g.op.clone(), dtype: g.dtype, max_abs_err: f32::NAN, rel_err: f32::NAN, bound, pass: false, error };
            }
            let max_abs_err = crate::tolerance::max_abs_diff(&r.values, &g.values);
            let rel_err = max_abs_err / crate::tolerance::magnitude(&r.values);
            OpCheck { op: g.op.clone(), dtype: g.dtype, max_abs_err, rel_err, bound, pass: rel_err <= bound, error: None }
        })
        .collect()
}

/// Runs the op list on `device` in `dtypes` and on the CPU, and compares them.
pub fn run_ops(device: &str, dtypes: &[DType], seed: u64, large: bool) -> Result<Vec<OpCheck>, burn_phi3v::device::DeviceError> {
    let suite = OpSuite { seed, dtypes: dtypes.to_vec(), compute: None, large };
    let got = phi3v_devices::with_device(device, Some(dtype_name(dtypes[0])), suite.clone())?;
    let reference = phi3v_devices::with_device("cpu", Some("f32"), OpSuite { compute: Some(DType::F32), ..suite })?;
    Ok(compare(&reference, &got))
}

/// The checks as a Markdown table.
pub fn table(checks: &[OpCheck]) -> String {
    let mut s = String::from("| op | dtype | max abs Δ vs cpu | relative Δ | bound | pass |\n|---|---|---|---|---|---|\n");
    for c in checks {
        s += &format!(
            "| {} | {} | {:.2e} | {:.2e} | {:.2e} | {} |\n",
            c.op,
            dtype_name(c.dtype),
            c.max_abs_err,
            c.rel_err,
            c.bound,
            match (&c.error, c.pass) {
                (Some(e), _) => format!("FAIL: {}", e.replace('|', "/")),
                (None, true) => "pass".into(),
                (None, false) => "FAIL".into(),
            }
        );
    }
    s
}
