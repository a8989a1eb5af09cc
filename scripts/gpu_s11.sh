#!/usr/bin/env bash
# Session 11's first device call (carry .gpu; binaries from scripts/build_gpu_bins.sh).
# 1. Alone on the machine (issue 10): `phi3v bench breakdown` (bf16, phi3v-128k shapes, decode
#    b=1 and b=10 after 1024 tokens) with the session's defaults (one-row products through the
#    split-K skinny kernel, decode attention split over the keys), then the same binary with
#    one-row products through Burn's matmul (PHI3V_SKINNY_MIN_ROWS=2) and with unsplit decode
#    attention (PHI3V_KERNELS_OFF=decode_attention_split).
# 2. Then in parallel, LIMIT seconds each (issues 5, 10): the kernels test on cuda f32 + bf16;
#    `phi3v generate` on the tiny checkpoint in f32 and bf16 (greedy ids against the fixture);
#    the fixture parity suite in bf16, one job per case.
# Usage (device tool): bash scripts/gpu_s11.sh [job seconds] [breakdown seconds]
source scripts/gpu_env.sh
LIMIT=${1:-280}; BD=${2:-90}
D=/tmp/res; mkdir -p $D
cd target
breakdown() {
  local name=$1; shift
  env "$@" timeout $BD $B/phi3v "${DECODE_BREAKDOWN[@]}" --decode-batches 1,10 --out $D/bd-$name > $D/bd-$name.log 2>&1
  echo "=== breakdown $name ($*) rc=$?"; grep "whole step\|Host:\|per kernel" $D/bd-$name.log | cut -c1-200
  grep "_proj\|attention\|append" $D/bd-$name.log | cut -c1-120
}
breakdown default X=1
breakdown rows2 PHI3V_SKINNY_MIN_ROWS=2
breakdown nosplit PHI3V_KERNELS_OFF=decode_attention_split
cd $R
job kernels-cuda env PHI3V_TEST_DEVICES=cuda:f32,cuda:bf16 $B/kernels --nocapture
job generate-cuda-f32 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype f32
job generate-cuda-bf16 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
parity_jobs ${CASES:-astronaut_describe camera_gray_jpeg coffee_portrait long_context_two_images multi_turn panorama tiny_rgba_upscaled two_images}
wait
TAIL=6 show kernels-cuda generate-cuda-f32 generate-cuda-bf16 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|skinny\|linear \[\|decode_attention" $W/kernels-cuda/err.txt $W/kernels-cuda/out.txt | cut -c1-160 | head -30
parity_report
for n in generate-cuda-f32 generate-cuda-bf16; do
  python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n
done
collect
cp $D/*.log /tmp/res/ 2>/dev/null
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
