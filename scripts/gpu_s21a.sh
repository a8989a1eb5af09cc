#!/usr/bin/env bash
# Session 21, first call (binaries from `TESTS="kernels engine" bash scripts/build_gpu_slim.sh`
# at or after the commit that adds BlasOrdering::Stream; no kernel cache). Side by side (~540 s):
#   kernels-bf16 — the kernels test on cuda bf16: the first full pass on CUDA in bf16 (session
#     20's stopped on the test's own unit tiling), cuBLAS under both orderings (host; on CubeCL's
#     stream, which needs the patched cubecl-cuda: the test asserts products ran there);
#   engine — the engine tests on cuda f32 with cuBLAS on CubeCL's stream;
#   warm-bd, warm-mm — gpu_s21b.sh's benchmarks (breakdown; matmul and attention), one run each,
#     only to compile their kernels.
# Then gpu_s21b.sh at once (the machine stays warm 30 s; it runs in the warm-* folders).
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s21a; mkdir -p $RS
LIMIT=${TESTS_S:-530} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=300 job engine env PHI3V_TEST_DEVICES=cuda:0:f32 PHI3V_CUBLAS_ORDER=stream $B/engine
LIMIT=${WARM_S:-500}
job warm-bd $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1,10 --prefill 1024 --image-grid 4x4 --warmup 1 --runs 1 --out ours
job warm-mm bash -c "$B/phi3v bench matmul --device cuda --dtype bf16 --tilings 'burn;blas;model' --warmup 1 --runs 1 --out mm.json && $B/phi3v bench attention --device cuda --dtype bf16 --flash 'burn;scores;4,2,2' --warmup 1 --runs 1 --out att.json"
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul|ordering" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -30
TAIL=12 show engine | tail -14
for n in warm-bd warm-mm; do echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -hi "error\|panic\|refus" $W/$n/err.txt | head -3 | cut -c1-200; done
(cd $OUT && tar czf s21a.tgz s21a && rm -rf s21a)
merge_caches $W/merged $W/kernels-bf16 $W/warm-bd $W/warm-mm
du -sh $W/merged; tar czf - -C $W/merged . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
