//! The wgpu backend of burn-phi3v (Vulkan, Metal or DX12; f32, f16 where the adapter has it):
//! the backend type, adapter enumeration, device discovery and dtype policy. The code lives in
//! `burn-phi3v` (feature `wgpu`) as [`burn_phi3v::backends::wgpu`]; this crate re-exports it
//! for code that names the backend crate. Feature `fusion` turns on Burn's kernel fusion.

#![deny(missing_docs)]

pub use burn_phi3v::backends::wgpu::*;
pub use burn_phi3v::device::DeviceInfo;
