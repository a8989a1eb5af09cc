//! Typed configuration, parsed once at load from a Hugging Face model folder:
//! `config.json` (Phi3VForCausalLM or text-only Phi3ForCausalLM), `preprocessor_config.json`
//! and, when present, `generation_config.json`.
//!
//! Reference: `configuration_phi3_v.py` of microsoft/Phi-3-vision-128k-instruct (spec §1).

use std::path::Path;

use serde_json::Value;

use crate::error::{Phi3vError, Result};
use crate::image_processor::{CLIP_MEAN, CLIP_STD, DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS, ImageProcessorConfig};

/// Rotary-embedding scaling as declared by `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// No scaling (Phi-3-mini-4k): plain RoPE with `rope_theta`.
    None,
    /// LongRoPE (`"su"` / `"longrope"`): per-frequency divisors, short below
    /// `original_max_position_embeddings`, long above; cos/sin scaled by
    /// `sqrt(1 + ln(s) / ln(original_max))` with `s = max / original_max`.
    LongRope {
        /// Divisors used when the sequence fits the original context (head_dim / 2 values).
        short_factor: Vec<f32>,
        /// Divisors used beyond it.
        long_factor: Vec<f32>,
    },
    /// YaRN as in Phi-3's remote code: the same factor switch, cos/sin scaled by `0.1 ln(s) + 1`.
    Yarn {
        /// Divisors used when the sequence fits the original context.
        short_factor: Vec<f32>,
        /// Divisors used beyond it.
        long_factor: Vec<f32>,
    },
}

/// The Phi-3 text decoder (spec §2).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Rows of `embed_tokens` and `lm_head`.
    pub vocab_size: usize,
    /// Model width (3072 for the real models).
    pub hidden_size: usize,
    /// MLP width (8192).
    pub intermediate_size: usize,
    /// Decoder layers (32).
    pub num_hidden_layers: usize,
    /// Query heads (32).
    pub num_attention_heads: usize,
    /// Key/value heads (32: no grouped-query attention in Phi-3-vision).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Context the short LongRoPE factors were trained for (4096).
    pub original_max_position_embeddings: usize,
    /// Rotary scaling.
    pub rope_scaling: RopeScaling,
    /// Whether `lm_head` shares `embed_tokens`'s weight.
    pub tie_word_embeddings: bool,
    /// `<s>`.
    pub bos_token_id: u32,
    /// EOS ids declared by config.json (2 for the real checkpoints).
    pub eos_token_ids: Vec<u32>,
}

impl TextConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The CLIP vision tower (spec §3.1).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Width of the tower.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Encoder layers stored in the checkpoint.
    pub num_hidden_layers: usize,
    /// Crop side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// CLIP ViT-L/14-336, which the real Phi-3-vision config.json does not describe: the remote
    /// code hard-codes it (`CLIP_VIT_LARGE_PATCH14_336_CONFIG` in `image_embedding_phi3_v.py`).
    pub const CLIP_VIT_L_14_336: VisionConfig = VisionConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_attention_heads: 16,
        num_hidden_layers: 24,
        image_size: 336,
        patch_size: 14,
        num_channels: 3,
        layer_norm_eps: 1e-5,
    };

    /// Patches per side (24).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// The image embedding: CLIP tower, feature layer, HD layout and projector (spec §3).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionEmbeddingConfig {
    /// The tower.
    pub clip: VisionConfig,
    /// Index into CLIP's hidden states (−2: the output of the second-to-last layer).
    pub layer_idx: i64,
    /// `img_processor.image_dim_out` (= CLIP width).
    pub image_dim_out: usize,
}

impl VisionEmbeddingConfig {
    /// Encoder layers that influence the output: `hidden_states[layer_idx]` needs the first
    /// `num_hidden_layers + 1 + layer_idx` layers (23 of 24 for the real model).
    pub fn layers_used(&self) -> usize {
        let n = self.clip.num_hidden_layers as i64 + 1 + self.layer_idx;
        n as usize
    }
}

/// A whole `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Phi3VConfig {
    /// `architectures[0]`.
    pub architecture: String,
    /// The decoder.
    pub text: TextConfig,
    /// The image embedding; `None` for text-only Phi-3 checkpoints.
    pub vision: Option<VisionEmbeddingConfig>,
}

/// `generation_config.json` (only what generation uses).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationConfig {
    /// EOS ids declared there.
    pub eos_token_ids: Vec<u32>,
}

