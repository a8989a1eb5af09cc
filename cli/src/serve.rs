//! `phi3v serve`: the OpenAI-compatible HTTP server of `phi3v-server` on a model and device.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use burn_phi3v::EngineConfig;
use clap::Args;
use phi3v_server::{ModelOptions, ModelService, ServerConfig};

use crate::CliResult;

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Hugging Face model folder. Defaults to the tiny random-weight checkpoint shipped with
    /// the repository.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    target: crate::DeviceArgs,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the bound address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: the environment variable
    /// PHI3V_API_KEY, which keeps the key out of the process list).
    #[arg(long)]
    api_key: Option<String>,
    /// Accept local file paths and file:// URLs as images (never remote URLs).
    #[arg(long)]
    allow_local_images: bool,
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Most images in one request (default: the image processor's, 32).
    #[arg(long)]
    max_images: Option<usize>,
    /// The model name clients send (default: the model folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// max_tokens when a request gives none (capped by the context).
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// Crops per image (default: the model's preprocessor_config.json).
    #[arg(long)]
    num_crops: Option<usize>,
    /// Tokens the engine's KV-cache pool holds (rounded up to whole blocks of 16).
    #[arg(long, default_value_t = 16384)]
    kv_cache_tokens: usize,
    /// Most requests running at once in the engine.
    #[arg(long, default_value_t = 256)]
    max_running: usize,
    /// Most tokens in one engine pass (decodes plus prefill chunks).
    #[arg(long, default_value_t = 512)]
    max_batched_tokens: usize,
    /// Random weights in the shapes of the model folder's config.json (its tokenizer and
    /// preprocessor are used, its checkpoint is not read): load tests of real shapes without
    /// the weights. The answers are meaningless.
    #[arg(long)]
    no_weights: bool,
    /// Decode batch sizes (1 to this many sequences) and prefill chunks to run once before
    /// serving, so that their GPU kernels are compiled before the first requests need them
    /// (a new batch size otherwise stalls the requests that meet it for seconds); 0: none.
    #[arg(long, default_value_t = 16)]
    warm_up_rows: usize,
    /// Compute every prompt from its first token (by default the KV blocks of a prompt prefix
    /// seen before, such as a shared system prompt or the same image, are reused).
    #[arg(long)]
    no_prefix_caching: bool,
}

/// Loads the model, starts its engine and serves until SIGINT/SIGTERM.
pub fn run(args: ServeArgs, default_model: PathBuf) -> CliResult<()> {
    let addr = phi3v_server::listen_addr(&args.host, args.port)?;
    let defaults = EngineConfig::default();
    let engine = EngineConfig {
        num_blocks: args.kv_cache_tokens.div_ceil(defaults.block_size).max(1),
        max_running: args.max_running,
        max_batched_tokens: args.max_batched_tokens,
        prefix_caching: !args.no_prefix_caching,
        ..defaults
    };
    let options = ModelOptions {
        model_dir: args.model.clone().unwrap_or(default_model),
        device: args.target.device.clone(),
        dtype: args.target.dtype.clone(),
        num_crops: args.num_crops,
        max_images: args.max_images,
        engine,
        random_weights: args.no_weights,
        warm_up_rows: args.warm_up_rows,
    };
    crate::use_kernel_cache(&options.device)?;
    let service = Arc::new(ModelService::load(&options)?);
    let mut config = ServerConfig::for_model(&service);
    if let Some(name) = args.served_model_name {
        config.served_model_name = name;
    }
    config.api_key = args.api_key.or_else(|| std::env::var("PHI3V_API_KEY").ok()).filter(|k| !k.is_empty());
    config.allow_local_images = args.allow_local_images;
    config.max_body_bytes = args.max_body_bytes;
    config.default_max_tokens = args.default_max_tokens.max(1);
    let name = config.served_model_name.clone();
    let (device, dtype) = (service.device.spec.clone(), service.dtype);
    phi3v_server::run(service, config, addr, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
        eprintln!("serving `{name}` on {device} ({dtype}); Ctrl-C stops after the requests in flight");
    })?;
    Ok(())
}
