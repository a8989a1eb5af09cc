//! The CubeCL runtime over a plugin, generic over the C++ dialect its kernels are generated in.

use crate::compute::context::PluginContext;
use crate::compute::stream::PluginStreamBackend;
use crate::compute::{Driver, PluginServer};
use crate::device::{self, PluginDevice};
use crate::error::PluginError;
use crate::ffi;
use crate::library::DeviceInfo;
use cubecl_common::device::{DeviceId, DeviceService};
use cubecl_common::profile::TimingMethod;
use cubecl_core::device::ServerUtilitiesHandle;
use cubecl_core::ir::features::{AtomicUsage, Plane, TypeUsage};
use cubecl_core::ir::{
    BarrierLevel, ContiguousElements, DeviceProperties, ElemType, FloatKind, HardwareProperties,
    IntKind, MatrixLayout, MemoryDeviceProperties, MmaProperties, OpaqueType, SemanticType,
    StorageType, TargetProperties, Type, UIntKind, VectorSize,
};
use cubecl_core::server::ServerUtilities;
use cubecl_core::zspace::{Shape, Strides, striding::has_pitched_row_major_strides};
use cubecl_core::{MemoryConfiguration, Runtime};
use cubecl_cpp::shared::{
    Architecture, CompilationOptions, CppCompiler, CppSupportedFeatures, Dialect,
    DialectWmmaCompiler, register_mma_features, register_scaled_mma_features,
    register_wmma_features,
};
use cubecl_runtime::allocator::PitchedMemoryLayoutPolicy;
use cubecl_runtime::client::ComputeClient;
use cubecl_runtime::logging::ServerLogger;
use std::marker::PhantomData;
use std::sync::Arc;

/// Which C++ dialect CubeCL generates for a plugin, and what that dialect implies.
pub trait PluginDialect: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// cubecl-cpp's dialect.
    type Dialect: Dialect;
    /// `PHI3V_DIALECT_*`.
    const DIALECT: u32;
    const NAME: &'static str;
    /// Register layouts of the dialect's matrix instructions.
    fn target_properties() -> TargetProperties;
    /// Options passed to the plugin's compiler with every kernel.
    fn compile_options() -> Vec<String>;
    /// Registers what the device's architecture supports (beyond the dtypes); `mma` says
    /// whether the plugin's compiler takes the dialect's matrix intrinsics.
    fn configure(
        info: &DeviceInfo,
        capabilities: u64,
        props: &mut DeviceProperties,
        options: &mut CompilationOptions,
    ) -> Result<(), String>;
}

/// Kernels as CUDA C++ (what NVRTC and CUDA-compatible compilers take).
#[derive(Debug, Clone)]
pub struct CudaSource;

/// Kernels as HIP C++.
#[derive(Debug, Clone)]
pub struct HipSource;

type CudaWmma = cubecl_cpp::cuda::mma::CudaWmmaCompiler;
type HipWmma = cubecl_cpp::hip::mma::WmmaIntrinsicCompiler;

impl PluginDialect for CudaSource {
    type Dialect = cubecl_cpp::cuda::CudaDialect<CudaWmma>;
    const DIALECT: u32 = ffi::DIALECT_CUDA;
    const NAME: &'static str = "plugin-cuda";

    fn target_properties() -> TargetProperties {
        // As cubecl-cuda 0.10 (runtime.rs): the layouts of mma.sync fragments.
        TargetProperties {
            mma: MmaProperties {
                register_size_bits: 32,
                const_plane_size: 32,
                register_layout_a: MatrixLayout::RowMajor,
                register_layout_b: MatrixLayout::ColMajor,
                register_layout_acc: MatrixLayout::RowMajor,
                register_duplication_a: 1,
                register_duplication_b: 1,
                register_duplication_acc: 1,
                contiguous_elements: ContiguousElements::new(
                    cubecl_cpp::cuda::mma::contiguous_elements_cuda,
                ),
            },
        }
    }

