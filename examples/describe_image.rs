//! Describe an image, streaming the answer (the model cards' offline demo).
//!
//! cargo run -p phi3v-examples --example describe_image -- \
//!     [--model DIR] [--image PATH] [--prompt TEXT] [--device cpu|cuda|wgpu]

use std::io::Write;

use burn_phi3v::Message;
use burn_phi3v::image_processor::load_image;
use phi3v_devices::Pipeline;
use phi3v_examples::{SAMPLE_IMAGE, TINY_MODEL, arg};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pipeline = Pipeline::load(arg("--model", TINY_MODEL), &arg("--device", "cpu"), None)?;
    let image = load_image(arg("--image", SAMPLE_IMAGE).as_ref(), u64::MAX)?;
    let question = arg("--prompt", "What is shown in this image?");

    let messages = [Message::new("user", format!("<|image_1|>\n{question}"))];
    let params = pipeline.params(64);
    let out = pipeline.chat(&messages, &[image], &params, |text| {
        print!("{text}");
        let _ = std::io::stdout().flush();
    })?;
    println!("\n[{} tokens, {:.1} tokens/s on {}]", out.token_ids.len(), out.decode_tokens_per_s(), pipeline.device().spec);
    Ok(())
}
