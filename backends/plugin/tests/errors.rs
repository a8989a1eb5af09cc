//! Every way a plugin can fail to load is a typed error naming the cause, never a panic.

mod common;

use phi3v_backend_plugin::{PluginDevice, PluginError, PluginLibrary, PluginSpec};
use std::path::Path;

#[test]
fn nonexistent_library_is_library_not_found() {
    let err = PluginLibrary::load(Path::new("/nonexistent/libno_such_plugin.so")).unwrap_err();
    assert!(matches!(err, PluginError::LibraryNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/libno_such_plugin.so"), "{err}");
    let err = PluginDevice::from_device_string("plugin:/nonexistent/libno_such_plugin.so:0").unwrap_err();
    assert!(matches!(err, PluginError::LibraryNotFound { .. }), "{err}");
}

#[test]
fn a_library_that_is_not_a_plugin_is_missing_symbol() {
    // Any shared library without the plugin's symbols: the C library, by its soname.
    let err = PluginLibrary::load(Path::new("libc.so.6")).unwrap_err();
    match err {
        PluginError::MissingSymbol { symbol, .. } => assert_eq!(symbol, "phi3v_plugin_abi_version"),
        other => panic!("expected MissingSymbol, got {other}"),
    }
}

#[test]
fn a_file_that_is_not_a_library_is_library_not_found() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let err = PluginLibrary::load(&path).unwrap_err();
    assert!(matches!(err, PluginError::LibraryNotFound { .. }), "{err}");
}

#[test]
fn abi_version_mismatch() {
    let Some(lib) = common::mock("abi99", &["MOCK_ABI_VERSION=99"]) else { return };
    match PluginLibrary::load(&lib).unwrap_err() {
        PluginError::AbiVersionMismatch { found, expected, .. } => {
            assert_eq!((found, expected), (99, phi3v_backend_plugin::ffi::ABI_VERSION))
        }
        other => panic!("expected AbiVersionMismatch, got {other}"),
    }
}

#[test]
fn a_missing_entry_point_is_named() {
    let Some(lib) = common::mock("nolaunch", &["MOCK_OMIT_LAUNCH"]) else { return };
    match PluginLibrary::load(&lib).unwrap_err() {
        PluginError::MissingSymbol { symbol, .. } => assert_eq!(symbol, "phi3v_plugin_launch"),
        other => panic!("expected MissingSymbol, got {other}"),
    }
}

#[test]
fn device_index_out_of_range() {
    let Some(lib) = common::mock("two", &["MOCK_DEVICES=2"]) else { return };
    assert!(PluginDevice::open(&lib, 1).is_ok());
    match PluginDevice::open(&lib, 2).unwrap_err() {
        PluginError::DeviceOutOfRange { index, count, .. } => assert_eq!((index, count), (2, 2)),
        other => panic!("expected DeviceOutOfRange, got {other}"),
    }
    let s = format!("plugin:{}:5", lib.display());
    assert!(matches!(
        PluginDevice::from_device_string(&s).unwrap_err(),
        PluginError::DeviceOutOfRange { index: 5, .. }
    ));
}

#[test]
fn a_failed_compile_carries_the_plugins_log() {
    let Some(lib) = common::mock("compile", &[]) else { return };
    let lib = PluginLibrary::load(&lib).unwrap();
    let ctx = lib.context_create(0).unwrap();
    // SAFETY: a context this library just created.
    let err = unsafe {
        lib.module_compile(ctx, phi3v_backend_plugin::ffi::DIALECT_CUDA, "extern \"C\" __global__ void k() {}", "k", &[])
    }
    .unwrap_err();
    match &err {
        PluginError::Compile { kernel, log, .. } => {
            assert_eq!(kernel, "k");
            assert!(log.contains("compiles nothing (kernel k)"), "{log}");
        }
        other => panic!("expected Compile, got {other}"),
    }
}

#[test]
fn device_strings() {
    let spec = PluginSpec::parse("plugin:/opt/x/libp.so:3").unwrap();
    assert_eq!((spec.path.to_str().unwrap(), spec.index), ("/opt/x/libp.so", 3));
    let spec = PluginSpec::parse("plugin:/opt/x/libp.so").unwrap();
    assert_eq!(spec.index, 0);
    // A colon in the path is kept when no numeric index follows it.
    let spec = PluginSpec::parse("plugin:/opt/a:b/libp.so").unwrap();
    assert_eq!(spec.path.to_str().unwrap(), "/opt/a:b/libp.so");
    assert!(matches!(PluginSpec::parse("plugin:"), Err(PluginError::InvalidDeviceString(_))));
    assert!(matches!(PluginSpec::parse("plugin::2"), Err(PluginError::InvalidDeviceString(_))));
}

#[test]
fn device_string_from_the_environment() {
    // The only test touching PHI3V_PLUGIN (tests in one binary share the environment).
    // SAFETY: no other test in this binary reads or writes the variable.
    unsafe { std::env::remove_var(phi3v_backend_plugin::PLUGIN_ENV) };
    assert!(matches!(PluginSpec::parse("plugin"), Err(PluginError::NoPluginConfigured)));
    // SAFETY: as above.
    unsafe { std::env::set_var(phi3v_backend_plugin::PLUGIN_ENV, "/opt/x/libp.so:2") };
    assert_eq!(PluginSpec::parse("plugin").unwrap().index, 2);
    assert_eq!(PluginSpec::parse("plugin:1").unwrap().index, 1);
    assert_eq!(PluginSpec::parse("plugin").unwrap().path.to_str(), Some("/opt/x/libp.so"));
    // SAFETY: as above.
    unsafe { std::env::remove_var(phi3v_backend_plugin::PLUGIN_ENV) };
}
