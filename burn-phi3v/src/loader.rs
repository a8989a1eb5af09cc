//! Loading a Hugging Face model folder as it is: config, tokenizer, preprocessor and
//! checkpoint, onto a device in a compute dtype.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, backend::Backend};

use crate::config::{GenerationConfig, Phi3VConfig};
use crate::error::Result;
use crate::model::Phi3VForCausalLM;
use crate::processor::Phi3VProcessor;
use crate::weights::{Checkpoint, Weights};

/// A model folder loaded onto a device.
#[derive(Debug)]
pub struct LoadedModel<B: burn::tensor::backend::Backend> {
    /// The folder it came from.
    pub dir: PathBuf,
    /// The model.
    pub model: Phi3VForCausalLM<B>,
    /// Tokenizer and image processor.
    pub processor: Phi3VProcessor,
    /// `generation_config.json`, when the folder has one.
    pub generation_config: Option<GenerationConfig>,
}

/// Options of [`LoadedModel::from_pretrained`] and [`Pipeline::from_pretrained`](crate::Pipeline::from_pretrained).
///
/// ```
/// use burn_phi3v::LoadOptions;
/// use burn_phi3v::burn::tensor::DType;
///
/// let options = LoadOptions::default().with_dtype(DType::F32).with_num_crops(4);
/// assert_eq!(options.num_crops, Some(4));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Compute dtype of the weights and activations. `None`: the device's default when the
    /// device is named by a string (bf16 on CUDA, f32 elsewhere), f32 for a typed backend.
    pub dtype: Option<DType>,
    /// Overrides `num_crops` of `preprocessor_config.json` (the HD crops per image: 4 for
    /// single images in the model cards, 16 for multi-frame use).
    pub num_crops: Option<usize>,
}

impl LoadOptions {
    /// Sets the compute dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Sets the number of HD crops per image.
    pub fn with_num_crops(mut self, num_crops: usize) -> Self {
        self.num_crops = Some(num_crops);
        self
    }
}

impl<B: Backend> LoadedModel<B> {
    /// Loads the Hugging Face folder `dir` (`config.json`, `tokenizer.json`, the safetensors
    /// shards, …) onto `device` of the backend `B` with `options` (f32 unless
    /// [`LoadOptions::dtype`] says otherwise).
    ///
    /// ```
    /// use burn_phi3v::backends::Cpu;
    /// use burn_phi3v::{LoadOptions, LoadedModel};
    ///
    /// # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi3v-tiny");
    /// let m = LoadedModel::<Cpu>::from_pretrained(model_dir, &Default::default(), &LoadOptions::default().with_num_crops(2))?;
    /// assert_eq!(m.processor.image_config.num_crops, 2);
    /// # Ok::<(), burn_phi3v::Phi3vError>(())
    /// ```
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device, options: &LoadOptions) -> Result<Self> {
        let mut m = Self::load(dir.as_ref(), device, options.dtype.unwrap_or(DType::F32), None)?;
        if let Some(n) = options.num_crops {
            m.processor.image_config.num_crops = n;
        }
        Ok(m)
    }

    /// Loads `dir` onto `device` with weights in `dtype`. `progress(done, total)` is called
    /// after every tensor.
    pub fn load(dir: &Path, device: &B::Device, dtype: DType, progress: Option<&(dyn Fn(usize, usize) + Sync)>) -> Result<Self> {
        let config = Phi3VConfig::from_file(&dir.join("config.json"))?;
        let processor = Phi3VProcessor::from_dir(dir)?;
        let gen_path = dir.join("generation_config.json");
        let generation_config = if gen_path.is_file() {
            Some(GenerationConfig::from_file(&gen_path)?)
        } else {
            None
        };
        let ckpt = Checkpoint::open_dir(dir)?;
        let mut weights = Weights::<B>::new(&ckpt, device, dtype);
        if let Some(p) = progress {
            weights = weights.with_progress(p);
        }
        let model = Phi3VForCausalLM::load(&weights, &config)?;
        weights.finish()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            processor,
            generation_config,
        })
    }

    /// Token ids that end generation: config.json and generation_config.json EOS, the
    /// tokenizer's EOS, and `<|end|>` (spec §5.2: the real checkpoints disagree on EOS).
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids = self.model.config.text.eos_token_ids.clone();
        if let Some(g) = &self.generation_config {
            ids.extend(&g.eos_token_ids);
        }
        ids.extend(self.processor.tokenizer_eos);
        ids.extend(self.processor.token_id("<|end|>"));
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
