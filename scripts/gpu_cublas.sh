#!/usr/bin/env bash
# Source after gpu_env.sh: puts the directory of a libcublas.so.* (the CUDA toolkit's, else the
# one PyTorch's wheels bring) on LD_LIBRARY_PATH, so that `Kernels::blas_matmul` finds cuBLAS.
lib=$(ls /usr/local/cuda/lib64/libcublas.so.* 2>/dev/null | head -1)
[ -z "$lib" ] && lib=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
for d in site.getsitepackages():
    for f in sorted(glob.glob(os.path.join(d, "nvidia", "**", "libcublas.so.*"), recursive=True)):
        if "Lt" not in os.path.basename(f):
            print(f); raise SystemExit
PY
)
if [ -n "$lib" ]; then export LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; echo "cuBLAS: $lib"; else echo "cuBLAS: not found"; fi
