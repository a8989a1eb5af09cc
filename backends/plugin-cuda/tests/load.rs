//! The built `libphi3v_plugin_cuda.so` loads through the runtime: every symbol of the header is
//! exported and the ABI version matches. Without an NVIDIA driver (as on CI) counting devices
//! is a typed error saying the driver library is missing, not a crash.

use phi3v_backend_plugin::{PluginDevice, PluginError, PluginLibrary};
use std::path::PathBuf;

/// The cdylib cargo builds next to this test's dependencies.
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!("{}phi3v_plugin_cuda{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    [deps.join(&name), deps.parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not built next to {}", deps.display()))
}

#[test]
fn loads_and_reports_its_devices() {
    let lib = PluginLibrary::load(&cdylib()).unwrap();
    assert!(lib.has(phi3v_backend_plugin::ffi::CAP_PINNED_HOST | phi3v_backend_plugin::ffi::CAP_MEMCPY_2D));
    match lib.device_count() {
        // No driver here: the error says so, and opening a device is the same typed error.
        Err(PluginError::Driver { status: phi3v_backend_plugin::ffi::ERROR_NO_DEVICE, message, .. }) => {
            assert!(message.contains("libcuda"), "{message}");
            assert!(matches!(PluginDevice::open(cdylib(), 0), Err(PluginError::Driver { .. })));
        }
        Ok(count) if count > 0 => {
            let info = lib.device_info(0).unwrap();
            assert_eq!(info.dialect, phi3v_backend_plugin::ffi::DIALECT_CUDA);
            assert!(info.total_memory > 0 && info.warp_size == 32, "{info:?}");
            assert!(matches!(
                PluginDevice::open(cdylib(), count),
                Err(PluginError::DeviceOutOfRange { .. })
            ));
        }
        other => panic!("unexpected device count {other:?}"),
    }
}

#[test]
fn bad_handles_are_statuses() {
    let lib = PluginLibrary::load(&cdylib()).unwrap();
    // SAFETY: deliberately a null context: the header says the plugin rejects it with a status.
    let err = unsafe { lib.stream_create(std::ptr::null_mut()) }.unwrap_err();
    assert!(matches!(err, PluginError::Driver { status: phi3v_backend_plugin::ffi::ERROR_INVALID_VALUE, .. }), "{err}");
    assert!(!lib.status_string(phi3v_backend_plugin::ffi::ERROR_NO_DEVICE).is_empty());
}
