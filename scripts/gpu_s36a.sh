#!/usr/bin/env bash
# Session 36, call 1 (H100 or H200; a pack whose phi3v has the `mma_attention_copies` switch,
# built without `profile`; carry .gpu and .gl). ≤ 560 s.
# The change: the register-fragment flash kernel's keys and values copied into a ring of two
# 64-key steps of shared memory by `cp.async` (`mma_attention_copies`, off by default until this
# call), in place of the register prefetch (heads ≤ 64: CLIP) or the loads at each step's start
# (96-dim heads: Phi-3's prefill). Prediction: ~130 registers instead of 150–168, 4 cubes per
# multiprocessor instead of 3, CLIP's attention 229–282 → ~150–190 µs per layer (SDPA 85–91),
# image encode at num_crops 16 −1.5 to −3 ms (17.8–17.9 ms before, H100); prefill 1024 the same
# or faster.
#   1. `bench attention --flash "scores;mma"` (prefill 1024 and 4096 causal, CLIP's 17×16×577×64)
#      with the copies on, then off (the default), in bf16; the copies also in f16; torch's SDPA
#      at the same shapes. `rel. diff` is each output against `scores`';
#   2. Nsight Compute of the flash kernel at CLIP's shape, copies on and off (registers,
#      occupancy, stalls);
#   3. image encode and prefill 1024: a compile run, then on / off alternating twice;
#   4. the fixture parity suite on cuda bf16 with the copies on.
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s36a
cd $D
ON=PHI3V_KERNELS_ON=mma_attention_copies
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
for part in "copies-bf16:$ON:bf16" "default-bf16::bf16" "copies-f16:$ON:f16"; do
  IFS=: read -r name vars dt <<< "$part"
  s=$(date +%s)
  env $vars timeout ${ATT_S:-60} $B/phi3v bench attention --device cuda --dtype $dt --flash "scores;mma" --shapes "$SHAPES" \
    --warmup 3 --runs 20 --out $RS/att-$name.json > $RS/att-$name.log 2>&1
  echo "=== attention $name rc=$? $(( $(date +%s) - s )) s"; grep "^|\|panicked\|refused\|rror" $RS/att-$name.log | sort -u | head -12 | cut -c1-200
done
timeout 40 python3 $R/bench/peer_attention.py --dtype bf16 --shapes "$SHAPES" --out $RS/peer-att-bf16.json 2>&1 | tail -5
for part in "ncu-copies:$ON" "ncu-default:"; do
  IFS=: read -r name vars <<< "$part"
  [ $SECONDS -gt ${NCU_UNTIL:-200} ] && { echo "=== $name: no time left"; continue; }
  env $vars timeout ${NCU_S:-45} $NCU --kernel-name regex:mma_attention_fragments --launch-skip 2 --launch-count 1 $NCU_SECTIONS \
    $B/phi3v bench attention --device cuda --dtype bf16 --flash mma --shapes "17,16,577,577,64" --warmup 2 --runs 1 > $RS/$name.txt 2>&1
  echo "=== $name rc=$?"; ncu_report $RS/$name.txt | grep -v "µs$" | head -24
done
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
alternate $RS enc ${ENC_S:-60} "$ENC" copies "$ON" default ""
PRE="--dtype bf16 --scenarios prefill --prompt-lengths 1024 --prefill-batches 1 --warmup 2 --runs 10"
alternate $RS pre ${PRE_S:-45} "$PRE" copies "$ON" default ""
echo "benches done at $SECONDS s"
export PHI3V_KERNELS_ON=mma_attention_copies
parity_into_rs 150
unset PHI3V_KERNELS_ON
echo "done at $SECONDS s"
(cd $OUT && tar czf s36a.tgz s36a && rm -rf s36a)
