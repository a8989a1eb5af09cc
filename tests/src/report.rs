//! The fixture parity suite printed as Markdown tables, shared by `phi3v-parity` and
//! `phi3v-plugin-conformance`.

use burn_phi3v::device::DeviceError;

use crate::devices::{CaseJob, ProbeJob};
use crate::fixtures::Case;

/// Every fixture case (sorted), the names `--cases` takes.
pub fn all_cases() -> Vec<String> {
    let mut n = Case::names();
    n.sort();
    n
}

/// Runs `cases` and both vision probes on `device` in `dtype`, printing one table row per case as
/// it finishes (failures and timings on stderr). Returns whether everything passed.
pub fn print_parity_suite(device: &str, dtype: &str, cases: &[String]) -> Result<bool, DeviceError> {
    println!("| case | pass | max abs Δ pixels | Δ vision embeds | Δ hidden | Δ top-5 logits | Δ last logits | top-1 agree | greedy = ref (recompute) | cached = recompute |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    let fmt = |v: Option<f32>| v.map_or("–".to_string(), |x| format!("{x:.2e}"));
    for name in cases {
        let case = Case::load(name);
        let start = std::time::Instant::now();
        let r = phi3v_devices::with_device(device, Some(dtype), CaseJob(&case))?;
        let cached_ok = !r.failures.iter().any(|f| f.starts_with("cached greedy"));
        println!(
            "| {} | {} | {} | {} | {:.2e} | {:.2e} | {:.2e} | {}/{} | {} | {} |",
            r.case,
            if r.failures.is_empty() { "pass" } else { "FAIL" },
            fmt(r.pixels_max_err),
            fmt(r.vision_embeds_max_err),
            r.hidden_max_err,
            r.topk_logits_max_err,
            r.logits_last_max_err,
            r.top1_agree.0,
            r.top1_agree.1,
            if r.greedy_equal { "yes" } else { "no" },
            if cached_ok { "yes" } else { "no" },
        );
        for f in &r.failures {
            eprintln!("  {name}: {f}");
        }
        eprintln!("  {name}: {:.1} s", start.elapsed().as_secs_f64());
        ok &= r.failures.is_empty();
    }
    println!("\n| vision probe | pass | Δ CLIP features | Δ vision embeds |\n|---|---|---|---|");
    for model in ["phi3v-tiny", "phi35v-tiny"] {
        let r = phi3v_devices::with_device(device, Some(dtype), ProbeJob(model))?;
        println!(
            "| {model} | {} | {:.2e} | {:.2e} |",
            if r.failures.is_empty() { "pass" } else { "FAIL" },
            r.clip_features_max_err,
            r.vision_embeds_max_err
        );
        ok &= r.failures.is_empty();
    }
    Ok(ok)
}
