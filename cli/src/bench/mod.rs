//! `phi3v bench`: the figures vLLM-style model cards report (prompt ingestion, generation speed
//! against parallel requests, images, KV-cache capacity, memory, a batch-1 latency report), for
//! the real model shapes with random weights or a model folder. Every timed region starts and
//! ends with the device synchronised; warm-up runs come first; medians of several runs.

pub mod attention;
pub mod matmul;
pub mod breakdown;
mod plot;
mod profile;
pub mod report;

use burn_phi3v::kernels::Kernels;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::{DType, Tensor, TensorData};
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::weights::{Checkpoint, Weights};
use burn_phi3v::engine::{Engine, EngineConfig, RequestEvent};
use burn_phi3v::{GenerationParams, Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor, ProcessedPrompt, generate};
use clap::{Args, Subcommand};
use phi3v_devices::DeviceFn;

use crate::{CliResult, with_device};
use report::{BenchReport, GenerationPoint, ImagePoint, KvEstimate, LatencyReport, Percentiles, PrefillPoint, Stats};

/// Built-in model shapes (config.json as published; weights are random).
const PRESETS: &[(&str, &str)] = &[
    ("phi3v-128k", include_str!("../../presets/phi3v-128k.json")),
    ("phi35v", include_str!("../../presets/phi35v.json")),
    ("phi3-mini-4k", include_str!("../../presets/phi3-mini-4k.json")),
    ("phi3-mini-128k", include_str!("../../presets/phi3-mini-128k.json")),
    ("tiny", include_str!("../../../tests/fixtures/models/phi3v-tiny/config.json")),
];

/// The tokenizer used when the model has none (all Phi-3 models share it).
const EMBEDDED_TOKENIZER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi3v-tiny");

/// `phi3v bench …`
#[derive(Subcommand)]
// Parsed once per process: the size of the options does not matter.
#[allow(clippy::large_enum_variant)]
pub enum BenchCommand {
    /// Run the benchmark suite and write JSON, CSV, PNG graphs and a Markdown card.
    Run(BenchArgs),
    /// Compare our results with the PyTorch peer's (same JSON schema): Markdown to stdout.
    Compare(CompareArgs),
    /// Time every stage of a decoder layer at the real shapes (decode and prefill), beside the
    /// PyTorch peer's (bench/peer_kernels.py) when given.
    Breakdown(breakdown::BreakdownArgs),
    /// Time the attention of a prefill and of the vision tower alone under each flash-attention
    /// choice (`burn`, `unit`, `scores`, a tiling), with each output compared with the first's.
    Attention(attention::AttentionArgs),
    /// Time the model's large products (prefill, vision tower) through Burn's matmul and
    /// through cubek-matmul's tensor-core routines at chosen tilings, beside PyTorch's when given.
    Matmul(matmul::MatmulArgs),
}

/// Options of `phi3v bench run`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Built-in model shapes: phi3v-128k, phi35v, phi3-mini-4k, phi3-mini-128k, tiny.
    #[arg(long, default_value = "phi3v-128k")]
    preset: String,
    /// A Hugging Face model folder instead of a preset (its config.json, and its weights unless
    /// --no-weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Random weights created on the device (no host copy), with --model.
    #[arg(long)]
    no_weights: bool,
    /// Device: cpu, cuda[:N], wgpu[:N], vulkan[:N].
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Compute dtype (default: the device's, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Scenarios to run: prefill, generation, images, kv, latency.
    #[arg(long, value_delimiter = ',', default_value = "prefill,generation,images,kv,latency")]
    scenarios: Vec<String>,
    /// Prompt lengths for prompt ingestion.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024,2048,4096,8192")]
    prompt_lengths: Vec<usize>,
    /// Batch sizes for prompt ingestion (batch > 1 only where batch × length ≤ --max-prefill-tokens).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    prefill_batches: Vec<usize>,
    /// Largest number of tokens in one batched prefill.
    #[arg(long, default_value_t = 16384)]
    max_prefill_tokens: usize,
    /// Numbers of parallel requests for generation.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64,128,256")]
    parallel: Vec<usize>,
    /// How parallel requests are batched: `static` (one left-padded batch through `generate`),
    /// `engine` (continuous batching over the paged KV cache, prefix caching on, as `phi3v
    /// serve`), `engine-no-prefix-caching` (the same without it); several comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "static,engine")]
    batching: Vec<String>,
    /// Leading prompt tokens the parallel requests of a generation point share (a system prompt
    /// or few-shot examples, as in vLLM's prefix-caching benchmark; 0: every prompt random).
    /// The engine's prefix caching computes them once per run.
    #[arg(long, default_value_t = 0)]
    shared_prefix: usize,
    /// Most tokens in one engine pass (prefill chunks plus decoding sequences).
    #[arg(long, default_value_t = 2048)]
    max_batched_tokens: usize,
    /// (prompt, output) lengths for generation, as PxO.
    #[arg(long, value_delimiter = ',', default_value = "1024x128,4096x128,32x16")]
    shapes: Vec<String>,
    /// Image sizes WxH for the image scenario (a panorama is e.g. 2688x336).
    #[arg(long, value_delimiter = ',', default_value = "336x336,672x672,1344x1344,2688x336")]
    images: Vec<String>,
    /// num_crops values for the image scenario.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    num_crops: Vec<usize>,
    /// (prompt, output) of the batch-1 latency report, PxO.
    #[arg(long, default_value = "1024x128")]
    latency_shape: String,
    /// Warm-up runs before every timed measurement.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs per prefill / image / latency point (medians and percentiles over them).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Timed runs per generation point.
    #[arg(long, default_value_t = 1)]
    generation_runs: usize,
    /// Fraction of device memory the KV-cache estimate and the memory guard may use.
    #[arg(long, default_value_t = 0.9)]
    memory_fraction: f64,
    /// Device memory in bytes where the runtime does not report it (wgpu).
    #[arg(long)]
    device_memory: Option<u64>,
    /// Tokenizer folder (default: the model's, else the one shipped with the repository).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

/// Options of `phi3v bench compare`.
#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// Our results.json.
    ours: PathBuf,
    /// The peer's results.json (bench/peer_torch.py).
    peer: PathBuf,
    /// Memory bandwidth of the device in bytes/s, for the decode ceiling (H100 SXM HBM3: 3.35e12).
    #[arg(long, default_value_t = 3.35e12)]
    bandwidth: f64,
    /// Dense bf16 tensor throughput in FLOP/s, for the prefill ceiling (H100 SXM: 989e12).
    #[arg(long, default_value_t = 989e12)]
    peak_flops: f64,
}

