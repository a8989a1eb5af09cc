#!/usr/bin/env bash
# Source at the start of every device call (docs/GPU.md recipe): Vulkan loader from .gl, release
# binaries from .gpu/bin (xz), CubeCL's kernel and autotune caches from .gpu/cache.tgz so kernels
# compiled in an earlier call are not compiled again. `save_caches` puts them into $OUT.
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
B=$PWD/.gpu/bin; for f in "$B"/*.xz; do [ -f "$f" ] && xz -dkf "$f" && chmod +x "${f%.xz}"; done
export PHI3V_FIXTURES=$PWD/tests/fixtures PYTHONUNBUFFERED=1
# Persist compiled kernels (PTX / SPIR-V) next to the autotune results, both under ./target.
printf '[compilation]\ncache = "target"\n' > cubecl.toml
mkdir -p target; [ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C target
save_caches() { tar czf "$OUT/cache.tgz" -C target . 2>/dev/null; ls -la "$OUT/cache.tgz"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
