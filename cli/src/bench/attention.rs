//! `phi3v bench attention`: the attention of a prefill and of the vision tower alone, under each
//! flash-attention choice ([`kernels::FlashAttention`]) in one process on one device (issue 10:
//! a micro-benchmark per kernel). Each choice is timed as `phi3v bench breakdown` times a stage
//! (`warmup` calls, then `runs` calls between two device synchronisations; the mean per call)
//! and its output is compared with the first choice's on the same inputs.

use std::path::PathBuf;

use burn::tensor::{DType, Tensor};
use burn_phi3v::DeviceFn;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::kernels::{self, FlashAttention, Kernels};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::breakdown::{Timer, flash_choices, random, relative_difference};
use crate::{CliResult, with_device};

/// Options of `phi3v bench attention`.
#[derive(Args, Clone, Debug)]
pub struct AttentionArgs {
    /// Device: cpu, cuda[:N], wgpu[:N], vulkan[:N].
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Compute dtype (default: the device's, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Problems `batch,heads,queries,keys,head_dim[,causal]`, separated by `;`. Default: Phi-3's
    /// prefill of 1024 tokens, and CLIP ViT-L/14-336 over the 17 crops of num_crops 16.
    #[arg(long, value_delimiter = ';', default_value = "1,32,1024,1024,96,causal;17,16,577,577,64")]
    shapes: Vec<String>,
    /// Choices in `PHI3V_FLASH_ATTENTION`'s syntax (`auto`, `burn`, `unit`,
    /// `scores`, `mma`, `planes,seq_q,seq_kv`), separated by `;`; the first is the one the others are compared with.
    #[arg(long, value_delimiter = ';', default_value = "burn;scores;4,2,2")]
    flash: Vec<String>,
    /// Also time the parts of the `scores` choice on each whole problem (one chunk: q·kᵀ, the
    /// softmax, p·v), and `scores` in one chunk, to see where its time goes.
    #[arg(long)]
    parts: bool,
    /// Calls before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed calls per choice.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One attention problem.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    pub batch: usize,
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl Problem {
    /// Reads `batch,heads,queries,keys,head_dim[,causal]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let causal = match parts.get(5) {
            None => false,
            Some(&"causal") => true,
            Some(other) => return Err(format!("--shapes: `{other}` in `{s}` is not `causal`")),
        };
        let n: Vec<usize> = parts
            .iter()
            .take(5)
            .map(|p| p.parse().ok().filter(|&v| v > 0))
            .collect::<Option<_>>()
            .filter(|v: &Vec<usize>| v.len() == 5 && parts.len() <= 6)
            .ok_or_else(|| format!("--shapes: `{s}` is not batch,heads,queries,keys,head_dim[,causal] (positive numbers)"))?;
        if causal && n[3] < n[2] {
            return Err(format!("--shapes: `{s}`: a causal problem needs keys ≥ queries"));
        }
        Ok(Self { batch: n[0], heads: n[1], queries: n[2], keys: n[3], head_dim: n[4], causal })
    }

    /// `batch×heads×queries×keys×head_dim[ causal]`, as the Markdown tables name it.
    pub fn label(&self) -> String {
        let how = if self.causal { " causal" } else { "" };
        format!("{}×{}×{}×{}×{}{how}", self.batch, self.heads, self.queries, self.keys, self.head_dim)
    }

    /// Multiply-adds ×2 of the two products a query row's visible keys need (a causal row
    /// sees `i + keys − queries + 1` keys).
    pub fn flop(&self) -> f64 {
        let visible = if self.causal {
            let (q, k) = (self.queries as f64, self.keys as f64);
            q * (k - q) + q * (q + 1.0) / 2.0
        } else {
            (self.queries * self.keys) as f64
        };
        4.0 * (self.batch * self.heads * self.head_dim) as f64 * visible
    }
}

/// One choice's figures on one problem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    pub problem: Problem,
    /// The choice, as `PHI3V_FLASH_ATTENTION` spells it (Debug form).
    pub choice: String,
    /// Mean microseconds per call.
    pub us: f64,
    /// [`Problem::flop`] per second, in TFLOP/s.
    pub tflops: f64,
    /// Largest |output − first choice's output| over the largest |first choice's output|.
    pub rel_diff: f64,
}

/// One part of the `scores` choice timed alone (`--parts`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartTiming {
    pub problem: Problem,
    /// `scores, one chunk`, `q·kᵀ`, `softmax` or `p·v`.
    pub part: String,
    /// Mean microseconds per call.
    pub us: f64,
}

/// What `phi3v bench attention` writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttentionReport {
    pub device: String,
    pub dtype: String,
    pub timings: Vec<Timing>,
    /// `--parts`: the parts of `scores`, per problem.
    #[serde(default)]
    pub parts: Vec<PartTiming>,
}

