#!/usr/bin/env bash
# Session 20, first call (binaries from `TESTS="kernels engine" bash scripts/build_gpu_slim.sh`;
# no kernel cache carried). Side by side, each in its own folder (~540 s):
#   kernels-bf16 — the kernels test on cuda bf16: the first bf16 check on CUDA of `scores`, the
#     4,2,2 tiling (vision), rotary_write_paged, LayerNorm, quick-GELU and cuBLAS (forced on);
#   engine — the engine tests on cuda f32 with every opt-in kernel;
#   warm-* — the benchmarks of gpu_s20b.sh with one run each, only to compile their kernels (their
#     timings are not used: they share the GPU).
# Returns s20a.tgz (logs) and the merged kernel cache (cache.tgz.part-*) for gpu_s20b.sh.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s20a; mkdir -p $RS
NEW=layer_norm,quick_gelu,blas_matmul
LIMIT=${TESTS_S:-530} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=300 job engine env PHI3V_TEST_DEVICES=cuda:0:f32 PHI3V_KERNELS_ON=rotary_write_paged,$NEW $B/engine
BD="$B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1,10 --prefill 1024 --image-grid 4x4 --warmup 1 --runs 1 --flash 'burn;scores'"
LIMIT=${WARM_S:-500}
job warm-bd-new sh -c "PHI3V_KERNELS_ON=$NEW $BD --out ours-new; PHI3V_KERNELS_ON=blas_matmul PHI3V_SKINNY_MAX_ROWS=3 $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 10 --prefill 0 --no-image --warmup 1 --runs 1 --out ours-b10"
job warm-bd-base sh -c "PHI3V_KERNELS_ON=none $BD --out ours-base"
job warm-mm sh -c "$B/phi3v bench matmul --device cuda --dtype bf16 --tilings 'burn;blas;model' --warmup 1 --runs 1 --out mm.json; \
  for k in none blas_matmul; do PHI3V_KERNELS_ON=\$k $B/phi3v bench attention --device cuda --dtype bf16 --flash 'burn;scores;4,2,2' --warmup 1 --runs 1 --out att-\$k.json; done"
job warm-run env PHI3V_KERNELS_ON=$NEW $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios prefill,images \
  --prompt-lengths 1024 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 1 --out ours
job warm-gen env PHI3V_KERNELS_ON=rotary_write_paged,$NEW $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation,latency \
  --shapes 1024x128 --parallel 1,10 --latency-shape 1024x128 --batching static,engine --warmup 1 --generation-runs 1 --out ours
sleep 20; nvidia-smi --query-gpu=memory.used --format=csv,noheader
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul|quick_gelu|layer_norm \[1, 577|as Auto|rotary_write_paged" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220
TAIL=12 show engine | tail -14
for n in warm-bd-new warm-bd-base warm-mm warm-run warm-gen; do echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep -hi "error\|panic\|refus" $W/$n/err.txt | head -3 | cut -c1-200; done
(cd $OUT && tar czf s20a.tgz s20a && rm -rf s20a)
merge_caches $W/merged $W/kernels-bf16 $W/warm-bd-new $W/warm-bd-base $W/warm-mm $W/warm-run $W/warm-gen
du -sh $W/merged; tar czf - -C $W/merged . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
