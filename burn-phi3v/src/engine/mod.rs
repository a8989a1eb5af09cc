//! The serving engine: many requests in flight over one model, with continuous batching over a
//! paged KV cache (vLLM's design, composed from Burn ops).
//!
//! - **Requests** come in through an [`EngineClient`] (cloneable, usable from any thread) and
//!   answer with a [`RequestHandle`]: a stream of [`RequestEvent`]s ending in the
//!   [`GenerationOutput`], and a way to cancel.
//! - **Passes**: [`Engine::step`] runs one forward pass over a flat batch of tokens from every
//!   scheduled sequence — one token per decoding sequence plus prefill chunks of new or resumed
//!   ones — and samples the sequences whose known tokens are all cached. Drive it yourself
//!   ([`Engine::step`], [`Engine::run_until_idle`]) or on a thread of its own ([`Engine::spawn`]).
//! - **Scheduling** (`scheduler.rs`): first come first served, decodes before prefill chunks,
//!   a cap on tokens per pass, preemption of the youngest sequences when blocks run out; a
//!   preempted sequence is recomputed (prompt plus what it generated) when admitted again.
//! - **KV cache** (`block_pool.rs`, [`crate::model::paged`]): blocks of `block_size` token slots
//!   from a pool of a fixed number of blocks, a block table per sequence; attention reads the
//!   cache through the block tables.
//! - **Prefix caching** (on by default, [`EngineConfig::prefix_caching`]): full blocks stay
//!   registered under the hash of their tokens, images and LongRoPE regime after the pass that
//!   computed them, also after their request ends; a request whose prompt starts the same way
//!   (a shared system prompt, the same image asked about again, a preempted request resuming)
//!   takes them instead of computing them, and skips the vision tower when its images are all
//!   in the cached part.
//!
//! Each sequence computes what [`generate`](crate::generate) computes for it alone: sampling,
//! stop conditions and text streaming are the same code ([`crate::generation`]); a sequence
//! prefills with the LongRoPE factors of its whole known length, and one that crosses
//! `original_max_position_embeddings` while decoding is prefilled again with the long factors.

mod block_pool;
mod prefix;
mod scheduler;

use crate::kernels::Kernels;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use crate::config::TextConfig;
use crate::error::{Phi3vError, Result};
use crate::generation::{GenerationOutput, GenerationParams, Row, choose, embed_images};
use crate::image_processor::ProcessedImage;
use crate::model::{PagedBatch, PagedKvCache, PagedRow, Phi3VForCausalLM, RopeRegime};
use crate::processor::{Phi3VProcessor, ProcessedPrompt};
use block_pool::BlockPool;
use prefix::{BlockHash, ImageKeys, extend_block_hashes};
use scheduler::{Limits, Scheduler};

/// Sizes of the engine: the KV-cache pool and the limits of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV-cache block (16 by default, as in vLLM).
    pub block_size: usize,
    /// Blocks in the pool; it holds `num_blocks × block_size` tokens over all sequences. Size it
    /// from memory with [`EngineConfig::with_memory_budget`].
    pub num_blocks: usize,
    /// Most tokens in one pass (one per decoding sequence plus prefill chunks); a long prompt
    /// is prefilled in chunks of what is left, so the others' decode latency stays bounded.
    pub max_batched_tokens: usize,
    /// Most sequences running (holding blocks) at once.
    pub max_running: usize,
    /// Reuse the KV blocks of identical prompt prefixes (module documentation); `false`
    /// computes every prompt from its first token.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 1024,
            max_batched_tokens: 512,
            max_running: 256,
            prefix_caching: true,
        }
    }
}

impl EngineConfig {
    /// Bytes of KV cache one token takes: `2 (K and V) × layers × kv_heads × head_dim × dtype bytes`.
    pub fn kv_bytes_per_token(text: &TextConfig, dtype: DType) -> usize {
        2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim() * dtype.size()
    }

