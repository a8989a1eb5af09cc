//! The CLIP vision tower (HF `CLIPVisionTransformer`, pre-LN ViT with quick-GELU), as
//! Phi-3-vision uses it: hidden states up to `layer_idx`, no pooled output.
//! Reference: transformers `models/clip/modeling_clip.py`; spec §3.1–3.3.

use burn::tensor::{Tensor, backend::Backend};

use crate::config::VisionConfig;
use crate::error::Result;
use crate::kernels::{self, Kernels};
use crate::model::nn::{LayerNorm, Linear};
use crate::weights::Weights;

/// `CLIPVisionEmbeddings`: patch "conv" (a matmul over flattened 14×14 patches), class token,
/// learned positions.
#[derive(Debug, Clone)]
pub struct ClipVisionEmbeddings<B: Backend> {
    /// `[hidden]`.
    pub class_embedding: Tensor<B, 1>,
    /// The conv kernel `[hidden, 3, 14, 14]` stored as `[3·14·14, hidden]`.
    pub patch_embedding: Tensor<B, 2>,
    /// `[1 + patches, hidden]`.
    pub position_embedding: Tensor<B, 2>,
    patch: usize,
    grid: usize,
    channels: usize,
}

impl<B: Kernels> ClipVisionEmbeddings<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &VisionConfig) -> Result<Self> {
        let (d, p, ch) = (c.hidden_size, c.patch_size, c.num_channels);
        let grid = c.grid();
        let kernel: Tensor<B, 4> = w.tensor(&format!("{prefix}.patch_embedding.weight"), [d, ch, p, p])?;
        Ok(Self {
            class_embedding: w.tensor(&format!("{prefix}.class_embedding"), [d])?,
            patch_embedding: kernel.reshape([d, ch * p * p]).transpose(),
            position_embedding: w.tensor(&format!("{prefix}.position_embedding.weight"), [grid * grid + 1, d])?,
            patch: p,
            grid,
            channels: ch,
        })
    }

    /// # Shapes
    /// `[crops, 3, 336, 336]` → `[crops, 1 + 576, hidden]`
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let n = pixel_values.dims()[0];
        let (g, p, ch) = (self.grid, self.patch, self.channels);
        let d = self.class_embedding.dims()[0];
        // Stride-14 conv without bias == matmul over non-overlapping patches.
        let patches = pixel_values
            .reshape([n, ch, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5]) // [n, gy, gx, ch, py, px]
            .reshape([n, g * g, ch * p * p]);
        let patch_embeds = patches.matmul(self.patch_embedding.clone().unsqueeze()); // [n, 576, d]
        let class = self.class_embedding.clone().reshape([1, 1, d]).expand([n, 1, d]);
        Tensor::cat(vec![class, patch_embeds], 1) + self.position_embedding.clone().unsqueeze()
    }
}

/// `CLIPAttention`: full (unmasked) multi-head attention with biased projections.
#[derive(Debug, Clone)]
pub struct ClipAttention<B: Backend> {
    /// The checkpoint's `q_proj`, `k_proj` and `v_proj` side by side (`[hidden, 3·hidden]`,
    /// as vLLM's `qkv_proj`): one product instead of three.
    pub qkv_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    num_heads: usize,
}

impl<B: Kernels> ClipAttention<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &VisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            qkv_proj: Linear::load_stacked(w, prefix, &["q_proj", "k_proj", "v_proj"], d, d, true)?,
            out_proj: Linear::load(w, &format!("{prefix}.out_proj"), d, d, true)?,
            num_heads: c.num_attention_heads,
        })
    }

    /// `residual + CLIPAttention(x)`: the residual is added in `out_proj`'s epilogue where the
    /// backend can.
    ///
    /// # Shapes
    /// `x`, `residual`: `[crops, tokens, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, t, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let qkv = self.qkv_proj.forward(x); // [n, t, 3d]: q, k, v
        let heads = |i: usize| qkv.clone().narrow(2, i * d, d).reshape([n, t, h, hd]).swap_dims(1, 2); // [n, h, t, hd]
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let out = kernels::attention(q, k, v, None, false).swap_dims(1, 2).reshape([n, t, d]); // head_dim^-0.5
        self.out_proj.forward_add(out, residual)
    }
}

/// `CLIPMLP` with quick-GELU: `x·σ(1.702x)`.
#[derive(Debug, Clone)]
pub struct ClipMlp<B: Backend> {
    /// `[hidden, intermediate]`.
    pub fc1: Linear<B>,
    /// `[intermediate, hidden]`.
    pub fc2: Linear<B>,
}

