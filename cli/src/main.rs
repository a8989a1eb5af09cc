//! `phi3v`: run Phi-3-vision / Phi-3.5-vision on any device burn-phi3v supports.
//!
//! ```text
//! phi3v generate --image photo.png --prompt "What is in this image?"
//! phi3v tokenize --image photo.png --prompt "Describe it." --json
//! phi3v devices
//! phi3v serve --port 8000
//! ```

use burn_phi3v::kernels::Kernels;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::DType;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::image_processor::load_image;
use burn_phi3v::kernel_cache::{self, KernelCache, KernelCacheStatus};
use burn_phi3v::{GenerationParams, LoadedModel, Message, Phi3VProcessor, SamplingParams, apply_chat_template, generate, with_image_tags};
use clap::{Args, Parser, Subcommand};
use phi3v_devices::DeviceFn;

mod bench;
mod mmmu;
mod serve;

/// The tiny random-weight checkpoint shipped in the repository: the default `--model`, so the
/// first command works with no download (its answers are meaningless text).
const EMBEDDED_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi35v-tiny");

#[derive(Parser)]
#[command(name = "phi3v", version, about = "Phi-3-vision and Phi-3.5-vision on every device, with Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where compiled GPU kernels and autotune results are kept between runs, so that a second
    /// run skips their compilation: a folder, or `off` (default: $PHI3V_KERNEL_CACHE, else
    /// ~/.cache/phi3v/kernels; a cubecl.toml in the working directory or above rules instead).
    #[arg(long, global = true, value_name = "DIR|off")]
    kernel_cache: Option<KernelCache>,
}

/// The kernel cache this run asked for (`--kernel-cache`, else [`KernelCache::from_env`]).
static KERNEL_CACHE: std::sync::OnceLock<KernelCache> = std::sync::OnceLock::new();

/// Turns the kernel cache on for the device `spec` names, before its first kernel (see
/// [`burn_phi3v::kernel_cache`]); says where on stderr. An unknown device is left to the caller
/// to report.
fn use_kernel_cache(spec: &str) -> CliResult<()> {
    let (Some(cache), Ok(info)) = (KERNEL_CACHE.get(), phi3v_devices::device_info(spec)) else {
        return Ok(());
    };
    let status = kernel_cache::configure(cache, &info)?;
    if matches!(status, KernelCacheStatus::Enabled(_) | KernelCacheStatus::UserConfig(_)) {
        eprintln!("{status}");
    }
    Ok(())
}

/// [`phi3v_devices::with_device`] after [`use_kernel_cache`]: every command that runs the
/// model comes through here.
fn with_device<F: DeviceFn>(spec: &str, dtype: Option<&str>, f: F) -> CliResult<F::Output> {
    use_kernel_cache(spec)?;
    Ok(phi3v_devices::with_device(spec, dtype, f)?)
}

#[derive(Subcommand)]
enum Command {
    /// Generate an answer to a prompt with images.
    Generate(GenerateArgs),
    /// Print the prompt's token ids, image sizes and image-token counts without running the model.
    Tokenize(TokenizeArgs),
    /// List the devices this build and this machine offer.
    Devices,
    /// MMMU accuracy runs and cross-device comparisons.
    Mmmu {
        #[command(subcommand)]
        command: mmmu::MmmuCommand,
    },
    /// Benchmarks: prompt ingestion, generation against parallel requests, images, KV-cache
    /// capacity, memory and batch-1 latency, written as JSON, CSV, graphs and a Markdown card.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions with images,
    /// completions, streaming, /health, /metrics).
    Serve(serve::ServeArgs),
}

#[derive(Args, Clone)]
struct PromptArgs {
    /// Hugging Face model folder (config.json, tokenizer.json, safetensors). Defaults to the
    /// tiny random-weight checkpoint shipped with the repository.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Image file (PNG, JPEG, WebP, GIF); repeat for several images, in order.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Prompt text; without --raw it becomes the user message and `<|image_k|>` tags are
    /// prepended for the images unless it already places them.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt as given (already in chat format): no chat template.
    #[arg(long)]
    raw: bool,
    /// Crops per image (default: the model's preprocessor_config.json).
    #[arg(long)]
    num_crops: Option<usize>,
}

