use super::{Driver, server_error};
use crate::ffi;
use cubecl_core::server::ServerError;

/// An event recorded on a stream: everything enqueued before it is done once it completes.
/// CubeCL waits on fences outside the server lock (in read futures and its drop-queue thread).
pub struct Fence {
    driver: Driver,
    /// `Err` when recording failed; waiting then reports that failure.
    event: Result<ffi::Event, String>,
}

// SAFETY: the event is an opaque handle the header allows any thread to wait on and destroy;
// it is consumed by exactly one wait.
unsafe impl Send for Fence {}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fence")
    }
}

impl Fence {
    pub(crate) fn new(driver: Driver, stream: ffi::Stream) -> Self {
        // SAFETY: a live context and stream of this device (streams live as long as the server).
        let event = unsafe { driver.lib.event_record(driver.ctx, stream) }.map_err(|e| e.to_string());
        Self { driver, event }
    }

    /// Makes `stream` wait for this fence on the device, without blocking the host.
    pub(crate) fn wait_async(self, stream: ffi::Stream) {
        let Driver { lib, ctx } = self.driver;
        match self.event {
            // SAFETY: the event was recorded by this driver and is consumed here, once; the
            // stream is live.
            Ok(event) => unsafe {
                if let Err(e) = lib.event_wait(ctx, stream, event) {
                    // No device-side wait: fall back to waiting on the host, still correct.
                    log::warn!("{e}; synchronising on the host instead");
                    let _ = lib.event_synchronize(ctx, event);
                }
                let _ = lib.event_destroy(ctx, event);
            },
            Err(e) => log::warn!("fence was not recorded ({e}); nothing to wait for"),
        }
    }

    /// Blocks until the fence completes.
    pub(crate) fn wait_sync(self) -> Result<(), ServerError> {
        let Driver { lib, ctx } = self.driver;
        let event = self.event.map_err(|reason| ServerError::Generic {
            reason,
            backtrace: cubecl_common::backtrace::BackTrace::capture(),
        })?;
        // SAFETY: the event was recorded by this driver and is consumed here, once.
        let (waited, destroyed) =
            unsafe { (lib.event_synchronize(ctx, event), lib.event_destroy(ctx, event)) };
        waited.and(destroyed).map_err(server_error)
    }
}
