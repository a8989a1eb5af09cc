#!/usr/bin/env bash
# Session 35, call 2 (H100 or H200; a pack with phi3v of the rotary-table fix (d208939 or later),
# phi3v-old (7380ea3, before it) and phi3v-plugin-conformance of the fix; carry .gpu and .gl).
# ≤ 520 s.
# The change: the rotary tables are uploaded as one row, then viewed as [batch, 1, seq, 96]. On
# CUDA they were pitched to 128 values per row, every slice failed the rotary kernels'
# contiguity check, and each layer copied cos and sin in every step: 64 launches and 64
# allocations more per decode step at 32 layers (found in session 35's host profile: 16 % of
# the caller's samples under `into_contiguous` in `rotary_append`). Prediction: b=1 through the
# engine +10 to +25 % tokens/s (217–225 before on the H100); 10 parallel +5 to +15 %.
#   1. b=1 through the engine (1024 → 128): a run that compiles, then new / old alternating twice;
#   2. the fixture parity suite on cuda bf16 with the new binaries;
#   3. 10 parallel through the engine: the same alternation (GEN10_S=0 skips it);
#   4. `bench breakdown` of a b=1 decode step with the new binary (step, layer, host share).
source scripts/gpu_env.sh
echo "pack of $(head -2 .gpu/commit.txt | tr '\n' ' ')"
timed_folders s35b
cd $D
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 1"
alternate $RS gen1 ${GEN_S:-45} "$GEN" new "" old "PHI3V_BIN=phi3v-old"
echo "b=1 done at $SECONDS s"
parity_into_rs 150
cd $D
if [ "${GEN10_S:-50}" != 0 ]; then
  GEN10="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 10"
  alternate $RS gen10 ${GEN10_S:-50} "$GEN10" new "" old "PHI3V_BIN=phi3v-old"
fi
s=$(date +%s)
timeout ${BD_S:-60} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 --prefill 0 --no-image \
  --warmup 3 --runs 20 --out $RS/bd > $RS/bd.log 2>&1
echo "=== breakdown rc=$? $(( $(date +%s) - s )) s"
grep -E "^\| [a-z]|Sum of|Host" $RS/bd/breakdown.md 2>/dev/null | cut -c1-160 | head -20
echo "done at $SECONDS s"
(cd $OUT && tar czf s35b.tgz s35b && rm -rf s35b)
