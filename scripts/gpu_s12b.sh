#!/usr/bin/env bash
# Session 12's performance call (carry .gpu), alone on the machine (issue 10): the eager
# PyTorch peer's stage breakdown (bench/peer_kernels.py, with the fused projections' composite
# stages), `phi3v bench breakdown` (bf16, phi3v-128k shapes, decode b=1 and b=10 after 1024
# tokens) with the fused projections and, in the same binary, without them
# (PHI3V_KERNELS_OFF=fused_linear); then generation 1024 → 128 at 1 and 10 requests (static
# batching) and the PyTorch peer's static-cache `generate` on the same shapes, and
# `phi3v bench compare`.
# Then, in the rest of the call (END seconds after the start), in parallel: the kernels test on
# cuda bf16 and `phi3v generate` on the tiny checkpoint in bf16 and f32 (fixture greedy ids).
# Results are written under $OUT as they come (a call cut short keeps what it has).
# Usage (device tool): bash scripts/gpu_s12b.sh [ours seconds] [peer seconds] [END seconds]
source scripts/gpu_env.sh
OURS=${1:-110}; PEER=${2:-130}; END=${3:-585}; T0=$(date +%s)
D=$OUT/perf; mkdir -p $D
[ -n "${NO_PEER_KERNELS:-}" ] || timeout 70 python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --out $D/peer-kernels.json --prefill 0 > $D/peer-kernels.log 2>&1
echo "=== peer kernels rc=$?"
PEER_BD=$D/peer-kernels.json; [ -f $PEER_BD ] || PEER_BD=$R/docs/bench/breakdown-h200-kernels/peer.json
cd target
breakdown() {
  local name=$1; shift
  env "$@" timeout 80 $B/phi3v "${DECODE_BREAKDOWN[@]:0:14}" --peer $PEER_BD --decode-batches 1,10 --out $D/bd-$name > $D/bd-$name.log 2>&1
  echo "=== breakdown $name ($*) rc=$?"; grep "whole step\|Host:\|per kernel" $D/bd-$name.log | cut -c1-200
  grep "_proj\|attention\|append" $D/bd-$name.log | cut -c1-120
}
breakdown fused X=1
breakdown unfused PHI3V_KERNELS_OFF=fused_linear
timeout $OURS $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --parallel 1,10 --batching static \
  --shapes 1024x128 --warmup 1 --runs 3 --out $D/ours > $D/ours.log 2>&1
echo "=== ours rc=$?"; grep "^generation" $D/ours.log
cd $R
timeout $PEER python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $D/peer.json --ours $D/ours/results.json \
  --scenarios generation --parallel 1,10 --shapes 1024x128 --warmup 1 --runs 3 > $D/peer.log 2>&1
echo "=== peer rc=$?"; grep -v Warning $D/peer.log | grep "^generation" | tail -4
[ -f $D/ours/results.json ] && [ -f $D/peer.json ] && $B/phi3v bench compare $D/ours/results.json $D/peer.json --bandwidth 4.8e12 | tee $D/compare.md | head -8
LIMIT=$(( END - ($(date +%s) - T0) - 15 )); echo "=== jobs with $LIMIT s"
job kernels-cuda-bf16 env PHI3V_TEST_DEVICES=cuda:bf16 $B/kernels --nocapture
job generate-cuda-bf16 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
job generate-cuda-f32 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype f32
wait
TAIL=6 show kernels-cuda-bf16 generate-cuda-bf16 generate-cuda-f32 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|norm_linear\|linear_add" $W/kernels-cuda-*/err.txt | cut -c1-200 | head -40
for n in generate-cuda-f32 generate-cuda-bf16; do
  python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n
done
collect; cp /tmp/res/* $D/ 2>/dev/null; ls $D | head -40
