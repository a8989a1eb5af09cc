//! A model loaded on a device chosen by string, with the backend type erased: the front door
//! for applications and examples that do not want to be generic over `B: Backend`.

use std::path::Path;

use burn::tensor::{DType, backend::Backend};
use burn_phi3v::device::DeviceInfo;
use burn_phi3v::{GenerationOutput, GenerationParams, LoadedModel, Message, Phi3VProcessor, Phi3vError, ProcessedPrompt, StreamEvent, apply_chat_template, generate};
use image::DynamicImage;

use crate::{DeviceError, DeviceFn, with_device};

/// Errors of [`Pipeline`]: choosing the device, or loading and running the model.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The device string or dtype cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Loading, preprocessing or generation failed.
    #[error(transparent)]
    Model(#[from] Phi3vError),
}

trait DynModel {
    fn processor(&self) -> &Phi3VProcessor;
    fn processor_mut(&mut self) -> &mut Phi3VProcessor;
    fn stop_token_ids(&self) -> Vec<u32>;
    fn generate(
        &self,
        prompts: &[&ProcessedPrompt],
        params: &[GenerationParams],
        on_event: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<Vec<GenerationOutput>, Phi3vError>;
}

impl<B: Backend> DynModel for LoadedModel<B> {
    fn processor(&self) -> &Phi3VProcessor {
        &self.processor
    }
    fn processor_mut(&mut self) -> &mut Phi3VProcessor {
        &mut self.processor
    }
    fn stop_token_ids(&self) -> Vec<u32> {
        LoadedModel::stop_token_ids(self)
    }
    fn generate(
        &self,
        prompts: &[&ProcessedPrompt],
        params: &[GenerationParams],
        on_event: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<Vec<GenerationOutput>, Phi3vError> {
        generate(&self.model, &self.processor, prompts, params, on_event)
    }
}

/// A model folder loaded on a device: tokenizer, image processor, model and generation.
pub struct Pipeline {
    model: Box<dyn DynModel>,
    device: DeviceInfo,
    dtype: DType,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("device", &self.device.spec).field("dtype", &self.dtype).finish()
    }
}

struct Load<'a>(&'a Path);

impl DeviceFn for Load<'_> {
    type Output = Result<(Box<dyn DynModel>, DeviceInfo, DType), Phi3vError>;
    fn run<B: Backend>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> Self::Output {
        let m = LoadedModel::<B>::load(self.0, device, dtype, None)?;
        Ok((Box::new(m), info.clone(), dtype))
    }
}

impl Pipeline {
    /// Loads the Hugging Face folder `dir` on `device` (`cpu`, `cuda:0`, `wgpu`, …) in `dtype`
    /// (`f32`, `f16`, `bf16`; `None` = the device's default).
    pub fn load(dir: impl AsRef<Path>, device: &str, dtype: Option<&str>) -> Result<Self, PipelineError> {
        let (model, device, dtype) = with_device(device, dtype, Load(dir.as_ref()))??;
        Ok(Self { model, device, dtype })
    }

    /// The device it runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Tokenizer and image processor.
    pub fn processor(&self) -> &Phi3VProcessor {
        self.model.processor()
    }

    /// Overrides the image processor's `num_crops`.
    pub fn set_num_crops(&mut self, num_crops: usize) {
        self.model.processor_mut().image_config.num_crops = num_crops;
    }

    /// Generation parameters with this model's stop tokens and `max_new_tokens`, greedy.
    pub fn params(&self, max_new_tokens: usize) -> GenerationParams {
        GenerationParams {
            max_new_tokens,
            stop_token_ids: self.model.stop_token_ids(),
            ..Default::default()
        }
    }

    /// Tokenises a chat-formatted prompt with its images.
    pub fn process(&self, prompt: &str, images: &[DynamicImage]) -> Result<ProcessedPrompt, PipelineError> {
        Ok(self.model.processor().process(prompt, images)?)
    }

    /// Answers a conversation (chat template applied), streaming text to `on_text`.
    pub fn chat(
        &self,
        messages: &[Message],
        images: &[DynamicImage],
        params: &GenerationParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerationOutput, PipelineError> {
        let prompt = self.process(&apply_chat_template(messages, true), images)?;
        let mut out = self.model.generate(&[&prompt], std::slice::from_ref(params), &mut |e| on_text(e.text_delta))?;
        Ok(out.remove(0))
    }

    /// Generates for several processed prompts at once (a static batch).
    pub fn generate_batch(
        &self,
        prompts: &[&ProcessedPrompt],
        params: &[GenerationParams],
        mut on_event: impl FnMut(StreamEvent<'_>),
    ) -> Result<Vec<GenerationOutput>, PipelineError> {
        Ok(self.model.generate(prompts, params, &mut on_event)?)
    }
}
