//! The front door: a model folder loaded on a device, with the backend type erased, answering
//! [`Request`]s — blocking ([`Pipeline::generate`]), as a streaming iterator
//! ([`Pipeline::stream`]) or as a static batch ([`Pipeline::batch`]).
//!
//! The device is a string (`cpu`, `cuda:0`, `wgpu`, `vulkan`; see [`device`](crate::device))
//! or a Burn backend type ([`Pipeline::from_pretrained_on`]). Below the front door are the
//! processor ([`Pipeline::processor`], [`Pipeline::prepare`]), the generation loop over
//! processed prompts ([`Pipeline::stream_processed`], [`Generator`]) and, for a known backend,
//! the typed model with its steps ([`Pipeline::loaded`]).

use crate::kernels::Kernels;
use std::any::Any;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use image::DynamicImage;

use crate::device::{DeviceFn, DeviceInfo, parse_dtype, with_device_dtype};
use crate::error::{Phi3vError, Result};
use crate::generation::{GenerationOutput, GenerationParams, Generator, SamplingParams, StreamEvent, generate};
use crate::image_processor::ImageError;
use crate::loader::{LoadOptions, LoadedModel, check_device_memory};
use crate::processor::{Message, Phi3VProcessor, ProcessedPrompt, apply_chat_template, with_image_tags};

/// An image given to a [`Request`]: a file, encoded bytes (PNG, JPEG, WebP, GIF) or a decoded
/// image. Files and bytes are decoded when the request is prepared, so a missing file or bytes
/// that are not an image are typed errors ([`Phi3vError::Image`]) of that call.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// An image file.
    Path(PathBuf),
    /// The bytes of an encoded image.
    Bytes(Vec<u8>),
    /// An image already decoded.
    Image(DynamicImage),
}

impl ImageInput {
    /// Decodes the image, refusing images of more than `max_pixels` pixels.
    pub fn decode(&self, max_pixels: u64) -> std::result::Result<DynamicImage, ImageError> {
        match self {
            Self::Path(p) => crate::image_processor::load_image(p, max_pixels),
            Self::Bytes(b) => crate::image_processor::decode_image(b, "image bytes", max_pixels),
            Self::Image(i) => Ok(i.clone()),
        }
    }
}

impl From<PathBuf> for ImageInput {
    fn from(p: PathBuf) -> Self {
        Self::Path(p)
    }
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        Self::Path(p.to_path_buf())
    }
}

impl From<Vec<u8>> for ImageInput {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

impl From<&[u8]> for ImageInput {
    fn from(b: &[u8]) -> Self {
        Self::Bytes(b.to_vec())
    }
}

impl From<DynamicImage> for ImageInput {
    fn from(i: DynamicImage) -> Self {
        Self::Image(i)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Prompt {
    User(String),
    Chat(Vec<Message>),
    Raw(String),
}

/// What to ask: a prompt, its images and the generation parameters.
///
/// ```
/// use burn_phi3v::Request;
///
/// let request = Request::new("What animal is this?")
///     .system("Answer in one word.")
///     .image_path("cat.png")
///     .max_new_tokens(16);
/// assert_eq!(
///     request.prompt(),
///     "<|system|>\nAnswer in one word.<|end|>\n<|user|>\n<|image_1|>\nWhat animal is this?<|end|>\n<|assistant|>\n"
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    prompt: Prompt,
    system: Option<String>,
    images: Vec<ImageInput>,
    /// Generation parameters (greedy, 128 new tokens by default). The model's stop tokens
    /// ([`Pipeline::stop_token_ids`]) are added to `stop_token_ids` when it runs.
    pub params: GenerationParams,
}

impl Request {
    /// A user message. Unless `text` places its own `<|image_k|>` tags, a tag per image is put
    /// before it (`<|image_1|>\n<|image_2|>\n…`), as the model cards do.
    pub fn new(text: impl Into<String>) -> Self {
        Self::with_prompt(Prompt::User(text.into()))
    }

    /// A whole conversation (`system`, `user`, `assistant` turns), answered as the next
    /// assistant turn. Image tags are taken as written: every image needs its `<|image_k|>`.
    pub fn chat(messages: impl Into<Vec<Message>>) -> Self {
        Self::with_prompt(Prompt::Chat(messages.into()))
    }

