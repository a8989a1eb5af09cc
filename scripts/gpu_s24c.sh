#!/usr/bin/env bash
# Session 24's second call (warm, after gpu_s24a.sh; same pack), when the device time left can
# hold only one more call: issue 8's sweep and issue 10's cuBLAS ordering in one.
#   stream      — the defaults: generation 1024 → 128 at 1, 10, 64, 128 and 256 parallel
#                 requests, the engine and static batching (issue 8's sweep), and prefill 1024
#                 and 4096; results are written after every point, so a time limit keeps those
#                 done (this process also compiles the kernels);
#   queued-all  — PHI3V_CUBLAS_ORDER=queued with every product on cuBLAS (PHI3V_SKINNY_MAX_ROWS=0
#                 PHI3V_BLAS_MIN_ROWS=1): prefill 1024 and 4096, generation at 1 and 10 (engine);
#   queued      — PHI3V_CUBLAS_ORDER=queued alone, the same points;
# then the PyTorch peer on the same points (generation 1 and 10, prefill 1024 and 4096).
# Seconds per part: STREAM_S, QALL_S, Q_S, PEER_S; SWEEP: the stream part's parallel requests.
# Session 24 ran it with STREAM_S=230 QALL_S=75 Q_S=60 PEER_S=70: the queued parts and the peer
# were cut short (docs/kernels.md session 24), so their defaults are longer now.
source scripts/gpu_env.sh
timed_folders s24c
cd $D
PRE="--scenarios prefill,generation --prompt-lengths 1024,4096 --prefill-batches 1 --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1"
ALL="PHI3V_SKINNY_MAX_ROWS=0 PHI3V_BLAS_MIN_ROWS=1"
bench_parts $RS "stream::${STREAM_S:-270}:$PRE --parallel ${SWEEP:-1,10,64,128,256} --batching engine,static" \
  "queued-all:PHI3V_CUBLAS_ORDER=queued $ALL:${QALL_S:-150}:$PRE --parallel 1,10 --batching engine" \
  "queued:PHI3V_CUBLAS_ORDER=queued:${Q_S:-150}:$PRE --parallel 1,10 --batching engine"
grep "^generation\|^prefill" $RS/stream.log | cut -c1-200 | tail -16
cd $R
s=$(date +%s)
timeout ${PEER_S:-120} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json --ours $RS/stream/results.json \
  --scenarios prefill,generation --prompt-lengths 1024,4096 --prefill-batches 1 --parallel 1,10 --shapes 1024x128 --warmup 1 --runs 3 2>&1 | grep -v Warning | tail -12
echo "=== peer $(( $(date +%s) - s )) s"
(cd $OUT && tar czf s24c.tgz s24c && rm -rf s24c)
