use super::command::Command;
use super::context::PluginContext;
use super::fence::Fence;
use super::storage::{GpuResource, GpuStorage};
use super::stream::PluginStreamBackend;
use crate::runtime::PluginDialect;
use cubecl_common::{bytes::Bytes, future::DynFut, profile::ProfileDuration, stream_id::StreamId};
use cubecl_core::{
    backtrace::BackTrace,
    future,
    prelude::*,
    server::{
        Binding, CopyDescriptor, KernelArguments, ProfileError, ProfilingToken,
        ServerCommunication, ServerError, ServerUtilities, StreamErrorMode,
    },
};
use cubecl_cpp::shared::CppCompiler;
use cubecl_runtime::{
    allocator::PitchedMemoryLayoutPolicy,
    compiler::CubeTask,
    config::{CubeClRuntimeConfig, RuntimeConfig},
    logging::ServerLogger,
    memory_management::{ManagedMemoryHandle, MemoryAllocationMode, MemoryUsage},
    server::ComputeServer,
    storage::{ComputeStorage, ManagedResource},
    stream::MultiStream,
};
use std::ffi::c_void;
use std::sync::Arc;

/// CubeCL's compute server for one plugin device.
pub struct PluginServer<D: PluginDialect> {
    ctx: PluginContext<D>,
    streams: MultiStream<PluginStreamBackend>,
    utilities: Arc<ServerUtilities<Self>>,
}

impl<D: PluginDialect> std::fmt::Debug for PluginServer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginServer").field("ctx", &self.ctx).finish()
    }
}

// SAFETY: CubeCL serialises all access to a server (its device handle's lock); the plugin
// handles it owns may be used from any thread (the header's threading rule).
unsafe impl<D: PluginDialect> Send for PluginServer<D> {}

const REPORT: StreamErrorMode = StreamErrorMode { ignore: false, flush: true };
const IGNORE: StreamErrorMode = StreamErrorMode { ignore: true, flush: false };

impl<D: PluginDialect> PluginServer<D> {
    pub(crate) fn new(
        ctx: PluginContext<D>,
        backend: PluginStreamBackend,
        utilities: ServerUtilities<Self>,
    ) -> Self {
        let max_streams = CubeClRuntimeConfig::get().streaming.max_streams;
        Self {
            ctx,
            streams: MultiStream::new(utilities.logger.clone(), backend, max_streams),
            utilities: Arc::new(utilities),
        }
    }

