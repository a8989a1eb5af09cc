//! Phi-3-vision: image embedding (CLIP → 2×2 merge → HD layout with `sub_GN`/`glb_GN` →
//! projector) and the causal LM around the Phi-3 decoder.
//!
//! The model exposes steps, as vLLM's `Phi3VForCausalLM` does: [`Phi3VForCausalLM::embed_images`]
//! → [`Phi3VForCausalLM::embed_inputs`] → [`Phi3VForCausalLM::forward`] → [`Phi3VForCausalLM::logits`].
//! Requests, batching policy, cache allocation and sampling live in the caller.
//! Reference: `image_embedding_phi3_v.py` (Phi3ImageEmbedding.hd_feature_transform,
//! reshape_hd_patches_2x2merge, add_image_newline) and `modeling_phi3_v.py`; spec §2.1, §3.4–3.6.

use crate::kernels::Kernels;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData, activation::gelu, backend::Backend};

use crate::config::{Phi3VConfig, VisionEmbeddingConfig};
use crate::error::{Phi3vError, Result};
use crate::model::clip::ClipVisionModel;
use crate::model::nn::Linear;
use crate::model::paged::{PagedBatch, PagedKvCache};
use crate::model::phi3::{DecoderOutput, KvCache, Phi3Model, RopeRegime};
use crate::weights::Weights;

/// Crop grid of one image: `[rows, cols]` of 336-pixel tiles in its HD version.
pub type CropGrid = [usize; 2];

/// `Phi3ImageEmbedding` (checkpoint prefix `model.vision_embed_tokens`).
#[derive(Debug, Clone)]
pub struct Phi3ImageEmbedding<B: Backend> {
    /// The CLIP tower (`img_processor.vision_model`).
    pub img_processor: ClipVisionModel<B>,
    /// Separator between the local grid and the global view: `[4C]` (stored `[1, 1, 4C]`).
    pub glb_gn: Tensor<B, 1>,
    /// "Newline" after every grid row: `[4C]` (stored `[1, 1, 1, 4C]`).
    pub sub_gn: Tensor<B, 1>,
    /// `img_projection.0`: `4C → D`.
    pub img_projection_0: Linear<B>,
    /// `img_projection.2`: `D → D` (index 1 is the exact GELU).
    pub img_projection_2: Linear<B>,
}

impl<B: Kernels> Phi3ImageEmbedding<B> {
    fn load(w: &Weights<B>, prefix: &str, c: &VisionEmbeddingConfig, text_hidden: usize) -> Result<Self> {
        let c4 = 4 * c.image_dim_out;
        Ok(Self {
            img_processor: ClipVisionModel::load(w, &format!("{prefix}.img_processor.vision_model"), &c.clip, c.layers_used())?,
            glb_gn: w.tensor::<3>(&format!("{prefix}.glb_GN"), [1, 1, c4])?.reshape([c4]),
            sub_gn: w.tensor::<4>(&format!("{prefix}.sub_GN"), [1, 1, 1, c4])?.reshape([c4]),
            img_projection_0: Linear::load(w, &format!("{prefix}.img_projection.0"), c4, text_hidden, true)?,
            img_projection_2: Linear::load(w, &format!("{prefix}.img_projection.2"), text_hidden, text_hidden, true)?,
        })
    }

    /// 2×2 merge: a 24×24 patch grid becomes 12×12 tokens of 4C channels, concatenating
    /// patches (2y, 2x), (2y, 2x+1), (2y+1, 2x), (2y+1, 2x+1).
    ///
    /// # Shapes
    /// `[crops, 576, C]` → `[crops, 12, 12, 4C]`
    fn merge_2x2(features: Tensor<B, 3>) -> Tensor<B, 4> {
        let [n, t, c] = features.dims();
        let g = (t as f64).sqrt() as usize;
        let h = g / 2;
        features
            .reshape([n, h, 2, h, 2, c])
            .permute([0, 1, 3, 2, 4, 5]) // [n, y, x, dy, dx, c]
            .reshape([n, h, h, 4 * c])
    }

    /// Appends `sub_GN` after every row and flattens.
    ///
    /// # Shapes
    /// `[rows, cols, 4C]` → `[rows·(cols + 1), 4C]`
    fn add_image_newline(&self, grid: Tensor<B, 3>) -> Tensor<B, 2> {
        let [rows, cols, c4] = grid.dims();
        let newline = self.sub_gn.clone().reshape([1, 1, c4]).expand([rows, 1, c4]);
        Tensor::cat(vec![grid, newline], 1).reshape([rows * (cols + 1), c4])
    }