    /// A prompt already in the chat format (`<|user|>\n…<|end|>\n<|assistant|>\n`), tokenised
    /// as it is; [`system`](Self::system) does not apply.
    pub fn raw(prompt: impl Into<String>) -> Self {
        Self::with_prompt(Prompt::Raw(prompt.into()))
    }

    fn with_prompt(prompt: Prompt) -> Self {
        Self {
            prompt,
            system: None,
            images: Vec::new(),
            params: GenerationParams::default(),
        }
    }

    /// Puts a system message first.
    pub fn system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(text.into());
        self
    }

    /// Adds an image (a path, bytes or a decoded image: see [`ImageInput`]); images are
    /// numbered from 1 in the order they are added.
    pub fn image(mut self, image: impl Into<ImageInput>) -> Self {
        self.images.push(image.into());
        self
    }

    /// Adds an image file.
    pub fn image_path(self, path: impl AsRef<Path>) -> Self {
        self.image(path.as_ref())
    }

    /// Adds an encoded image (PNG, JPEG, WebP, GIF).
    pub fn image_bytes(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.image(ImageInput::Bytes(bytes.into()))
    }

    /// Sets the most tokens to generate.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.params.max_new_tokens = n;
        self
    }

    /// Samples instead of the default greedy choice.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.params.sampling = sampling;
        self
    }

    /// Adds a string that ends generation (the text is cut before it).
    pub fn stop(mut self, text: impl Into<String>) -> Self {
        self.params.stop_strings.push(text.into());
        self
    }

    /// Replaces every generation parameter.
    pub fn params(mut self, params: GenerationParams) -> Self {
        self.params = params;
        self
    }

    /// The images, in order.
    pub fn images(&self) -> &[ImageInput] {
        &self.images
    }

    /// The prompt text the model will see, chat template applied.
    pub fn prompt(&self) -> String {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(Message::new("system", s.clone()));
        }
        match &self.prompt {
            Prompt::Raw(p) => return p.clone(),
            Prompt::User(text) => messages.push(Message::new("user", with_image_tags(text, self.images.len()))),
            Prompt::Chat(m) => messages.extend(m.iter().cloned()),
        }
        apply_chat_template(&messages, true)
    }
}

/// One generated token of a [`TokenStream`], with the text it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedToken {
    /// Index of the sequence in the batch (0 for a single request).
    pub sequence: usize,
    /// The token id.
    pub token_id: u32,
    /// Text that became final with this token (may be empty: text is held back while it ends
    /// in an incomplete character or could begin a stop string).
    pub text: String,
}

/// A model on its device, the backend type erased.
trait DynModel: Send + Sync {
    fn processor(&self) -> &Phi3VProcessor;
    fn processor_mut(&mut self) -> &mut Phi3VProcessor;
    fn stop_token_ids(&self) -> Vec<u32>;
    fn generate(
        &self,
        prompts: &[&ProcessedPrompt],
        params: &[GenerationParams],
        on_event: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<Vec<GenerationOutput>>;
    fn start<'a>(&'a self, prompts: &[&ProcessedPrompt], params: &[GenerationParams]) -> Result<Box<dyn DynGenerator + 'a>>;
    fn as_any(&self) -> &dyn Any;
}

impl<B: Kernels> DynModel for LoadedModel<B> {
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
    ) -> Result<Vec<GenerationOutput>> {
        generate(&self.model, &self.processor, prompts, params, on_event)
    }
    fn start<'a>(&'a self, prompts: &[&ProcessedPrompt], params: &[GenerationParams]) -> Result<Box<dyn DynGenerator + 'a>> {
        Ok(Box::new(Generator::new(&self.model, &self.processor, prompts, params)?))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A [`Generator`], the backend type erased.