    pub(crate) fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn command<'a>(
        &mut self,
        stream_id: StreamId,
        handles: impl Iterator<Item = &'a Binding>,
        mode: StreamErrorMode,
    ) -> Result<Command<'_, D>, ServerError> {
        if mode.flush {
            let errors = self.flush_errors(stream_id);
            if !mode.ignore && !errors.is_empty() {
                return Err(ServerError::ServerUnhealthy { errors, backtrace: BackTrace::capture() });
            }
        }
        let streams = self.streams.resolve(stream_id, handles, !mode.ignore)?;
        Ok(Command::new(&mut self.ctx, streams))
    }

    fn command_no_inputs(
        &mut self,
        stream_id: StreamId,
        mode: StreamErrorMode,
    ) -> Result<Command<'_, D>, ServerError> {
        self.command(stream_id, [].into_iter(), mode)
    }

    /// Takes the errors recorded on a stream; profiles in flight are marked as failed.
    fn flush_errors(&mut self, stream_id: StreamId) -> Vec<ServerError> {
        let Ok(mut stream) = self.streams.resolve(stream_id, [].into_iter(), false) else {
            return Vec::new();
        };
        let errors = std::mem::take(&mut stream.current().errors);
        if !errors.is_empty() {
            self.ctx.timestamps.error(ProfileError::Unknown {
                reason: format!("{errors:?}"),
                backtrace: BackTrace::capture(),
            });
            stream.current().memory_management_gpu.cleanup(false);
        }
        errors
    }

    fn launch_checked(
        &mut self,
        kernel: Box<dyn CubeTask<CppCompiler<D::Dialect>>>,
        count: CubeCount,
        bindings: KernelArguments,
        mode: ExecutionMode,
        stream_id: StreamId,
    ) -> Result<(), ServerError> {
        let mut kernel_id = kernel.id();
        kernel_id.mode(mode);
        let logger = self.streams.logger.clone();
        let grid_constants = self.ctx.compilation_options.supports_features.grid_constants;
        let KernelArguments { buffers, info, tensor_maps } = bindings;
        if !tensor_maps.is_empty() {
            // Not registered as a feature, so CubeCL should never ask.
            return Err(LaunchError::Unknown {
                reason: "tensor maps (TMA) are not part of the plugin ABI".into(),
                backtrace: BackTrace::capture(),
            }
            .into());
        }
        let mut command = self.command(stream_id, buffers.iter(), IGNORE)?;
        let count = match count {
            CubeCount::Static(x, y, z) => (x, y, z),
            // No device-side dispatch in the ABI: read the three counts back, as cubecl-cuda does.
            CubeCount::Dynamic(binding) => {
                let data = future::block_on(command.read_async(vec![CopyDescriptor::new(
                    binding,
                    [3].into(),
                    [1].into(),
                    4,
                )]))?;
                let counts: &[u32] = bytemuck::cast_slice(&data[0]);
                match counts {
                    [x, y, z] => (*x, *y, *z),
                    _ => {
                        return Err(LaunchError::Unknown {
                            reason: format!("dynamic cube count holds {} values, not 3", counts.len()),
                            backtrace: BackTrace::capture(),
                        }
                        .into());
                    }
                }
            }
        };
        // The kernel's info (shapes, strides, scalars): by value as a grid constant when the
        // plugin supports it (its dynamic part still in a buffer), else all in a buffer.
        let (const_info, info_handle) = if grid_constants {
            let dynamic = (info.dynamic_metadata_offset < info.data.len())
                .then(|| command.create_with_data(bytemuck::cast_slice(&info.data[info.dynamic_metadata_offset..])))
                .transpose()?;
            (Some(info.data.as_ptr() as *mut c_void), dynamic)
        } else {
            let handle = (!info.data.is_empty())
                .then(|| command.create_with_data(bytemuck::cast_slice(&info.data)))
                .transpose()?;
            (None, handle)
        };
        let mut resources: Vec<GpuResource> = Vec::with_capacity(buffers.len() + 1);
        for binding in buffers.into_iter().chain(info_handle.map(|h| h.binding())) {
            resources.push(command.resource(binding)?);
        }
        command.kernel(kernel_id, kernel, mode, count, &resources, const_info, logger)?;
        // `info` (the grid constant's storage) lives until here, after the launch copied it.
        drop(info);
        Ok(())
    }
}

impl<D: PluginDialect> ComputeServer for PluginServer<D> {
    type Kernel = Box<dyn CubeTask<CppCompiler<D::Dialect>>>;
    type Storage = GpuStorage;
    type MemoryLayoutPolicy = PitchedMemoryLayoutPolicy;
    type Info = ();

