//! `config.json`, `preprocessor_config.json` and `generation_config.json`: any bytes either parse
//! into a configuration whose derived sizes are computable, or give a typed error.
#![no_main]

use burn_phi3v::burn::tensor::DType;
use burn_phi3v::config::{GenerationConfig, Phi3VConfig, preprocessor_config_from_file};
use burn_phi3v::engine::EngineConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
        && let Ok(cfg) = Phi3VConfig::from_value(&value, "config.json")
    {
        let _ = cfg.text.head_dim();
        let _ = EngineConfig::kv_bytes_per_token(&cfg.text, DType::BF16);
        let _ = EngineConfig::default().with_memory_budget(1 << 30, &cfg.text, DType::F32);
        if let Some(v) = &cfg.vision {
            let _ = v.layers_used();
        }
    }
    // The two small files are read from disk, as the loader does.
    let path = std::env::temp_dir().join(format!("phi3v-fuzz-config-{}.json", std::process::id()));
    std::fs::write(&path, data).expect("write temp file");
    let _ = preprocessor_config_from_file(&path);
    let _ = GenerationConfig::from_file(&path);
});
