use super::context::PluginContext;
use super::fence::Fence;
use super::storage::{GpuResource, StagingController};
use super::stream::PluginStreamBackend;
use super::{Driver, MB, io_error};
use crate::ffi;
use crate::runtime::PluginDialect;
use cubecl_common::{backtrace::BackTrace, bytes::Bytes, stream_id::StreamId};
use cubecl_core::{
    MemoryUsage,
    bytes::AllocationProperty,
    future::DynFut,
    server::{
        Binding, CopyDescriptor, ExecutionMode, Handle, IoError, LaunchError, ProfileError,
        ServerError,
    },
    zspace::{Shape, Strides, striding::has_pitched_row_major_strides},
};
use cubecl_cpp::shared::CppCompiler;
use cubecl_runtime::{
    compiler::CubeTask,
    id::KernelId,
    logging::ServerLogger,
    memory_management::{ManagedMemoryHandle, MemoryAllocationMode, MemoryHandle},
    stream::ResolvedStreams,
};
use std::ffi::c_void;
use std::sync::Arc;

/// One server operation: the device's kernel context and the streams it touches.
pub(crate) struct Command<'a, D: PluginDialect> {
    ctx: &'a mut PluginContext<D>,
    pub(crate) streams: ResolvedStreams<'a, PluginStreamBackend>,
}

/// A pitched row-major copy: `height` rows of `width` bytes, `pitch` bytes apart on the device.
struct Rows {
    width: u64,
    height: u64,
    pitch: u64,
}

fn rows(shape: &Shape, strides: &Strides, elem_size: usize) -> Result<Rows, IoError> {
    if !has_pitched_row_major_strides(shape, strides) {
        return Err(IoError::UnsupportedStrides { backtrace: BackTrace::capture() });
    }
    let rank = shape.len();
    if rank <= 1 {
        let width = (shape.iter().product::<usize>() * elem_size) as u64;
        return Ok(Rows { width, height: 1, pitch: width });
    }
    let width = (shape[rank - 1] * elem_size) as u64;
    let height = shape[..rank - 1].iter().product::<usize>() as u64;
    Ok(Rows { width, height, pitch: (strides[rank - 2] * elem_size) as u64 })
}

impl<'a, D: PluginDialect> Command<'a, D> {
    pub fn new(
        ctx: &'a mut PluginContext<D>,
        streams: ResolvedStreams<'a, PluginStreamBackend>,
    ) -> Self {
        Self { ctx, streams }
    }

    fn driver(&self) -> Driver {
        self.ctx.driver
    }

    pub fn resource(&mut self, binding: Binding) -> Result<GpuResource, IoError> {
        self.streams.get(&binding.stream).memory_management_gpu.get_resource(
            binding.memory,
            binding.offset_start,
            binding.offset_end,
        )
    }

    pub fn memory_usage(&mut self) -> MemoryUsage {
        self.streams.current().memory_management_gpu.memory_usage()
    }

    pub fn memory_cleanup(&mut self) {
        self.streams.current().memory_management_gpu.cleanup(true)
    }

    pub fn allocation_mode(&mut self, mode: MemoryAllocationMode) {
        self.streams.current().memory_management_gpu.mode(mode)
    }

    pub fn reserve(&mut self, size: u64) -> Result<ManagedMemoryHandle, IoError> {
        self.streams.current().memory_management_gpu.reserve(size)
    }

    pub fn empty(&mut self, size: u64) -> Result<Handle, IoError> {
        let handle = Handle::new(self.streams.current, size);
        let reserved = self.reserve(size)?;
        self.bind(reserved, handle.memory.clone())?;
        Ok(handle)
    }

    pub fn bind(
        &mut self,
        reserved: ManagedMemoryHandle,
        new: ManagedMemoryHandle,
    ) -> Result<(), IoError> {
        let cursor = self.streams.cursor;
        self.streams.current().memory_management_gpu.bind(reserved, new, cursor)
    }

    /// Host memory for `size` bytes: staging memory for transfers up to 100 MB (or when asked),
    /// plain heap memory above that.
    pub fn reserve_cpu(&mut self, size: usize, marked_pinned: bool, origin: Option<StreamId>) -> Bytes {
        if !marked_pinned && size > 100 * MB {
            return Bytes::from_bytes_vec(vec![0; size]);
        }
        self.reserve_staging(size, origin).unwrap_or_else(|| Bytes::from_bytes_vec(vec![0; size]))
    }

    fn reserve_staging(&mut self, size: usize, origin: Option<StreamId>) -> Option<Bytes> {
        let stream = match origin {
            Some(id) => self.streams.get(&id),
            None => self.streams.current(),
        };
        let handle = stream.memory_management_cpu.reserve(size as u64).ok()?;
        let binding = MemoryHandle::binding(handle);
        let resource =
            stream.memory_management_cpu.get_resource(binding.clone(), None, None).ok()?;
        let controller = Box::new(StagingController::new(binding, resource));
        // SAFETY: the controller's memory holds at least `size` bytes.
        Some(unsafe { Bytes::from_controller(controller, size) })
    }

