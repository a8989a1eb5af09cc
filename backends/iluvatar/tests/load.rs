//! The Iluvatar plugin loads through the runtime; without CoreX (and without the stand-in
//! switch) it says that CoreX is missing and how to point at it.

use phi3v_backend_plugin::{PluginError, PluginLibrary};
use std::path::PathBuf;

fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!("{}phi3v_plugin_iluvatar{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    [deps.join(&name), deps.parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not built next to {}", deps.display()))
}

#[test]
fn without_corex_the_error_says_what_is_missing() {
    let lib = PluginLibrary::load(&cdylib()).unwrap();
    // The NVIDIA-only capabilities are off whatever the stack.
    assert!(!lib.has(phi3v_backend_plugin::ffi::CAP_MMA));
    assert!(!lib.has(phi3v_backend_plugin::ffi::CAP_GRID_CONSTANTS));
    let corex_present = phi3v_plugin_iluvatar::corex_home().is_some();
    let standin = std::env::var("PHI3V_COREX_STANDIN").is_ok_and(|v| v == "1");
    if corex_present || standin {
        eprintln!("CoreX (or the stand-in) present: {:?}", lib.device_count());
        return;
    }
    match lib.device_count() {
        Err(PluginError::Driver { message, .. }) => {
            assert!(message.contains("Iluvatar CoreX not found") && message.contains("COREX_HOME"), "{message}")
        }
        other => panic!("expected a missing-CoreX error, got {other:?}"),
    }
}
