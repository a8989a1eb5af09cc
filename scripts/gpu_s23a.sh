#!/usr/bin/env bash
# Next session's first call (written in session 22; H100, full pack of the current `main` in
# .gpu, carry .gpu and .gl). Two jobs only, so that the kernels test finally reaches its CUDA
# comparisons (it prints each check with its elapsed time; ~540 s):
#   kernels-bf16 — the kernels test on cuda bf16 (padded softmax, padded scores, 16-dim tiles);
#   parity-bf16  — the whole fixture suite on cuda bf16 (issue 5: session 22 reached 6 of 9
#                  cases and no probe after the tiles fix);
# then, on the quiet GPU, the image encode at num_crops 16 with CLIP's scores in one 256 MiB chunk
# (session 22's prediction: ~28 ms, from 41.4).
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
RS=$OUT/s23a; mkdir -p $RS
LIMIT=${TESTS_S:-420} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=${TESTS_S:-420} job parity-bf16 $B/phi3v-parity --device cuda --dtype bf16
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
echo "=== kernels-bf16"; grep -hE "test result|FAIL|panicked|rc=|blas_matmul" $W/kernels-bf16/out.txt $W/kernels-bf16/err.txt | cut -c1-220 | tail -30
grep -h " s  ran " $W/kernels-bf16/err.txt | tail -3
echo "=== parity-bf16: $(tail -n1 $W/parity-bf16/out.txt)"; grep "^| [a-z]" $W/parity-bf16/out.txt | cut -c1-200
timed_folders s23a-img; cd $D
bench_parts $RS "img::${IMG_S:-100}:--scenarios images --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
cd $R
(cd $OUT && tar czf s23a.tgz s23a s23a-img && rm -rf s23a s23a-img)
