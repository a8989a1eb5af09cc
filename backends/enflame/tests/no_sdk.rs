//! Without TopsRider (as here) the plugin loads, and every failure says what is missing.

use phi3v_backend_plugin::{PluginError, PluginLibrary};
use std::path::PathBuf;

fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!("{}phi3v_plugin_enflame{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    [deps.join(&name), deps.parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not built next to {}", deps.display()))
}

#[test]
fn missing_runtime_and_compiler_are_named() {
    if phi3v_plugin_enflame::runtime_available().is_ok() {
        eprintln!("TopsRider present: nothing to check here");
        return;
    }
    let lib = PluginLibrary::load(&cdylib()).unwrap();
    match lib.device_count() {
        Err(PluginError::Driver { message, .. }) => {
            assert!(message.contains("libtopsrt.so") && message.contains("TOPS_HOME"), "{message}")
        }
        other => panic!("expected a missing-runtime error, got {other:?}"),
    }

    // The only test touching these variables in this binary.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("enflame-kernels");
    // SAFETY: no other test in this binary reads or writes them.
    unsafe {
        std::env::set_var(phi3v_backend_plugin::KERNEL_DIR_ENV, &dir);
        std::env::set_var("TOPS_HOME", "/nonexistent/tops");
        std::env::remove_var("PHI3V_TOPSCC");
    }
    if phi3v_plugin_enflame::find_compiler().is_none() {
        let err = phi3v_plugin_enflame::compile_kernel("softmax_kernel", "// source").unwrap_err();
        assert!(err.contains("softmax_kernel") && err.contains("(topscc) was not found"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "source not saved: {err}");
    }
    // A compiler that fails: the error names the kernel and where its source is.
    // SAFETY: as above.
    unsafe { std::env::set_var("PHI3V_TOPSCC", "/bin/false") };
    let err = phi3v_plugin_enflame::compile_kernel("matmul_kernel", "// source").unwrap_err();
    assert!(err.contains("kernel `matmul_kernel` failed to compile"), "{err}");
    let saved = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).any(|e| {
        e.file_name().to_string_lossy().starts_with("matmul_kernel")
    });
    assert!(saved, "the failing kernel's source is saved for the vendor");
}
