//! The model behind the server: a checkpoint loaded on the device a string names, served by
//! burn-phi3v's [`Engine`] on its own thread. [`ModelService`] is not generic over the backend:
//! the backend-typed parts live inside [`burn_phi3v::with_device`]'s closure and are reached
//! through an [`EngineClient`] and boxed closures.
//!
//! [`RequestHandle::recv`] blocks, so each request gets a small thread that forwards its events
//! into a tokio channel ([`ModelService::start`]); a [`Generation`] dropped before its request
//! finished (a client that went away) cancels it in the engine.

use burn_phi3v::kernels::Kernels;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn_phi3v::burn::tensor::DType;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::engine::Canceller;
use burn_phi3v::{
    DeviceFn, Engine, EngineClient, EngineConfig, EngineStats, GenerationParams, LoadedModel, Phi3VProcessor, Phi3vError, ProcessedPrompt,
    RequestEvent, RequestHandle, with_device,
};
use tokio::sync::mpsc;

use crate::error::ServerError;

/// How to load the model and size the engine.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Hugging Face model folder.
    pub model_dir: PathBuf,
    /// Device string: `cpu`, `cuda[:N]`, `wgpu[:N]`, `vulkan[:N]`.
    pub device: String,
    /// Compute dtype name (`f32`, `f16`, `bf16`); the device's default when `None`.
    pub dtype: Option<String>,
    /// Overrides `num_crops` of `preprocessor_config.json`.
    pub num_crops: Option<usize>,
    /// Most images in one request (the image processor's `max_images`).
    pub max_images: Option<usize>,
    /// KV-cache pool and pass limits.
    pub engine: EngineConfig,
    /// Random weights of `model_dir`'s config instead of its checkpoint (load tests and
    /// benchmarks of real shapes without the weights; the answers are meaningless).
    pub random_weights: bool,
    /// Decode batch sizes (1 to this many sequences) and prefill chunks the engine runs
    /// before it serves, so that their kernels are compiled before the first requests
    /// (`Engine::warm_up`); 0: none.
    pub warm_up_rows: usize,
}

impl ModelOptions {
    /// `model_dir` on `device` with the default engine configuration.
    pub fn new(model_dir: impl Into<PathBuf>, device: impl Into<String>) -> Self {
        Self {
            model_dir: model_dir.into(),
            device: device.into(),
            dtype: None,
            num_crops: None,
            max_images: None,
            engine: EngineConfig::default(),
            random_weights: false,
            warm_up_rows: 0,
        }
    }
}

type StatsFn = Box<dyn Fn() -> EngineStats + Send + Sync>;
type StopFn = Box<dyn FnOnce() + Send>;

/// A model served by an engine thread, usable from any thread without knowing the backend.
pub struct ModelService {
    client: EngineClient,
    stats: StatsFn,
    stop: Mutex<Option<StopFn>>,
    /// Tokenizer and image processor (chat prompts are tokenised by the server's threads).
    pub processor: Phi3VProcessor,
    /// Token ids that end generation (the model's EOS and `<|end|>`).
    pub stop_token_ids: Vec<u32>,
    /// The model's context (`max_position_embeddings`).
    pub max_model_len: usize,
    /// Tokens the engine's KV-cache pool holds.
    pub capacity_tokens: usize,
    /// The device it runs on.
    pub device: DeviceInfo,
    /// The compute dtype's name.
    pub dtype: &'static str,
    /// The folder it was loaded from.
    pub model_dir: PathBuf,
}

impl std::fmt::Debug for ModelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelService")
            .field("model_dir", &self.model_dir)
            .field("device", &self.device.spec)
            .field("dtype", &self.dtype)
            .field("capacity_tokens", &self.capacity_tokens)
            .finish_non_exhaustive()
    }
}

/// Loads the model on backend `B` and spawns its engine (the body of [`ModelService::load`]).
struct SpawnEngine<'a>(&'a ModelOptions);

