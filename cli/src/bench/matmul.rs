//! `phi3v bench matmul`: the model's large products (a prefill's projections, a decode step's
//! over many sequences, the vision tower's) alone, through Burn's autotuned matmul and through
//! cubek-matmul's tensor-core routines at chosen tilings ([`kernels::MatmulTiling`]), in one
//! process on one device (issue 10, lever 5). Each choice is timed as `phi3v bench breakdown`
//! times a stage (`warmup` calls, then `runs` calls between two device synchronisations; the
//! mean per call) and its output is compared with the first choice's. The weight is laid out as
//! the model holds it (the checkpoint's `[d_out, d_in]`, used transposed). With `--peer`,
//! PyTorch's `F.linear` at the same shapes (bench/peer_matmul.py, same device call) is a column
//! of its own.

use std::path::PathBuf;

use burn::tensor::{DType, Tensor};
use burn_phi3v::DeviceFn;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use burn_phi3v::kernels::{self, Kernels, MatmulTiling};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::breakdown::{Timer, random, relative_difference};
use crate::{CliResult, with_device};

/// Options of `phi3v bench matmul`.
#[derive(Args, Clone, Debug)]
pub struct MatmulArgs {
    /// Device: cpu, cuda[:N], wgpu[:N], vulkan[:N].
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Compute dtype (default: the device's, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Products `rows,d_in,d_out`, separated by `;`. Default: Phi-3's projections in a prefill
    /// of 1024 tokens (`qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj`) and in a decode step
    /// of 64 sequences, CLIP ViT-L/14-336's over the 17 crops of num_crops 16 (9809 rows:
    /// q/k/v/out, `fc1`, `fc2`), and 8192³.
    #[arg(
        long,
        value_delimiter = ';',
        default_value = "1024,3072,9216;1024,3072,3072;1024,3072,16384;1024,8192,3072;64,3072,9216;64,3072,3072;64,3072,16384;64,8192,3072;9809,1024,1024;9809,1024,4096;9809,4096,1024;8192,8192,8192"
    )]
    shapes: Vec<String>,
    /// Choices, separated by `;`: `burn` (Burn's autotuned matmul), `blas` (the vendor's BLAS:
    /// cuBLAS on CUDA, `Kernels::blas_matmul`; Burn's matmul elsewhere, marked refused),
    /// `model` (the model's own path, `kernels::linear`: the skinny kernel up to 16 rows) or a
    /// tiling
    /// `ROUTINE[-mma]:PM,PN,PK:SM,SN[:TM,TN,TK]` (the syntax of `PHI3V_MATMUL` and
    /// `PHI3V_MATMUL_FEW`). The first is the one the others are compared with.
    #[arg(long, value_delimiter = ';', default_value = "burn;blas;specialized_tma:2,8,2:4,1;specialized_tma:4,4,2:2,2;double:4,4,2:2,2;double-mma:4,4,2:2,2")]
    tilings: Vec<String>,
    /// Each product adds a bias (one value per output column) and a residual (as CLIP's
    /// `out_proj` and `fc2`): `model` in the product's epilogue where the backend can
    /// (`kernels::linear_residual`: cuBLASLt on CUDA), the other choices by two adds after it.
    #[arg(long)]
    epilogue: bool,
    /// Calls before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed calls per choice.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The PyTorch peer's figures at the same shapes (bench/peer_matmul.py's JSON).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One product: `[rows, d_in] · [d_in, d_out]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Product {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
}

impl Product {
    /// Reads `rows,d_in,d_out` (positive numbers).
    pub fn parse(s: &str) -> Result<Self, String> {
        let n: Vec<usize> = s
            .split(',')
            .map(|p| p.trim().parse().ok().filter(|&v| v > 0))
            .collect::<Option<_>>()
            .filter(|v: &Vec<usize>| v.len() == 3)
            .ok_or_else(|| format!("--shapes: `{s}` is not rows,d_in,d_out (three positive numbers)"))?;
        Ok(Self { rows: n[0], d_in: n[1], d_out: n[2] })
    }

    /// 2 · rows · d_in · d_out.
    pub fn flop(&self) -> f64 {
        2.0 * self.rows as f64 * self.d_in as f64 * self.d_out as f64
    }
}

/// What computes a product.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Choice {
    /// Burn's autotuned matmul.
    Burn,
    /// `Kernels::blas_matmul` (cuBLAS on CUDA).
    Blas,
    /// `kernels::linear`, the model's own path: the skinny kernel up to 16 rows, above them
    /// Burn's matmul or the row class's `PHI3V_MATMUL*` tiling.
    Model,
    /// `kernels::tiled_matmul` at a tiling.
    Tiled(MatmulTiling),
}

