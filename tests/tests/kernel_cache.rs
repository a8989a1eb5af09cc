//! `burn_phi3v::kernel_cache`: the folder CubeCL keeps compiled kernels and autotune results in.
//! CubeCL's configuration is one per process, so this file is its own test binary with one test
//! that runs its steps in order: the refusals first (they must change nothing), then the cache
//! turned on for the first GPU test target, a matmul run there, and the folder checked.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Distribution, Tensor};
use burn_phi3v::device::DeviceInfo;
use burn_phi3v::kernel_cache::{KernelCache, KernelCacheStatus, configure};
use burn_phi3v::kernels::Kernels;
use phi3v_devices::DeviceFn;
use phi3v_tests::devices::test_targets;

/// A device of a kernel-compiling backend that need not exist: `configure` only reads its
/// backend and name.
fn gpu_like(name: &str) -> DeviceInfo {
    DeviceInfo {
        spec: "cuda:7".into(),
        backend: "cuda",
        index: 7,
        name: name.into(),
        total_memory: None,
        free_memory: None,
        dtypes: vec![DType::F32],
        default_dtype: DType::F32,
    }
}

fn files_below(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else if let Ok(m) = e.metadata() {
                out.push((p, m.len()));
            }
        }
    }
    out
}

/// A matmul that Burn autotunes on CubeCL backends, synced.
struct Matmul;

impl DeviceFn for Matmul {
    type Output = Vec<f32>;
    fn run<B: Kernels>(self, device: &B::Device, _: &DeviceInfo, dtype: DType) -> Vec<f32> {
        let a = Tensor::<B, 2>::random([96, 160], Distribution::Default, (device, dtype));
        let b = Tensor::<B, 2>::random([160, 72], Distribution::Default, (device, dtype));
        let out = a.matmul(b).into_data().convert::<f32>().to_vec().unwrap();
        B::sync(device).unwrap();
        out
    }
}

#[test]
fn the_kernel_cache_is_refused_cleanly_then_fills_on_a_gpu() {
    let scratch = std::env::temp_dir().join(format!("phi3v-kernel-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    // Off, and the CPU (it compiles nothing): nothing to do.
    let cpu = phi3v_devices::device_info("cpu").expect("the CPU backend is compiled in");
    assert_eq!(configure(&KernelCache::Off, &gpu_like("X")).unwrap(), KernelCacheStatus::Off);
    assert_eq!(configure(&KernelCache::Dir(scratch.join("c")), &cpu).unwrap(), KernelCacheStatus::NotApplicable);
    assert!(!scratch.join("c").exists(), "the CPU's refusal created the folder");

    // Without a CubeCL backend compiled in there is nothing to configure.
    if phi3v_devices::compiled_backends().iter().all(|b| *b == "cpu") {
        assert_eq!(configure(&KernelCache::Dir(scratch.join("g")), &gpu_like("X")).unwrap(), KernelCacheStatus::NotApplicable);
        assert!(!scratch.join("g").exists());
        return;
    }

    // A folder that cannot be made (below a regular file) is a typed error naming it.
    let file = scratch.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = configure(&KernelCache::Dir(file.join("kernels")), &gpu_like("X")).expect_err("a folder below a file");
    assert!(err.path.starts_with(&file), "{err}");
    assert!(err.to_string().contains("--kernel-cache"), "{err}");

    // A cubecl.toml in the working directory (or above) rules: nothing is set.
    let user = scratch.join("user");
    std::fs::create_dir_all(user.join("sub")).unwrap();
    std::fs::write(user.join("cubecl.toml"), "[compilation]\n").unwrap();
    let cwd = std::env::current_dir().unwrap();
    std::env::set_current_dir(user.join("sub")).unwrap();
    let ruled = configure(&KernelCache::Dir(scratch.join("u")), &gpu_like("X"));
    std::env::set_current_dir(&cwd).unwrap();
    assert_eq!(ruled.unwrap(), KernelCacheStatus::UserConfig(user.join("cubecl.toml")));
    assert!(!scratch.join("u").exists(), "a user's cubecl.toml did not rule");

    // The first GPU target: the cache on before its first kernel, then kept in the folder.
    let Some((spec, dtype)) = test_targets().into_iter().find(|(d, _)| !d.starts_with("cpu")) else {
        // The steps above ran and asserted; the folder needs a GPU target (CI: wgpu on lavapipe).
        eprintln!("no GPU test target in PHI3V_TEST_DEVICES: the folder is not checked");
        return;
    };
    if let Some(file) = burn_phi3v::kernel_cache::user_config_file() {
        panic!("{} would rule over the test's folder: run the test outside it", file.display());
    }
    let info = phi3v_devices::device_info(&spec).unwrap();
    let root = scratch.join("kernels");
    let status = configure(&KernelCache::Dir(root.clone()), &info).unwrap();
    let dir = match status {
        KernelCacheStatus::Enabled(d) => d,
        other => panic!("{spec}: expected the cache on, got {other:?}"),
    };
    assert!(dir.starts_with(&root), "{} is not under {}", dir.display(), root.display());
    let out = burn_phi3v::device::with_device_dtype(&spec, Some(dtype), Matmul).unwrap();
    assert!(out.iter().all(|v| v.is_finite()) && out.len() == 96 * 72);
    let files = files_below(&dir);
    assert!(
        files.iter().any(|(_, len)| *len > 0),
        "{spec}: nothing was written under {} after an autotuned matmul: {files:?}",
        dir.display()
    );
    eprintln!("{spec}: {} files under {}", files.len(), dir.display());

    // Once CubeCL is configured the choice cannot change in this process: said, not panicked.
    assert_eq!(configure(&KernelCache::Dir(scratch.join("late")), &info).unwrap(), KernelCacheStatus::TooLate);
    let _ = std::fs::remove_dir_all(&scratch);
}
