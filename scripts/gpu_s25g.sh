#!/usr/bin/env bash
# Session 25's last call (pack of the fixed tensor-core flash kernel and the benchmark's memory
# cleanup), H100 or H200, carry .gpu and .gl; ~300 s, everything in one timeline:
#   in the background (nice, LIMIT=${PAR_S:-250}): the bf16 fixture suite with
#     PHI3V_FLASH_ATTENTION=mma (the kernel inside the whole model, against the reference);
#   in the foreground, one after the other:
#     1. `bench attention --flash "scores;mma"`, bf16 then f16: first outputs and times;
#     2. image encode at num_crops 16, prefill 1024 and 4096: default then mma (${AB_S:-55} s each);
#     3. issue 8's static side: static batching at 10, 64, 128, 256 (${STATIC_S:-110} s).
source scripts/gpu_env.sh
timed_folders s25g
LIMIT=${PAR_S:-250} job parity-mma env PHI3V_FLASH_ATTENTION=mma nice -n 5 $B/phi3v-parity --device cuda --dtype bf16
cd $D
SHAPES="1,32,1024,1024,96,causal;1,32,4096,4096,96,causal;17,16,577,577,64"
for dt in bf16 f16; do
  s=$(date +%s)
  timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype $dt --flash "scores;mma" --shapes "$SHAPES" --warmup 2 --runs 10 --out $RS/att-$dt.json > $RS/att-$dt.log 2>&1
  echo "=== attention $dt rc=$? $(( $(date +%s) - s )) s"; grep "^|\|panicked\|refused\|rror" $RS/att-$dt.log | sort -u | head -12 | cut -c1-200
done
AB="--scenarios images,prefill --images 1344x1344 --num-crops 16 --prompt-lengths 1024,4096 --prefill-batches 1 --warmup 1 --runs 5"
bench_parts $RS "default::${AB_S:-55}:$AB" "mma:PHI3V_FLASH_ATTENTION=mma:${AB_S:-55}:$AB"
grep -H "^image\|^prefill" $RS/default.log $RS/mma.log | cut -c1-200
bench_parts $RS "static::${STATIC_S:-110}:--scenarios generation --shapes 1024x128 --warmup 1 --runs 5 --generation-runs 1 --parallel 10,64,128,256 --batching static"
grep "^generation" $RS/static.log | cut -c1-200
cd $R; wait; collect; cp /tmp/res/parity-mma.* $RS/ 2>/dev/null
echo "=== parity-mma: $(tail -n1 $W/parity-mma/out.txt)"; grep -E "^\| [a-z]|probe" $W/parity-mma/out.txt | cut -c1-200 | tail -14
grep -v "^\s*$" $W/parity-mma/err.txt | grep -v "^kernel cache" | tail -3 | cut -c1-200
(cd $OUT && tar czf s25g.tgz s25g && rm -rf s25g)
