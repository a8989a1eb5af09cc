#!/usr/bin/env bash
# Session 35, call 3 (H100 or H200; the pack of call 2: phi3v of d208939; carry .gpu and .gl).
# ≤ 150 s. The epilogue products under the two other orderings of `kernels/cublas.rs` (calls 1
# and 2 ran the default, `stream`): `bench matmul --epilogue` (each product plus a bias and a
# residual; `model` in cuBLASLt's epilogue against cuBLAS then two adds, outputs compared) with
# PHI3V_CUBLAS_ORDER=host (cuBLASLt on a stream of its own, the host syncing around it) and
# =queued (an epilogue product takes the round trip), then the image encode under each.
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s35c
cd $D
for order in host queued; do
  s=$(date +%s)
  PHI3V_CUBLAS_ORDER=$order timeout ${MM_S:-40} $B/phi3v bench matmul --device cuda --dtype bf16 --epilogue --tilings "blas;model" \
    --shapes "9809,1024,1024;9809,4096,1024;1024,8192,3072" --warmup 3 --runs 10 > $RS/mm-$order.log 2>&1
  echo "=== matmul --epilogue, $order ordering: rc=$? $(( $(date +%s) - s )) s"; grep "^|\|refused\|panicked" $RS/mm-$order.log | cut -c1-200
done
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
TAIL=1 bench_parts $RS "enc-host:PHI3V_CUBLAS_ORDER=host:${ENC_S:-40}:$ENC" "enc-queued:PHI3V_CUBLAS_ORDER=queued:${ENC_S:-40}:$ENC" "enc-stream::${ENC_S:-40}:$ENC"
echo "done at $SECONDS s"
(cd $OUT && tar czf s35c.tgz s35c && rm -rf s35c)
