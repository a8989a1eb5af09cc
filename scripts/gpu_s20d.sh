#!/usr/bin/env bash
# Session 20, a later call (after gpu_s20a.sh; its merged kernel cache in .gpu/, autotune dropped): cuBLAS beside Burn's
# matmul and the PyTorch peer, product by product and attention alone (~250 s):
#   peer  — bench/peer_matmul.py: cuBLAS through `F.linear` at `bench matmul`'s default products;
#   mm    — `phi3v bench matmul --tilings "burn;blas;model"` at the same products (prefill,
#           64-row, CLIP's 9809-row and 8192³ products), beside the peer;
#   att, att-blas — `phi3v bench attention` (prefill 1024 causal, CLIP 17×16×577) under
#           burn, scores and 4,2,2, without and with cuBLAS under `scores`.
source scripts/gpu_env.sh
timed_folders s20d
s=$(date +%s)
timeout ${PEER_S:-45} python3 bench/peer_matmul.py --out $RS/peer.json > $RS/peer.log 2>&1
echo "=== peer rc=$? $(( $(date +%s) - s )) s"; grep -v Warning $RS/peer.log | tail -14
cd $D
s=$(date +%s)
timeout ${MM_S:-150} $B/phi3v bench matmul --device cuda --dtype bf16 --tilings "burn;blas;model" --warmup 2 --runs 10 \
  --peer $RS/peer.json --out $RS/mm.json > $RS/mm.md 2> $RS/mm.log
echo "=== mm rc=$? $(( $(date +%s) - s )) s"; cat $RS/mm.md | cut -c1-170; grep -h "refused" $RS/mm.log | head -5
for part in "att:none" "att-blas:blas_matmul"; do
  name=${part%%:*}; s=$(date +%s)
  PHI3V_KERNELS_ON=${part#*:} timeout ${ATT_S:-60} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2" \
    --warmup 2 --runs 10 --out $RS/$name.json > $RS/$name.md 2> $RS/$name.log
  echo "=== $name rc=$? $(( $(date +%s) - s )) s"; cat $RS/$name.md | cut -c1-170
done
cd $R
(cd $OUT && tar czf s20d.tgz s20d && rm -rf s20d)
ls -la $OUT
