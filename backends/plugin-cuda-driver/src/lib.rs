//! `phi3v_device_plugin.h` implemented over the NVIDIA driver API and NVRTC, both loaded at run
//! time by cudarc (this builds without CUDA installed), for plugins on CUDA-compatible stacks.
//!
//! A plugin crate is a `cdylib` calling [`export_plugin!`] with a [`Profile`] (what to load
//! first, capability and dtype masks, allocation and compiler choices): `backends/plugin-cuda`
//! exports [`NVIDIA`], `backends/iluvatar` its CoreX profile. This crate exports nothing
//! itself, so several plugins can use it in one build without duplicate symbols.

// The exported functions' (and their bodies') safety contract is the header's, function by
// function: handles from this plugin, pointers valid as `phi3v_device_plugin.h` describes.
#![allow(clippy::missing_safety_doc)]

use cudarc::driver::sys as cu;
use cudarc::nvrtc::sys as nvrtc;
use phi3v_backend_plugin::ffi;
use std::collections::HashSet;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Mutex;

/// What differs between CUDA-compatible stacks using this implementation.
pub struct Profile {
    /// Shown in error strings.
    pub name: &'static str,
    /// Run once before the first driver call: e.g. load a vendor's `libcuda.so` by full path
    /// so that cudarc's later load by name finds it. An error becomes `PHI3V_ERROR_NO_DEVICE`,
    /// whose status string is then this message.
    pub prepare: fn() -> Result<(), String>,
    /// ANDed with the capabilities the driver would give (a stack lacking a feature clears it).
    pub capabilities_mask: u64,
    /// ANDed with the dtypes reported (`PHI3V_DTYPE_*`).
    pub dtypes_mask: u64,
    /// Whether to try stream-ordered allocation (`cuMemAllocAsync`) before `cuMemAlloc`.
    pub async_alloc: bool,
    /// Whether to pass NVRTC `--gpu-architecture=sm_XY` from the compute capability.
    pub arch_option: bool,
    /// Extra compiler options (include paths of the stack's headers, ...).
    pub compile_options: fn() -> Vec<String>,
}

/// NVIDIA: everything on, CUDA's include directory from `CUDA_PATH` or the usual places.
pub const NVIDIA: Profile = Profile {
    name: "phi3v-plugin-cuda",
    prepare: || Ok(()),
    capabilities_mask: u64::MAX,
    dtypes_mask: u64::MAX,
    async_alloc: true,
    arch_option: true,
    compile_options: cuda_include_options,
};

/// `--include-path` options for a CUDA toolkit's headers (and CCCL's), when one is installed:
/// `$CUDA_PATH`, `/usr/local/cuda`, `/opt/cuda`.
pub fn cuda_include_options() -> Vec<String> {
    let root = std::env::var_os("CUDA_PATH")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/local/cuda", "/opt/cuda"].map(PathBuf::from))
        .find(|p| p.join("include").is_dir());
    let Some(root) = root else { return Vec::new() };
    let include = root.join("include");
    let mut options = vec![format!("--include-path={}", include.display())];
    if include.join("cccl").is_dir() {
        options.push(format!("--include-path={}", include.join("cccl").display()));
    }
    options
}

/// A context handle given to the runtime: the device's primary context.
struct Ctx {
    ctx: cu::CUcontext,
    arch: u32,
    /// Pointers allocated with `cuMemAlloc` (freed with `cuMemFree`, not stream-ordered).
    sync_allocations: Mutex<HashSet<u64>>,
}

/// Runs `f`, turning a panic (a driver symbol cudarc could not find, a bug) into a status:
/// unwinding out of an `extern "C"` function would abort the host process.
pub fn guard(f: impl FnOnce() -> ffi::Status) -> ffi::Status {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(ffi::ERROR_INTERNAL)
}

/// Driver errors seen so far, by the status they were returned as, so that `status_string`
/// can describe them without turning an arbitrary integer back into a `CUresult`.
static SEEN: Mutex<Vec<cu::CUresult>> = Mutex::new(Vec::new());

fn check(r: cu::CUresult) -> Result<(), ffi::Status> {
    match r {
        cu::CUresult::CUDA_SUCCESS => Ok(()),
        cu::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(ffi::ERROR_OUT_OF_MEMORY),
        other => {
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.contains(&other) {
                seen.push(other);
            }
            Err(other as i32)
        }
    }
}

fn status(r: Result<(), ffi::Status>) -> ffi::Status {
    r.err().unwrap_or(ffi::SUCCESS)
}

/// Why the driver could not be initialised, for `status_string(PHI3V_ERROR_NO_DEVICE)`.
static INIT_ERROR: std::sync::OnceLock<CString> = std::sync::OnceLock::new();

