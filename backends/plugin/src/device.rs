//! Plugin devices. CubeCL names a device by a 16-bit id only, so every (library, device index)
//! opened in this process gets a slot in a global table, and [`PluginDevice`] carries the slot.

use crate::error::PluginError;
use crate::library::{DeviceInfo, PluginLibrary};
use cubecl_common::device::{Device, DeviceId};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable read by `plugin` without a path: `PATH_TO_LIBRARY[:N]`.
pub const PLUGIN_ENV: &str = "PHI3V_PLUGIN";

/// CubeCL's device type id for plugin devices (its devices of other runtimes use 0 and up; the
/// id only has to be unique within one runtime type).
const TYPE_ID: u16 = 0;

/// One device of one plugin: a slot in the process-wide table filled by [`PluginDevice::open`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PluginDevice {
    slot: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub library: &'static PluginLibrary,
    pub index: usize,
}

struct Registry {
    /// Loaded libraries, by the path they were opened with (canonicalised when possible).
    /// Leaked on purpose: kernels and allocations reference them until the process exits.
    libraries: Vec<(PathBuf, &'static PluginLibrary)>,
    slots: Vec<Slot>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry { libraries: Vec::new(), slots: Vec::new() }))
}

/// Loads (once per path) the plugin library at `path`.
pub fn load_library(path: &Path) -> Result<&'static PluginLibrary, PluginError> {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, lib)) = reg.libraries.iter().find(|(p, _)| *p == key) {
        return Ok(lib);
    }
    let lib: &'static PluginLibrary = Box::leak(Box::new(PluginLibrary::load(path)?));
    reg.libraries.push((key, lib));
    Ok(lib)
}

/// A parsed `plugin:PATH[:N]` device string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub path: PathBuf,
    pub index: usize,
}

impl PluginSpec {
    /// Parses `plugin:PATH[:N]`, `plugin` / `plugin:N` (the library from `PHI3V_PLUGIN`), or a
    /// bare `PATH[:N]` as `PHI3V_PLUGIN` holds it. A trailing `:N` is an index only when N is
    /// all digits, so paths containing `:` still work when an index is given.
    pub fn parse(device: &str) -> Result<Self, PluginError> {
        let invalid = || PluginError::InvalidDeviceString(device.to_owned());
        let rest = if device == "plugin" {
            return Self::from_env(None);
        } else if let Some(rest) = device.strip_prefix("plugin:") {
            rest
        } else {
            device
        };
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            return Self::from_env(Some(rest.parse().map_err(|_| invalid())?));
        }
        let (path, index) = split_path_index(rest).ok_or_else(invalid)?;
        Ok(Self { path, index: index.unwrap_or(0) })
    }

    /// The library named by `PHI3V_PLUGIN` (`PATH[:N]`); an explicit `index` wins over N.
    fn from_env(index: Option<usize>) -> Result<Self, PluginError> {
        let value = std::env::var(PLUGIN_ENV).map_err(|_| PluginError::NoPluginConfigured)?;
        let (path, env_index) = split_path_index(&value)
            .ok_or_else(|| PluginError::InvalidDeviceString(format!("{PLUGIN_ENV}={value}")))?;
        Ok(Self { path, index: index.or(env_index).unwrap_or(0) })
    }
}

/// `PATH[:N]` → (PATH, N); `None` for an empty path or an index that does not fit.
fn split_path_index(s: &str) -> Option<(PathBuf, Option<usize>)> {
    let (path, index) = match s.rsplit_once(':') {
        Some((p, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (p, Some(n.parse().ok()?))
        }
        _ => (s, None),
    };
    (!path.is_empty()).then(|| (PathBuf::from(path), index))
}

impl PluginDevice {
    /// Opens device `index` of the plugin at `path`: loads the library, checks its ABI version,
    /// symbols and device count. The device's context is created on first use by CubeCL.
    pub fn open(path: impl AsRef<Path>, index: usize) -> Result<Self, PluginError> {
        let library = load_library(path.as_ref())?;
        let count = library.device_count()?;
        if index >= count {
            return Err(PluginError::DeviceOutOfRange {
                path: library.path().to_owned(),
                index,
                count,
            });
        }
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = reg
            .slots
            .iter()
            .position(|s| std::ptr::eq(s.library, library) && s.index == index)
        {
            return Ok(Self { slot: slot as u16 });
        }
        if reg.slots.len() >= u16::MAX as usize {
            return Err(PluginError::TooManyDevices(u16::MAX as usize));
        }
        reg.slots.push(Slot { library, index });
        Ok(Self { slot: (reg.slots.len() - 1) as u16 })
    }

    /// Opens the device a `plugin:PATH[:N]` string (or `PHI3V_PLUGIN`) names.
    pub fn from_device_string(device: &str) -> Result<Self, PluginError> {
        let spec = PluginSpec::parse(device)?;
        Self::open(&spec.path, spec.index)
    }

    /// Every device of the plugin at `path`.
    pub fn all(path: impl AsRef<Path>) -> Result<Vec<Self>, PluginError> {
        let library = load_library(path.as_ref())?;
        (0..library.device_count()?).map(|i| Self::open(path.as_ref(), i)).collect()
    }

    pub(crate) fn slot(&self) -> Option<Slot> {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.slots.get(self.slot as usize).cloned()
    }

    /// The library this device belongs to, or `None` for a device that was never opened (the
    /// `Default` device before any `open`).
    pub fn library(&self) -> Option<&'static PluginLibrary> {
        self.slot().map(|s| s.library)
    }

    /// The device's index within its plugin.
    pub fn index(&self) -> Option<usize> {
        self.slot().map(|s| s.index)
    }

    /// What the plugin reports about this device.
    pub fn info(&self) -> Result<DeviceInfo, PluginError> {
        let slot = self.slot().ok_or(PluginError::NoPluginConfigured)?;
        slot.library.device_info(slot.index)
    }
}

impl std::fmt::Debug for PluginDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.slot() {
            Some(s) => write!(f, "Plugin({}:{})", s.library.path().display(), s.index),
            None => write!(f, "Plugin(unopened slot {})", self.slot),
        }
    }
}

impl Device for PluginDevice {
    fn from_id(device_id: DeviceId) -> Self {
        Self { slot: device_id.index_id }
    }

    fn to_id(&self) -> DeviceId {
        DeviceId { type_id: TYPE_ID, index_id: self.slot }
    }
}

impl burn_backend::DeviceOps for PluginDevice {}

/// Resolves the slot CubeCL asks a server for. The `Default` device (slot 0) is opened from
/// `PHI3V_PLUGIN` when nothing was opened before, so `Default::default()` works with the
/// variable set; any other failure is reported as a message (CubeCL's `DeviceService::init`
/// cannot return an error: open devices with [`PluginDevice::open`] to get typed errors).
pub(crate) fn resolve(device: &PluginDevice) -> Result<Slot, PluginError> {
    if let Some(slot) = device.slot() {
        return Ok(slot);
    }
    if device.slot == 0 {
        let opened = PluginDevice::from_device_string("plugin")?;
        if let Some(slot) = opened.slot() {
            return Ok(slot);
        }
    }
    Err(PluginError::InvalidDeviceString(format!("{device:?}")))
}

/// The ids of every device opened so far.
pub(crate) fn opened_ids() -> Vec<DeviceId> {
    let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    (0..reg.slots.len()).map(|i| DeviceId { type_id: TYPE_ID, index_id: i as u16 }).collect()
}
