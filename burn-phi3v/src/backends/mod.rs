//! The Burn backends compiled into this build, one cargo feature each, for code that names the
//! backend type instead of a device string.
//!
//! | feature | module | backend type | device |
//! |---|---|---|---|
//! | `cpu` (default) | `cpu` | `Cpu` (Burn's Flex) | `cpu::device()` |
//! | `cuda` | `cuda` | `Cuda` | `cuda::device(index)` |
//! | `wgpu` | `wgpu` | `Wgpu` | `wgpu::adapters()[n].device`, or `Default::default()` |
//!
//! Each module also lists its devices (`devices()`) and its dtype policy (`DEFAULT_DTYPE`).
//!
//! ```
//! use burn_phi3v::backends::{Cpu, cpu};
//! use burn_phi3v::{LoadOptions, LoadedModel};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/models/phi3v-tiny");
//! let m = LoadedModel::<Cpu>::from_pretrained(dir, &cpu::device(), &LoadOptions::default())?;
//! assert_eq!(m.model.dtype(), cpu::DEFAULT_DTYPE);
//! # Ok::<(), burn_phi3v::Phi3vError>(())
//! ```

#[cfg(feature = "cpu")]
#[doc(inline)]
pub use phi3v_backend_cpu as cpu;
#[cfg(feature = "cpu")]
pub use phi3v_backend_cpu::Cpu;

#[cfg(feature = "cuda")]
#[doc(inline)]
pub use phi3v_backend_cuda as cuda;
#[cfg(feature = "cuda")]
pub use phi3v_backend_cuda::Cuda;

#[cfg(feature = "wgpu")]
#[doc(inline)]
pub use phi3v_backend_wgpu as wgpu;
#[cfg(feature = "wgpu")]
pub use phi3v_backend_wgpu::Wgpu;
