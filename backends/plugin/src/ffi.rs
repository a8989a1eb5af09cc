//! The declarations of `include/phi3v_device_plugin.h`, in Rust. Keep the two in step: the
//! header is the contract a vendor reads; these are what the runtime calls.

use std::ffi::{c_char, c_void};

/// `PHI3V_PLUGIN_ABI_VERSION`: the version this runtime speaks.
pub const ABI_VERSION: u32 = 1;

pub type Status = i32;
pub const SUCCESS: Status = 0;
pub const ERROR_INVALID_VALUE: Status = -1;
pub const ERROR_OUT_OF_MEMORY: Status = -2;
pub const ERROR_NO_DEVICE: Status = -3;
pub const ERROR_COMPILE: Status = -4;
pub const ERROR_NOT_FOUND: Status = -5;
pub const ERROR_LAUNCH: Status = -6;
pub const ERROR_NOT_SUPPORTED: Status = -7;
pub const ERROR_DRIVER: Status = -8;
pub const ERROR_INTERNAL: Status = -9;

pub const DIALECT_CUDA: u32 = 1;
pub const DIALECT_HIP: u32 = 2;

pub const DTYPE_F16: u64 = 1 << 0;
pub const DTYPE_BF16: u64 = 1 << 1;
pub const DTYPE_F32: u64 = 1 << 2;
pub const DTYPE_F64: u64 = 1 << 3;
pub const DTYPE_I8: u64 = 1 << 4;
pub const DTYPE_I16: u64 = 1 << 5;
pub const DTYPE_I32: u64 = 1 << 6;
pub const DTYPE_I64: u64 = 1 << 7;
pub const DTYPE_U8: u64 = 1 << 8;
pub const DTYPE_U16: u64 = 1 << 9;
pub const DTYPE_U32: u64 = 1 << 10;
pub const DTYPE_U64: u64 = 1 << 11;

pub const CAP_PINNED_HOST: u64 = 1 << 0;
pub const CAP_MEMCPY_2D: u64 = 1 << 1;
pub const CAP_GRID_CONSTANTS: u64 = 1 << 2;
pub const CAP_MMA: u64 = 1 << 3;
pub const CAP_ATOMIC_F16: u64 = 1 << 4;
pub const CAP_ATOMIC_F64: u64 = 1 << 5;

pub const COPY_H2D: u32 = 1;
pub const COPY_D2H: u32 = 2;

pub type Context = *mut c_void;
pub type Stream = *mut c_void;
pub type Event = *mut c_void;
pub type Module = *mut c_void;
pub type Function = *mut c_void;
pub type DevPtr = u64;

/// `phi3v_device_properties`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceProperties {
    pub struct_size: u32,
    pub name: [c_char; 256],
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
    pub arch_name: [c_char; 64],
    pub dtypes: u64,
}

impl DeviceProperties {
    /// All zero, `struct_size` set: what the runtime hands the plugin to fill.
    pub fn empty() -> Self {
        Self {
            struct_size: size_of::<Self>() as u32,
            name: [0; 256],
            total_memory: 0,
            free_memory: 0,
            compute_units: 0,
            warp_size: 0,
            max_shared_memory_per_block: 0,
            max_threads_per_block: 0,
            max_block_dim: [0; 3],
            max_grid_dim: [0; 3],
            memory_alignment: 0,
            dialect: 0,
            arch_version: 0,
            arch_name: [0; 64],
            dtypes: 0,
        }
    }
}

/// Copies a fixed-size C string field, stopping at the first NUL or at the end of the array
/// (a plugin that forgets the terminator yields a truncated name, not an out-of-bounds read).
pub fn fixed_str(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes `s` into a fixed-size C string field, truncated and NUL-terminated (for plugins
/// written in Rust).
pub fn write_fixed_str(field: &mut [c_char], s: &str) {
    let n = s.len().min(field.len().saturating_sub(1));
    for (dst, &b) in field.iter_mut().zip(&s.as_bytes()[..n]) {
        *dst = b as c_char;
    }
    if let Some(end) = field.get_mut(n) {
        *end = 0;
    }
}

pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
pub type CapabilitiesFn = unsafe extern "C" fn() -> u64;
pub type StatusStringFn = unsafe extern "C" fn(Status) -> *const c_char;
pub type DeviceCountFn = unsafe extern "C" fn(*mut i32) -> Status;
pub type DevicePropertiesFn = unsafe extern "C" fn(i32, *mut DeviceProperties) -> Status;
pub type ContextCreateFn = unsafe extern "C" fn(i32, *mut Context) -> Status;
pub type ContextDestroyFn = unsafe extern "C" fn(Context) -> Status;
pub type MemInfoFn = unsafe extern "C" fn(Context, *mut u64, *mut u64) -> Status;
pub type MallocFn = unsafe extern "C" fn(Context, u64, Stream, *mut DevPtr) -> Status;
pub type FreeFn = unsafe extern "C" fn(Context, DevPtr, Stream) -> Status;
pub type HostAllocFn = unsafe extern "C" fn(Context, u64, *mut *mut c_void) -> Status;
pub type HostFreeFn = unsafe extern "C" fn(Context, *mut c_void) -> Status;
pub type MemcpyH2DFn = unsafe extern "C" fn(Context, DevPtr, *const c_void, u64, Stream) -> Status;
pub type MemcpyD2HFn = unsafe extern "C" fn(Context, *mut c_void, DevPtr, u64, Stream) -> Status;
pub type MemcpyD2DFn = unsafe extern "C" fn(Context, DevPtr, DevPtr, u64, Stream) -> Status;
pub type Memcpy2DFn =
    unsafe extern "C" fn(Context, u32, u64, u64, u64, u64, u64, u64, Stream) -> Status;
pub type StreamCreateFn = unsafe extern "C" fn(Context, *mut Stream) -> Status;
pub type StreamFn = unsafe extern "C" fn(Context, Stream) -> Status;
pub type EventRecordFn = unsafe extern "C" fn(Context, Stream, *mut Event) -> Status;
pub type EventWaitFn = unsafe extern "C" fn(Context, Stream, Event) -> Status;
pub type EventFn = unsafe extern "C" fn(Context, Event) -> Status;
pub type ModuleCompileFn = unsafe extern "C" fn(
    Context,
    u32,
    *const c_char,
    *const c_char,
    *const *const c_char,
    u32,
    *mut Module,
    *mut *mut c_char,
) -> Status;
pub type ModuleUnloadFn = unsafe extern "C" fn(Context, Module) -> Status;
pub type StringFreeFn = unsafe extern "C" fn(*mut c_char);
pub type GetFunctionFn =
    unsafe extern "C" fn(Context, Module, *const c_char, *mut Function) -> Status;
pub type LaunchFn = unsafe extern "C" fn(
    Context,
    Function,
    *const u32,
    *const u32,
    u32,
    Stream,
    *mut *mut c_void,
    u32,
) -> Status;
