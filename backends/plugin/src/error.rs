use std::path::PathBuf;

/// Everything that can go wrong between the runtime and a plugin, each naming its cause.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin library {path} could not be loaded: {reason}")]
    LibraryNotFound { path: PathBuf, reason: String },
    #[error("{path} is not a phi3v device plugin: it does not export `{symbol}`")]
    MissingSymbol { path: PathBuf, symbol: String },
    #[error(
        "{path} implements phi3v plugin ABI version {found}, this build speaks version {expected}"
    )]
    AbiVersionMismatch { path: PathBuf, found: u32, expected: u32 },
    #[error("plugin device {index} out of range: {path} reports {count} device(s)")]
    DeviceOutOfRange { path: PathBuf, index: usize, count: usize },
    #[error("{path}: {call} failed with status {status}: {message}")]
    Driver { path: PathBuf, call: &'static str, status: i32, message: String },
    #[error("{path}: kernel `{kernel}` failed to compile:\n{log}")]
    Compile { path: PathBuf, kernel: String, log: String },
    #[error("{path}: device {index} asks for kernel dialect {dialect}, which this runtime does not generate (1 = CUDA, 2 = HIP)")]
    UnsupportedDialect { path: PathBuf, index: usize, dialect: u32 },
    #[error("invalid plugin device string {0:?}: expected plugin:PATH_TO_LIBRARY[:N] (or `plugin` with PHI3V_PLUGIN set)")]
    InvalidDeviceString(String),
    #[error("device `plugin` needs a library: set PHI3V_PLUGIN=PATH_TO_LIBRARY[:N] or write plugin:PATH[:N]")]
    NoPluginConfigured,
    #[error("too many plugin devices opened in this process (at most {0})")]
    TooManyDevices(usize),
}
