//! The CPU backend of burn-phi3v (Burn's Flex backend, one device, f32): the backend type, its
//! device, device discovery and dtype policy. The code lives in `burn-phi3v` (feature `cpu`,
//! default) as [`burn_phi3v::backends::cpu`]; this crate re-exports it for code that names the
//! backend crate.
//!
//! ```
//! let devices = phi3v_backend_cpu::devices();
//! assert_eq!(devices[0].spec, "cpu");
//! assert_eq!(devices[0].default_dtype, phi3v_backend_cpu::DEFAULT_DTYPE);
//! let _device: phi3v_backend_cpu::CpuDevice = phi3v_backend_cpu::device();
//! ```

#![deny(missing_docs)]

pub use burn_phi3v::backends::cpu::*;
pub use burn_phi3v::device::DeviceInfo;