/// Entry point of `phi3v bench`.
pub fn run(cmd: BenchCommand) -> CliResult<()> {
    match cmd {
        BenchCommand::Run(a) => {
            let (name, config) = model_config(&a)?;
            let device = a.device.clone();
            let dtype = a.dtype.clone();
            let out = a.out.clone();
            let report = with_device(&device, dtype.as_deref(), BenchJob { args: a, name, config })??;
            report::write_all(&report, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        BenchCommand::Compare(a) => {
            let read = |p: &Path| -> CliResult<BenchReport> {
                let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                Ok(serde_json::from_str(&s).map_err(|e| format!("{} is not a benchmark result: {e}", p.display()))?)
            };
            print!("{}", report::compare(&read(&a.ours)?, &read(&a.peer)?, a.bandwidth, a.peak_flops));
            Ok(())
        }
        BenchCommand::Breakdown(a) => breakdown::run(a),
        BenchCommand::Attention(a) => attention::run(a),
        BenchCommand::Matmul(a) => matmul::run(a),
    }
}

fn model_config(a: &BenchArgs) -> CliResult<(String, Phi3VConfig)> {
    if let Some(dir) = &a.model {
        let path = dir.join("config.json");
        return Ok((dir.display().to_string(), Phi3VConfig::from_file(&path)?));
    }
    preset_config(&a.preset)
}

/// A built-in preset's name and configuration.
fn preset_config(preset: &str) -> CliResult<(String, Phi3VConfig)> {
    let Some((name, json)) = PRESETS.iter().find(|(n, _)| *n == preset) else {
        let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown preset `{preset}` (available: {})", names.join(", ")).into());
    };
    let value: serde_json::Value = serde_json::from_str(json)?;
    Ok((name.to_string(), Phi3VConfig::from_value(&value, name)?))
}

fn parse_pair(s: &str, what: &str) -> CliResult<(usize, usize)> {
    let bad = || format!("{what} `{s}` is not of the form AxB with positive numbers");
    let (a, b) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (a, b) = (a.trim().parse::<usize>().map_err(|_| bad())?, b.trim().parse::<usize>().map_err(|_| bad())?);
    if a == 0 || b == 0 {
        return Err(bad().into());
    }
    Ok((a, b))
}

struct BenchJob {
    args: BenchArgs,
    name: String,
    config: Phi3VConfig,
}

/// `--batching` values.
const BATCHING_MODES: [&str; 3] = ["static", "engine", "engine-no-prefix-caching"];

/// Seed of the prompt prefix `--shared-prefix` puts in every generation prompt.
const SHARED_PREFIX_SEED: u64 = 77;

/// Deterministic pseudo-random token ids (SplitMix64) in `[100, vocab - 100)`.
fn random_ids(n: usize, seed: u64, vocab: usize) -> Vec<i64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            100 + (z % (vocab as u64 - 200)) as i64
        })
        .collect()
}

/// Runs `f` between two device synchronisations; seconds.
fn timed<B: Kernels, T>(device: &B::Device, f: impl FnOnce() -> T) -> (T, f64) {
    let _ = B::sync(device);
    let t = Instant::now();
    let r = f();
    let _ = B::sync(device);
    (r, t.elapsed().as_secs_f64())
}

/// Runs a measurement; a panic inside the backend (out of memory, …) becomes an error message.
fn guarded<T>(f: impl FnOnce() -> CliResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "backend panic".into())),
    }
}

