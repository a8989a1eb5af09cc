/*
 * phi3v_device_plugin.h: the C ABI between burn-phi3v's plugin runtime
 * (crate phi3v-backend-plugin) and a vendor's device plugin.
 *
 * A plugin is a shared library exporting the functions declared below with C
 * linkage. The runtime loads it with dlopen/LoadLibrary at run time, checks
 * phi3v_plugin_abi_version() first, then resolves every other symbol by name.
 * CubeCL generates every kernel as CUDA or HIP C++ source; the plugin compiles
 * that source with its own compiler and launches it. That is all a vendor
 * provides: no operator is implemented on the vendor side.
 *
 * Conventions
 *  - Every function except phi3v_plugin_abi_version, phi3v_plugin_capabilities
 *    and phi3v_plugin_status_string returns a phi3v_status: 0 on success, a
 *    negative PHI3V_ERROR_* or a positive vendor-specific code on failure.
 *    phi3v_plugin_status_string describes any code the plugin returns.
 *  - Out-parameters are written only on success.
 *  - Handles (context, stream, event, module, function) are opaque to the
 *    runtime. Device pointers are 64-bit integers (phi3v_devptr).
 *  - Every call after phi3v_plugin_context_create takes the context it acts in;
 *    the plugin makes it current on the calling thread if its driver needs
 *    that. Calls come from several threads, but never concurrently for the
 *    same stream; the plugin must be thread-safe across contexts and streams.
 *  - Asynchronous calls take a stream and return once the work is enqueued.
 *    Host buffers passed to them stay valid until an event recorded after the
 *    call has completed.
 *  - Symbols marked OPTIONAL may be absent; the runtime then uses the fallback
 *    described, and the matching PHI3V_CAP_* bit must be clear.
 */
#ifndef PHI3V_DEVICE_PLUGIN_H
#define PHI3V_DEVICE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change to a declaration below. */
#define PHI3V_PLUGIN_ABI_VERSION 1u

typedef int32_t phi3v_status;
#define PHI3V_SUCCESS 0
#define PHI3V_ERROR_INVALID_VALUE -1      /* null pointer, bad handle, size 0 where not allowed */
#define PHI3V_ERROR_OUT_OF_MEMORY -2      /* device or pinned host allocation failed */
#define PHI3V_ERROR_NO_DEVICE -3          /* device index out of range, or no driver */
#define PHI3V_ERROR_COMPILE -4            /* kernel source failed to compile (see the log) */
#define PHI3V_ERROR_NOT_FOUND -5          /* function name not in the module */
#define PHI3V_ERROR_LAUNCH -6             /* launch rejected or failed */
#define PHI3V_ERROR_NOT_SUPPORTED -7      /* dialect, copy kind or option the plugin lacks */
#define PHI3V_ERROR_DRIVER -8             /* other driver failure; status_string has details */
#define PHI3V_ERROR_INTERNAL -9           /* bug or panic inside the plugin */

/* Kernel source dialects (phi3v_device_properties.dialect, module_compile). */
typedef uint32_t phi3v_dialect;
#define PHI3V_DIALECT_CUDA 1u /* CUDA C++ as NVRTC accepts it (cubecl-cpp CudaDialect) */
#define PHI3V_DIALECT_HIP 2u  /* HIP C++ as hiprtc accepts it (cubecl-cpp HipDialect) */

/* Element types the device computes with (phi3v_device_properties.dtypes).
 * F32, I32, U32, U8 and bool are required; clearing F16/BF16/F64/I64/U64
 * keeps the runtime from generating kernels that use them. */
#define PHI3V_DTYPE_F16 (1ull << 0)
#define PHI3V_DTYPE_BF16 (1ull << 1)
#define PHI3V_DTYPE_F32 (1ull << 2)
#define PHI3V_DTYPE_F64 (1ull << 3)
#define PHI3V_DTYPE_I8 (1ull << 4)
#define PHI3V_DTYPE_I16 (1ull << 5)
#define PHI3V_DTYPE_I32 (1ull << 6)
#define PHI3V_DTYPE_I64 (1ull << 7)
#define PHI3V_DTYPE_U8 (1ull << 8)
#define PHI3V_DTYPE_U16 (1ull << 9)
#define PHI3V_DTYPE_U32 (1ull << 10)
#define PHI3V_DTYPE_U64 (1ull << 11)

