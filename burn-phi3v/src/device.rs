//! Devices chosen at run time by string: `cpu`, `cuda`, `cuda:N`, `wgpu`, `wgpu:N`, `vulkan`,
//! `vulkan:N`, `plugin:PATH[:N]`. The backends are additive cargo features (`cpu`, `cuda`, `wgpu`); a string whose
//! backend is not compiled in is a typed error ([`DeviceError::NotCompiled`]) that lists what is
//! available.
//!
//! [`with_device`] runs code generic over `B: Kernels` on the backend a string names; the
//! [`Pipeline`](crate::Pipeline) is built on it. The model code never reads anything here.
//!
//! ```
//! use burn_phi3v::device::{available_devices, device_info, DeviceError};
//!
//! let cpu = device_info("cpu")?;
//! assert_eq!(cpu.backend, "cpu");
//! assert!(available_devices().iter().any(|d| d.spec == "cpu"));
//! assert!(matches!(device_info("tpu:0"), Err(DeviceError::Unknown { .. })));
//! # Ok::<(), DeviceError>(())
//! ```

use crate::kernels::Kernels;
use burn::tensor::DType;

/// One device a backend offers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device string that selects it (`cpu`, `cuda:0`, `wgpu:1`, …).
    pub spec: String,
    /// Backend family (`cpu`, `cuda`, `wgpu`, `rocm`).
    pub backend: &'static str,
    /// Index within the family.
    pub index: usize,
    /// Human-readable name as the runtime reports it.
    pub name: String,
    /// Total memory in bytes, where the runtime tells.
    pub total_memory: Option<u64>,
    /// Free memory in bytes, where the runtime tells.
    pub free_memory: Option<u64>,
    /// Float compute dtypes supported for the model.
    pub dtypes: Vec<DType>,
    /// Default compute dtype.
    pub default_dtype: DType,
}

/// Parses `f32`, `f16`, `bf16` (also `float32`, `float16`, `bfloat16`).
pub fn parse_dtype(s: &str) -> Option<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => Some(DType::F32),
        "f16" | "float16" | "fp16" | "half" => Some(DType::F16),
        "bf16" | "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

/// The short name of a float dtype (`f32`, `f16`, `bf16`).
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// A parsed device string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (Burn's Flex backend).
    Cpu,
    /// CUDA device N (`cuda` alone is device 0; `gpu[:N]` is accepted too).
    Cuda(usize),
    /// A wgpu adapter: the N-th of [`available_devices`], or wgpu's default when `None`.
    Wgpu(Option<usize>),
    /// A wgpu adapter driven through the Vulkan API.
    Vulkan(Option<usize>),
    /// A device plugin: the whole string, `plugin:PATH_TO_LIBRARY[:N]` or `plugin[:N]` (library
    /// from `PHI3V_PLUGIN`); the path keeps its case.
    Plugin(String),
}

