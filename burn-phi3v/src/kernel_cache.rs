//! A persistent cache of compiled GPU kernels, so that a second run skips their compilation.
//!
//! CubeCL (the compiler behind Burn's CUDA and wgpu backends) generates every kernel at its first
//! launch: on CUDA through NVRTC, 0.5–1 s per kernel, a few hundred kernels for one model and
//! dtype (docs/kernels.md measured `phi3v generate` on the tiny bf16 checkpoint at 154–181 s,
//! nearly all of it compilation). CubeCL can keep what it compiled (PTX on CUDA) and its
//! autotune results on disk, but leaves that off unless a `cubecl.toml` asks for it. [`configure`]
//! turns it on for a process in a folder of the caller's choosing, before the first kernel runs:
//! `phi3v` does so by default (`--kernel-cache`, `PHI3V_KERNEL_CACHE`), like vLLM's
//! `~/.cache/vllm`.
//!
//! # The folder
//! Kernels are kept under `ROOT/BACKEND-DEVICE/BUILD/`:
//! - `BACKEND-DEVICE` (e.g. `cuda-NVIDIA_H200`): compiled code is specific to the GPU's
//!   architecture, and CubeCL's cache key does not name it;
//! - `BUILD`: the running executable's size and modification time. CubeCL's key is the kernel's
//!   type and launch settings, not its code, so a rebuilt program whose kernel bodies changed
//!   would otherwise load the old program's kernels. A new build starts an empty folder; old
//!   ones can be deleted at any time.
//!
//! Processes may share a folder: CubeCL appends whole entries and locks its table of contents
//! (cubecl-common 0.10's `CompilationCache` and `CacheFile`), and skips a damaged entry when
//! reading.
//!
//! # A `cubecl.toml` wins
//! A `cubecl.toml`, `CubeCL.toml`, `burn.toml` or `Burn.toml` in the working directory or one
//! above it is the user's own CubeCL configuration: [`configure`] leaves it in charge and says
//! so ([`KernelCacheStatus::UserConfig`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::device::DeviceInfo;

/// Environment variable that chooses the cache for `phi3v` (a folder, or `off`).
pub const ENV: &str = "PHI3V_KERNEL_CACHE";

/// Where compiled kernels are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCache {
    /// Not kept: every process compiles its kernels (CubeCL's default).
    Off,
    /// Kept under this folder (see the module's documentation for its layout).
    Dir(PathBuf),
}

impl KernelCache {
    /// The default folder: `$XDG_CACHE_HOME/phi3v/kernels`, else `$HOME/.cache/phi3v/kernels`;
    /// `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = nonempty("XDG_CACHE_HOME").or_else(|| nonempty("HOME").map(|h| h.join(".cache")))?;
        Some(base.join("phi3v").join("kernels"))
    }

    /// The choice `phi3v` makes without a flag: [`ENV`] if set (a folder or `off`), else
    /// [`KernelCache::default_dir`], else [`KernelCache::Off`].
    pub fn from_env() -> KernelCache {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => v.parse().unwrap_or(KernelCache::Off),
            _ => KernelCache::default_dir().map_or(KernelCache::Off, KernelCache::Dir),
        }
    }
}

impl FromStr for KernelCache {
    type Err = std::convert::Infallible;

    /// `off` (also `none`, `0`, `false`) or a folder.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" | "none" | "0" | "false" => KernelCache::Off,
            _ => KernelCache::Dir(PathBuf::from(s)),
        })
    }
}

impl fmt::Display for KernelCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelCache::Off => f.write_str("off"),
            KernelCache::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// What [`configure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCacheStatus {
    /// Kernels and autotune results are kept in this folder.
    Enabled(PathBuf),
    /// Not kept ([`KernelCache::Off`]).
    Off,
    /// The device's backend compiles no kernels (the CPU) or this build has no CubeCL backend.
    NotApplicable,
    /// This CubeCL configuration file rules (nothing changed).
    UserConfig(PathBuf),
    /// CubeCL's configuration was read before (a kernel already ran in this process), so it
    /// cannot change any more: nothing changed.
    TooLate,
}

impl fmt::Display for KernelCacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelCacheStatus::Enabled(d) => write!(f, "kernel cache: {}", d.display()),
            KernelCacheStatus::Off => f.write_str("kernel cache: off"),
            KernelCacheStatus::NotApplicable => f.write_str("kernel cache: not used by this device"),
            KernelCacheStatus::UserConfig(p) => write!(f, "kernel cache: as {} says", p.display()),
            KernelCacheStatus::TooLate => f.write_str("kernel cache: unchanged (CubeCL was configured before)"),
        }
    }
}

