//! Generation over the model's steps: KV cache, LongRoPE policy, sampling, stop conditions,
//! streaming text, and static batches. This is engine code: the model never sees it.
//!
//! LongRoPE policy (as the Hugging Face reference behaves when it recomputes): every pass uses
//! the factors of its sequence length (long once the largest position reaches
//! `original_max_position_embeddings`). When a sequence crosses that boundary while
//! generating, its cache — rotated with the short factors — is dropped and the whole sequence
//! is prefilled again with the long factors, so cached generation equals full recomputation.

use crate::kernels::Kernels;
use std::time::{Duration, Instant};

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Phi3vError, Result};
use crate::image_processor::ProcessedImage;
use crate::model::{CropGrid, KvCache, Phi3VForCausalLM, RopeRegime};
use crate::processor::{Phi3VProcessor, ProcessedPrompt};

/// How the next token is chosen. The default is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// HF's repetition penalty over prompt and generated tokens (1 = off).
    pub repetition_penalty: f32,
    /// Seed of the sampler: the same seed on the same device gives the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// Everything one sequence's generation needs besides the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Upper bound on generated tokens (≥ 1).
    pub max_new_tokens: usize,
    /// Stop tokens are suppressed until this many tokens are generated.
    pub min_new_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Token ids that end generation (see `LoadedModel::stop_token_ids`).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; the text is cut before them.
    pub stop_strings: Vec<String>,
    /// Token ids whose log-probabilities (log-softmax over the whole vocabulary, before any
    /// sampling transform) are reported at the first generated position — e.g. option letters.
    pub first_step_logprobs: Vec<u32>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            min_new_tokens: 0,
            sampling: SamplingParams::default(),
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            first_step_logprobs: Vec::new(),
        }
    }
}

impl GenerationParams {
    /// Refuses out-of-range values with a typed error naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(Phi3vError::InvalidParameter { name, reason });
        let s = &self.sampling;
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(
                "min_new_tokens",
                format!("{} is larger than max_new_tokens {}", self.min_new_tokens, self.max_new_tokens),
            );
        }
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return bad("temperature", format!("{} is not a finite number ≥ 0", s.temperature));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad("top_p", format!("{} is outside (0, 1]", s.top_p));
        }
        if !(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0) {
            return bad("repetition_penalty", format!("{} is not a finite number > 0", s.repetition_penalty));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop_strings", "an empty stop string would stop at once".into());
        }
        Ok(())
    }
}