/// Why a device string or dtype cannot be used. Every device variant lists what is available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Not a device string at all.
    #[error("unknown device `{spec}` (expected cpu, cuda[:N], wgpu[:N], vulkan[:N] or plugin:PATH[:N]); available: {}", list(.available))]
    Unknown {
        /// What was given.
        spec: String,
        /// Device strings this build and machine offer.
        available: Vec<String>,
    },
    /// The backend exists but this build does not include it.
    #[error("device `{spec}` needs the `{feature}` cargo feature, which this build lacks; available: {}", list(.available))]
    NotCompiled {
        /// What was given.
        spec: String,
        /// The cargo feature of `burn-phi3v` to enable.
        feature: &'static str,
        /// Device strings this build and machine offer.
        available: Vec<String>,
    },
    /// The backend is compiled in, but the machine has no such device.
    #[error("device `{spec}` is not present on this machine; available: {}", list(.available))]
    NotPresent {
        /// What was given.
        spec: String,
        /// Device strings this build and machine offer.
        available: Vec<String>,
    },
    /// The plugin library could not be used: not found, not a plugin, wrong ABI version, missing
    /// symbol, device index out of range, driver failure.
    #[cfg(feature = "plugin")]
    #[error("device `{spec}`: {source}")]
    Plugin {
        /// What was given.
        spec: String,
        /// The plugin runtime's error.
        #[source]
        source: crate::backends::plugin::PluginError,
    },
    /// The dtype string is not a float dtype.
    #[error("unknown dtype `{0}` (expected f32, f16 or bf16)")]
    UnknownDtype(String),
    /// The device cannot compute in that dtype.
    #[error("dtype {dtype} is not supported on {spec} (supported: {})", .supported.join(", "))]
    UnsupportedDtype {
        /// The device.
        spec: String,
        /// The dtype asked for.
        dtype: String,
        /// What it supports.
        supported: Vec<String>,
    },
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let trimmed = s.trim();
        if trimmed == "plugin" || trimmed.starts_with("plugin:") {
            return Ok(Self::Plugin(trimmed.to_string()));
        }
        let lower = trimmed.to_ascii_lowercase();
        let (kind, index) = match lower.split_once(':') {
            Some((k, i)) => match i.parse::<usize>() {
                Ok(n) => (k.to_string(), Some(n)),
                Err(_) => return Err(unknown(s)),
            },
            None => (lower.clone(), None),
        };
        match (kind.as_str(), index) {
            ("cpu", None | Some(0)) => Ok(Self::Cpu),
            ("cuda" | "gpu", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("vulkan", i) => Ok(Self::Vulkan(i)),
            _ => Err(unknown(s)),
        }
    }
}

fn unknown(s: &str) -> DeviceError {
    DeviceError::Unknown {
        spec: s.to_string(),
        available: available_specs(),
    }
}

/// Backend families compiled into this build (`cpu`, `cuda`, `wgpu`).
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cpu") {
        v.push("cpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "plugin") {
        v.push("plugin");
    }
    v
}

/// Every device this build can use on this machine.
pub fn available_devices() -> Vec<DeviceInfo> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(feature = "cpu")]
    v.extend(crate::backends::cpu::devices());
    #[cfg(feature = "cuda")]
    v.extend(crate::backends::cuda::devices());
    #[cfg(feature = "wgpu")]
    v.extend(crate::backends::wgpu::devices());
    #[cfg(feature = "plugin")]
    v.extend(crate::backends::plugin::devices());
    v
}

fn available_specs() -> Vec<String> {
    available_devices().into_iter().map(|d| d.spec).collect()
}

/// Generic code to run on whichever backend a device string names (see [`with_device`]).
///
/// Rust closures cannot be generic over a type, so the code is a type implementing this trait.
pub trait DeviceFn {
    /// What it returns.
    type Output;
    /// Runs on `device` of backend `B`, computing in `dtype`.
    fn run<B: Kernels>(self, device: &B::Device, info: &DeviceInfo, dtype: DType) -> Self::Output;
}

/// Checks that `info`'s device computes in `dtype`.
pub fn check_dtype(info: &DeviceInfo, dtype: DType) -> Result<DType, DeviceError> {
    if info.dtypes.contains(&dtype) {
        Ok(dtype)
    } else {
        Err(DeviceError::UnsupportedDtype {
            spec: info.spec.clone(),
            dtype: dtype_name(dtype).into(),
            supported: info.dtypes.iter().map(|d| dtype_name(*d).to_string()).collect(),
        })
    }
}

/// Picks the dtype: `requested` (`f32`, `f16`, `bf16`) if the device supports it, else an
/// error; the device's default when `None`.
pub fn resolve_dtype(info: &DeviceInfo, requested: Option<&str>) -> Result<DType, DeviceError> {
    match requested {
        None => Ok(info.default_dtype),
        Some(r) => check_dtype(info, parse_dtype(r).ok_or_else(|| DeviceError::UnknownDtype(r.to_string()))?),
    }
}

