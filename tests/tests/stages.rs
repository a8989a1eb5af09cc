//! The vision tower stage by stage on every test device against the CPU.

use burn_phi3v::device::dtype_name;
use phi3v_tests::devices::test_targets;
use phi3v_tests::stages::{Stages, stage_errors};

#[test]
fn vision_stages_agree_with_cpu() {
    let reference = phi3v_devices::with_device("cpu", Some("f32"), Stages).unwrap();
    let mut bad = Vec::new();
    for (spec, dtype) in test_targets() {
        if spec == "cpu" {
            continue;
        }
        let got = phi3v_devices::with_device(&spec, Some(dtype_name(dtype)), Stages).unwrap();
        let tol = phi3v_tests::Tolerance::for_dtype(dtype).clip_features;
        for (name, err) in stage_errors(&reference, &got) {
            eprintln!("{spec} {}: {name}: max |Δ| {err:e}", dtype_name(dtype));
            if err > tol.max(1e-3) {
                bad.push(format!("{spec}: {name} differs by {err:e}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