    /// This configuration with as many blocks as fit in `bytes` of KV cache for a model of
    /// `text` in `dtype`. Leave the steps room beside the pool: on the H100, with the pool of
    /// 128 sequences of 1152 tokens (58 GB) beside 8.3 GB of weights, the steps needed more
    /// than the 14 GB left (CubeCL takes memory in pages of up to 1/16 of the device); `phi3v
    /// bench` gives the pool its memory fraction less the weights less 20 % of the device.
    pub fn with_memory_budget(self, bytes: u64, text: &TextConfig, dtype: DType) -> Self {
        let per_block = (Self::kv_bytes_per_token(text, dtype) * self.block_size.max(1)) as u64;
        Self {
            num_blocks: (bytes / per_block.max(1)) as usize,
            ..self
        }
    }

    /// Tokens the pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }

    fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_batched_tokens", self.max_batched_tokens),
            ("max_running", self.max_running),
        ] {
            if value == 0 {
                return Err(Phi3vError::InvalidParameter {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// Counters and the state of the pool, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Forward passes run.
    pub passes: u64,
    /// Tokens through the decoder over all passes (prefill, decode and recompute).
    pub tokens_processed: u64,
    /// The largest pass, in tokens.
    pub max_pass_tokens: usize,
    /// Times a running sequence was preempted (its blocks freed, recomputed later).
    pub preemptions: u64,
    /// Sequences prefilled again because they crossed into LongRoPE's long regime.
    pub rope_recomputes: u64,
    /// Prompt tokens taken from the prefix cache instead of computed (also when a preempted
    /// sequence resumes).
    pub prefix_cached_tokens: u64,
    /// Requests finished normally.
    pub finished: u64,
    /// Requests cancelled.
    pub cancelled: u64,
    /// Sequences running now.
    pub running: usize,
    /// Sequences waiting to start or resume.
    pub waiting: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Blocks held now.
    pub used_blocks: usize,
    /// The most blocks ever held at once (never above `num_blocks`).
    pub peak_used_blocks: usize,
    /// The pool's capacity in tokens.
    pub capacity_tokens: usize,
    /// Blocks registered in the prefix cache (held by a sequence or kept for reuse).
    pub cached_blocks: usize,
}

/// What a request's stream carries.
#[derive(Debug)]
pub enum RequestEvent {
    /// A generated token and the text that became final with it (may be empty; at the end it
    /// includes whatever text was held back). The concatenated deltas equal the final text.
    Token {
        /// The token.
        token_id: u32,
        /// Text delta.
        text_delta: String,
        /// When the token was chosen (for latency measurements: the stream may be read later).
        at: Instant,
    },
    /// The request ended: its output (finish reason `Cancelled` when cancelled), or the error
    /// of the pass that failed under it. The last event.
    Finished(Result<GenerationOutput>),
}

/// A submitted request: its event stream and its cancel switch.
#[derive(Debug)]
pub struct RequestHandle {
    id: u64,
    events: Receiver<RequestEvent>,
    cancel: Canceller,
}

impl RequestHandle {
    /// The request's id (arrival order).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Asks the engine to stop the request; it finishes at the next pass with
    /// [`FinishReason::Cancelled`](crate::FinishReason::Cancelled) and its blocks are freed.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A cancel switch that can move to another thread.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    /// The next event, waiting for it; `None` once the stream is over. With an engine driven
    /// by [`Engine::step`] on this thread, drive it first: this blocks until an event exists.
    pub fn recv(&self) -> Option<RequestEvent> {
        self.events.recv().ok()
    }

    /// The next event if one is ready.
    pub fn try_recv(&self) -> Option<RequestEvent> {
        self.events.try_recv().ok()
    }

    /// Waits for the end of the request (skipping token events) and returns its output.
    /// [`Phi3vError::EngineStopped`] if the engine went away first.
    pub fn wait(self) -> Result<GenerationOutput> {
        while let Ok(event) = self.events.recv() {
            if let RequestEvent::Finished(out) = event {
                return out;
            }
        }
        Err(Phi3vError::EngineStopped)
    }
}

/// Cancels one request (see [`RequestHandle::cancel`]).
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Asks the engine to stop the request.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A request on its way to the engine.
struct Request {
    id: u64,
    row: Row,
    images: Vec<ProcessedImage>,
    /// What its image tokens stand for in block hashes (empty without prefix caching).
    image_keys: ImageKeys,
    events: Sender<RequestEvent>,
    cancel: Canceller,
    submitted: Instant,
}

/// What a client checks before a request is queued.
#[derive(Debug)]
struct Admission {
    next_id: AtomicU64,
    max_position: usize,
    capacity_tokens: usize,
    vocab_size: usize,
    has_vision: bool,
    prefix_caching: bool,
}

/// Submits requests to an engine; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct EngineClient {
    tx: Sender<Request>,
    admission: Arc<Admission>,
}

impl EngineClient {
    /// Queues a request. Refused at once with a typed error when it could never run:
    /// invalid parameters, a token outside the vocabulary, images that do not match their
    /// placeholders, more than the model's context ([`Phi3vError::ContextOverflow`]) or more
    /// than the whole KV-cache pool ([`Phi3vError::PoolTooSmall`]).
    pub fn submit(&self, prompt: ProcessedPrompt, params: GenerationParams) -> Result<RequestHandle> {
        let a = &self.admission;
        let row = Row::new(&prompt, params, a.max_position)?;
        let requested = prompt.input_ids.len() + row.params.max_new_tokens;
        if requested > a.capacity_tokens {
            return Err(Phi3vError::PoolTooSmall {
                requested,
                capacity: a.capacity_tokens,
            });
        }
        check_prompt(&prompt, a.vocab_size, a.has_vision)?;
        let (events, rx) = mpsc::channel();
        let cancel = Canceller(Arc::new(AtomicBool::new(false)));
        let id = a.next_id.fetch_add(1, Ordering::Relaxed);
        let image_keys = if a.prefix_caching { ImageKeys::new(&prompt.images) } else { ImageKeys::default() };
        let request = Request {
            id,
            row,
            images: prompt.images,
            image_keys,
            events,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        self.tx.send(request).map_err(|_| Phi3vError::EngineStopped)?;
        Ok(RequestHandle { id, events: rx, cancel })
    }
}

/// Refuses what would fail a whole pass later: ids outside the vocabulary, image placeholders
/// that the images do not fill, images without a vision tower, malformed pixel data.
fn check_prompt(prompt: &ProcessedPrompt, vocab_size: usize, has_vision: bool) -> Result<()> {
    for (position, &id) in prompt.input_ids.iter().enumerate() {
        if id <= -1_000_000_000 || id >= vocab_size as i64 {
            return Err(Phi3vError::TokenOutOfRange { id, position, vocab_size });
        }
    }
    let slots = prompt.input_ids.iter().filter(|&&i| i < 0).count();
    let image_tokens: usize = prompt.images.iter().map(|i| i.num_img_tokens).sum();
    if slots != image_tokens {
        return Err(Phi3vError::InvalidInput(format!(
            "{slots} image placeholder positions but the images make {image_tokens} image tokens"
        )));
    }
    if !prompt.images.is_empty() && !has_vision {
        return Err(Phi3vError::InvalidInput("this checkpoint has no vision tower".into()));
    }
    for (k, image) in prompt.images.iter().enumerate() {
        let [rows, cols] = image.crop_grid;
        if image.num_used_crops != 1 + rows * cols || image.pixel_values.len() != image.num_used_crops * ProcessedImage::CROP_LEN {
            return Err(Phi3vError::InvalidInput(format!("image {} has malformed pixel data", k + 1)));
        }
    }
    Ok(())
}

/// Most image crops one vision-tower launch of the engine takes (4 images of 16 crops + the
/// global view): several requests' images share a launch up to it.
const VISION_BATCH_CROPS: usize = 68;

/// A request being served.
struct Sequence<B: Backend> {
    req: Request,
    /// `[num image tokens, hidden]`, computed at its first prefill chunk and kept (also across
    /// preemption) until it finishes.
    features: Option<Tensor<B, 2>>,
    /// The LongRoPE regime its cached keys were rotated with.
    regime: RopeRegime,
    /// The regime its block hashes assume (that of a prefill of its whole known length).
    hash_regime: RopeRegime,
}

/// Continuous batching over a paged KV cache for one model (see the module documentation).
///
/// ```
/// use burn_phi3v::backends::{Cpu, cpu};
/// use burn_phi3v::{Engine, EngineConfig, GenerationParams, LoadOptions, LoadedModel};
///
/// # let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi3v-tiny");
/// let m = LoadedModel::<Cpu>::from_pretrained(model_dir, &cpu::device(), &LoadOptions::default())?;
/// let prompt = m.processor.process("<|user|>\nHello!<|end|>\n<|assistant|>\n", &[])?;
/// let params = GenerationParams { max_new_tokens: 4, ..Default::default() };
/// let mut engine = Engine::new(m.model.clone(), m.processor.clone(), EngineConfig::default())?;
/// // As many requests as you like; `engine.client()` submits from other threads.
/// let first = engine.submit(prompt.clone(), params.clone())?;
/// let second = engine.submit(prompt, params)?;
/// engine.run_until_idle()?; // or `engine.spawn()`: a thread of its own
/// assert_eq!(first.wait()?.token_ids, second.wait()?.token_ids);
/// # Ok::<(), burn_phi3v::Phi3vError>(())
/// ```
pub struct Engine<B: Backend> {
    model: Phi3VForCausalLM<B>,
    processor: Phi3VProcessor,
    config: EngineConfig,
    cache: PagedKvCache<B>,
    sched: Scheduler,
    seqs: BTreeMap<u64, Sequence<B>>,
    inbox: Receiver<Request>,
    client: EngineClient,
    stats: EngineStats,
}

impl<B: Kernels> std::fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl<B: Kernels> Engine<B> {
    /// An engine over `model`, allocating its KV-cache pool (`config.num_blocks` blocks) on the
    /// model's device in the model's dtype.
    pub fn new(model: Phi3VForCausalLM<B>, processor: Phi3VProcessor, config: EngineConfig) -> Result<Self> {
        config.validate()?;
        let cache = model.new_paged_cache(config.capacity_tokens());
        let sched = Scheduler::new(
            BlockPool::new(config.num_blocks, config.block_size),
            Limits {
                max_batched_tokens: config.max_batched_tokens,
                max_running: config.max_running,
            },
        );
        let (tx, inbox) = mpsc::channel();
        let text = &model.config.text;
        let admission = Arc::new(Admission {
            next_id: AtomicU64::new(0),
            max_position: text.max_position_embeddings,
            capacity_tokens: config.capacity_tokens(),
            vocab_size: text.vocab_size,
            has_vision: model.vision_embed_tokens.is_some(),
            prefix_caching: config.prefix_caching,
        });
        Ok(Self {
            model,
            processor,
            config,
            cache,
            sched,
            seqs: BTreeMap::new(),
            inbox,
            client: EngineClient { tx, admission },
            stats: EngineStats::default(),
        })
    }

    /// A client to submit requests with, from any thread.
    pub fn client(&self) -> EngineClient {
        self.client.clone()
    }

    /// Queues a request (see [`EngineClient::submit`]).
    pub fn submit(&self, prompt: ProcessedPrompt, params: GenerationParams) -> Result<RequestHandle> {
        self.client.submit(prompt, params)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Tokens the KV-cache pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.config.capacity_tokens()
    }

    /// Counters and the state of the pool.
    pub fn stats(&self) -> EngineStats {
        let (running, waiting) = self.sched.counts();
        let pool = &self.sched.pool;
        EngineStats {
            preemptions: self.sched.preemptions,
            prefix_cached_tokens: self.sched.cached_tokens,
            cached_blocks: pool.cached_blocks(),
            running,
            waiting,
            block_size: pool.block_size(),
            num_blocks: pool.num_blocks(),
            used_blocks: pool.used_blocks(),
            peak_used_blocks: pool.peak_used_blocks(),
            capacity_tokens: pool.capacity_tokens(),
            ..self.stats.clone()
        }
    }

    /// Takes in submitted requests, ends cancelled ones, and runs one pass if any sequence is
    /// running or waiting. Returns whether there was work. A failing pass fails every request
    /// in flight (their streams end with [`Phi3vError::EngineStep`]) and returns the error.
    pub fn step(&mut self) -> Result<bool> {
        while let Ok(req) = self.inbox.try_recv() {
            self.enqueue(req);
        }
        let cancelled: Vec<u64> = self.seqs.iter().filter(|(_, s)| s.req.cancel.0.load(Ordering::Relaxed)).map(|(&id, _)| id).collect();
        for id in cancelled {
            self.finish(id); // unfinished: its output says Cancelled
        }
        if self.sched.is_idle() {
            return Ok(false);
        }
        if let Err(e) = self.pass() {
            let reason = e.to_string();
            for id in self.seqs.keys().copied().collect::<Vec<_>>() {
                self.sched.remove(id);
                if let Some(seq) = self.seqs.remove(&id) {
                    // Each request's error names it, and the pass's cause.
                    let _ = seq.req.events.send(RequestEvent::Finished(Err(Phi3vError::EngineStep(format!("request {id}: {reason}")))));
                }
            }
            return Err(e);
        }
        Ok(true)
    }

    /// Runs the pass shapes a serving load meets, before any request needs them, so that a GPU
    /// backend compiles (and autotunes) their kernels now rather than in the middle of the
    /// first requests that meet them (CubeCL compiles a kernel on its first use, and the
    /// decode-step kernels are specialised by row count: without this, requests wait seconds
    /// at new batch sizes; vLLM captures its CUDA graphs at start-up for the same reason).
    /// Passes: a prefill of `n` one-token prompts then a decode step of `n` rows for every
    /// `n` in `1..=rows` (at most `max_running`), and a prefill chunk of every power of two
    /// from 16 tokens to `max_batched_tokens`. Call it before submitting requests (with requests
    /// in flight it returns [`Phi3vError::InvalidInput`] and leaves them queued); the pool is
    /// empty again after it and the counters start from zero. Returns the passes it ran.
    pub fn warm_up(&mut self, rows: usize) -> Result<usize> {
        // Requests already submitted stay queued (nothing a user gave is lost), unrun.
        while let Ok(req) = self.inbox.try_recv() {
            self.enqueue(req);
        }
        if !self.sched.is_idle() {
            let (running, waiting) = self.sched.counts();
            return Err(Phi3vError::InvalidInput(format!("warm-up needs an idle engine ({running} running, {waiting} waiting); call it before submitting requests")));
        }
        let params = GenerationParams { max_new_tokens: 2, min_new_tokens: 2, stop_token_ids: Vec::new(), ..Default::default() };
        let prompt = |len: usize| ProcessedPrompt { input_ids: vec![1; len], images: Vec::new() };
        let mut shapes: Vec<Vec<usize>> = (1..=rows.min(self.config.max_running)).map(|n| vec![1; n]).collect();
        let chunks = std::iter::successors(Some(16usize), |&l| Some(l * 2)).take_while(|&l| l <= self.config.max_batched_tokens);
        shapes.extend(chunks.filter(|&l| l + 2 <= self.capacity_tokens()).map(|l| vec![l]));
        let mut passes = 0;
        for lengths in shapes {
            let handles = lengths.iter().map(|&l| self.submit(prompt(l), params.clone())).collect::<Result<Vec<_>>>()?;
            while self.step()? {
                passes += 1;
            }
            for h in handles {
                h.wait()?;
            }
        }
        // Counters start from zero: the engine's, the scheduler's preemptions, the pool's peak.
        self.stats = EngineStats::default();
        self.sched.preemptions = 0;
        self.sched.cached_tokens = 0;
        self.sched.pool.clear_cached();
        self.sched.pool.reset_peak();
        Ok(passes)
    }

    /// Steps until nothing is running, waiting or submitted.
    pub fn run_until_idle(&mut self) -> Result<()> {
        while self.step()? {}
        Ok(())
    }

    /// Runs the engine on a thread of its own: it steps while there is work and sleeps on the
    /// inbox when there is none. Submit through [`EngineThread::client`].
    pub fn spawn(self) -> EngineThread<B> {
        let client = self.client();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(self.stats()));
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let mut engine = self;
        let handle = std::thread::Builder::new()
            .name("phi3v-engine".into())
            .spawn(move || {
                engine.serve(&stop2, &stats2);
                engine
            })
            .expect("the OS refused a thread for the engine");
        EngineThread {
            client,
            stop,
            stats,
            handle,
        }
    }

    /// The loop of [`Engine::spawn`]: step while busy; when idle, wait for a request or stop.
    fn serve(&mut self, stop: &AtomicBool, stats: &Mutex<EngineStats>) {
        loop {
            // A failed pass has already failed its requests; keep serving new ones.
            let busy = self.step().unwrap_or(true);
            if let Ok(mut s) = stats.lock() {
                *s = self.stats();
            }
            if busy {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match self.inbox.recv_timeout(Duration::from_millis(10)) {
                Ok(req) => self.enqueue(req),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
    }

    fn enqueue(&mut self, req: Request) {
        let regime = self.model.rope_regime(req.row.ids.len() - 1);
        let (id, len) = (req.id, req.row.ids.len());
        let seq = Sequence {
            req,
            features: None,
            regime,
            hash_regime: regime,
        };
        let hashes = self.block_hashes(&seq, Vec::new());
        self.sched.add(id, len, hashes);
        self.seqs.insert(id, seq);
    }

    /// `hashes` (of `seq`'s first blocks) extended to every full block of its known tokens;
    /// none without prefix caching.
    fn block_hashes(&self, seq: &Sequence<B>, mut hashes: Vec<BlockHash>) -> Vec<BlockHash> {
        if self.config.prefix_caching {
            extend_block_hashes(&mut hashes, &seq.req.row.ids, &seq.req.image_keys, seq.hash_regime, self.config.block_size);
        }
        hashes
    }

    /// Runs the vision tower for the sequences of `plan` whose chunk has image tokens and whose
    /// features are not computed yet (never for images all inside a cached prefix): their
    /// images together, in launches of at most [`VISION_BATCH_CROPS`] crops (more images per
    /// launch use the GPU better; the cap bounds the activations). Features are kept until the
    /// sequence ends.
    fn encode_images(&mut self, plan: &[scheduler::Scheduled]) -> Result<()> {
        let needed: Vec<u64> = plan
            .iter()
            .filter(|p| {
                let seq = &self.seqs[&p.id];
                seq.features.is_none() && seq.req.row.ids[p.start..p.start + p.len].iter().any(|&i| i < 0)
            })
            .map(|p| p.id)
            .collect();
        let crops = |id: &u64| self.seqs[id].req.images.iter().map(|i| i.num_used_crops).sum::<usize>();
        let mut groups: Vec<Vec<u64>> = Vec::new();
        let mut in_group = 0;
        for id in needed {
            let c = crops(&id);
            match groups.last_mut() {
                Some(group) if in_group + c <= VISION_BATCH_CROPS => group.push(id),
                _ => {
                    groups.push(vec![id]);
                    in_group = 0;
                }
            }
            in_group += c;
        }
        for group in groups {
            let images: Vec<&ProcessedImage> = group.iter().flat_map(|id| self.seqs[id].req.images.iter()).collect();
            let Some(features) = embed_images(&self.model, &images)? else { continue };
            let mut at = 0;
            for id in group {
                let seq = self.seqs.get_mut(&id).expect("planned sequences are served");
                let n: usize = seq.req.images.iter().map(|i| i.num_img_tokens).sum();
                seq.features = Some(features.clone().narrow(0, at, n));
                at += n;
            }
        }
        Ok(())
    }

    /// Recomputes `id`'s block hashes for the regime of a prefill of its whole known length,
    /// if that changed (it holds no blocks: waiting, or just restarted).
    fn rehash(&mut self, id: u64) {
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        let regime = self.model.rope_regime(seq.req.row.ids.len() - 1);
        if regime != seq.hash_regime {
            seq.hash_regime = regime;
            let hashes = self.block_hashes(&self.seqs[&id], Vec::new());
            self.sched.set_hashes(id, hashes);
        }
    }

    /// Frees `id`'s blocks and ends its stream with its output (`Cancelled` if unfinished).
    fn finish(&mut self, id: u64) {
        self.sched.remove(id);
        let Some(mut seq) = self.seqs.remove(&id) else { return };
        if seq.req.row.finished.is_some() {
            self.stats.finished += 1;
        } else {
            self.stats.cancelled += 1;
        }
        let out = seq.req.row.output(seq.req.submitted, &self.processor);
        let _ = seq.req.events.send(RequestEvent::Finished(out)); // the handle may be gone
    }

    /// One forward pass over what the scheduler plans, then sampling.
    fn pass(&mut self) -> Result<()> {
        // LongRoPE: a decoding sequence whose next position is in another regime than its
        // cache is prefilled again (as `generate` does).
        let restart: Vec<u64> = self
            .sched
            .running_iter()
            .filter(|(id, s)| s.computed > 0 && s.computed + 1 == s.len && self.model.rope_regime(s.len - 1) != self.seqs[id].regime)
            .map(|(id, _)| id)
            .collect();
        for id in restart {
            self.sched.restart(id);
            self.rehash(id);
            self.stats.rope_recomputes += 1;
        }
        // Preempted sequences grew while they ran: their prefill may be in another regime.
        for id in self.sched.waiting_ids() {
            self.rehash(id);
        }
        let mut plan = self.sched.schedule();
        if plan.is_empty() {
            // Unreachable while every admitted request fits the pool alone (checked at submit):
            // the oldest sequence can always take every block. Fail rather than spin.
            return Err(Phi3vError::EngineStep("no sequence could be scheduled".into()));
        }
        // Decoding sequences first: they form the first attention group (see model::paged).
        plan.sort_by_key(|p| p.len > 1);

        // A (re)started prefill, from position 0 or past a cached prefix, uses the regime of
        // the whole known sequence.
        for p in plan.iter().filter(|p| p.fresh || p.start == 0) {
            let seq = self.seqs.get_mut(&p.id).expect("scheduled sequences are served");
            seq.regime = self.model.rope_regime(seq.req.row.ids.len() - 1);
        }

        self.encode_images(&plan)?;

        let tokens: usize = plan.iter().map(|p| p.len).sum();
        let mut ids = Vec::with_capacity(tokens);
        let mut features = Vec::new();
        let mut sample = Vec::new(); // (id, index of its last token in the pass)
        for p in &plan {
            let seq = self.seqs.get_mut(&p.id).expect("scheduled sequences are served");
            let known = &seq.req.row.ids;
            let chunk = &known[p.start..p.start + p.len];
            let slots = chunk.iter().filter(|&&i| i < 0).count();
            if slots > 0 {
                let before = known[..p.start].iter().filter(|&&i| i < 0).count();
                let f = seq.features.clone().ok_or_else(|| Phi3vError::InvalidInput(format!("request {}: image features missing", p.id)))?;
                features.push(f.narrow(0, before, slots));
            }
            let known = &seq.req.row.ids;
            let chunk = &known[p.start..p.start + p.len];
            ids.extend_from_slice(chunk);
            if p.start + p.len == known.len() {
                sample.push((p.id, ids.len() - 1));
            }
        }
        let device = self.model.device();
        let rows: Vec<PagedRow<'_>> = plan
            .iter()
            .map(|p| PagedRow {
                block_table: &self.sched.running(p.id).expect("scheduled sequences run").blocks,
                cached: p.start,
                new: p.len,
                regime: self.seqs[&p.id].regime,
            })
            .collect();
        let batch = PagedBatch::new(&rows, self.config.block_size, &device);
        let features = (!features.is_empty()).then(|| Tensor::cat(features, 0));
        let embeds = self.model.embed_inputs(&[ids], features)?;
        let hidden = self.model.forward_paged(embeds, &mut self.cache, &batch); // [1, tokens, hidden]
        self.stats.passes += 1;
        self.stats.tokens_processed += tokens as u64;
        self.stats.max_pass_tokens = self.stats.max_pass_tokens.max(tokens);
        // The full blocks this pass completed can serve other prompts from now on.
        for p in &plan {
            self.sched.commit(p.id);
        }
        if sample.is_empty() {
            return Ok(());
        }

        // Logits only where a token is chosen, in id order (the order of `self.seqs`).
        sample.sort_unstable();
        let r = sample.len();
        let last: Vec<i64> = sample.iter().map(|&(_, t)| t as i64).collect();
        let last = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [r]), &device);
        let logits = self.model.logits(hidden.select(1, last)).reshape([r, self.model.config.text.vocab_size]);
        let mut rows: Vec<&mut Row> = self
            .seqs
            .iter_mut()
            .filter(|(id, _)| sample.binary_search_by_key(*id, |&(i, _)| i).is_ok())
            .map(|(_, s)| &mut s.req.row)
            .collect();
        let next = choose(&mut rows, logits)?;
        let chosen_at = Instant::now();
        for (&(id, _), token) in sample.iter().zip(next) {
            let Some(token) = token else { continue };
            let seq = self.seqs.get_mut(&id).expect("sampled sequences are served");
            let (mut text_delta, tail) = seq.req.row.accept(token, &self.processor)?;
            self.sched.append(id);
            if self.config.prefix_caching && seq.req.row.ids.len().is_multiple_of(self.config.block_size) {
                let hashes = self.sched.get(id).map(|s| s.hashes.clone()).unwrap_or_default();
                let hashes = self.block_hashes(&self.seqs[&id], hashes);
                self.sched.set_hashes(id, hashes);
            }
            let seq = self.seqs.get_mut(&id).expect("sampled sequences are served");
            let done = tail.is_some();
            text_delta.push_str(&tail.unwrap_or_default());
            let _ = seq.req.events.send(RequestEvent::Token {
                token_id: token,
                text_delta,
                at: chosen_at,
            });
            if done {
                self.finish(id);
            }
        }
        Ok(())
    }
}

/// An engine running on its own thread (see [`Engine::spawn`]).
#[derive(Debug)]
pub struct EngineThread<B: Backend> {
    client: EngineClient,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<EngineStats>>,
    handle: JoinHandle<Engine<B>>,
}

impl<B: Kernels> EngineThread<B> {
    /// A client to submit requests with.
    pub fn client(&self) -> EngineClient {
        self.client.clone()
    }

    /// Queues a request (see [`EngineClient::submit`]).
    pub fn submit(&self, prompt: ProcessedPrompt, params: GenerationParams) -> Result<RequestHandle> {
        self.client.submit(prompt, params)
    }

    /// The engine's counters as of its last pass.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Lets the engine finish every request it has taken in, then stops the thread and returns
    /// the engine. A request submitted while it stops may be left unserved.
    pub fn join(self) -> Engine<B> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(engine) => engine,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
