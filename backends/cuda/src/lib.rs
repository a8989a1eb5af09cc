//! The CUDA backend of burn-phi3v (Burn's CUDA backend; bf16 by default, f16, f32): the backend
//! type, its devices, discovery through the CUDA driver (loaded at run time) and dtype policy.
//! The code lives in `burn-phi3v` (feature `cuda`) as [`burn_phi3v::backends::cuda`]; this
//! crate re-exports it for code that names the backend crate. Feature `fusion` turns on Burn's
//! kernel fusion.

#![deny(missing_docs)]

pub use burn_phi3v::backends::cuda::*;
pub use burn_phi3v::device::DeviceInfo;
