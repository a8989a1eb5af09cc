//! Loading a plugin and calling it: every unsafe call into the plugin library is here, each
//! wrapped so that a failing status becomes a [`PluginError`] naming the call.

use crate::error::PluginError;
use crate::ffi::{self, Context, DevPtr, Event, Function, Module, Status, Stream};
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};

/// The required entry points, resolved once at load.
struct Api {
    status_string: ffi::StatusStringFn,
    device_count: ffi::DeviceCountFn,
    device_properties: ffi::DevicePropertiesFn,
    context_create: ffi::ContextCreateFn,
    context_destroy: ffi::ContextDestroyFn,
    mem_info: ffi::MemInfoFn,
    malloc: ffi::MallocFn,
    free: ffi::FreeFn,
    host_alloc: Option<ffi::HostAllocFn>,
    host_free: Option<ffi::HostFreeFn>,
    memcpy_h2d: ffi::MemcpyH2DFn,
    memcpy_d2h: ffi::MemcpyD2HFn,
    memcpy_d2d: ffi::MemcpyD2DFn,
    memcpy_2d: Option<ffi::Memcpy2DFn>,
    stream_create: ffi::StreamCreateFn,
    stream_destroy: ffi::StreamFn,
    stream_synchronize: ffi::StreamFn,
    event_record: ffi::EventRecordFn,
    event_wait: ffi::EventWaitFn,
    event_synchronize: ffi::EventFn,
    event_destroy: ffi::EventFn,
    module_compile: ffi::ModuleCompileFn,
    module_unload: ffi::ModuleUnloadFn,
    string_free: ffi::StringFreeFn,
    get_function: ffi::GetFunctionFn,
    launch: ffi::LaunchFn,
}

/// A loaded plugin library. The function pointers in `api` stay valid as long as `_lib` is
/// loaded, which is as long as this value lives (the runtime keeps it for the whole process).
pub struct PluginLibrary {
    path: PathBuf,
    capabilities: u64,
    api: Api,
    _lib: libloading::Library,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("capabilities", &format_args!("{:#x}", self.capabilities))
            .finish()
    }
}

/// What a device reports about itself (`phi3v_device_properties`, decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub total_memory: u64,
    pub free_memory: u64,
    pub compute_units: u32,
    pub warp_size: u32,
    pub max_shared_memory_per_block: u32,
    pub max_threads_per_block: u32,
    pub max_block_dim: [u32; 3],
    pub max_grid_dim: [u32; 3],
    pub memory_alignment: u32,
    pub dialect: u32,
    pub arch_version: u32,
    pub arch_name: String,
    pub dtypes: u64,
}

fn symbol<T: Copy>(lib: &libloading::Library, path: &Path, name: &str) -> Result<T, PluginError> {
    let missing = || PluginError::MissingSymbol { path: path.to_owned(), symbol: name.to_owned() };
    let cname = CString::new(name).map_err(|_| missing())?;
    // SAFETY: `T` is the `extern "C"` function pointer type the header declares for `name`; the
    // pointer is only called while `lib` stays loaded (PluginLibrary owns both).
    unsafe { lib.get::<T>(cname.as_bytes_with_nul()).map(|s| *s).map_err(|_| missing()) }
}

fn optional<T: Copy>(lib: &libloading::Library, path: &Path, name: &str) -> Option<T> {
    symbol(lib, path, name).ok()
}

