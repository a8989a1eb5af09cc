//! Loading a Hugging Face model folder as it is: config, tokenizer, preprocessor and
//! checkpoint, onto a device in a compute dtype.

use crate::kernels::Kernels;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, backend::Backend};

use crate::config::{GenerationConfig, Phi3VConfig};
use crate::device::DeviceInfo;
use crate::error::{Phi3vError, Result};
use crate::model::Phi3VForCausalLM;
use crate::processor::Phi3VProcessor;
use crate::weights::{Checkpoint, Weights};

/// A model folder loaded onto a device.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
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

impl<B: Kernels> LoadedModel<B> {
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
        let files = FolderFiles::read(dir)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        let mut weights = Weights::<B>::new(&ckpt, device, dtype);
        if let Some(p) = progress {
            weights = weights.with_progress(p);
        }
        files.with_weights(dir, weights)
    }

    /// The model of `dir`'s `config.json` with random weights in `dtype`, made on `device`
    /// without a host copy; tokenizer and image processor come from `dir`, checkpoint files
    /// are not read (optimum-benchmark's `no_weights` mode: real shapes for benchmarks and load
    /// tests without the weights). Its outputs are meaningless.
    pub fn random(dir: &Path, device: &B::Device, dtype: DType) -> Result<Self> {
        FolderFiles::read(dir)?.with_weights(dir, Weights::<B>::random(device, dtype))
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

/// Refuses the checkpoint in `dir` when its weights, in `dtype`, exceed the memory the device
/// reports (free memory where known, else total), with [`Phi3vError::InsufficientMemory`]: Burn 0.21's CubeCL backends panic on their server thread
/// when an allocation fails, so the check must come before loading. Devices that report no
/// memory figure (wgpu) are not checked. `Pipeline::from_pretrained` and `phi3v serve` call it;
/// call it before [`LoadedModel::load`] on a device that may be too small.
pub fn check_device_memory(dir: &Path, info: &DeviceInfo, dtype: DType) -> Result<()> {
    let (available, kind) = match (info.free_memory, info.total_memory) {
        (Some(free), _) => (free, "free"),
        (None, Some(total)) => (total, "in total"),
        (None, None) => return Ok(()),
    };
    let needed = Checkpoint::open_dir(dir)?.num_elements().saturating_mul(dtype.size() as u64);
    if needed > available {
        return Err(Phi3vError::InsufficientMemory {
            path: dir.to_path_buf(),
            device: info.spec.clone(),
            dtype: crate::device::dtype_name(dtype).to_string(),
            needed,
            available,
            kind,
        });
    }
    Ok(())
}

/// [`Phi3VForCausalLM::load`] with the weights in the device's persistent memory
/// (`Backend::memory_persistent_allocations`): on the CubeCL backends they then stay out of
/// the pools that every step's activations are carved from. With them in those pools, each of
/// a decode step's ~500 allocations scanned and merged hundreds of long-lived slices on
/// CubeCL's device thread (65 % of its time, the pace of a whole step on the H200,
/// docs/kernels.md, 2026-12-03). Temporaries of the load (e.g. the f32 draws of random
/// weights) are released afterwards.
pub fn load_model<B: Kernels>(weights: &Weights<'_, B>, config: &Phi3VConfig) -> Result<Phi3VForCausalLM<B>> {
    let device = weights.device().clone();
    let model = B::memory_persistent_allocations(&device, (weights, config), |(w, c)| Phi3VForCausalLM::load(w, c))?;
    let _ = B::sync(&device);
    B::memory_cleanup(&device);
    Ok(model)
}

/// What a model folder holds besides its weights.
struct FolderFiles {
    config: Phi3VConfig,
    processor: Phi3VProcessor,
    generation_config: Option<GenerationConfig>,
}

impl FolderFiles {
    fn read(dir: &Path) -> Result<Self> {
        let config = Phi3VConfig::from_file(&dir.join("config.json"))?;
        let processor = Phi3VProcessor::from_dir(dir)?;
        let gen_path = dir.join("generation_config.json");
        let generation_config = if gen_path.is_file() {
            Some(GenerationConfig::from_file(&gen_path)?)
        } else {
            None
        };
        Ok(Self {
            config,
            processor,
            generation_config,
        })
    }

    fn with_weights<B: Kernels>(self, dir: &Path, weights: Weights<'_, B>) -> Result<LoadedModel<B>> {
        let model = load_model(&weights, &self.config)?;
        weights.finish()?;
        Ok(LoadedModel {
            dir: dir.to_path_buf(),
            model,
            processor: self.processor,
            generation_config: self.generation_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(free: Option<u64>, total: Option<u64>) -> DeviceInfo {
        DeviceInfo {
            spec: "cuda:0".into(),
            backend: "cuda",
            index: 0,
            name: "test".into(),
            total_memory: total,
            free_memory: free,
            dtypes: vec![DType::F32],
            default_dtype: DType::F32,
        }
    }

    /// The pre-flight check refuses a checkpoint larger than the device's memory with a typed
    /// error naming folder, device and sizes; a device without memory figures is not checked.
    #[test]
    fn checkpoint_larger_than_device_memory_is_refused_before_loading() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/phi3v-tiny");
        let elements = Checkpoint::open_dir(&dir).expect("tiny checkpoint").num_elements();
        assert!(elements > 0);
        match check_device_memory(&dir, &info(Some(1000), Some(1 << 40)), DType::BF16) {
            Err(Phi3vError::InsufficientMemory { needed, available, kind, device, .. }) => {
                assert_eq!((needed, available, kind, device.as_str()), (2 * elements, 1000, "free", "cuda:0"));
            }
            other => panic!("expected InsufficientMemory, got {other:?}"),
        }
        let err = check_device_memory(&dir, &info(None, Some(1000)), DType::F32).unwrap_err();
        assert!(err.to_string().contains("phi3v-tiny") && err.to_string().contains("in total"), "{err}");
        check_device_memory(&dir, &info(Some(4 * elements), None), DType::F32).expect("exactly fits");
        check_device_memory(&dir, &info(None, None), DType::F32).expect("unknown memory is not checked");
    }
}