/// Chooses tokens from logits on the host.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Whether sampling reduces to an argmax of the raw logits.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.temperature == 0.0 && self.params.repetition_penalty == 1.0
    }

    /// Picks a token from one row of logits; `history` is every id seen so far (for the
    /// repetition penalty; image placeholders are not tokens and are left out by the caller).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &id in &seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * p.repetition_penalty } else { *l / p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        if idx.is_empty() {
            return argmax(logits);
        }
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.top_k > 0 {
            idx.truncate(p.top_k);
        }
        let max = logits[idx[0]];
        let mut probs: Vec<f64> = idx.iter().map(|&i| (((logits[i] - max) / p.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (n, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= total);
        }
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for (q, &i) in probs.iter().zip(&idx) {
            acc += q;
            if u < acc {
                return i as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }
}

/// `log_softmax(row)[id]` for each id (−∞ for ids outside the row), computed in f64.
fn log_softmax_at(row: &[f32], ids: &[u32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    ids.iter()
        .map(|&id| row.get(id as usize).map_or(f32::NEG_INFINITY, |&x| (x as f64 - lse) as f32))
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Turns generated ids into text incrementally, correct across byte-fallback tokens and
/// multi-byte UTF-8 (text is held back while it ends in an incomplete character) and across
/// stop strings (text that could begin a stop string is held back until it cannot).
#[derive(Debug, Clone, Default)]
pub struct TextStreamer {
    ids: Vec<u32>,
    emitted: String,
    stop_strings: Vec<String>,
    stopped: bool,
}

impl TextStreamer {
    /// A streamer that cuts the text before any of `stop_strings`.
    pub fn new(stop_strings: Vec<String>) -> Self {
        Self {
            stop_strings,
            ..Default::default()
        }
    }

    /// Text decoded so far (special tokens skipped), and whether a stop string was found.
    fn full_text(&self, processor: &Phi3VProcessor) -> Result<(String, bool)> {
        let text = processor.decode(&self.ids, true)?;
        let cut = self.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min();
        Ok(match cut {
            Some(i) => (text[..i].to_string(), true),
            None => (text, false),
        })
    }

    /// Adds a token; returns the new text that is safe to show, and whether a stop string ended
    /// the text.
    pub fn push(&mut self, id: u32, processor: &Phi3VProcessor) -> Result<(String, bool)> {
        if self.stopped {
            return Ok((String::new(), true));
        }
        self.ids.push(id);
        let (text, stopped) = self.full_text(processor)?;
        self.stopped = stopped;
        let mut ready = text.as_str();
        if !stopped {
            if ready.ends_with('\u{FFFD}') {
                return Ok((String::new(), false));
            }
            // Hold back a suffix that may still grow into a stop string.
            let hold = self
                .stop_strings
                .iter()
                .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
                .filter(|prefix| ready.ends_with(prefix))
                .map(str::len)
                .max()
                .unwrap_or(0);
            ready = &ready[..ready.len() - hold];
        }
        Ok(self.advance(ready))
            .map(|delta| (delta, stopped))
    }

    fn advance(&mut self, ready: &str) -> String {
        if ready.len() > self.emitted.len() && ready.starts_with(self.emitted.as_str()) {
            let delta = ready[self.emitted.len()..].to_string();
            self.emitted = ready.to_string();
            delta
        } else {
            String::new()
        }
    }

    /// Emits whatever is left once generation has ended; returns (delta, final text).
    pub fn finish(&mut self, processor: &Phi3VProcessor) -> Result<(String, String)> {
        let (text, _) = self.full_text(processor)?;
        let delta = self.advance(&text);
        Ok((delta, text))
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// Generation was ended before the sequence finished ([`Generator::finish`] called early,
    /// or a [`TokenStream`](crate::TokenStream) dropped into its output).
    Cancelled,
}

/// One streamed step of one sequence.
#[derive(Debug, Clone)]
pub struct StreamEvent<'a> {
    /// Index of the sequence in the batch.
    pub sequence: usize,
    /// The token just chosen.
    pub token_id: u32,
    /// Text that became final with it (may be empty).
    pub text_delta: &'a str,
}

/// The result of one sequence.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// Generated ids (a stop token that ended generation is included).
    pub token_ids: Vec<u32>,
    /// Generated text, special tokens skipped, cut before a stop string.
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Prompt length in tokens (image tokens included).
    pub prompt_tokens: usize,
    /// Image tokens in the prompt.
    pub image_tokens: usize,
    /// Time from the start of the call to this sequence's first token.
    pub time_to_first_token: Duration,
    /// Time spent after the first token.
    pub decode_time: Duration,
    /// Log-probabilities of `GenerationParams::first_step_logprobs` at the first position.
    pub first_step_logprobs: Vec<f32>,
}

impl GenerationOutput {
    /// Generated tokens per second after the first one.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.token_ids.len().saturating_sub(1);
        if n == 0 || self.decode_time.is_zero() {
            0.0
        } else {
            n as f64 / self.decode_time.as_secs_f64()
        }
    }
}

/// One sequence's generation state: its ids, sampler, streamer and stop bookkeeping. Shared by
/// [`Generator`] and the serving engine ([`crate::engine`]), so both choose, stop and stream
/// alike.
pub(crate) struct Row {
    pub(crate) ids: Vec<i64>,
    /// Left-padding columns of this row in the cache (set by every prefill).
    pad: usize,
    prompt_len: usize,
    pub(crate) params: GenerationParams,
    sampler: Sampler,
    streamer: TextStreamer,
    generated: Vec<u32>,
    pub(crate) finished: Option<FinishReason>,
    first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    first_logprobs: Vec<f32>,
}

impl Row {
    /// Validates `params`, and the prompt's length against a context of `max_pos` tokens.
    pub(crate) fn new(prompt: &ProcessedPrompt, params: GenerationParams, max_pos: usize) -> Result<Self> {
        params.validate()?;
        if prompt.input_ids.is_empty() {
            return Err(Phi3vError::InvalidInput("the prompt has no tokens".into()));
        }
        let requested = prompt.input_ids.len() + params.max_new_tokens;
        if requested > max_pos {
            return Err(Phi3vError::ContextOverflow { requested, max: max_pos });
        }
        Ok(Self {
            ids: prompt.input_ids.clone(),
            pad: 0,
            prompt_len: prompt.input_ids.len(),
            sampler: Sampler::new(params.sampling.clone()),
            streamer: TextStreamer::new(params.stop_strings.clone()),
            params,
            generated: Vec::new(),
            finished: None,
            first_token_at: None,
            finished_at: None,
            first_logprobs: Vec::new(),
        })
    }

    /// Records a chosen token and decides whether it ends the sequence. Returns the text that
    /// became final with it and, when the sequence ended, the text released at the end.
    pub(crate) fn accept(&mut self, id: u32, processor: &Phi3VProcessor) -> Result<(String, Option<String>)> {
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        self.generated.push(id);
        self.ids.push(id as i64);
        let (delta, stop_string) = self.streamer.push(id, processor)?;
        let n = self.generated.len();
        let stop_token = n > self.params.min_new_tokens && self.params.stop_token_ids.contains(&id);
        if stop_token || stop_string {
            self.finished = Some(FinishReason::Stop);
        } else if n >= self.params.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
        if self.finished.is_none() {
            return Ok((delta, None));
        }
        self.finished_at = Some(now);
        let (tail, _) = self.streamer.finish(processor)?;
        Ok((delta, Some(tail)))
    }

    /// The sequence's result, times measured from `start`; an unfinished sequence reports
    /// [`FinishReason::Cancelled`] with what it generated so far.
    pub(crate) fn output(&mut self, start: Instant, processor: &Phi3VProcessor) -> Result<GenerationOutput> {
        let (_, text) = self.streamer.finish(processor)?;
        let first = self.first_token_at.unwrap_or(start);
        let end = match self.finished_at {
            Some(t) => t,
            None if self.generated.is_empty() => first,
            None => Instant::now(),
        };
        Ok(GenerationOutput {
            token_ids: self.generated.clone(),
            text,
            finish_reason: self.finished.unwrap_or(FinishReason::Cancelled),
            prompt_tokens: self.prompt_len,
            image_tokens: self.ids[..self.prompt_len].iter().filter(|&&i| i < 0).count(),
            time_to_first_token: first - start,
            decode_time: end - first,
            first_step_logprobs: std::mem::take(&mut self.first_logprobs),
        })
    }
}

/// Generates for one or more prompts at once (a static batch: the prompts are left-padded to
/// one length and masked, so each row computes what it would alone). `on_event` sees every
/// token as soon as it is chosen. `params` holds one set for every prompt, or one set for all.
///
/// This is [`Generator`] driven to the end.
pub fn generate<B: Kernels>(
    model: &Phi3VForCausalLM<B>,
    processor: &Phi3VProcessor,
    prompts: &[&ProcessedPrompt],
    params: &[GenerationParams],
    mut on_event: impl FnMut(StreamEvent<'_>),
) -> Result<Vec<GenerationOutput>> {
    let mut generator = Generator::new(model, processor, prompts, params)?;
    while generator.step(&mut on_event)? {}
    generator.finish()
}

/// Generation in progress over a static batch, one step at a time: every [`step`](Self::step)
/// runs one forward pass (the prefill first, then one decode step) and chooses one token for
/// every unfinished sequence. [`generate`] is this loop run to the end; drive it yourself to
/// interleave generation with other work or to stop early (then [`finish`](Self::finish)).
pub struct Generator<'a, B: Kernels> {
    model: &'a Phi3VForCausalLM<B>,
    processor: &'a Phi3VProcessor,
    rows: Vec<Row>,
    features: Option<Tensor<B, 2>>,
    cache: KvCache<B>,
    prefilled: bool,
    start: Instant,
}

impl<B: Kernels> std::fmt::Debug for Generator<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("sequences", &self.rows.len())
            .field("generated", &self.rows.iter().map(|r| r.generated.len()).collect::<Vec<_>>())
            .finish()
    }
}

