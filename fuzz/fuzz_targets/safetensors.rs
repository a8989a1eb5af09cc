//! Safetensors headers and the shard index: the input is `index JSON` + `\0` + shard bytes (no
//! `\0`: the whole input is one `model.safetensors`). The shard is written as
//! `model-00001-of-00001.safetensors` beside the index, so an index naming it reaches the
//! header/index agreement checks. Every input opens or gives a typed error.
#![no_main]

use std::path::PathBuf;

use burn_phi3v::weights::Checkpoint;
use libfuzzer_sys::fuzz_target;

const SHARD: &str = "model-00001-of-00001.safetensors";

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("phi3v-fuzz-safetensors-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

fn check(ckpt: &Checkpoint) {
    for name in ckpt.names() {
        let e = ckpt.entry(name).expect("listed name has an entry");
        let _ = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    match data.iter().position(|&b| b == 0) {
        None => {
            let path = dir.join("model.safetensors");
            std::fs::write(&path, data).expect("write temp file");
            if let Ok(ckpt) = Checkpoint::open_files(&[path]) {
                check(&ckpt);
            }
        }
        Some(i) => {
            let index = dir.join("model.safetensors.index.json");
            std::fs::write(&index, &data[..i]).expect("write temp file");
            std::fs::write(dir.join(SHARD), &data[i + 1..]).expect("write temp file");
            if let Ok(ckpt) = Checkpoint::open_index(&index) {
                check(&ckpt);
            }
        }
    }
});