/* Capabilities (phi3v_plugin_capabilities). */
#define PHI3V_CAP_PINNED_HOST (1ull << 0)    /* host_alloc/host_free exported: page-locked staging */
#define PHI3V_CAP_MEMCPY_2D (1ull << 1)      /* memcpy_2d_async exported: pitched copies in one call */
#define PHI3V_CAP_GRID_CONSTANTS (1ull << 2) /* a kernel parameter may be a struct passed by value
                                                (`__grid_constant__`, CUDA sm_70+) */
#define PHI3V_CAP_MMA (1ull << 3)            /* the compiler accepts the dialect's warp-level matrix
                                                intrinsics for arch_version/arch_name */
#define PHI3V_CAP_ATOMIC_F16 (1ull << 4)     /* atomicAdd on __half */
#define PHI3V_CAP_ATOMIC_F64 (1ull << 5)     /* atomicAdd on double */

typedef struct phi3v_context_st *phi3v_context;
typedef struct phi3v_stream_st *phi3v_stream;
typedef struct phi3v_event_st *phi3v_event;
typedef struct phi3v_module_st *phi3v_module;
typedef struct phi3v_function_st *phi3v_function;
typedef uint64_t phi3v_devptr;

typedef struct phi3v_device_properties {
    /* Set by the caller to sizeof(phi3v_device_properties); a plugin built
     * against an older header fills only the fields it knows. */
    uint32_t struct_size;
    char name[256];                   /* NUL-terminated marketing name */
    uint64_t total_memory;            /* bytes */
    uint64_t free_memory;             /* bytes, at the time of the call */
    uint32_t compute_units;           /* SMs / CUs / clusters */
    uint32_t warp_size;               /* threads per warp / wavefront / plane */
    uint32_t max_shared_memory_per_block; /* bytes a block may use (opt-in maximum) */
    uint32_t max_threads_per_block;
    uint32_t max_block_dim[3];
    uint32_t max_grid_dim[3];
    uint32_t memory_alignment;        /* row pitch alignment in bytes; 0 means 256 */
    phi3v_dialect dialect;            /* the source dialect the compiler takes */
    uint32_t arch_version;            /* CUDA dialect: compute capability major*10+minor; else 0 */
    char arch_name[64];               /* HIP dialect: gfx target (e.g. "gfx90a"); CUDA: "sm_90" */
    uint64_t dtypes;                  /* PHI3V_DTYPE_* bitmask */
} phi3v_device_properties;

/* ---- identification ---------------------------------------------------- */

/* Returns PHI3V_PLUGIN_ABI_VERSION as the plugin was built. Called first;
 * nothing else is called if it differs from the runtime's. */
uint32_t phi3v_plugin_abi_version(void);
/* PHI3V_CAP_* bitmask. */
uint64_t phi3v_plugin_capabilities(void);
/* Static NUL-terminated description of a status this plugin returned. */
const char *phi3v_plugin_status_string(phi3v_status status);

/* ---- devices ------------------------------------------------------------ */

/* Initialises the driver if needed. A driver with no devices is a success with
 * *count = 0; no usable driver or SDK is PHI3V_ERROR_NO_DEVICE, and
 * phi3v_plugin_status_string(PHI3V_ERROR_NO_DEVICE) then says what is missing. */
phi3v_status phi3v_plugin_device_count(int32_t *count);
phi3v_status phi3v_plugin_device_properties(int32_t device, phi3v_device_properties *props);
/* One context per device for the process; the runtime creates it once. */
phi3v_status phi3v_plugin_context_create(int32_t device, phi3v_context *ctx);
phi3v_status phi3v_plugin_context_destroy(phi3v_context ctx);
phi3v_status phi3v_plugin_mem_info(phi3v_context ctx, uint64_t *free_bytes, uint64_t *total_bytes);

/* ---- memory ------------------------------------------------------------- */

/* Device allocation, usable by work enqueued on `stream` after this call (the
 * plugin may allocate synchronously). Alignment at least 256 bytes. */
phi3v_status phi3v_plugin_malloc(phi3v_context ctx, uint64_t bytes, phi3v_stream stream, phi3v_devptr *ptr);
/* Frees after the work enqueued on `stream` so far (or synchronously). */
phi3v_status phi3v_plugin_free(phi3v_context ctx, phi3v_devptr ptr, phi3v_stream stream);
/* OPTIONAL (PHI3V_CAP_PINNED_HOST): page-locked host memory for staging.
 * Fallback: ordinary heap memory. */
