//! Shared by the examples: where the shipped tiny checkpoint is, and `--flag value` lookup.

/// The tiny random-weight checkpoint shipped with the repository (meaningless answers).
pub const TINY_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi35v-tiny");
/// A sample image shipped with the repository.
pub const SAMPLE_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/images/chelsea.png");

/// The value after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}
