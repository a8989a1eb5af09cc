use super::Driver;
use super::storage::GpuResource;
use super::stream::Stream;
use crate::error::PluginError;
use crate::ffi;
use crate::runtime::PluginDialect;
use cubecl_common::backtrace::BackTrace;
use cubecl_core::server::ResourceLimitError;
use cubecl_core::{ir::DeviceProperties, prelude::*};
use cubecl_cpp::formatter::format_cpp;
use cubecl_cpp::shared::{CompilationOptions, CppCompiler};
use cubecl_runtime::compiler::{CompilationError, CubeTask};
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::timestamp_profiler::TimestampProfiler;
use cubecl_runtime::validation::{validate_cube_dim, validate_units};
use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the source of a kernel that failed to compile is saved, for the vendor to reproduce
/// the failure: `$PHI3V_PLUGIN_KERNEL_DIR`, else `<temp dir>/phi3v-plugin-kernels`.
pub const KERNEL_DIR_ENV: &str = "PHI3V_PLUGIN_KERNEL_DIR";

/// The compiled kernels of one device, and what compiling needs.
pub(crate) struct PluginContext<D: PluginDialect> {
    pub driver: Driver,
    pub kernels: HashMap<KernelId, CompiledKernel>,
    pub timestamps: TimestampProfiler,
    pub compilation_options: CompilationOptions,
    pub properties: DeviceProperties,
    _dialect: PhantomData<D>,
}

impl<D: PluginDialect> std::fmt::Debug for PluginContext<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginContext")
            .field("driver", &self.driver)
            .field("kernels", &self.kernels.len())
            .finish()
    }
}

pub(crate) struct CompiledKernel {
    _module: ffi::Module,
    function: ffi::Function,
    cube_dim: CubeDim,
    shared_mem_bytes: usize,
}

impl<D: PluginDialect> PluginContext<D> {
    pub fn new(
        driver: Driver,
        compilation_options: CompilationOptions,
        properties: DeviceProperties,
    ) -> Self {
        Self {
            driver,
            kernels: HashMap::new(),
            timestamps: TimestampProfiler::default(),
            compilation_options,
            properties,
            _dialect: PhantomData,
        }
    }

    /// Generates the kernel's C++ source and has the plugin compile and load it.
    pub fn compile_kernel(
        &mut self,
        kernel_id: &KernelId,
        kernel: Box<dyn CubeTask<CppCompiler<D::Dialect>>>,
        mode: ExecutionMode,
        logger: Arc<ServerLogger>,
    ) -> Result<(), LaunchError> {
        validate_cube_dim(&self.properties, kernel_id)?;
        validate_units(&self.properties, kernel_id)?;

        let mut compiled = kernel.compile(
            &mut Default::default(),
            &self.compilation_options,
            mode,
            kernel.address_type(),
        )?;
        let shared_mem_bytes =
            compiled.repr.as_ref().map(|repr| repr.shared_memory_size()).unwrap_or(0);
        let max = self.properties.hardware.max_shared_memory_size;
        if shared_mem_bytes > max {
            return Err(ResourceLimitError::SharedMemory {
                requested: shared_mem_bytes,
                max,
                backtrace: BackTrace::capture(),
            }
            .into());
        }
        if logger.compilation_activated() {
            compiled.debug_info = Some(DebugInformation::new("cpp", kernel_id.clone()));
            if let Ok(formatted) = format_cpp(&compiled.source) {
                compiled.source = formatted;
            }
        }
        logger.log_compilation(&compiled);

        let Driver { lib, ctx } = self.driver;
        let name = compiled.entrypoint_name.clone();
        let options = D::compile_options();
        // SAFETY: the device's live context.
        let module = unsafe { lib.module_compile(ctx, D::DIALECT, &compiled.source, &name, &options) }
            .map_err(|err| {
                let saved = save_source(&name, &compiled.source);
                let reason = match saved {
                    Some(path) => format!("{err}\n(kernel source saved to {})", path.display()),
                    None => format!("{err}\n[Source]\n{}", compiled.source),
                };
                CompilationError::Generic { reason, backtrace: BackTrace::capture() }
            })?;
        // SAFETY: the module was just loaded in this context.
        let function = unsafe { lib.get_function(ctx, module, &name) }.map_err(|err| {
            CompilationError::Generic { reason: err.to_string(), backtrace: BackTrace::capture() }
        })?;
        self.kernels.insert(
            kernel_id.clone(),
            CompiledKernel {
                _module: module,
                function,
                cube_dim: compiled.cube_dim,
                shared_mem_bytes,
            },
        );
        Ok(())
    }

    /// Launches a compiled kernel with its parameters in the order cubecl-cpp declares them:
    /// the buffers (the info buffer last among them), then the info struct when it is passed
    /// by value as a grid constant.
    pub fn execute_task(
        &mut self,
        stream: &mut Stream,
        kernel_id: &KernelId,
        dispatch_count: (u32, u32, u32),
        resources: &[GpuResource],
        const_info: Option<*mut c_void>,
    ) -> Result<(), LaunchError> {
        let kernel = self.kernels.get(kernel_id).ok_or_else(|| LaunchError::Unknown {
            reason: format!("kernel {kernel_id:?} launched before it was compiled"),
            backtrace: BackTrace::capture(),
        })?;
        let mut args: Vec<*mut c_void> = resources.iter().map(|r| r.binding).collect();
        args.extend(const_info);
        let Driver { lib, ctx } = self.driver;
        let block = [kernel.cube_dim.x, kernel.cube_dim.y, kernel.cube_dim.z];
        let grid = [dispatch_count.0, dispatch_count.1, dispatch_count.2];
        // SAFETY: `args` holds one pointer per kernel parameter in declaration order, each to a
        // slot of the storage ring (device addresses of live allocations) or to the info struct,
        // all valid for the duration of the call, which copies them.
        unsafe {
            lib.launch(
                ctx,
                kernel.function,
                grid,
                block,
                kernel.shared_mem_bytes as u32,
                stream.sys,
                &mut args,
            )
        }
        .map_err(|err| match err {
            PluginError::Driver { status: ffi::ERROR_OUT_OF_MEMORY, .. } => {
                LaunchError::OutOfMemory { reason: err.to_string(), backtrace: BackTrace::capture() }
            }
            err => LaunchError::Unknown {
                reason: format!("{kernel_id:?}: {err}"),
                backtrace: BackTrace::capture(),
            },
        })
    }
}

fn save_source(name: &str, source: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(KERNEL_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("phi3v-plugin-kernels"));
    std::fs::create_dir_all(&dir).ok()?;
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(source, &mut hasher);
    let path = dir.join(format!("{safe}-{:016x}.cpp", std::hash::Hasher::finish(&hasher)));
    std::fs::write(&path, source).ok()?;
    Some(path)
}
