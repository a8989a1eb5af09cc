//! The ROCm backend (feature `rocm`): Burn's ROCm backend (CubeCL kernels as HIP C++, compiled
//! at run time by hiprtc). The HIP libraries are loaded at run time, so it builds without ROCm
//! installed; without them it lists no device. It has been compiled but not run on AMD
//! hardware, and it is not one of the device strings of [`crate::device`]: use its backend
//! type and [`device`] directly.

use crate::device::DeviceInfo;
use burn::tensor::DType;

/// The Burn backend type for AMD GPUs.
pub type Rocm = burn::backend::Rocm;
/// Its device type.
pub use burn::backend::rocm::RocmDevice;

/// Float dtypes the model runs in here.
pub const DTYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];
/// The default compute dtype.
pub const DEFAULT_DTYPE: DType = DType::BF16;

/// Number of HIP devices (0 when the HIP runtime libraries are absent).
pub fn device_count() -> usize {
    if !cubecl_hip_sys::is_available() {
        return 0;
    }
    let mut n: std::os::raw::c_int = 0;
    // SAFETY: the libraries are loaded (checked above) and `n` is a valid out-pointer.
    let status = unsafe { cubecl_hip_sys::hipGetDeviceCount(&mut n) };
    if status == cubecl_hip_sys::HIP_SUCCESS { n.max(0) as usize } else { 0 }
}

/// ROCm device `index`.
pub fn device(index: usize) -> RocmDevice {
    RocmDevice::new(index)
}

/// The devices this backend offers.
pub fn devices() -> Vec<DeviceInfo> {
    (0..device_count())
        .map(|i| DeviceInfo {
            spec: format!("rocm:{i}"),
            backend: "rocm",
            index: i,
            name: format!("HIP device {i}"),
            total_memory: None,
            free_memory: None,
            dtypes: DTYPES.to_vec(),
            default_dtype: DEFAULT_DTYPE,
        })
        .collect()
}
