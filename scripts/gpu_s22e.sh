#!/usr/bin/env bash
# Session 22, last call (fresh H100; full pack of the commit that makes `scores` Auto's choice
# for the vision tower and pads its keys to a multiple of 8; carry .gpu and .gl). ~330 s:
#   att  — `bench attention --parts` alone on the GPU: scores with aligned rows at CLIP's shape
#          against session 22's 961 µs (parts: q·kᵀ 362.9, softmax 215.6, p·v 212.1);
#   img  — `bench run --scenarios images`: the image encode at num_crops 16 (41.4 ms in call 2);
#   then side by side: the fixture parity suite on cuda f16 and bf16 (f16 failed every image
#   case under the 4,2,2 tiles), `generate` on cuda bf16 against the fixture's ids, wgpu f16
#   parity (its vision tower now takes `scores` too), cuda f32 parity, the kernels test on cuda
#   f32, and issue 9's op checks through the reference CUDA plugin in f16 and bf16.
source scripts/gpu_env.sh
timed_folders s22e
cd $D
s=$(date +%s)
timeout ${ATT_S:-80} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2" --parts --warmup 2 --runs 10 \
  --out $RS/att.json > $RS/att.md 2> $RS/att.log
echo "=== att rc=$? $(( $(date +%s) - s )) s"; grep "^| [0-9]" $RS/att.md | cut -c1-170
bench_parts $RS "img::${IMG_S:-50}:--scenarios images --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
cd $R
LIMIT=${JOBS_S:-170}
job parity-cuda-f16 $B/phi3v-parity --device cuda --dtype f16
job parity-cuda-bf16 $B/phi3v-parity --device cuda --dtype bf16
job generate-cuda-bf16 $B/phi3v "${GEN_TINY[@]}" --device cuda --dtype bf16
job parity-wgpu-f16 $B/phi3v-parity --device wgpu --dtype f16
job parity-cuda-f32 $B/phi3v-parity --device cuda --dtype f32
job kernels-f32 env PHI3V_TEST_DEVICES=cuda:0:f32 $B/kernels --nocapture
job plugin-ops-half $B/phi3v-plugin-conformance --device plugin:$B/libphi3v_plugin_cuda.so:0 --ops-only --dtypes f16,bf16
wait; collect; cp /tmp/res/* $RS/ 2>/dev/null
for n in parity-cuda-f16 parity-cuda-bf16 parity-wgpu-f16 parity-cuda-f32; do echo "=== $n: $(tail -n1 $W/$n/out.txt)"; grep "^| [a-z]" $W/$n/out.txt | cut -c1-200; done
python3 scripts/greedy_check.py $W/generate-cuda-bf16/out.txt $R/tests/fixtures/cases/astronaut_describe.json generate-cuda-bf16; tail -n1 $W/generate-cuda-bf16/out.txt
echo "=== kernels-f32"; grep -hE "test result|FAIL|panicked|rc=|softmax.*of" $W/kernels-f32/out.txt $W/kernels-f32/err.txt | cut -c1-200 | tail -20
echo "=== plugin-ops-half"; grep -E "FAIL|op checks pass|CONFORMANT|rc=" $W/plugin-ops-half/out.txt | cut -c1-200 | tail -12
(cd $OUT && tar czf s22e.tgz s22e && rm -rf s22e)
