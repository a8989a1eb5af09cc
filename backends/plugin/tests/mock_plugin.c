/*
 * A host-memory "device" implementing phi3v_device_plugin.h, for the runtime's tests: device
 * memory is heap memory, copies are memcpy, streams and events are no-ops, and every kernel
 * fails to compile with a log. Variants for the error paths:
 *   -DMOCK_ABI_VERSION=N  report another ABI version
 *   -DMOCK_OMIT_LAUNCH    leave phi3v_plugin_launch out
 *   -DMOCK_DEVICES=N      report N devices (default 1)
 *   -DMOCK_HIP            report the HIP dialect
 */
#include "phi3v_device_plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MOCK_ABI_VERSION
#define MOCK_ABI_VERSION PHI3V_PLUGIN_ABI_VERSION
#endif
#ifndef MOCK_DEVICES
#define MOCK_DEVICES 1
#endif

static int token; /* handles point here: non-null and never dereferenced */

uint32_t phi3v_plugin_abi_version(void) { return MOCK_ABI_VERSION; }
uint64_t phi3v_plugin_capabilities(void) { return 0; }
const char *phi3v_plugin_status_string(phi3v_status s) {
    return s == PHI3V_ERROR_COMPILE ? "mock: kernels do not compile here" : "mock: failure";
}
phi3v_status phi3v_plugin_device_count(int32_t *count) {
    *count = MOCK_DEVICES;
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_device_properties(int32_t device, phi3v_device_properties *p) {
    if (device < 0 || device >= MOCK_DEVICES) return PHI3V_ERROR_NO_DEVICE;
    size_t n = p->struct_size < sizeof *p ? p->struct_size : sizeof *p;
    phi3v_device_properties q;
    memset(&q, 0, sizeof q);
    snprintf(q.name, sizeof q.name, "mock host device %d", device);
    q.total_memory = 1ull << 30;
    q.free_memory = 1ull << 30;
    q.compute_units = 1;
    q.warp_size = 32;
    q.max_shared_memory_per_block = 48 * 1024;
    q.max_threads_per_block = 1024;
    q.max_block_dim[0] = q.max_block_dim[1] = 1024;
    q.max_block_dim[2] = 64;
    q.max_grid_dim[0] = 0x7fffffff;
    q.max_grid_dim[1] = q.max_grid_dim[2] = 65535;
    q.memory_alignment = 256;
#ifdef MOCK_HIP
    q.dialect = PHI3V_DIALECT_HIP;
#else
    q.dialect = PHI3V_DIALECT_CUDA;
#endif
    q.arch_version = 0;
    q.dtypes = PHI3V_DTYPE_F32 | PHI3V_DTYPE_I32 | PHI3V_DTYPE_U32 | PHI3V_DTYPE_U8;
    memcpy((char *)p + 4, (char *)&q + 4, n - 4);
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_context_create(int32_t device, phi3v_context *ctx) {
    if (device < 0 || device >= MOCK_DEVICES) return PHI3V_ERROR_NO_DEVICE;
    *ctx = (phi3v_context)&token;
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_context_destroy(phi3v_context ctx) { (void)ctx; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_mem_info(phi3v_context ctx, uint64_t *f, uint64_t *t) {
    (void)ctx;
    *f = *t = 1ull << 30;
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_malloc(phi3v_context ctx, uint64_t bytes, phi3v_stream s, phi3v_devptr *ptr) {
    (void)ctx; (void)s;
    void *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!p) return PHI3V_ERROR_OUT_OF_MEMORY;
    *ptr = (phi3v_devptr)(uintptr_t)p;
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_free(phi3v_context ctx, phi3v_devptr ptr, phi3v_stream s) {
    (void)ctx; (void)s;
    free((void *)(uintptr_t)ptr);
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_memcpy_h2d_async(phi3v_context c, phi3v_devptr d, const void *s, uint64_t n, phi3v_stream st) {
    (void)c; (void)st;
    memcpy((void *)(uintptr_t)d, s, n);
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_memcpy_d2h_async(phi3v_context c, void *d, phi3v_devptr s, uint64_t n, phi3v_stream st) {
    (void)c; (void)st;
    memcpy(d, (const void *)(uintptr_t)s, n);
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_memcpy_d2d_async(phi3v_context c, phi3v_devptr d, phi3v_devptr s, uint64_t n, phi3v_stream st) {
    (void)c; (void)st;
    memmove((void *)(uintptr_t)d, (const void *)(uintptr_t)s, n);
    return PHI3V_SUCCESS;
}
phi3v_status phi3v_plugin_stream_create(phi3v_context c, phi3v_stream *s) { (void)c; *s = (phi3v_stream)&token; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_stream_destroy(phi3v_context c, phi3v_stream s) { (void)c; (void)s; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_stream_synchronize(phi3v_context c, phi3v_stream s) { (void)c; (void)s; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_event_record(phi3v_context c, phi3v_stream s, phi3v_event *e) { (void)c; (void)s; *e = (phi3v_event)&token; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_event_wait(phi3v_context c, phi3v_stream s, phi3v_event e) { (void)c; (void)s; (void)e; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_event_synchronize(phi3v_context c, phi3v_event e) { (void)c; (void)e; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_event_destroy(phi3v_context c, phi3v_event e) { (void)c; (void)e; return PHI3V_SUCCESS; }
phi3v_status phi3v_plugin_module_compile(phi3v_context c, phi3v_dialect d, const char *src, const char *name,
                                         const char *const *opts, uint32_t n, phi3v_module *m, char **log) {
    (void)c; (void)d; (void)src; (void)opts; (void)n; (void)m;
    if (log) {
        const char *fmt = "mock.cu(1): error: the mock plugin compiles nothing (kernel %s)";
        size_t len = strlen(fmt) + strlen(name) + 1;
        *log = malloc(len);
        if (*log) snprintf(*log, len, fmt, name);
    }
    return PHI3V_ERROR_COMPILE;
}
phi3v_status phi3v_plugin_module_unload(phi3v_context c, phi3v_module m) { (void)c; (void)m; return PHI3V_SUCCESS; }
void phi3v_plugin_string_free(char *s) { free(s); }
phi3v_status phi3v_plugin_module_get_function(phi3v_context c, phi3v_module m, const char *name, phi3v_function *f) {
    (void)c; (void)m; (void)name; (void)f;
    return PHI3V_ERROR_NOT_FOUND;
}
#ifndef MOCK_OMIT_LAUNCH
phi3v_status phi3v_plugin_launch(phi3v_context c, phi3v_function f, const uint32_t g[3], const uint32_t b[3],
                                 uint32_t shm, phi3v_stream s, void **args, uint32_t n) {
    (void)c; (void)f; (void)g; (void)b; (void)shm; (void)s; (void)args; (void)n;
    return PHI3V_ERROR_LAUNCH;
}
#endif
