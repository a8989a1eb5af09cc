//! The few command-line helpers the crate's binaries share (`phi3v-parity`,
//! `phi3v-logits-diff`, `phi3v-plugin-conformance`).

/// The value after `name` (`--device cuda` → `Some("cuda")`).
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Whether any of `names` is given (`--large`, or `--help` / `-h`).
pub fn flag(args: &[String], names: &[&str]) -> bool {
    args.iter().any(|a| names.contains(&a.as_str()))
}
