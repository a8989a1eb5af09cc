//! Builds `mock_plugin.c` (a host-memory device implementing the header) into a shared library
//! with the C compiler, once per variant. Tests that need it skip, saying why, without `cc`.

use std::path::PathBuf;
use std::process::Command;

pub fn mock(variant: &str, defines: &[&str]) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("phi3v-mock-plugins");
    std::fs::create_dir_all(&dir).ok()?;
    let out = dir.join(format!("libmock_{variant}.so"));
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/mock_plugin.c"))
        .arg("-o")
        .arg(&out);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    match cmd.status() {
        Ok(s) if s.success() => Some(out),
        other => {
            eprintln!("skipping: could not build the mock plugin with a C compiler ({other:?})");
            None
        }
    }
}