    fn compile_options() -> Vec<String> {
        // The plugin adds the architecture and its include paths.
        vec!["-lineinfo".into()]
    }

    fn configure(
        info: &DeviceInfo,
        capabilities: u64,
        props: &mut DeviceProperties,
        options: &mut CompilationOptions,
    ) -> Result<(), String> {
        // The same architecture gates as cubecl-cuda 0.10 (runtime.rs), minus what needs driver
        // calls outside the ABI: tensor maps (TMA) and thread-block clusters.
        let arch = cubecl_cpp::cuda::arch::CudaArchitecture { version: info.arch_version };
        let v = info.arch_version;
        if capabilities & ffi::CAP_ATOMIC_F64 != 0 && v >= 60 {
            props.register_atomic_type_usage(
                Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F64))),
                AtomicUsage::Add | AtomicUsage::LoadStore,
            );
        }
        if v >= 70 {
            if capabilities & ffi::CAP_ATOMIC_F16 != 0 {
                let f16 = Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F16)));
                props.register_atomic_type_usage(f16, AtomicUsage::Add | AtomicUsage::LoadStore);
                props.register_atomic_type_usage(
                    f16.with_vector_size(2),
                    AtomicUsage::Add | AtomicUsage::LoadStore,
                );
            }
            props.register_semantic_type(SemanticType::Pipeline);
            props.register_type_usage(OpaqueType::Barrier(BarrierLevel::Unit), TypeUsage::Buffer);
            props.register_type_usage(OpaqueType::Barrier(BarrierLevel::Cube), TypeUsage::Buffer);
            props.features.plane.insert(Plane::Sync);
            options.supports_features.grid_constants =
                capabilities & ffi::CAP_GRID_CONSTANTS != 0;
        }
        if v >= 75 {
            for f in [FloatKind::F16, FloatKind::BF16] {
                props.features.matmul.ldmatrix.insert(ElemType::Float(f).into());
            }
        }
        if v >= 80 {
            props.features.copy_async = true;
        }
        if v >= 89 {
            for f in [FloatKind::E4M3, FloatKind::E5M2] {
                props.register_type_usage(ElemType::Float(f), TypeUsage::Conversion | TypeUsage::Buffer);
            }
        }
        if v >= 90 {
            options.supports_features.elect_sync = true;
            for f in [FloatKind::F16, FloatKind::BF16] {
                props.features.matmul.stmatrix.insert(ElemType::Float(f).into());
            }
            for n in [2, 4] {
                props.register_atomic_type_usage(
                    Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F32))).with_vector_size(n),
                    AtomicUsage::LoadStore | AtomicUsage::Add,
                );
            }
        }
        if capabilities & ffi::CAP_MMA != 0 && v > 0 {
            register_wmma_features(CudaWmma::supported_wmma_combinations(&arch), props);
            register_mma_features(CudaWmma::supported_mma_combinations(&arch), props);
            register_scaled_mma_features(CudaWmma::supported_scaled_mma_combinations(&arch), props);
            if !CudaWmma::supported_wmma_combinations(&arch).is_empty() {
                props.hardware.min_tensor_cores_dim = Some(8);
            }
            // Tensor cores per SM, as cubecl-cuda's table.
            props.hardware.num_tensor_cores = match v {
                70 | 75 => Some(8),
                80 | 86 | 89 | 90 | 91 | 92 | 100 => Some(4),
                _ => None,
            };
        }
        Ok(())
    }
}

impl PluginDialect for HipSource {
    type Dialect = cubecl_cpp::hip::HipDialect<HipWmma>;
    const DIALECT: u32 = ffi::DIALECT_HIP;
    const NAME: &'static str = "plugin-hip";

