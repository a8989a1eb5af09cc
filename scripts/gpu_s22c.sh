#!/usr/bin/env bash
# Issue 8's sweep (written in session 22, not yet run: no device time was left, and none was lent
# in session 23; alone, ~520 s): `bench run` generation 1024 → 128 at 64, 128 and 256 parallel
# requests (PARALLEL), the engine against static batching, bf16 on the phi3v-128k shapes, cuBLAS
# ordered by ORDER (PHI3V_CUBLAS_ORDER: `stream`, the default, or `queued`). Results are written
# after every point, so a time limit keeps the points done; they go to $OUT/$NAME (default s22c).
source scripts/gpu_env.sh
NAME=${NAME:-s22c}
timed_folders $NAME
cd $D; [ -d $W/bench ] && cd $W/bench
s=$(date +%s)
env PHI3V_CUBLAS_ORDER=${ORDER:-stream} timeout ${SWEEP_S:-500} $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --shapes 1024x128 \
  --parallel ${PARALLEL:-64,128,256} --batching engine,static --warmup 1 --generation-runs 1 --out $RS/sweep > $RS/sweep.log 2>&1
echo "=== sweep rc=$? $(( $(date +%s) - s )) s"; grep "^generation\|skip\|not fit\|error\|capacity" $RS/sweep.log | cut -c1-220
cat $RS/sweep/card.md 2>/dev/null | head -30
cd $R
(cd $OUT && tar czf $NAME.tgz $NAME && rm -rf $NAME)
ls -la $OUT