impl<'a, B: Kernels> Generator<'a, B> {
    /// Validates the parameters and embeds the prompts' images (the vision tower runs here);
    /// the prefill runs in the first [`step`](Self::step). `params` holds one set for every
    /// prompt, or one set for all.
    pub fn new(
        model: &'a Phi3VForCausalLM<B>,
        processor: &'a Phi3VProcessor,
        prompts: &[&ProcessedPrompt],
        params: &[GenerationParams],
    ) -> Result<Self> {
        if !prompts.is_empty() && params.len() != prompts.len() && params.len() != 1 {
            return Err(Phi3vError::InvalidInput(format!(
                "{} parameter sets for {} prompts (give one, or one per prompt)",
                params.len(),
                prompts.len()
            )));
        }
        let max_pos = model.config.text.max_position_embeddings;
        let mut rows = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let p = params.get(i).unwrap_or(&params[0]).clone();
            rows.push(Row::new(prompt, p, max_pos).map_err(|e| match e {
                Phi3vError::InvalidInput(_) => Phi3vError::InvalidInput(format!("prompt {i} has no tokens")),
                e => e,
            })?);
        }
        let start = Instant::now();
        // Image tokens of every prompt, in (batch, position) order.
        let images: Vec<_> = prompts.iter().flat_map(|p| p.images.iter()).collect();
        let features = embed_images(model, &images)?;
        Ok(Self {
            model,
            processor,
            rows,
            features,
            cache: model.new_cache(),
            prefilled: false,
            start,
        })
    }

    /// Whether every sequence has finished (then [`step`](Self::step) does nothing).
    pub fn is_finished(&self) -> bool {
        self.rows.iter().all(|r| r.finished.is_some())
    }

    /// Runs one forward pass and chooses the next token of every unfinished sequence; `on_event`
    /// sees each of them (and, when a sequence ends, the text it held back). Returns whether
    /// any sequence goes on.
    pub fn step(&mut self, mut on_event: impl FnMut(StreamEvent<'_>)) -> Result<bool> {
        if self.is_finished() {
            return Ok(false);
        }
        let model = self.model;
        let logits = if !self.prefilled {
            // Prefill: every row left-padded to the longest.
            self.prefilled = true;
            prefill(model, &mut self.rows, self.features.clone(), &mut self.cache)?
        } else {
            // Finished rows keep stepping with their last token (ignored) so the batch stays
            // rectangular. A row whose LongRoPE regime changes forces a recompute.
            let regimes: Vec<RopeRegime> = self.rows.iter().map(|r| model.rope_regime(r.ids.len() - 1)).collect();
            if regimes != self.cache.regimes {
                self.cache.clear();
                prefill(model, &mut self.rows, self.features.clone(), &mut self.cache)?
            } else {
                decode_step(model, &self.rows, &regimes, &mut self.cache)?
            }
        };
        // Choose one token per unfinished row.
        let next = choose(&mut self.rows.iter_mut().collect::<Vec<_>>(), logits)?;
        for (b, row) in self.rows.iter_mut().enumerate() {
            let Some(id) = next[b] else { continue };
            let (delta, tail) = row.accept(id, self.processor)?;
            on_event(StreamEvent {
                sequence: b,
                token_id: id,
                text_delta: &delta,
            });
            if let Some(tail) = tail.filter(|t| !t.is_empty()) {
                on_event(StreamEvent {
                    sequence: b,
                    token_id: id,
                    text_delta: &tail,
                });
            }
        }
        Ok(!self.is_finished())
    }

    /// The result of every sequence, in prompt order. A sequence that had not finished reports
    /// [`FinishReason::Cancelled`] with what it generated so far.
    pub fn finish(mut self) -> Result<Vec<GenerationOutput>> {
        let (start, processor) = (self.start, self.processor);
        self.rows.iter_mut().map(|row| row.output(start, processor)).collect()
    }
}

