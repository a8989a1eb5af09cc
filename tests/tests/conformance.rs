//! The per-op conformance checks (`phi3v-plugin-conformance`) on every test target, the
//! comparison's ability to fail, and the binary's argument errors.

use std::process::Command;

use burn::tensor::DType;
use burn_phi3v::device::dtype_name;
use phi3v_tests::conformance::{OpOutput, OpTolerance, compare, run_ops, table};
use phi3v_tests::devices::test_targets;

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn every_op_matches_the_cpu_on_every_target() {
    let seed = clock_seed();
    let mut failed = Vec::new();
    for (spec, dtype) in test_targets() {
        let checks = run_ops(&spec, &[dtype], seed, false).unwrap_or_else(|e| panic!("{spec}: {e}"));
        eprintln!("{spec} {} (seed {seed}):\n{}", dtype_name(dtype), table(&checks));
        assert!(checks.len() > 50, "the op list ran short: {}", checks.len());
        failed.extend(checks.iter().filter(|c| !c.pass).map(|c| format!("{spec} {}: {} ({:.2e} > {:.2e})", dtype_name(dtype), c.op, c.rel_err, c.bound)));
    }
    assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n"));
}

fn output(values: Vec<f32>, dtype: DType, accumulated: usize) -> OpOutput {
    OpOutput { op: "op".into(), dtype, accumulated, values, error: None }
}

#[test]
fn the_comparison_fails_what_exceeds_the_dtype_bound() {
    let reference = vec![output(vec![1.0, -2.0, 0.5], DType::F32, 1)];
    let bound = OpTolerance::for_dtype(DType::F32).bound(1);
    // Within the bound (relative to the largest magnitude, 2): passes.
    let near = vec![output(vec![1.0 + bound, -2.0, 0.5], DType::F32, 1)];
    assert!(compare(&reference, &near)[0].pass);
    // Three times the bound: fails.
    let far = vec![output(vec![1.0 + 6.0 * bound, -2.0, 0.5], DType::F32, 1)];
    assert!(!compare(&reference, &far)[0].pass);
    // The same difference is within bf16's bound.
    let far_bf16 = vec![output(vec![1.0 + 6.0 * bound, -2.0, 0.5], DType::BF16, 1)];
    assert!(compare(&reference, &far_bf16)[0].pass);
    // NaN, and a wrong length, fail.
    assert!(!compare(&reference, &[output(vec![f32::NAN, -2.0, 0.5], DType::BF16, 1)])[0].pass);
    assert!(!compare(&reference, &[output(vec![1.0, -2.0], DType::BF16, 1)])[0].pass);
    // An output the device could not hand back fails, and the table says why.
    let lost = OpOutput { error: Some("tensor maps (TMA) are not part of the plugin ABI".into()), ..output(Vec::new(), DType::F16, 1) };
    let checks = compare(&reference, &[lost]);
    assert!(!checks[0].pass);
    assert!(table(&checks).contains("FAIL: tensor maps (TMA)"), "{}", table(&checks));
    // Accumulating ops get sqrt(n) more room.
    assert!(OpTolerance::for_dtype(DType::F16).bound(100) > 9.0 * OpTolerance::for_dtype(DType::F16).bound(1));
}

fn conformance(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_phi3v-plugin-conformance")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn the_binary_reports_bad_arguments_as_errors() {
    let (code, _, err) = conformance(&["--device", "quantum:3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("quantum"), "{err}");
    let (code, _, err) = conformance(&["--device", "cpu", "--dtypes", "f8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("f8") && err.contains("f32"), "{err}");
    let (code, _, err) = conformance(&["--device", "cpu", "--seed", "x"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_binary_prints_its_table_and_verdict() {
    let (code, out, err) = conformance(&["--device", "cpu", "--ops-only", "--seed", "7"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("| matmul [64, 256]·[256, 96] | f32 |") && out.contains("CONFORMANT"), "{out}");
}