impl DeviceFn for SpawnEngine<'_> {
    type Output = Result<ModelService, Phi3vError>;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> Self::Output {
        let o = self.0;
        let mut loaded = if o.random_weights {
            LoadedModel::<B>::random(&o.model_dir, device, dtype)?
        } else {
            burn_phi3v::loader::check_device_memory(&o.model_dir, info, dtype)?;
            LoadedModel::<B>::load(&o.model_dir, device, dtype, None)?
        };
        if let Some(n) = o.num_crops {
            loaded.processor.image_config.num_crops = n;
        }
        if let Some(n) = o.max_images {
            loaded.processor.image_config.max_images = n;
        }
        let stop_token_ids = loaded.stop_token_ids();
        let max_model_len = loaded.model.config.text.max_position_embeddings;
        let processor = loaded.processor.clone();
        let mut engine = Engine::new(loaded.model, loaded.processor, o.engine.clone())?;
        if o.warm_up_rows > 0 {
            engine.warm_up(o.warm_up_rows)?;
        }
        let capacity_tokens = engine.capacity_tokens();
        let thread = engine.spawn();
        let client = thread.client();
        // The thread is shared by the stats getter and the stopper, which takes it to join it.
        let slot = Arc::new(Mutex::new(Some(thread)));
        let for_stats = slot.clone();
        let stats: StatsFn = Box::new(move || {
            for_stats
                .lock()
                .ok()
                .and_then(|t| t.as_ref().map(|t| t.stats()))
                .unwrap_or_default()
        });
        let stop: StopFn = Box::new(move || {
            let thread = slot.lock().ok().and_then(|mut t| t.take());
            if let Some(thread) = thread {
                drop(thread.join()); // finishes what it has taken in, then the engine is dropped
            }
        });
        Ok(ModelService {
            client,
            stats,
            stop: Mutex::new(Some(stop)),
            processor,
            stop_token_ids,
            max_model_len,
            capacity_tokens,
            device: info.clone(),
            dtype: dtype_name(dtype),
            model_dir: o.model_dir.clone(),
        })
    }
}

impl ModelService {
    /// Loads `options.model_dir` on `options.device` and starts its engine thread.
    pub fn load(options: &ModelOptions) -> Result<Self, ServerError> {
        if !Path::new(&options.model_dir).is_dir() {
            return Err(ServerError::ModelDir(options.model_dir.clone()));
        }
        Ok(with_device(&options.device, options.dtype.as_deref(), SpawnEngine(options))??)
    }

    /// The engine's counters as of its last pass.
    pub fn stats(&self) -> EngineStats {
        (self.stats)()
    }

    /// Queues a request in the engine (refused at once with a typed error when it could never
    /// run: context overflow, more than the KV-cache pool, invalid parameters).
    pub fn submit(&self, prompt: ProcessedPrompt, params: GenerationParams) -> Result<RequestHandle, Phi3vError> {
        self.client.submit(prompt, params)
    }

    /// Queues a request and forwards its events into a tokio channel from a thread of its own.
    pub fn start(&self, prompt: ProcessedPrompt, params: GenerationParams) -> Result<Generation, Phi3vError> {
        let handle = self.submit(prompt, params)?;
        let canceller = handle.canceller();
        let (tx, rx) = mpsc::unbounded_channel();
        let forward = move || {
            while let Some(event) = handle.recv() {
                let last = matches!(event, RequestEvent::Finished(_));
                if tx.send(event).is_err() {
                    // Nobody listens any more: stop the request, then wait for its end so that
                    // this thread ends with it.
                    handle.cancel();
                }
                if last {
                    break;
                }
            }
        };
        if let Err(e) = std::thread::Builder::new().name("phi3v-request".into()).stack_size(256 * 1024).spawn(forward) {
            canceller.cancel();
            return Err(Phi3vError::InvalidInput(format!("cannot start a thread for the request: {e}")));
        }
        Ok(Generation {
            events: rx,
            canceller,
            finished: false,
        })
    }

    /// Stops the engine thread after it finished every request it has taken in (idempotent).
    pub fn stop(&self) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some(stop) = stop {
            stop();
        }
    }
}

impl Drop for ModelService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running request seen from async code: its events, and a cancel on drop unless it finished.
#[derive(Debug)]
pub struct Generation {
    events: mpsc::UnboundedReceiver<RequestEvent>,
    canceller: Canceller,
    finished: bool,
}

impl Generation {
    /// The next event; `None` once the stream is over (or the engine went away).
    pub async fn next(&mut self) -> Option<RequestEvent> {
        let event = self.events.recv().await;
        if matches!(event, Some(RequestEvent::Finished(_)) | None) {
            self.finished = true;
        }
        event
    }

    /// Whether the request ended (its last event was read).
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Drop for Generation {
    /// A request dropped before its end (the client disconnected) is cancelled in the engine.
    fn drop(&mut self) {
        if !self.finished {
            self.canceller.cancel();
        }
    }
}
