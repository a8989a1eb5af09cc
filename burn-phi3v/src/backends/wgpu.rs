//! The wgpu backend (feature `wgpu`): Burn's wgpu backend (CubeCL kernels as WGSL) on Vulkan,
//! Metal or DX12, with autotune; Burn's fusion is opt-in (feature `fusion`: see
//! docs/parity.md). f32 by default; f16 where the adapter has `SHADER_F16`; no bf16 (WGSL has
//! no bf16 arithmetic). With the feature `vulkan`, Vulkan adapters get their kernels as SPIR-V
//! from CubeCL's own compiler instead, with cooperative matrices (tensor cores) where the driver
//! offers `VK_KHR_cooperative_matrix` ([`VULKAN_KERNELS`]).

use burn::backend::wgpu::{WgpuDevice, graphics};
use crate::device::DeviceInfo;
use burn::tensor::DType;

/// The Burn backend type for wgpu.
pub type Wgpu = burn::backend::Wgpu;
/// Its device type.
pub use burn::backend::wgpu::WgpuDevice as Device;

/// The default compute dtype.
pub const DEFAULT_DTYPE: DType = DType::F32;

/// The language Vulkan adapters get their kernels in: `SPIR-V` with the feature `vulkan`
/// (CubeCL's compiler), else `WGSL` (translated by wgpu). Other graphics APIs always get WGSL.
pub const VULKAN_KERNELS: &str = if cfg!(feature = "vulkan") { "SPIR-V" } else { "WGSL" };

/// One adapter wgpu can see.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// wgpu's adapter description.
    pub info: ::wgpu::AdapterInfo,
    /// Whether shaders may use f16.
    pub shader_f16: bool,
    /// The Burn device that selects it.
    pub device: WgpuDevice,
}

/// Every adapter, in wgpu's enumeration order (`wgpu:N` is the N-th).
pub fn adapters() -> Vec<Adapter> {
    let instance = ::wgpu::Instance::default();
    let list = pollster::block_on(instance.enumerate_adapters(::wgpu::Backends::all()));
    let mut per_type = std::collections::HashMap::new();
    list.into_iter()
        .filter_map(|a| {
            let info = a.get_info();
            let n = per_type.entry(info.device_type as u8).or_insert(0usize);
            let device = match info.device_type {
                ::wgpu::DeviceType::DiscreteGpu => WgpuDevice::DiscreteGpu(*n),
                ::wgpu::DeviceType::IntegratedGpu => WgpuDevice::IntegratedGpu(*n),
                ::wgpu::DeviceType::VirtualGpu => WgpuDevice::VirtualGpu(*n),
                ::wgpu::DeviceType::Cpu => WgpuDevice::Cpu,
                ::wgpu::DeviceType::Other => return None,
            };
            *n += 1;
            Some(Adapter {
                shader_f16: a.features().contains(::wgpu::Features::SHADER_F16),
                info,
                device,
            })
        })
        .collect()
}

/// The devices this backend offers.
pub fn devices() -> Vec<DeviceInfo> {
    adapters()
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let mut dtypes = vec![DType::F32];
            if a.shader_f16 {
                dtypes.push(DType::F16);
            }
            DeviceInfo {
                spec: format!("wgpu:{i}"),
                backend: "wgpu",
                index: i,
                name: format!("{} ({:?}, {:?})", a.info.name, a.info.backend, a.info.device_type),
                total_memory: None,
                free_memory: None,
                dtypes,
                default_dtype: DEFAULT_DTYPE,
            }
        })
        .collect()
}

/// Binds `device` to the Vulkan graphics API (for the `vulkan` device string). Must run before
/// the device's first use.
pub fn init_vulkan(device: &WgpuDevice) {
    burn::backend::wgpu::init_setup::<graphics::Vulkan>(device, Default::default());
}