/// Where the model runs: `--device` and `--dtype`, shared by the commands that run it.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Device: cpu, cuda[:N], wgpu[:N], vulkan[:N] (see `phi3v devices`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16 (default: the device's, bf16 on CUDA, f32 elsewhere).
    #[arg(long)]
    pub dtype: Option<String>,
}

#[derive(Args, Clone)]
struct GenerateArgs {
    #[command(flatten)]
    prompt: PromptArgs,
    #[command(flatten)]
    target: DeviceArgs,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Fewest tokens to generate (stop tokens are suppressed until then).
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Sampling temperature (greedy when no sampling flag is given).
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Sample among the k most likely tokens.
    #[arg(long, allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// Sampler seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable); it is not included in the output.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct TokenizeArgs {
    #[command(flatten)]
    prompt: PromptArgs,
    /// Print JSON (the only output format; accepted for clarity).
    #[arg(long)]
    json: bool,
}

type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn model_dir(p: &PromptArgs) -> PathBuf {
    p.model.clone().unwrap_or_else(|| PathBuf::from(EMBEDDED_MODEL))
}

/// The prompt text in chat format.
fn chat_prompt(p: &PromptArgs) -> CliResult<String> {
    let text = match (&p.prompt, &p.prompt_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| format!("cannot read prompt file {}: {e}", f.display()))?,
        (None, None) => return Err("give --prompt or --prompt-file".into()),
    };
    if p.raw {
        return Ok(text);
    }
    let mut messages = Vec::new();
    if let Some(s) = &p.system {
        messages.push(Message::new("system", s.clone()));
    }
    messages.push(Message::new("user", with_image_tags(&text, p.images.len())));
    Ok(apply_chat_template(&messages, true))
}

fn load_images(p: &PromptArgs, max_pixels: u64) -> CliResult<Vec<image::DynamicImage>> {
    Ok(p.images.iter().map(|path| load_image(path, max_pixels)).collect::<Result<_, _>>()?)
}

fn processor(p: &PromptArgs) -> CliResult<Phi3VProcessor> {
    let dir = model_dir(p);
    let mut proc = Phi3VProcessor::from_dir(&dir)?;
    if let Some(n) = p.num_crops {
        proc = proc.with_num_crops(n);
    }
    Ok(proc)
}

fn tokenize(args: &TokenizeArgs) -> CliResult<()> {
    let proc = processor(&args.prompt)?;
    let images = load_images(&args.prompt, proc.image_config.max_pixels)?;
    let processed = proc.process(&chat_prompt(&args.prompt)?, &images)?;
    let out = serde_json::json!({
        "input_ids": processed.input_ids,
        "image_sizes": processed.images.iter().map(|i| i.hd_size).collect::<Vec<_>>(),
        "num_image_tokens": processed.num_image_tokens(),
        "num_crops": proc.image_config.num_crops,
    });
    println!("{out}");
    Ok(())
}

fn devices() {
    let list = phi3v_devices::available_devices();
    println!("compiled backends: {}", phi3v_devices::compiled_backends().join(", "));
    #[cfg(feature = "wgpu")]
    println!("wgpu kernels on Vulkan: {} (feature `vulkan`: SPIR-V)", burn_phi3v::backends::wgpu::VULKAN_KERNELS);
    if let Some(cache) = KERNEL_CACHE.get() {
        println!("kernel cache: {cache} (--kernel-cache)");
    }
    if list.is_empty() {
        println!("no device available");
    }
    let gib = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64));
    for d in list {
        let dtypes: Vec<_> = d.dtypes.iter().map(|t| dtype_name(*t)).collect();
        println!(
            "{:<10} {}  total {}  free {}  dtypes {} (default {})",
            d.spec,
            d.name,
            gib(d.total_memory),
            gib(d.free_memory),
            dtypes.join(","),
            dtype_name(d.default_dtype)
        );
    }
}

