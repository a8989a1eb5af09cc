//! Offline batch inference: a JSONL of `{"prompt": "...", "images": ["a.png", ...]}` lines in,
//! a JSONL of `{"prompt": ..., "text": ..., "tokens": N}` lines out, all prompts in one batch.
//!
//! cargo run -p phi3v-examples --example batch -- --input prompts.jsonl [--output answers.jsonl]
//!     [--model DIR] [--device D] [--max-new-tokens N]

use std::io::Write;

use burn_phi3v::image_processor::load_image;
use burn_phi3v::{Message, apply_chat_template, with_image_tags};
use phi3v_devices::Pipeline;
use phi3v_examples::{TINY_MODEL, arg};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pipeline = Pipeline::load(arg("--model", TINY_MODEL), &arg("--device", "cpu"), None)?;
    let input = std::fs::read_to_string(arg("--input", "prompts.jsonl"))?;
    let mut requests = Vec::new();
    for (n, line) in input.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let text = v["prompt"].as_str().ok_or(format!("line {}: no \"prompt\"", n + 1))?.to_string();
        let paths: Vec<&str> = v["images"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let images = paths.iter().map(|p| load_image(p.as_ref(), u64::MAX)).collect::<Result<Vec<_>, _>>()?;
        let chat = apply_chat_template(&[Message::new("user", with_image_tags(&text, images.len()))], true);
        requests.push((text, pipeline.process(&chat, &images)?));
    }
    let prompts: Vec<_> = requests.iter().map(|(_, p)| p).collect();
    let params = [pipeline.params(arg("--max-new-tokens", "32").parse()?)];
    let outputs = pipeline.generate_batch(&prompts, &params, |_| {})?;

    let mut out: Box<dyn Write> = match arg("--output", "-").as_str() {
        "-" => Box::new(std::io::stdout()),
        path => Box::new(std::fs::File::create(path)?),
    };
    for ((text, _), o) in requests.iter().zip(&outputs) {
        writeln!(out, "{}", json!({"prompt": text, "text": o.text, "tokens": o.token_ids.len()}))?;
    }
    Ok(())
}
