//! The reference phi3v device plugin, `libphi3v_plugin_cuda.so`: `phi3v_device_plugin.h` over
//! the NVIDIA driver API and NVRTC ([`phi3v_plugin_cuda_driver`]) with every capability on.
//! Nothing else depends on this crate: the implementation lives in `phi3v-plugin-cuda-driver`,
//! which CUDA-compatible shims (`backends/iluvatar`) use with their own profile.

phi3v_plugin_cuda_driver::export_plugin!(phi3v_plugin_cuda_driver::NVIDIA);