/// Image tokens of `images`, in order: `[Σ num_img_tokens, hidden]` (`None` without images).
pub(crate) fn embed_images<B: Kernels>(model: &Phi3VForCausalLM<B>, images: &[&ProcessedImage]) -> Result<Option<Tensor<B, 2>>> {
    if images.is_empty() {
        return Ok(None);
    }
    let crops: usize = images.iter().map(|i| i.num_used_crops).sum();
    let data: Vec<f32> = images.iter().flat_map(|i| i.pixel_values.iter().copied()).collect();
    let px = Tensor::<B, 4>::from_data(TensorData::new(data, [crops, 3, 336, 336]), (&model.device(), model.dtype()));
    let grids: Vec<CropGrid> = images.iter().map(|i| i.crop_grid).collect();
    Ok(Some(model.embed_images(px, &grids)?))
}

/// Last-position logits of every row, still on the device: `[batch, vocab]`.
pub(crate) type RowLogits<B> = Tensor<B, 2>;

/// Full pass over every row's ids (prompt plus anything generated), left-padded.
fn prefill<B: Kernels>(
    model: &Phi3VForCausalLM<B>,
    rows: &mut [Row],
    features: Option<Tensor<B, 2>>,
    cache: &mut KvCache<B>,
) -> Result<RowLogits<B>> {
    let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    for r in rows.iter_mut() {
        r.pad = seq - r.ids.len();
    }
    let padded: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![0; seq - r.ids.len()];
            v.extend_from_slice(&r.ids);
            v
        })
        .collect();
    let positions: Vec<Vec<usize>> = rows
        .iter()
        .map(|r| {
            let pad = seq - r.ids.len();
            (0..seq).map(|i| i.saturating_sub(pad)).collect()
        })
        .collect();
    let regimes: Vec<RopeRegime> = rows.iter().map(|r| model.rope_regime(r.ids.len() - 1)).collect();
    let mask = padding_mask::<B>(model, rows, seq, seq, &model.device());
    let embeds = model.embed_inputs(&padded, features)?;
    let out = model.forward(embeds, &positions, &regimes, cache, mask, false);
    let [b, s, _] = out.last_hidden_state.dims();
    let last = out.last_hidden_state.narrow(1, s - 1, 1); // rows end together (left padding)
    Ok(model.logits(last).reshape([b, model.config.text.vocab_size]))
}

