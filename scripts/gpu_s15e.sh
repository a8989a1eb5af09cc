#!/usr/bin/env bash
# Session 15, fifth device call (carry .gpu: the kernels test binary only, and call 3's kernels
# job cache as .gpu/kcache.tgz.part-*): the kernels test on cuda bf16 with the strided
# rotary_write_paged and the tightened attention bound. Usage: bash scripts/gpu_s15e.sh
source scripts/gpu_env.sh
K=/tmp/w/k; mkdir -p $K
ls .gpu/kcache.tgz.part-* >/dev/null 2>&1 && cat .gpu/kcache.tgz.part-* | tar xzf - -C $K
cd $K && s=$(date +%s)
timeout ${KT_S:-150} env PHI3V_TEST_DEVICES=cuda:0:bf16 $B/kernels --nocapture > $OUT/kernels.txt 2>&1
echo "kernels rc=$? $(( $(date +%s) - s )) s" | tee -a $OUT/kernels.txt
grep -E "test result|FAIL|panicked|rotary_write_paged|flash_attention at 4,2,2|refused" $OUT/kernels.txt | cut -c1-230
