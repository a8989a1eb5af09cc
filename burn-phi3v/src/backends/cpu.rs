//! The CPU backend (feature `cpu`, default): Burn's Flex backend. One device, f32 compute.

use crate::device::DeviceInfo;
use burn::tensor::DType;

/// The Burn backend type for the CPU.
pub type Cpu = burn::backend::Flex;
/// Its device type.
pub type CpuDevice = burn::backend::flex::FlexDevice;

/// Float dtypes the model runs in here.
pub const DTYPES: [DType; 1] = [DType::F32];
/// The default compute dtype.
pub const DEFAULT_DTYPE: DType = DType::F32;

/// The CPU device (there is one).
pub fn device() -> CpuDevice {
    CpuDevice::default()
}

/// `/proc/meminfo` fields in bytes, on Linux.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{} ({threads} threads)", model.unwrap_or_else(|| std::env::consts::ARCH.to_string()))
}

/// The devices this backend offers.
pub fn devices() -> Vec<DeviceInfo> {
    vec![DeviceInfo {
        spec: "cpu".into(),
        backend: "cpu",
        index: 0,
        name: cpu_name(),
        total_memory: meminfo("MemTotal:"),
        free_memory: meminfo("MemAvailable:"),
        dtypes: DTYPES.to_vec(),
        default_dtype: DEFAULT_DTYPE,
    }]
}
