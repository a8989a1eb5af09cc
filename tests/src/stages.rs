//! The vision tower stage by stage, to compare a device with the CPU and localise a backend
//! difference to one op (patch embedding, LayerNorm, attention, MLP).

use burn_phi3v::kernels::Kernels;
use burn::tensor::{DType, Tensor, TensorData};
use burn_phi3v::LoadedModel;
use burn_phi3v::device::DeviceInfo;
use phi3v_devices::DeviceFn;
use crate::fixtures::model_dir;
use crate::parity::probe_pixels;
use crate::tolerance::max_abs_diff;

/// Outputs of the vision tower's stages on the probe pixels (phi3v-tiny).
pub struct Stages;

fn host<B: Kernels, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

impl DeviceFn for Stages {
    type Output = Vec<(&'static str, Vec<f32>)>;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> Self::Output {
        let m = LoadedModel::<B>::load(&model_dir("phi3v-tiny"), device, dtype, None).unwrap();
        let clip = &m.model.vision_embed_tokens.as_ref().unwrap().img_processor;
        let px = Tensor::<B, 4>::from_data(TensorData::new(probe_pixels(), [3, 3, 336, 336]), (device, dtype));
        let emb = clip.embeddings.forward(px.clone());
        let pre = clip.pre_layrnorm.forward(emb.clone());
        let l0 = &clip.layers[0];
        let ln1 = l0.layer_norm1.forward(pre.clone());
        // The modules add their residual: a zero one leaves each's own output.
        let zeros = Tensor::<B, 3>::zeros(pre.dims(), (device, dtype));
        let attn = l0.self_attn.forward(ln1.clone(), zeros.clone());
        let ln2 = l0.layer_norm2.forward(pre.clone() + attn.clone());
        let fc1 = l0.mlp.fc1.forward(ln2.clone());
        let act = fc1.clone() * burn::tensor::activation::sigmoid(fc1.clone() * 1.702);
        let fc2 = l0.mlp.fc2.forward(act.clone());
        let mlp = l0.mlp.forward(ln2.clone(), zeros);
        let out = clip.forward(px);
        vec![
            ("patch+class+position embeddings", host(emb)),
            ("pre_layrnorm", host(pre)),
            ("layer 0 layer_norm1", host(ln1)),
            ("layer 0 attention", host(attn)),
            ("layer 0 layer_norm2", host(ln2)),
            ("layer 0 mlp.fc1", host(fc1)),
            ("layer 0 quick_gelu", host(act)),
            ("layer 0 mlp.fc2", host(fc2)),
            ("layer 0 mlp", host(mlp)),
            ("features", host(out)),
        ]
    }
}

/// Largest difference per stage between two [`Stages`] results.
pub fn stage_errors(reference: &[(&'static str, Vec<f32>)], got: &[(&'static str, Vec<f32>)]) -> Vec<(&'static str, f32)> {
    reference.iter().zip(got).map(|((n, a), (_, b))| (*n, max_abs_diff(a, b))).collect()
}

/// Single ops in the variants a backend may get wrong, for localising a device difference:
/// `linear` at the model's shapes (Burn's rank-3 `linear` with the checkpoint weight used as a
/// transposed view, the same flattened to one 2-D product, and with a contiguous `[in, out]`
/// weight), and causal attention at lengths around multiples of 8 (the backend's fused kernel
/// with the causal flag, and composed from matmul and softmax).
pub struct OpVariants {
    /// Include the real model's shapes (CLIP fc1 on 17 crops, the decoder's qkv at 1024 tokens).
    pub large: bool,
}

fn pattern(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.618 + seed).sin() * scale).collect()
}

impl DeviceFn for OpVariants {
    type Output = Vec<(String, Vec<f32>)>;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> Self::Output {
        use burn::tensor::module::linear;
        let mut out = Vec::new();
        let mut shapes = vec![(3, 577, 32, 64), (3, 577, 64, 32), (3, 577, 32, 32), (1, 776, 32, 96), (1, 775, 32, 96), (1, 776, 64, 32), (1, 776, 32, 128)];
        if self.large {
            shapes.extend([(17, 577, 1024, 4096), (1, 1024, 3072, 9216)]);
        }
        for (b, m, k, n) in shapes {
            let w_out_in = pattern(n * k, 0.1, 0.3);
            let mut w_in_out = vec![0.0; n * k];
            for o in 0..n {
                for i in 0..k {
                    w_in_out[i * n + o] = w_out_in[o * k + i];
                }
            }
            let view = Tensor::<B, 2>::from_data(TensorData::new(w_out_in, [n, k]), (device, dtype)).transpose();
            let contiguous = Tensor::<B, 2>::from_data(TensorData::new(w_in_out, [k, n]), (device, dtype));
            let x = Tensor::<B, 3>::from_data(TensorData::new(pattern(b * m * k, 0.3, 1.0), [b, m, k]), (device, dtype));
            let flat = |w: Tensor<B, 2>| x.clone().reshape([b * m, k]).matmul(w).reshape([b, m, n]);
            let name = |v: &str| format!("linear [{b}, {m}, {k}] -> {n}: {v}");
            out.push((name("rank-3 linear, transposed view"), host(linear(x.clone(), view.clone(), None))));
            out.push((name("2-D matmul, transposed view"), host(flat(view))));
            out.push((name("rank-3 linear, contiguous"), host(linear(x.clone(), contiguous.clone(), None))));
            out.push((name("2-D matmul, contiguous"), host(flat(contiguous))));
        }
        for len in [775, 776, 792, 793] {
            let (h, d) = (2, 16);
            let qkv: Vec<Tensor<B, 4>> = (0..3)
                .map(|s| Tensor::from_data(TensorData::new(pattern(h * len * d, s as f32, 1.0), [1, h, len, d]), (device, dtype)))
                .collect();
            for composed in [false, true] {
                burn_phi3v::model::nn::set_composed_attention(composed);
                let o = burn_phi3v::model::nn::attend(qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), None, true);
                let which = if composed { "composed" } else { "fused" };
                out.push((format!("causal attention, {len} tokens: {which}"), host(o)));
            }
            burn_phi3v::model::nn::set_composed_attention(false);
            // The same mask built on the host (no broadcast comparison on the device).
            let m: Vec<bool> = (0..len).flat_map(|q| (0..len).map(move |k| k > q)).collect();
            let mask = Tensor::<B, 4, burn::tensor::Bool>::from_data(TensorData::new(m, [1, 1, len, len]), device).expand([1, h, len, len]);
            let o = burn_phi3v::model::nn::attend(qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), Some(mask), false);
            out.push((format!("causal attention, {len} tokens: explicit host mask"), host(o)));
        }
        out
    }
}
