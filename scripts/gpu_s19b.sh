#!/usr/bin/env bash
# Session 19, second call (gpu_s19a.sh's kernel cache in .gpu/cache.tgz.part-*): the goals'
# figures under the new defaults (FlashAttention::Auto) with and without the opt-in kernels
# (LayerNorm, quick-GELU, cuBLAS for products of more than 16 rows), beside the eager peer:
#   bd-new, bd-base — `bench breakdown`: decode b=1, prefill 1024 and the vision tower
#     (17 crops) stage by stage; each also times the composed LayerNorm and quick-GELU;
#   bd-b10-blas — decode b=10 with its products on cuBLAS (PHI3V_SKINNY_MAX_ROWS=3 sends the 10
#     rows past the skinny kernel; bd-new's b=10 phase is the comparison);
#   run-new — `bench run`: prefill 1024 and the image encode at num_crops 16.
source scripts/gpu_env.sh
source scripts/gpu_cublas.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s19b; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
cd $D
NEW=layer_norm,quick_gelu,blas_matmul
for part in "bd-new:$NEW" "bd-base:none"; do
  name=${part%%:*}; s=$(date +%s)
  PHI3V_KERNELS_ON=${part#*:} timeout ${BD_S:-150} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
    --decode-batches 1,10 --prefill 1024 --image-grid 4x4 --warmup 2 --runs 10 --flash "burn;scores" \
    --peer $R/docs/gpu-runs/2026-12-05-h200-s18/call2/peer_bd.json --out $RS/$name > $RS/$name.log 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "^## |whole step|proj|quick_gelu|layer_norm|attention" $RS/$name/breakdown.md | cut -c1-170
  grep -h "blas\|refus" $RS/$name.log | head -5
done
s=$(date +%s)
PHI3V_KERNELS_ON=blas_matmul PHI3V_SKINNY_MAX_ROWS=3 timeout ${BD10_S:-90} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
  --decode-batches 10 --prefill 0 --no-image --warmup 2 --runs 10 --out $RS/bd-b10-blas > $RS/bd-b10-blas.log 2>&1
echo "=== bd-b10-blas rc=$? $(( $(date +%s) - s )) s"; grep -E "^## |whole step|proj" $RS/bd-b10-blas/breakdown.md | cut -c1-170
cd $R
bench_parts $RS "run-new:PHI3V_KERNELS_ON=$NEW:${RUN_S:-120}:--scenarios prefill,images --prompt-lengths 1024 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
(cd $OUT && tar czf s19b.tgz s19b && rm -rf s19b)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