impl Choice {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "burn" => Ok(Self::Burn),
            "blas" => Ok(Self::Blas),
            "model" => Ok(Self::Model),
            t => MatmulTiling::parse(t).map(Self::Tiled).ok_or_else(|| {
                let routines = kernels::MatmulRoutine::ALL.map(|(n, _)| n).join(", ");
                format!("--tilings: `{t}` is neither `burn`, `blas`, `model` nor ROUTINE[-mma]:PM,PN,PK:SM,SN[:TM,TN,TK] (routines: {routines})")
            }),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Burn => "burn".into(),
            Self::Blas => "blas".into(),
            Self::Model => "model".into(),
            Self::Tiled(t) => t.to_string(),
        }
    }
}

/// One choice's figures on one product.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    pub product: Product,
    /// `burn`, `model` or the tiling's text form.
    pub choice: String,
    /// Mean microseconds per call.
    pub us: f64,
    /// [`Product::flop`] per second, in TFLOP/s.
    pub tflops: f64,
    /// Largest |output − first choice's output| over the largest |first choice's output|.
    pub rel_diff: f64,
    /// Whether the routine refused the tiling, so that Burn's matmul ran instead.
    pub refused: bool,
}

/// What `phi3v bench matmul` writes (and, without `refused` and `rel_diff`, what
/// bench/peer_matmul.py writes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MatmulReport {
    pub device: String,
    pub dtype: String,
    pub timings: Vec<Timing>,
}

/// The peer's figures: one mean per product.
#[derive(Debug, Clone, Deserialize)]
struct PeerReport {
    device: String,
    timings: Vec<PeerTiming>,
}

#[derive(Debug, Clone, Deserialize)]
struct PeerTiming {
    product: Product,
    us: f64,
}

