#!/usr/bin/env bash
# Session 19, first call (binaries from `bash scripts/build_gpu_slim.sh` at or after the
# cuBLAS commit; no kernel cache survived session 18, so this call compiles): the kernels test
# on cuda bf16 alone (TESTS_S, default 540 s). It is the first bf16 check on CUDA of
#   - `scores` (the causal default under FlashAttention::Auto) and the 4,2,2 tiling (vision),
#   - rotary_write_paged since its fix, the LayerNorm and quick-GELU kernels (forced on),
#   - blas_matmul: products of many rows by cuBLAS (the test asserts cuBLAS ran on CUDA).
# Then the engine tests on cuda f32 with the opt-in kernels named. The kernel cache it leaves
# ($OUT/cache.tgz.part-*) goes into .gpu/ for gpu_s19b.sh.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s19a; mkdir -p $RS
LIMIT=${TESTS_S:-540} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=${ENGINE_S:-300} job engine env PHI3V_TEST_DEVICES=cuda:0:f32 PHI3V_KERNELS_ON=rotary_write_paged,layer_norm,quick_gelu,blas_matmul $B/engine
wait; collect; cp /tmp/res/kernels-* /tmp/res/engine.* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul|quick_gelu|layer_norm \[1, 577|as Auto|rotary_write_paged" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220
TAIL=12 show engine | tail -14
(cd $OUT && tar czf s19a.tgz s19a && rm -rf s19a)
# One cache for the next call: the test's (the engine's kernels are a subset in f32).
tar czf - -C $W/kernels-bf16 . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
