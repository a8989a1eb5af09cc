//! Device strings for burn-phi3v, kept for existing users: everything here is re-exported from
//! [`burn_phi3v::device`] and [`burn_phi3v::Pipeline`], where it now lives. New code needs only
//! `burn-phi3v` and its backend features (`cpu`, `cuda`, `wgpu`, `fusion`), which this crate's
//! features of the same names forward to.

#![deny(missing_docs)]

pub use burn_phi3v::Pipeline;
pub use burn_phi3v::device::{
    DeviceError, DeviceFn, DeviceSpec, available_devices, compiled_backends, device_info, resolve_dtype, with_device,
};

/// The errors of [`Pipeline`]: burn-phi3v's one error type (devices included).
pub type PipelineError = burn_phi3v::Phi3vError;