trait DynGenerator {
    fn step(&mut self, on_event: &mut dyn FnMut(StreamEvent<'_>)) -> Result<bool>;
    fn finish(self: Box<Self>) -> Result<Vec<GenerationOutput>>;
}

impl<B: Kernels> DynGenerator for Generator<'_, B> {
    fn step(&mut self, on_event: &mut dyn FnMut(StreamEvent<'_>)) -> Result<bool> {
        Generator::step(self, on_event)
    }
    fn finish(self: Box<Self>) -> Result<Vec<GenerationOutput>> {
        Generator::finish(*self)
    }
}

/// Generated tokens as they come: an iterator of [`StreamedToken`]s, one forward pass per
/// step, from [`Pipeline::stream`] or [`Pipeline::stream_processed`]. After the last token,
/// [`finish`](Self::finish) gives the outputs (text, timings, finish reason); dropping the
/// stream early stops generation.
pub struct TokenStream<'a> {
    generator: Option<Box<dyn DynGenerator + 'a>>,
    pending: VecDeque<StreamedToken>,
    outputs: Option<Vec<GenerationOutput>>,
}

impl std::fmt::Debug for TokenStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("running", &self.generator.is_some())
            .field("pending", &self.pending)
            .finish()
    }
}

impl<'a> TokenStream<'a> {
    fn new(generator: Box<dyn DynGenerator + 'a>) -> Self {
        Self {
            generator: Some(generator),
            pending: VecDeque::new(),
            outputs: None,
        }
    }

    /// Runs one step; the tokens it chose go to `pending`.
    fn step(&mut self) -> Result<()> {
        let Some(g) = self.generator.as_mut() else { return Ok(()) };
        let pending = &mut self.pending;
        let going = g.step(&mut |e| match pending.back_mut() {
            // The text a sequence held back, released when it ends: part of its last token.
            Some(last) if last.sequence == e.sequence && last.token_id == e.token_id => last.text.push_str(e.text_delta),
            _ => pending.push_back(StreamedToken {
                sequence: e.sequence,
                token_id: e.token_id,
                text: e.text_delta.to_string(),
            }),
        });
        match going {
            Ok(true) => Ok(()),
            Ok(false) => self.stop(),
            Err(e) => {
                self.generator = None;
                Err(e)
            }
        }
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(g) = self.generator.take() {
            self.outputs = Some(g.finish()?);
        }
        Ok(())
    }

    /// Runs generation to the end and returns every sequence's output, in request order.
    pub fn finish(mut self) -> Result<Vec<GenerationOutput>> {
        while self.generator.is_some() {
            self.step()?;
        }
        self.outputs.ok_or_else(|| Phi3vError::InvalidInput("generation failed earlier in this stream".into()))
    }

    /// Runs generation to the end and returns the output of a single request.
    pub fn into_output(self) -> Result<GenerationOutput> {
        self.finish()?
            .into_iter()
            .next()
            .ok_or_else(|| Phi3vError::InvalidInput("the stream had no sequence".into()))
    }

    /// Stops generation now; sequences that had not ended report
    /// [`FinishReason::Cancelled`](crate::FinishReason::Cancelled).
    pub fn cancel(mut self) -> Result<Vec<GenerationOutput>> {
        self.stop()?;
        self.outputs.ok_or_else(|| Phi3vError::InvalidInput("generation failed earlier in this stream".into()))
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<StreamedToken>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(t) = self.pending.pop_front() {
                return Some(Ok(t));
            }
            self.generator.as_ref()?;
            if let Err(e) = self.step() {
                return Some(Err(e));
            }
        }
    }
}

/// A model folder loaded on a device: tokenizer, image processor, model and generation, with
/// the backend type erased.
///
/// ```
/// use burn_phi3v::{LoadOptions, Pipeline, Request};
///
/// # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi35v-tiny");
/// # let image = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images/chelsea.png");
/// let pipeline = Pipeline::from_pretrained(model_dir, "cpu", &LoadOptions::default())?;
/// let request = Request::new("What is shown in this image?").image_path(image).max_new_tokens(8);
///
/// // Blocking.
/// let answer = pipeline.generate(&request)?;
/// // Streaming: the same tokens, as they come.
/// let mut text = String::new();
/// for token in pipeline.stream(&request)? {
///     text.push_str(&token?.text);
/// }
/// assert_eq!(text, answer.text);
/// // A batch: each row as it would be alone.
/// let both = pipeline.batch(&[request.clone(), Request::new("Hello!").max_new_tokens(4)])?;
/// assert_eq!(both[0].token_ids, answer.token_ids);
/// # Ok::<(), burn_phi3v::Phi3vError>(())
/// ```
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

