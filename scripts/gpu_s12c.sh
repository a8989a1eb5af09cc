#!/usr/bin/env bash
# Session 12's second build (carry .gpu), alone on the machine: the decode breakdown at b=1
# and b=10 (the norm no longer fused into the products above 3 rows), then generation 1024 →
# 128 at 1 and 10 requests, static batching and the engine (which now warms up its pass
# shapes before the clock starts: `Engine::warm_up`). Results under $OUT as they come.
# Usage (device tool): bash scripts/gpu_s12c.sh [breakdown seconds] [generation seconds]
source scripts/gpu_env.sh
BD=${1:-70}; GEN=${2:-140}
D=$OUT/perf2; mkdir -p $D
cd target
timeout $BD $B/phi3v "${DECODE_BREAKDOWN[@]:0:14}" --decode-batches ${BATCHES:-1,10} --out $D/bd > $D/bd.log 2>&1
echo "=== breakdown rc=$?"; grep "whole step\|Host:\|per kernel" $D/bd.log | cut -c1-200
grep "_proj\|attention" $D/bd.log | cut -c1-120
timeout $GEN $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --parallel 1,10 --batching static,engine \
  --shapes 1024x128 --warmup 1 --runs ${RUNS:-3} --out $D/ours > $D/ours.log 2>&1
echo "=== ours rc=$?"; grep "^generation" $D/ours.log
cd $OUT && tar czf perf2.tgz perf2 && rm -rf perf2 && ls -la
