//! Enflame GCU as a phi3v device plugin, over the TopsRider runtime.
//!
//! **Not run on GCU hardware, and written without the SDK at hand**: no vendor header is used
//! or copied. The runtime library (`libtopsrt.so`) is opened at run time and its `tops*`
//! functions are resolved by name with the signatures declared in [`Tops`], which follow the
//! HIP-style runtime API TopsRider documents (device ordinals, `topsMalloc`, `topsMemcpyAsync`
//! with HIP's copy-kind numbering, `topsModuleLoad`/`topsModuleLaunchKernel`). Each of them is
//! an assumption to confirm against the SDK's headers before first use; they are all in this
//! one table.
//!
//! Kernels: the runtime hands over HIP C++ (or CUDA C++ with `PHI3V_ENFLAME_DIALECT=cuda`);
//! this plugin writes it to a file and runs the vendor compiler (`$PHI3V_TOPSCC`, else
//! `topscc` under `$TOPS_HOME/bin`, `/opt/tops/bin`, `/usr/bin`) with `$PHI3V_TOPSCC_FLAGS`,
//! then loads the code object. When a kernel does not compile, the error names the kernel and
//! the file its source was saved to, for the vendor.
//!
//! Without the SDK every entry point fails cleanly: device counting reports "TopsRider runtime
//! (libtopsrt.so) not found", compiling reports "topscc not found".

// The exported functions' (and their bodies') safety contract is the header's, function by
// function: handles from this plugin, pointers valid as `phi3v_device_plugin.h` describes.
#![allow(clippy::missing_safety_doc)]

use phi3v_backend_plugin::ffi;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

type Err = c_int; // topsError_t: 0 is success (assumption, as HIP)
type Handle = *mut c_void;

/// The TopsRider runtime functions used, resolved by name (signatures declared here).
struct Tops {
    _lib: libloading::Library,
    get_device_count: unsafe extern "C" fn(*mut c_int) -> Err,
    set_device: unsafe extern "C" fn(c_int) -> Err,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> Err,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> Err,
    malloc: unsafe extern "C" fn(*mut *mut c_void, usize) -> Err,
    free: unsafe extern "C" fn(*mut c_void) -> Err,
    host_malloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> Err,
    host_free: unsafe extern "C" fn(*mut c_void) -> Err,
    memcpy_async: unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, Handle) -> Err,
    stream_create: unsafe extern "C" fn(*mut Handle) -> Err,
    stream_destroy: unsafe extern "C" fn(Handle) -> Err,
    stream_synchronize: unsafe extern "C" fn(Handle) -> Err,
    event_create: unsafe extern "C" fn(*mut Handle) -> Err,
    event_record: unsafe extern "C" fn(Handle, Handle) -> Err,
    stream_wait_event: unsafe extern "C" fn(Handle, Handle, c_uint) -> Err,
    event_synchronize: unsafe extern "C" fn(Handle) -> Err,
    event_destroy: unsafe extern "C" fn(Handle) -> Err,
    module_load: unsafe extern "C" fn(*mut Handle, *const c_char) -> Err,
    module_unload: unsafe extern "C" fn(Handle) -> Err,
    module_get_function: unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> Err,
    #[allow(clippy::type_complexity)]
    module_launch_kernel: unsafe extern "C" fn(
        Handle, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, Handle, *mut *mut c_void, *mut *mut c_void,
    ) -> Err,
    get_error_string: unsafe extern "C" fn(Err) -> *const c_char,
}

// Copy kinds, numbered as HIP's (assumption).
const H2D: c_int = 1;
const D2H: c_int = 2;
const D2D: c_int = 3;

/// Where the runtime library may be: `$TOPS_HOME/lib`, `/opt/tops/lib`, then the loader's path.
fn runtime_candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var_os("TOPS_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/opt/tops"), PathBuf::from("/usr/local/tops")])
        .flat_map(|home| ["lib", "lib64"].map(|d| home.join(d).join("libtopsrt.so")))
        .collect();
    v.push(PathBuf::from("libtopsrt.so"));
    v
}