/// Information about the device a string names, if this build and machine have it.
pub fn device_info(spec: &str) -> Result<DeviceInfo, DeviceError> {
    let parsed: DeviceSpec = spec.parse()?;
    let _not_compiled = |feature| DeviceError::NotCompiled {
        spec: spec.to_string(),
        feature,
        available: available_specs(),
    };
    let not_present = || DeviceError::NotPresent {
        spec: spec.to_string(),
        available: available_specs(),
    };
    let _pick = |list: Vec<DeviceInfo>, i: usize| list.into_iter().nth(i).ok_or_else(not_present);
    match parsed {
        DeviceSpec::Cpu => {
            #[cfg(feature = "cpu")]
            return _pick(crate::backends::cpu::devices(), 0);
            #[cfg(not(feature = "cpu"))]
            Err(_not_compiled("cpu"))
        }
        DeviceSpec::Cuda(_i) => {
            #[cfg(feature = "cuda")]
            return _pick(crate::backends::cuda::devices(), _i);
            #[cfg(not(feature = "cuda"))]
            Err(_not_compiled("cuda"))
        }
        DeviceSpec::Wgpu(_i) | DeviceSpec::Vulkan(_i) => {
            #[cfg(feature = "wgpu")]
            {
                let mut info = _pick(crate::backends::wgpu::devices(), _i.unwrap_or(0))?;
                info.spec = spec.to_string();
                Ok(info)
            }
            #[cfg(not(feature = "wgpu"))]
            Err(_not_compiled("wgpu"))
        }
        DeviceSpec::Plugin(_s) => {
            #[cfg(feature = "plugin")]
            return crate::backends::plugin::device_info(&_s)
                .map_err(|source| DeviceError::Plugin { spec: spec.to_string(), source });
            #[cfg(not(feature = "plugin"))]
            Err(_not_compiled("plugin"))
        }
    }
}

/// Runs `f` on the backend and device `spec` names, in `dtype` (`f32`, `f16`, `bf16`; the
/// device's default when `None`).
///
/// ```
/// use burn_phi3v::burn::tensor::{DType, ElementConversion, Tensor};
/// use burn_phi3v::device::{DeviceFn, DeviceInfo, with_device};
/// use burn_phi3v::kernels::Kernels;
///
/// struct Sum;
/// impl DeviceFn for Sum {
///     type Output = f32;
///     fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> f32 {
///         let t = Tensor::<B, 1>::from_data([1.0f32, 2.0, 3.0], (device, dtype));
///         t.sum().into_scalar().elem()
///     }
/// }
/// assert_eq!(with_device("cpu", None, Sum)?, 6.0);
/// # Ok::<(), burn_phi3v::device::DeviceError>(())
/// ```
pub fn with_device<F: DeviceFn>(spec: &str, dtype: Option<&str>, f: F) -> Result<F::Output, DeviceError> {
    let info = device_info(spec)?;
    let dtype = resolve_dtype(&info, dtype)?;
    with_device_info(spec, info, dtype, f)
}

/// [`with_device`] with a [`DType`] instead of its name (checked against the device).
pub fn with_device_dtype<F: DeviceFn>(spec: &str, dtype: Option<DType>, f: F) -> Result<F::Output, DeviceError> {
    let info = device_info(spec)?;
    let dtype = match dtype {
        Some(d) => check_dtype(&info, d)?,
        None => info.default_dtype,
    };
    with_device_info(spec, info, dtype, f)
}