/// The cache folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("kernel cache folder {path} is not usable: {source} (choose another with --kernel-cache DIR or {ENV}=DIR, or turn it off with `off`)")]
pub struct KernelCacheError {
    /// The folder.
    pub path: PathBuf,
    /// Why: the error creating it or writing in it.
    #[source]
    pub source: std::io::Error,
}

/// The folder the kernels of `device` go to under `root` (see the module's documentation).
pub fn device_dir(root: &Path, device: &DeviceInfo) -> PathBuf {
    let clean = |s: &str| -> String {
        let mut t = String::with_capacity(s.len());
        for c in s.chars() {
            let c = if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' };
            if !(c == '_' && t.ends_with('_')) {
                t.push(c);
            }
        }
        t.trim_matches('_').to_string()
    };
    root.join(format!("{}-{}", device.backend, clean(&device.name))).join(build_stamp())
}

/// The running executable's size and modification time, in hex: a new build, a new stamp.
fn build_stamp() -> String {
    let meta = std::env::current_exe().and_then(std::fs::metadata);
    match meta {
        Ok(m) => {
            let nanos = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{:x}-{nanos:x}", m.len())
        }
        Err(_) => "unknown-build".to_string(),
    }
}

/// The CubeCL configuration file a run in the working directory would read, if any.
pub fn user_config_file() -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        for name in ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// Makes `path` and checks that a file can be written in it.
fn ensure_writable(path: &Path) -> Result<(), KernelCacheError> {
    let err = |source| KernelCacheError { path: path.to_path_buf(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    let probe = path.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Turns CubeCL's kernel and autotune caches on for this process in `cache`'s folder for
/// `device` (see the module's documentation), unless a CubeCL configuration file rules or
/// CubeCL was configured before. Call it before the first kernel runs.
///
/// # Errors
/// The folder cannot be created or written ([`KernelCacheError`]); nothing is changed then.
pub fn configure(cache: &KernelCache, device: &DeviceInfo) -> Result<KernelCacheStatus, KernelCacheError> {
    let root = match cache {
        KernelCache::Off => return Ok(KernelCacheStatus::Off),
        KernelCache::Dir(root) => root,
    };
    if device.backend == "cpu" || !cfg!(feature = "cube") {
        return Ok(KernelCacheStatus::NotApplicable);
    }
    if let Some(file) = user_config_file() {
        return Ok(KernelCacheStatus::UserConfig(file));
    }
    let dir = device_dir(root, device);
    ensure_writable(&dir)?;
    Ok(set_cubecl_cache(&dir))
}

#[cfg(feature = "cube")]
fn set_cubecl_cache(dir: &Path) -> KernelCacheStatus {
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    let mut state = CubeClRuntimeConfig::storage().lock();
    if state.is_some() {
        return KernelCacheStatus::TooLate;
    }
    // CubeCL's own defaults and its environment variables (CUBECL_AUTOTUNE_LEVEL, …), then the
    // two cache folders.
    let mut config = CubeClRuntimeConfig::default().override_from_env();
    config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    *state = Some(std::sync::Arc::new(config));
    KernelCacheStatus::Enabled(dir.to_path_buf())
}

#[cfg(not(feature = "cube"))]
fn set_cubecl_cache(_: &Path) -> KernelCacheStatus {
    KernelCacheStatus::NotApplicable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_off_and_folders() {
        assert_eq!("off".parse::<KernelCache>().unwrap(), KernelCache::Off);
        assert_eq!("OFF".parse::<KernelCache>().unwrap(), KernelCache::Off);
        assert_eq!("/tmp/k".parse::<KernelCache>().unwrap(), KernelCache::Dir("/tmp/k".into()));
        assert_eq!(KernelCache::Dir("/tmp/k".into()).to_string(), "/tmp/k");
    }

    #[test]
    fn device_folders_differ_by_backend_and_name_and_are_plain() {
        let info = |backend, name: &str| DeviceInfo {
            spec: "x".into(),
            backend,
            index: 0,
            name: name.into(),
            total_memory: None,
            free_memory: None,
            dtypes: vec![],
            default_dtype: burn::tensor::DType::F32,
        };
        let root = Path::new("/r");
        let a = device_dir(root, &info("cuda", "NVIDIA H200"));
        let b = device_dir(root, &info("cuda", "NVIDIA A100-SXM4-80GB"));
        let c = device_dir(root, &info("wgpu", "NVIDIA H200"));
        assert!(a != b && a != c && b != c);
        let family = a.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(family, "cuda-NVIDIA_H200");
        assert_eq!(b.parent().unwrap().file_name().unwrap(), "cuda-NVIDIA_A100-SXM4-80GB");
        // Same build, same stamp.
        assert_eq!(a.file_name(), device_dir(root, &info("cuda", "NVIDIA H200")).file_name());
    }
}