/// Entry point of `phi3v bench matmul`.
pub fn run(args: MatmulArgs) -> CliResult<()> {
    let products = args.shapes.iter().map(|s| Product::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let choices = args.tilings.iter().map(|s| Choice::parse(s)).collect::<Result<Vec<_>, _>>()?;
    if choices.is_empty() {
        return Err("--tilings: no choice given".into());
    }
    let peer = match &args.peer {
        None => None,
        Some(p) => {
            let s = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            Some(serde_json::from_str::<PeerReport>(&s).map_err(|e| format!("{} is not bench/peer_matmul.py's JSON: {e}", p.display()))?)
        }
    };
    let job = MatmulJob { products, choices, epilogue: args.epilogue, warmup: args.warmup, runs: args.runs.max(1) };
    let report = with_device(&args.device, args.dtype.as_deref(), job)?;
    print!("{}", markdown(&report, peer.as_ref()));
    for r in kernels::matmul_tiling_refusals() {
        eprintln!("refused (Burn's matmul ran instead): {r}");
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    }
    Ok(())
}

struct MatmulJob {
    products: Vec<Product>,
    choices: Vec<Choice>,
    epilogue: bool,
    warmup: usize,
    runs: usize,
}

impl DeviceFn for MatmulJob {
    type Output = MatmulReport;

    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> MatmulReport {
        let timer = Timer::<B> { device: device.clone(), warmup: self.warmup, runs: self.runs };
        let mut timings = Vec::new();
        for p in &self.products {
            let x = random::<B, 2>([p.rows, p.d_in], device, dtype);
            // The outputs compared are of other rows than the timed ones, and each stays
            // allocated until the product's last choice: no output is handed a buffer that
            // already holds the right answer, which a kernel that writes nothing would pass off
            // as its own (session 34: a tiling on wgpu that ran no products "matched" Burn's
            // output from the buffer the memory pool gave back).
            let x_check = random::<B, 2>([p.rows, p.d_in], device, dtype);
            let weight = random::<B, 2>([p.d_out, p.d_in], device, dtype).transpose();
            // `--epilogue`'s bias and residual.
            let terms = self.epilogue.then(|| (random::<B, 1>([p.d_out], device, dtype), random::<B, 2>([p.rows, p.d_out], device, dtype)));
            let add_terms = |y: Tensor<B, 2>| match &terms {
                Some((bias, residual)) => y + bias.clone().unsqueeze_dim(0) + residual.clone(),
                None => y,
            };
            let mut first: Option<Vec<f32>> = None;
            let mut held = Vec::new();
            for choice in &self.choices {
                let (refusals, blas_products, epilogues) = (kernels::matmul_tiling_refusal_count(), kernels::blas_matmul_count(), kernels::blas_epilogue_count());
                let product_of = |x: &Tensor<B, 2>| match (choice, &terms) {
                    (Choice::Burn, _) => add_terms(x.clone().matmul(weight.clone())),
                    (Choice::Blas, _) => add_terms(kernels::vendor_matmul(x.clone(), weight.clone()).unwrap_or_else(|| x.clone().matmul(weight.clone()))),
                    (Choice::Model, None) => kernels::linear(x.clone(), &weight, None),
                    (Choice::Model, Some((bias, residual))) => kernels::linear_residual(x.clone(), &weight, Some(bias), residual.clone()),
                    (Choice::Tiled(t), _) => add_terms(kernels::tiled_matmul(x.clone(), weight.clone(), *t)),
                };
                let product = || product_of(&x);
                let check = product_of(&x_check);
                let out: Vec<f32> = check.clone().into_data().convert::<f32>().into_vec().unwrap_or_default();
                held.push(check);
                let refused = match choice {
                    Choice::Blas => kernels::blas_matmul_count() == blas_products,
                    // Burn's matmul and the adds ran instead of the epilogue.
                    Choice::Model if self.epilogue => kernels::blas_epilogue_count() == epilogues,
                    _ => kernels::matmul_tiling_refusal_count() > refusals,
                };
                let us = timer.time(product);
                let rel_diff = first.as_deref().map_or(0.0, |base| relative_difference(base, &out));
                first.get_or_insert(out);
                let name = choice.name();
                // One line per timing, so a run cut short still tells what it measured.
                eprintln!("{p:?} {name}: {us:.1} µs, rel. diff {rel_diff:.1e}{}", if refused { " (refused: Burn's matmul)" } else { "" });
                timings.push(Timing { product: *p, choice: name, us, tflops: p.flop() / us / 1e6, rel_diff, refused });
            }
        }
        for reason in kernels::blas_matmul_refusals() {
            eprintln!("(blas refused, Burn's matmul ran: {reason})");
        }
        MatmulReport { device: format!("{} ({})", info.name, info.spec), dtype: dtype_name(dtype).into(), timings }
    }
}

/// Markdown: one row per product and choice, with the time relative to the first choice's
/// (and to the peer's, when given).
fn markdown(r: &MatmulReport, peer: Option<&PeerReport>) -> String {
    let mut s = format!("# Matmul on {} ({})\n\n", r.device, r.dtype);
    if let Some(p) = peer {
        s += &format!("Peer: PyTorch `F.linear` on {}.\n\n", p.device);
    }
    s += "| rows × d_in → d_out | choice | µs / call | TFLOP/s | speed-up vs first | vs PyTorch | rel. diff |\n|---|---|---|---|---|---|---|\n";
    let mut first = None;
    for t in &r.timings {
        let p = t.product;
        if first.is_none_or(|(fp, _)| fp != p) {
            first = Some((p, t.us));
        }
        let base = first.map_or(t.us, |(_, us)| us);
        let versus = peer.and_then(|peer| peer.timings.iter().find(|pt| pt.product == p)).map_or("–".to_string(), |pt| format!("{:.2}", pt.us / t.us));
        let choice = if t.refused { format!("{} (refused)", t.choice) } else { t.choice.clone() };
        s += &format!("| {} × {} → {} | {choice} | {:.1} | {:.1} | {:.2} | {versus} | {:.1e} |\n", p.rows, p.d_in, p.d_out, t.us, t.tflops, base / t.us, t.rel_diff);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_choices_parse() {
        let p = Product::parse(" 1024, 3072,9216").unwrap();
        assert_eq!((p.rows, p.d_in, p.d_out), (1024, 3072, 9216));
        assert_eq!(p.flop(), 2.0 * 1024.0 * 3072.0 * 9216.0);
        for bad in ["1024,3072", "1024,3072,0", "a,1,2", "1,2,3,4"] {
            assert!(Product::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Choice::parse("burn").unwrap(), Choice::Burn);
        assert_eq!(Choice::parse("blas").unwrap().name(), "blas");
        assert_eq!(Choice::parse(" model").unwrap().name(), "model");
        assert_eq!(Choice::parse("double:4,4,2:2,2").unwrap().name(), "double:4,4,2:2,2");
        let e = Choice::parse("fast:1,1,1:1,1").unwrap_err();
        assert!(e.contains("specialized_tma"), "{e}");
    }
}
