//! `phi3v bench breakdown`: where the time of a decode step and of a prefill goes, stage by
//! stage of a decoder layer, at the real shapes with random weights (issue 10: measure first).
//!
//! Every stage is the model's own code (its modules' `forward`, `attend`, `kernels::rotary`) on
//! inputs of the shapes the model gives it. A stage is called `runs` times back to back after
//! `warmup` calls, between two device synchronisations; the figure is the mean per call, which
//! includes its launches as a real step does. `bench/peer_kernels.py` measures the same stages
//! in PyTorch and writes the same JSON, which `--peer` puts beside ours.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::kernels::{self, Kernels};
use burn_phi3v::model::phi3::LayerKv;
use burn_phi3v::model::{KvCache, Phi3VForCausalLM, RopeRegime};
use burn_phi3v::weights::Weights;
use burn_phi3v::{DeviceFn, Phi3VConfig};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{CliResult, with_device};

/// Options of `phi3v bench breakdown`.
#[derive(Args, Clone, Debug)]
pub struct BreakdownArgs {
    /// Built-in model shapes (see `phi3v bench run --preset`).
    #[arg(long, default_value = "phi3v-128k")]
    preset: String,
    /// Device: cpu, cuda[:N], wgpu[:N], vulkan[:N].
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Compute dtype (default: the device's, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Keys already cached when a decode step runs.
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Sequences decoded together (static batch rows).
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    decode_batches: Vec<usize>,
    /// Prompt length of the prefill phase (0: none).
    #[arg(long, default_value_t = 1024)]
    prefill: usize,
    /// Calls before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed calls per stage.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Time the model's steps composed from Burn ops instead of its kernels
    /// (burn_phi3v::kernels; like PHI3V_FUSED_KERNELS=0), to compare the two.
    #[arg(long)]
    composed_kernels: bool,
    /// The PyTorch peer's breakdown (bench/peer_kernels.py) to put beside ours.
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Also sample the host (CPU) while `--profile-steps` whole steps of every phase run, and
    /// write a flame graph, folded stacks and a table per phase into this folder (needs a build
    /// with the feature `profile`).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Whole steps run under the profiler per phase.
    #[arg(long, default_value_t = 100)]
    profile_steps: usize,
    /// Also time the prefill's attention under each of these flash-attention choices
    /// (`PHI3V_FLASH_ATTENTION`'s syntax, separated by `;`: `auto`, `burn`, `unit`, `scores`, `mma`,
    /// `planes,seq_q,seq_kv`), one extra stage each; the whole step keeps the process's choice.
    #[arg(long, value_delimiter = ';')]
    flash: Vec<String>,
    /// Crop grid (ROWSxCOLS) of the image whose encoding the vision phase times: the CLIP
    /// tower over `1 + ROWS·COLS` crops, stage by stage, then the HD layout and projection
    /// (4x4: `num_crops` 16, 17 crops). Presets without a vision tower skip the phase.
    #[arg(long, default_value = "4x4")]
    image_grid: String,
    /// Skip the vision phase.
    #[arg(long)]
    no_image: bool,
    /// Output folder (breakdown.json, breakdown.md).
    #[arg(long, default_value = "breakdown-out")]
    out: PathBuf,
}

/// One timed stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    /// Stage name (the same in the peer's JSON).
    pub name: String,
    /// Mean time per call, microseconds.
    pub us: f64,
    /// Calls in one step of the whole model (32 for a per-layer stage of Phi-3-mini).
    pub per_step: usize,
}

/// The stages of one phase and the measured whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    /// e.g. `decode b=1 ctx=1024`.
    pub phase: String,
    /// Stages.
    pub stages: Vec<Stage>,
    /// One whole decoder layer (its `forward`), microseconds.
    pub layer_us: f64,
    /// The whole step (decoder and `lm_head`), microseconds.
    pub step_us: f64,
    /// Of `step_us`, the time until the step's calls returned on the host (its launches
    /// enqueued, the device not yet synchronised): close to `step_us` when the host, not the
    /// device, sets the pace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_us: Option<f64>,
}

