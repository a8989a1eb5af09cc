#!/usr/bin/env bash
# Session 33, call 2 (H100 or H200; a pack of 9ece1f0 or later with phi3v; carry .gpu and .gl).
# ≤ 400 s. The register-fragment flash kernel with its keys and values prefetched into registers
# during the step before and stored into shared memory a vector at a time
# (`mma_attention_prefetch`, new, off by default) against the default, alternating:
#   1. `bench attention` bf16 (prefill 1024 and 4096 causal, CLIP's 17×16×577×64): the kernel's
#      time and its relative difference against `scores`, off/on twice; torch's SDPA once;
#   2. image encode (1344², num_crops 16), off/on twice;
#   3. prefill 4096, off/on once;
#   4. Nsight Compute on the kernel at CLIP's shape, off and on (stall reasons, occupancy).
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
timed_folders s33b
cd $D
PF=PHI3V_KERNELS_ON=mma_attention_prefetch
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
for part in "att-off-1:" "att-on-1:$PF" "att-off-2:" "att-on-2:$PF"; do
  IFS=: read -r name vars <<< "$part"
  env $vars timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma" --shapes "$SHAPES" \
    --warmup 2 --runs 10 --out $RS/$name.json > $RS/$name.log 2>&1
  echo "=== $name rc=$? at $SECONDS s"; grep "^|\|panicked\|refused\|rror" $RS/$name.log | grep -v "scores" | sort -u | head -8 | cut -c1-200
done
timeout 40 python3 $R/bench/peer_attention.py --dtype bf16 --shapes "$SHAPES" --out $RS/peer-att-bf16.json 2>&1 | tail -4
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
PRE="--dtype bf16 --scenarios prefill --prompt-lengths 4096 --prefill-batches 1 --warmup 2 --runs 6"
TAIL=1 bench_parts $RS "enc-compile::${ENC_S:-60}:$ENC" "enc-off-1::${ENC_S:-60}:$ENC" "enc-on-1:$PF:${ENC_S:-60}:$ENC" \
  "enc-off-2::${ENC_S:-60}:$ENC" "enc-on-2:$PF:${ENC_S:-60}:$ENC" "pre-off::${PRE_S:-60}:$PRE" "pre-on:$PF:${PRE_S:-60}:$PRE" > /dev/null
grep -H "^image\|^prefill batch" $RS/enc-*.log $RS/pre-*.log | sed 's|^.*/s33b/||' | cut -c1-200
# 4. Nsight Compute on the kernel at CLIP's shape, off and on: where its warps stall.
for part in "ncu-off:" "ncu-on:$PF"; do
  IFS=: read -r name vars <<< "$part"
  [ $SECONDS -gt ${NCU_UNTIL:-330} ] && { echo "=== $name: no time left"; continue; }
  env $vars timeout ${NCU_S:-45} $NCU --kernel-name regex:mma_attention_fragments --launch-skip 2 --launch-count 1 $NCU_SECTIONS \
    $B/phi3v bench attention --device cuda --dtype bf16 --flash mma --shapes "17,16,577,577,64" --warmup 2 --runs 1 > $RS/$name.txt 2>&1
  echo "=== $name rc=$?"; ncu_report $RS/$name.txt | grep -v "µs$" | head -24
done
echo "done at $SECONDS s"
(cd $OUT && tar czf s33b.tgz s33b && rm -rf s33b)