/// One new token per row.
fn decode_step<B: Kernels>(
    model: &Phi3VForCausalLM<B>,
    rows: &[Row],
    regimes: &[RopeRegime],
    cache: &mut KvCache<B>,
) -> Result<RowLogits<B>> {
    let ids: Vec<Vec<i64>> = rows.iter().map(|r| vec![*r.ids.last().unwrap_or(&0)]).collect();
    let positions: Vec<Vec<usize>> = rows.iter().map(|r| vec![r.ids.len() - 1]).collect();
    let keys = cache.len() + 1;
    let mask = padding_mask::<B>(model, rows, 1, keys, &model.device());
    let embeds = model.embed_inputs(&ids, None)?;
    let out = model.forward(embeds, &positions, regimes, cache, mask, false);
    let b = rows.len();
    Ok(model.logits(out.last_hidden_state).reshape([b, model.config.text.vocab_size]))
}

/// For rows shorter than the batch: a mask hiding their left padding (`true` = masked), causal
/// for the last `queries` of `keys` columns. Padding queries see only themselves, so no row is
/// fully masked. `None` when no row is padded (plain causal attention). Rows that finished
/// keep stepping, so the padding recorded at prefill stays right for every row.
fn padding_mask<B: Kernels>(
    model: &Phi3VForCausalLM<B>,
    rows: &[Row],
    queries: usize,
    keys: usize,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    if rows.iter().all(|r| r.pad == 0) {
        return None;
    }
    let b = rows.len();
    let mut m = Vec::with_capacity(b * queries * keys);
    for r in rows {
        let pad = r.pad;
        for q in 0..queries {
            let qcol = keys - queries + q; // this query's own column
            for k in 0..keys {
                let masked = if qcol < pad { k != qcol } else { k < pad || k > qcol };
                m.push(masked);
            }
        }
    }
    let heads = model.config.text.num_attention_heads;
    let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(m, [b, 1, queries, keys]), device);
    Some(mask.expand([b, heads, queries, keys]))
}