/// A JSON object with the file name attached, so every error names file and field.
struct Fields<'a> {
    file: &'a str,
    prefix: String,
    value: &'a Value,
}

impl<'a> Fields<'a> {
    fn new(file: &'a str, value: &'a Value) -> Self {
        Self {
            file,
            prefix: String::new(),
            value,
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> Phi3vError {
        Phi3vError::MissingField {
            file: self.file.to_string(),
            field: self.path(key),
        }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> Phi3vError {
        Phi3vError::InvalidField {
            file: self.file.to_string(),
            field: self.path(key),
            reason: reason.into(),
        }
    }

    fn sub(&self, key: &str) -> Result<Option<Fields<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(Fields {
                file: self.file,
                prefix: self.path(key),
                value: v,
            })),
            Some(_) => Err(self.invalid(key, "expected an object")),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.invalid(key, format!("expected a positive integer, found {v}"))),
            },
        }
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected an integer, found {v}"))),
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.invalid(key, format!("expected a number, found {v}"))),
            },
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected true or false, found {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a string, found {v}"))),
        }
    }

    /// Reads a float list; values are parsed as f64 and rounded to f32 once, as the
    /// reference converts them to a float32 tensor (spec §1.2 note).
    fn f32_list(&self, key: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.invalid(key, "expected a list of numbers"))?;
        if arr.len() != len {
            return Err(self.invalid(
                key,
                format!("expected {len} values (head_dim / 2), found {}", arr.len()),
            ));
        }
        arr.iter()
            .map(|x| {
                x.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(|f| f as f32)
                    .ok_or_else(|| self.invalid(key, format!("{x} is not a positive number")))
            })
            .collect()
    }

    fn f32_triple(&self, key: &str) -> Result<Option<[f32; 3]>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.as_array().filter(|a| a.len() == 3);
        let vals: Option<Vec<f32>> =
            arr.map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect());
        match vals {
            Some(v) if v.len() == 3 => Ok(Some([v[0], v[1], v[2]])),
            _ => Err(self.invalid(key, "expected a list of 3 numbers")),
        }
    }

    /// An id or a list of ids (`eos_token_id` may be either).
    fn id_list(&self, key: &str) -> Result<Vec<u32>> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        let as_id = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
        if let Some(id) = as_id(v) {
            return Ok(vec![id]);
        }
        v.as_array()
            .and_then(|a| a.iter().map(as_id).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.invalid(key, "expected a token id or a list of ids"))
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Phi3vError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Phi3vError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Phi3VConfig {
    /// Reads `config.json` from a model folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = read_json(path)?;
        Self::from_value(&value, &path.display().to_string())
    }

    /// Parses a `config.json` already read; `file` names it in errors.
    pub fn from_value(value: &Value, file: &str) -> Result<Self> {
        let f = Fields::new(file, value);
        if !value.is_object() {
            return Err(f.invalid("(root)", "expected a JSON object"));
        }
        let architecture = match f.get("architectures").and_then(|a| a.get(0)) {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(f.invalid("architectures", "expected a list of strings")),
            None => "Phi3ForCausalLM".to_string(),
        };
        if !matches!(architecture.as_str(), "Phi3VForCausalLM" | "Phi3ForCausalLM") {
            return Err(f.invalid(
                "architectures",
                format!("`{architecture}` is not Phi3VForCausalLM or Phi3ForCausalLM"),
            ));
        }
        let text = Self::text_config(&f)?;
        let vision = Self::vision_config(&f, &text)?;
        if architecture == "Phi3VForCausalLM" && vision.is_none() {
            return Err(f.missing("img_processor"));
        }
        Ok(Self {
            architecture,
            text,
            vision,
        })
    }

    fn text_config(f: &Fields) -> Result<TextConfig> {
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        if hidden_size % num_attention_heads != 0 {
            return Err(f.invalid(
                "num_attention_heads",
                format!("{num_attention_heads} does not divide hidden_size {hidden_size}"),
            ));
        }
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(f.invalid(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = hidden_size / num_attention_heads;
        if head_dim % 2 != 0 {
            return Err(f.invalid("hidden_size", "head_dim must be even for rotary embeddings"));
        }
        if let Some(act) = f.opt_str("hidden_act")?
            && act != "silu"
        {
            return Err(f.invalid("hidden_act", format!("`{act}` is not supported (Phi-3 uses silu)")));
        }
        let max_position_embeddings = f.usize("max_position_embeddings")?;
        let original_max_position_embeddings = f
            .opt_usize("original_max_position_embeddings")?
            .unwrap_or(max_position_embeddings);
        let rope_scaling = match f.sub("rope_scaling")? {
            None => RopeScaling::None,
            Some(rs) => {
                let kind = rs
                    .opt_str("type")?
                    .or(rs.opt_str("rope_type")?)
                    .ok_or_else(|| rs.missing("type"))?;
                let half = head_dim / 2;
                match kind {
                    "su" | "longrope" => RopeScaling::LongRope {
                        short_factor: rs.f32_list("short_factor", half)?,
                        long_factor: rs.f32_list("long_factor", half)?,
                    },
                    "yarn" => RopeScaling::Yarn {
                        short_factor: rs.f32_list("short_factor", half)?,
                        long_factor: rs.f32_list("long_factor", half)?,
                    },
                    other => {
                        return Err(rs.invalid(
                            "type",
                            format!("unknown rope scaling type `{other}` (supported: su, longrope, yarn)"),
                        ));
                    }
                }
            }
        };
        Ok(TextConfig {
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            rms_norm_eps: f.f64("rms_norm_eps")?,
            rope_theta: f.opt_f64("rope_theta")?.unwrap_or(10000.0),
            max_position_embeddings,
            original_max_position_embeddings,
            rope_scaling,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: f.id_list("bos_token_id")?.first().copied().unwrap_or(1),
            eos_token_ids: f.id_list("eos_token_id")?,
        })
    }

    fn vision_config(f: &Fields, text: &TextConfig) -> Result<Option<VisionEmbeddingConfig>> {
        let Some(img) = f.sub("img_processor")? else {
            return Ok(None);
        };
        if let Some(embd) = f.sub("embd_layer")? {
            let expect = |key: &str, want: &str| -> Result<()> {
                match embd.opt_str(key)? {
                    Some(v) if v != want => Err(embd.invalid(key, format!("`{v}` is not supported (only `{want}`)"))),
                    _ => Ok(()),
                }
            };
            expect("embedding_cls", "image")?;
            expect("hd_transform_order", "sub_glb")?;
            expect("projection_cls", "mlp")?;
            for key in ["use_hd_transform", "with_learnable_separator"] {
                if embd.opt_bool(key)? == Some(false) {
                    return Err(embd.invalid(key, "only the HD transform with learnable separators is supported"));
                }
            }
        }
        if let Some(t) = img.opt_str("type_feature")?
            && t != "patch"
        {
            return Err(img.invalid("type_feature", format!("`{t}` is not supported (only `patch`)")));
        }
        let clip = match f.sub("vision_config")? {
            None => VisionConfig::CLIP_VIT_L_14_336,
            Some(v) => {
                if let Some(act) = v.opt_str("hidden_act")?
                    && act != "quick_gelu"
                {
                    return Err(v.invalid("hidden_act", format!("`{act}` is not supported (CLIP uses quick_gelu)")));
                }
                let d = VisionConfig::CLIP_VIT_L_14_336;
                VisionConfig {
                    hidden_size: v.usize("hidden_size")?,
                    intermediate_size: v.usize("intermediate_size")?,
                    num_attention_heads: v.usize("num_attention_heads")?,
                    num_hidden_layers: v.usize("num_hidden_layers")?,
                    image_size: v.opt_usize("image_size")?.unwrap_or(d.image_size),
                    patch_size: v.opt_usize("patch_size")?.unwrap_or(d.patch_size),
                    num_channels: v.opt_usize("num_channels")?.unwrap_or(d.num_channels),
                    layer_norm_eps: v.opt_f64("layer_norm_eps")?.unwrap_or(d.layer_norm_eps),
                }
            }
        };
        if clip.image_size != crate::image_processor::CROP_SIZE || clip.image_size % clip.patch_size != 0 {
            return Err(f.invalid(
                "vision_config.image_size",
                format!("the HD transform needs {0}x{0} crops divisible by the patch size", crate::image_processor::CROP_SIZE),
            ));
        }
        if clip.grid() % 2 != 0 || clip.hidden_size % clip.num_attention_heads != 0 {
            return Err(f.invalid("vision_config", "patch grid must be even and heads must divide the width"));
        }
        let image_dim_out = img.opt_usize("image_dim_out")?.unwrap_or(clip.hidden_size);
        if image_dim_out != clip.hidden_size {
            return Err(img.invalid(
                "image_dim_out",
                format!("{image_dim_out} differs from the CLIP width {}", clip.hidden_size),
            ));
        }
        let layer_idx = img.opt_i64("layer_idx")?.unwrap_or(-2);
        let n = clip.num_hidden_layers as i64;
        if !(-n - 1..0).contains(&layer_idx) && !(0..=n).contains(&layer_idx) {
            return Err(img.invalid("layer_idx", format!("{layer_idx} is outside the {n}-layer tower")));
        }
        // Normalise a non-negative index to its negative form: hidden_states has n + 1 entries.
        let layer_idx = if layer_idx >= 0 { layer_idx - n - 1 } else { layer_idx };
        let _ = text;
        Ok(Some(VisionEmbeddingConfig {
            clip,
            layer_idx,
            image_dim_out,
        }))
    }
}

/// Reads `preprocessor_config.json`; `num_crops` defaults to 1 like the reference class.
pub fn preprocessor_config_from_file(path: &Path) -> Result<ImageProcessorConfig> {
    let value = read_json(path)?;
    let file = path.display().to_string();
    let f = Fields::new(&file, &value);
    Ok(ImageProcessorConfig {
        num_crops: f.opt_usize("num_crops")?.unwrap_or(1),
        image_mean: f.f32_triple("image_mean")?.unwrap_or(CLIP_MEAN),
        image_std: f.f32_triple("image_std")?.unwrap_or(CLIP_STD),
        max_pixels: DEFAULT_MAX_PIXELS,
        max_images: DEFAULT_MAX_IMAGES,
    })
}

impl GenerationConfig {
    /// Reads `generation_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value = read_json(path)?;
        let file = path.display().to_string();
        let f = Fields::new(&file, &value);
        Ok(Self {
            eos_token_ids: f.id_list("eos_token_id")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["Phi3ForCausalLM"],
            "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
            "bos_token_id": 1, "eos_token_id": 32000, "hidden_act": "silu"
        })
    }

    #[test]
    fn phi3_mini_4k_has_no_scaling() {
        let c = Phi3VConfig::from_value(&base(), "config.json").unwrap();
        assert_eq!(c.text.rope_scaling, RopeScaling::None);
        assert_eq!(c.text.original_max_position_embeddings, 4096);
        assert_eq!(c.text.head_dim(), 96);
        assert!(c.vision.is_none());
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("intermediate_size");
        let e = Phi3VConfig::from_value(&v, "config.json").unwrap_err();
        assert!(matches!(&e, Phi3vError::MissingField { field, .. } if field == "intermediate_size"), "{e}");
    }

    #[test]
    fn unknown_rope_type_is_refused() {
        let mut v = base();
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let e = Phi3VConfig::from_value(&v, "config.json").unwrap_err();
        assert!(matches!(&e, Phi3vError::InvalidField { field, .. } if field == "rope_scaling.type"), "{e}");
        assert!(e.to_string().contains("dynamic"));
    }

    #[test]
    fn wrong_factor_length_is_refused() {
        let mut v = base();
        v["rope_scaling"] = json!({"type": "su", "short_factor": [1.0, 2.0], "long_factor": [1.0, 2.0]});
        let e = Phi3VConfig::from_value(&v, "config.json").unwrap_err();
        assert!(e.to_string().contains("rope_scaling.short_factor"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        let mut v = base();
        v["hidden_size"] = json!("big");
        let e = Phi3VConfig::from_value(&v, "config.json").unwrap_err();
        assert!(matches!(&e, Phi3vError::InvalidField { field, .. } if field == "hidden_size"), "{e}");
    }

    #[test]
    fn vision_defaults_to_clip_vit_l_14_336() {
        let mut v = base();
        v["architectures"] = json!(["Phi3VForCausalLM"]);
        v["img_processor"] = json!({"image_dim_out": 1024, "model_name": "openai/clip-vit-large-patch14-336", "name": "clip_vision_model", "num_img_tokens": 144});
        v["embd_layer"] = json!({"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp", "use_hd_transform": true, "with_learnable_separator": true});
        let c = Phi3VConfig::from_value(&v, "config.json").unwrap();
        let vis = c.vision.unwrap();
        assert_eq!(vis.clip, VisionConfig::CLIP_VIT_L_14_336);
        assert_eq!(vis.layers_used(), 23);
    }

    #[test]
    fn phi3v_without_img_processor_is_refused() {
        let mut v = base();
        v["architectures"] = json!(["Phi3VForCausalLM"]);
        assert!(matches!(
            Phi3VConfig::from_value(&v, "config.json"),
            Err(Phi3vError::MissingField { .. })
        ));
    }
}
