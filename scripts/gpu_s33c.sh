#!/usr/bin/env bash
# Session 33, call 4 (H100 or H200; a pack of 3e38a78 or later with phi3v; carry .gpu and .gl).
# ≤ 300 s. Call 3 (s33b) measured the register-fragment flash kernel's prefetch (now on up to
# 64-dim heads) and Nsight Compute found it at 18.75 % occupancy (150–168 registers, 3 cubes
# per multiprocessor) with "wait" (fixed-latency dependencies) its largest stall. Two new
# switches, off by default, against the default, alternating:
#   pairs: `mma_attention_row_pairs`, two 16-row tiles per plane (each key/value fragment used
#          twice; up to 64-dim heads);
#   tree:  `mma_attention_tree_max`, each row's maximum over a step in pairs (4 dependent steps
#          instead of 16);
#   1. `bench attention` bf16 at CLIP's 17×16×577×64, prefill 1024 (96-dim, causal) and a
#      causal 64-dim case (rows past and before a cube's 128), each variant twice; f16 once
#      with both (the relative differences against `scores` are the correctness check);
#   2. image encode (1344², num_crops 16): default, pairs, tree, both, twice;
#   3. Nsight Compute on the kernel at CLIP's shape with both.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s33c
cd $D
ON=PHI3V_KERNELS_ON
SHAPES="17,16,577,577,64;1,32,1024,1024,96,causal;2,8,300,300,64,causal"
VARIANTS=("def:" "pairs:$ON=mma_attention_row_pairs" "tree:$ON=mma_attention_tree_max" "both:$ON=mma_attention_row_pairs,mma_attention_tree_max")
for round in 1 2; do
  for part in "${VARIANTS[@]}"; do
    IFS=: read -r name vars <<< "$part"
    env $vars timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" --shapes "$SHAPES" \
      --warmup 2 --runs 10 --out $RS/att-$name-$round.json > $RS/att-$name-$round.log 2>&1
    echo "=== att $name $round rc=$? at $SECONDS s"; grep "^|.*Mma\|panicked\|refused\|rror" $RS/att-$name-$round.log | sort -u | head -4 | cut -c1-200
  done
done
env $ON=mma_attention_row_pairs,mma_attention_tree_max timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype f16 --flash "scores;mma" \
  --shapes "$SHAPES" --warmup 2 --runs 10 --out $RS/att-both-f16.json > $RS/att-both-f16.log 2>&1
echo "=== att both f16 rc=$?"; grep "^|.*Mma\|panicked\|refused\|rror" $RS/att-both-f16.log | sort -u | head -4 | cut -c1-200
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
PARTS=("enc-compile::${ENC_S:-60}:$ENC")
for round in 1 2; do for part in "${VARIANTS[@]}"; do IFS=: read -r name vars <<< "$part"; PARTS+=("enc-$name-$round:$vars:${ENC_S:-60}:$ENC"); done; done
TAIL=1 bench_parts $RS "${PARTS[@]}" > /dev/null
grep -H "^image" $RS/enc-*.log | sed 's|^.*/s33c/||' | cut -c1-200
if [ $SECONDS -lt ${NCU_UNTIL:-230} ]; then
  env $ON=mma_attention_row_pairs,mma_attention_tree_max timeout ${NCU_S:-45} $NCU --kernel-name regex:mma_attention_fragments --launch-skip 2 --launch-count 1 $NCU_SECTIONS \
    $B/phi3v bench attention --device cuda --dtype bf16 --flash mma --shapes "17,16,577,577,64" --warmup 2 --runs 1 > $RS/ncu-both.txt 2>&1
  echo "=== ncu both rc=$?"; ncu_report $RS/ncu-both.txt | grep -v "µs$" | head -24
fi
echo "done at $SECONDS s"
(cd $OUT && tar czf s33c.tgz s33c && rm -rf s33c)