    fn target_properties() -> TargetProperties {
        // As cubecl-hip 0.10 (runtime.rs): RDNA3 WMMA fragment layouts.
        TargetProperties {
            mma: MmaProperties {
                register_size_bits: 32,
                const_plane_size: 32,
                register_layout_a: MatrixLayout::RowMajor,
                register_layout_b: MatrixLayout::ColMajor,
                register_layout_acc: MatrixLayout::ColMajor,
                register_duplication_a: 2,
                register_duplication_b: 2,
                register_duplication_acc: 1,
                contiguous_elements: ContiguousElements::new(
                    cubecl_cpp::hip::mma::contiguous_elements_rdna3,
                ),
            },
        }
    }

    fn compile_options() -> Vec<String> {
        vec!["--std=c++17".into(), "-O3".into()]
    }

    fn configure(
        info: &DeviceInfo,
        capabilities: u64,
        props: &mut DeviceProperties,
        _options: &mut CompilationOptions,
    ) -> Result<(), String> {
        if capabilities & ffi::CAP_MMA != 0 {
            let name = info.arch_name.split(':').next().unwrap_or_default();
            let arch = cubecl_cpp::hip::arch::AMDArchitecture::parse(name)
                .map_err(|e| format!("HIP architecture {name:?}: {e}"))?;
            if arch.warp_size() != info.warp_size {
                return Err(format!(
                    "HIP architecture {name} has wavefront {} but the device reports {}",
                    arch.warp_size(),
                    info.warp_size
                ));
            }
            let wmma = HipWmma::supported_wmma_combinations(&arch);
            if !wmma.is_empty() {
                props.hardware.min_tensor_cores_dim = Some(16);
            }
            register_wmma_features(wmma, props);
            register_mma_features(HipWmma::supported_mma_combinations(&arch), props);
            register_scaled_mma_features(HipWmma::supported_scaled_mma_combinations(&arch), props);
        }
        Ok(())
    }
}

/// A CubeCL runtime whose device is a plugin's, with kernels in dialect `D`.
#[derive(Debug, Clone)]
pub struct PluginRuntime<D: PluginDialect = CudaSource>(PhantomData<D>);

/// The runtime for plugins that compile CUDA C++ (the reference plugin, Iluvatar, Enflame).
pub type PluginCudaRuntime = PluginRuntime<CudaSource>;
/// The runtime for plugins that compile HIP C++.
pub type PluginHipRuntime = PluginRuntime<HipSource>;

/// Which element types a `PHI3V_DTYPE_*` mask leaves in CubeCL's type registry.
fn dtype_allowed(mask: u64, elem: ElemType) -> bool {
    let bit = match elem {
        ElemType::Float(FloatKind::F16) => ffi::DTYPE_F16,
        ElemType::Float(FloatKind::BF16) => ffi::DTYPE_BF16,
        ElemType::Float(FloatKind::F64) => ffi::DTYPE_F64,
        ElemType::Int(IntKind::I8) => ffi::DTYPE_I8,
        ElemType::Int(IntKind::I16) => ffi::DTYPE_I16,
        ElemType::Int(IntKind::I64) => ffi::DTYPE_I64,
        ElemType::UInt(UIntKind::U16) => ffi::DTYPE_U16,
        ElemType::UInt(UIntKind::U64) => ffi::DTYPE_U64,
        // F32, TF32/Flex32, I32, U32, U8, bool and the fp8 formats are not maskable.
        _ => return true,
    };
    mask & bit != 0
}

