//! Runs the built application on the tiny checkpoint (its defaults) and checks that it prints
//! the answer the library gives for the same request.

use burn_phi3v::{LoadOptions, Pipeline, Request};

#[test]
fn describes_the_sample_image() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phi3v-app")).output().expect("run phi3v-app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "phi3v-app failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));

    let pipeline = Pipeline::from_pretrained(format!("{root}/models/phi35v-tiny"), "cpu", &LoadOptions::default()).unwrap();
    let request = Request::new("Describe this image.").image_path(format!("{root}/images/chelsea.png")).max_new_tokens(32);
    let want = pipeline.generate(&request).unwrap();
    assert!(stdout.starts_with(&format!("{}\n[{} tokens on cpu", want.text, want.token_ids.len())), "{stdout}");
}