    /// Image tokens for every image, concatenated in image order.
    ///
    /// # Shapes
    /// - `pixel_values`: `[Σ(1 + rows·cols), 3, 336, 336]`, per image the global view first, then
    ///   its tiles row-major (no zero-padding crops)
    /// - → `[Σ num_img_tokens, D]`
    pub fn forward(&self, pixel_values: Tensor<B, 4>, grids: &[CropGrid]) -> Tensor<B, 2> {
        let merged = Self::merge_2x2(self.img_processor.forward(pixel_values)); // [crops, 12, 12, 4C]
        let [_, h, _, c4] = merged.dims();
        let mut pieces = Vec::with_capacity(grids.len() * 3);
        let mut first = 0;
        for &[rows, cols] in grids {
            let global = merged.clone().narrow(0, first, 1).reshape([h, h, c4]);
            let tiles = merged
                .clone()
                .narrow(0, first + 1, rows * cols)
                .reshape([rows, cols, h, h, c4])
                .swap_dims(1, 2) // [rows, 12, cols, 12, 4C]
                .reshape([rows * h, cols * h, c4]);
            pieces.push(self.add_image_newline(tiles));
            pieces.push(self.glb_gn.clone().reshape([1, c4]));
            pieces.push(self.add_image_newline(global));
            first += 1 + rows * cols;
        }
        let tokens = Tensor::cat(pieces, 0);
        self.img_projection_2.forward(gelu(self.img_projection_0.forward(tokens)))
    }
}

/// The top-level model: checkpoint prefixes `model.` and `lm_head`.
#[derive(Debug, Clone)]
pub struct Phi3VForCausalLM<B: Backend> {
    /// The decoder stack (`model.embed_tokens`, `model.layers`, `model.norm`).
    pub model: Phi3Model<B>,
    /// `model.vision_embed_tokens`; `None` for text-only Phi-3.
    pub vision_embed_tokens: Option<Phi3ImageEmbedding<B>>,
    /// `[hidden, vocab]`.
    pub lm_head: Linear<B>,
    /// The configuration it was built from.
    pub config: Phi3VConfig,
}

impl<B: Kernels> Phi3VForCausalLM<B> {
    /// Builds the model from checkpoint tensors (strict: see [`Weights::finish`]).
    pub fn load(w: &Weights<B>, config: &Phi3VConfig) -> Result<Self> {
        let t = &config.text;
        // HF ties `vision_embed_tokens.wte` to `embed_tokens`; a checkpoint may store either name.
        let model = Phi3Model::load(w, "model", t, &["model.vision_embed_tokens.wte.weight"])?;
        let vision_embed_tokens = match &config.vision {
            Some(v) => Some(Phi3ImageEmbedding::load(w, "model.vision_embed_tokens", v, t.hidden_size)?),
            None => None,
        };
        let lm_head = if t.tie_word_embeddings {
            Linear {
                weight: model.embed_tokens.clone().transpose(),
                bias: None,
            }
        } else {
            Linear::load(w, "lm_head", t.hidden_size, t.vocab_size, false)?
        };
        // Non-persistent buffers some exports include.
        w.skip_buffers(&["rotary_emb.inv_freq", "rotary_emb.short_inv_freq", "rotary_emb.long_inv_freq"]);
        Ok(Self {
            model,
            vision_embed_tokens,
            lm_head,
            config: config.clone(),
        })
    }

