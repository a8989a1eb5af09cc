//! `phi3v-parity`: the fixture parity suite on any device, printed as a Markdown table.
//!
//! ```text
//! phi3v-parity --device cuda --dtype bf16
//! phi3v-parity --device wgpu --dtype f32 --cases text_only,two_images
//! ```
//! Exit code 1 if any check fails. The same checks run under `cargo test -p phi3v-tests`.

use std::process::ExitCode;

use burn_phi3v::device::dtype_name;
use phi3v_tests::args::{arg, flag};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if flag(&args, &["--help", "-h"]) {
        println!("usage: phi3v-parity [--device SPEC] [--dtype f32|f16|bf16] [--cases a,b,...] [--stages] [--ops [--large]]\n(PHI3V_COMPOSED_ATTENTION=1 composes attention from matmul and softmax)");
        return ExitCode::SUCCESS;
    }
    let device = arg(&args, "--device").unwrap_or_else(|| "cpu".into());
    let dtype = arg(&args, "--dtype");
    let info = match phi3v_devices::device_info(&device) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dt = match phi3v_devices::resolve_dtype(&info, dtype.as_deref()) {
        Ok(d) => dtype_name(d),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flag(&args, &["--ops"]) {
        // Single ops in several variants against the CPU (see `OpVariants`).
        use phi3v_tests::stages::OpVariants;
        let large = flag(&args, &["--large"]);
        let reference = phi3v_devices::with_device("cpu", Some("f32"), OpVariants { large }).expect("cpu");
        let got = phi3v_devices::with_device(&device, Some(dt), OpVariants { large }).expect("device");
        println!("| op ({device} {dt}) | max abs Δ vs cpu | max abs reference |\n|---|---|---|");
        for ((n, a), (_, b)) in reference.iter().zip(&got) {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            println!("| {n} | {:.2e} | {scale:.2e} |", phi3v_tests::tolerance::max_abs_diff(a, b));
        }
        println!();
        if !flag(&args, &["--stages", "--cases"]) {
            return ExitCode::SUCCESS;
        }
    }
    if flag(&args, &["--stages"]) {
        // Vision tower stage by stage against the CPU, with the backend's fused attention and
        // with composed attention.
        use phi3v_tests::stages::{Stages, stage_errors};
        let reference = phi3v_devices::with_device("cpu", Some("f32"), Stages).expect("cpu");
        let fused = phi3v_devices::with_device(&device, Some(dt), Stages).expect("device");
        burn_phi3v::model::nn::set_composed_attention(true);
        let composed = phi3v_devices::with_device(&device, Some(dt), Stages).expect("device");
        burn_phi3v::model::nn::set_composed_attention(false);
        println!("| vision stage ({device} {dt}) | max abs Δ vs cpu, fused attention | composed attention |\n|---|---|---|");
        for ((n, a), (_, b)) in stage_errors(&reference, &fused).into_iter().zip(stage_errors(&reference, &composed)) {
            println!("| {n} | {a:.2e} | {b:.2e} |");
        }
        println!();
    }
    let cases: Vec<String> = match arg(&args, "--cases") {
        Some(c) => c.split(',').map(str::to_string).collect(),
        None => phi3v_tests::report::all_cases(),
    };
    println!("device `{device}` ({}), dtype {dt}\n", info.name);
    match phi3v_tests::report::print_parity_suite(&device, dt, &cases) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
