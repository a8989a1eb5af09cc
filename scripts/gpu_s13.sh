#!/usr/bin/env bash
# Session 13's device work (written in session 13, which had no device time; run it next):
#   kcache  — the kernel cache (`phi3v --kernel-cache`): `phi3v generate` on the tiny
#             checkpoint in bf16 twice in fresh processes, from a folder with no cubecl.toml
#             above it (gpu_env.sh writes one in the repository, which would rule): the second
#             run should skip NVRTC (expected: ~150 s → a few seconds);
#   kernels — the kernels test on cuda bf16 (SkinnyTuning shapes included);
#   sweep   — the b=1 decode breakdown at each skinny-kernel shape (PHI3V_SKINNY=columns,
#             lane_vectors,depth; default 4,4,1), same binary: which one reads the weights
#             fastest at one row;
#   flash   — prefill 1024/4096 and image encode, Burn's attention vs the flash kernel
#             (PHI3V_FLASH_ATTENTION=0/1), breakdown and bench;
#   engine  — generation 1024→128 at 1 and 10 requests, static and engine (warm-up first);
#             prefix caching is on but the prompts share nothing.
# Results under $OUT as they come, packed into one tgz per part.
# Usage (device tool, carry .gpu): bash scripts/gpu_s13.sh PART... (e.g. `kcache kernels sweep`)
source scripts/gpu_env.sh
for part in "$@"; do
  D=$OUT/$part; mkdir -p $D
  case $part in
    kcache)
      mkdir -p /tmp/kc-run && cd /tmp/kc-run
      for n in 1 2; do
        s=$(date +%s.%N)
        timeout ${KC_LIMIT:-240} $B/phi3v --kernel-cache $D/cache "${GEN_TINY[@]}" --device cuda --dtype bf16 > $D/run$n.json 2> $D/run$n.err
        echo "kcache run $n rc=$? $(python3 -c "import sys; print(round($(date +%s.%N) - $s, 1))") s"
      done
      du -sh $D/cache; find $D/cache -type f | head; rm -rf $D/cache
      cmp <(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token_ids"])' $D/run1.json) \
          <(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token_ids"])' $D/run2.json) && echo "same tokens"
      cd $R ;;
    kernels)
      PHI3V_TEST_DEVICES=cuda:0:bf16,cuda:0:f32 timeout ${KERNELS_LIMIT:-200} $B/kernels > $D/kernels.log 2>&1
      echo "kernels rc=$?"; grep -c "pass" $D/kernels.log; grep -i "fail\|test result" $D/kernels.log | head ;;
    sweep)
      cd target
      for t in ${TUNINGS:-4,4,1 4,4,2 4,4,4 8,4,1 8,4,2 4,8,2 2,4,4}; do
        PHI3V_SKINNY=$t timeout ${SWEEP_LIMIT:-45} $B/phi3v "${DECODE_BREAKDOWN[@]:0:14}" --decode-batches 1 --out $D/bd-$t > $D/bd-$t.log 2>&1
        echo "=== PHI3V_SKINNY=$t rc=$?"; grep "whole step" $D/bd-$t.log | cut -c1-160; grep "_proj" $D/bd-$t.log | cut -c1-120
      done
      cd $R ;;
    flash)
      # Prefill 1024 and image encode with Burn's attention, then with the flash kernel.
      cd target
      for fa in 0 1; do
        PHI3V_FLASH_ATTENTION=$fa timeout ${FLASH_LIMIT:-150} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
          --prefill 1024 --decode-batches 1 --warmup 2 --runs 10 --out $D/bd-fa$fa > $D/bd-fa$fa.log 2>&1
        echo "=== breakdown flash=$fa rc=$?"; grep "whole step\|attention" $D/bd-fa$fa.log | cut -c1-160
        PHI3V_FLASH_ATTENTION=$fa timeout ${FLASH_LIMIT:-150} $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios prefill,images \
          --prompt-lengths 1024,4096 --prefill-batches 1 --images 336x336,1344x1344 --num-crops 16 --warmup 1 --runs 3 --out $D/run-fa$fa > $D/run-fa$fa.log 2>&1
        echo "=== prefill/images flash=$fa rc=$?"; grep "^prefill\|^image" $D/run-fa$fa.log
      done
      cd $R ;;
    engine)
      cd target
      timeout ${GEN_LIMIT:-240} $B/phi3v bench run --preset phi3v-128k --device cuda --scenarios generation --parallel 1,10 \
        --batching static,engine --shapes 1024x128 --warmup 1 --runs ${RUNS:-3} --out $D/ours > $D/ours.log 2>&1
      echo "=== engine rc=$?"; grep "^generation" $D/ours.log
      cd $R ;;
    *) echo "unknown part $part" ;;
  esac
  (cd $OUT && tar czf $part.tgz $part && rm -rf $part)
done
ls -la $OUT
