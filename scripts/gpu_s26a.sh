#!/usr/bin/env bash
# Session 26, call 1: the tensor-core flash kernel (`FlashAttention::Mma`) checked and timed.
# H100 or H200, the full pack in .gpu (scripts/build_gpu_bins.sh) and .gl; carry both. ~520 s.
#   1. side by side, LIMIT=${JOBS_S:-300}: the kernels test on cuda bf16 and f16 (`mma` against
#      the composed attention on random inputs; a half-precision run where it never launched
#      fails), and the bf16 fixture suite under PHI3V_FLASH_ATTENTION=mma (inside the model,
#      against the reference); issue 8's engine tests on cuda f32 (concurrent = solo, stress);
#   2. then on the quiet GPU: `bench attention --flash "scores;mma"` in bf16 and f16 (prefill
#      1024 and 4096, causal, 96-dim heads; CLIP's 17×16×577×64), and the image encode at
#      num_crops 16 with prefill 1024 and 4096, default then mma (${AB_S:-55} s each).
source scripts/gpu_env.sh
timed_folders s26a
export JOB_AUTOTUNE_LEVEL=minimal LIMIT=${JOBS_S:-300}
for dt in bf16 f16; do job kernels-$dt env PHI3V_TEST_DEVICES=cuda:0:$dt $B/kernels --nocapture; done
job parity-mma env PHI3V_FLASH_ATTENTION=mma $B/phi3v-parity --device cuda --dtype bf16
job engine-f32 env PHI3V_TEST_DEVICES=cuda:0:f32 $B/engine
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
for dt in bf16 f16; do
  echo "=== kernels-$dt: $(grep -c ' vs composed' $W/kernels-$dt/err.txt) checks compared"
  grep -hE "test result|FAIL|panicked|rc=|mma|problem" $W/kernels-$dt/out.txt $W/kernels-$dt/err.txt | cut -c1-220 | tail -12
done
echo "=== engine-f32"; grep -hE "test result|FAIL|panicked|rc=" $W/engine-f32/out.txt | tail -4
echo "=== parity-mma: $(tail -n1 $W/parity-mma/out.txt)"; grep -E "^\| [a-z]|probe" $W/parity-mma/out.txt | cut -c1-200 | tail -14
grep -v "^\s*$" $W/parity-mma/err.txt | grep -v "^kernel cache" | tail -3 | cut -c1-200
cd $D
attention_ab $RS
AB="--scenarios images,prefill --images 1344x1344 --num-crops 16 --prompt-lengths 1024,4096 --prefill-batches 1 --warmup 1 --runs 5"
bench_parts $RS "default::${AB_S:-55}:$AB" "mma:PHI3V_FLASH_ATTENTION=mma:${AB_S:-55}:$AB"
grep -H "^image\|^prefill" $RS/default.log $RS/mma.log | cut -c1-200
cd $R; (cd $OUT && tar czf s26a.tgz s26a && rm -rf s26a)
