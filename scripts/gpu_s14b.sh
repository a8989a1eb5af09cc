#!/usr/bin/env bash
# Session 14, second device call (carry .gpu, with the first call's cache.tgz.part-* in .gpu):
# the benchmark card on the current code beside the PyTorch peer, one call (scripts/gpu_bench.sh):
#   gen — generation 1024 → 128 at 1, 10 and 64 parallel requests, static batch and engine;
#   pre — prefill 1024/4096, image encode 336² and 1344² at num_crops 16, the batch-1 latency
#         report and the KV-cache capacity;
# then the peer on the same shapes and `phi3v bench compare`. PHI3V_SKINNY and
# PHI3V_FLASH_ATTENTION pass through (the first call's choices).
# Usage (device tool): [PHI3V_SKINNY=c,l,d] [PHI3V_FLASH_ATTENTION=1] bash scripts/gpu_s14b.sh [gen s] [pre s] [peer s]
export PHI3V_SKINNY PHI3V_FLASH_ATTENTION
GEN=${1:-230}; PRE=${2:-120}; PEER_S=${3:-180}
export PARTS="gen:$GEN:--scenarios generation --parallel ${PARALLEL:-1,10,64} --batching static,engine --shapes 1024x128 --warmup 1 --generation-runs ${GEN_RUNS:-2};\
pre:$PRE:--scenarios prefill,images,latency,kv --prompt-lengths 1024,4096 --prefill-batches 1 --images 336x336,1344x1344 \
--num-crops 16 --latency-shape 1024x128 --warmup 1 --runs 3"
export PEER_ARGS="--scenarios generation,prefill,images,latency,kv --parallel ${PARALLEL:-1,10,64} --shapes 1024x128 \
--prompt-lengths 1024,4096 --prefill-batches 1 --latency-shape 1024x128 --warmup 1 --runs 3"
PEER_OURS=pre bash scripts/gpu_bench.sh 0 "$PEER_S"
