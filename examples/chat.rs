//! A multi-turn chat about an image: each answer is appended to the conversation.
//!
//! cargo run -p phi3v-examples --example chat -- [--model DIR] [--image PATH] [--device D]
//! Type a question per line; an empty line or end of input quits.

use std::io::{BufRead, Write};

use burn_phi3v::Message;
use burn_phi3v::image_processor::load_image;
use phi3v_devices::Pipeline;
use phi3v_examples::{SAMPLE_IMAGE, TINY_MODEL, arg};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pipeline = Pipeline::load(arg("--model", TINY_MODEL), &arg("--device", "cpu"), None)?;
    let image = load_image(arg("--image", SAMPLE_IMAGE).as_ref(), u64::MAX)?;
    let params = pipeline.params(64);
    let mut messages: Vec<Message> = Vec::new();

    for line in std::io::stdin().lock().lines() {
        let question = line?;
        if question.trim().is_empty() {
            break;
        }
        // The image is shown once, in the first user turn.
        let content = if messages.is_empty() { format!("<|image_1|>\n{question}") } else { question };
        messages.push(Message::new("user", content));
        print!("assistant: ");
        let out = pipeline.chat(&messages, std::slice::from_ref(&image), &params, |t| {
            print!("{t}");
            let _ = std::io::stdout().flush();
        })?;
        println!();
        messages.push(Message::new("assistant", out.text));
    }
    Ok(())
}
