//! The vision tower stage by stage on every test device against the CPU.

use burn_phi3v::device::dtype_name;
use phi3v_tests::devices::test_targets;
use phi3v_tests::stages::Stages;

/// Runs `job()` on the CPU in f32 and on every other test target, and asserts each named output
/// is within `tol(dtype)` of the CPU's.
fn assert_matches_cpu<N, F>(what: &str, job: impl Fn() -> F, tol: impl Fn(burn::tensor::DType) -> f32)
where
    N: std::fmt::Display,
    F: phi3v_devices::DeviceFn<Output = Vec<(N, Vec<f32>)>>,
{
    let reference = phi3v_devices::with_device("cpu", Some("f32"), job()).unwrap();
    let mut bad = Vec::new();
    for (spec, dtype) in test_targets() {
        if spec == "cpu" {
            continue;
        }
        let got = phi3v_devices::with_device(&spec, Some(dtype_name(dtype)), job()).unwrap();
        for ((name, a), (_, b)) in reference.iter().zip(&got) {
            let err = phi3v_tests::tolerance::max_abs_diff(a, b);
            eprintln!("{spec} {}: {what}: {name}: max |Δ| {err:e}", dtype_name(dtype));
            if err > tol(dtype) {
                bad.push(format!("{spec}: {what}: {name} differs by {err:e}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn vision_stages_agree_with_cpu() {
    assert_matches_cpu("vision", || Stages, |d| phi3v_tests::Tolerance::for_dtype(d).clip_features.max(1e-3));
}

/// `linear` (checkpoint weight `[out, in]` used transposed) at the shapes the model runs:
/// one decode token, a prompt, CLIP's 3 × 577 tokens; with and without bias.
struct Linears;

impl phi3v_devices::DeviceFn for Linears {
    type Output = Vec<(String, Vec<f32>)>;
    fn run<B: burn_phi3v::kernels::Kernels>(
        self,
        device: &B::Device,
        _: &burn_phi3v::device::DeviceInfo,
        dtype: burn::tensor::DType,
    ) -> Self::Output {
        use burn::tensor::{Tensor, TensorData};
        use burn_phi3v::model::nn::Linear;
        let val = |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.618 + seed).sin() * 1.3).collect() };
        let mut out = Vec::new();
        for (batch, m, d_in, d_out, bias) in [(1, 1, 32, 96, false), (1, 20, 32, 96, false), (3, 577, 32, 32, true), (1, 1, 32, 32064, false), (3, 577, 32, 64, true), (3, 577, 64, 32, true), (1, 20, 32, 64, false), (1, 20, 64, 32, false)] {
            let w = Tensor::<B, 2>::from_data(TensorData::new(val(d_out * d_in, 0.1), [d_out, d_in]), (device, dtype)).transpose();
            let b = bias.then(|| Tensor::<B, 1>::from_data(TensorData::new(val(d_out, 0.7), [d_out]), (device, dtype)));
            let x = Tensor::<B, 3>::from_data(TensorData::new(val(batch * m * d_in, 0.3), [batch, m, d_in]), (device, dtype));
            let y = Linear { weight: w, bias: b }.forward(x);
            out.push((format!("linear [{batch}, {m}, {d_in}] -> {d_out}, bias {bias}"), y.into_data().convert::<f32>().to_vec::<f32>().unwrap()));
        }
        out
    }
}

#[test]
fn linear_shapes_agree_with_cpu() {
    assert_matches_cpu("linear", || Linears, |_| 1e-3);
}

/// The decoder fed in two pieces over its KV cache (a multi-token chunk, then single tokens)
/// against one pass, on the device: the last-layer output at every fed position, and the
/// copies of a KV buffer the single-token steps made (none).
struct CachedSteps;

impl phi3v_devices::DeviceFn for CachedSteps {
    type Output = Vec<(String, f32)>;
    fn run<B: burn_phi3v::kernels::Kernels>(
        self,
        device: &B::Device,
        _: &burn_phi3v::device::DeviceInfo,
        dtype: burn::tensor::DType,
    ) -> Self::Output {
        let m = burn_phi3v::LoadedModel::<B>::load(&phi3v_tests::model_dir("phi3v-tiny"), device, dtype, None).unwrap();
        let ids = phi3v_tests::Case::load("text_only").tensor("input_ids").i64().to_vec();
        let n = ids.len();
        let regime = [m.model.rope_regime(n - 1)];
        let pass = |cache: &mut burn_phi3v::model::KvCache<B>, from: usize, to: usize| {
            let e = m.model.embed_inputs(&[ids[from..to].to_vec()], None).unwrap();
            let h = m.model.forward(e, &[(from..to).collect()], &regime, cache, None, false).last_hidden_state;
            h.into_data().convert::<f32>().to_vec::<f32>().unwrap()
        };
        let full = pass(&mut m.model.new_cache(), 0, n);
        let d = m.model.config.text.hidden_size;
        let mut cache = m.model.new_cache();
        let mut out = Vec::new();
        let first = pass(&mut cache, 0, n - 3);
        out.push((format!("chunk 0..{}", n - 3), phi3v_tests::tolerance::max_abs_diff(&first, &full[..(n - 3) * d])));
        let alone = pass(&mut m.model.new_cache(), 0, 1);
        out.push(("single token 0, empty cache".to_string(), phi3v_tests::tolerance::max_abs_diff(&alone, &full[..d])));
        let mut c2 = m.model.new_cache();
        pass(&mut c2, 0, n - 2);
        let two = pass(&mut c2, n - 2, n);
        out.push((format!("two tokens {}..{n} after cache", n - 2), phi3v_tests::tolerance::max_abs_diff(&two, &full[(n - 2) * d..])));
        // The steps write each layer's keys and values into the cache buffers in place: the KV
        // kernels never find a buffer another tensor holds (they would copy the whole cache
        // every layer and step; counted by `shared_buffer_copies`, which must not move).
        let copies = burn_phi3v::kernels::shared_buffer_copies();
        for p in n - 3..n {
            let step = pass(&mut cache, p, p + 1);
            out.push((format!("single token at {p}"), phi3v_tests::tolerance::max_abs_diff(&step, &full[p * d..(p + 1) * d])));
        }
        out.push(("KV buffer copies over the single-token steps".to_string(), (burn_phi3v::kernels::shared_buffer_copies() - copies) as f32));
        out
    }
}

/// Under Burn's attention (the default) and under `FlashAttention::Scores`, which takes a chunk
/// after cached keys with its own bottom-right causal limit instead of the explicit mask.
#[test]
fn cached_steps_equal_one_pass_on_every_device() {
    use burn_phi3v::kernels::{FlashAttention, flash_attention_choice, set_flash_attention};
    let mut bad = Vec::new();
    let default = flash_attention_choice();
    for choice in [FlashAttention::Burn, FlashAttention::Scores] {
        assert!(set_flash_attention(choice));
        for (spec, dtype) in test_targets() {
            for (what, err) in phi3v_devices::with_device(&spec, Some(dtype_name(dtype)), CachedSteps).unwrap() {
                eprintln!("{spec} {} {choice:?}: {what}: max |Δ| {err:e}", dtype_name(dtype));
                if err > phi3v_tests::Tolerance::for_dtype(dtype).hidden.max(1e-4) {
                    bad.push(format!("{spec} {choice:?}: {what} differs by {err:e}"));
                }
            }
        }
    }
    assert!(set_flash_attention(default));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The decoder's first layer op by op for a one-token sequence.
struct OneToken;

impl phi3v_devices::DeviceFn for OneToken {
    type Output = Vec<(&'static str, Vec<f32>)>;
    fn run<B: burn_phi3v::kernels::Kernels>(
        self,
        device: &B::Device,
        _: &burn_phi3v::device::DeviceInfo,
        dtype: burn::tensor::DType,
    ) -> Self::Output {
        use burn::tensor::Tensor;
        let m = burn_phi3v::LoadedModel::<B>::load(&phi3v_tests::model_dir("phi3v-tiny"), device, dtype, None).unwrap();
        let v = |t: Tensor<B, 3>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let v4 = |t: Tensor<B, 4>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let e = m.model.embed_inputs(&[vec![29871]], None).unwrap();
        let l = &m.model.model.layers[0];
        let n1 = l.input_layernorm.forward(e.clone());
        let qkv = l.self_attn.qkv_proj.forward(n1.clone());
        let (cos, sin) = m.model.model.rotary_emb.tables::<B>(&[vec![5]], &[burn_phi3v::model::RopeRegime::Short], device, dtype);
        let mut cache = None;
        let attn = l.self_attn.forward(n1.clone(), &cos, &sin, &mut cache, None);
        let h = e.clone() + attn.clone();
        let mlp = l.mlp.forward(l.post_attention_layernorm.forward(h.clone()));
        vec![("embedding", v(e)), ("input_layernorm", v(n1)), ("qkv_proj", v(qkv)), ("cos", v4(cos)), ("self_attn", v(attn)), ("mlp", v(mlp))]
    }
}

#[test]
fn one_token_ops_agree_with_cpu() {
    assert_matches_cpu("one token", || OneToken, |_| 1e-3);
}
