//! Fixture parity in f32 on the CPU (Burn's Flex backend).

use burn::backend::Flex;
use burn::tensor::DType;
use phi3v_tests::{Case, run_case};

fn check(name: &str) {
    let case = Case::load(name);
    let report = run_case::<Flex>(&case, &Default::default(), DType::F32);
    eprintln!("{report:?}");
    report.assert_ok();
}

#[test]
fn text_only() {
    check("text_only");
}

fn probe(model: &str) {
    let report = phi3v_tests::parity::run_vision_probe::<Flex>(model, &Default::default(), DType::F32);
    eprintln!("{report:?}");
    report.assert_ok();
}

#[test]
fn vision_probe_phi3v() {
    probe("phi3v-tiny");
}

#[test]
fn vision_probe_phi35v() {
    probe("phi35v-tiny");
}