impl<B: Kernels> ClipMlp<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &VisionConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(w, &format!("{prefix}.fc1"), c.hidden_size, c.intermediate_size, true)?,
            fc2: Linear::load(w, &format!("{prefix}.fc2"), c.intermediate_size, c.hidden_size, true)?,
        })
    }

    /// `residual + CLIPMLP(x)`: the residual is added in `fc2`'s epilogue where the backend can.
    ///
    /// # Shapes
    /// `x`, `residual`: `[crops, tokens, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        // `fc1`'s bias is added by the activation's kernel, in its one pass over the output.
        let x = kernels::linear(x, &self.fc1.weight, None);
        let x = kernels::quick_gelu(x, self.fc1.bias.as_ref());
        self.fc2.forward_add(x, residual)
    }
}

/// `CLIPEncoderLayer`: pre-LN attention and MLP with residuals.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer<B: Backend> {
    /// LayerNorm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Attention.
    pub self_attn: ClipAttention<B>,
    /// LayerNorm before the MLP.
    pub layer_norm2: LayerNorm<B>,
    /// MLP.
    pub mlp: ClipMlp<B>,
}

impl<B: Kernels> ClipEncoderLayer<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &VisionConfig) -> Result<Self> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::load(w, &format!("{prefix}.layer_norm1"), d, eps)?,
            self_attn: ClipAttention::load(w, &format!("{prefix}.self_attn"), c)?,
            layer_norm2: LayerNorm::load(w, &format!("{prefix}.layer_norm2"), d, eps)?,
            mlp: ClipMlp::load(w, &format!("{prefix}.mlp"), c)?,
        })
    }

    /// # Shapes
    /// `[crops, tokens, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.self_attn.forward(self.layer_norm1.forward(x.clone()), x);
        self.mlp.forward(self.layer_norm2.forward(x.clone()), x)
    }
}

/// `CLIPVisionTransformer` truncated to the layers whose output Phi-3-vision reads.
#[derive(Debug, Clone)]
pub struct ClipVisionModel<B: Backend> {
    /// Patch, class and position embeddings.
    pub embeddings: ClipVisionEmbeddings<B>,
    /// `pre_layrnorm` (sic, the checkpoint's spelling).
    pub pre_layrnorm: LayerNorm<B>,
    /// The encoder layers that are used (23 of 24 for ViT-L/14-336 with `layer_idx = −2`).
    pub layers: Vec<ClipEncoderLayer<B>>,
}

impl<B: Kernels> ClipVisionModel<B> {
    /// Loads `{prefix}` (`…img_processor.vision_model`); the stored layers past `layers_used`
    /// and `post_layernorm` cannot influence the features and are checked but not loaded.
    pub fn load(w: &Weights<B>, prefix: &str, c: &VisionConfig, layers_used: usize) -> Result<Self> {
        let d = c.hidden_size;
        let layers = (0..layers_used)
            .map(|i| ClipEncoderLayer::load(w, &format!("{prefix}.encoder.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        const WHY: &str = "features are read before this point (layer_idx); HF stores it, vLLM drops it";
        for i in layers_used..c.num_hidden_layers {
            let p = format!("{prefix}.encoder.layers.{i}");
            for (name, shape) in [
                ("layer_norm1.weight", vec![d]),
                ("layer_norm1.bias", vec![d]),
                ("layer_norm2.weight", vec![d]),
                ("layer_norm2.bias", vec![d]),
                ("mlp.fc1.weight", vec![c.intermediate_size, d]),
                ("mlp.fc1.bias", vec![c.intermediate_size]),
                ("mlp.fc2.weight", vec![d, c.intermediate_size]),
                ("mlp.fc2.bias", vec![d]),
            ] {
                w.skip(&format!("{p}.{name}"), &shape, WHY)?;
            }
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                w.skip(&format!("{p}.self_attn.{proj}.weight"), &[d, d], WHY)?;
                w.skip(&format!("{p}.self_attn.{proj}.bias"), &[d], WHY)?;
            }
        }
        for name in ["post_layernorm.weight", "post_layernorm.bias"] {
            let full = format!("{prefix}.{name}");
            if w.contains(&full) {
                w.skip(&full, &[d], "applies to the pooled CLS output only, which Phi-3-vision never uses")?;
            }
        }
        Ok(Self {
            embeddings: ClipVisionEmbeddings::load(w, &format!("{prefix}.embeddings"), c)?,
            pre_layrnorm: LayerNorm::load(w, &format!("{prefix}.pre_layrnorm"), d, c.layer_norm_eps)?,
            layers,
        })
    }

    /// Patch features: the hidden state after the last loaded layer with the CLS token dropped.
    ///
    /// # Shapes
    /// `[crops, 3, 336, 336]` → `[crops, 576, hidden]`
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let mut x = self.pre_layrnorm.forward(self.embeddings.forward(pixel_values));
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let [n, t, d] = x.dims();
        x.slice([0..n, 1..t, 0..d])
    }
}
