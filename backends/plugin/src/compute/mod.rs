//! The compute server: CubeCL's server traits implemented over [`Driver`] calls.
//!
//! The structure follows cubecl-hip / cubecl-cuda 0.10 (`compute/` in those crates): a server
//! owning a kernel context and a pool of streams, each stream with its own device memory pool,
//! pinned staging pool and pending-drop queue synchronised by fences.

pub(crate) mod command;
pub(crate) mod context;
pub(crate) mod fence;
pub(crate) mod server;
pub(crate) mod storage;
pub(crate) mod stream;

pub use server::PluginServer;

use crate::error::PluginError;
use crate::ffi;
use crate::library::PluginLibrary;
use cubecl_common::backtrace::BackTrace;
use cubecl_core::server::{IoError, ServerError};

pub(crate) const MB: usize = 1024 * 1024;

/// A device's context in its plugin: every driver call goes through this pair.
#[derive(Clone, Copy)]
pub(crate) struct Driver {
    pub lib: &'static PluginLibrary,
    pub ctx: ffi::Context,
}

// SAFETY: the header requires plugins to accept calls on any thread (never concurrently on one
// stream, which CubeCL's server lock and stream pool guarantee); the context handle is opaque.
unsafe impl Send for Driver {}
// SAFETY: as above; `Driver` is an immutable pair of a leaked library and an opaque handle.
unsafe impl Sync for Driver {}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Driver({})", self.lib.path().display())
    }
}

pub(crate) fn io_error(err: PluginError) -> IoError {
    IoError::Unknown { description: err.to_string(), backtrace: BackTrace::capture() }
}

pub(crate) fn server_error(err: PluginError) -> ServerError {
    ServerError::Generic { reason: err.to_string(), backtrace: BackTrace::capture() }
}
