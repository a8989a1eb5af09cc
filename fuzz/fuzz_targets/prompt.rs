//! Prompt processing with image tags: the chat template, tag insertion and tag splitting, and
//! `Phi3VProcessor::process` with the tiny checkpoint's tokenizer. The first byte gives the number
//! of images (0–3, a 2×2 image each); the rest is the prompt. Tags that do not match the images
//! are a typed error; a match gives one `−k` run per image.
#![no_main]

use std::sync::OnceLock;

use burn_phi3v::image::DynamicImage;
use burn_phi3v::processor::{Message, Phi3VProcessor, apply_chat_template, with_image_tags};
use libfuzzer_sys::fuzz_target;

fn processor() -> &'static Phi3VProcessor {
    static P: OnceLock<Phi3VProcessor> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/phi3v-tiny");
        Phi3VProcessor::from_dir(&dir).expect("tiny checkpoint tokenizer").with_num_crops(1)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let n = usize::from(first % 4);
    let images = vec![DynamicImage::new_rgb8(2, 2); n];
    let user = with_image_tags(text, n);
    let prompt = apply_chat_template(&[Message::new("system", "s"), Message::new("user", user)], true);
    let p = processor();
    if let Ok(out) = p.process(&prompt, &images) {
        assert_eq!(out.images.len(), n);
        for k in 1..=n as i64 {
            let run = out.input_ids.iter().filter(|&&id| id == -k).count();
            assert_eq!(run, out.images[k as usize - 1].num_img_tokens);
        }
        assert!(out.input_ids.iter().all(|&id| id >= -(n as i64)));
    }
    // The raw text as a prompt too (tags placed by the user, no template).
    let _ = p.process(text, &images);
});
