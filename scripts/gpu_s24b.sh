#!/usr/bin/env bash
# Written in session 23 for the next session's second call (warm, right after gpu_s24a.sh; same
# pack): issue 10's measurement of `BlasOrdering::Queued` (docs/kernels.md session 23 has the
# prediction). `bench run` (bf16, phi3v-128k shapes, one process per setting, one after the
# other on the quiet GPU): prefill 1024 and 4096, generation 1024 → 128 at 1 and 10 parallel
# requests through the engine, under
#   stream        — the default (cuBLAS from 64 rows after three round trips; skinny kernels ≤ 16 rows);
#   queued        — PHI3V_CUBLAS_ORDER=queued (the same products, queued for the device thread);
#   queued-all    — queued, and every product on cuBLAS (PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1);
#   stream-all    — only with ALL_STREAM=1: every product on cuBLAS after the round trips (the
#                   queue's share of queued-all);
# (the first part also compiles the kernels: 150 s), then the PyTorch peer on the same points
# (~470 s in all; ~570 with ALL_STREAM=1). Next (warm, ~520 s): issue 8's sweep,
# `NAME=s24c ORDER=queued bash scripts/gpu_s22c.sh` if `queued` won here, else ORDER=stream.
source scripts/gpu_env.sh
timed_folders s24b
cd $D; [ -d $W/bench ] && cd $W/bench
ARGS="--scenarios prefill,generation --prompt-lengths 1024,4096 --prefill-batches 1 --shapes 1024x128 --parallel 1,10 --batching engine --warmup 1 --runs 5 --generation-runs 2"
ALL="PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1"
PARTS=("stream::${FIRST_S:-150}:$ARGS" "queued:PHI3V_CUBLAS_ORDER=queued:${PART_S:-100}:$ARGS" "queued-all:PHI3V_CUBLAS_ORDER=queued $ALL:${PART_S:-100}:$ARGS")
[ -n "${ALL_STREAM:-}" ] && PARTS+=("stream-all:$ALL:${PART_S:-100}:$ARGS")
bench_parts $RS "${PARTS[@]}"
cd $R
s=$(date +%s)
timeout ${PEER_S:-110} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json --ours $RS/stream/results.json \
  --scenarios prefill,generation --prompt-lengths 1024,4096 --prefill-batches 1 --parallel 1,10 --shapes 1024x128 --warmup 1 --runs 3 2>&1 | grep -v Warning | tail -12
echo "=== peer $(( $(date +%s) - s )) s"
(cd $OUT && tar czf s24b.tgz s24b && rm -rf s24b)
