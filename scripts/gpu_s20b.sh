#!/usr/bin/env bash
# Session 20, second call (gpu_s20a.sh's merged kernel cache in .gpu/cache.tgz.part-*; its
# autotune results are dropped: they were taken with the GPU shared, so these runs tune again).
# The goals' figures under FlashAttention::Auto, with and without the opt-in kernels (LayerNorm,
# quick-GELU, cuBLAS for products of more than 16 rows), beside the eager peer measured first
# in this call (~360 s; `bench run` end to end is gpu_s20c.sh's):
#   pbd — bench/peer_kernels.py: decode 1 and 10 rows, prefill 1024, the vision tower;
#   bd-new, bd-base — `bench breakdown` stage by stage with and without the opt-ins;
#   bd-b10-blas — decode b=10 with its products on cuBLAS (PHI3V_SKINNY_MAX_ROWS=3);
source scripts/gpu_env.sh
timed_folders s20b
s=$(date +%s)
timeout ${PBD_S:-90} python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --decode-batches 1,10 --prefill 1024 \
  --image-grid 4x4 --warmup 2 --runs 10 --out $RS/peer_bd.json 2>&1 | grep -v Warning | tail -4
echo "=== pbd $(( $(date +%s) - s )) s"
PEER=(); [ -s $RS/peer_bd.json ] && PEER=(--peer $RS/peer_bd.json)
NEW=layer_norm,quick_gelu,blas_matmul
for part in "bd-new:$NEW" "bd-base:none"; do
  name=${part%%:*}; s=$(date +%s); cd $D
  # On the machine gpu_s20a.sh left warm: its warm-up job's folder (compiled kernels), minus autotune.
  [ -d $W/warm-$name ] && cd $W/warm-$name && rm -rf autotune
  PHI3V_KERNELS_ON=${part#*:} timeout ${BD_S:-110} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
    --decode-batches 1,10 --prefill 1024 --image-grid 4x4 --warmup 2 --runs 10 --flash "burn;scores" "${PEER[@]}" --out $RS/$name > $RS/$name.log 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "^## |whole step|proj|quick_gelu|layer_norm|attention" $RS/$name/breakdown.md | cut -c1-170
  grep -h "blas\|refus" $RS/$name.log | head -5
done
s=$(date +%s); cd $D; [ -d $W/warm-bd-new ] && cd $W/warm-bd-new
PHI3V_KERNELS_ON=blas_matmul PHI3V_SKINNY_MAX_ROWS=3 timeout ${BD10_S:-60} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
  --decode-batches 10 --prefill 0 --no-image --warmup 2 --runs 10 --out $RS/bd-b10-blas > $RS/bd-b10-blas.log 2>&1
echo "=== bd-b10-blas rc=$? $(( $(date +%s) - s )) s"; grep -E "^## |whole step|proj" $RS/bd-b10-blas/breakdown.md | cut -c1-170
cd $R
(cd $OUT && tar czf s20b.tgz s20b && rm -rf s20b)
ls -la $OUT