phi3v_status phi3v_plugin_host_alloc(phi3v_context ctx, uint64_t bytes, void **ptr);
phi3v_status phi3v_plugin_host_free(phi3v_context ctx, void *ptr);

phi3v_status phi3v_plugin_memcpy_h2d_async(phi3v_context ctx, phi3v_devptr dst, const void *src, uint64_t bytes, phi3v_stream stream);
phi3v_status phi3v_plugin_memcpy_d2h_async(phi3v_context ctx, void *dst, phi3v_devptr src, uint64_t bytes, phi3v_stream stream);
phi3v_status phi3v_plugin_memcpy_d2d_async(phi3v_context ctx, phi3v_devptr dst, phi3v_devptr src, uint64_t bytes, phi3v_stream stream);

/* OPTIONAL (PHI3V_CAP_MEMCPY_2D): `height` rows of `width_bytes` each, rows
 * `dst_pitch` / `src_pitch` bytes apart. Fallback: one 1-D copy per row. */
typedef uint32_t phi3v_copy_kind;
#define PHI3V_COPY_H2D 1u /* src: host pointer, dst: device pointer */
#define PHI3V_COPY_D2H 2u /* src: device pointer, dst: host pointer */
phi3v_status phi3v_plugin_memcpy_2d_async(phi3v_context ctx, phi3v_copy_kind kind, uint64_t dst, uint64_t dst_pitch,
                                          uint64_t src, uint64_t src_pitch, uint64_t width_bytes, uint64_t height,
                                          phi3v_stream stream);

/* ---- streams and events -------------------------------------------------- */

/* A stream that does not synchronise with other streams implicitly. */
phi3v_status phi3v_plugin_stream_create(phi3v_context ctx, phi3v_stream *stream);
phi3v_status phi3v_plugin_stream_destroy(phi3v_context ctx, phi3v_stream stream);
phi3v_status phi3v_plugin_stream_synchronize(phi3v_context ctx, phi3v_stream stream);
/* Creates an event and records it on `stream` (a fence after the work so far). */
phi3v_status phi3v_plugin_event_record(phi3v_context ctx, phi3v_stream stream, phi3v_event *event);
/* Makes later work on `stream` wait for `event`, without blocking the host. */
phi3v_status phi3v_plugin_event_wait(phi3v_context ctx, phi3v_stream stream, phi3v_event event);
/* Blocks the host until `event` has completed. */
phi3v_status phi3v_plugin_event_synchronize(phi3v_context ctx, phi3v_event event);
phi3v_status phi3v_plugin_event_destroy(phi3v_context ctx, phi3v_event event);

/* ---- kernels ------------------------------------------------------------ */

/* Compiles NUL-terminated `source` in `dialect` and loads it as a module.
 * `name` names the kernel (for logs and saved sources). `options` are
 * compiler flags in the dialect's conventions (NVRTC/hiprtc style, e.g.
 * "--std=c++17"); the plugin may add its own (architecture, include paths)
 * and ignore ones it does not understand. On PHI3V_ERROR_COMPILE the plugin
 * sets *log (if log is not null) to a NUL-terminated message the caller
 * releases with phi3v_plugin_string_free; on other outcomes *log is null. */
phi3v_status phi3v_plugin_module_compile(phi3v_context ctx, phi3v_dialect dialect, const char *source, const char *name,
                                         const char *const *options, uint32_t num_options, phi3v_module *module,
                                         char **log);
phi3v_status phi3v_plugin_module_unload(phi3v_context ctx, phi3v_module module);
void phi3v_plugin_string_free(char *s);
phi3v_status phi3v_plugin_module_get_function(phi3v_context ctx, phi3v_module module, const char *name,
                                              phi3v_function *function);
/* Launches grid[0..3] blocks of block[0..3] threads with `shared_mem_bytes`
 * of dynamic shared memory (the plugin raises the function's opt-in limit if
 * its driver needs that). args[i] points at the value of parameter i (a
 * device pointer for a buffer, or the struct itself for a grid constant),
 * exactly as cuLaunchKernel's kernelParams. */
phi3v_status phi3v_plugin_launch(phi3v_context ctx, phi3v_function function, const uint32_t grid[3],
                                 const uint32_t block[3], uint32_t shared_mem_bytes, phi3v_stream stream,
                                 void **args, uint32_t num_args);

#ifdef __cplusplus
}
#endif

#endif /* PHI3V_DEVICE_PLUGIN_H */
