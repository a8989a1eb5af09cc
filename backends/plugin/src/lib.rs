//! A CubeCL runtime whose driver calls go through a small, versioned C ABI
//! (`include/phi3v_device_plugin.h`), loaded at run time from a vendor's shared library.
//!
//! CubeCL generates every kernel Burn needs as CUDA or HIP C++ source; a plugin compiles that
//! source and provides about twenty driver functions (memory, copies, streams, events, modules,
//! launch). Burn's [`CubeBackend`](burn_cubecl::CubeBackend) over [`PluginRuntime`] is then a
//! complete Burn backend: every tensor op, so the whole Phi-3-vision model.
//!
//! ```no_run
//! use phi3v_backend_plugin::{Plugin, PluginDevice};
//! use burn_backend::Backend;
//!
//! let device = PluginDevice::from_device_string("plugin:/opt/lib/libphi3v_plugin_cuda.so:0")?;
//! println!("{}", device.info()?.name);
//! <Plugin as Backend>::seed(&device, 0);
//! # Ok::<(), phi3v_backend_plugin::PluginError>(())
//! ```
//!
//! The structure of `compute/` follows cubecl-hip / cubecl-cuda 0.10; `README.md` documents
//! the ABI, what a plugin must provide and what the runtime does not use (tensor maps,
//! thread-block clusters).

#[allow(dead_code)]
pub mod ffi;

mod compute;
mod device;
mod error;
mod library;
mod runtime;

pub use compute::PluginServer;
pub use compute::context::KERNEL_DIR_ENV;
pub use device::{PLUGIN_ENV, PluginDevice, PluginSpec, load_library};
pub use error::PluginError;
pub use library::{DeviceInfo, PluginLibrary};
pub use runtime::{
    CudaSource, HipSource, PluginCudaRuntime, PluginDialect, PluginHipRuntime, PluginRuntime,
};

/// Burn's backend over a plugin that compiles CUDA C++ (`u8` booleans, as Burn's CUDA backend).
pub type Plugin<F = f32, I = i32> = burn_cubecl::CubeBackend<PluginCudaRuntime, F, I, u8>;
/// Burn's backend over a plugin that compiles HIP C++.
pub type PluginHip<F = f32, I = i32> = burn_cubecl::CubeBackend<PluginHipRuntime, F, I, u8>;

/// What a device string asks for, for callers that pick the backend type: the dialect the
/// device's plugin compiles.
pub fn device_dialect(device: &PluginDevice) -> Result<u32, PluginError> {
    Ok(device.info()?.dialect)
}