    fn logger(&self) -> Arc<ServerLogger> {
        self.streams.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn staging(&mut self, sizes: &[usize], stream_id: StreamId) -> Result<Vec<Bytes>, ServerError> {
        let mut command = self.command_no_inputs(stream_id, IGNORE)?;
        Ok(sizes.iter().map(|size| command.reserve_cpu(*size, true, None)).collect())
    }

    fn initialize_memory(&mut self, memory: ManagedMemoryHandle, size: u64, stream_id: StreamId) {
        let result = self.command_no_inputs(stream_id, IGNORE).and_then(|mut command| {
            let reserved = command.reserve(size)?;
            command.bind(reserved, memory)?;
            Ok(())
        });
        if let Err(err) = result {
            self.record_error(stream_id, err);
        }
    }

    fn read(
        &mut self,
        descriptors: Vec<CopyDescriptor>,
        stream_id: StreamId,
    ) -> DynFut<Result<Vec<Bytes>, ServerError>> {
        match self.command(stream_id, descriptors.iter().map(|d| &d.handle), REPORT) {
            Ok(mut command) => Box::pin(command.read_async(descriptors)),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn write(&mut self, descriptors: Vec<(CopyDescriptor, Bytes)>, stream_id: StreamId) {
        let handles: Vec<Binding> = descriptors.iter().map(|d| d.0.handle.clone()).collect();
        let result = self.command(stream_id, handles.iter(), IGNORE).map(|mut command| {
            for (descriptor, data) in descriptors {
                if let Err(err) = command.write_to_gpu(descriptor, data) {
                    command.error(err.into());
                    return;
                }
            }
        });
        if let Err(err) = result {
            self.record_error(stream_id, err);
        }
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        count: CubeCount,
        bindings: KernelArguments,
        mode: ExecutionMode,
        stream_id: StreamId,
    ) {
        if let Err(err) = self.launch_checked(kernel, count, bindings, mode, stream_id) {
            self.record_error(stream_id, err);
        }
    }

    fn flush(&mut self, stream_id: StreamId) -> Result<(), ServerError> {
        let mut command = self.command_no_inputs(stream_id, REPORT)?;
        let current = command.streams.current();
        let (driver, sys) = (current.driver, current.sys);
        current.drop_queue.flush(|| Fence::new(driver, sys));
        current.memory_management_gpu.storage().flush();
        Ok(())
    }

    fn sync(&mut self, stream_id: StreamId) -> DynFut<Result<(), ServerError>> {
        match self.command_no_inputs(stream_id, REPORT) {
            Ok(mut command) => command.sync(),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn start_profile(&mut self, stream_id: StreamId) -> Result<ProfilingToken, ServerError> {
        future::block_on(self.sync(stream_id))?;
        Ok(self.ctx.timestamps.start())
    }

    fn end_profile(
        &mut self,
        stream_id: StreamId,
        token: ProfilingToken,
    ) -> Result<ProfileDuration, ProfileError> {
        if let Err(err) = future::block_on(self.sync(stream_id)) {
            self.ctx.timestamps.error(ProfileError::Server(Box::new(err)));
        }
        self.ctx.timestamps.stop(token)
    }

    fn get_resource(
        &mut self,
        binding: Binding,
        stream_id: StreamId,
    ) -> Result<ManagedResource<GpuResource>, ServerError> {
        let mut command = self.command(stream_id, [&binding].into_iter(), IGNORE)?;
        let memory = binding.memory.clone();
        let resource = command.resource(binding)?;
        Ok(ManagedResource::new(memory, resource))
    }

    fn memory_usage(&mut self, stream_id: StreamId) -> Result<MemoryUsage, ServerError> {
        let mut command = self.command_no_inputs(stream_id, StreamErrorMode { ignore: false, flush: false })?;
        Ok(command.memory_usage())
    }

    fn memory_cleanup(&mut self, stream_id: StreamId) {
        if let Ok(mut command) = self.command_no_inputs(stream_id, IGNORE) {
            command.memory_cleanup();
        }
    }

    fn allocation_mode(&mut self, mode: MemoryAllocationMode, stream_id: StreamId) {
        if let Ok(mut command) = self.command_no_inputs(stream_id, IGNORE) {
            command.allocation_mode(mode);
        }
    }
}

impl<D: PluginDialect> PluginServer<D> {
    /// Records an error on the stream; the next read, sync or flush reports it.
    fn record_error(&mut self, stream_id: StreamId, err: ServerError) {
        match self.streams.resolve(stream_id, [].into_iter(), false) {
            Ok(mut stream) => stream.current().errors.push(err),
            Err(resolve) => log::error!("{err:?} (and the stream could not be resolved: {resolve:?})"),
        }
    }
}

impl<D: PluginDialect> ServerCommunication for PluginServer<D> {
    const SERVER_COMM_ENABLED: bool = false;
}
