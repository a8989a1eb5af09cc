#!/usr/bin/env bash
# Session 33, call 5 (H100 or H200; a pack of 7092af5 or later with phi3v and
# phi3v-plugin-conformance; carry .gpu and .gl). ≤ 330 s. The final code of session 33 (the
# flash kernel's prefetch on by default up to 64-dim heads, the slower tries removed):
#   1. the fixture parity suite on cuda bf16, then f16, one job per case;
#   2. `bench attention` bf16 at CLIP's shape and prefill 1024 (the default's time and its
#      relative difference against `scores`), and the image encode at num_crops 16.
source scripts/gpu_env.sh
echo "pack of $(head -1 .gpu/commit.txt)"
mkdir -p $OUT/s33d
for dt in bf16 f16; do LIMIT=${PARITY_S:-200} parity_dtype $dt $(fixture_cases); done
collect; cp /tmp/res/parity-* $OUT/s33d/ 2>/dev/null
timed_folders s33d
cd $D
timeout ${ATT_S:-45} $B/phi3v bench attention --device cuda --dtype bf16 --flash "scores;mma;auto" --shapes "17,16,577,577,64;1,32,1024,1024,96,causal" \
  --warmup 2 --runs 10 --out $RS/att.json > $RS/att.log 2>&1
echo "=== attention rc=$?"; grep "^|\|panicked\|refused\|rror" $RS/att.log | sort -u | head -10 | cut -c1-200
ENC="--dtype bf16 --scenarios images --images 1344x1344 --num-crops 16 --warmup 2 --runs 10"
TAIL=1 bench_parts $RS "enc-1::${ENC_S:-60}:$ENC" "enc-2::${ENC_S:-60}:$ENC" > /dev/null
grep -H "^image" $RS/enc-*.log | sed 's|^.*/s33d/||' | cut -c1-200
echo "done at $SECONDS s"
(cd $OUT && tar czf s33d.tgz s33d && rm -rf s33d)
