#!/usr/bin/env bash
# Session 12's correctness call (carry .gpu; binaries from scripts/build_gpu_bins.sh), LIMIT
# seconds per job, all in parallel: the kernels test on cuda f32 and bf16 (the fused
# projections: norm before, residual add or SiLU·mul after; the review mends of session 11);
# `phi3v generate` on the tiny checkpoint in f32 and bf16 (greedy ids against the fixture);
# the engine's tests on cuda f32 (the paged path runs the fused layer too); the bf16 fixture
# parity of the cases session 11 left failing or unfinished (CASES).
# Usage (device tool): bash scripts/gpu_s12.sh [job seconds]
source scripts/gpu_env.sh
LIMIT=${1:-560}
job kernels-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/kernels --nocapture
job kernels-cuda-bf16 env PHI3V_TEST_DEVICES=cuda:bf16 $B/kernels --nocapture
job generate-cuda-f32 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype f32
job generate-cuda-bf16 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
job engine-cuda-f32 env PHI3V_TEST_DEVICES=cuda:f32 $B/engine --nocapture
parity_jobs ${CASES:-long_context_two_images astronaut_describe two_images coffee_portrait}
wait
TAIL=6 show kernels-cuda-f32 kernels-cuda-bf16 generate-cuda-f32 generate-cuda-bf16 engine-cuda-f32 | grep -v "^cuda .*: [0-9.e-]* vs composed" | cut -c1-250
grep -h "FAIL\|norm_linear\|linear_add" $W/kernels-cuda-*/err.txt | cut -c1-200 | head -40
parity_report
for n in generate-cuda-f32 generate-cuda-bf16; do
  python3 scripts/greedy_check.py $W/$n/out.txt $R/tests/fixtures/cases/astronaut_describe.json $n
done
collect
tar czf $OUT/round.tgz -C /tmp/res . && ls -la $OUT
