#!/usr/bin/env bash
# Session 25's second call (warm, after gpu_s25d.sh, same pack): the model's figures with the
# tensor-core flash kernel against the default, on the quiet GPU, ~${AB_S:-90} s per part:
#   default — `scores` attention, vector loads on;
#   mma     — PHI3V_FLASH_ATTENTION=mma;
#   scalar  — PHI3V_KERNELS_OFF=vector_loads (session 24's A/B, unless gpu_s25c ran it);
# points: the image encode at num_crops 16, prefill 1024 and 4096. Then, if SWEEP_S is set,
# issue 8's sweep (generation 1024 → 128 at 1, 10, 64, 128, 256, engine and static).
source scripts/gpu_env.sh
timed_folders s25e
cd $D
AB="--scenarios images,prefill --images 1344x1344 --num-crops 16 --prompt-lengths 1024,4096 --prefill-batches 1 --warmup 1 --runs 5"
bench_parts $RS "default::${AB_S:-90}:$AB" "mma:PHI3V_FLASH_ATTENTION=mma:${AB_S:-90}:$AB" ${SCALAR:+"scalar:PHI3V_KERNELS_OFF=vector_loads:${AB_S:-90}:$AB"}
grep -H "^image\|^prefill" $RS/*.log | cut -c1-220
if [ -n "${SWEEP_S:-}" ]; then
  bench_parts $RS "stream::$SWEEP_S:--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --parallel 1,10,64,128,256 --batching engine,static"
  grep "^generation" $RS/stream.log | cut -c1-220
fi
cd $R
(cd $OUT && tar czf s25e.tgz s25e && rm -rf s25e)
