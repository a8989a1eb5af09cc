//! Describe an image with Phi-3(.5)-vision, printing the answer as it is generated.
//!
//! phi3v-app [MODEL_DIR] [IMAGE] [DEVICE]   (defaults: the repository's tiny checkpoint, a
//! sample image, cpu; the tiny checkpoint has random weights, so its answer is meaningless)

use std::io::Write;

use burn_phi3v::{LoadOptions, Pipeline, Request};

const TINY_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/phi35v-tiny");
const SAMPLE_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/images/chelsea.png");

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| TINY_MODEL.into());
    let image = args.next().unwrap_or_else(|| SAMPLE_IMAGE.into());
    let device = args.next().unwrap_or_else(|| "cpu".into());

    let pipeline = Pipeline::from_pretrained(&model, &device, &LoadOptions::default())?;
    let request = Request::new("Describe this image.").image_path(&image).max_new_tokens(32);
    let mut stream = pipeline.stream(&request)?;
    for token in &mut stream {
        print!("{}", token?.text);
        std::io::stdout().flush()?;
    }
    let out = stream.into_output()?;
    println!("\n[{} tokens on {}, {:.1} tokens/s]", out.token_ids.len(), pipeline.device().spec, out.decode_tokens_per_s());
    Ok(())
}
