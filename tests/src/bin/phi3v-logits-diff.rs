//! `phi3v-logits-diff`: the last-position logits of every fixture case on two devices, and their
//! largest difference: how far one backend is from another on the same inputs (the parity
//! suite measures each against the reference instead).
//!
//! ```text
//! phi3v-logits-diff --device plugin:/path/libphi3v_plugin_cuda.so --against cuda --dtype f32
//! ```
//! Prints a Markdown table; exit code 1 if a device fails or the argmax differs.

use burn_phi3v::kernels::Kernels;
use std::process::ExitCode;

use burn::tensor::DType;
use burn_phi3v::LoadedModel;
use burn_phi3v::device::{DeviceInfo, dtype_name};
use phi3v_devices::DeviceFn;
use phi3v_tests::args::arg;
use phi3v_tests::parity::{last_logits_by_recompute, pixel_tensor};
use phi3v_tests::{Case, model_dir};

/// Last-position logits of a case's prompt (images through the vision tower), recomputed from
/// scratch, as the parity suite's greedy check does.
struct LastLogits<'a>(&'a Case);

impl DeviceFn for LastLogits<'_> {
    type Output = Vec<f32>;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> Vec<f32> {
        let loaded = LoadedModel::<B>::load(&model_dir(&self.0.model), device, dtype, None).expect("tiny checkpoint loads");
        let images: Vec<_> = self
            .0
            .images
            .iter()
            .map(|f| {
                // The reference's own JPEG decoding, as the parity suite uses.
                let f = f.replace(".jpg", ".decoded.png");
                burn_phi3v::image_processor::load_image(&Case::image_path(&f), u64::MAX).expect("fixture image decodes")
            })
            .collect();
        let processed = loaded.processor.process(&self.0.prompt, &images).expect("prompt processes");
        let features = pixel_tensor::<B>(&processed.images, device, dtype)
            .map(|(px, grids)| loaded.model.embed_images(px, &grids).expect("images embed"));
        last_logits_by_recompute(&loaded.model, &processed.input_ids, features)
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(device), Some(against)) = (arg(&args, "--device"), arg(&args, "--against")) else {
        eprintln!("usage: phi3v-logits-diff --device SPEC --against SPEC [--dtype f32|f16|bf16] [--cases a,b,...]");
        return ExitCode::FAILURE;
    };
    let dtype = arg(&args, "--dtype").unwrap_or_else(|| "f32".into());
    let mut cases = match arg(&args, "--cases") {
        Some(c) => c.split(',').map(str::to_string).collect(),
        None => Case::names(),
    };
    cases.sort();
    println!("`{device}` against `{against}`, dtype {dtype}: last-position logits\n");
    println!("| case | max abs Δ logits | max abs logit | argmax equal |\n|---|---|---|---|");
    let (mut worst, mut ok) = (0.0f32, true);
    for name in &cases {
        let case = Case::load(name);
        let run = |spec: &str| phi3v_devices::with_device(spec, Some(&dtype), LastLogits(&case));
        let (a, b) = match (run(&device), run(&against)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let scale = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        let same = argmax(&a) == argmax(&b) && a.len() == b.len();
        ok &= same && diff.is_finite();
        worst = worst.max(diff);
        println!("| {name} | {diff:.3e} | {scale:.3e} | {} |", if same { "yes" } else { "NO" });
    }
    println!("\nmax abs Δ over all cases: {worst:.3e} ({})", dtype_name(burn_phi3v::device::parse_dtype(&dtype).unwrap_or(DType::F32)));
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
