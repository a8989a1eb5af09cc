//! Vendor devices through a plugin (feature `plugin`): the CubeCL runtime of
//! `phi3v-backend-plugin`, whose driver calls go through the C ABI of
//! `backends/plugin/include/phi3v_device_plugin.h`, loaded at run time from a shared library.
//! Device strings: `plugin:PATH_TO_LIBRARY[:N]`, or `plugin[:N]` with `PHI3V_PLUGIN` set.
//!
//! Only plugins compiling CUDA C++ are wired into device strings (the reference NVIDIA plugin,
//! Iluvatar); HIP-dialect plugins have the backend type `PluginHip` but no device string yet.

use crate::device::DeviceInfo;
use burn::tensor::DType;
pub use phi3v_backend_plugin::{PluginDevice, PluginError, ffi};

/// The Burn backend over a plugin that compiles CUDA C++.
pub type Plugin = phi3v_backend_plugin::Plugin;
/// The Burn backend over a plugin that compiles HIP C++ (no device string yet).
pub type PluginHip = phi3v_backend_plugin::PluginHip;

/// Opens the device a `plugin…` string names, checking the library, its ABI version and
/// symbols, the device index, and that it compiles CUDA C++.
pub fn device(spec: &str) -> Result<PluginDevice, PluginError> {
    let device = PluginDevice::from_device_string(spec)?;
    let info = device.info()?;
    if info.dialect != ffi::DIALECT_CUDA {
        return Err(PluginError::UnsupportedDialect {
            path: device.library().map(|l| l.path().to_owned()).unwrap_or_default(),
            index: device.index().unwrap_or(0),
            dialect: info.dialect,
        });
    }
    Ok(device)
}

/// The model's float dtypes on a device reporting the `PHI3V_DTYPE_*` mask `dtypes`; bf16 (the
/// checkpoints' dtype) is the default where the device has it, as on CUDA.
fn dtypes(mask: u64) -> (Vec<DType>, DType) {
    let mut v = Vec::new();
    if mask & ffi::DTYPE_BF16 != 0 {
        v.push(DType::BF16);
    }
    if mask & ffi::DTYPE_F16 != 0 {
        v.push(DType::F16);
    }
    v.push(DType::F32);
    let default = v[0];
    (v, default)
}

/// What the plugin reports about the device `spec` names.
pub fn device_info(spec: &str) -> Result<DeviceInfo, PluginError> {
    let device = device(spec)?;
    let info = device.info()?;
    let (dtypes, default_dtype) = dtypes(info.dtypes);
    Ok(DeviceInfo {
        spec: spec.to_string(),
        backend: "plugin",
        index: device.index().unwrap_or(0),
        name: info.name,
        total_memory: Some(info.total_memory),
        free_memory: Some(info.free_memory),
        dtypes,
        default_dtype,
    })
}

/// The devices of the plugin named by `PHI3V_PLUGIN` (none when it is unset or fails to load).
pub fn devices() -> Vec<DeviceInfo> {
    let Ok(spec) = phi3v_backend_plugin::PluginSpec::parse("plugin") else { return Vec::new() };
    let Ok(library) = phi3v_backend_plugin::load_library(&spec.path) else { return Vec::new() };
    let count = library.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| device_info(&format!("plugin:{}:{i}", spec.path.display())).ok())
        .collect()
}