impl PluginLibrary {
    /// Loads `path`, checks its ABI version, then resolves every entry point.
    pub fn load(path: &Path) -> Result<Self, PluginError> {
        // SAFETY: loading a library runs its initialisers; that is the contract of a plugin.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
            PluginError::LibraryNotFound { path: path.to_owned(), reason: e.to_string() }
        })?;
        let abi_version: ffi::AbiVersionFn = symbol(&lib, path, "phi3v_plugin_abi_version")?;
        // SAFETY: a function of no arguments declared by the header.
        let found = unsafe { abi_version() };
        if found != ffi::ABI_VERSION {
            return Err(PluginError::AbiVersionMismatch {
                path: path.to_owned(),
                found,
                expected: ffi::ABI_VERSION,
            });
        }
        let capabilities_fn: ffi::CapabilitiesFn =
            symbol(&lib, path, "phi3v_plugin_capabilities")?;
        // SAFETY: as above.
        let mut capabilities = unsafe { capabilities_fn() };
        let api = Api {
            status_string: symbol(&lib, path, "phi3v_plugin_status_string")?,
            device_count: symbol(&lib, path, "phi3v_plugin_device_count")?,
            device_properties: symbol(&lib, path, "phi3v_plugin_device_properties")?,
            context_create: symbol(&lib, path, "phi3v_plugin_context_create")?,
            context_destroy: symbol(&lib, path, "phi3v_plugin_context_destroy")?,
            mem_info: symbol(&lib, path, "phi3v_plugin_mem_info")?,
            malloc: symbol(&lib, path, "phi3v_plugin_malloc")?,
            free: symbol(&lib, path, "phi3v_plugin_free")?,
            host_alloc: optional(&lib, path, "phi3v_plugin_host_alloc"),
            host_free: optional(&lib, path, "phi3v_plugin_host_free"),
            memcpy_h2d: symbol(&lib, path, "phi3v_plugin_memcpy_h2d_async")?,
            memcpy_d2h: symbol(&lib, path, "phi3v_plugin_memcpy_d2h_async")?,
            memcpy_d2d: symbol(&lib, path, "phi3v_plugin_memcpy_d2d_async")?,
            memcpy_2d: optional(&lib, path, "phi3v_plugin_memcpy_2d_async"),
            stream_create: symbol(&lib, path, "phi3v_plugin_stream_create")?,
            stream_destroy: symbol(&lib, path, "phi3v_plugin_stream_destroy")?,
            stream_synchronize: symbol(&lib, path, "phi3v_plugin_stream_synchronize")?,
            event_record: symbol(&lib, path, "phi3v_plugin_event_record")?,
            event_wait: symbol(&lib, path, "phi3v_plugin_event_wait")?,
            event_synchronize: symbol(&lib, path, "phi3v_plugin_event_synchronize")?,
            event_destroy: symbol(&lib, path, "phi3v_plugin_event_destroy")?,
            module_compile: symbol(&lib, path, "phi3v_plugin_module_compile")?,
            module_unload: symbol(&lib, path, "phi3v_plugin_module_unload")?,
            string_free: symbol(&lib, path, "phi3v_plugin_string_free")?,
            get_function: symbol(&lib, path, "phi3v_plugin_module_get_function")?,
            launch: symbol(&lib, path, "phi3v_plugin_launch")?,
        };
        // A capability whose optional symbols are missing is not a capability.
        if api.host_alloc.is_none() || api.host_free.is_none() {
            capabilities &= !ffi::CAP_PINNED_HOST;
        }
        if api.memcpy_2d.is_none() {
            capabilities &= !ffi::CAP_MEMCPY_2D;
        }
        Ok(Self { path: path.to_owned(), capabilities, api, _lib: lib })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PHI3V_CAP_*` bits, minus those whose optional symbols are missing.
    pub fn capabilities(&self) -> u64 {
        self.capabilities
    }

    pub fn has(&self, capability: u64) -> bool {
        self.capabilities & capability == capability
    }

    /// The plugin's description of `status`.
    pub fn status_string(&self, status: Status) -> String {
        // SAFETY: declared by the header; the result is null or a static NUL-terminated string.
        let ptr = unsafe { (self.api.status_string)(status) };
        if ptr.is_null() {
            return format!("status {status}");
        }
        // SAFETY: non-null, NUL-terminated per the header.
        unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
    }

    fn check(&self, call: &'static str, status: Status) -> Result<(), PluginError> {
        if status == ffi::SUCCESS {
            Ok(())
        } else {
            Err(PluginError::Driver {
                path: self.path.clone(),
                call,
                status,
                message: self.status_string(status),
            })
        }
    }

    pub fn device_count(&self) -> Result<usize, PluginError> {
        let mut count = 0i32;
        // SAFETY: `count` is a valid out-pointer.
        self.check("device_count", unsafe { (self.api.device_count)(&mut count) })?;
        Ok(count.max(0) as usize)
    }

    /// Properties of device `index`, checked against the device count first.
    pub fn device_info(&self, index: usize) -> Result<DeviceInfo, PluginError> {
        let count = self.device_count()?;
        if index >= count {
            return Err(PluginError::DeviceOutOfRange { path: self.path.clone(), index, count });
        }
        let mut p = ffi::DeviceProperties::empty();
        // SAFETY: `p` is a properly sized, writable properties struct whose size is declared.
        self.check("device_properties", unsafe {
            (self.api.device_properties)(index as i32, &mut p)
        })?;
        Ok(DeviceInfo {
            name: ffi::fixed_str(&p.name),
            total_memory: p.total_memory,
            free_memory: p.free_memory,
            compute_units: p.compute_units,
            warp_size: p.warp_size,
            max_shared_memory_per_block: p.max_shared_memory_per_block,
            max_threads_per_block: p.max_threads_per_block,
            max_block_dim: p.max_block_dim,
            max_grid_dim: p.max_grid_dim,
            memory_alignment: p.memory_alignment,
            dialect: p.dialect,
            arch_version: p.arch_version,
            arch_name: ffi::fixed_str(&p.arch_name),
            dtypes: p.dtypes,
        })
    }

    pub fn context_create(&self, index: usize) -> Result<Context, PluginError> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("context_create", unsafe { (self.api.context_create)(index as i32, &mut ctx) })?;
        Ok(ctx)
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn context_destroy(&self, ctx: Context) -> Result<(), PluginError> {
        // SAFETY: the caller's contract.
        self.check("context_destroy", unsafe { (self.api.context_destroy)(ctx) })
    }

    /// (free, total) bytes.
    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn mem_info(&self, ctx: Context) -> Result<(u64, u64), PluginError> {
        let (mut free, mut total) = (0u64, 0u64);
        // SAFETY: valid out-pointers.
        self.check("mem_info", unsafe { (self.api.mem_info)(ctx, &mut free, &mut total) })?;
        Ok((free, total))
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn malloc(&self, ctx: Context, bytes: u64, stream: Stream) -> Result<DevPtr, PluginError> {
        let mut ptr = 0;
        // SAFETY: valid out-pointer; handles from this plugin.
        self.check("malloc", unsafe { (self.api.malloc)(ctx, bytes, stream, &mut ptr) })?;
        Ok(ptr)
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn free(&self, ctx: Context, ptr: DevPtr, stream: Stream) -> Result<(), PluginError> {
        // SAFETY: `ptr` came from malloc and is freed once.
        self.check("free", unsafe { (self.api.free)(ctx, ptr, stream) })
    }

    /// Page-locked host memory, or `None` if the plugin has no such capability or it failed.
    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn host_alloc(&self, ctx: Context, bytes: u64) -> Option<*mut c_void> {
        let f = self.api.host_alloc?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let status = unsafe { f(ctx, bytes, &mut ptr) };
        (status == ffi::SUCCESS && !ptr.is_null()).then_some(ptr)
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn host_free(&self, ctx: Context, ptr: *mut c_void) -> Result<(), PluginError> {
        match self.api.host_free {
            // SAFETY: `ptr` came from host_alloc and is freed once.
            Some(f) => self.check("host_free", unsafe { f(ctx, ptr) }),
            None => Ok(()),
        }
    }

    /// # Safety
    /// `src` is readable for `bytes` until the stream passes this point; `dst` is a device
    /// allocation of at least `bytes`.
    pub unsafe fn memcpy_h2d(
        &self,
        ctx: Context,
        dst: DevPtr,
        src: *const c_void,
        bytes: u64,
        stream: Stream,
    ) -> Result<(), PluginError> {
        // SAFETY: the caller's contract.
        self.check("memcpy_h2d_async", unsafe { (self.api.memcpy_h2d)(ctx, dst, src, bytes, stream) })
    }

    /// # Safety
    /// `dst` is writable for `bytes` until the stream passes this point.
    pub unsafe fn memcpy_d2h(
        &self,
        ctx: Context,
        dst: *mut c_void,
        src: DevPtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<(), PluginError> {
        // SAFETY: the caller's contract.
        self.check("memcpy_d2h_async", unsafe { (self.api.memcpy_d2h)(ctx, dst, src, bytes, stream) })
    }

    /// # Safety
    /// Both are device allocations of at least `bytes`.
    pub unsafe fn memcpy_d2d(
        &self,
        ctx: Context,
        dst: DevPtr,
        src: DevPtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<(), PluginError> {
        // SAFETY: the caller's contract.
        self.check("memcpy_d2d_async", unsafe { (self.api.memcpy_d2d)(ctx, dst, src, bytes, stream) })
    }

    /// Pitched copy of `height` rows of `width` bytes; one call if the plugin has
    /// `memcpy_2d_async`, else one 1-D copy per row (or a single one if both sides are dense).
    ///
    /// # Safety
    /// The host side is valid for `(height - 1) * pitch + width` bytes until the stream passes
    /// this point; the device side is an allocation of at least that size.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn memcpy_2d(
        &self,
        ctx: Context,
        kind: u32,
        dst: u64,
        dst_pitch: u64,
        src: u64,
        src_pitch: u64,
        width: u64,
        height: u64,
        stream: Stream,
    ) -> Result<(), PluginError> {
        if height == 0 || width == 0 {
            return Ok(());
        }
        let dense = dst_pitch == width && src_pitch == width;
        if let (Some(f), false) = (self.api.memcpy_2d, dense) {
            // SAFETY: the caller's contract.
            let status =
                unsafe { f(ctx, kind, dst, dst_pitch, src, src_pitch, width, height, stream) };
            return self.check("memcpy_2d_async", status);
        }
        let (rows, row_bytes) = if dense { (1, width * height) } else { (height, width) };
        for row in 0..rows {
            let (d, s) = (dst + row * dst_pitch, src + row * src_pitch);
            // SAFETY: each row lies inside the ranges of the caller's contract.
            unsafe {
                match kind {
                    ffi::COPY_H2D => self.memcpy_h2d(ctx, d, s as *const c_void, row_bytes, stream)?,
                    _ => self.memcpy_d2h(ctx, d as *mut c_void, s, row_bytes, stream)?,
                }
            }
        }
        Ok(())
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn stream_create(&self, ctx: Context) -> Result<Stream, PluginError> {
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("stream_create", unsafe { (self.api.stream_create)(ctx, &mut stream) })?;
        Ok(stream)
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn stream_destroy(&self, ctx: Context, stream: Stream) -> Result<(), PluginError> {
        // SAFETY: `stream` came from stream_create.
        self.check("stream_destroy", unsafe { (self.api.stream_destroy)(ctx, stream) })
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn stream_synchronize(&self, ctx: Context, stream: Stream) -> Result<(), PluginError> {
        // SAFETY: `stream` came from stream_create.
        self.check("stream_synchronize", unsafe { (self.api.stream_synchronize)(ctx, stream) })
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn event_record(&self, ctx: Context, stream: Stream) -> Result<Event, PluginError> {
        let mut event = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("event_record", unsafe { (self.api.event_record)(ctx, stream, &mut event) })?;
        Ok(event)
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn event_wait(&self, ctx: Context, stream: Stream, event: Event) -> Result<(), PluginError> {
        // SAFETY: handles from this plugin.
        self.check("event_wait", unsafe { (self.api.event_wait)(ctx, stream, event) })
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn event_synchronize(&self, ctx: Context, event: Event) -> Result<(), PluginError> {
        // SAFETY: handle from event_record.
        self.check("event_synchronize", unsafe { (self.api.event_synchronize)(ctx, event) })
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn event_destroy(&self, ctx: Context, event: Event) -> Result<(), PluginError> {
        // SAFETY: handle from event_record, destroyed once.
        self.check("event_destroy", unsafe { (self.api.event_destroy)(ctx, event) })
    }

    /// Compiles `source` and loads it; a compile failure carries the plugin's log.
    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn module_compile(
        &self,
        ctx: Context,
        dialect: u32,
        source: &str,
        name: &str,
        options: &[String],
    ) -> Result<Module, PluginError> {
        let invalid = |what: &str| PluginError::Compile {
            path: self.path.clone(),
            kernel: name.to_owned(),
            log: format!("{what} contains a NUL byte"),
        };
        let c_source = CString::new(source).map_err(|_| invalid("the kernel source"))?;
        let c_name = CString::new(name).map_err(|_| invalid("the kernel name"))?;
        let c_options = options
            .iter()
            .map(|o| CString::new(o.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid("a compiler option"))?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
        let mut module = std::ptr::null_mut();
        let mut log: *mut c_char = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call; `log` is an out-pointer.
        let status = unsafe {
            (self.api.module_compile)(
                ctx,
                dialect,
                c_source.as_ptr(),
                c_name.as_ptr(),
                option_ptrs.as_ptr(),
                option_ptrs.len() as u32,
                &mut module,
                &mut log,
            )
        };
        let log_text = if log.is_null() {
            None
        } else {
            // SAFETY: non-null, NUL-terminated, owned by us until string_free.
            let text = unsafe { CStr::from_ptr(log) }.to_string_lossy().into_owned();
            // SAFETY: released once, with the plugin's own deallocator.
            unsafe { (self.api.string_free)(log) };
            Some(text)
        };
        match status {
            ffi::SUCCESS => Ok(module),
            ffi::ERROR_COMPILE => Err(PluginError::Compile {
                path: self.path.clone(),
                kernel: name.to_owned(),
                log: log_text.unwrap_or_else(|| "(the plugin returned no log)".into()),
            }),
            other => self.check("module_compile", other).map(|_| module),
        }
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn module_unload(&self, ctx: Context, module: Module) -> Result<(), PluginError> {
        // SAFETY: handle from module_compile, unloaded once.
        self.check("module_unload", unsafe { (self.api.module_unload)(ctx, module) })
    }

    /// # Safety
    /// Every handle argument came from this library (for this context) and is still live.
    pub unsafe fn get_function(
        &self,
        ctx: Context,
        module: Module,
        name: &str,
    ) -> Result<Function, PluginError> {
        let c_name = CString::new(name).map_err(|_| PluginError::Driver {
            path: self.path.clone(),
            call: "module_get_function",
            status: ffi::ERROR_INVALID_VALUE,
            message: format!("function name {name:?} contains a NUL byte"),
        })?;
        let mut function = std::ptr::null_mut();
        // SAFETY: valid pointers for the duration of the call.
        self.check("module_get_function", unsafe {
            (self.api.get_function)(ctx, module, c_name.as_ptr(), &mut function)
        })?;
        Ok(function)
    }

    /// # Safety
    /// `args` match the kernel's parameters (each a pointer to the parameter's value) and every
    /// device pointer among them stays allocated until the stream passes this launch.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch(
        &self,
        ctx: Context,
        function: Function,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem_bytes: u32,
        stream: Stream,
        args: &mut [*mut c_void],
    ) -> Result<(), PluginError> {
        // SAFETY: the caller's contract; grid and block are 3-element arrays.
        self.check("launch", unsafe {
            (self.api.launch)(
                ctx,
                function,
                grid.as_ptr(),
                block.as_ptr(),
                shared_mem_bytes,
                stream,
                args.as_mut_ptr(),
                args.len() as u32,
            )
        })
    }
}
