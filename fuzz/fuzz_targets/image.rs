//! Image decoding and preprocessing: any bytes decode (under a small pixel limit, so that the
//! fuzzer does not spend its time on big allocations) and preprocess, or give a typed error
//! (`DegenerateAspect` for an image too thin for the HD resize).
//! The first byte picks `num_crops` (1–4).
#![no_main]

use burn_phi3v::image_processor::{ImageError, ImageProcessorConfig, decode_image, preprocess_named};
use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 256 * 256;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let Ok(img) = decode_image(bytes, "fuzz input", MAX_PIXELS) else { return };
    assert!(u64::from(img.width()) * u64::from(img.height()) <= MAX_PIXELS);
    let cfg = ImageProcessorConfig {
        max_pixels: MAX_PIXELS,
        ..ImageProcessorConfig::with_num_crops(usize::from(first % 4) + 1)
    };
    match preprocess_named(&img, "fuzz input", &cfg) {
        Ok(out) => {
            assert!(out.num_used_crops >= 2 && out.num_used_crops <= cfg.num_crops + 1);
            assert!(out.pixel_values.iter().all(|v| v.is_finite()));
        }
        // An aspect ratio so extreme that the HD resize has zero rows (PIL fails on it too).
        Err(ImageError::DegenerateAspect { .. }) => {}
        Err(e) => panic!("a decoded image preprocesses or is degenerate: {e:?}"),
    }
});