/// Entry point of `phi3v bench attention`.
pub fn run(args: AttentionArgs) -> CliResult<()> {
    let problems = args.shapes.iter().map(|s| Problem::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let choices = flash_choices(&args.flash)?;
    if choices.is_empty() {
        return Err("--flash: no choice given".into());
    }
    let job = AttentionJob { problems, choices, parts: args.parts, warmup: args.warmup, runs: args.runs.max(1) };
    let report = with_device(&args.device, args.dtype.as_deref(), job)?;
    print!("{}", markdown(&report));
    for r in kernels::flash_attention_refusals() {
        eprintln!("refused (Burn's attention ran instead): {r}");
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    }
    Ok(())
}

/// Buffers of an output's size filled with NaN before each compared call (see `run`).
const POISONED_BUFFERS: usize = 8;

struct AttentionJob {
    problems: Vec<Problem>,
    choices: Vec<FlashAttention>,
    parts: bool,
    warmup: usize,
    runs: usize,
}

impl DeviceFn for AttentionJob {
    type Output = AttentionReport;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> AttentionReport {
        let timer = Timer::<B> { device: device.clone(), warmup: self.warmup, runs: self.runs };
        let process_choice = kernels::flash_attention_choice();
        let (mut timings, mut parts) = (Vec::new(), Vec::new());
        for p in &self.problems {
            let shape = |n| [p.batch, p.heads, n, p.head_dim];
            let (q, k, v) = (random::<B, 4>(shape(p.queries), device, dtype), random::<B, 4>(shape(p.keys), device, dtype), random::<B, 4>(shape(p.keys), device, dtype));
            let attend = || kernels::attention(q.clone(), k.clone(), v.clone(), None, p.causal);
            let mut first: Option<Vec<f32>> = None;
            for &choice in &self.choices {
                kernels::set_flash_attention(choice);
                let us = timer.time(attend);
                // A kernel that writes nothing hands back whatever its recycled output buffer
                // held: here, the timed runs' outputs on these same inputs, equal to the right
                // answer (session 25: a kernel whose source failed to generate showed a relative
                // difference of 0 at one shape). The pool's free buffers of the output's size are
                // filled with NaN first, so such a kernel shows an infinite difference.
                drop((0..POISONED_BUFFERS).map(|_| Tensor::<B, 4>::full(shape(p.queries), f32::NAN, (device, dtype))).collect::<Vec<_>>());
                let out: Vec<f32> = attend().into_data().convert::<f32>().into_vec().unwrap_or_default();
                let rel_diff = first.as_deref().map_or(0.0, |base| relative_difference(base, &out));
                first.get_or_insert(out);
                eprintln!("{p:?} {choice:?}: {us:.1} µs");
                timings.push(Timing { problem: *p, choice: format!("{choice:?}"), us, tflops: p.flop() / us / 1e6, rel_diff });
            }
            if self.parts {
                // The whole problem at once: a causal one multiplies every key here.
                let scale = 1.0 / (p.head_dim as f64).sqrt();
                let scores = kernels::scores_product(q.clone(), k.clone().swap_dims(2, 3));
                let probabilities = kernels::attention_softmax(scores.clone(), scale, p.causal);
                let mut part = |name: &str, us: f64| {
                    eprintln!("{p:?} {name}: {us:.1} µs");
                    parts.push(PartTiming { problem: *p, part: name.into(), us });
                };
                part("scores, one chunk", timer.time(|| kernels::scores_attention(q.clone(), k.clone(), v.clone(), p.causal, usize::MAX)));
                part("q·kᵀ", timer.time(|| kernels::scores_product(q.clone(), k.clone().swap_dims(2, 3))));
                part("softmax", timer.time(|| kernels::attention_softmax(scores.clone(), scale, p.causal)));
                part("p·v", timer.time(|| kernels::scores_product(probabilities.clone(), v.clone())));
            }
        }
        kernels::set_flash_attention(process_choice);
        AttentionReport { device: format!("{} ({})", info.name, info.spec), dtype: dtype_name(dtype).into(), timings, parts }
    }
}

/// Markdown: one row per problem and choice, with the time relative to the first choice's.
pub fn markdown(r: &AttentionReport) -> String {
    let mut s = format!("# Attention on {} ({})\n\n| problem | choice | µs / call | TFLOP/s | speed-up vs first | rel. diff |\n|---|---|---|---|---|---|\n", r.device, r.dtype);
    let mut first = None;
    for t in &r.timings {
        let p = t.problem;
        if first.is_none_or(|(fp, _)| fp != p) {
            first = Some((p, t.us));
        }
        let base = first.map_or(t.us, |(_, us)| us);
        s += &format!("| {} | {} | {:.1} | {:.2} | {:.2} | {:.1e} |\n", p.label(), t.choice, t.us, t.tflops, base / t.us, t.rel_diff);
    }
    if !r.parts.is_empty() {
        s += "\n## The parts of `scores`, each problem whole (one chunk)\n\n| problem | part | µs / call |\n|---|---|---|\n";
        for t in &r.parts {
            s += &format!("| {} | {} | {:.1} |\n", t.problem.label(), t.part, t.us);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_parse_and_count_the_visible_keys() {
        let p = Problem::parse("1,32,1024,1024,96,causal").unwrap();
        assert!(p.causal && p.heads == 32 && p.head_dim == 96);
        // A causal square problem does a little over half the products of a full one.
        let full = Problem { causal: false, ..p };
        assert!((p.flop() / full.flop() - 1025.0 / 2048.0).abs() < 1e-9);
        assert!(!Problem::parse(" 17, 16,577,577,64").unwrap().causal);
        for bad in ["1,2,3,4", "1,2,3,4,0", "1,2,3,4,5,full", "1,2,8,4,5,causal", "a,2,3,4,5", "1,2,3,4,5,causal,7"] {
            assert!(Problem::parse(bad).is_err(), "{bad}");
        }
    }
}