    /// Float dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.dtype()
    }

    /// Device of the weights.
    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.device()
    }

    /// Encodes preprocessed images into projected image tokens (step 1).
    ///
    /// # Shapes
    /// `[Σ crops, 3, 336, 336]` → `[Σ num_img_tokens, hidden]`
    pub fn embed_images(&self, pixel_values: Tensor<B, 4>, grids: &[CropGrid]) -> Result<Tensor<B, 2>> {
        let vision = self
            .vision_embed_tokens
            .as_ref()
            .ok_or_else(|| Phi3vError::InvalidInput("this checkpoint has no vision tower".into()))?;
        let crops: usize = grids.iter().map(|[r, c]| 1 + r * c).sum();
        if pixel_values.dims()[0] != crops {
            return Err(Phi3vError::InvalidInput(format!(
                "{} crops given for crop grids {grids:?}, which need {crops}",
                pixel_values.dims()[0]
            )));
        }
        Ok(vision.forward(pixel_values, grids))
    }

    /// Token embeddings with image tokens written over the placeholder positions (step 2).
    /// Ids in (−10⁹, 0) are image slots, filled in order with the rows of `image_features`
    /// (spec §2.1); the value of the negative id is not used for matching, as in the reference.
    ///
    /// # Shapes
    /// - `input_ids`: `batch × seq` (every row the same length)
    /// - `image_features`: `[Σ image slots, hidden]`, slots in row-major (batch, position) order
    /// - → `[batch, seq, hidden]`
    pub fn embed_inputs(&self, input_ids: &[Vec<i64>], image_features: Option<Tensor<B, 2>>) -> Result<Tensor<B, 3>> {
        let batch = input_ids.len();
        let seq = input_ids.first().map_or(0, Vec::len);
        let vocab = self.config.text.vocab_size;
        let mut ids = Vec::with_capacity(batch * seq);
        let mut slots = Vec::new(); // flat (batch·seq) positions of image slots
        for (b, row) in input_ids.iter().enumerate() {
            if row.len() != seq {
                return Err(Phi3vError::InvalidInput("batch rows differ in length".into()));
            }
            for (p, &id) in row.iter().enumerate() {
                if id < 0 && id > -1_000_000_000 {
                    slots.push(b * seq + p);
                    ids.push(0);
                } else if id < 0 || id as usize >= vocab {
                    return Err(Phi3vError::TokenOutOfRange {
                        id,
                        position: p,
                        vocab_size: vocab,
                    });
                } else {
                    ids.push(id);
                }
            }
        }
        let device = self.device();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
        let embeds = self.model.embed(ids); // [batch, seq, hidden]
        let n_features = image_features.as_ref().map_or(0, |f| f.dims()[0]);
        if slots.len() != n_features {
            return Err(Phi3vError::InvalidInput(format!(
                "{} image placeholder positions but {n_features} image feature rows",
                slots.len()
            )));
        }
        let Some(features) = image_features else {
            return Ok(embeds);
        };
        let d = self.config.text.hidden_size;
        // One gather: row i of [text embeddings; image features] for every position.
        let total = batch * seq;
        let mut index: Vec<i64> = (0..total as i64).collect();
        for (k, &slot) in slots.iter().enumerate() {
            index[slot] = (total + k) as i64;
        }
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [total]), &device);
        let table = Tensor::cat(vec![embeds.reshape([total, d]), features.cast(self.dtype())], 0);
        Ok(table.select(0, index).reshape([batch, seq, d]))
    }

    /// Runs the decoder (step 3); see [`Phi3Model::forward`].
    pub fn forward(
        &self,
        inputs_embeds: Tensor<B, 3>,
        positions: &[Vec<usize>],
        regimes: &[RopeRegime],
        cache: &mut KvCache<B>,
        mask: Option<Tensor<B, 4, Bool>>,
        output_hidden_states: bool,
    ) -> DecoderOutput<B> {
        self.model
            .forward(inputs_embeds, positions, regimes, cache, mask, output_hidden_states)
    }

    /// Runs the decoder over a flat pass through a paged KV cache (step 3, serving); see
    /// [`Phi3Model::forward_paged`].
    pub fn forward_paged(&self, inputs_embeds: Tensor<B, 3>, cache: &mut PagedKvCache<B>, batch: &PagedBatch<B>) -> Tensor<B, 3> {
        self.model.forward_paged(inputs_embeds, cache, batch)
    }

    /// `lm_head` in the compute dtype, returned in f32 (step 4).
    ///
    /// # Shapes
    /// `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head.forward(hidden).cast(FloatDType::F32)
    }

    /// A fresh, empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.text.num_hidden_layers)
    }

    /// A zeroed paged KV cache of `slots` token slots for this model (see [`PagedKvCache`]).
    pub fn new_paged_cache(&self, slots: usize) -> PagedKvCache<B> {
        let t = &self.config.text;
        PagedKvCache::new(t.num_hidden_layers, slots, t.num_key_value_heads, t.head_dim(), &self.device(), self.dtype())
    }

    /// The LongRoPE regime for a pass whose largest position is `max_position`.
    pub fn rope_regime(&self, max_position: usize) -> RopeRegime {
        self.model.rotary_emb.regime(max_position)
    }
}