fn with_device_info<F: DeviceFn>(spec: &str, info: DeviceInfo, dtype: DType, f: F) -> Result<F::Output, DeviceError> {
    let _ = (&f, &info, dtype); // unused when no backend is compiled in
    let parsed: DeviceSpec = spec.parse()?;
    match parsed {
        DeviceSpec::Cpu => {
            #[cfg(feature = "cpu")]
            return Ok(f.run::<crate::backends::cpu::Cpu>(&crate::backends::cpu::device(), &info, dtype));
        }
        DeviceSpec::Cuda(_i) => {
            #[cfg(feature = "cuda")]
            return Ok(f.run::<crate::backends::cuda::Cuda>(&crate::backends::cuda::device(_i), &info, dtype));
        }
        DeviceSpec::Wgpu(_i) | DeviceSpec::Vulkan(_i) => {
            #[cfg(feature = "wgpu")]
            {
                let adapters = crate::backends::wgpu::adapters();
                let device = match _i {
                    Some(n) => adapters.get(n).map(|a| a.device.clone()).unwrap_or_default(),
                    None => Default::default(),
                };
                if matches!(parsed, DeviceSpec::Vulkan(_)) {
                    crate::backends::wgpu::init_vulkan(&device);
                }
                return Ok(f.run::<crate::backends::wgpu::Wgpu>(&device, &info, dtype));
            }
        }
        DeviceSpec::Plugin(_s) => {
            #[cfg(feature = "plugin")]
            {
                let device = crate::backends::plugin::device(&_s)
                    .map_err(|source| DeviceError::Plugin { spec: spec.to_string(), source })?;
                return Ok(f.run::<crate::backends::plugin::Plugin>(&device, &info, dtype));
            }
        }
    }
    #[allow(unreachable_code)]
    Err(DeviceError::NotPresent {
        spec: spec.to_string(),
        available: available_specs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_device_strings() {
        // The path keeps its case; the library is only opened when the device is used.
        assert_eq!(
            "plugin:/Opt/libP.so:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Plugin("plugin:/Opt/libP.so:1".into())
        );
        let e = device_info("plugin:/nonexistent/libno_plugin.so").unwrap_err();
        #[cfg(feature = "plugin")]
        assert!(
            matches!(&e, DeviceError::Plugin { source: crate::backends::plugin::PluginError::LibraryNotFound { .. }, .. }),
            "{e}"
        );
        #[cfg(not(feature = "plugin"))]
        assert!(matches!(e, DeviceError::NotCompiled { feature: "plugin", .. }), "{e}");
    }

    #[test]
    fn parses_device_strings() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("wgpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu(None));
        assert_eq!("wgpu:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu(Some(1)));
        assert_eq!("vulkan".parse::<DeviceSpec>().unwrap(), DeviceSpec::Vulkan(None));
        for bad in ["tpu", "cuda:x", "cpu:1", "", "cuda:-1"] {
            assert!(matches!(bad.parse::<DeviceSpec>(), Err(DeviceError::Unknown { .. })), "{bad}");
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn errors_list_what_is_available() {
        let e = "tpu:0".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("available:") && e.contains("cpu"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = device_info("cuda:0").unwrap_err();
            assert!(matches!(e, DeviceError::NotCompiled { feature: "cuda", .. }), "{e}");
        }
        #[cfg(feature = "cuda")]
        {
            let e = device_info("cuda:99").unwrap_err();
            assert!(matches!(e, DeviceError::NotPresent { .. }), "{e}");
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn dtype_policy() {
        let cpu = device_info("cpu").unwrap();
        assert_eq!(resolve_dtype(&cpu, None).unwrap(), DType::F32);
        assert!(matches!(resolve_dtype(&cpu, Some("bf16")), Err(DeviceError::UnsupportedDtype { .. })));
        assert!(matches!(resolve_dtype(&cpu, Some("f8")), Err(DeviceError::UnknownDtype(_))));
        assert!(matches!(with_device_dtype("cpu", Some(DType::F16), Sum), Err(DeviceError::UnsupportedDtype { .. })));
    }

    #[cfg(feature = "cpu")]
    struct Sum;
    #[cfg(feature = "cpu")]
    impl DeviceFn for Sum {
        type Output = f32;
        fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> f32 {
            use burn::tensor::ElementConversion;
            let t = burn::tensor::Tensor::<B, 1>::from_data([1.0f32, 2.0, 3.0], (device, dtype));
            t.sum().into_scalar().elem()
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn runs_generic_code_on_the_named_device() {
        assert_eq!(with_device("cpu", None, Sum).unwrap(), 6.0);
    }
}