/// Builds the server for a device: its context in the plugin and CubeCL's description of it.
fn init_server<D: PluginDialect>(device: &PluginDevice) -> Result<PluginServer<D>, PluginError> {
    let slot = device::resolve(device)?;
    let lib = slot.library;
    let info = lib.device_info(slot.index)?;
    if info.dialect != D::DIALECT {
        return Err(PluginError::UnsupportedDialect {
            path: lib.path().to_owned(),
            index: slot.index,
            dialect: info.dialect,
        });
    }
    let ctx = lib.context_create(slot.index)?;
    let driver = Driver { lib, ctx };
    let capabilities = lib.capabilities();

    let mem_alignment = if info.memory_alignment == 0 { 256 } else { info.memory_alignment as usize };
    let mem_props = MemoryDeviceProperties {
        max_page_size: info.total_memory / 4,
        alignment: mem_alignment as u64,
    };
    let warp_size = info.warp_size.max(1);
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: warp_size,
        plane_size_max: warp_size,
        max_bindings: crate::compute::storage::MAX_BINDINGS,
        max_shared_memory_size: info.max_shared_memory_per_block as usize,
        max_cube_count: (info.max_grid_dim[0], info.max_grid_dim[1], info.max_grid_dim[2]),
        max_units_per_cube: info.max_threads_per_block,
        max_cube_dim: (info.max_block_dim[0], info.max_block_dim[1], info.max_block_dim[2]),
        num_streaming_multiprocessors: (info.compute_units > 0).then_some(info.compute_units),
        num_tensor_cores: None,
        min_tensor_cores_dim: None,
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    let mut props =
        DeviceProperties::new(Default::default(), mem_props.clone(), hardware, TimingMethod::System);
    cubecl_cpp::register_supported_types(&mut props);
    props.register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
    let mut options = CompilationOptions {
        warp_size,
        supports_features: CppSupportedFeatures { fast_math: true, ..Default::default() },
    };
    D::configure(&info, capabilities, &mut props, &mut options).map_err(|message| {
        PluginError::Driver {
            path: lib.path().to_owned(),
            call: "device_properties",
            status: ffi::ERROR_NOT_SUPPORTED,
            message,
        }
    })?;
    props.features.memory_reinterpret = true;
    props.features.alignment = true;
    props.features.plane.insert(Plane::Ops);
    props.features.plane.insert(Plane::NonUniformControlFlow);
    // Drop the element types the device lacks, last, so no gate above re-adds them.
    let mask = info.dtypes;
    let keep = |ty: &StorageType| match ty {
        StorageType::Opaque(_) => true,
        other => dtype_allowed(mask, other.elem_type()),
    };
    props.features.types.storage.retain(|ty, _| keep(ty));
    props.features.types.atomic.retain(|ty, _| keep(&ty.storage_type()));

    let logger = Arc::new(ServerLogger::default());
    let backend = PluginStreamBackend {
        driver,
        mem_props,
        mem_config: MemoryConfiguration::default(),
        mem_alignment,
        logger: logger.clone(),
    };
    let context = PluginContext::<D>::new(driver, options, props.clone());
    let policy = PitchedMemoryLayoutPolicy::new(mem_alignment);
    let utilities = ServerUtilities::new(props, logger, (), policy);
    Ok(PluginServer::new(context, backend, utilities))
}

impl<D: PluginDialect> DeviceService for PluginServer<D> {
    fn init(device_id: DeviceId) -> Self {
        use cubecl_common::device::Device;
        let device = PluginDevice::from_id(device_id);
        // CubeCL's service constructor cannot fail; `PluginDevice::open` has already checked
        // the library, its ABI version, its symbols and the device index with typed errors.
        init_server::<D>(&device).unwrap_or_else(|e| panic!("plugin device {device:?}: {e}"))
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities() as ServerUtilitiesHandle
    }
}

impl<D: PluginDialect> Runtime for PluginRuntime<D> {
    type Compiler = CppCompiler<D::Dialect>;
    type Server = PluginServer<D>;
    type Device = PluginDevice;

    fn client(device: &PluginDevice) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_client: &ComputeClient<Self>) -> &'static str {
        D::NAME
    }

    fn require_array_lengths() -> bool {
        true
    }

    fn max_cube_count() -> (u32, u32, u32) {
        (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32)
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        shape.is_empty() || has_pitched_row_major_strides(shape, strides)
    }

    fn target_properties() -> TargetProperties {
        D::target_properties()
    }

    fn enumerate_devices(type_id: u16, _info: &()) -> Vec<DeviceId> {
        // Only devices opened in this process have ids (a plugin path is needed to find more).
        let _ = type_id;
        crate::device::opened_ids()
    }
}