/// Loads and initialises the driver once; `PHI3V_ERROR_NO_DEVICE` without one (the reason is
/// kept for `status_string`).
fn init(profile: &Profile) -> Result<(), ffi::Status> {
    static INIT: Mutex<Option<Result<(), ffi::Status>>> = Mutex::new(None);
    let mut state = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = *state {
        return done;
    }
    let result = (|| {
        (profile.prepare)()?;
        // SAFETY: probing for the library by name has no other effect.
        if !unsafe { cu::is_culib_present() } {
            return Err("the CUDA driver library (libcuda) could not be loaded".to_string());
        }
        // SAFETY: cuInit takes flags 0.
        check(unsafe { cu::cuInit(0) }).map_err(|s| format!("cuInit failed with status {s}"))
    })();
    let result = result.map_err(|reason| {
        let text = format!("{}: no device: {reason}", profile.name);
        let _ = INIT_ERROR.set(CString::new(text.replace('\0', " ")).unwrap_or_default());
        ffi::ERROR_NO_DEVICE
    });
    *state = Some(result);
    result
}

/// Makes `ctx` current on this thread and returns it.
///
/// # Safety
/// `ctx` is a handle returned by `context_create` and not yet destroyed.
unsafe fn enter<'a>(ctx: ffi::Context) -> Result<&'a Ctx, ffi::Status> {
    if ctx.is_null() {
        return Err(ffi::ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller's contract: a live `Box<Ctx>` leaked by context_create.
    let c = unsafe { &*(ctx as *const Ctx) };
    // SAFETY: a retained primary context.
    check(unsafe { cu::cuCtxSetCurrent(c.ctx) })?;
    Ok(c)
}

fn attribute(device: cu::CUdevice, attr: cu::CUdevice_attribute) -> Result<u32, ffi::Status> {
    let mut value = 0i32;
    // SAFETY: valid out-pointer and device.
    check(unsafe { cu::cuDeviceGetAttribute(&mut value, attr, device) })?;
    Ok(value.max(0) as u32)
}

fn device(profile: &Profile, index: i32) -> Result<cu::CUdevice, ffi::Status> {
    init(profile)?;
    let mut count = 0;
    // SAFETY: valid out-pointer.
    check(unsafe { cu::cuDeviceGetCount(&mut count) })?;
    if index < 0 || index >= count {
        return Err(ffi::ERROR_NO_DEVICE);
    }
    let mut dev = 0;
    // SAFETY: index checked against the count.
    check(unsafe { cu::cuDeviceGet(&mut dev, index) })?;
    Ok(dev)
}

/// The implementation behind every exported symbol, for a given profile. The functions take the
/// header's arguments; `export_plugin!` forwards to them.
#[doc(hidden)]
/// # Safety
/// Each function has the contract of the header's function of the same name: handles from
/// this plugin, pointers valid as the header describes.
pub mod imp {
    use super::*;
    use cu::CUdevice_attribute as A;

    pub fn capabilities(profile: &Profile) -> u64 {
        let all = ffi::CAP_PINNED_HOST
            | ffi::CAP_MEMCPY_2D
            | ffi::CAP_GRID_CONSTANTS
            | ffi::CAP_MMA
            | ffi::CAP_ATOMIC_F16
            | ffi::CAP_ATOMIC_F64;
        all & profile.capabilities_mask
    }

    pub fn status_string(profile: &Profile, status: ffi::Status) -> *const c_char {
        let text: &'static CStr = match status {
            ffi::SUCCESS => c"success",
            ffi::ERROR_INVALID_VALUE => c"invalid value (null pointer or handle)",
            ffi::ERROR_OUT_OF_MEMORY => c"out of memory",
            ffi::ERROR_NO_DEVICE => match INIT_ERROR.get() {
                Some(reason) => reason.as_c_str(),
                None => c"no such device",
            },
            ffi::ERROR_COMPILE => c"kernel compilation failed (NVRTC), see the log",
            ffi::ERROR_NOT_FOUND => c"function not found in the module",
            ffi::ERROR_LAUNCH => c"kernel launch failed",
            ffi::ERROR_NOT_SUPPORTED => c"not supported by this plugin",
            ffi::ERROR_DRIVER => c"driver error",
            ffi::ERROR_INTERNAL => c"internal error in the plugin (a driver symbol missing from the loaded library?)",
            code if code > 0 => {
                let mut ptr: *const c_char = std::ptr::null();
                let result = SEEN
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .copied()
                    .find(|r| *r as i32 == code);
                let known = init(profile).is_ok()
                    && result.is_some_and(|result| {
                        catch_unwind(AssertUnwindSafe(|| {
                            // SAFETY: cuGetErrorString writes a pointer to a static string.
                            unsafe { cu::cuGetErrorString(result, &mut ptr) }
                        }))
                        .is_ok_and(|r| r == cu::CUresult::CUDA_SUCCESS)
                    });
                if known && !ptr.is_null() {
                    return ptr;
                }
                c"CUDA driver error (unknown code)"
            }
            _ => c"unknown status",
        };
        text.as_ptr()
    }

    pub unsafe fn device_count(profile: &Profile, count: *mut i32) -> ffi::Status {
        if count.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        // Without a driver this is an error whose string says why (a missing SDK is worth
        // reporting, not just "0 devices").
        if let Err(s) = init(profile) {
            return s;
        }
        let mut n = 0;
        // SAFETY: valid out-pointer.
        let r = check(unsafe { cu::cuDeviceGetCount(&mut n) });
        if r.is_ok() {
            // SAFETY: checked non-null.
            unsafe { *count = n };
        }
        status(r)
    }

    pub unsafe fn device_properties(
        profile: &Profile,
        index: i32,
        out: *mut ffi::DeviceProperties,
    ) -> ffi::Status {
        if out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            let dev = device(profile, index)?;
            let mut p = ffi::DeviceProperties::empty();
            let mut name = [0 as c_char; 256];
            // SAFETY: a 256-byte buffer.
            check(unsafe { cu::cuDeviceGetName(name.as_mut_ptr(), 255, dev) })?;
            p.name = name;
            let mut total = 0usize;
            // SAFETY: valid out-pointer.
            check(unsafe { cu::cuDeviceTotalMem_v2(&mut total, dev) })?;
            p.total_memory = total as u64;
            p.free_memory = free_memory(dev).unwrap_or(total as u64);
            let major = attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            p.arch_version = major * 10 + minor;
            ffi::write_fixed_str(&mut p.arch_name, &format!("sm_{}", p.arch_version));
            p.compute_units = attribute(dev, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            p.warp_size = attribute(dev, A::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?;
            p.max_shared_memory_per_block =
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                    .or_else(|_| attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK))?;
            p.max_threads_per_block = attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?;
            p.max_block_dim = [
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?,
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y)?,
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)?,
            ];
            p.max_grid_dim = [
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?,
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?,
                attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?,
            ];
            // cuMemAllocPitch's row alignment, the value cubecl-cuda uses.
            p.memory_alignment = 512;
            p.dialect = ffi::DIALECT_CUDA;
            let all_dtypes = (1u64 << 12) - 1;
            p.dtypes = all_dtypes & profile.dtypes_mask;
            // SAFETY: non-null; copy only the part of the struct the caller declared.
            unsafe {
                let declared = ((*out).struct_size as usize).min(size_of::<ffi::DeviceProperties>());
                std::ptr::copy_nonoverlapping(
                    (&p as *const ffi::DeviceProperties).cast::<u8>().add(4),
                    out.cast::<u8>().add(4),
                    declared.saturating_sub(4),
                );
            }
            Ok(())
        })())
    }

    /// Free memory needs a context: the primary one, retained for the query only.
    fn free_memory(dev: cu::CUdevice) -> Result<u64, ffi::Status> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointer and device.
        check(unsafe { cu::cuDevicePrimaryCtxRetain(&mut ctx, dev) })?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a retained context; valid out-pointers; released once.
        let r = unsafe {
            check(cu::cuCtxSetCurrent(ctx)).and_then(|_| check(cu::cuMemGetInfo_v2(&mut free, &mut total)))
        };
        // SAFETY: balances the retain above.
        unsafe { cu::cuDevicePrimaryCtxRelease_v2(dev) };
        r.map(|_| free as u64)
    }

    pub unsafe fn context_create(profile: &Profile, index: i32, out: *mut ffi::Context) -> ffi::Status {
        if out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            let dev = device(profile, index)?;
            let mut ctx = std::ptr::null_mut();
            // SAFETY: valid out-pointer and device.
            check(unsafe { cu::cuDevicePrimaryCtxRetain(&mut ctx, dev) })?;
            let major = attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let boxed = Box::new(Ctx { ctx, arch: major * 10 + minor, sync_allocations: Mutex::default() });
            // SAFETY: checked non-null.
            unsafe { *out = Box::into_raw(boxed) as ffi::Context };
            Ok(())
        })())
    }

    pub unsafe fn context_destroy(ctx: ffi::Context) -> ffi::Status {
        if ctx.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        // SAFETY: created by context_create, destroyed once (the header's contract).
        let c = unsafe { Box::from_raw(ctx as *mut Ctx) };
        let mut dev = 0;
        // SAFETY: a retained context; the device it belongs to is released once.
        status(unsafe { check(cu::cuCtxSetCurrent(c.ctx)).and_then(|_| check(cu::cuCtxGetDevice(&mut dev))).and_then(|_| check(cu::cuDevicePrimaryCtxRelease_v2(dev))) })
    }

    pub unsafe fn mem_info(ctx: ffi::Context, free: *mut u64, total: *mut u64) -> ffi::Status {
        if free.is_null() || total.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let (mut f, mut t) = (0usize, 0usize);
            // SAFETY: valid out-pointers.
            check(unsafe { cu::cuMemGetInfo_v2(&mut f, &mut t) })?;
            // SAFETY: checked non-null.
            unsafe {
                *free = f as u64;
                *total = t as u64;
            }
            Ok(())
        })())
    }

    pub unsafe fn malloc(profile: &Profile, ctx: ffi::Context, bytes: u64, stream: ffi::Stream, out: *mut u64) -> ffi::Status {
        if out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            let c = unsafe { enter(ctx) }?;
            let mut ptr = 0;
            let async_ok = profile.async_alloc
                && catch_unwind(AssertUnwindSafe(|| {
                    // SAFETY: valid out-pointer; a stream of this context.
                    unsafe { cu::cuMemAllocAsync(&mut ptr, bytes as usize, stream as cu::CUstream) }
                }))
                .is_ok_and(|r| r == cu::CUresult::CUDA_SUCCESS);
            if !async_ok {
                // SAFETY: valid out-pointer.
                check(unsafe { cu::cuMemAlloc_v2(&mut ptr, bytes as usize) })?;
                c.sync_allocations.lock().unwrap_or_else(|e| e.into_inner()).insert(ptr);
            }
            // SAFETY: checked non-null.
            unsafe { *out = ptr };
            Ok(())
        })())
    }

    pub unsafe fn free(ctx: ffi::Context, ptr: u64, stream: ffi::Stream) -> ffi::Status {
        status((|| {
            // SAFETY: a handle from context_create.
            let c = unsafe { enter(ctx) }?;
            let was_sync = c.sync_allocations.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr);
            // SAFETY: `ptr` came from malloc with the matching allocator.
            check(unsafe {
                if was_sync {
                    cu::cuMemFree_v2(ptr)
                } else {
                    cu::cuMemFreeAsync(ptr, stream as cu::CUstream)
                }
            })
        })())
    }

    pub unsafe fn host_alloc(ctx: ffi::Context, bytes: u64, out: *mut *mut c_void) -> ffi::Status {
        if out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let mut ptr = std::ptr::null_mut();
            // SAFETY: valid out-pointer.
            check(unsafe { cu::cuMemAllocHost_v2(&mut ptr, bytes as usize) })?;
            // SAFETY: checked non-null.
            unsafe { *out = ptr };
            Ok(())
        })())
    }

    pub unsafe fn host_free(ctx: ffi::Context, ptr: *mut c_void) -> ffi::Status {
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            // SAFETY: `ptr` came from host_alloc.
            check(unsafe { cu::cuMemFreeHost(ptr) })
        })())
    }

    /// # Safety
    /// The header's contract for the copy functions.
    pub unsafe fn memcpy(ctx: ffi::Context, kind: u32, dst: u64, src: u64, bytes: u64, stream: ffi::Stream) -> ffi::Status {
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let s = stream as cu::CUstream;
            let n = bytes as usize;
            // SAFETY: the caller's contract (valid ranges, alive until the stream passes).
            check(unsafe {
                match kind {
                    ffi::COPY_H2D => cu::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, n, s),
                    ffi::COPY_D2H => cu::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, n, s),
                    _ => cu::cuMemcpyDtoDAsync_v2(dst, src, n, s),
                }
            })
        })())
    }

    /// # Safety
    /// The header's contract for `phi3v_plugin_memcpy_2d_async`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn memcpy_2d(
        ctx: ffi::Context,
        kind: u32,
        dst: u64,
        dst_pitch: u64,
        src: u64,
        src_pitch: u64,
        width: u64,
        height: u64,
        stream: ffi::Stream,
    ) -> ffi::Status {
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            // Every field written: the memory types are Rust enums without a zero variant, so
            // the descriptor cannot be zero-initialised (that aborted the process).
            use cu::CUmemorytype::{CU_MEMORYTYPE_DEVICE as DEVICE, CU_MEMORYTYPE_HOST as HOST};
            let m = match kind {
                ffi::COPY_H2D => copy_2d_descriptor(HOST, src as *const c_void, 0, src_pitch, DEVICE, std::ptr::null_mut(), dst, dst_pitch, width, height),
                ffi::COPY_D2H => copy_2d_descriptor(DEVICE, std::ptr::null(), src, src_pitch, HOST, dst as *mut c_void, 0, dst_pitch, width, height),
                _ => return Err(ffi::ERROR_NOT_SUPPORTED),
            };
            // SAFETY: the caller's contract.
            check(unsafe { cu::cuMemcpy2DAsync_v2(&m, stream as cu::CUstream) })
        })())
    }

    pub unsafe fn stream_create(ctx: ffi::Context, out: *mut ffi::Stream) -> ffi::Status {
        if out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let mut s = std::ptr::null_mut();
            let flags = cu::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
            // SAFETY: valid out-pointer.
            check(unsafe { cu::cuStreamCreate(&mut s, flags) })?;
            // SAFETY: checked non-null.
            unsafe { *out = s as ffi::Stream };
            Ok(())
        })())
    }

    pub unsafe fn stream_destroy(ctx: ffi::Context, stream: ffi::Stream) -> ffi::Status {
        status((|| {
            // SAFETY: a handle from context_create; the stream is destroyed once.
            unsafe { enter(ctx) }?;
            check(unsafe { cu::cuStreamDestroy_v2(stream as cu::CUstream) })
        })())
    }

    pub unsafe fn stream_synchronize(ctx: ffi::Context, stream: ffi::Stream) -> ffi::Status {
        status((|| {
            // SAFETY: handles from this plugin.
            unsafe { enter(ctx) }?;
            check(unsafe { cu::cuStreamSynchronize(stream as cu::CUstream) })
        })())
    }

    pub unsafe fn event_record(ctx: ffi::Context, stream: ffi::Stream, out: *mut ffi::Event) -> ffi::Status {
        if out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let mut e = std::ptr::null_mut();
            let flags = cu::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
            // SAFETY: valid out-pointer; a stream of this context.
            unsafe {
                check(cu::cuEventCreate(&mut e, flags))?;
                if let Err(err) = check(cu::cuEventRecord(e, stream as cu::CUstream)) {
                    cu::cuEventDestroy_v2(e);
                    return Err(err);
                }
                *out = e as ffi::Event;
            }
            Ok(())
        })())
    }

    pub unsafe fn event_wait(ctx: ffi::Context, stream: ffi::Stream, event: ffi::Event) -> ffi::Status {
        status((|| {
            // SAFETY: handles from this plugin.
            unsafe { enter(ctx) }?;
            check(unsafe { cu::cuStreamWaitEvent(stream as cu::CUstream, event as cu::CUevent, 0) })
        })())
    }

    pub unsafe fn event_synchronize(ctx: ffi::Context, event: ffi::Event) -> ffi::Status {
        status((|| {
            // SAFETY: handles from this plugin.
            unsafe { enter(ctx) }?;
            check(unsafe { cu::cuEventSynchronize(event as cu::CUevent) })
        })())
    }

    pub unsafe fn event_destroy(ctx: ffi::Context, event: ffi::Event) -> ffi::Status {
        status((|| {
            // SAFETY: handles from this plugin; destroyed once.
            unsafe { enter(ctx) }?;
            check(unsafe { cu::cuEventDestroy_v2(event as cu::CUevent) })
        })())
    }

    /// Hands a message to the caller as a string it frees with `string_free`.
    fn give_log(log: *mut *mut c_char, text: String) {
        if !log.is_null() {
            let owned = CString::new(text.replace('\0', " ")).unwrap_or_default();
            // SAFETY: checked non-null.
            unsafe { *log = owned.into_raw() };
        }
    }

    pub unsafe fn string_free(s: *mut c_char) {
        if !s.is_null() {
            // SAFETY: made by CString::into_raw in give_log, freed once.
            drop(unsafe { CString::from_raw(s) });
        }
    }

    /// # Safety
    /// The header's contract for `phi3v_plugin_module_compile`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn module_compile(
        profile: &Profile,
        ctx: ffi::Context,
        dialect: u32,
        source: *const c_char,
        name: *const c_char,
        options: *const *const c_char,
        num_options: u32,
        out: *mut ffi::Module,
        log: *mut *mut c_char,
    ) -> ffi::Status {
        if !log.is_null() {
            // SAFETY: checked non-null.
            unsafe { *log = std::ptr::null_mut() };
        }
        if source.is_null() || out.is_null() || (num_options > 0 && options.is_null()) {
            return ffi::ERROR_INVALID_VALUE;
        }
        if dialect != ffi::DIALECT_CUDA {
            return ffi::ERROR_NOT_SUPPORTED;
        }
        // SAFETY: a handle from context_create.
        let c = match unsafe { enter(ctx) } {
            Ok(c) => c,
            Err(s) => return s,
        };
        // SAFETY: probing for the library has no other effect.
        if !unsafe { nvrtc::is_culib_present() } {
            give_log(log, format!("{}: NVRTC (libnvrtc) could not be loaded", profile.name));
            return ffi::ERROR_COMPILE;
        }
        // Options: the runtime's, then the architecture and include paths.
        let mut owned: Vec<CString> = Vec::new();
        if profile.arch_option {
            // As cubecl-cuda: the `a` (architecture-specific) target from sm_90 on.
            let suffix = if c.arch >= 90 { "a" } else { "" };
            owned.push(CString::new(format!("--gpu-architecture=sm_{}{suffix}", c.arch)).unwrap_or_default());
        }
        for o in (profile.compile_options)() {
            if let Ok(o) = CString::new(o) {
                owned.push(o);
            }
        }
        let mut option_ptrs: Vec<*const c_char> = (0..num_options as usize)
            // SAFETY: `options` holds `num_options` NUL-terminated strings.
            .map(|i| unsafe { *options.add(i) })
            .collect();
        option_ptrs.extend(owned.iter().map(|o| o.as_ptr()));

        let mut program = std::ptr::null_mut();
        // SAFETY: NUL-terminated inputs; valid out-pointer.
        let r = unsafe { nvrtc::nvrtcCreateProgram(&mut program, source, name, 0, std::ptr::null(), std::ptr::null()) };
        if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            give_log(log, format!("nvrtcCreateProgram failed: {r:?}"));
            return ffi::ERROR_COMPILE;
        }
        let result = (|| {
            // SAFETY: a created program; option pointers valid for the call.
            let r = unsafe { nvrtc::nvrtcCompileProgram(program, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
            if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
                let mut size = 0usize;
                let mut text = format!("{r:?}");
                // SAFETY: valid out-pointer, then a buffer of the reported size.
                unsafe {
                    if nvrtc::nvrtcGetProgramLogSize(program, &mut size) == nvrtc::nvrtcResult::NVRTC_SUCCESS && size > 0 {
                        let mut buf = vec![0 as c_char; size];
                        if nvrtc::nvrtcGetProgramLog(program, buf.as_mut_ptr()) == nvrtc::nvrtcResult::NVRTC_SUCCESS {
                            text = ffi::fixed_str(&buf);
                        }
                    }
                }
                return Err(text);
            }
            let mut size = 0usize;
            // SAFETY: a compiled program; buffer of the reported size.
            unsafe {
                if nvrtc::nvrtcGetPTXSize(program, &mut size) != nvrtc::nvrtcResult::NVRTC_SUCCESS {
                    return Err("nvrtcGetPTXSize failed".into());
                }
                let mut ptx = vec![0 as c_char; size.max(1)];
                if nvrtc::nvrtcGetPTX(program, ptx.as_mut_ptr()) != nvrtc::nvrtcResult::NVRTC_SUCCESS {
                    return Err("nvrtcGetPTX failed".into());
                }
                Ok(ptx)
            }
        })();
        // SAFETY: created above, destroyed once.
        unsafe { nvrtc::nvrtcDestroyProgram(&mut program) };
        let ptx = match result {
            Ok(ptx) => ptx,
            Err(text) => {
                give_log(log, text);
                return ffi::ERROR_COMPILE;
            }
        };
        let mut module = std::ptr::null_mut();
        // SAFETY: NUL-terminated PTX; valid out-pointer.
        match check(unsafe { cu::cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void) }) {
            Ok(()) => {
                // SAFETY: checked non-null.
                unsafe { *out = module as ffi::Module };
                ffi::SUCCESS
            }
            Err(s) => s,
        }
    }

    pub unsafe fn module_unload(ctx: ffi::Context, module: ffi::Module) -> ffi::Status {
        status((|| {
            // SAFETY: handles from this plugin; unloaded once.
            unsafe { enter(ctx) }?;
            check(unsafe { cu::cuModuleUnload(module as cu::CUmodule) })
        })())
    }

    pub unsafe fn get_function(ctx: ffi::Context, module: ffi::Module, name: *const c_char, out: *mut ffi::Function) -> ffi::Status {
        if name.is_null() || out.is_null() {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let mut f = std::ptr::null_mut();
            // SAFETY: a loaded module; NUL-terminated name; valid out-pointer.
            match unsafe { cu::cuModuleGetFunction(&mut f, module as cu::CUmodule, name) } {
                cu::CUresult::CUDA_ERROR_NOT_FOUND => return Err(ffi::ERROR_NOT_FOUND),
                other => check(other)?,
            }
            // SAFETY: checked non-null.
            unsafe { *out = f as ffi::Function };
            Ok(())
        })())
    }

    /// # Safety
    /// The header's contract for `phi3v_plugin_launch`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch(
        ctx: ffi::Context,
        function: ffi::Function,
        grid: *const u32,
        block: *const u32,
        shared_mem_bytes: u32,
        stream: ffi::Stream,
        args: *mut *mut c_void,
        num_args: u32,
    ) -> ffi::Status {
        if grid.is_null() || block.is_null() || function.is_null() || (num_args > 0 && args.is_null()) {
            return ffi::ERROR_INVALID_VALUE;
        }
        status((|| {
            // SAFETY: a handle from context_create.
            unsafe { enter(ctx) }?;
            let f = function as cu::CUfunction;
            // SAFETY: 3-element arrays (the header); a function of a loaded module; `args` as
            // cuLaunchKernel's kernelParams.
            unsafe {
                let (g, b) = (std::slice::from_raw_parts(grid, 3), std::slice::from_raw_parts(block, 3));
                // Dynamic shared memory above 48 KiB must be opted into per function.
                check(cu::cuFuncSetAttribute(
                    f,
                    cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_mem_bytes as i32,
                ))?;
                check(cu::cuLaunchKernel(
                    f,
                    g[0],
                    g[1],
                    g[2],
                    b[0],
                    b[1],
                    b[2],
                    shared_mem_bytes,
                    stream as cu::CUstream,
                    args,
                    std::ptr::null_mut(),
                ))
            }
        })())
    }
}

