//! The CubeCL runtime over the mock plugin (host memory standing in for a device): allocation,
//! uploads, downloads and the server's error reporting, without a GPU.

mod common;

use cubecl_core::Runtime;
use phi3v_backend_plugin::{PluginCudaRuntime, PluginDevice, PluginHipRuntime};

#[test]
fn upload_and_read_back() {
    let Some(lib) = common::mock("roundtrip", &[]) else { return };
    let device = PluginDevice::open(&lib, 0).unwrap();
    assert_eq!(device.info().unwrap().name, "mock host device 0");
    let client = PluginCudaRuntime::client(&device);
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let handle = client.create_from_slice(&data);
    let back = client.read_one(handle).unwrap();
    assert_eq!(&back[..], &data[..]);
    // Many small buffers through the pools and staging memory.
    let handles: Vec<_> = (1..50u8).map(|n| client.create_from_slice(&vec![n; n as usize * 7])).collect();
    for (n, bytes) in (1..50u8).zip(client.read(handles)) {
        assert_eq!(&bytes[..], &vec![n; n as usize * 7][..]);
    }
    let props = client.properties();
    assert_eq!(props.hardware.plane_size_max, 32);
    assert_eq!(props.hardware.max_shared_memory_size, 48 * 1024);
}

#[test]
fn the_dtype_mask_removes_types() {
    use cubecl_core::ir::{ElemType, FloatKind, StorageType};
    let Some(lib) = common::mock("dtypes", &[]) else { return };
    let device = PluginDevice::open(&lib, 0).unwrap();
    let client = PluginCudaRuntime::client(&device);
    let types = &client.properties().features.types.storage;
    // The mock reports f32/i32/u32/u8 only.
    assert!(types.contains_key(&StorageType::Scalar(ElemType::Float(FloatKind::F32))));
    assert!(!types.contains_key(&StorageType::Scalar(ElemType::Float(FloatKind::F16))));
    assert!(!types.contains_key(&StorageType::Scalar(ElemType::Float(FloatKind::BF16))));
}

#[test]
fn a_hip_plugin_is_served_by_the_hip_runtime() {
    let Some(lib) = common::mock("hip", &["MOCK_HIP"]) else { return };
    let device = PluginDevice::open(&lib, 0).unwrap();
    assert_eq!(phi3v_backend_plugin::device_dialect(&device).unwrap(), phi3v_backend_plugin::ffi::DIALECT_HIP);
    let client = PluginHipRuntime::client(&device);
    let handle = client.create_from_slice(&[1, 2, 3, 4]);
    assert_eq!(&client.read_one(handle).unwrap()[..], &[1, 2, 3, 4]);
}
