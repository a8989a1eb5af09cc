//! Iluvatar CoreX (IXUCA SDK) as a phi3v device plugin. CoreX implements the CUDA driver API and
//! NVRTC under their usual names, so this is the reference plugin's implementation
//! (`phi3v-plugin-cuda-driver`) with a profile that
//! - finds CoreX's libraries (`$COREX_HOME`, then `/usr/local/corex`, `/opt/corex`) and loads
//!   its `libcuda` and `libnvrtc` by full path before cudarc loads them by name, so the CoreX
//!   ones are used even when another CUDA stack is on the library path;
//! - turns off what a CUDA-compatible stack may not have: NVIDIA's warp-level matrix
//!   instructions (`mma.sync`/`wmma`), `__grid_constant__` parameters, stream-ordered
//!   allocation, the `sm_XY` architecture flag, and bf16 unless `PHI3V_COREX_BF16=1`;
//! - adds CoreX's include directory to the compiler options.
//!
//! Not run on Iluvatar hardware (see README.md). `PHI3V_COREX_STANDIN=1` accepts the CUDA
//! libraries found on the library path when CoreX is absent: the same code path, on NVIDIA.

use phi3v_backend_plugin::ffi;
use phi3v_plugin_cuda_driver::Profile;
use std::path::PathBuf;

/// The CoreX installation: `$COREX_HOME`, else the usual install paths.
pub fn corex_home() -> Option<PathBuf> {
    std::env::var_os("COREX_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/local/corex", "/opt/corex", "/usr/local/corex-sdk"].map(PathBuf::from))
        .find(|p| p.is_dir())
}

/// The first of `names` found in CoreX's library directories.
fn find_library(home: &std::path::Path, names: &[&str]) -> Option<PathBuf> {
    ["lib64", "lib"]
        .iter()
        .flat_map(|dir| names.iter().map(move |n| home.join(dir).join(n)))
        .find(|p| p.is_file())
}

fn standin() -> bool {
    std::env::var("PHI3V_COREX_STANDIN").is_ok_and(|v| v == "1")
}

/// Loads CoreX's driver and NVRTC globally, so that the later loads by name resolve to them
/// (the dynamic loader reuses an already loaded object whose soname matches).
fn prepare() -> Result<(), String> {
    let Some(home) = corex_home() else {
        return if standin() {
            Ok(())
        } else {
            Err("Iluvatar CoreX not found: set COREX_HOME to the SDK (looked in /usr/local/corex, /opt/corex), or PHI3V_COREX_STANDIN=1 to use the CUDA libraries on the library path".into())
        };
    };
    let driver = find_library(&home, &["libcuda.so.1", "libcuda.so"])
        .ok_or_else(|| format!("CoreX at {} has no libcuda.so in lib64/ or lib/", home.display()))?;
    let nvrtc = find_library(&home, &["libnvrtc.so", "libnvrtc.so.1"]);
    for lib in std::iter::once(&driver).chain(nvrtc.as_ref()) {
        // SAFETY: loading CoreX's own libraries runs their initialisers, as linking to them
        // would. The handles are leaked: the libraries stay loaded for the process.
        let handle = unsafe {
            libloading::os::unix::Library::open(
                Some(lib),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        }
        .map_err(|e| format!("loading {}: {e}", lib.display()))?;
        std::mem::forget(handle);
    }
    Ok(())
}

fn compile_options() -> Vec<String> {
    match corex_home() {
        Some(home) if home.join("include").is_dir() => {
            vec![format!("--include-path={}", home.join("include").display())]
        }
        // Stand-in on NVIDIA: the CUDA toolkit's headers, as the reference plugin.
        _ => phi3v_plugin_cuda_driver::cuda_include_options(),
    }
}

/// Capabilities kept: pinned staging, pitched copies and float atomics; matrix instructions and
/// grid constants are NVIDIA-specific PTX/launch features.
const CAPABILITIES: u64 =
    ffi::CAP_PINNED_HOST | ffi::CAP_MEMCPY_2D | ffi::CAP_ATOMIC_F16 | ffi::CAP_ATOMIC_F64;

/// The dtypes kept: everything but bf16 (enable with `PHI3V_COREX_BF16=1` on parts that have
/// it) and f64.
const DTYPES: u64 = !(ffi::DTYPE_BF16 | ffi::DTYPE_F64);

/// CoreX's profile.
pub const COREX: Profile = Profile {
    name: "phi3v-plugin-iluvatar",
    prepare,
    capabilities_mask: CAPABILITIES,
    dtypes_mask: DTYPES,
    async_alloc: false,
    arch_option: false,
    compile_options,
};

static COREX_DEFAULT: Profile = COREX;
static COREX_BF16: Profile = Profile { dtypes_mask: DTYPES | ffi::DTYPE_BF16, ..COREX };

/// The profile in effect: [`COREX`], with bf16 when `PHI3V_COREX_BF16=1`.
pub fn profile() -> &'static Profile {
    if std::env::var("PHI3V_COREX_BF16").is_ok_and(|v| v == "1") { &COREX_BF16 } else { &COREX_DEFAULT }
}

mod exports {
    use super::profile;
    // `export_plugin!` takes a path to a `Profile` value; the function call selects it at run
    // time through a deref of this static.
    pub struct Selected;
    impl std::ops::Deref for Selected {
        type Target = phi3v_plugin_cuda_driver::Profile;
        fn deref(&self) -> &Self::Target {
            profile()
        }
    }
    pub static SELECTED: Selected = Selected;
}

phi3v_plugin_cuda_driver::export_plugin!(exports::SELECTED);
