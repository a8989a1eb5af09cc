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

impl<B: Backend> LoadedModel<B> {
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