struct Load<'a>(&'a Path, &'a LoadOptions);

impl DeviceFn for Load<'_> {
    type Output = Result<Pipeline>;
    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> Self::Output {
        check_device_memory(self.0, info, dtype)?;
        let m = LoadedModel::<B>::from_pretrained(self.0, device, &LoadOptions { dtype: Some(dtype), ..self.1.clone() })?;
        Ok(Pipeline {
            model: Box::new(m),
            device: info.clone(),
            dtype,
        })
    }
}

impl Pipeline {
    /// Loads the Hugging Face folder `dir` on the device a string names (`cpu`, `cuda`,
    /// `cuda:N`, `wgpu`, `wgpu:N`, `vulkan[:N]`), in `options.dtype` (default: the device's;
    /// it must be one the device supports).
    ///
    /// Errors: [`Phi3vError::Device`] for a device string that is unknown, not compiled in
    /// (see the crate's cargo features) or not present; loading errors name the file or tensor.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &str, options: &LoadOptions) -> Result<Self> {
        with_device_dtype(device, options.dtype, Load(dir.as_ref(), options))?
    }

    /// Loads `dir` on `device` of the Burn backend `B` (f32 unless `options.dtype` says
    /// otherwise).
    ///
    /// ```
    /// use burn_phi3v::backends::{Cpu, cpu};
    /// use burn_phi3v::{LoadOptions, Pipeline};
    ///
    /// # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi3v-tiny");
    /// let pipeline = Pipeline::from_pretrained_on::<Cpu>(model_dir, &cpu::device(), &LoadOptions::default())?;
    /// assert!(pipeline.loaded::<Cpu>().is_some());
    /// # Ok::<(), burn_phi3v::Phi3vError>(())
    /// ```
    pub fn from_pretrained_on<B: Kernels>(dir: impl AsRef<Path>, device: &B::Device, options: &LoadOptions) -> Result<Self> {
        Ok(Self::from_loaded(LoadedModel::<B>::from_pretrained(dir, device, options)?))
    }

    /// Wraps a model loaded on a backend of the caller's choice. Its [`device`](Self::device)
    /// is described from what Burn reports (`backend` is `"custom"`).
    pub fn from_loaded<B: Kernels>(model: LoadedModel<B>) -> Self {
        let device = model.model.device();
        let dtype = model.model.dtype();
        let info = DeviceInfo {
            spec: format!("{device:?}"),
            backend: "custom",
            index: 0,
            name: B::name(&device),
            total_memory: None,
            free_memory: None,
            dtypes: vec![dtype],
            default_dtype: dtype,
        };
        Self {
            model: Box::new(model),
            device: info,
            dtype,
        }
    }

    /// Loads `dir` on the device `device` names in the dtype `dtype` names (`f32`, `f16`,
    /// `bf16`; `None` = the device's default): [`from_pretrained`](Self::from_pretrained)
    /// with strings.
    pub fn load(dir: impl AsRef<Path>, device: &str, dtype: Option<&str>) -> Result<Self> {
        let dtype = dtype
            .map(|d| parse_dtype(d).ok_or_else(|| crate::device::DeviceError::UnknownDtype(d.to_string())))
            .transpose()?;
        Self::from_pretrained(dir, device, &LoadOptions { dtype, num_crops: None })
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

    /// Token ids that end generation (see [`LoadedModel::stop_token_ids`]).
    pub fn stop_token_ids(&self) -> Vec<u32> {
        self.model.stop_token_ids()
    }

    /// The typed model, when it runs on backend `B` (e.g. [`backends::Cpu`](crate::backends)
    /// for the device string `cpu`): its [`model`](LoadedModel::model) gives the steps
    /// (`embed_images`, `embed_inputs`, `forward`, `logits`, `new_cache`).
    pub fn loaded<B: Kernels>(&self) -> Option<&LoadedModel<B>> {
        self.model.as_any().downcast_ref()
    }

    /// Greedy generation parameters with this model's stop tokens and `max_new_tokens`.
    pub fn params(&self, max_new_tokens: usize) -> GenerationParams {
        GenerationParams {
            max_new_tokens,
            stop_token_ids: self.stop_token_ids(),
            ..Default::default()
        }
    }

    /// Tokenises a chat-formatted prompt with its decoded images.
    pub fn process(&self, prompt: &str, images: &[DynamicImage]) -> Result<ProcessedPrompt> {
        self.processor().process(prompt, images)
    }

    /// Decodes a request's images and tokenises its prompt; returns the processed prompt and
    /// the generation parameters with this model's stop tokens added.
    pub fn prepare(&self, request: &Request) -> Result<(ProcessedPrompt, GenerationParams)> {
        let max_pixels = self.processor().image_config.max_pixels;
        let images = request.images.iter().map(|i| i.decode(max_pixels)).collect::<std::result::Result<Vec<_>, _>>()?;
        let prompt = self.process(&request.prompt(), &images)?;
        let mut params = request.params.clone();
        params.stop_token_ids.extend(self.stop_token_ids());
        params.stop_token_ids.sort_unstable();
        params.stop_token_ids.dedup();
        Ok((prompt, params))
    }

    /// Answers a request and returns the whole answer.
    pub fn generate(&self, request: &Request) -> Result<GenerationOutput> {
        let (prompt, params) = self.prepare(request)?;
        let mut out = self.model.generate(&[&prompt], &[params], &mut |_| {})?;
        Ok(out.remove(0))
    }

    /// Answers a request token by token: the image tower runs here, the decoder as the
    /// iterator is advanced.
    ///
    /// ```
    /// use std::io::Write;
    /// use burn_phi3v::{LoadOptions, Pipeline, Request};
    ///
    /// # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi3v-tiny");
    /// let pipeline = Pipeline::from_pretrained(model_dir, "cpu", &LoadOptions::default())?;
    /// let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images/rocket.png"))?;
    /// let mut stream = pipeline.stream(&Request::new("Describe it.").image_bytes(png).max_new_tokens(6))?;
    /// for token in &mut stream {
    ///     print!("{}", token?.text);
    ///     std::io::stdout().flush()?;
    /// }
    /// let output = stream.into_output()?;
    /// assert_eq!(output.token_ids.len(), 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream(&self, request: &Request) -> Result<TokenStream<'_>> {
        let (prompt, params) = self.prepare(request)?;
        self.stream_processed(&[&prompt], &[params])
    }

    /// Answers several requests at once (a static batch: each row computes what it would
    /// alone). Outputs are in request order.
    pub fn batch(&self, requests: &[Request]) -> Result<Vec<GenerationOutput>> {
        let prepared = requests.iter().map(|r| self.prepare(r)).collect::<Result<Vec<_>>>()?;
        let prompts: Vec<&ProcessedPrompt> = prepared.iter().map(|(p, _)| p).collect();
        let params: Vec<GenerationParams> = prepared.iter().map(|(_, p)| p.clone()).collect();
        self.model.generate(&prompts, &params, &mut |_| {})
    }

    /// Streams a batch of processed prompts (`params`: one set per prompt, or one for all; add
    /// [`stop_token_ids`](Self::stop_token_ids) yourself).
    pub fn stream_processed(&self, prompts: &[&ProcessedPrompt], params: &[GenerationParams]) -> Result<TokenStream<'_>> {
        Ok(TokenStream::new(self.model.start(prompts, params)?))
    }

    /// Generates for processed prompts at once, `on_event` seeing every token (`params`: one
    /// set per prompt, or one for all).
    pub fn generate_batch(
        &self,
        prompts: &[&ProcessedPrompt],
        params: &[GenerationParams],
        mut on_event: impl FnMut(StreamEvent<'_>),
    ) -> Result<Vec<GenerationOutput>> {
        self.model.generate(prompts, params, &mut on_event)
    }

    /// Answers a conversation (chat template applied, tags as written), streaming text to
    /// `on_text`.
    pub fn chat(
        &self,
        messages: &[Message],
        images: &[DynamicImage],
        params: &GenerationParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerationOutput> {
        let prompt = self.process(&apply_chat_template(messages, true), images)?;
        let mut out = self.model.generate(&[&prompt], std::slice::from_ref(params), &mut |e| on_text(e.text_delta))?;
        Ok(out.remove(0))
    }
}