/// Picks the next token of every unfinished row (`None` for finished rows) from `logits`, one
/// logits row per entry of `rows`.
pub(crate) fn choose<B: Kernels>(rows: &mut [&mut Row], logits: RowLogits<B>) -> Result<Vec<Option<u32>>> {
    let [b, vocab] = logits.dims();
    let host_needed = rows.iter().any(|r| {
        r.finished.is_none()
            && (!r.sampler.is_plain_greedy()
                || (r.generated.len() < r.params.min_new_tokens && !r.params.stop_token_ids.is_empty())
                || (r.generated.is_empty() && !r.params.first_step_logprobs.is_empty()))
    });
    if !host_needed {
        // Greedy for everyone: only the argmax leaves the device.
        let ids: Tensor<B, 2, Int> = logits.argmax(1);
        let ids = ids
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| Phi3vError::Backend(format!("{e:?}")))?;
        return Ok(rows
            .iter()
            .zip(ids)
            .map(|(r, id)| r.finished.is_none().then_some(id as u32))
            .collect());
    }
    let mut host = logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Phi3vError::Backend(format!("{e:?}")))?;
    let mut out = Vec::with_capacity(b);
    for (i, row) in rows.iter_mut().enumerate() {
        if row.finished.is_some() {
            out.push(None);
            continue;
        }
        let slice = &mut host[i * vocab..(i + 1) * vocab];
        if row.generated.is_empty() && !row.params.first_step_logprobs.is_empty() {
            row.first_logprobs = log_softmax_at(slice, &row.params.first_step_logprobs);
        }
        if row.generated.len() < row.params.min_new_tokens {
            for &id in &row.params.stop_token_ids {
                if let Some(l) = slice.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let history: Vec<u32> = row.ids.iter().filter(|&&i| i >= 0).map(|&i| i as u32).collect();
        out.push(Some(row.sampler.sample(slice, &history)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_parameters_are_typed_errors() {
        let cases: Vec<(GenerationParams, &str)> = vec![
            (GenerationParams { max_new_tokens: 0, ..Default::default() }, "max_new_tokens"),
            (GenerationParams { max_new_tokens: 4, min_new_tokens: 5, ..Default::default() }, "min_new_tokens"),
            (GenerationParams { sampling: SamplingParams { temperature: -0.5, ..Default::default() }, ..Default::default() }, "temperature"),
            (GenerationParams { sampling: SamplingParams { temperature: f32::NAN, ..Default::default() }, ..Default::default() }, "temperature"),
            (GenerationParams { sampling: SamplingParams { top_p: 0.0, ..Default::default() }, ..Default::default() }, "top_p"),
            (GenerationParams { sampling: SamplingParams { top_p: 1.5, ..Default::default() }, ..Default::default() }, "top_p"),
            (GenerationParams { sampling: SamplingParams { repetition_penalty: 0.0, ..Default::default() }, ..Default::default() }, "repetition_penalty"),
            (GenerationParams { stop_strings: vec![String::new()], ..Default::default() }, "stop_strings"),
        ];
        for (p, name) in cases {
            match p.validate() {
                Err(Phi3vError::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: expected InvalidParameter, got {other:?}"),
            }
        }
        assert!(GenerationParams::default().validate().is_ok());
    }

    #[test]
    fn sampler_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let params = SamplingParams { temperature: 1.0, top_k: 5, seed: 7, ..Default::default() };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        let mut top5: Vec<usize> = (0..100).collect();
        top5.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        assert!(a.iter().all(|t| top5[..5].contains(&(*t as usize))));
        assert_ne!(a, draw(&SamplingParams { seed: 8, ..params.clone() }), "another seed gives other tokens");
        let mut greedy = Sampler::new(SamplingParams::default());
        assert_eq!(greedy.sample(&mut logits.clone(), &[]) as usize, top5[0]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // One token holds 90% of the mass: top_p 0.5 must always pick it.
        let mut logits = vec![0.0f32; 10];
        logits[3] = 10.0;
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5, seed: 1, ..Default::default() });
        assert!((0..100).all(|_| s.sample(&mut logits.clone(), &[]) == 3));
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() });
        let mut logits = vec![1.0f32, 1.5, 0.2];
        assert_eq!(s.sample(&mut logits, &[1]), 0, "1.5/2 = 0.75 < 1.0");
    }
}
