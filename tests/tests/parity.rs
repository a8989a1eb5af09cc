//! Fixture parity, written once and run on every device this build and machine offer
//! (`PHI3V_TEST_DEVICES` narrows or widens the list, e.g. `cpu:f32,wgpu:f32,wgpu:f16`).

use burn::backend::Flex;
use burn::tensor::DType;
use phi3v_tests::Case;
use phi3v_tests::devices::{check_case_everywhere, check_probe_everywhere};

#[test]
fn text_only() {
    check_case_everywhere("text_only");
}

#[test]
fn astronaut_describe() {
    check_case_everywhere("astronaut_describe");
}

#[test]
fn coffee_portrait() {
    check_case_everywhere("coffee_portrait");
}

#[test]
fn two_images() {
    check_case_everywhere("two_images");
}

#[test]
fn long_context_two_images() {
    check_case_everywhere("long_context_two_images");
}

#[test]
fn tiny_rgba_upscaled() {
    check_case_everywhere("tiny_rgba_upscaled");
}

#[test]
fn panorama() {
    check_case_everywhere("panorama");
}

#[test]
fn camera_gray_jpeg() {
    check_case_everywhere("camera_gray_jpeg");
}

#[test]
fn multi_turn() {
    check_case_everywhere("multi_turn");
}

#[test]
fn vision_probe_phi3v() {
    check_probe_everywhere("phi3v-tiny");
}

#[test]
fn vision_probe_phi35v() {
    check_probe_everywhere("phi35v-tiny");
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
fn every_fixture_case_has_a_test() {
    let mut names = Case::names();
    names.sort();
    let tested = [
        "astronaut_describe", "camera_gray_jpeg", "coffee_portrait", "long_context_two_images",
        "multi_turn", "panorama", "text_only", "tiny_rgba_upscaled", "two_images",
    ];
    assert_eq!(names, tested, "a fixture case was added or removed: add its test above");
}
