//! Prompt processing with image tags: the chat template, tag insertion and tag splitting, and the
//! processor's tokenisation and image-token layout with the tiny checkpoint's tokenizer. The first
//! byte gives the number of images (0–3), the next two an image size; the rest is the prompt. Tags
//! that do not match the images are a typed error; a match gives one `−k` run per image of the
//! image's token count.
#![no_main]

use std::sync::OnceLock;

use burn_phi3v::image_processor::hd_resize_target;
use burn_phi3v::processor::{Message, Phi3VProcessor, apply_chat_template, with_image_tags};
use libfuzzer_sys::fuzz_target;

fn processor() -> &'static Phi3VProcessor {
    static P: OnceLock<Phi3VProcessor> = OnceLock::new();
    P.get_or_init(|| {
        // From the repository root (where `cargo fuzz run` runs), else from this crate.
        let rel = std::path::Path::new("tests/fixtures/models/phi3v-tiny");
        let dir = if rel.is_dir() { rel.to_path_buf() } else { std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/phi3v-tiny") };
        Phi3VProcessor::from_dir(&dir).expect("tiny checkpoint tokenizer").with_num_crops(1)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&[first, width, height], rest)) = data.split_first_chunk::<3>() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let n = usize::from(first % 4);
    // Image k's token count as the processor derives it from the image's size (1–256 pixels a
    // side): the prompt layout is fuzzed without decoding or resizing pixels (the `image` target
    // fuzzes those); `process` with images is `tokenize_with_image_tokens` on these counts (unit
    // test `tokenize_with_image_tokens_equals_process`).
    let target = hd_resize_target(u32::from(width) + 1, u32::from(height) + 1, 1);
    let counts = vec![target.num_img_tokens(); n];
    let user = with_image_tags(text, n);
    let prompt = apply_chat_template(&[Message::new("system", "s"), Message::new("user", user)], true);
    let p = processor();
    if let Ok(ids) = p.tokenize_with_image_tokens(&prompt, &counts) {
        for k in 1..=n as i64 {
            let run = ids.iter().filter(|&&id| id == -k).count();
            assert_eq!(run, counts[k as usize - 1]);
        }
        assert!(ids.iter().all(|&id| id >= -(n as i64)));
    }
    // The raw text as a prompt too (tags placed by the user, no template), and without images
    // through `process` itself.
    let _ = p.tokenize_with_image_tokens(text, &counts);
    if n == 0 {
        let _ = p.process(text, &[]);
    }
});
