#!/usr/bin/env bash
# Session 16 — written, not run (the session had 155 s of device time, less than a machine
# start): the first device call of the next session. Build first:
#   TESTS="kernels engine" PROF=1 bash scripts/build_gpu_slim.sh      (carry [".gpu"])
#   background (compilation-bound):
#     kernels-bf16, kernels-f32 — the kernels test on cuda (rotate_value in the three rotary
#       kernels, the strided rotary_write_paged, attention_softmax and FlashAttention::Scores,
#       the tilings); if both pass, drop rotary_write_paged's opt-in check in cube.rs;
#     engine — the engine's tests on cuda f32 with PHI3V_KERNELS_ON=rotary_write_paged;
#   foreground (timing), one after the other:
#     bd   — with phi3v-prof: the host profile of decode steps at 1 and 10 rows;
#     att  — `phi3v bench attention`: Burn's, scores, the 4,2,2 tiling at the prefill 1024 and
#            4096 shapes and the vision tower's (17 crops); outputs compared with Burn's;
#     pre  — prefill 1024/4096 and image encode at num_crops 16, default vs
#            PHI3V_FLASH_ATTENTION=scores (same binary, same call);
#     peer — bench/peer_torch.py on the prefill and image points, then `bench compare`.
# Returns s16a.tgz and the kernel caches. Usage (device tool): bash scripts/gpu_s16a.sh (~500 s; BD_S, ATT_S, PRE_S, PEER_S, TESTS_S set the parts' limits)
source scripts/gpu_env.sh
D=$W/bench; mkdir -p $D; RS=$OUT/s16a; mkdir -p $RS
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > $D/cubecl.toml
[ -f .gpu/cache.tgz ] && tar xzf .gpu/cache.tgz -C $D
LIMIT=${TESTS_S:-500} job kernels-bf16 env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture
LIMIT=${TESTS_S:-500} job kernels-f32 env PHI3V_TEST_DEVICES=cuda:0:f32 $B/kernels --nocapture
LIMIT=${TESTS_S:-500} job engine env PHI3V_TEST_DEVICES=cuda:0:f32 PHI3V_KERNELS_ON=rotary_write_paged $B/engine --test-threads 1
cd $D
s=$(date +%s)
timeout ${ATT_S:-120} $B/phi3v bench attention --device cuda --dtype bf16 --flash "burn;scores;4,2,2" \
  --shapes "1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64" --warmup 3 --runs 20 --out $RS/att.json > $RS/att.log 2>&1
echo "=== att rc=$? $(( $(date +%s) - s )) s"; grep -v "^Problem" $RS/att.log | cut -c1-200
# The host profile of decode steps at 1 and 10 rows (built with PROF=1; issue 10's b=1 lever).
if [ -x $B/phi3v-prof ]; then
  s=$(date +%s)
  timeout ${BD_S:-100} $B/phi3v-prof bench breakdown --preset phi3v-128k --device cuda --dtype bf16 --decode-batches 1,10 --context 1024 \
    --prefill 0 --warmup 2 --runs 10 --profile $RS/profile --profile-steps 200 --out $RS/bd > $RS/bd.log 2>&1
  echo "=== bd (profile) rc=$? $(( $(date +%s) - s )) s"; grep "whole step\|^## \|Host:" $RS/bd/breakdown.md
  for f in $RS/profile/*.top.md; do [ -f "$f" ] && { echo "=== $f"; head -25 "$f" | cut -c1-180; }; done
fi
P="--scenarios prefill,images --prompt-lengths 1024,4096 --prefill-batches 1 --images 1344x1344 --num-crops 16 --warmup 1 --runs 5"
bench_parts $RS "pre-burn:PHI3V_FLASH_ATTENTION=burn:${PRE_S:-75}:$P" "pre-scores:PHI3V_FLASH_ATTENTION=scores:${PRE_S:-75}:$P"
cd $R
if [ "${PEER_S:-100}" != 0 ]; then
  timeout ${PEER_S:-100} python3 bench/peer_torch.py --preset cli/presets/phi3v-128k.json --out $RS/peer.json --ours $RS/pre-scores/results.json \
    --scenarios prefill,images --prompt-lengths 1024,4096 --prefill-batches 1 --warmup 1 --runs 5 2>&1 | grep -v Warning | tail -12
  for name in pre-burn pre-scores; do
    [ -f $RS/$name/results.json ] && [ -f $RS/peer.json ] && $B/phi3v bench compare $RS/$name/results.json $RS/peer.json --bandwidth 4.8e12 > $RS/compare-$name.md
  done
  cat $RS/compare-pre-scores.md 2>/dev/null | head -30
fi
wait
collect; cp /tmp/res/kernels-* /tmp/res/engine.* $RS/ 2>/dev/null
for j in kernels-bf16 kernels-f32; do echo "=== $j"; cat $W/$j/out.txt | grep -E "test result|FAIL|panicked|rc=|softmax|as scores \[1, 4/4|rotary_write_paged" | cut -c1-220; done
TAIL=20 show engine | tail -25
(cd $OUT && tar czf s16a.tgz s16a && rm -rf s16a)
tar czf - -C $D . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
