#!/usr/bin/env bash
# Session 34, call 2 (H100 or H200; a pack of b725556 or later with phi3v and
# phi3v-plugin-conformance; carry .gpu and .gl). ≤ 560 s. Two changes, each behind a switch:
#   - CLIP's fc1 bias added inside the quick-GELU kernel (`quick_gelu_bias`, on; off = the bias
#     added by a pass of its own, as before): fc1's output (9809 × 4096) read and written once
#     instead of twice per layer. Prediction: image encode at num_crops 16 −0.8 to −1.3 ms.
#   - the cubecl-runtime patch's exact-size reservations (CUBECL_POOL_EXACT_FIRST, on; 0 =
#     upstream's coalesce-then-first-fit on every reservation): the device thread, which sets
#     the pace of a decode step, spends less per allocation. Prediction: b=1 through the engine
#     +5 to +15 % tokens/s.
# 1. the fixture parity suite on cuda bf16 (the bias now added in f32 inside the activation);
# 2. image encode: a run that compiles, then default / `quick_gelu_bias` off alternating twice;
# 3. b=1 1024 → 128 through the engine: a run that compiles, then exact-first on / off twice.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
mkdir -p $OUT/s34b
LIMIT=${PARITY_S:-200} parity_dtype bf16 $(fixture_cases)
collect; cp /tmp/res/parity-* $OUT/s34b/ 2>/dev/null
timed_folders s34b
cd $D
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
alternate $RS enc ${ENC_S:-60} "$ENC" on "" off "PHI3V_KERNELS_OFF=quick_gelu_bias"
GEN="--scenarios generation --shapes 1024x128 --warmup 1 --runs 8 --generation-runs 1 --batching engine --parallel 1"
alternate $RS gen1 ${GEN_S:-45} "$GEN" exact "" upstream "CUBECL_POOL_EXACT_FIRST=0"
echo "done at $SECONDS s"
(cd $OUT && tar czf s34b.tgz s34b && rm -rf s34b)
