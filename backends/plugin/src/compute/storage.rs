//! Device memory and host staging memory as CubeCL `ComputeStorage`s.

use super::{Driver, io_error};
use crate::ffi;
use cubecl_common::backtrace::BackTrace;
use cubecl_common::bytes::{AllocationController, AllocationProperty};
use cubecl_core::server::IoError;
use cubecl_runtime::memory_management::ManagedMemoryBinding;
use cubecl_runtime::storage::{ComputeStorage, StorageHandle, StorageId, StorageUtilization};
use std::collections::HashMap;
use std::ffi::c_void;

/// Kernel arguments are passed as pointers to device-pointer values, which must stay put until
/// the launch call has read them: a ring of slots larger than any kernel's argument count.
pub(crate) const MAX_BINDINGS: u32 = 1024;

/// Device memory of one stream, allocated and freed in stream order.
pub struct GpuStorage {
    driver: Driver,
    stream: ffi::Stream,
    alignment: usize,
    memory: HashMap<StorageId, ffi::DevPtr>,
    deallocations: Vec<StorageId>,
    slots: Box<[u64]>,
    cursor: usize,
}

/// A range of device memory, with the address of a slot holding its pointer (the form a
/// launch takes its arguments in).
#[derive(Debug)]
pub struct GpuResource {
    pub ptr: ffi::DevPtr,
    pub binding: *mut c_void,
    pub size: u64,
}

// SAFETY: device addresses and a pointer into the owning storage's slot ring, used only under
// the server lock.
unsafe impl Send for GpuResource {}
// SAFETY: the storage is only used under the server lock; its handles are opaque.
unsafe impl Send for GpuStorage {}

impl std::fmt::Debug for GpuStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuStorage").field("allocations", &self.memory.len()).finish()
    }
}

impl GpuStorage {
    pub(crate) fn new(driver: Driver, stream: ffi::Stream, alignment: usize) -> Self {
        Self {
            driver,
            stream,
            alignment,
            memory: HashMap::new(),
            deallocations: Vec::new(),
            slots: vec![0; MAX_BINDINGS as usize].into_boxed_slice(),
            cursor: 0,
        }
    }
}

impl ComputeStorage for GpuStorage {
    type Resource = GpuResource;

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn get(&mut self, handle: &StorageHandle) -> GpuResource {
        // CubeCL only asks for handles it allocated here and has not deallocated.
        let base = self.memory[&handle.id];
        let ptr = base + handle.offset();
        let i = self.cursor;
        self.slots[i] = ptr;
        self.cursor = (i + 1) % self.slots.len();
        GpuResource { ptr, binding: (&mut self.slots[i]) as *mut u64 as *mut c_void, size: handle.size() }
    }

    fn alloc(&mut self, size: u64) -> Result<StorageHandle, IoError> {
        let Driver { lib, ctx } = self.driver;
        // SAFETY: this storage's live context and stream.
        let ptr = unsafe { lib.malloc(ctx, size, self.stream) }.map_err(|e| match e {
            crate::PluginError::Driver { status: ffi::ERROR_OUT_OF_MEMORY, .. } => {
                IoError::BufferTooBig { size, backtrace: BackTrace::capture() }
            }
            other => io_error(other),
        })?;
        let id = StorageId::new();
        self.memory.insert(id, ptr);
        Ok(StorageHandle::new(id, StorageUtilization { offset: 0, size }))
    }

    fn dealloc(&mut self, id: StorageId) {
        self.deallocations.push(id);
    }

    fn flush(&mut self) {
        let Driver { lib, ctx } = self.driver;
        for id in self.deallocations.drain(..) {
            if let Some(ptr) = self.memory.remove(&id)
                // SAFETY: allocated by `alloc` on this context and stream, freed once.
                && let Err(e) = unsafe { lib.free(ctx, ptr, self.stream) }
            {
                log::warn!("{e}");
            }
        }
    }
}

/// Alignment of host staging buffers.
pub(crate) const PINNED_ALIGNMENT: usize = 16;

/// Host staging memory: page-locked through the plugin when it can, heap memory otherwise.
pub struct PinnedMemoryStorage {
    driver: Driver,
    memory: HashMap<StorageId, HostBlock>,
}