fn load() -> Result<Tops, String> {
    let lib = runtime_candidates()
        .iter()
        // SAFETY: loading the vendor runtime runs its initialisers, as linking to it would.
        .find_map(|p| unsafe { libloading::Library::new(p) }.ok())
        .ok_or("Enflame TopsRider runtime (libtopsrt.so) not found: install TopsRider and set TOPS_HOME (looked in $TOPS_HOME/lib, /opt/tops/lib, /usr/local/tops/lib and the library path)")?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the signature declared in `Tops` for this name; used only while `_lib`
            // (moved into the same struct) stays loaded.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|_| format!("libtopsrt.so does not export {} (TopsRider version?)", $name))?
        };
    }
    Ok(Tops {
        get_device_count: sym!("topsGetDeviceCount"),
        set_device: sym!("topsSetDevice"),
        device_get_name: sym!("topsDeviceGetName"),
        mem_get_info: sym!("topsMemGetInfo"),
        malloc: sym!("topsMalloc"),
        free: sym!("topsFree"),
        host_malloc: sym!("topsHostMalloc"),
        host_free: sym!("topsHostFree"),
        memcpy_async: sym!("topsMemcpyAsync"),
        stream_create: sym!("topsStreamCreate"),
        stream_destroy: sym!("topsStreamDestroy"),
        stream_synchronize: sym!("topsStreamSynchronize"),
        event_create: sym!("topsEventCreate"),
        event_record: sym!("topsEventRecord"),
        stream_wait_event: sym!("topsStreamWaitEvent"),
        event_synchronize: sym!("topsEventSynchronize"),
        event_destroy: sym!("topsEventDestroy"),
        module_load: sym!("topsModuleLoad"),
        module_unload: sym!("topsModuleUnload"),
        module_get_function: sym!("topsModuleGetFunction"),
        module_launch_kernel: sym!("topsModuleLaunchKernel"),
        get_error_string: sym!("topsGetErrorString"),
        _lib: lib,
    })
}

static TOPS: OnceLock<Result<Tops, CString>> = OnceLock::new();

fn tops() -> Result<&'static Tops, ffi::Status> {
    TOPS.get_or_init(|| load().map_err(|e| CString::new(e).unwrap_or_default()))
        .as_ref()
        .map_err(|_| ffi::ERROR_NO_DEVICE)
}

/// The kernel compiler: `$PHI3V_TOPSCC`, else `topscc` in the SDK or on the path.
pub fn find_compiler() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PHI3V_TOPSCC") {
        return Some(PathBuf::from(p));
    }
    let homes = std::env::var_os("TOPS_HOME").map(PathBuf::from).into_iter().chain(["/opt/tops", "/usr/local/tops", "/usr"].map(PathBuf::from));
    homes.map(|h| h.join("bin/topscc")).find(|p| p.is_file())
}

/// The device ordinal behind a context handle (ordinal + 1, so that it is never null).
fn ordinal(ctx: ffi::Context) -> Result<c_int, ffi::Status> {
    if ctx.is_null() {
        return Err(ffi::ERROR_INVALID_VALUE);
    }
    Ok(ctx as usize as c_int - 1)
}

/// Makes the context's device current (HIP-style per-thread device).
fn enter(ctx: ffi::Context) -> Result<&'static Tops, ffi::Status> {
    let t = tops()?;
    // SAFETY: an ordinal validated at context creation.
    check(unsafe { (t.set_device)(ordinal(ctx)?) })?;
    Ok(t)
}

fn check(e: Err) -> Result<(), ffi::Status> {
    if e == 0 { Ok(()) } else { Err(e.max(1)) }
}

fn status(r: Result<(), ffi::Status>) -> ffi::Status {
    r.err().unwrap_or(ffi::SUCCESS)
}

/// Runs `f`, turning a panic into a status instead of unwinding into the host.
fn guard(f: impl FnOnce() -> Result<(), ffi::Status>) -> ffi::Status {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map(status).unwrap_or(ffi::ERROR_INTERNAL)
}