/// Exports the `phi3v_plugin_*` symbols of `phi3v_device_plugin.h`, implemented by [`imp`]
/// with the given [`Profile`] (a path to a `static`, a `const`, or a static that derefs to one).
/// Call it once, in the plugin's `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($profile:path) => {
        const _: () = {
            use $crate::{guard, imp};
            use ::phi3v_backend_plugin::ffi;
            use ::std::ffi::{c_char, c_void};

            #[unsafe(no_mangle)]
            pub extern "C" fn phi3v_plugin_abi_version() -> u32 {
                ffi::ABI_VERSION
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn phi3v_plugin_capabilities() -> u64 {
                imp::capabilities(&$profile)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn phi3v_plugin_status_string(status: ffi::Status) -> *const c_char {
                ::std::panic::catch_unwind(|| imp::status_string(&$profile, status))
                    .unwrap_or(c"internal error".as_ptr())
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_device_count(count: *mut i32) -> ffi::Status {
                guard(|| unsafe { imp::device_count(&$profile, count) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_device_properties(device: i32, props: *mut ffi::DeviceProperties) -> ffi::Status {
                guard(|| unsafe { imp::device_properties(&$profile, device, props) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_context_create(device: i32, ctx: *mut ffi::Context) -> ffi::Status {
                guard(|| unsafe { imp::context_create(&$profile, device, ctx) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_context_destroy(ctx: ffi::Context) -> ffi::Status {
                guard(|| unsafe { imp::context_destroy(ctx) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_mem_info(ctx: ffi::Context, free: *mut u64, total: *mut u64) -> ffi::Status {
                guard(|| unsafe { imp::mem_info(ctx, free, total) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_malloc(ctx: ffi::Context, bytes: u64, stream: ffi::Stream, ptr: *mut u64) -> ffi::Status {
                guard(|| unsafe { imp::malloc(&$profile, ctx, bytes, stream, ptr) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_free(ctx: ffi::Context, ptr: u64, stream: ffi::Stream) -> ffi::Status {
                guard(|| unsafe { imp::free(ctx, ptr, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_host_alloc(ctx: ffi::Context, bytes: u64, ptr: *mut *mut c_void) -> ffi::Status {
                guard(|| unsafe { imp::host_alloc(ctx, bytes, ptr) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_host_free(ctx: ffi::Context, ptr: *mut c_void) -> ffi::Status {
                guard(|| unsafe { imp::host_free(ctx, ptr) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_memcpy_h2d_async(ctx: ffi::Context, dst: u64, src: *const c_void, bytes: u64, stream: ffi::Stream) -> ffi::Status {
                // SAFETY: the header's contract, forwarded.
                guard(|| unsafe { imp::memcpy(ctx, ffi::COPY_H2D, dst, src as u64, bytes, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_memcpy_d2h_async(ctx: ffi::Context, dst: *mut c_void, src: u64, bytes: u64, stream: ffi::Stream) -> ffi::Status {
                // SAFETY: the header's contract, forwarded.
                guard(|| unsafe { imp::memcpy(ctx, ffi::COPY_D2H, dst as u64, src, bytes, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_memcpy_d2d_async(ctx: ffi::Context, dst: u64, src: u64, bytes: u64, stream: ffi::Stream) -> ffi::Status {
                // SAFETY: the header's contract, forwarded.
                guard(|| unsafe { imp::memcpy(ctx, 0, dst, src, bytes, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_memcpy_2d_async(ctx: ffi::Context, kind: u32, dst: u64, dst_pitch: u64, src: u64, src_pitch: u64, width: u64, height: u64, stream: ffi::Stream) -> ffi::Status {
                // SAFETY: the header's contract, forwarded.
                guard(|| unsafe { imp::memcpy_2d(ctx, kind, dst, dst_pitch, src, src_pitch, width, height, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_stream_create(ctx: ffi::Context, stream: *mut ffi::Stream) -> ffi::Status {
                guard(|| unsafe { imp::stream_create(ctx, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_stream_destroy(ctx: ffi::Context, stream: ffi::Stream) -> ffi::Status {
                guard(|| unsafe { imp::stream_destroy(ctx, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_stream_synchronize(ctx: ffi::Context, stream: ffi::Stream) -> ffi::Status {
                guard(|| unsafe { imp::stream_synchronize(ctx, stream) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_event_record(ctx: ffi::Context, stream: ffi::Stream, event: *mut ffi::Event) -> ffi::Status {
                guard(|| unsafe { imp::event_record(ctx, stream, event) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_event_wait(ctx: ffi::Context, stream: ffi::Stream, event: ffi::Event) -> ffi::Status {
                guard(|| unsafe { imp::event_wait(ctx, stream, event) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_event_synchronize(ctx: ffi::Context, event: ffi::Event) -> ffi::Status {
                guard(|| unsafe { imp::event_synchronize(ctx, event) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_event_destroy(ctx: ffi::Context, event: ffi::Event) -> ffi::Status {
                guard(|| unsafe { imp::event_destroy(ctx, event) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_module_compile(ctx: ffi::Context, dialect: u32, source: *const c_char, name: *const c_char, options: *const *const c_char, num_options: u32, module: *mut ffi::Module, log: *mut *mut c_char) -> ffi::Status {
                // SAFETY: the header's contract, forwarded.
                guard(|| unsafe { imp::module_compile(&$profile, ctx, dialect, source, name, options, num_options, module, log) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_module_unload(ctx: ffi::Context, module: ffi::Module) -> ffi::Status {
                guard(|| unsafe { imp::module_unload(ctx, module) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_string_free(s: *mut c_char) {
                // SAFETY: the header's contract, forwarded.
                let _ = ::std::panic::catch_unwind(|| unsafe { imp::string_free(s) });
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_module_get_function(ctx: ffi::Context, module: ffi::Module, name: *const c_char, function: *mut ffi::Function) -> ffi::Status {
                guard(|| unsafe { imp::get_function(ctx, module, name, function) })
            }
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn phi3v_plugin_launch(ctx: ffi::Context, function: ffi::Function, grid: *const u32, block: *const u32, shared_mem_bytes: u32, stream: ffi::Stream, args: *mut *mut c_void, num_args: u32) -> ffi::Status {
                // SAFETY: the header's contract, forwarded.
                guard(|| unsafe { imp::launch(ctx, function, grid, block, shared_mem_bytes, stream, args, num_args) })
            }
        };
    };
}

/// The driver's 2-D copy descriptor with every field set (offsets 0, no arrays).
#[allow(clippy::too_many_arguments)]
fn copy_2d_descriptor(
    src_type: cu::CUmemorytype,
    src_host: *const c_void,
    src_device: cu::CUdeviceptr,
    src_pitch: u64,
    dst_type: cu::CUmemorytype,
    dst_host: *mut c_void,
    dst_device: cu::CUdeviceptr,
    dst_pitch: u64,
    width: u64,
    height: u64,
) -> cu::CUDA_MEMCPY2D {
    cu::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: src_type,
        srcHost: src_host,
        srcDevice: src_device,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch as usize,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: dst_type,
        dstHost: dst_host,
        dstDevice: dst_device,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch as usize,
        WidthInBytes: width as usize,
        Height: height as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2-D copy descriptor is built field by field: zero-initialising it (as the first
    /// version did) aborts, since its memory-type fields are enums without a zero value.
    #[test]
    fn copy_2d_descriptor_sets_every_field() {
        let host = [0u8; 64];
        let m = copy_2d_descriptor(
            cu::CUmemorytype::CU_MEMORYTYPE_HOST,
            host.as_ptr().cast(),
            0,
            16,
            cu::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            std::ptr::null_mut(),
            0x1000,
            32,
            12,
            4,
        );
        assert_eq!(m.srcMemoryType, cu::CUmemorytype::CU_MEMORYTYPE_HOST);
        assert_eq!(m.dstMemoryType, cu::CUmemorytype::CU_MEMORYTYPE_DEVICE);
        assert_eq!((m.srcPitch, m.dstPitch, m.WidthInBytes, m.Height), (16, 32, 12, 4));
        assert_eq!((m.dstDevice, m.srcXInBytes, m.dstY), (0x1000, 0, 0));
        assert!(m.srcArray.is_null() && m.dstArray.is_null() && m.dstHost.is_null());
    }
}