/// Peak device memory in use, sampled with `nvidia-smi` every 100 ms (CUDA devices only).
struct DeviceMemoryMonitor {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    index: usize,
}

impl DeviceMemoryMonitor {
    fn start(info: &DeviceInfo) -> Option<Self> {
        if info.backend != "cuda" || Self::read(info.index).is_none() {
            return None;
        }
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s, index) = (peak.clone(), stop.clone(), info.index);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = Self::read(index) {
                    p.fetch_max(v, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Some(Self { peak, stop, index })
    }

    fn read(index: usize) -> Option<u64> {
        let out = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", &index.to_string()])
            .output()
            .ok()?;
        let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some(mib << 20)
    }

    fn now(&self) -> Option<u64> {
        Self::read(self.index)
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for DeviceMemoryMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
fn peak_host_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

impl DeviceFn for BenchJob {
    type Output = CliResult<BenchReport>;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> CliResult<BenchReport> {
        let a = &self.args;
        let monitor = DeviceMemoryMonitor::start(info);
        let load_start = Instant::now();
        let (model, parameters, weights) = match (&a.model, a.no_weights) {
            (Some(dir), false) => {
                let ckpt = Checkpoint::open_dir(dir)?;
                let w = Weights::<B>::new(&ckpt, device, dtype);
                let m = burn_phi3v::loader::load_model(&w, &self.config)?;
                let n = w.elements();
                w.finish()?;
                (m, n, "checkpoint")
            }
            _ => {
                let w = Weights::<B>::random(device, dtype);
                let m = burn_phi3v::loader::load_model(&w, &self.config)?;
                (m, w.elements(), "random")
            }
        };
        let _ = B::sync(device);
        eprintln!("{}: {:.1} M parameters on {} ({}) in {:.1} s", self.name, parameters as f64 / 1e6, info.spec, dtype_name(dtype), load_start.elapsed().as_secs_f64());
        let tok_dir = a
            .tokenizer
            .clone()
            .or_else(|| a.model.clone().filter(|d| d.join("tokenizer.json").is_file()))
            .unwrap_or_else(|| {
                let local = PathBuf::from("tests/fixtures/models/phi3v-tiny");
                if local.join("tokenizer.json").is_file() { local } else { PathBuf::from(EMBEDDED_TOKENIZER) }
            });
        let processor = Phi3VProcessor::from_dir(&tok_dir)?;
        let dtype_bytes = match dtype {
            DType::F32 => 4,
            _ => 2,
        };
        let text = &self.config.text;
        let kv_bytes_per_token = (2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim() * dtype_bytes) as u64;
        let weights_bytes = (parameters * dtype_bytes) as u64;
        let device_memory = info.total_memory.or(a.device_memory);
        let budget = device_memory.map(|m| m as f64 * a.memory_fraction - weights_bytes as f64);
        let engine_budget = device_memory.zip(budget).map(|(m, b)| engine_pool_budget(m, b));
        let bench = Bench { model: &model, processor: &processor, device, args: a, budget, engine_budget, kv_bytes_per_token };

        let mut report = BenchReport {
            engine: "burn-phi3v".into(),
            engine_version: format!("burn-phi3v {} (Burn 0.21.0)", env!("CARGO_PKG_VERSION")),
            model: self.name.clone(),
            weights: weights.into(),
            device: info.spec.clone(),
            device_name: info.name.clone(),
            dtype: dtype_name(dtype).into(),
            date: report::today(),
            parameters: parameters as u64,
            settings: serde_json::json!({
                "warmup": a.warmup, "runs": a.runs, "generation_runs": a.generation_runs,
                "memory_fraction": a.memory_fraction, "batching": "static (left-padded batch)",
                "prompt_lengths": a.prompt_lengths, "parallel": a.parallel, "shapes": a.shapes,
                "images": a.images, "num_crops": a.num_crops, "latency_shape": a.latency_shape,
                "kernels": kernel_settings(),
            }),
            ..Default::default()
        };
        report.memory.device_bytes_after_load = monitor.as_ref().and_then(|m| m.now());
        let has = |s: &str| a.scenarios.iter().any(|x| x == s);
        if has("kv") {
            report.kv_cache = device_memory.map(|m| KvEstimate {
                bytes_per_token: kv_bytes_per_token,
                device_memory_bytes: m,
                weights_bytes,
                memory_fraction: a.memory_fraction,
                max_tokens: ((m as f64 * a.memory_fraction - weights_bytes as f64).max(0.0) / kv_bytes_per_token as f64) as u64,
            });
        }
        // Most telling first; results are written after every point, so a run cut short
        // still leaves its figures.
        bench.save(&report);
        if has("latency") {
            report.latency = bench.latency()?;
            bench.save(&report);
        }
        if has("prefill") {
            bench.prefill(&mut report)?;
        }
        if has("generation") {
            bench.generation(&mut report)?;
        }
        if has("images") && model.vision_embed_tokens.is_some() {
            bench.images(&mut report)?;
        }
        report.memory.peak_host_rss_bytes = peak_host_rss();
        report.memory.peak_device_bytes = monitor.as_ref().map(|m| m.peak());
        Ok(report)
    }
}

struct Bench<'a, B: Kernels> {
    model: &'a Phi3VForCausalLM<B>,
    processor: &'a Phi3VProcessor,
    device: &'a B::Device,
    args: &'a BenchArgs,
    /// Device bytes left for activations and the KV cache, when the device size is known.
    budget: Option<f64>,
    /// Of `budget`, the bytes the engine's KV pool may take ([`engine_pool_budget`]).
    engine_budget: Option<f64>,
    kv_bytes_per_token: u64,
}

impl<B: Kernels> Bench<'_, B> {
    /// Writes what has been measured so far (memory figures included).
    fn save(&self, report: &BenchReport) {
        let mut r = report.clone();
        r.memory.peak_host_rss_bytes = peak_host_rss();
        if let Err(e) = report::write_all(&r, &self.args.out) {
            eprintln!("warning: cannot write results: {e}");
        }
    }

    fn vocab(&self) -> usize {
        self.model.config.text.vocab_size
    }

    /// Whether `batch` sequences of `tokens` fit: their KV cache twice over (the static batch's
    /// cache grows by concatenation, so the old and the new copy of a layer's cache coexist and
    /// the allocator keeps freed blocks pooled) plus the prefill activations (about 12
    /// hidden-sized f32 rows per token, the MLP's intermediate among them). Measured on the
    /// H100: 64 × (1024 + 128) tokens ran out of memory although one copy (29 GB) fits.
    fn fits(&self, batch: usize, prompt: usize, tokens: usize) -> bool {
        let Some(budget) = self.budget else { return true };
        let h = self.model.config.text.hidden_size as f64;
        let bytes = 2.0 * self.kv_bytes_per_token as f64 * (batch * tokens) as f64 + (batch * prompt) as f64 * h * 12.0 * 4.0;
        bytes <= budget
    }

    /// One prefill of `batch` random prompts of `len` tokens up to the first token's logits.
    fn prefill_once(&self, batch: usize, len: usize, seed: u64) -> CliResult<()> {
        let m = self.model;
        let ids: Vec<Vec<i64>> = (0..batch).map(|b| random_ids(len, seed + b as u64, self.vocab())).collect();
        let positions: Vec<Vec<usize>> = vec![(0..len).collect(); batch];
        let regimes = vec![m.rope_regime(len - 1); batch];
        let mut cache = m.new_cache();
        let embeds = m.embed_inputs(&ids, None)?;
        let out = m.forward(embeds, &positions, &regimes, &mut cache, None, false);
        let last = out.last_hidden_state.narrow(1, len - 1, 1);
        let _first = m.logits(last).argmax(2).into_data();
        Ok(())
    }

    fn prefill(&self, report: &mut BenchReport) -> CliResult<()> {
        let a = self.args;
        let mut points = Vec::new();
        for &batch in &a.prefill_batches {
            for &len in &a.prompt_lengths {
                if batch > 1 && batch * len > a.max_prefill_tokens {
                    continue;
                }
                points.push((batch, len));
            }
        }
        let bar = progress(points.len(), "prefill");
        for (i, &(batch, len)) in points.iter().enumerate() {
            bar.set_position(i as u64);
            let mut p = PrefillPoint { batch, prompt_len: len, ..Default::default() };
            if len > self.model.config.text.max_position_embeddings || !self.fits(batch, len, len) {
                p.skipped = Some("does not fit the context or the device memory".into());
                report.prefill.push(p);
                self.save(report);
                continue;
            }
            let r = guarded(|| {
                for w in 0..a.warmup {
                    self.prefill_once(batch, len, 1000 + w as u64)?;
                }
                let mut times = Vec::new();
                for r in 0..a.runs.max(1) {
                    let (res, t) = timed::<B, _>(self.device, || self.prefill_once(batch, len, 2000 + r as u64));
                    res?;
                    times.push(t);
                }
                Ok(times)
            });
            match r {
                Ok(times) => {
                    let median = report::percentile(&times, 50.0);
                    p.runs = times.len();
                    p.median_s = median;
                    p.tokens_per_s = (batch * len) as f64 / median;
                }
                Err(e) => p.skipped = Some(e),
            }
            bar.suspend(|| eprintln!("prefill batch {batch} × {len}: {}", p.describe()));
            report.prefill.push(p);
            self.save(report);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// `n` parallel requests of `prompt` random tokens each generating exactly `output` tokens:
    /// every token's arrival time per request, in seconds from the start.
    fn generate_timed(&self, prompts: &[ProcessedPrompt], output: usize) -> CliResult<Vec<Vec<f64>>> {
        let params = GenerationParams { max_new_tokens: output, min_new_tokens: output, stop_token_ids: Vec::new(), ..Default::default() };
        let refs: Vec<&ProcessedPrompt> = prompts.iter().collect();
        let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(output); prompts.len()];
        let _ = B::sync(self.device);
        let start = Instant::now();
        generate(self.model, self.processor, &refs, &[params], |e| {
            // Exactly `output` token events per request come first (a last text flush may follow).
            let t = &mut times[e.sequence];
            if t.len() < output {
                t.push(start.elapsed().as_secs_f64());
            }
        })?;
        Ok(times)
    }

    fn text_prompts(&self, n: usize, len: usize, seed: u64) -> Vec<ProcessedPrompt> {
        (0..n)
            .map(|i| ProcessedPrompt { input_ids: random_ids(len, seed + i as u64, self.vocab()), images: Vec::new() })
            .collect()
    }

    /// [`Self::text_prompts`] whose first `shared` tokens (≤ `len`) are the same in every
    /// prompt of every run.
    fn generation_prompts(&self, n: usize, len: usize, shared: usize, seed: u64) -> Vec<ProcessedPrompt> {
        let prefix = random_ids(shared, SHARED_PREFIX_SEED, self.vocab());
        let mut prompts = self.text_prompts(n, len - shared, seed);
        for p in &mut prompts {
            p.input_ids.splice(0..0, prefix.iter().copied());
        }
        prompts
    }

    fn generation(&self, report: &mut BenchReport) -> CliResult<()> {
        let a = self.args;
        let shapes: Vec<(usize, usize)> = a.shapes.iter().map(|s| parse_pair(s, "shape")).collect::<CliResult<_>>()?;
        for m in &a.batching {
            if !BATCHING_MODES.contains(&m.as_str()) {
                return Err(format!("unknown batching `{m}` (expected {})", BATCHING_MODES.join(", ")).into());
            }
        }
        let bar = progress(shapes.len() * a.parallel.len() * a.batching.len(), "generation");
        for &(prompt, output) in &shapes {
            for mode in &a.batching {
                let mut stop = false;
                for &n in &a.parallel {
                    bar.inc(1);
                    let mut p = GenerationPoint {
                        prompt_len: prompt,
                        output_len: output,
                        parallel: n,
                        batching: mode.clone(),
                        shared_prefix: a.shared_prefix.min(prompt),
                        ..Default::default()
                    };
                    // Static batching holds every request's cache and activations at once; the
                    // engine's pool is capped by the memory budget instead (`engine_timed`).
                    let fits = mode != "static" || self.fits(n, prompt, prompt + output);
                    if stop || !fits || prompt + output > self.model.config.text.max_position_embeddings {
                        p.skipped = Some("estimated not to fit the device memory".into());
                        stop = true;
                        report.generation.push(p);
                        self.save(report);
                        continue;
                    }
                    let shared = p.shared_prefix;
                    // Token times per request, and the prompt tokens the engine took from its prefix cache.
                    let run = |prompts: Vec<ProcessedPrompt>, output: usize| match mode.as_str() {
                        "static" => Ok((self.generate_timed(&prompts, output)?, 0)),
                        engine => self.engine_timed(prompts, output, engine == "engine"),
                    };
                    let r = guarded(|| {
                        for w in 0..a.warmup.min(1) {
                            run(self.generation_prompts(n, prompt, shared, 3000 + w as u64), output.min(8))?;
                        }
                        let mut runs = Vec::new();
                        for r in 0..a.generation_runs.max(1) {
                            runs.push(run(self.generation_prompts(n, prompt, shared, 4000 + 97 * r as u64), output)?);
                        }
                        Ok(runs)
                    });
                    // The point's memory (an engine's KV pool, a static batch's caches) back to
                    // the device: CubeCL's pool keeps freed pages for reuse, and pages of one
                    // point's sizes left no room for the next (session 25, H200: static batching
                    // at 10 requests could not allocate 2.3 GB after the engine's 256).
                    B::memory_cleanup(self.device);
                    match r {
                        Ok(runs) => {
                            let (times, cached): (Vec<_>, Vec<u64>) = runs.into_iter().unzip();
                            p.fill(&times);
                            p.prefix_cached_tokens = cached.iter().sum::<u64>() / cached.len().max(1) as u64;
                        }
                        Err(e) => {
                            p.skipped = Some(e);
                            stop = true;
                        }
                    }
                    bar.suspend(|| eprintln!("generation {prompt}x{output}, {mode} batching, {n} parallel: {}", p.describe()));
                    report.generation.push(p);
                    self.save(report);
                }
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// The same requests through the engine (continuous batching, paged KV cache), all
    /// submitted at once; the pool holds every request's tokens where the memory budget allows,
    /// so nothing is preempted and the comparison with the static batch is like for like.
    /// Beyond that the pool is as large as the budget allows and the requests it cannot hold
    /// wait for blocks (vLLM's behaviour; until session 24 such points were skipped, as static
    /// batching's are). Also returns the prompt tokens taken from the prefix cache.
    fn engine_timed(&self, prompts: Vec<ProcessedPrompt>, output: usize, prefix_caching: bool) -> CliResult<(Vec<Vec<f64>>, u64)> {
        let text = &self.model.config.text;
        let block = EngineConfig::default().block_size;
        let blocks: usize = prompts.iter().map(|p| (p.input_ids.len() + output).div_ceil(block)).sum();
        let mut config = EngineConfig {
            num_blocks: blocks.max(1),
            max_running: prompts.len().max(1),
            max_batched_tokens: self.args.max_batched_tokens,
            prefix_caching,
            ..Default::default()
        };
        if let Some(budget) = self.engine_budget {
            let most = EngineConfig::default().with_memory_budget(budget.max(0.0) as u64, text, self.model.dtype()).num_blocks;
            let largest = prompts.iter().map(|p| (p.input_ids.len() + output).div_ceil(block)).max().unwrap_or(1);
            let blocks = pool_blocks(config.num_blocks, largest, most)?;
            if blocks < config.num_blocks {
                eprintln!("engine pool capped at {blocks} blocks of {block} tokens ({} wanted): requests wait for blocks", config.num_blocks);
            }
            config.num_blocks = blocks;
        }
        let mut engine = Engine::new(self.model.clone(), self.processor.clone(), config)?;
        // As a server starts (`phi3v serve --warm-up-rows`): every decode batch size this run
        // can meet compiled before the clock starts (without it, the first run at 10 requests
        // stalled on compilation: 4.9 tokens/s per request, then 75.4 in the same process).
        let warm = Instant::now();
        engine.warm_up(prompts.len())?;
        // On stderr, so that a point cut short by a time limit says whether it reached its run.
        eprintln!("engine warm-up for {} requests: {:.1} s", prompts.len(), warm.elapsed().as_secs_f64());
        let params = GenerationParams { max_new_tokens: output, min_new_tokens: output, stop_token_ids: Vec::new(), ..Default::default() };
        let _ = B::sync(self.device);
        let start = Instant::now();
        let handles = prompts.into_iter().map(|p| engine.submit(p, params.clone())).collect::<Result<Vec<_>, _>>()?;
        engine.run_until_idle()?;
        let mut times = Vec::with_capacity(handles.len());
        for h in handles {
            let mut t = Vec::with_capacity(output);
            while let Some(event) = h.try_recv() {
                match event {
                    RequestEvent::Token { at, .. } => t.push(at.duration_since(start).as_secs_f64()),
                    RequestEvent::Finished(r) => {
                        r?;
                    }
                }
            }
            times.push(t);
        }
        Ok((times, engine.stats().prefix_cached_tokens))
    }

    fn latency(&self) -> CliResult<Option<LatencyReport>> {
        let a = self.args;
        let (prompt, output) = parse_pair(&a.latency_shape, "latency shape")?;
        let bar = progress(a.warmup + a.runs.max(1), "latency");
        let r = guarded(|| {
            let mut runs = Vec::new();
            for r in 0..a.warmup + a.runs.max(1) {
                bar.set_position(r as u64);
                let t = self.generate_timed(&self.text_prompts(1, prompt, 5000 + r as u64), output)?;
                if r >= a.warmup {
                    runs.push(t.into_iter().next().unwrap_or_default());
                }
            }
            Ok(runs)
        });
        bar.finish_and_clear();
        match r {
            Ok(runs) => {
                let l = LatencyReport::from_runs(prompt, output, a.warmup, &runs);
                eprintln!("latency {prompt}x{output}: prefill {:.1} ms, {:.1} tokens/s decode", l.prefill_s.p50 * 1e3, l.decode_tokens_per_s);
                Ok(Some(l))
            }
            Err(e) => {
                eprintln!("latency {prompt}x{output}: failed: {e}");
                Ok(None)
            }
        }
    }

    fn images(&self, report: &mut BenchReport) -> CliResult<()> {
        let a = self.args;
        let sizes: Vec<(usize, usize)> = a.images.iter().map(|s| parse_pair(s, "image size")).collect::<CliResult<_>>()?;
        let bar = progress(sizes.len() * a.num_crops.len(), "images");
        for &(w, h) in &sizes {
            let img = synthetic_image(w as u32, h as u32);
            for &crops in &a.num_crops {
                bar.inc(1);
                let proc = self.processor.clone().with_num_crops(crops);
                let chat = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n";
                let mut p = ImagePoint { image: format!("{w}x{h}"), num_crops: crops, ..Default::default() };
                let r = guarded(|| {
                    let prompt = proc.process(chat, std::slice::from_ref(&img))?;
                    let im = prompt.images[0].clone();
                    let px = || Tensor::<B, 4>::from_data(TensorData::new(im.pixel_values.clone(), [im.num_used_crops, 3, 336, 336]), (self.device, self.model.dtype()));
                    let encode = |px: Tensor<B, 4>| -> CliResult<()> {
                        let f = self.model.embed_images(px, &[im.crop_grid])?;
                        let _ = f.sum().into_data();
                        Ok(())
                    };
                    for _ in 0..a.warmup {
                        encode(px())?;
                    }
                    let mut enc = Vec::new();
                    for _ in 0..a.runs.max(1) {
                        let input = px();
                        let (res, t) = timed::<B, _>(self.device, || encode(input));
                        res?;
                        enc.push(t);
                    }
                    let one = [prompt];
                    for _ in 0..a.warmup {
                        self.generate_timed(&one, 32)?;
                    }
                    let mut ttft = Vec::new();
                    let mut decode = Vec::new();
                    for _ in 0..a.runs.max(1) {
                        let t = self.generate_timed(&one, 32)?.remove(0);
                        ttft.push(t[0]);
                        decode.push(31.0 / (t[31] - t[0]));
                    }
                    let image_tokens = one[0].num_image_tokens()[0];
                    Ok((image_tokens, one[0].input_ids.len() - image_tokens, im.num_used_crops, enc, ttft, decode))
                });
                match r {
                    Ok((image_tokens, text_tokens, used, enc, ttft, decode)) => {
                        let ttft = report::percentile(&ttft, 50.0);
                        p.image_tokens = image_tokens;
                        p.text_tokens = text_tokens;
                        p.crops = used;
                        p.encode_ms = report::percentile(&enc, 50.0) * 1e3;
                        p.ttft_ms = ttft * 1e3;
                        p.prefill_image_tokens_per_s = image_tokens as f64 / ttft;
                        p.prefill_text_tokens_per_s = text_tokens as f64 / ttft;
                        p.decode_tokens_per_s = report::percentile(&decode, 50.0);
                    }
                    Err(e) => p.skipped = Some(e),
                }
                bar.suspend(|| eprintln!("image {w}x{h}, num_crops {crops}: {}", p.describe()));
                report.images.push(p);
                self.save(report);
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// A deterministic test pattern of `w × h` pixels (gradients and stripes).
fn synthetic_image(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, (((x / 16) + (y / 16)) % 2 * 200) as u8])
    }))
}

impl GenerationPoint {
    fn fill(&mut self, runs: &[Vec<Vec<f64>>]) {
        let (mut ttft, mut itl, mut per_request, mut e2e, mut totals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in runs {
            let mut end: f64 = 0.0;
            let mut tokens = 0;
            for times in run {
                let (Some(&first), Some(&last)) = (times.first(), times.last()) else { continue };
                ttft.push(first * 1e3);
                itl.extend(times.windows(2).map(|w| (w[1] - w[0]) * 1e3));
                if times.len() > 1 {
                    per_request.push((times.len() - 1) as f64 / (last - first));
                }
                e2e.push(last);
                end = end.max(last);
                tokens += times.len();
            }
            totals.push(tokens as f64 / end);
        }
        self.runs = runs.len();
        self.total_tokens_per_s = report::percentile(&totals, 50.0);
        self.per_request_tokens_per_s = Percentiles::of(&per_request);
        self.ttft_ms = Percentiles::of(&ttft);
        self.itl_ms = Percentiles::of(&itl);
        self.e2e_s = Percentiles::of(&e2e);
    }
}

impl LatencyReport {
    fn from_runs(prompt: usize, output: usize, warmup: usize, runs: &[Vec<f64>]) -> Self {
        let prefill: Vec<f64> = runs.iter().filter_map(|t| t.first().copied()).collect();
        let decode: Vec<f64> = runs.iter().filter_map(|t| Some(t.last()? - t.first()?)).collect();
        let per_token: Vec<f64> = runs.iter().flat_map(|t| t.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()).collect();
        let (prefill, decode, per_token) = (Stats::of(&prefill), Stats::of(&decode), Stats::of(&per_token));
        Self {
            prompt_len: prompt,
            output_len: output,
            warmup,
            runs: runs.len(),
            prefill_tokens_per_s: prompt as f64 / prefill.mean,
            decode_tokens_per_s: (output.saturating_sub(1)) as f64 / decode.mean,
            per_token_tokens_per_s: 1.0 / per_token.mean,
            prefill_s: prefill,
            decode_s: decode,
            per_token_s: per_token,
        }
    }
}

/// The model's kernels turned off for this process (`PHI3V_KERNELS_OFF`, the kernel policy).
pub(crate) fn kernels_off() -> Vec<&'static str> {
    burn_phi3v::kernels::KERNEL_NAMES.iter().filter(|n| !burn_phi3v::kernels::kernel_on(n)).copied().collect()
}

/// The model's kernel choices in force for this process (environment variables and setters:
/// `PHI3V_KERNELS_OFF`, `PHI3V_FLASH_ATTENTION`, `PHI3V_CUBLAS_ORDER`, `PHI3V_BLAS_MIN_ROWS`,
/// `PHI3V_SKINNY_MIN_ROWS`/`MAX_ROWS`, `PHI3V_SKINNY`), so that a result file says what ran.
fn kernel_settings() -> serde_json::Value {
    use burn_phi3v::kernels;
    serde_json::json!({
        "fused": kernels::fused_kernels(),
        "off": kernels_off(),
        "attention": format!("{:?}", kernels::flash_attention_choice()),
        "cublas_ordering": format!("{:?}", kernels::blas_ordering()),
        "blas_min_rows": kernels::blas_min_rows(),
        "skinny_rows": [kernels::skinny_min_rows(), kernels::skinny_max_rows()],
        "skinny": format!("{:?}", kernels::skinny_tuning()),
    })
}

/// Share of the device's memory the engine's steps keep beside its KV pool: activations, and
/// CubeCL's sliced pages, of which the largest hold 1/16 of the memory each on CUDA, so a step
/// that needs one more buffer of 0.3–2.7 GB needs a whole 5.3 GB page on the H100. Measured
/// there (session 26): with the pool of 128 requests × 1152 tokens (58 GB) beside 8.3 GB of
/// weights, a step still found no room for 1.2 GB at 80.7 GB in use, so the steps took more
/// than 14.4 GB (17 % of the memory); at 64 requests ~6.5 GB.
const ENGINE_RESERVE_FRACTION: f64 = 0.2;

/// Bytes of the benchmark's engine pool at most: the `budget` (the memory fraction less the
/// weights) less [`ENGINE_RESERVE_FRACTION`] of the device's `memory`.
fn engine_pool_budget(memory: u64, budget: f64) -> f64 {
    (budget - memory as f64 * ENGINE_RESERVE_FRACTION).max(0.0)
}

/// Blocks of the benchmark's engine pool: the `wanted` blocks of every request at once, or as
/// many as the memory budget holds (`most`), so long as the `largest` request fits on its own
/// (the others wait for blocks).
fn pool_blocks(wanted: usize, largest: usize, most: usize) -> CliResult<usize> {
    if largest > most {
        return Err(format!("one request's {largest} KV blocks do not fit the device memory ({most} do)").into());
    }
    Ok(wanted.min(most))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_pool_leaves_room_for_the_steps() {
        // The H100's 79.2 GiB at the default 0.9 with 8.3 GB of weights: a 51 GB pool at most,
        // less than 128 requests of 1152 tokens (58 GB), so some of them wait for blocks.
        let memory = 85_017_493_504u64;
        let budget = memory as f64 * 0.9 - 8.3e9;
        let pool = engine_pool_budget(memory, budget);
        assert!((pool - (budget - 0.2 * memory as f64)).abs() < 1.0 && pool < 58e9 && pool > 50e9, "{pool}");
        assert_eq!(engine_pool_budget(1 << 30, 1e8), 0.0);
    }

    #[test]
    fn the_engine_pool_is_capped_by_memory_but_holds_one_request() {
        assert_eq!(pool_blocks(100, 10, 1000).unwrap(), 100);
        assert_eq!(pool_blocks(20_000, 72, 9_000).unwrap(), 9_000);
        let e = pool_blocks(20_000, 10_000, 9_000).unwrap_err().to_string();
        assert!(e.contains("10000 KV blocks") && e.contains("9000 do"), "{e}");
    }

    #[test]
    fn shapes_parse_and_reject_garbage() {
        assert_eq!(parse_pair("1024x128", "shape").unwrap(), (1024, 128));
        assert_eq!(parse_pair("336X672", "image").unwrap(), (336, 672));
        for bad in ["1024", "x128", "0x5", "ax2", "3x-1"] {
            assert!(parse_pair(bad, "shape").is_err(), "{bad}");
        }
    }

    #[test]
    fn every_preset_parses_to_its_shapes() {
        for (name, json) in PRESETS {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let c = Phi3VConfig::from_value(&v, name).unwrap();
            if *name != "tiny" {
                assert_eq!((c.text.hidden_size, c.text.num_hidden_layers, c.text.vocab_size), (3072, 32, 32064), "{name}");
            }
            assert_eq!(c.vision.is_some(), !name.starts_with("phi3-mini"), "{name}");
        }
    }

    #[test]
    fn random_ids_are_deterministic_and_in_range() {
        let a = random_ids(1000, 7, 32064);
        assert_eq!(a, random_ids(1000, 7, 32064));
        assert_ne!(a, random_ids(1000, 8, 32064));
        assert!(a.iter().all(|&i| (100..32064 - 100).contains(&i)));
    }

    #[test]
    fn generation_metrics_from_token_times() {
        // Two requests, 3 tokens each, 10 ms apart after a 100 ms first token.
        let run = vec![vec![0.1, 0.11, 0.12], vec![0.1, 0.11, 0.12]];
        let mut p = GenerationPoint::default();
        p.fill(&[run]);
        assert!((p.ttft_ms.p50 - 100.0).abs() < 1e-9);
        assert!((p.itl_ms.p50 - 10.0).abs() < 1e-6);
        assert!((p.per_request_tokens_per_s.p50 - 100.0).abs() < 1e-6);
        assert!((p.total_tokens_per_s - 50.0).abs() < 1e-6, "6 tokens in 0.12 s");
    }
}
