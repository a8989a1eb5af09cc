//! The ROCm backend of burn-phi3v (AMD GPUs through Burn's ROCm/HIP backend; compiled, not yet
//! run on AMD hardware): the backend type, its devices, discovery through the HIP runtime
//! (loaded at run time) and dtype policy. The code lives in `burn-phi3v` (feature `rocm`) as
//! [`burn_phi3v::backends::rocm`]; this crate re-exports it for code that names the backend
//! crate. Feature `fusion` turns on Burn's kernel fusion.

#![deny(missing_docs)]

pub use burn_phi3v::backends::rocm::*;
pub use burn_phi3v::device::DeviceInfo;