/// # Safety
/// `p`, when not null, is valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), ffi::Status> {
    if p.is_null() {
        return Err(ffi::ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller's contract; checked non-null.
    unsafe { p.write(v) };
    Ok(())
}

fn give_log(log: *mut *mut c_char, text: String) {
    if !log.is_null() {
        // SAFETY: checked non-null.
        unsafe { *log = CString::new(text.replace('\0', " ")).unwrap_or_default().into_raw() };
    }
}

fn dialect() -> u32 {
    match std::env::var("PHI3V_ENFLAME_DIALECT").as_deref() {
        Ok("cuda") => ffi::DIALECT_CUDA,
        _ => ffi::DIALECT_HIP,
    }
}

/// Compiles `source` with the vendor compiler into a code object next to the saved source.
fn compile(name: &str, source: &str, options: &[String]) -> Result<PathBuf, String> {
    let dir = std::env::var_os(phi3v_backend_plugin::KERNEL_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("phi3v-enflame-kernels"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let stem: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let src = dir.join(format!("{stem}-{}.cpp", std::process::id()));
    let out = src.with_extension("co");
    std::fs::write(&src, source).map_err(|e| format!("saving {}: {e}", src.display()))?;
    let compiler = find_compiler().ok_or_else(|| {
        format!("kernel `{name}`: the Enflame kernel compiler (topscc) was not found: set PHI3V_TOPSCC or TOPS_HOME; source saved to {}", src.display())
    })?;
    let flags = std::env::var("PHI3V_TOPSCC_FLAGS").unwrap_or_else(|_| "-O3 -std=c++17".into());
    let output = std::process::Command::new(&compiler)
        .args(flags.split_whitespace())
        .args(options.iter().filter(|o| o.starts_with("-I") || o.starts_with("-D")))
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| format!("kernel `{name}`: running {}: {e}", compiler.display()))?;
    if !output.status.success() {
        return Err(format!(
            "kernel `{name}` failed to compile with {} ({}); source saved to {}\n{}{}",
            compiler.display(),
            output.status,
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(out)
}

fn cstr_arg<'a>(p: *const c_char) -> Result<&'a CStr, ffi::Status> {
    if p.is_null() {
        return Err(ffi::ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null, NUL-terminated per the header.
    Ok(unsafe { CStr::from_ptr(p) })
}

#[unsafe(no_mangle)]
pub extern "C" fn phi3v_plugin_abi_version() -> u32 {
    ffi::ABI_VERSION
}

#[unsafe(no_mangle)]
pub extern "C" fn phi3v_plugin_capabilities() -> u64 {
    // Pinned staging only: no 2-D copies, matrix instructions or grid constants assumed.
    ffi::CAP_PINNED_HOST
}

#[unsafe(no_mangle)]
pub extern "C" fn phi3v_plugin_status_string(s: ffi::Status) -> *const c_char {
    let text: &'static CStr = match s {
        ffi::SUCCESS => c"success",
        ffi::ERROR_NO_DEVICE => match TOPS.get() {
            Some(Err(reason)) => return reason.as_ptr(),
            _ => c"no such GCU",
        },
        ffi::ERROR_INVALID_VALUE => c"invalid value",
        ffi::ERROR_OUT_OF_MEMORY => c"out of memory",
        ffi::ERROR_COMPILE => c"kernel compilation failed, see the log",
        ffi::ERROR_NOT_SUPPORTED => c"not supported by the Enflame plugin",
        ffi::ERROR_INTERNAL => c"internal error in the Enflame plugin",
        code if code > 0 => match tops() {
            // SAFETY: returns a static string for any code (assumption, as hipGetErrorString).
            Ok(t) => return std::panic::catch_unwind(|| unsafe { (t.get_error_string)(code) }).unwrap_or(std::ptr::null()),
            Err(_) => c"TopsRider error",
        },
        _ => c"unknown status",
    };
    text.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_device_count(count: *mut i32) -> ffi::Status {
    guard(|| {
        let t = tops()?;
        let mut n = 0;
        // SAFETY: valid out-pointer.
        check(unsafe { (t.get_device_count)(&mut n) })?;
        // SAFETY: checked by put.
        unsafe { put(count, n) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_device_properties(device: i32, props: *mut ffi::DeviceProperties) -> ffi::Status {
    guard(|| {
        if props.is_null() {
            return Err(ffi::ERROR_INVALID_VALUE);
        }
        let t = tops()?;
        let mut n = 0;
        // SAFETY: valid out-pointer.
        check(unsafe { (t.get_device_count)(&mut n) })?;
        if device < 0 || device >= n {
            return Err(ffi::ERROR_NO_DEVICE);
        }
        let mut p = ffi::DeviceProperties::empty();
        // SAFETY: a 256-byte buffer; a valid ordinal.
        check(unsafe { (t.device_get_name)(p.name.as_mut_ptr(), 255, device) })?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid ordinal and out-pointers.
        check(unsafe { (t.set_device)(device) })?;
        check(unsafe { (t.mem_get_info)(&mut free, &mut total) })?;
        p.total_memory = total as u64;
        p.free_memory = free as u64;
        // Not queried (the attribute numbering is not known here): conservative values, to
        // confirm against the SDK's device properties.
        p.compute_units = 0;
        p.warp_size = std::env::var("PHI3V_ENFLAME_WARP_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
        p.max_shared_memory_per_block = 48 * 1024;
        p.max_threads_per_block = 1024;
        p.max_block_dim = [1024, 1024, 64];
        p.max_grid_dim = [i32::MAX as u32, 65535, 65535];
        p.memory_alignment = 256;
        p.dialect = dialect();
        ffi::write_fixed_str(&mut p.arch_name, "gcu");
        p.dtypes = ffi::DTYPE_F16 | ffi::DTYPE_BF16 | ffi::DTYPE_F32 | ffi::DTYPE_I8 | ffi::DTYPE_I16
            | ffi::DTYPE_I32 | ffi::DTYPE_I64 | ffi::DTYPE_U8 | ffi::DTYPE_U16 | ffi::DTYPE_U32 | ffi::DTYPE_U64;
        // SAFETY: non-null; only the declared part of the struct is written.
        unsafe {
            let declared = ((*props).struct_size as usize).min(size_of::<ffi::DeviceProperties>());
            std::ptr::copy_nonoverlapping((&p as *const ffi::DeviceProperties).cast::<u8>().add(4), props.cast::<u8>().add(4), declared.saturating_sub(4));
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_context_create(device: i32, ctx: *mut ffi::Context) -> ffi::Status {
    guard(|| {
        let t = tops()?;
        // SAFETY: the runtime validates the ordinal.
        check(unsafe { (t.set_device)(device) })?;
        // SAFETY: checked by put.
        unsafe { put(ctx, (device as usize + 1) as ffi::Context) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_context_destroy(ctx: ffi::Context) -> ffi::Status {
    guard(|| ordinal(ctx).map(|_| ()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_mem_info(ctx: ffi::Context, free: *mut u64, total: *mut u64) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        let (mut f, mut tt) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        check(unsafe { (t.mem_get_info)(&mut f, &mut tt) })?;
        // SAFETY: checked by put.
        unsafe { put(free, f as u64).and_then(|_| put(total, tt as u64)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_malloc(ctx: ffi::Context, bytes: u64, _stream: ffi::Stream, ptr: *mut u64) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(unsafe { (t.malloc)(&mut p, bytes as usize) }).map_err(|_| ffi::ERROR_OUT_OF_MEMORY)?;
        // SAFETY: checked by put.
        unsafe { put(ptr, p as u64) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_free(ctx: ffi::Context, ptr: u64, stream: ffi::Stream) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        // Not stream-ordered: wait for the stream's work, then free.
        // SAFETY: a stream and an allocation of this plugin.
        unsafe {
            check((t.stream_synchronize)(stream))?;
            check((t.free)(ptr as *mut c_void))
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_host_alloc(ctx: ffi::Context, bytes: u64, ptr: *mut *mut c_void) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 (default).
        check(unsafe { (t.host_malloc)(&mut p, bytes as usize, 0) }).map_err(|_| ffi::ERROR_OUT_OF_MEMORY)?;
        // SAFETY: checked by put.
        unsafe { put(ptr, p) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_host_free(ctx: ffi::Context, ptr: *mut c_void) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        // SAFETY: an allocation of host_alloc.
        check(unsafe { (t.host_free)(ptr) })
    })
}

fn copy(ctx: ffi::Context, dst: *mut c_void, src: *const c_void, bytes: u64, kind: c_int, stream: ffi::Stream) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        // SAFETY: the header's contract for the copy functions.
        check(unsafe { (t.memcpy_async)(dst, src, bytes as usize, kind, stream) })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_memcpy_h2d_async(ctx: ffi::Context, dst: u64, src: *const c_void, bytes: u64, stream: ffi::Stream) -> ffi::Status {
    copy(ctx, dst as *mut c_void, src, bytes, H2D, stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_memcpy_d2h_async(ctx: ffi::Context, dst: *mut c_void, src: u64, bytes: u64, stream: ffi::Stream) -> ffi::Status {
    copy(ctx, dst, src as *const c_void, bytes, D2H, stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_memcpy_d2d_async(ctx: ffi::Context, dst: u64, src: u64, bytes: u64, stream: ffi::Stream) -> ffi::Status {
    copy(ctx, dst as *mut c_void, src as *const c_void, bytes, D2D, stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_stream_create(ctx: ffi::Context, stream: *mut ffi::Stream) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        let mut s = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(unsafe { (t.stream_create)(&mut s) })?;
        // SAFETY: checked by put.
        unsafe { put(stream, s) }
    })
}

macro_rules! simple {
    ($export:ident, $field:ident, $arg:ident) => {
        #[unsafe(no_mangle)]
        /// # Safety
        /// The header's contract: handles from this plugin.
        pub unsafe extern "C" fn $export(ctx: ffi::Context, $arg: Handle) -> ffi::Status {
            guard(|| {
                let t = enter(ctx)?;
                // SAFETY: a handle of this plugin (the header's contract).
                check(unsafe { (t.$field)($arg) })
            })
        }
    };
}
simple!(phi3v_plugin_stream_destroy, stream_destroy, stream);
simple!(phi3v_plugin_stream_synchronize, stream_synchronize, stream);
simple!(phi3v_plugin_event_synchronize, event_synchronize, event);
simple!(phi3v_plugin_event_destroy, event_destroy, event);
simple!(phi3v_plugin_module_unload, module_unload, module);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_event_record(ctx: ffi::Context, stream: ffi::Stream, event: *mut ffi::Event) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out-pointer; a stream of this plugin.
        unsafe {
            check((t.event_create)(&mut e))?;
            if let Err(s) = check((t.event_record)(e, stream)) {
                (t.event_destroy)(e);
                return Err(s);
            }
            put(event, e)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_event_wait(ctx: ffi::Context, stream: ffi::Stream, event: ffi::Event) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        // SAFETY: handles of this plugin.
        check(unsafe { (t.stream_wait_event)(stream, event, 0) })
    })
}

/// # Safety
/// The header's contract for `phi3v_plugin_module_compile`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn phi3v_plugin_module_compile(
    ctx: ffi::Context,
    dialect_asked: u32,
    source: *const c_char,
    name: *const c_char,
    options: *const *const c_char,
    num_options: u32,
    module: *mut ffi::Module,
    log: *mut *mut c_char,
) -> ffi::Status {
    guard(|| {
        if !log.is_null() {
            // SAFETY: checked non-null.
            unsafe { *log = std::ptr::null_mut() };
        }
        if dialect_asked != dialect() {
            return Err(ffi::ERROR_NOT_SUPPORTED);
        }
        let source = cstr_arg(source)?.to_string_lossy();
        let name = cstr_arg(name)?.to_string_lossy().into_owned();
        let opts: Vec<String> = (0..num_options as usize)
            // SAFETY: `options` holds `num_options` NUL-terminated strings.
            .map(|i| cstr_arg(unsafe { *options.add(i) }).map(|c| c.to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        let object = compile(&name, &source, &opts).map_err(|text| {
            give_log(log, text);
            ffi::ERROR_COMPILE
        })?;
        let t = enter(ctx)?;
        let path = CString::new(object.to_string_lossy().as_bytes()).map_err(|_| ffi::ERROR_INVALID_VALUE)?;
        let mut m = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path; valid out-pointer.
        check(unsafe { (t.module_load)(&mut m, path.as_ptr()) })?;
        // SAFETY: checked by put.
        unsafe { put(module, m) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in give_log, freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn phi3v_plugin_module_get_function(ctx: ffi::Context, module: ffi::Module, name: *const c_char, function: *mut ffi::Function) -> ffi::Status {
    guard(|| {
        let t = enter(ctx)?;
        let name = cstr_arg(name)?;
        let mut f = std::ptr::null_mut();
        // SAFETY: a loaded module; NUL-terminated name; valid out-pointer.
        check(unsafe { (t.module_get_function)(&mut f, module, name.as_ptr()) }).map_err(|_| ffi::ERROR_NOT_FOUND)?;
        // SAFETY: checked by put.
        unsafe { put(function, f) }
    })
}

/// # Safety
/// The header's contract for `phi3v_plugin_launch`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn phi3v_plugin_launch(
    ctx: ffi::Context,
    function: ffi::Function,
    grid: *const u32,
    block: *const u32,
    shared_mem_bytes: u32,
    stream: ffi::Stream,
    args: *mut *mut c_void,
    _num_args: u32,
) -> ffi::Status {
    guard(|| {
        if grid.is_null() || block.is_null() {
            return Err(ffi::ERROR_INVALID_VALUE);
        }
        let t = enter(ctx)?;
        // SAFETY: 3-element arrays; a function of a loaded module; args as kernelParams.
        unsafe {
            let (g, b) = (std::slice::from_raw_parts(grid, 3), std::slice::from_raw_parts(block, 3));
            check((t.module_launch_kernel)(function, g[0], g[1], g[2], b[0], b[1], b[2], shared_mem_bytes, stream, args, std::ptr::null_mut()))
                .map_err(|_| ffi::ERROR_LAUNCH)
        }
    })
}

/// Whether the TopsRider runtime could be loaded (for tests and tools).
pub fn runtime_available() -> Result<(), String> {
    match TOPS.get_or_init(|| load().map_err(|e| CString::new(e).unwrap_or_default())) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string_lossy().into_owned()),
    }
}

/// Compiles a kernel with the vendor compiler as `module_compile` does, returning the code
/// object's path or the error text (for tests and tools).
pub fn compile_kernel(name: &str, source: &str) -> Result<PathBuf, String> {
    compile(name, source, &[])
}
