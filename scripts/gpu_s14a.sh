#!/usr/bin/env bash
# Session 14, first device call (carry .gpu): session 13's unmeasured work.
#   background (compilation-bound, GPU nearly idle):
#     kcache  — `phi3v --kernel-cache DIR generate` (tiny checkpoint, bf16) twice in fresh
#               processes from /tmp (no cubecl.toml above it): the second run should skip NVRTC;
#     kernels — the kernels test on cuda bf16 and f32 (SkinnyTuning shapes, flash attention);
#   foreground (timing):
#     sweep   — the b=1 decode breakdown at each skinny-kernel shape (PHI3V_SKINNY), one binary;
#     profile — (if .gpu/bin/phi3v-prof, built with the feature `profile`) the host sampled
#               during 200 decode steps at b=1 and b=10: where the ~20 µs per launch go;
#     flash   — the 1024-token prefill breakdown with Burn's attention and with the flash kernel
#               (PHI3V_FLASH_ATTENTION=0/1), at the sweep's best shape.
# Results under $OUT/a as they come; a.tgz at the end, and the kernel caches for the next call.
source scripts/gpu_env.sh
D=$OUT/a; mkdir -p $D
( mkdir -p /tmp/kc-run && cd /tmp/kc-run
  for n in 1 2; do
    s=$(date +%s)
    timeout ${KC_LIMIT:-300} $B/phi3v --kernel-cache /tmp/kc-cache "${GEN_TINY[@]}" --device cuda --dtype bf16 > $D/kc-run$n.json 2> $D/kc-run$n.err
    echo "kcache run $n rc=$? $(( $(date +%s) - s )) s" >> $D/kc.txt
  done
  du -sh /tmp/kc-cache >> $D/kc.txt; find /tmp/kc-cache -maxdepth 3 | head -20 >> $D/kc.txt ) &
job kernels env PHI3V_TEST_DEVICES=cuda:0:bf16,cuda:0:f32 $B/kernels
cd target
best=""; best_ms=1e9
for t in ${TUNINGS:-4,4,1 4,4,2 4,4,4 8,4,1 8,4,2 4,8,2}; do
  PHI3V_SKINNY=$t timeout ${SWEEP_LIMIT:-60} $B/phi3v "${DECODE_BREAKDOWN[@]:0:14}" --decode-batches 1 --out $D/bd-$t > $D/bd-$t.log 2>&1
  echo "=== PHI3V_SKINNY=$t rc=$?"; grep "whole step" $D/bd-$t.log | cut -c1-160; grep "_proj" $D/bd-$t.log | cut -c1-120
  ms=$(grep -o "whole step [0-9.]* ms" $D/bd-$t.log | head -1 | grep -o "[0-9.]*")
  [ -n "$ms" ] && python3 -c "import sys; sys.exit(0 if $ms < $best_ms else 1)" && best=$t && best_ms=$ms
done
echo "best skinny shape: ${best:-none} ($best_ms ms)" | tee $D/best.txt
if [ -x $B/phi3v-prof ]; then
  PHI3V_SKINNY=${best:-4,4,1} timeout ${PROF_LIMIT:-100} $B/phi3v-prof "${DECODE_BREAKDOWN[@]}" --decode-batches 1,10 \
    --profile $D/profile --profile-steps 200 --out $D/prof-bd > $D/prof-bd.log 2>&1
  echo "=== profile rc=$?"; grep "whole step\|Host:" $D/prof-bd.log
  for f in $D/profile/*.top.md; do echo "=== $f"; head -40 "$f" | cut -c1-200; done
fi
for fa in 0 1; do
  PHI3V_SKINNY=${best:-4,4,1} PHI3V_FLASH_ATTENTION=$fa timeout ${FLASH_LIMIT:-110} $B/phi3v bench breakdown --preset phi3v-128k --device cuda --dtype bf16 \
    --prefill 1024 --decode-batches 1 --context 16 --warmup 2 --runs 10 --out $D/pf-fa$fa > $D/pf-fa$fa.log 2>&1
  echo "=== prefill breakdown flash=$fa rc=$?"; grep "whole step\|attention" $D/pf-fa$fa.log | cut -c1-160
done
cd $R
wait
cat $D/kc.txt; grep -c '"token_ids"' $D/kc-run*.json
python3 -c 'import json,sys; a,b=[json.load(open(f))["token_ids"] for f in sys.argv[1:]]; print("kcache same tokens:", a==b, a)' $D/kc-run1.json $D/kc-run2.json
collect; cp /tmp/res/kernels.* $D/ 2>/dev/null; show kernels
(cd $OUT && tar czf a.tgz a && rm -rf a)
tar czf - -C target . | split -b 15M - $OUT/cache.tgz.part-
ls -la $OUT
