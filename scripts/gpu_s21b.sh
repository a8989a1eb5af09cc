#!/usr/bin/env bash
# Session 21, second call, right after gpu_s21a.sh on the same warm machine (its warm-* folders;
# else .gpu's merged cache): cuBLAS ordered by the host against cuBLAS on CubeCL's stream
# (PHI3V_CUBLAS_ORDER), beside the PyTorch peer (~200 s):
#   peer — bench/peer_matmul.py;
#   mm-host, mm-stream — `bench matmul burn;blas;model` (the 1024-row, 64-row and CLIP products);
#   att-host, att-stream — `bench attention` burn;scores;4,2,2 (prefill's causal 1024 and CLIP's
#     17×16×577): with stream ordering `scores` takes cuBLAS for its two products;
#   bd-host, bd-stream — `bench breakdown`: prefill 1024 and the vision tower (17 crops).
# Prediction (H100, bf16): a 1024 × 3072 → 9216 product 164 → ~90 µs; prefill 1024 ~45 → ~35 ms;
# image encode ~51 → ~40 ms.
# Then issue 8's sweep (SWEEP=0 skips it, ~200 s): `bench run` generation 1024 → 128 at 64, 128
# and 256 parallel requests, the engine against static batching (64 repeats session 20's point).
source scripts/gpu_env.sh
timed_folders s21b
s=$(date +%s)
timeout ${PEER_S:-45} python3 bench/peer_matmul.py --out $RS/peer.json > $RS/peer.log 2>&1
echo "=== peer rc=$? $(( $(date +%s) - s )) s"; grep -v Warning $RS/peer.log | tail -14
for order in host stream; do
  cd $D; [ -d $W/warm-mm ] && cd $W/warm-mm && rm -rf autotune
  s=$(date +%s)
  PHI3V_CUBLAS_ORDER=$order timeout ${MM_S:-60} $B/phi3v bench matmul --device cuda --dtype bf16 --tilings "burn;blas;model" --warmup 2 --runs 10 \
    --peer $RS/peer.json --out $RS/mm-$order.json > $RS/mm-$order.md 2> $RS/mm-$order.log
  echo "=== mm-$order rc=$? $(( $(date +%s) - s )) s"; grep "blas\|^| rows" $RS/mm-$order.md | cut -c1-170
done
for order in host stream; do
  cd $D; [ -d $W/warm-mm ] && cd $W/warm-mm
  s=$(date +%s)
  PHI3V_CUBLAS_ORDER=$order timeout ${ATT_S:-60} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2" \
    --warmup 2 --runs 10 --out $RS/att-$order.json > $RS/att-$order.md 2> $RS/att-$order.log
  echo "=== att-$order rc=$? $(( $(date +%s) - s )) s"; grep "^| [0-9]" $RS/att-$order.md | cut -c1-170
done
for order in host stream; do
  cd $D; [ -d $W/warm-bd ] && cd $W/warm-bd && rm -rf autotune
  s=$(date +%s)
  PHI3V_CUBLAS_ORDER=$order timeout ${BD_S:-80} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 \
    --prefill 1024 --image-grid 4x4 --warmup 2 --runs 10 --out $RS/bd-$order > $RS/bd-$order.log 2>&1
  echo "=== bd-$order rc=$? $(( $(date +%s) - s )) s"; grep -E "^## |whole step|proj|fc1|fc2" $RS/bd-$order/breakdown.md | cut -c1-170
done
if [ "${SWEEP:-1}" = 1 ]; then
  cd $D; [ -d $W/warm-bd ] && cd $W/warm-bd
  s=$(date +%s)
  PHI3V_CUBLAS_ORDER=${SWEEP_ORDER:-host} timeout ${SWEEP_S:-260} $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --shapes 1024x128 \
    --parallel ${PARALLEL:-64,128,256} --batching engine,static --warmup 1 --generation-runs 1 --out $RS/sweep > $RS/sweep.log 2>&1
  echo "=== sweep rc=$? $(( $(date +%s) - s )) s"; grep "^generation\|skip\|not fit\|error" $RS/sweep.log | cut -c1-220
fi
cd $R
(cd $OUT && tar czf s21b.tgz s21b && rm -rf s21b)
ls -la $OUT
