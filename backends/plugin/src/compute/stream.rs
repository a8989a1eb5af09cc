use super::Driver;
use super::fence::Fence;
use super::storage::{GpuStorage, PINNED_ALIGNMENT, PinnedMemoryStorage};
use crate::ffi;
use cubecl_core::MemoryConfiguration;
use cubecl_core::ir::MemoryDeviceProperties;
use cubecl_core::server::{Binding, ServerError};
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{
    MemoryAllocationMode, MemoryManagement, MemoryManagementOptions, drop_queue,
};
use cubecl_runtime::stream::EventStreamBackend;
use std::sync::Arc;

/// A plugin stream with the memory pools CubeCL keeps per stream.
#[derive(Debug)]
pub struct Stream {
    pub(crate) sys: ffi::Stream,
    pub(crate) driver: Driver,
    pub memory_management_gpu: MemoryManagement<GpuStorage>,
    pub memory_management_cpu: MemoryManagement<PinnedMemoryStorage>,
    pub errors: Vec<ServerError>,
    pub drop_queue: drop_queue::PendingDropQueue<Fence>,
}

impl drop_queue::Fence for Fence {
    fn sync(self) {
        if let Err(e) = self.wait_sync() {
            log::warn!("{e:?}");
        }
    }
}

#[derive(Debug)]
pub struct PluginStreamBackend {
    pub(crate) driver: Driver,
    pub(crate) mem_props: MemoryDeviceProperties,
    pub(crate) mem_config: MemoryConfiguration,
    pub(crate) mem_alignment: usize,
    pub(crate) logger: Arc<ServerLogger>,
}

impl EventStreamBackend for PluginStreamBackend {
    type Stream = Stream;
    type Event = Fence;

    fn create_stream(&self) -> Stream {
        let Driver { lib, ctx } = self.driver;
        // CubeCL's stream pool cannot take an error here; a plugin that cannot create a stream
        // on a device it opened is unusable, and the message names the call and the status.
        // SAFETY: the device's live context.
        let sys = unsafe { lib.stream_create(ctx) }.unwrap_or_else(|e| panic!("{e}"));
        let memory_management_gpu = MemoryManagement::from_configuration(
            GpuStorage::new(self.driver, sys, self.mem_alignment),
            &self.mem_props,
            self.mem_config.clone(),
            self.logger.clone(),
            MemoryManagementOptions::new("Plugin device memory"),
        );
        // Staging pool sized like the device pool, as cubecl-cuda/-hip do.
        let memory_management_cpu = MemoryManagement::from_configuration(
            PinnedMemoryStorage::new(self.driver),
            &MemoryDeviceProperties {
                max_page_size: self.mem_props.max_page_size,
                alignment: PINNED_ALIGNMENT as u64,
            },
            self.mem_config.clone(),
            self.logger.clone(),
            MemoryManagementOptions::new("Plugin host staging memory")
                .mode(MemoryAllocationMode::Auto),
        );
        Stream {
            sys,
            driver: self.driver,
            memory_management_gpu,
            memory_management_cpu,
            errors: Vec::new(),
            drop_queue: Default::default(),
        }
    }

    fn flush(stream: &mut Stream) -> Fence {
        Fence::new(stream.driver, stream.sys)
    }

    fn wait_event(stream: &mut Stream, event: Fence) {
        event.wait_async(stream.sys);
    }

    fn wait_event_sync(event: Fence) -> Result<(), ServerError> {
        event.wait_sync()
    }

    fn handle_cursor(stream: &Stream, binding: &Binding) -> u64 {
        stream.memory_management_gpu.get_cursor(binding.memory.clone())
            .expect("a binding resolved on this stream has a cursor")
    }

    fn is_healthy(stream: &Stream) -> bool {
        stream.errors.is_empty()
    }
}
