#![deny(missing_docs)]
//! What a burn-phi3v backend crate reports about a device, shared by the backend crates and
//! `burn-phi3v` (which re-exports it as `burn_phi3v::device`). The model never reads it: front
//! ends use it to pick a device and a dtype.

use burn::tensor::DType;

/// One device a backend offers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device string that selects it (`cpu`, `cuda:0`, `wgpu:1`, …).
    pub spec: String,
    /// Backend family (`cpu`, `cuda`, `wgpu`).
    pub backend: &'static str,
    /// Index within the family.
    pub index: usize,
    /// Human-readable name as the runtime reports it.
    pub name: String,
    /// Total memory in bytes, where the runtime tells.
    pub total_memory: Option<u64>,
    /// Free memory in bytes, where the runtime tells.
    pub free_memory: Option<u64>,
    /// Float compute dtypes supported for the model.
    pub dtypes: Vec<DType>,
    /// Default compute dtype.
    pub default_dtype: DType,
}

/// Parses `f32`, `f16`, `bf16` (also `float32`, `float16`, `bfloat16`).
pub fn parse_dtype(s: &str) -> Option<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => Some(DType::F32),
        "f16" | "float16" | "fp16" | "half" => Some(DType::F16),
        "bf16" | "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

/// The short name of a float dtype (`f32`, `f16`, `bf16`).
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}
