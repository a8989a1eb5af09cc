//! Runs the parity checks on every device this build and machine offer, through the same
//! device strings users give (`phi3v_devices`).

use burn_phi3v::kernels::Kernels;
use burn::tensor::DType;
use burn_phi3v::device::{DeviceInfo, dtype_name, parse_dtype};
use burn_phi3v::{GenerationParams, LoadedModel, generate};
use phi3v_devices::DeviceFn;

use crate::fixtures::{Case, model_dir};
use crate::parity::{CaseReport, ProbeReport, run_case, run_vision_probe};

/// The (device string, dtype) pairs to test: `PHI3V_TEST_DEVICES` (e.g. `cpu:f32,wgpu:f16`;
/// a bare device means its default dtype), else every available device of the backends this
/// crate's features name (`cpu`, `cuda`, `wgpu`), in its default dtype.
pub fn test_targets() -> Vec<(String, DType)> {
    match std::env::var("PHI3V_TEST_DEVICES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|item| {
                let item = item.trim();
                // The dtype is whatever follows the last ':' when it names a dtype.
                match item.rsplit_once(':').and_then(|(d, t)| parse_dtype(t).map(|t| (d, t))) {
                    Some((dev, dtype)) => (dev.to_string(), dtype),
                    None => {
                        let info = phi3v_devices::device_info(item).unwrap_or_else(|e| panic!("{e}"));
                        (item.to_string(), info.default_dtype)
                    }
                }
            })
            .collect(),
        _ => phi3v_devices::available_devices()
            .into_iter()
            .filter(|d| backend_selected(d.backend))
            .map(|d| (d.spec.clone(), d.default_dtype))
            .collect(),
    }
}

/// Whether this crate's features name `backend`. burn-phi3v may have more compiled in: in a
/// workspace build, cargo unifies the features the thin backend crates ask of it.
#[allow(clippy::match_like_matches_macro)] // which arms are true depends on the features
fn backend_selected(backend: &str) -> bool {
    match backend {
        "cpu" => cfg!(feature = "cpu"),
        "cuda" => cfg!(feature = "cuda"),
        "wgpu" => cfg!(feature = "wgpu"),
        _ => false,
    }
}

/// `run_case` on a device string.
pub struct CaseJob<'a>(pub &'a Case);

impl DeviceFn for CaseJob<'_> {
    type Output = CaseReport;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> CaseReport {
        let mut r = run_case::<B>(self.0, device, dtype);
        // Cached generation (the engine path) must give the same greedy ids as recomputation.
        let loaded = LoadedModel::<B>::load(&model_dir(&self.0.model), device, dtype, None).expect("load");
        let images: Vec<_> = self
            .0
            .images
            .iter()
            .map(|f| {
                let f = f.replace(".jpg", ".decoded.png");
                burn_phi3v::image_processor::load_image(&Case::image_path(&f), u64::MAX).expect("image")
            })
            .collect();
        let prompt = loaded.processor.process(&self.0.prompt, &images).expect("prompt");
        let n = r.greedy_ids.len().max(1);
        let params = GenerationParams { max_new_tokens: n, ..Default::default() };
        let out = generate(&loaded.model, &loaded.processor, &[&prompt], &[params], |_| {}).expect("generate");
        let cached: Vec<i64> = out[0].token_ids.iter().map(|&t| t as i64).collect();
        // Before the reference's first near-tie the two must agree (at it either of the tied
        // tokens is right; after it the continuations may differ).
        let agreed = r.greedy_first_tie.map_or(cached.len().max(r.greedy_ids.len()), |t| t);
        let prefix = |ids: &[i64]| ids[..agreed.min(ids.len())].to_vec();
        if prefix(&cached) != prefix(&r.greedy_ids) {
            r.failures.push(format!("cached greedy {cached:?} differs from recomputed {:?} before the reference's first near-tie ({:?})", r.greedy_ids, r.greedy_first_tie));
        }
        r
    }
}

/// `run_vision_probe` on a device string.
pub struct ProbeJob<'a>(pub &'a str);

impl DeviceFn for ProbeJob<'_> {
    type Output = ProbeReport;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> ProbeReport {
        run_vision_probe::<B>(self.0, device, dtype)
    }
}

/// Runs a case on every test target; panics listing every failure.
pub fn check_case_everywhere(name: &str) {
    let case = Case::load(name);
    let mut failures = Vec::new();
    for (spec, dtype) in test_targets() {
        let r = phi3v_devices::with_device(&spec, Some(dtype_name(dtype)), CaseJob(&case)).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{spec} {}: {r:?}", dtype_name(dtype));
        if !r.failures.is_empty() {
            failures.push(format!("{spec} {}: {}", dtype_name(dtype), r.failures.join("; ")));
        }
    }
    assert!(failures.is_empty(), "case {name}:\n  {}", failures.join("\n  "));
}

/// Runs a vision probe on every test target.
pub fn check_probe_everywhere(model: &str) {
    for (spec, dtype) in test_targets() {
        let r = phi3v_devices::with_device(&spec, Some(dtype_name(dtype)), ProbeJob(model)).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{spec} {}: {r:?}", dtype_name(dtype));
        r.assert_ok();
    }
}
