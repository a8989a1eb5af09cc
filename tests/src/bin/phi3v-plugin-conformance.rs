//! `phi3v-plugin-conformance`: what a vendor runs first on a new device. Per-op checks against
//! the CPU backend (matmuls, reductions, softmax, elementwise, indexing and scatter, attention,
//! the model's normalisations, rotary embedding, activations and patch embedding) in every dtype
//! the device offers, then the model's fixture parity suite, each printed as a pass/fail table
//! with its errors.
//!
//! ```text
//! phi3v-plugin-conformance --device plugin:/opt/vendor/libphi3v_plugin_x.so
//! phi3v-plugin-conformance --device wgpu --dtypes f32,f16 --ops-only
//! ```
//! Any device string works (`cuda`, `wgpu`, `cpu`, `plugin:PATH[:N]`). Exit code 1 if a check
//! fails, 2 for bad arguments or a device that cannot be opened.

use std::process::ExitCode;

use burn::tensor::DType;
use burn_phi3v::device::{dtype_name, parse_dtype};
use phi3v_tests::conformance::{run_ops, table};
use phi3v_tests::args::{arg, flag};
use phi3v_tests::report::{all_cases, print_parity_suite};

const USAGE: &str = "usage: phi3v-plugin-conformance [--device SPEC] [--dtypes f32,f16,bf16] [--seed N] [--large] [--ops-only | --parity-only] [--parity-dtype D] [--cases a,b,...]
  --device        device string (default: plugin, the library in PHI3V_PLUGIN)
  --dtypes        dtypes of the op checks (default: every dtype the device offers)
  --seed          seed of the random op inputs (default: from the clock, printed)
  --large         also the model's large matmul shapes
  --parity-dtype  dtype of the fixture parity suite (default: the device's default)";

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if flag(&args, &["--help", "-h"]) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let device = arg(&args, "--device").unwrap_or_else(|| "plugin".into());
    let info = match phi3v_devices::device_info(&device) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let dtypes: Vec<DType> = match arg(&args, "--dtypes") {
        Some(list) => {
            let mut v = Vec::new();
            for s in list.split(',') {
                match parse_dtype(s).filter(|d| info.dtypes.contains(d)) {
                    Some(d) => v.push(d),
                    None => {
                        let offered: Vec<_> = info.dtypes.iter().map(|d| dtype_name(*d)).collect();
                        return fail(format!("dtype `{s}` is not one of {device}'s: {}", offered.join(", ")));
                    }
                }
            }
            v
        }
        None => info.dtypes.clone(),
    };
    let seed = match arg(&args, "--seed").map(|s| s.parse::<u64>()) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return fail(format!("--seed: {e}")),
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    println!("# Conformance of `{device}` ({})\n", info.name);
    let mut ok = true;
    if !flag(&args, &["--parity-only"]) {
        let start = std::time::Instant::now();
        let checks = match run_ops(&device, &dtypes, seed, flag(&args, &["--large"])) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let failed = checks.iter().filter(|c| !c.pass).count();
        println!("## Ops against the CPU (seed {seed})\n\n{}", table(&checks));
        println!("{} of {} op checks pass ({:.1} s)\n", checks.len() - failed, checks.len(), start.elapsed().as_secs_f64());
        ok &= failed == 0;
    }
    if !flag(&args, &["--ops-only"]) {
        let dtype = match phi3v_devices::resolve_dtype(&info, arg(&args, "--parity-dtype").as_deref()) {
            Ok(d) => dtype_name(d),
            Err(e) => return fail(e),
        };
        let cases = arg(&args, "--cases").map_or_else(all_cases, |c| c.split(',').map(str::to_string).collect());
        println!("## Fixture parity suite, {dtype}\n");
        match print_parity_suite(&device, dtype, &cases) {
            Ok(pass) => ok &= pass,
            Err(e) => return fail(e),
        }
    }
    println!("\n{}", if ok { "CONFORMANT" } else { "NOT CONFORMANT" });
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
