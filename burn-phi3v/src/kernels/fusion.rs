//! [`Kernels`] on Burn's fusion backend: each step is registered in the fusion stream as a
//! custom operation that runs the inner backend's kernel when the stream executes.

use std::marker::PhantomData;

use burn::tensor::{Shape, ops::FloatTensor};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::Kernels;

/// Which step a [`Step`] runs, with its non-tensor arguments.
#[derive(Clone, Copy, Debug)]
enum Kind {
    RmsNorm { eps: f64 },
    LayerNorm { eps: f64 },
    /// Inputs: `x`, then the bias when `bias`.
    QuickGelu { bias: bool },
    AddRmsNorm { eps: f64 },
    Rotary { head_dim: usize },
    SiluMul,
    DecodeAttention,
    AttentionSoftmax { scale: f64, causal: bool, keys: usize },
    SkinnyLinear,
    TiledMatmul { tiling: super::MatmulTiling },
    /// Inputs: `x`, `weight`, then the norm's weight when `norm_eps` is given, then the
    /// residual when `then` is [`Then::Residual`].
    FusedLinear { norm_eps: Option<f64>, then: Then },
}

/// [`super::Epilogue`] without its tensor.
#[derive(Clone, Copy, Debug)]
enum Then {
    Nothing,
    Residual,
    SiluMul,
}

/// A custom operation of the fusion stream running one [`Kernels`] step of the inner backend.
#[derive(Clone, Debug)]
struct Step<B> {
    desc: CustomOpIr,
    kind: Kind,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + Kernels> Operation<B::FusionRuntime> for Step<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let mut input = |i: usize| handles.get_float_tensor::<B>(&self.desc.inputs[i]);
        let results = match self.kind {
            Kind::RmsNorm { eps } => vec![B::rms_norm(input(0), input(1), eps)],
            Kind::LayerNorm { eps } => vec![<B as Kernels>::layer_norm(input(0), input(1), input(2), eps)],
            Kind::QuickGelu { bias } => vec![B::quick_gelu(input(0), bias.then(|| input(1)))],
            Kind::AddRmsNorm { eps } => {
                let (sum, normed) = B::add_rms_norm(input(0), input(1), input(2), eps);
                vec![sum, normed]
            }
            Kind::Rotary { head_dim } => vec![B::rotary(input(0), input(1), input(2), head_dim)],
            Kind::SiluMul => vec![B::silu_mul(input(0))],
            Kind::DecodeAttention => vec![B::decode_attention(input(0), input(1), input(2))],
            Kind::AttentionSoftmax { scale, causal, keys } => vec![B::attention_softmax(input(0), scale, causal, keys)],
            Kind::SkinnyLinear => vec![B::skinny_linear(input(0), input(1))],
            Kind::TiledMatmul { tiling } => vec![B::tiled_matmul(input(0), input(1), tiling)],
            Kind::FusedLinear { norm_eps, then } => {
                let (x, weight) = (input(0), input(1));
                let norm = norm_eps.map(|eps| (input(2), eps));
                let epilogue = match then {
                    Then::Nothing => super::Epilogue::None,
                    Then::Residual => super::Epilogue::Residual(input(2 + usize::from(norm_eps.is_some()))),
                    Then::SiluMul => super::Epilogue::SiluMul,
                };
                vec![B::fused_linear(x, weight, norm, epilogue)]
            }
        };
        for (output, result) in self.desc.outputs.iter().zip(results) {
            handles.register_float_tensor::<B>(&output.id, result);
        }
    }
}

/// Registers `kind` over `inputs` with one output of `shape` (the first input's dtype).
fn register<B: FusionBackend + Kernels>(name: &'static str, kind: Kind, inputs: Vec<FloatTensor<Fusion<B>>>, shape: Shape) -> FloatTensor<Fusion<B>> {
    let [output] = register_n::<B, 1>(name, kind, inputs, shape);
    output
}

/// Registers `kind` over `inputs` with `N` outputs of `shape` (the first input's dtype).
fn register_n<B: FusionBackend + Kernels, const N: usize>(name: &'static str, kind: Kind, inputs: Vec<FloatTensor<Fusion<B>>>, shape: Shape) -> [FloatTensor<Fusion<B>>; N] {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs: Vec<TensorIr> = (0..N).map(|_| TensorIr::uninit(client.create_empty_handle(), shape.clone(), dtype)).collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            Step::<B> {
                desc,
                kind,
                _backend: PhantomData,
            },
        )
        .outputs()
}

impl<B: FusionBackend + Kernels> Kernels for Fusion<B> {
    fn scores_chunk_bytes(device: &Self::Device) -> usize {
        B::scores_chunk_bytes(device)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        register::<B>("phi3v_rms_norm", Kind::RmsNorm { eps }, vec![x, weight], shape)
    }

    fn layer_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        register::<B>("phi3v_layer_norm", Kind::LayerNorm { eps }, vec![x, weight, bias], shape)
    }

    fn quick_gelu(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        let kind = Kind::QuickGelu { bias: bias.is_some() };
        register::<B>("phi3v_quick_gelu", kind, [Some(x), bias].into_iter().flatten().collect(), shape)
    }

    fn add_rms_norm(x: FloatTensor<Self>, residual: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape.clone();
        let [sum, normed] = register_n::<B, 2>("phi3v_add_rms_norm", Kind::AddRmsNorm { eps }, vec![x, residual, weight], shape);
        (sum, normed)
    }

    fn rotary(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, head_dim: usize) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        register::<B>("phi3v_rotary", Kind::Rotary { head_dim }, vec![x, cos, sin], shape)
    }

    fn silu_mul(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        let mut shape = gate_up.shape.clone();
        let last = shape.num_dims() - 1;
        shape[last] /= 2;
        register::<B>("phi3v_silu_mul", Kind::SiluMul, vec![gate_up], shape)
    }

    fn skinny_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = Shape::new([x.shape[0], weight.shape[1]]);
        register::<B>("phi3v_skinny_linear", Kind::SkinnyLinear, vec![x, weight], shape)
    }

    fn tiled_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>, tiling: super::MatmulTiling) -> FloatTensor<Self> {
        let shape = Shape::new([lhs.shape[0], rhs.shape[1]]);
        register::<B>("phi3v_tiled_matmul", Kind::TiledMatmul { tiling }, vec![lhs, rhs], shape)
    }

    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, norm: Option<(FloatTensor<Self>, f64)>, epilogue: super::Epilogue<Self>) -> FloatTensor<Self> {
        let d_out = weight.shape[1];
        let mut inputs = vec![x, weight];
        let rows = inputs[0].shape[0];
        let norm_eps = norm.map(|(w, eps)| {
            inputs.push(w);
            eps
        });
        let (then, width) = match epilogue {
            super::Epilogue::None => (Then::Nothing, d_out),
            super::Epilogue::Residual(r) => {
                inputs.push(r);
                (Then::Residual, d_out)
            }
            super::Epilogue::SiluMul => (Then::SiluMul, d_out / 2),
        };
        register::<B>("phi3v_fused_linear", Kind::FusedLinear { norm_eps, then }, inputs, Shape::new([rows, width]))
    }

    fn attention_softmax(scores: FloatTensor<Self>, scale: f64, causal: bool, keys: usize) -> FloatTensor<Self> {
        let shape = scores.shape.clone();
        register::<B>("phi3v_attention_softmax", Kind::AttentionSoftmax { scale, causal, keys }, vec![scores], shape)
    }

    fn decode_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = q.shape.clone();
        register::<B>("phi3v_decode_attention", Kind::DecodeAttention, vec![q, k, v], shape)
    }
}
