//! The CUDA backend (feature `cuda`): Burn's CUDA backend (CubeCL kernels compiled with NVRTC
//! at run time) with autotune; Burn's fusion is opt-in (feature `fusion`: see docs/parity.md).
//! Device discovery goes through the CUDA driver, loaded dynamically, so a build without a GPU
//! still runs and simply lists no device.

use crate::device::DeviceInfo;
use burn::tensor::DType;

/// The Burn backend type for NVIDIA GPUs.
pub type Cuda = burn::backend::Cuda;
/// Its device type.
pub use burn::backend::cuda::CudaDevice;

/// Float dtypes the model runs in here (bf16 is the checkpoints' own dtype).
pub const DTYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];
/// The default compute dtype.
pub const DEFAULT_DTYPE: DType = DType::BF16;

/// Runs `f` with cudarc's panics caught and silenced (cudarc panics when a CUDA library cannot
/// be loaded); `None` if it panicked.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    r.ok()
}

/// Runs `f` against the CUDA driver; `None` if the driver library is missing or fails (a
/// missing libcuda means "no CUDA device here").
fn with_driver<T>(f: impl FnOnce() -> Option<T> + std::panic::UnwindSafe) -> Option<T> {
    quietly(|| {
        cudarc::driver::result::init().ok()?;
        f()
    })
    .flatten()
}

/// Number of CUDA devices the driver reports (0 without a driver).
pub fn device_count() -> usize {
    with_driver(|| cudarc::driver::result::device::get_count().ok().map(|n| n.max(0) as usize)).unwrap_or(0)
}

/// CUDA device `index`.
pub fn device(index: usize) -> CudaDevice {
    CudaDevice::new(index)
}

/// The devices this backend offers.
pub fn devices() -> Vec<DeviceInfo> {
    (0..device_count())
        .map(|i| {
            let (name, total) = with_driver(move || {
                let dev = cudarc::driver::result::device::get(i as i32).ok()?;
                let name = cudarc::driver::result::device::get_name(dev).ok()?;
                // SAFETY: `dev` was just returned by the driver for this ordinal.
                let total = unsafe { cudarc::driver::result::device::total_mem(dev) }.ok();
                Some((name, total.map(|t| t as u64)))
            })
            .unwrap_or_else(|| (format!("CUDA device {i}"), None));
            DeviceInfo {
                spec: format!("cuda:{i}"),
                backend: "cuda",
                index: i,
                name,
                total_memory: total,
                free_memory: None,
                dtypes: DTYPES.to_vec(),
                default_dtype: DEFAULT_DTYPE,
            }
        })
        .collect()
}