/// Loads the model on the chosen backend and generates.
struct GenerateJob(GenerateArgs);

impl DeviceFn for GenerateJob {
    type Output = CliResult<()>;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> CliResult<()> {
        let a = self.0;
        let dir = model_dir(&a.prompt);
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(dir.display().to_string());
        if a.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        };
        let mut loaded = LoadedModel::<B>::load(&dir, device, dtype, Some(&progress))?;
        bar.finish_and_clear();
        if let Some(n) = a.prompt.num_crops {
            loaded.processor.image_config.num_crops = n;
        }
        let images = load_images(&a.prompt, loaded.processor.image_config.max_pixels)?;
        let prompt = loaded.processor.process(&chat_prompt(&a.prompt)?, &images)?;
        let sampling_asked = a.temperature.is_some() || a.top_k.is_some() || a.top_p.is_some() || a.seed.is_some();
        let params = GenerationParams {
            max_new_tokens: a.max_new_tokens,
            min_new_tokens: a.min_new_tokens,
            sampling: SamplingParams {
                temperature: a.temperature.unwrap_or(if sampling_asked { 1.0 } else { 0.0 }),
                top_k: a.top_k.unwrap_or(0),
                top_p: a.top_p.unwrap_or(1.0),
                repetition_penalty: a.repetition_penalty,
                seed: a.seed.unwrap_or(0),
            },
            stop_token_ids: loaded.stop_token_ids(),
            stop_strings: a.stop.clone(),
            ..Default::default()
        };
        let mut stdout = std::io::stdout().lock();
        let json = a.json;
        let out = generate(&loaded.model, &loaded.processor, &[&prompt], &[params], |e| {
            if !json {
                let _ = stdout.write_all(e.text_delta.as_bytes());
                let _ = stdout.flush();
            }
        })?;
        let out = &out[0];
        if json {
            let j = serde_json::json!({
                "input_ids": prompt.input_ids,
                "token_ids": out.token_ids,
                "text": out.text,
                "num_image_tokens": prompt.num_image_tokens(),
                "prompt_tokens": out.prompt_tokens,
                "finish_reason": format!("{:?}", out.finish_reason).to_lowercase(),
                "ttft_ms": out.time_to_first_token.as_secs_f64() * 1e3,
                "decode_tokens_per_s": out.decode_tokens_per_s(),
                "device": info.spec,
                "device_name": info.name,
                "dtype": dtype_name(dtype),
            });
            writeln!(stdout, "{j}")?;
        } else {
            writeln!(stdout)?;
            eprintln!(
                "[{} tokens, {} image tokens, ttft {:.1} ms, {:.1} tokens/s, {} on {} ({})]",
                out.token_ids.len(),
                out.image_tokens,
                out.time_to_first_token.as_secs_f64() * 1e3,
                out.decode_tokens_per_s(),
                dtype_name(dtype),
                info.spec,
                info.name
            );
        }
        Ok(())
    }
}

fn run(cli: Cli) -> CliResult<()> {
    let _ = KERNEL_CACHE.set(cli.kernel_cache.unwrap_or_else(KernelCache::from_env));
    match cli.command {
        Command::Generate(a) => {
            if !Path::new(&model_dir(&a.prompt)).is_dir() {
                return Err(format!("model folder {} does not exist", model_dir(&a.prompt).display()).into());
            }
            let target = a.target.clone();
            with_device(&target.device, target.dtype.as_deref(), GenerateJob(a))?
        }
        Command::Tokenize(a) => tokenize(&a),
        Command::Devices => {
            devices();
            Ok(())
        }
        Command::Mmmu { command } => mmmu::run(command),
        Command::Bench { command } => bench::run(command),
        Command::Serve(a) => serve::run(a, PathBuf::from(EMBEDDED_MODEL)),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!("\n  caused by: {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
