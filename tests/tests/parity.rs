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

#[test]
fn astronaut_describe() {
    check("astronaut_describe");
}

#[test]
fn coffee_portrait() {
    check("coffee_portrait");
}

#[test]
fn two_images() {
    check("two_images");
}

#[test]
fn long_context_two_images() {
    check("long_context_two_images");
}

#[test]
fn tiny_rgba_upscaled() {
    check("tiny_rgba_upscaled");
}

#[test]
fn panorama() {
    check("panorama");
}

#[test]
fn camera_gray_jpeg() {
    check("camera_gray_jpeg");
}

/// The same case through our own JPEG decoder (one 8-bit level off on ~0.6% of pixels):
/// pixels stay within the JPEG bound and the greedy continuation is unchanged.
#[test]
fn camera_gray_jpeg_own_decoder() {
    let case = Case::load("camera_gray_jpeg");
    let report = phi3v_tests::run_case_with::<Flex>(&case, &Default::default(), DType::F32, phi3v_tests::JpegSource::OwnDecoder);
    eprintln!("{report:?}");
    report.assert_ok();
    assert!(report.greedy_equal);
}

#[test]
fn multi_turn() {
    check("multi_turn");
}

#[test]
fn every_fixture_case_has_a_test() {
    let mut names = Case::names();
    names.sort();
    let tested = [
        "astronaut_describe", "camera_gray_jpeg", "coffee_portrait", "long_context_two_images",
        "multi_turn", "panorama", "text_only", "tiny_rgba_upscaled", "two_images",
    ];
    assert_eq!(names, tested, "a fixture case was added or removed: add its test above");
}
