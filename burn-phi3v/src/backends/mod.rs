//! The Burn backends compiled into this build, one cargo feature each, for code that names the
//! backend type instead of a device string.
//!
//! | feature | module | backend type | device |
//! |---|---|---|---|
//! | `cpu` (default) | `cpu` | `Cpu` (Burn's Flex) | `cpu::device()` |
//! | `cuda` | `cuda` | `Cuda` | `cuda::device(index)` |
//! | `wgpu` | `wgpu` | `Wgpu` | `wgpu::adapters()[n].device`, or `Default::default()` |
//! | `rocm` | `rocm` | `Rocm` (not run on AMD hardware yet; no device string) | `rocm::device(index)` |
//! | `plugin` | `plugin` | `Plugin` (a vendor's C-ABI plugin, loaded at run time) | `plugin::device("plugin:PATH[:N]")` |
//!
//! Each module also lists its devices (`devices()`) and its dtype policy (`DEFAULT_DTYPE`).
//! The thin crates `phi3v-backend-cpu`, `-cuda`, `-wgpu` and `-rocm` re-export these modules.
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
pub mod cpu;
#[cfg(feature = "cpu")]
pub use cpu::Cpu;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub use cuda::Cuda;

#[cfg(feature = "wgpu")]
pub mod wgpu;
#[cfg(feature = "wgpu")]
pub use self::wgpu::Wgpu;

#[cfg(feature = "rocm")]
pub mod rocm;
#[cfg(feature = "rocm")]
pub use rocm::Rocm;

#[cfg(feature = "plugin")]
pub mod plugin;
#[cfg(feature = "plugin")]
pub use plugin::Plugin;