    /// Enqueues device → host copies and returns a future resolving once they completed.
    pub fn read_async(
        &mut self,
        descriptors: Vec<CopyDescriptor>,
    ) -> impl Future<Output = Result<Vec<Bytes>, ServerError>> + Send + use<D> {
        // Keep the device buffers alive until the copies are done.
        let handles: Vec<_> = descriptors.iter().map(|d| d.handle.clone()).collect();
        let mut result = Ok(Vec::with_capacity(descriptors.len()));
        for descriptor in descriptors {
            let size = descriptor.shape.iter().product::<usize>() * descriptor.elem_size;
            let mut bytes = self.reserve_cpu(size, true, None);
            match self.write_to_cpu(descriptor, &mut bytes) {
                Ok(()) => {
                    if let Ok(all) = result.as_mut() {
                        all.push(bytes);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let fence = Fence::new(self.driver(), self.streams.current().sys);
        async move {
            let synced = fence.wait_sync();
            drop(handles);
            synced?;
            Ok(result?)
        }
    }

    /// Enqueues a copy of the descriptor's device memory into `bytes`.
    pub fn write_to_cpu(&mut self, descriptor: CopyDescriptor, bytes: &mut Bytes) -> Result<(), IoError> {
        let CopyDescriptor { handle, shape, strides, elem_size } = descriptor;
        let rows = rows(&shape, &strides, elem_size)?;
        if (bytes.len() as u64) < rows.width * rows.height {
            return Err(IoError::Unknown {
                description: "host buffer smaller than the copy".into(),
                backtrace: BackTrace::capture(),
            });
        }
        let resource = self.resource(handle)?;
        let Driver { lib, ctx } = self.driver();
        let stream = self.streams.current().sys;
        // SAFETY: `bytes` holds width * height bytes and outlives the fence the caller waits on;
        // the device range lies inside `resource` (checked pitched layout from CubeCL).
        unsafe {
            lib.memcpy_2d(
                ctx,
                ffi::COPY_D2H,
                bytes.as_mut_ptr() as u64,
                rows.width,
                resource.ptr,
                rows.pitch,
                rows.width,
                rows.height,
                stream,
            )
        }
        .map_err(io_error)
    }

    /// Enqueues a copy of `data` into the descriptor's device memory. `data` is kept alive by
    /// the stream's drop queue until a later fence.
    pub fn write_to_gpu(&mut self, descriptor: CopyDescriptor, data: Bytes) -> Result<(), IoError> {
        let CopyDescriptor { handle, shape, strides, elem_size } = descriptor;
        let rows = rows(&shape, &strides, elem_size)?;
        if (data.len() as u64) < rows.width * rows.height {
            return Err(IoError::Unknown {
                description: "host data smaller than the copy".into(),
                backtrace: BackTrace::capture(),
            });
        }
        let resource = self.resource(handle)?;
        // Memory-mapped data cannot be handed to an asynchronous copy: stage it first.
        let data = match data.property() {
            AllocationProperty::File => {
                let mut staging = self.reserve_staging(data.len(), None).ok_or_else(|| {
                    IoError::Unknown {
                        description: "no staging memory for a file-backed upload".into(),
                        backtrace: BackTrace::capture(),
                    }
                })?;
                data.copy_into(&mut staging);
                staging
            }
            _ => data,
        };
        let Driver { lib, ctx } = self.driver();
        let current = self.streams.current();
        // SAFETY: `data` holds width * height bytes and is kept alive by the drop queue until a
        // fence after this copy; the device range lies inside `resource`.
        unsafe {
            lib.memcpy_2d(
                ctx,
                ffi::COPY_H2D,
                resource.ptr,
                rows.pitch,
                data.as_ptr() as *const c_void as u64,
                rows.width,
                rows.width,
                rows.height,
                current.sys,
            )
        }
        .map_err(io_error)?;
        current.drop_queue.push(data);
        Ok(())
    }

    /// A new device buffer holding `data`.
    pub fn create_with_data(&mut self, data: &[u8]) -> Result<Handle, IoError> {
        let mut staging = self.reserve_cpu(data.len(), true, None);
        staging.copy_from_slice(data);
        let handle = self.empty(data.len() as u64)?;
        self.write_to_gpu(
            CopyDescriptor {
                handle: handle.clone().binding(),
                shape: [data.len()].into(),
                strides: [1].into(),
                elem_size: 1,
            },
            staging,
        )?;
        Ok(handle)
    }

    pub fn sync(&mut self) -> DynFut<Result<(), ServerError>> {
        let fence = Fence::new(self.driver(), self.streams.current().sys);
        Box::pin(async move { fence.wait_sync() })
    }

    /// Compiles the kernel on first use, then launches it on the current stream.
    #[allow(clippy::too_many_arguments)]
    pub fn kernel(
        &mut self,
        kernel_id: KernelId,
        kernel: Box<dyn CubeTask<CppCompiler<D::Dialect>>>,
        mode: ExecutionMode,
        dispatch_count: (u32, u32, u32),
        resources: &[GpuResource],
        const_info: Option<*mut c_void>,
        logger: Arc<ServerLogger>,
    ) -> Result<(), LaunchError> {
        if !self.ctx.kernels.contains_key(&kernel_id) {
            self.ctx.compile_kernel(&kernel_id, kernel, mode, logger)?;
        }
        let stream = self.streams.current();
        let result = self.ctx.execute_task(stream, &kernel_id, dispatch_count, resources, const_info);
        if stream.drop_queue.should_flush() {
            let (driver, sys) = (stream.driver, stream.sys);
            stream.drop_queue.flush(|| Fence::new(driver, sys));
        }
        if let Err(err) = result {
            if self.ctx.timestamps.is_empty() {
                return Err(err);
            }
            self.ctx.timestamps.error(ProfileError::Launch(err));
        }
        Ok(())
    }

    pub fn error(&mut self, error: ServerError) {
        self.streams.current().errors.push(error);
    }
}