struct HostBlock {
    ptr: *mut u8,
    size: usize,
    pinned: bool,
}

/// A range of host staging memory.
#[derive(Debug)]
pub struct PinnedResource {
    pub ptr: *mut u8,
    pub size: usize,
}

// SAFETY: host memory owned by the storage, accessed under the server lock or through the
// controller that keeps its binding alive.
unsafe impl Send for PinnedResource {}
// SAFETY: as above.
unsafe impl Send for PinnedMemoryStorage {}

impl std::fmt::Debug for PinnedMemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedMemoryStorage").field("allocations", &self.memory.len()).finish()
    }
}

impl PinnedMemoryStorage {
    pub(crate) fn new(driver: Driver) -> Self {
        Self { driver, memory: HashMap::new() }
    }

    fn heap_layout(size: usize) -> std::alloc::Layout {
        // Non-zero size and a power-of-two alignment: always a valid layout.
        std::alloc::Layout::from_size_align(size.max(1), PINNED_ALIGNMENT)
            .expect("valid staging layout")
    }
}

impl ComputeStorage for PinnedMemoryStorage {
    type Resource = PinnedResource;

    fn alignment(&self) -> usize {
        PINNED_ALIGNMENT
    }

    fn get(&mut self, handle: &StorageHandle) -> PinnedResource {
        let block = &self.memory[&handle.id];
        debug_assert!(handle.offset() as usize + handle.size() as usize <= block.size);
        // SAFETY: the handle's range lies inside the block (CubeCL's memory pool invariant).
        let ptr = unsafe { block.ptr.add(handle.offset() as usize) };
        PinnedResource { ptr, size: handle.size() as usize }
    }

    fn alloc(&mut self, size: u64) -> Result<StorageHandle, IoError> {
        let bytes = size as usize;
        let Driver { lib, ctx } = self.driver;
        // SAFETY: a live context.
        let block = match unsafe { lib.host_alloc(ctx, size) } {
            Some(ptr) => HostBlock { ptr: ptr as *mut u8, size: bytes, pinned: true },
            None => {
                // SAFETY: a valid, non-zero-sized layout.
                let ptr = unsafe { std::alloc::alloc(Self::heap_layout(bytes)) };
                if ptr.is_null() {
                    return Err(IoError::BufferTooBig { size, backtrace: BackTrace::capture() });
                }
                HostBlock { ptr, size: bytes, pinned: false }
            }
        };
        let id = StorageId::new();
        self.memory.insert(id, block);
        Ok(StorageHandle::new(id, StorageUtilization { offset: 0, size }))
    }

    fn dealloc(&mut self, id: StorageId) {
        let Some(block) = self.memory.remove(&id) else { return };
        if block.pinned {
            let Driver { lib, ctx } = self.driver;
            // SAFETY: allocated by host_alloc on this context, freed once.
            if let Err(e) = unsafe { lib.host_free(ctx, block.ptr as *mut c_void) } {
                log::warn!("{e}");
            }
        } else {
            // SAFETY: allocated above with this very layout, freed once.
            unsafe { std::alloc::dealloc(block.ptr, Self::heap_layout(block.size)) };
        }
    }

    fn flush(&mut self) {}
}

/// Lets a staging buffer be handed out as `Bytes` while its pool binding stays reserved.
pub(crate) struct StagingController {
    resource: PinnedResource,
    _binding: ManagedMemoryBinding,
}

impl StagingController {
    pub(crate) fn new(binding: ManagedMemoryBinding, resource: PinnedResource) -> Self {
        Self { resource, _binding: binding }
    }
}

impl AllocationController for StagingController {
    fn alloc_align(&self) -> usize {
        PINNED_ALIGNMENT
    }

    fn property(&self) -> AllocationProperty {
        AllocationProperty::Pinned
    }

    unsafe fn memory_mut(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        // SAFETY: `size` bytes at `ptr` belong to the binding held by this controller.
        unsafe { std::slice::from_raw_parts_mut(self.resource.ptr.cast(), self.resource.size) }
    }

    fn memory(&self) -> &[std::mem::MaybeUninit<u8>] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.resource.ptr.cast(), self.resource.size) }
    }
}