/// What `phi3v bench breakdown` writes (and `bench/peer_kernels.py`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Breakdown {
    /// Who measured: `burn-phi3v` or the peer's name.
    pub engine: String,
    /// Device name.
    pub device: String,
    /// Compute dtype.
    pub dtype: String,
    /// Model shapes.
    pub preset: String,
    /// Decode and prefill phases.
    pub phases: Vec<Phase>,
    /// The host floor of one launch: microseconds per kernel of a chain of [`LAUNCH_CHAIN`]
    /// RMSNorms over one token (one launch and one output allocation each, no other work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_us: Option<f64>,
}

/// Kernels in the chain that measures [`Breakdown::launch_us`].
pub const LAUNCH_CHAIN: usize = 256;

/// Entry point of `phi3v bench breakdown`.
pub fn run(args: BreakdownArgs) -> CliResult<()> {
    let (_, config) = super::preset_config(&args.preset)?;
    super::parse_pair(&args.image_grid, "--image-grid")?;
    let peer = match &args.peer {
        Some(p) if p.is_file() => {
            let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Some(serde_json::from_str::<Breakdown>(&s).map_err(|e| format!("{} is not a breakdown: {e}", p.display()))?)
        }
        Some(p) => return Err(format!("peer breakdown {} not found", p.display()).into()),
        None => None,
    };
    if args.profile.is_some() && !super::profile::AVAILABLE {
        // Fail before any work when this build has no profiler.
        return Err(super::profile::NO_PROFILER.into());
    }
    let (device, dtype, out) = (args.device.clone(), args.dtype.clone(), args.out.clone());
    let ours = with_device(&device, dtype.as_deref(), BreakdownJob { args, config })??;
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let md = markdown(&ours, peer.as_ref());
    write(&out.join("breakdown.json"), &serde_json::to_string_pretty(&ours)?)?;
    write(&out.join("breakdown.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn write(path: &Path, text: &str) -> CliResult<()> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

struct BreakdownJob {
    args: BreakdownArgs,
    config: Phi3VConfig,
}

impl DeviceFn for BreakdownJob {
    type Output = CliResult<Breakdown>;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> CliResult<Breakdown> {
        let a = &self.args;
        if a.composed_kernels {
            kernels::set_fused_kernels(false);
        }
        let w = Weights::<B>::random(device, dtype);
        let model = burn_phi3v::loader::load_model(&w, &self.config)?;
        let timer = Timer::<B> {
            device: device.clone(),
            warmup: a.warmup,
            runs: a.runs.max(1),
        };
        let profile = a.profile.as_ref().map(|dir| (dir.as_path(), a.profile_steps.max(1)));
        let flash = flash_choices(&a.flash)?;
        let mut phases = Vec::new();
        for &b in &a.decode_batches {
            eprintln!("decode b={b} ctx={}", a.context);
            phases.push(phase(&model, &timer, dtype, b, 1, a.context, profile, &[])?);
        }
        if a.prefill > 0 {
            eprintln!("prefill {}", a.prefill);
            phases.push(phase(&model, &timer, dtype, 1, a.prefill, 0, profile, &flash)?);
        }
        if let (Some(_), false) = (&model.vision_embed_tokens, a.no_image) {
            let (rows, cols) = super::parse_pair(&a.image_grid, "--image-grid")?;
            eprintln!("vision {rows}x{cols} grid ({} crops)", 1 + rows * cols);
            phases.push(vision_phase(&model, &timer, dtype, [rows, cols], &flash)?);
        }
        let norm = &model.model.norm;
        let token = random::<B, 3>([1, 1, self.config.text.hidden_size], device, dtype);
        let chain = || (0..LAUNCH_CHAIN).fold(token.clone(), |y, _| norm.forward(y));
        let launch_us = timer.time(chain) / LAUNCH_CHAIN as f64;
        eprintln!("launch floor: {launch_us:.2} µs per kernel");
        Ok(Breakdown {
            engine: {
                // The attention choice and the kernels that differ from the defaults, so that
                // a breakdown says what it timed.
                let off = super::kernels_off().join(", ");
                let mut engine = format!("burn-phi3v, attention {:?}", kernels::flash_attention_choice());
                if !kernels::fused_kernels() {
                    engine.push_str(", composed steps");
                } else if !off.is_empty() {
                    engine.push_str(&format!(", kernels off: {off}"));
                }
                match kernels::blas_ordering() {
                    _ if !kernels::kernel_on("blas_matmul") => {}
                    kernels::BlasOrdering::Stream => engine.push_str(", cuBLAS on CubeCL's stream"),
                    kernels::BlasOrdering::Queued => engine.push_str(", cuBLAS queued on CubeCL's stream"),
                    kernels::BlasOrdering::Host => {}
                }
                engine
            },
            device: format!("{} ({})", info.name, info.spec),
            dtype: dtype_name(dtype).into(),
            preset: a.preset.clone(),
            phases,
            launch_us: Some(launch_us),
        })
    }
}

/// `--flash`'s choices, each in `PHI3V_FLASH_ATTENTION`'s syntax.
pub(super) fn flash_choices(list: &[String]) -> Result<Vec<kernels::FlashAttention>, String> {
    list.iter()
        .map(|c| kernels::FlashAttention::parse(c).ok_or_else(|| format!("--flash: `{c}` is not auto, burn, unit, scores, mma or planes,seq_q,seq_kv")))
        .collect()
}

pub(super) struct Timer<B: Kernels> {
    pub(super) device: B::Device,
    pub(super) warmup: usize,
    pub(super) runs: usize,
}

impl<B: Kernels> Timer<B> {
    /// Mean microseconds per call of `f`, `runs` calls between two synchronisations.
    pub(super) fn time<T>(&self, f: impl FnMut() -> T) -> f64 {
        self.time_host(f).0
    }

    /// The same, and the mean microseconds per call until the calls returned on the host
    /// (before the closing synchronisation).
    fn time_host<T>(&self, mut f: impl FnMut() -> T) -> (f64, f64) {
        for _ in 0..self.warmup {
            drop(f());
        }
        let _ = B::sync(&self.device);
        let t = Instant::now();
        for _ in 0..self.runs {
            drop(f());
        }
        let host = t.elapsed();
        let _ = B::sync(&self.device);
        let per_call = |d: std::time::Duration| d.as_secs_f64() * 1e6 / self.runs as f64;
        (per_call(t.elapsed()), per_call(host))
    }
}

/// Largest |out − base| over the largest |base| (infinite when the lengths differ).
pub(super) fn relative_difference(base: &[f32], out: &[f32]) -> f64 {
    if base.len() != out.len() {
        return f64::INFINITY;
    }
    let scale = base.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    // `f32::max` passes over a NaN: a NaN difference is counted as infinite instead.
    let diff = base.iter().zip(out).fold(0f32, |m, (a, b)| if (a - b).is_nan() { f32::INFINITY } else { m.max((a - b).abs()) });
    f64::from(diff / scale)
}

pub(super) fn random<B: Kernels, const D: usize>(shape: [usize; D], device: &B::Device, dtype: DType) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
}

/// `b` rows of `s` new tokens after `ctx` cached keys; with `profile` (folder, steps), that many
/// whole steps are also run under the host profiler; a prefill's attention is also timed under
/// each `flash` choice.
#[allow(clippy::too_many_arguments)]
fn phase<B: Kernels>(
    model: &Phi3VForCausalLM<B>,
    timer: &Timer<B>,
    dtype: DType,
    b: usize,
    s: usize,
    ctx: usize,
    profile: Option<(&Path, usize)>,
    flash: &[kernels::FlashAttention],
) -> CliResult<Phase> {
    let device = &timer.device;
    let c = &model.config.text;
    let (hidden, h, hd, inter) = (c.hidden_size, c.num_attention_heads, c.head_dim(), c.intermediate_size);
    let kvh = c.num_key_value_heads;
    let layers = model.model.layers.len();
    let layer = &model.model.layers[0];
    let attn = &layer.self_attn;
    let positions: Vec<Vec<usize>> = (0..b).map(|_| (ctx..ctx + s).collect()).collect();
    let rope = &model.model.rotary_emb;
    let regimes = vec![rope.regime(ctx + s); b];
    let (cos, sin) = rope.tables::<B>(&positions, &regimes, device, dtype);

    let x = random::<B, 3>([b, s, hidden], device, dtype);
    let qkv = attn.qkv_proj.forward(x.clone());
    let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
    let (q_rows, k_rows) = (qkv.clone().narrow(2, 0, h * hd), qkv.clone().narrow(2, h * hd, kvh * hd));
    let qk_rows = qkv.clone().narrow(2, 0, (h + kvh) * hd); // what the model rotates in one call
    let q = heads(q_rows.clone(), h);
    let k = heads(k_rows.clone(), kvh);
    let v = heads(qkv.clone().narrow(2, (h + kvh) * hd, kvh * hd), kvh);
    let cached = (ctx > 0).then(|| LayerKv::new(random::<B, 4>([b, kvh, ctx, hd], device, dtype), random::<B, 4>([b, kvh, ctx, hd], device, dtype)));
    // What attention reads: views of the cache buffers after this step's append.
    let (keys, values) = match &cached {
        Some(kv) => {
            let kv = kv.clone().append(k.clone(), v.clone());
            (kv.keys(), kv.values())
        }
        None => (k.clone(), v.clone()),
    };
    let causal = ctx == 0 && s > 1;
    let attn_out = random::<B, 3>([b, s, h * hd], device, dtype);
    let act = random::<B, 3>([b, s, inter], device, dtype);

    let mut stages = Vec::new();
    let mut stage = |name: &str, per_layer: usize, us: f64| {
        // As it goes, so that a run cut short still tells what it measured.
        eprintln!("  {name}: {us:.1} µs");
        stages.push(Stage {
            name: name.into(),
            us,
            per_step: per_layer * layers,
        })
    };
    // The projections as the decoder layer runs them: each norm inside the projection after
    // it, each residual add and the SiLU·mul inside the projection before it.
    let (ln1, ln2) = (&layer.input_layernorm, &layer.post_attention_layernorm);
    stage(
        "input_layernorm + qkv_proj",
        1,
        timer.time(|| kernels::norm_linear(x.clone(), &ln1.weight, ln1.eps, &attn.qkv_proj.weight)),
    );
    match &cached {
        // A step over a cache: rotation, head split and append in one (in place into the cache's
        // buffers; the first, warm-up, call copies the shared clone).
        Some(kv) => {
            let mut kv = Some(kv.clone());
            let append = || {
                let (q, next) = kv.take().expect("a cache").append_qkv(qkv.clone(), &cos, &sin, h);
                kv = Some(next);
                q
            };
            stage("rotary + kv-cache append", 1, timer.time(append));
        }
        None => stage("rotary (q and k)", 1, timer.time(|| kernels::rotary(qk_rows.clone(), &cos, &sin, hd))),
    }
    stage(
        "attention",
        1,
        timer.time(|| {
            if s == 1 && ctx > 0 {
                kernels::decode_attention(q.clone(), keys.clone(), values.clone()) // what a decode step runs
            } else {
                kernels::attention(q.clone(), keys.clone(), values.clone(), None, causal) // what a prefill runs
            }
        }),
    );
    if ctx == 0 && s > 1 {
        for (name, us) in time_flash_choices(timer, flash, || kernels::attention(q.clone(), keys.clone(), values.clone(), None, causal)) {
            stage(&name, 1, us);
        }
    }
    stage("o_proj + residual add", 1, timer.time(|| kernels::linear_add(attn_out.clone(), &attn.o_proj.weight, x.clone())));
    stage(
        "post_attention_layernorm + gate_up_proj + silu(gate)·up",
        1,
        timer.time(|| kernels::norm_linear_silu_mul(x.clone(), &ln2.weight, ln2.eps, &layer.mlp.gate_up_proj.weight)),
    );
    stage("down_proj + residual add", 1, timer.time(|| kernels::linear_add(act.clone(), &layer.mlp.down_proj.weight, x.clone())));
    stage("rotary tables (host)", 0, timer.time(|| rope.tables::<B>(&positions, &regimes, device, dtype)));
    let last = x.clone().narrow(1, s - 1, 1);
    stage("final norm", 0, timer.time(|| model.model.norm.forward(last.clone())));
    stage("lm_head (last token)", 0, timer.time(|| model.lm_head.forward(last.clone())));
    // Stages run once per step, not per layer.
    for st in stages.iter_mut().filter(|st| st.per_step == 0) {
        st.per_step = 1;
    }

    // A decode step appends to a cache that persists across the timed calls (the context grows
    // by one per call, in place, as in generation); a prefill starts from an empty cache. A layer
    // inside the stack adds the previous layer's output with its first norm and leaves its own
    // last add to the next layer.
    let mut kv = cached.clone();
    let layer_us = timer.time(|| {
        if ctx == 0 {
            kv = None;
        }
        layer.forward(x.clone(), &cos, &sin, &mut kv, None)
    });
    let ids: Tensor<B, 2, Int> = Tensor::from_data(TensorData::new(vec![100i64; b * s], [b, s]), device);
    let mut cache = KvCache {
        layers: (0..layers)
            .map(|_| {
                cached
                    .as_ref()
                    .map(|_| LayerKv::new(random::<B, 4>([b, kvh, ctx, hd], device, dtype), random::<B, 4>([b, kvh, ctx, hd], device, dtype)))
            })
            .collect(),
        regimes: if ctx > 0 { vec![RopeRegime::Short; b] } else { Vec::new() },
    };
    let mut step = || {
        if ctx == 0 {
            cache.clear();
        }
        let embeds = model.model.embed(ids.clone());
        let out = model.model.forward(embeds, &positions, &regimes, &mut cache, None, false);
        model.lm_head.forward(out.last_hidden_state.narrow(1, s - 1, 1))
    };
    let (step_us, host_us) = timer.time_host(&mut step);
    if let Some((dir, steps)) = profile {
        let p = super::profile::start()?;
        for _ in 0..steps {
            drop(step());
        }
        let _ = B::sync(device);
        let file = if ctx > 0 { format!("decode-b{b}") } else { format!("prefill-{s}") };
        p.finish(dir, &file)?;
    }
    let name = if ctx > 0 { format!("decode b={b} ctx={ctx}") } else { format!("prefill {s}") };
    Ok(Phase {
        phase: name,
        stages,
        layer_us,
        step_us,
        host_us: Some(host_us),
    })
}

/// `attend` timed under each `flash` choice in turn (the process's choice restored after), as
/// `("attention with flash CHOICE", µs)` stages; the tilings refused are printed.
fn time_flash_choices<B: Kernels, T>(timer: &Timer<B>, flash: &[kernels::FlashAttention], mut attend: impl FnMut() -> T) -> Vec<(String, f64)> {
    let process_choice = kernels::flash_attention_choice();
    let timed = flash
        .iter()
        .map(|&choice| {
            kernels::set_flash_attention(choice);
            (format!("attention with flash {choice:?}"), timer.time(&mut attend))
        })
        .collect();
    kernels::set_flash_attention(process_choice);
    for reason in kernels::flash_attention_refusals() {
        eprintln!("  (flash tiling refused, Burn's attention ran: {reason})");
    }
    timed
}

/// The image encoding of one image with a `grid` of crops (`embed_images`), stage by stage of a
/// CLIP encoder layer as `ClipEncoderLayer::forward` runs them, over `1 + rows·cols` crops of
/// `1 + 576` tokens; the tower's attention is also timed under each `flash` choice. The whole
/// "step" is `embed_images` (CLIP, 2×2 merge, HD layout, projection).
fn vision_phase<B: Kernels>(model: &Phi3VForCausalLM<B>, timer: &Timer<B>, dtype: DType, grid: [usize; 2], flash: &[kernels::FlashAttention]) -> CliResult<Phase> {
    let device = &timer.device;
    let vision = model.vision_embed_tokens.as_ref().ok_or("this preset has no vision tower")?;
    let c = &model.config.vision.as_ref().ok_or("this preset has no vision configuration")?.clip;
    let tower = &vision.img_processor;
    let (crops, size) = (1 + grid[0] * grid[1], c.image_size);
    let (d, heads, inter) = (c.hidden_size, c.num_attention_heads, c.intermediate_size);
    let tokens = 1 + (size / c.patch_size).pow(2);
    let layers = tower.layers.len();
    let layer = tower.layers.first().ok_or("the vision tower has no layers")?;
    let attn = &layer.self_attn;
    let pixels = random::<B, 4>([crops, c.num_channels, size, size], device, dtype);
    let x = random::<B, 3>([crops, tokens, d], device, dtype);
    // The heads as `ClipAttention::forward` splits them: views of `qkv_proj`'s output.
    let qkv = attn.qkv_proj.forward(x.clone());
    let split = |i: usize| qkv.clone().narrow(2, i * d, d).reshape([crops, tokens, heads, d / heads]).swap_dims(1, 2);
    let (q, k, v) = (split(0), split(1), split(2));
    let hidden = random::<B, 3>([crops, tokens, inter], device, dtype);

    let mut stages = Vec::new();
    let mut stage = |name: &str, per_step: usize, us: f64| {
        eprintln!("  {name}: {us:.1} µs");
        stages.push(Stage { name: format!("vision: {name}"), us, per_step });
    };
    stage("embeddings + pre_layrnorm", 1, timer.time(|| tower.pre_layrnorm.forward(tower.embeddings.forward(pixels.clone()))));
    stage("layer_norm1", layers, timer.time(|| layer.layer_norm1.forward(x.clone())));
    // The same norm composed from Burn's ops (what `layer_norm1` runs when `Kernels::layer_norm`
    // is off): an alternative, not part of the step.
    let ln = &layer.layer_norm1;
    let composed = timer.time(|| kernels::composed::layer_norm(x.clone(), ln.weight.clone(), ln.bias.clone(), ln.eps));
    stage("layer_norm1 (alternative: Burn's composed ops)", layers, composed);
    // One product of the three weights side by side (`qkv_proj`); the row keeps the name the
    // peer's three products have.
    stage("q_proj + k_proj + v_proj", layers, timer.time(|| attn.qkv_proj.forward(x.clone())));
    // What `ClipAttention::forward` runs between its projections: the head split's views, the
    // attention, and the heads merged back (a copy).
    let attend = || kernels::attention(q.clone(), k.clone(), v.clone(), None, false).swap_dims(1, 2).reshape([crops, tokens, d]);
    stage("attention", layers, timer.time(attend));
    for (name, us) in time_flash_choices(timer, flash, attend) {
        stage(&name, layers, us);
    }
    // `out_proj` and `fc2` add the residual (in the product's epilogue where the backend can).
    stage("out_proj + residual", layers, timer.time(|| attn.out_proj.forward_add(x.clone(), x.clone())));
    stage("residual add (alternative: a pass of its own)", 2 * layers, timer.time(|| x.clone() + x.clone()));
    stage("layer_norm2", layers, timer.time(|| layer.layer_norm2.forward(x.clone())));
    // As `ClipMlp::forward`: fc1 without its bias, which the activation's kernel adds.
    let fc1 = &layer.mlp.fc1;
    stage("fc1", layers, timer.time(|| kernels::linear(x.clone(), &fc1.weight, None)));
    stage("quick_gelu", layers, timer.time(|| kernels::quick_gelu(hidden.clone(), fc1.bias.as_ref())));
    let composed = timer.time(|| kernels::composed::quick_gelu(hidden.clone()));
    stage("quick_gelu (alternative: Burn's composed ops)", layers, composed);
    stage("fc2 + residual", layers, timer.time(|| layer.mlp.fc2.forward_add(hidden.clone(), x.clone())));
    let features = random::<B, 3>([crops, tokens - 1, d], device, dtype);
    stage("img_projection (HD layout excluded)", 1, {
        let merged_tokens = features.dims()[0] * features.dims()[1] / 4;
        let merged = random::<B, 2>([merged_tokens, 4 * d], device, dtype);
        timer.time(|| vision.img_projection_2.forward(burn::tensor::activation::gelu(vision.img_projection_0.forward(merged.clone()))))
    });
    let layer_us = timer.time(|| layer.forward(x.clone()));
    model.embed_images(pixels.clone(), &[grid])?; // the shapes agree (then every timed call's do)
    let (step_us, host_us) = timer.time_host(|| model.embed_images(pixels.clone(), &[grid]));
    Ok(Phase {
        phase: format!("vision {}x{} grid, {crops} crops", grid[0], grid[1]),
        stages,
        layer_us,
        step_us,
        host_us: Some(host_us),
    })
}

/// Markdown: per phase, every stage's time per call and per step, its share of the measured
/// step, and the peer's figure beside it when given.
pub fn markdown(ours: &Breakdown, peer: Option<&Breakdown>) -> String {
    let mut s = format!("# Step breakdown: {} on {} ({})\n", ours.preset, ours.device, ours.dtype);
    if let Some(p) = peer {
        s += &format!("\nPeer: {} on {} ({}).\n", p.engine, p.device, p.dtype);
    }
    for ph in &ours.phases {
        let pp = peer.and_then(|p| p.phases.iter().find(|x| x.phase == ph.phase));
        s += &format!("\n## {}\n\n", ph.phase);
        s += "| stage | calls / step | µs / call | ms / step | share of step |";
        s += if pp.is_some() { " peer µs / call | ours / peer |\n|---|---|---|---|---|---|---|\n" } else { "\n|---|---|---|---|---|\n" };
        let mut sum = 0.0;
        for st in &ph.stages {
            let per_step = st.us * st.per_step as f64;
            // The alternatives (to the process's attention: `--flash`; to a kernel) are not
            // part of its step.
            if !st.name.contains("attention with flash") && !st.name.contains("(alternative") {
                sum += per_step;
            }
            s += &format!("| {} | {} | {:.1} | {:.3} | {:.1} % |", st.name, st.per_step, st.us, per_step / 1e3, 100.0 * per_step / ph.step_us);
            if let Some(pp) = pp {
                match pp.stages.iter().find(|x| x.name == st.name) {
                    Some(x) => s += &format!(" {:.1} | {:.2} |", x.us, st.us / x.us),
                    None => s += " – | – |",
                }
            }
            s += "\n";
        }
        let layers = ph.stages.iter().find(|x| x.name.contains("qkv_proj") || x.name.contains("q_proj")).map_or(1, |x| x.per_step);
        s += &format!(
            "\nSum of the stages: {:.2} ms; whole layer {:.1} µs × {layers} = {:.2} ms; whole step {:.2} ms",
            sum / 1e3,
            ph.layer_us,
            ph.layer_us * layers as f64 / 1e3,
            ph.step_us / 1e3
        );
        match pp {
            Some(pp) if pp.step_us > 0.0 => {
                s += &format!(" (peer: layer {:.1} µs, step {:.2} ms, ours / peer {:.2})", pp.layer_us, pp.step_us / 1e3, ph.step_us / pp.step_us)
            }
            Some(pp) => s += &format!(" (peer: layer {:.1} µs, whole step not measured)", pp.layer_us),
            None => {}
        }
        s += ".\n";
        if let Some(host) = ph.host_us {
            s += &format!(
                "Host: the step's calls returned after {:.2} ms ({:.0} % of the step; near 100 % the host sets the pace).\n",
                host / 1e3,
                100.0 * host / ph.step_us
            );
        }
    }
    if let Some(us) = ours.launch_us {
        s += &format!("\n## Launch floor\n\nA chain of {LAUNCH_CHAIN} RMSNorm kernels over one token: {us:.2} µs per kernel.\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(engine: &str, us: f64) -> Breakdown {
        Breakdown {
            engine: engine.into(),
            device: "dev".into(),
            dtype: "bf16".into(),
            preset: "tiny".into(),
            phases: vec![Phase {
                phase: "decode b=1 ctx=8".into(),
                stages: vec![Stage {
                    name: "qkv_proj".into(),
                    us,
                    per_step: 2,
                }],
                layer_us: 2.0 * us,
                step_us: 10.0 * us,
                host_us: Some(5.0 * us),
            }],
            launch_us: Some(us / 10.0),
        }
    }

    #[test]
    fn a_nan_or_a_length_mismatch_is_an_infinite_difference() {
        assert_eq!(relative_difference(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
        assert!((relative_difference(&[1.0, -2.0], &[1.0, -1.0]) - 0.5).abs() < 1e-12);
        assert_eq!(relative_difference(&[1.0, -2.0], &[f32::NAN, -2.0]), f64::INFINITY);
        assert_eq!(relative_difference(&[1.0, -2.0], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn markdown_puts_the_peer_beside_ours() {
        let md = markdown(&sample("burn-phi3v", 30.0), Some(&sample("torch", 10.0)));
        assert!(md.contains("| qkv_proj | 2 | 30.0 | 0.060 | 20.0 % | 10.0 | 3.00 |"), "{md}");
        assert!(md.contains("ours / peer 3.00"), "{md}");
        assert!(md.contains("returned after 0.15 ms (50 % of the step"), "{md}");
        // An alternative attention (`--flash`) is listed but not summed into the step.
        let mut with_alternative = sample("burn-phi3v", 30.0);
        let alternative = Stage { name: "attention with flash Scores".into(), us: 1000.0, per_step: 2 };
        with_alternative.phases[0].stages.push(alternative);
        let md = markdown(&with_alternative, None);
        assert!(md.contains("| attention with flash Scores | 2 | 1000.0 |") && md.contains("Sum of the stages: 0.06 ms"), "{md}");
        let alone = markdown(&sample("burn-phi3v", 30.0), None);
        assert!(!alone.contains("peer"), "{alone}");
        assert!(alone.contains("RMSNorm kernels over one token: 3.00 µs per kernel"), "{alone}");
    }
}
