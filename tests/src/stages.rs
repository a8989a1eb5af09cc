//! The vision tower stage by stage, to compare a device with the CPU and localise a backend
//! difference to one op (patch embedding, LayerNorm, attention, MLP).

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use burn_phi3v::LoadedModel;
use burn_phi3v::device::DeviceInfo;
use phi3v_devices::DeviceFn;
use crate::fixtures::model_dir;
use crate::parity::probe_pixels;
use crate::tolerance::max_abs_diff;

/// Outputs of the vision tower's stages on the probe pixels (phi3v-tiny).
pub struct Stages;

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

impl DeviceFn for Stages {
    type Output = Vec<(&'static str, Vec<f32>)>;
    fn run<B: Backend>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> Self::Output {
        let m = LoadedModel::<B>::load(&model_dir("phi3v-tiny"), device, dtype, None).unwrap();
        let clip = &m.model.vision_embed_tokens.as_ref().unwrap().img_processor;
        let px = Tensor::<B, 4>::from_data(TensorData::new(probe_pixels(), [3, 3, 336, 336]), (device, dtype));
        let emb = clip.embeddings.forward(px.clone());
        let pre = clip.pre_layrnorm.forward(emb.clone());
        let l0 = &clip.layers[0];
        let ln1 = l0.layer_norm1.forward(pre.clone());
        let attn = l0.self_attn.forward(ln1.clone());
        let mlp = l0.mlp.forward(l0.layer_norm2.forward(pre.clone() + attn.clone()));
        let out = clip.forward(px);
        vec![
            ("patch+class+position embeddings", host(emb)),
            ("pre_layrnorm", host(pre)),
            ("layer 0 layer_norm1", host(ln1)),
            ("layer 0 attention", host(attn)),
            ("layer 0 mlp", host(mlp)),
            ("features", host(out)),
        ]
    }
}

/// Largest difference per stage between two [`Stages`] results.
pub fn stage_errors(reference: &[(&'static str, Vec<f32>)], got: &[(&'static str, Vec<f32>)]) -> Vec<(&'static str, f32)> {
    reference.iter().zip(got).map(|((n, a), (_, b))| (*n, max_abs_diff(a, b))).collect()
}
