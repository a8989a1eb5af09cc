#!/usr/bin/env bash
# RUN in session 18 (call 1, docs/kernels.md); flash_tiles_causal, which it opts in, was removed after call 2 (wrong on CUDA): the name is now ignored.
# Session 18 — written, not run (no device machine was lent in sessions 17 and 18): the first
# device call of the next session (supersedes session 16's gpu_s16a.sh). Build first:
#   TESTS="kernels engine" PROF=1 bash scripts/build_gpu_slim.sh      (carry [".gpu"])
#   background (compilation-bound):
#     kernels-bf16, kernels-f32 — the kernels test on cuda: the strided rotary_write_paged,
#       attention_softmax and FlashAttention::Scores, the matmul tilings, the 10-row decode
#       projections at a tiling (PHI3V_SKINNY_MAX_ROWS), and the tensor-core flash routine on
#       causal problems with the limit as a materialised mask (flash_tiles_causal, forced by the
#       test). If both pass: drop rotary_write_paged's opt-in check in cube.rs; if the causal
#       Tiles checks pass, flash_tiles_causal can be on by default;
#     engine — the engine's tests on cuda f32 with PHI3V_KERNELS_ON=rotary_write_paged;
#   foreground (timing), one after the other:
#     att  — `phi3v bench attention` with flash_tiles_causal opted in: Burn's, scores and three
#            tilings at the prefill 1024 and 4096 shapes (causal) and the vision tower's (17
#            crops); each output's difference from Burn's says whether the masked causal path
#            is right on CUDA;
#     pbd  — bench/peer_kernels.py: the eager PyTorch breakdown (decode 1 and 10 rows, prefill
#            1024, and the vision tower at num_crops 16 stage by stage);
#     bdv  — `phi3v bench breakdown`'s vision phase beside the peer's (first, in a run of its
#            own), its attention also under scores and the 4,2,2 tiling;
#     bd   — the decode (1, 10 rows) and prefill 1024 phases beside the peer's (with
#            phi3v-prof: the host profile of the decode steps too), the prefill attention
#            also under scores and the 4,2,2 tiling (causal through the mask).
# Returns s18a.tgz and the kernel caches. Usage (device tool): bash scripts/gpu_s18a.sh (~490 s; ATT_S, PBD_S, BDV_S, BD_S, TESTS_S set the parts' limits)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s18a; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
LIMIT=${TESTS_S:-450} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=${TESTS_S:-450} job kernels-f32 env PHI3V_TEST_DEVICES=cuda:0:f32 $B/kernels --nocapture
LIMIT=${TESTS_S:-450} job engine env PHI3V_TEST_DEVICES=cuda:0:f32 PHI3V_KERNELS_ON=rotary_write_paged $B/engine --test-threads 1
cd $D
export PHI3V_KERNELS_ON=flash_tiles_causal
s=$(date +%s)
timeout ${ATT_S:-110} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2;4,1,1;2,2,2" \
  --shapes "1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64" --warmup 3 --runs 20 --out $RS/att.json > $RS/att.log 2>&1
echo "=== att rc=$? $(( $(date +%s) - s )) s"; grep -v "^Problem" $RS/att.log | cut -c1-200
cd $R
s=$(date +%s)
timeout ${PBD_S:-90} python3 bench/peer_kernels.py --preset cli/presets/phi3v-128k.json --decode-batches 1,10 --prefill 1024 \
  --image-grid 4x4 --warmup 2 --runs 10 --out $RS/peer_bd.json 2>&1 | grep -v Warning | tail -6
echo "=== pbd rc=$? $(( $(date +%s) - s )) s"
cd $D
PEER=(); [ -s $RS/peer_bd.json ] && PEER=(--peer $RS/peer_bd.json)
# The vision phase first, in a run of its own (a short decode phase comes with it), so that a
# slow compilation of the decoder's phases cannot cut it.
s=$(date +%s)
timeout ${BDV_S:-120} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1 --context 16 \
  --prefill 0 --image-grid 4x4 --flash "burn;scores;4,2,2" --warmup 2 --runs 10 "${PEER[@]}" --out $RS/bdv > $RS/bdv.log 2>&1
echo "=== bdv rc=$? $(( $(date +%s) - s )) s"; grep -A 24 "^## vision" $RS/bdv/breakdown.md | cut -c1-200
[ -f $RS/bdv/breakdown.md ] || grep "vision\|  " $RS/bdv.log | tail -20
BIN=$B/phi3v; PROFILE=()
[ -x $B/phi3v-prof ] && BIN=$B/phi3v-prof && PROFILE=(--profile $RS/profile --profile-steps 100)
s=$(date +%s)
timeout ${BD_S:-160} $BIN bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1,10 --context 1024 \
  --prefill 1024 --no-image --flash "burn;scores;4,2,2" --warmup 2 --runs 10 "${PEER[@]}" "${PROFILE[@]}" --out $RS/bd > $RS/bd.log 2>&1
echo "=== bd rc=$? $(( $(date +%s) - s )) s"; grep "whole step\|^## \|Host:" $RS/bd/breakdown.md
grep "attention" $RS/bd/breakdown.md | cut -c1-160
for f in $RS/profile/*.top.md; do [ -f "$f" ] && { echo "=== $f"; head -15 "$f" | cut -c1-180; }; done
unset PHI3V_KERNELS_ON
cd $R
wait
collect; cp /tmp/res/kernels-* /tmp/res/engine.* $RS/ 2>/dev/null
for j in kernels-bf16 kernels-f32; do echo "=== $j"; cat $W/$j/out.txt | grep -E "test result|FAIL|panicked|rc=|softmax|as scores \[1, 4/4|rotary_write_paged|flash_attention at .* causal|10-row" | cut -c1-220; done
TAIL=20 show engine | tail -25
(cd $OUT && tar czf s18a.tgz s18a && rm -rf s18a)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
